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


# --------------------------------------------------------------------------- torch.func / torch.compile
def soc_layer():
    """min cᵀx s.t. ‖x‖ ≤ t: x* = -t c/‖c‖ (nonlinear in c; the conic path through Clarabel)."""
    c, t = cp.Parameter(3, name="c"), cp.Parameter(nonneg=True, name="t")
    x = cp.Variable(3, name="x")
    return CvxpyLayer(cp.Problem(cp.Minimize(c @ x), [cp.norm(x) <= t]), [c, t], [x], solver="clarabel")


def soc_solution(c, t):
    return -t * c / np.linalg.norm(c)


def soc_jacobian_c(c, t):
    """∂x*/∂c = -t (I/‖c‖ - c cᵀ/‖c‖³)."""
    nc = np.linalg.norm(c)
    return -t * (np.eye(3) / nc - np.outer(c, c) / nc**3)


# Clarabel solves to ~1e-10 relative; 1e-7 relative on values and Jacobians is what the existing
# closed-form conic test above checks too.
RTOL = 1e-7


def test_torch_func_grad_and_jacrev_match_closed_form():
    layer = soc_layer()
    c = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64)
    t = torch.tensor(2.0, dtype=torch.float64)
    w = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    c0, t0 = c.numpy(), 2.0
    g_c, g_t = torch.func.grad(lambda c, t: (layer(c, t)[0] * w).sum(), argnums=(0, 1))(c, t)
    np.testing.assert_allclose(g_c.numpy(), soc_jacobian_c(c0, t0).T @ w.numpy(), rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(float(g_t), -(w.numpy() @ c0) / np.linalg.norm(c0), rtol=RTOL)  # ∂x*/∂t = -c/‖c‖
    x, pullback = torch.func.vjp(lambda c: layer(c, t)[0], c)
    np.testing.assert_allclose(x.numpy(), soc_solution(c0, t0), rtol=RTOL)
    np.testing.assert_allclose(pullback(w)[0].numpy(), soc_jacobian_c(c0, t0).T @ w.numpy(), rtol=RTOL, atol=1e-12)
    J = torch.func.jacrev(lambda c: layer(c, t)[0])(c)  # vmap of the backward over a basis
    np.testing.assert_allclose(J.numpy(), soc_jacobian_c(c0, t0), rtol=RTOL, atol=1e-12)


def test_torch_func_vmap_values_and_per_sample_gradients():
    layer = soc_layer()
    rng = np.random.default_rng(7)
    C = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float64)
    T = torch.tensor(rng.uniform(0.5, 2.0, 4), dtype=torch.float64)
    w = torch.tensor(rng.normal(size=3), dtype=torch.float64)
    xs = torch.func.vmap(lambda c, t: layer(c, t)[0])(C, T)
    np.testing.assert_allclose(xs.numpy(), [soc_solution(c, t) for c, t in zip(C.numpy(), T.numpy())], rtol=RTOL)
    # in_dims=None for t: broadcast; the batched call of the layer itself gives the same answer.
    xs_c = torch.func.vmap(lambda c: layer(c, T[0])[0])(C)
    np.testing.assert_allclose(xs_c.numpy(), layer(C, T[0])[0].numpy(), rtol=1e-12)
    # Per-sample gradients (vmap of grad): the backward of the solve the vmap rule batched.
    grads = torch.func.vmap(torch.func.grad(lambda c, t: (layer(c, t)[0] * w).sum()))(C, T)
    expect = [soc_jacobian_c(c, t).T @ w.numpy() for c, t in zip(C.numpy(), T.numpy())]
    np.testing.assert_allclose(grads.numpy(), expect, rtol=RTOL, atol=1e-12)
    # Jacobians of a batch: jacrev of the batched call (vmap(jacrev) is not supported, see below).
    Js = torch.func.jacrev(lambda C: layer(C, T)[0])(C)
    expect = np.zeros((4, 3, 4, 3))
    for b, (c, t) in enumerate(zip(C.numpy(), T.numpy())):
        expect[b, :, b, :] = soc_jacobian_c(c, t)  # problems of a batch are independent
    np.testing.assert_allclose(Js.numpy(), expect, rtol=RTOL, atol=1e-12)


def test_torch_func_vmap_over_inputs_with_their_own_batch_axis():
    # vmap over t while c carries the layer's own batch axis: a 2 x 4 batch of problems in one call.
    layer = soc_layer()
    rng = np.random.default_rng(8)
    C = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float64)
    T = torch.tensor([0.5, 1.5], dtype=torch.float64)
    w = torch.tensor(rng.normal(size=3), dtype=torch.float64)
    xs = torch.func.vmap(lambda t: layer(C, t)[0])(T)
    assert xs.shape == (2, 4, 3)
    np.testing.assert_allclose(xs.numpy(), [[soc_solution(c, t) for c in C.numpy()] for t in T.numpy()], rtol=RTOL)
    # d/dt Σ_batch wᵀx*(c_b, t) = -Σ_b wᵀc_b/‖c_b‖, for each vmapped t (gradient summed over c's batch).
    g = torch.func.vmap(torch.func.grad(lambda t: (layer(C, t)[0] * w).sum()))(T)
    per_t = -sum(w.numpy() @ c / np.linalg.norm(c) for c in C.numpy())
    np.testing.assert_allclose(g.numpy(), [per_t, per_t], rtol=RTOL)


def test_torch_compile_graph_breaks_around_the_layer():
    layer = soc_layer()
    c = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64, requires_grad=True)
    t = torch.tensor(2.0, dtype=torch.float64)
    w = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)

    def loss(c):
        return ((layer(torch.tanh(c), t)[0] * w) ** 2).sum()  # torch ops around the layer get compiled

    value = torch.compile(loss, backend="aot_eager")(c)
    value.backward()
    c0 = np.tanh(c.detach().numpy())
    x0 = soc_solution(c0, 2.0)
    np.testing.assert_allclose(value.item(), float(((x0 * w.numpy()) ** 2).sum()), rtol=RTOL)
    # chain rule: d/dc Σ (w x)² = diag(1 - tanh²) Jᵀ (2 w² x)
    expect = (1 - c0**2) * (soc_jacobian_c(c0, 2.0).T @ (2 * w.numpy() ** 2 * x0))
    np.testing.assert_allclose(c.grad.numpy(), expect, rtol=RTOL, atol=1e-12)


def test_unsupported_transforms_raise_clearly():
    layer = soc_layer()
    c = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64)
    t = torch.tensor(2.0, dtype=torch.float64)
    c_req = c.clone().requires_grad_()
    (g,) = torch.autograd.grad(layer(c_req, t)[0].sum(), c_req, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        g.sum().backward()
    for forward_mode in (torch.func.jacfwd, torch.func.hessian):  # no jvp rule (hessian = jacfwd(jacrev))
        with pytest.raises(RuntimeError, match="jvp"):
            forward_mode(lambda c: layer(c, t)[0].sum())(c)
    with pytest.raises(NotImplementedError, match="nesting of torch.func transforms"):
        torch.func.vmap(torch.func.jacrev(lambda c: layer(c, t)[0]))(torch.stack([c, 2 * c]))
