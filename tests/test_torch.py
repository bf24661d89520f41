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


# --------------------------------------------------------------------------- drop-in behaviour
@pytest.fixture
def x64_off():
    """JAX's default precision (x64 off), as a cvxpylayers user has it; restored afterwards."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


def test_float64_is_computed_in_float64_with_x64_off(x64_off):
    n = 4
    b = cp.Parameter(n, name="b")
    x = cp.Variable(n, name="x")
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x)), [np.eye(n) @ x == b]), [b], [x])
    bt = torch.tensor([0.1, -0.7, 1.3, 2.9], dtype=torch.float64, requires_grad=True)
    (xs,) = layer(bt)
    assert xs.dtype == torch.float64
    # x = b exactly; a float32 computation is off by ~1e-7 (the defect this guards against).
    np.testing.assert_allclose(xs.detach().numpy(), bt.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda b: layer(b)[0], (bt,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert not jax.config.jax_enable_x64  # the global flag is restored
    (x32,) = layer(bt.detach().float())  # float32 stays float32
    assert x32.dtype == torch.float32


def test_conic_problem_gradient_matches_finite_differences():
    # min cᵀx s.t. ‖x‖ ≤ t (SOC: the conic path, not a QP): x* = -t c/‖c‖, closed-form Jacobian.
    c, t = cp.Parameter(3, name="c"), cp.Parameter(nonneg=True, name="t")
    x = cp.Variable(3, name="x")
    con = cp.norm(x) <= t
    layer = CvxpyLayer(cp.Problem(cp.Minimize(c @ x), [con]), [c, t], [x, con.dual_variables[0]], solver="clarabel")
    assert layer.layer.path == "conic"
    cv = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64, requires_grad=True)
    tv = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    xs, lam = layer(cv, tv)
    nc = float(np.linalg.norm(cv.detach().numpy()))
    np.testing.assert_allclose(xs.detach().numpy(), -2.0 * cv.detach().numpy() / nc, rtol=1e-7)
    np.testing.assert_allclose(float(lam.detach()), nc, rtol=1e-7)  # the multiplier of ‖x‖ ≤ t is ‖c‖
    J = torch.autograd.functional.jacobian(lambda c: layer(c, tv)[0], cv)
    c0 = cv.detach().numpy()
    # Clarabel solves to ~1e-10, so step 1e-5 central differences are accurate to ~1e-5 absolute;
    # the closed form is checked at 1e-6.
    np.testing.assert_allclose(J.numpy(), -2.0 * (np.eye(3) / nc - np.outer(c0, c0) / nc**3), rtol=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(lambda c, t: layer(c, t)[1], (cv, tv), eps=1e-5, atol=1e-5, rtol=1e-5)


def test_failures_raise_solver_error_and_value_error_not_jax_runtime_error():
    import diffcp

    import kktbridge as kb

    x, p = cp.Variable(1, name="x"), cp.Parameter(1, name="p")
    infeasible = CvxpyLayer(cp.Problem(cp.Minimize(p @ x), [x >= 1, x <= -1]), [p], [x])
    for requires_grad in (False, True):
        with pytest.raises(kb.SolverError, match="INFEASIBLE") as e:
            infeasible(torch.ones(1, dtype=torch.float64, requires_grad=requires_grad))
        assert isinstance(e.value, diffcp.SolverError)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0]), [p], [x])
    with pytest.raises(ValueError, match=r"parameter 0 \(p\): contains NaN"):
        layer(torch.tensor([float("nan")], dtype=torch.float64, requires_grad=True))
    with pytest.raises(ValueError, match="A tensor must be provided for each CVXPY parameter"):
        layer()
    with pytest.raises(AttributeError, match="got None"):
        layer(None)
    q = cp.Parameter(pos=True, name="q")
    pos = CvxpyLayer(cp.Problem(cp.Minimize(cp.square(x[0] - q))), [q], [x])
    with pytest.raises(ValueError, match=r"parameter 0 \(q\).*must be positive"):
        pos(torch.tensor(-1.0, dtype=torch.float64))


def test_no_grad_and_outputs_follow_inputs():
    prob, params, variables = qp_problem()
    layer = CvxpyLayer(prob, params, variables)
    rng = np.random.default_rng(5)
    ts = [torch.tensor(v, requires_grad=True) for v in (rng.normal(size=4), rng.normal(size=(3, 4)), rng.uniform(0.1, 0.5, 3))]
    with torch.no_grad():
        (x,) = layer(*ts)
    assert not x.requires_grad and x.device == ts[0].device
    (x,) = layer(*(t.detach() for t in ts))
    assert not x.requires_grad
