"""kktbridge.torch.CvxpyLayer: gradients match the JAX layer's; a tiny model trains through it."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kktbridge.bridges._cvxpy import CvxpyLayer as JaxLayer  # noqa: E402
from kktbridge.torch import CvxpyLayer  # noqa: E402


def qp_problem(n=4, m=3):
    """min ½‖x‖² - qᵀx  s.t.  Gx ≤ h, Σx = 1 (a projection-like QP layer)."""
    q, G, h = cp.Parameter(n, name="q"), cp.Parameter((m, n), name="G"), cp.Parameter(m, name="h")
    x = cp.Variable(n, name="x")
    cons = [G @ x <= h, cp.sum(x) == 1]
    return cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) - q @ x), cons), [q, G, h], [x]


def test_gradients_match_jax_layer():
    prob, params, variables = qp_problem()
    rng = np.random.default_rng(0)
    vals = [rng.normal(size=(2, 4)), rng.normal(size=(3, 4)), rng.uniform(0.1, 0.5, 3)]  # q batched
    w = rng.normal(size=(2, 4))
    layer = CvxpyLayer(prob, params, variables)
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in vals]
    (x,) = layer(*tensors)
    assert isinstance(x, torch.Tensor) and x.shape == (2, 4) and x.dtype == torch.float64
    (x * torch.tensor(w)).sum().backward()

    jlayer = JaxLayer(prob, params, variables)
    np.testing.assert_allclose(x.detach().numpy(), jlayer(*vals)[0], rtol=1e-12, atol=1e-12)
    g = jax.grad(lambda *v: jnp.vdot(w, jlayer(*v)[0]), argnums=(0, 1, 2))(*vals)
    for t, gj in zip(tensors, g):
        np.testing.assert_allclose(t.grad.numpy(), gj, rtol=1e-10, atol=1e-12)


def test_duals_and_dtypes():
    prob, params, variables = qp_problem()
    rng = np.random.default_rng(1)
    vals = [rng.normal(size=4), rng.normal(size=(3, 4)), rng.uniform(0.1, 0.5, 3)]
    layer = CvxpyLayer(prob, params, variables)
    jlayer = layer.layer  # the wrapped JAX layer (shares its compiled functions)
    (x_j,), (lam_j, nu_j) = jlayer.with_duals(*vals)

    def dual_loss(q):
        _, (lam, nu) = jlayer.with_duals(q, *vals[1:])
        return jnp.sum(lam) + nu

    g = jax.grad(dual_loss)(vals[0])
    # float32 in -> float32 out and float32 gradients.
    q = torch.tensor(vals[0], dtype=torch.float32, requires_grad=True)
    (x,), (lam, nu) = layer.with_duals(q, torch.tensor(vals[1], dtype=torch.float32), torch.tensor(vals[2], dtype=torch.float32))
    assert x.dtype == lam.dtype == torch.float32 and q.grad is None
    # A float32 solve (OSQP at 1e-9 on float32 data) agrees to float32 resolution (~1e-6 here).
    np.testing.assert_allclose(lam.detach().numpy(), lam_j, atol=2e-5)
    (lam.sum() + nu).backward()
    assert q.grad.dtype == torch.float32
    np.testing.assert_allclose(q.grad.numpy(), g, atol=1e-4)
    # Mixed float32/float64 inputs promote to float64, as torch does.
    q = torch.tensor(vals[0], dtype=torch.float32, requires_grad=True)
    (x,), (lam, nu) = layer.with_duals(q, torch.tensor(vals[1]), torch.tensor(vals[2]))
    assert x.dtype == torch.float64
    np.testing.assert_allclose(lam.detach().numpy(), lam_j, atol=1e-6)
    np.testing.assert_allclose(float(nu.detach()), float(nu_j), atol=1e-6)


def test_in_place_change_of_input_is_detected():
    prob, params, variables = qp_problem()
    rng = np.random.default_rng(2)
    q = torch.tensor(rng.normal(size=4), requires_grad=True)
    G, h = torch.tensor(rng.normal(size=(3, 4))), torch.tensor(rng.uniform(0.1, 0.5, 3))
    (x,) = CvxpyLayer(prob, params, variables)(q, G, h)
    with torch.no_grad():
        G.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()


def test_training_through_qp_layer_decreases_loss():
    torch.manual_seed(0)
    prob, params, variables = qp_problem()
    layer = CvxpyLayer(prob, params, variables)
    rng = np.random.default_rng(3)
    G = torch.tensor(rng.normal(size=(3, 4)))
    h = torch.tensor(rng.uniform(0.5, 1.0, 3))
    features = torch.randn(8, 5, dtype=torch.float64)
    target = torch.softmax(torch.randn(8, 4, dtype=torch.float64), dim=1)  # feasible-ish targets
    model = torch.nn.Linear(5, 4).double()
    losses = []
    for _ in range(8):
        model.zero_grad()
        (x,) = layer(model(features), G, h)  # batch of 8 QPs in one host call
        loss = ((x - target) ** 2).sum()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        # Plain SGD written out: torch.optim pulls in torch._dynamo (and sympy), which the
        # CPU wheel's optional dependencies may not provide.
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_bad_input_names_the_parameter():
    prob, params, variables = qp_problem()
    layer = CvxpyLayer(prob, params, variables)
    with pytest.raises(ValueError, match=r"parameter 1 \(G\)"):
        layer(torch.zeros(4), torch.zeros(3, 5), torch.ones(3))
