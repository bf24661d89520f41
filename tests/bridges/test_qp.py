"""solve_qp (OSQP): derivatives vs finite differences and cvxpylayers, batching, failures, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cvxpy as cp

import kktbridge as kb
from tests._fd import fd_jacobian, rel_err
from tests._peers import peer

NAMES = ("P", "q", "A", "b", "G", "h")


def random_qp(seed: int, n: int = 4, m_eq: int = 1, m_ineq: int = 4):
    """A strictly convex QP with some active and some inactive inequalities (nondegenerate)."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    P = M @ M.T + np.eye(n)
    A = rng.normal(size=(m_eq, n))
    G = rng.normal(size=(m_ineq, n))
    # Choose a primal-dual point, then set data so that it is the KKT point with a known active set.
    x = rng.normal(size=n)
    nu = rng.normal(size=m_eq)
    active = np.arange(m_ineq) < (m_ineq + 1) // 2
    lam = np.where(active, rng.uniform(0.5, 2.0, m_ineq), 0.0)
    slack = np.where(active, 0.0, rng.uniform(0.5, 2.0, m_ineq))
    q = -(P @ x + A.T @ nu + G.T @ lam)
    return dict(P=P, q=q, A=A, b=A @ x, G=G, h=G @ x + slack)


def flat_solution(data):
    s = kb.solve_qp(**data)
    return jnp.concatenate([s.x, s.eq_dual, s.ineq_dual])


@pytest.mark.parametrize("examples", [3, pytest.param(20, marks=pytest.mark.slow)], ids=["fast", "slow"])
def test_random_qp_jacobians_match_finite_differences(examples):
    # Each example is 2 x 45 finite-difference solves: 3 in the default tier, 20 with KKTBRIDGE_SLOW=1.
    fun = jax.jit(lambda d: flat_solution(d))

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 10_000))
    def check(seed):
        data = random_qp(seed)
        J_rev = jax.jacrev(fun)({k: jnp.asarray(v) for k, v in data.items()})
        J_fwd = jax.jacfwd(fun)({k: jnp.asarray(v) for k, v in data.items()})
        for name in NAMES:
            def f(v, name=name):
                return fun({**data, name: jnp.asarray(v)})

            fd = fd_jacobian(f, data[name], symmetric_matrix=(name == "P"))
            J = np.asarray(J_rev[name])
            if name == "P":
                # Derivatives w.r.t. P are those of a function of its symmetric part: compare along
                # symmetric perturbations E_ij + E_ji, i.e. J_ij + J_ji (off-diagonal), J_ii (diagonal).
                J = J + np.swapaxes(J, -1, -2) - J * np.eye(J.shape[-1])
            assert rel_err(J, fd) < 1e-6, name
            assert rel_err(J_fwd[name], J_rev[name]) < 1e-9, name

    check()


def test_qp_gradients_match_cvxpylayers():
    cl = peer("cvxpylayers.jax")  # optional peer (cvxpy itself is a hard dependency)
    data = random_qp(7, n=5, m_eq=2, m_ineq=6)
    n, m_eq, m_ineq = 5, 2, 6
    x = cp.Variable(n)
    q, b, h = cp.Parameter(n), cp.Parameter(m_eq), cp.Parameter(m_ineq)
    L = np.linalg.cholesky(data["P"])
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L.T @ x) + q @ x), [data["A"] @ x == b, data["G"] @ x <= h])
    layer = cl.CvxpyLayer(prob, parameters=[q, b, h], variables=[x])
    w = jnp.arange(1.0, n + 1)

    def loss_ref(q, b, h):
        (xs,) = layer(q, b, h, solver_args={"eps": 1e-10, "max_iters": 100000})
        return jnp.vdot(w, xs)

    def loss_kb(q, b, h):
        return jnp.vdot(w, kb.solve_qp(data["P"], q, data["A"], b, data["G"], h).x)

    args = tuple(jnp.asarray(data[k]) for k in ("q", "b", "h"))
    g_ref = jax.grad(loss_ref, argnums=(0, 1, 2))(*args)
    g_kb = jax.grad(loss_kb, argnums=(0, 1, 2))(*args)
    # Closed form from the known active set (rows 0-2 active, 3-5 inactive by construction):
    # K [x; ν; λ_act] = [-q; b; h_act], so the gradient of wᵀx is u = K⁻ᵀ[w; 0; 0] with
    # ∂/∂q = -u_x, ∂/∂b = u_ν, ∂/∂h_act = u_λ, ∂/∂h_inact = 0.
    act = np.arange(m_ineq) < (m_ineq + 1) // 2
    Ga = data["G"][act]
    k = act.sum()
    K = np.block(
        [[data["P"], data["A"].T, Ga.T], [data["A"], np.zeros((m_eq, m_eq + k))], [Ga, np.zeros((k, m_eq + k))]]
    )
    u = np.linalg.solve(K.T, np.concatenate([np.asarray(w), np.zeros(m_eq + k)]))
    exact = (-u[:n], u[n : n + m_eq], np.zeros(m_ineq))
    exact[2][act] = u[n + m_eq :]
    for a, e in zip(g_kb, exact):
        assert rel_err(a, e) < 1e-9
    # cvxpylayers solves with SCS (first-order) at eps=1e-10: ~1e-7 relative on the nonzero
    # gradients, and ~3e-8 of noise where the exact gradient is zero (∂/∂q here: two equalities and
    # three active rows fix all five coordinates of x, so x does not depend on q), hence atol 1e-7.
    for a, b_ in zip(g_kb, g_ref):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-7)


def test_redundant_equalities_give_finite_min_norm_derivatives():
    data = random_qp(11, n=4, m_eq=1, m_ineq=2)
    data["A"] = np.vstack([data["A"], data["A"]])  # duplicated row: LICQ fails, duals not unique
    data["b"] = np.concatenate([data["b"], data["b"]])
    fun = jax.jit(lambda q: kb.solve_qp(data["P"], q, data["A"], data["b"], data["G"], data["h"]))
    Jx = jax.jacrev(lambda q: fun(q).x)(jnp.asarray(data["q"]))
    Jnu = jax.jacfwd(lambda q: fun(q).eq_dual)(jnp.asarray(data["q"]))
    assert np.all(np.isfinite(Jx)) and np.all(np.isfinite(Jnu))
    fd = fd_jacobian(lambda q: fun(jnp.asarray(q)).x, data["q"])
    assert rel_err(Jx, fd) < 1e-6
    # Minimum-norm choice splits the multiplier change equally between the two copies.
    np.testing.assert_allclose(Jnu[0], Jnu[1], atol=1e-8)


def test_jit_vmap_grad_over_64_qps_equals_loop():
    data = random_qp(5, n=6, m_eq=2, m_ineq=5)
    qs = jnp.asarray(np.random.default_rng(0).normal(size=(64, 6)))

    def loss(q):
        s = kb.solve_qp(data["P"], q, data["A"], data["b"], data["G"], data["h"])
        return jnp.sum(s.x**2) + jnp.sum(s.ineq_dual)

    batched = jax.jit(jax.vmap(jax.grad(loss)))(qs)
    single = jax.jit(jax.grad(loss))
    loop = np.stack([single(q) for q in qs])  # every instance: a mix-up anywhere in the batch fails
    np.testing.assert_allclose(batched, loop, rtol=1e-8, atol=1e-10)
    # Batched matrices too (setup reused per thread with matrix updates).
    Ps = jnp.stack([jnp.asarray(data["P"]) * (1 + 0.1 * i) for i in range(8)])
    xs = jax.vmap(lambda P: kb.solve_qp(P, data["q"], data["A"], data["b"], data["G"], data["h"]).x)(Ps)
    for i in range(8):
        x_i = kb.solve_qp(Ps[i], data["q"], data["A"], data["b"], data["G"], data["h"]).x
        np.testing.assert_allclose(xs[i], x_i, atol=1e-8)


def test_hessian_of_loss_matches_fd_of_gradient():
    data = random_qp(2)
    loss = lambda h: jnp.sum(kb.solve_qp(data["P"], data["q"], data["A"], data["b"], data["G"], h).x ** 3)  # noqa: E731
    H = jax.hessian(loss)(jnp.asarray(data["h"]))
    grad = jax.jit(jax.grad(loss))
    fd = fd_jacobian(lambda h: grad(jnp.asarray(h)), data["h"], eps=1e-5)
    assert rel_err(H, fd) < 1e-6


def test_infinite_h_means_no_constraint():
    data = random_qp(4)
    h = np.array(data["h"])
    assert data["G"][0] @ np.linalg.solve(data["P"], -data["q"]) > 0  # row 0 is active at finite h ...
    h[0] = np.inf  # ... so removing it through h = +inf changes the solution and its Jacobian
    keep = slice(1, None)

    def with_inf(q):
        s = kb.solve_qp(data["P"], q, data["A"], data["b"], data["G"], h)
        return jnp.concatenate([s.x, s.eq_dual, s.ineq_dual])

    def without_row(q):
        s = kb.solve_qp(data["P"], q, data["A"], data["b"], data["G"][keep], h[keep])
        return jnp.concatenate([s.x, s.eq_dual, jnp.zeros(1), s.ineq_dual])

    q = jnp.asarray(data["q"])
    z, z_ref = with_inf(q), without_row(q)
    assert float(z[4 + 1]) == 0.0  # the infinite row's multiplier is exactly zero
    np.testing.assert_allclose(z, z_ref, atol=1e-9)
    J = jax.jacrev(with_inf)(q)
    # The same Jacobian as the QP without the row (zero row for its multiplier), and as central
    # differences of the solver (independent of the IFT).
    assert rel_err(J, jax.jacrev(without_row)(q)) < 1e-9
    assert rel_err(J, fd_jacobian(lambda v: with_inf(jnp.asarray(v)), data["q"])) < 1e-6
    assert np.abs(np.asarray(J) - np.asarray(jax.jacrev(lambda v: flat_solution({**data, "q": v}))(q))).max() > 1e-3


@pytest.mark.parametrize("solver", ["auto", "osqp"])
def test_infeasible_and_unbounded_raise(solver):
    P, q = np.eye(1), np.zeros(1)
    G, h = np.array([[1.0], [-1.0]]), np.array([-1.0, -1.0])  # x <= -1 and x >= 1
    with pytest.raises(kb.SolverError, match=f"{solver}: INFEASIBLE"):
        kb.solve_qp(P, q, G=G, h=h, solver=solver)
    with pytest.raises(kb.SolverError, match=f"{solver}: UNBOUNDED"):
        kb.solve_qp(np.zeros((1, 1)), np.ones(1), G=np.array([[1.0]]), h=np.array([1.0]), solver=solver)
    s = kb.solve_qp(P, q, G=G, h=h, on_failure="nan", solver=solver)
    assert int(s.status) == int(kb.Status.INFEASIBLE) and np.isnan(s.x).all()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"P": np.ones((2, 3))}, "P: expected a square"),
        ({"P": np.array([[1.0, 2.0], [0.0, 1.0]])}, "P: expected a symmetric matrix"),
        ({"q": np.array([np.nan, 1.0])}, "q: contains NaN"),
        ({"q": np.ones(3)}, r"q: expected shape \(2\)"),
        ({"b": np.ones(2)}, r"b: expected shape \(1\)"),
        ({"G": np.ones((1, 3))}, r"G: expected shape \(\?, 2\)"),
        ({"h": None}, "G, h: give both"),
        ({"A": np.array([[np.inf, 1.0]])}, "A: contains inf"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, match):
    args = dict(P=np.eye(2), q=np.ones(2), A=np.ones((1, 2)), b=np.ones(1), G=np.eye(2), h=np.ones(2))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        kb.solve_qp(**args)


def test_warm_start_gives_the_same_solution_and_is_not_differentiated():
    data = random_qp(9)
    cold = kb.solve_qp(**data)
    y0 = jnp.concatenate([cold.eq_dual, cold.ineq_dual])
    warm = kb.solve_qp(**data, warm_start=(cold.x, y0))
    np.testing.assert_allclose(warm.x, cold.x, atol=1e-9)
    assert int(warm.iterations) <= int(cold.iterations)

    # A warm start computed from the parameters themselves must not leak derivatives.
    def x_warm(q):
        return kb.solve_qp(data["P"], q, data["A"], data["b"], data["G"], data["h"], warm_start=(-q, y0)).x

    def x_cold(q):
        return kb.solve_qp(data["P"], q, data["A"], data["b"], data["G"], data["h"]).x

    q = jnp.asarray(data["q"])
    np.testing.assert_allclose(jax.jacrev(x_warm)(q), jax.jacrev(x_cold)(q), atol=1e-9)
    with pytest.raises(ValueError, match="warm_start: expected a tuple"):
        kb.solve_qp(**data, warm_start=cold.x)


def test_qp_solution_record():
    # x* = max(-q, 0) for P = I, x >= 0 (here (0, 2, 0)) with λ = max(q, 0).
    q = jnp.array([1.0, -2.0, 0.5])
    s = kb.solve_qp(jnp.eye(3), q, G=-jnp.eye(3), h=jnp.zeros(3))
    assert isinstance(s, kb.QPSolution) and s._fields == ("x", "eq_dual", "ineq_dual", "status", "iterations", "diagnostics", "solver")
    assert isinstance(s.diagnostics, kb.Diagnostics)
    assert s.x.shape == (3,) and s.eq_dual.shape == (0,) and s.ineq_dual.shape == (3,)
    assert s.status.dtype == jnp.int32 and int(s.status) == int(kb.Status.SOLVED) and int(s.iterations) >= 1
    np.testing.assert_allclose(s.x, [0.0, 2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(s.ineq_dual, [1.0, 0.0, 0.5], atol=1e-9)
    # A pytree: it flattens and rebuilds, crosses jit, and vmap batches every field.
    leaves, tree = jax.tree_util.tree_flatten(s)
    assert isinstance(jax.tree_util.tree_unflatten(tree, leaves), kb.QPSolution)
    sj = jax.jit(lambda q: kb.solve_qp(jnp.eye(3), q, G=-jnp.eye(3), h=jnp.zeros(3)))(q)
    assert isinstance(sj, kb.QPSolution)
    np.testing.assert_allclose(sj.x, s.x, atol=1e-12)
    sv = jax.vmap(lambda q: kb.solve_qp(jnp.eye(3), q, G=-jnp.eye(3), h=jnp.zeros(3)))(jnp.stack([q, -q]))
    assert sv.x.shape == (2, 3) and sv.status.shape == (2,) and sv.diagnostics.residual.shape == (2,)
    np.testing.assert_allclose(sv.x[1], np.maximum(np.asarray(q), 0.0), atol=1e-9)
    # Every float field is differentiable: dλ/dq = diag(1 where q > 0).
    np.testing.assert_allclose(
        jax.jacfwd(lambda q: kb.solve_qp(jnp.eye(3), q, G=-jnp.eye(3), h=jnp.zeros(3)).ineq_dual)(q),
        np.diag([1.0, 0.0, 1.0]),
        atol=1e-9,
    )


def test_closed_form_kkt_matrix_equals_the_residual_jacobian():
    """The QP backward's assembled KKT matrix is exactly ∂_z of the residual (absent rows included)."""
    from jax.flatten_util import ravel_pytree

    from kktbridge.bridges._qp import _QP_KKT, _qp_kkt_blocks, _qp_kkt_matrix
    from kktbridge.core._kkt import KKTPoint

    rng = np.random.default_rng(7)
    n, p, m = 5, 2, 6
    M = rng.normal(size=(n, n))
    P = M @ M.T + 0.5 * rng.normal(size=(n, n))  # not symmetric: only its symmetric part enters
    h = rng.normal(size=m)
    h[[1, 4]] = np.inf
    data = tuple(map(jnp.asarray, (P, rng.normal(size=n), rng.normal(size=(p, n)), rng.normal(size=p), rng.normal(size=(m, n)), h)))
    z = KKTPoint(*(jnp.asarray(rng.normal(size=k)) for k in (n, p, m)))
    active = jnp.asarray([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    flat, unravel = ravel_pytree(z)
    J_ad = jax.jacfwd(lambda v: ravel_pytree(_QP_KKT(unravel(v), data, active=active))[0])(flat)
    np.testing.assert_array_equal(_qp_kkt_matrix(z, data, active), J_ad)
    # The structured (Schur complement) solves agree with dense solves of that matrix.
    from kktbridge.core._structured import QP_KKT

    active = jnp.asarray([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])  # as kkt_activity returns: absent rows inactive
    J_ad = jax.jacfwd(lambda v: ravel_pytree(_QP_KKT(unravel(v), data, active=active))[0])(flat)
    blocks = _qp_kkt_blocks(z, data, active)
    b = jnp.asarray(rng.normal(size=n + p + m))
    np.testing.assert_allclose(QP_KKT.solve(blocks, b), jnp.linalg.solve(J_ad, b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(QP_KKT.transpose_solve(blocks, b), jnp.linalg.solve(J_ad.T, b), rtol=1e-10, atol=1e-12)


def test_second_derivatives_through_the_assembled_kkt_matrix():
    """Hessian of a loss of x w.r.t. G: the assembled matrix is differentiated like the residual."""
    data = random_qp(11, n=4, m_eq=1, m_ineq=4)
    jd = {k: jnp.asarray(v) for k, v in data.items()}

    def loss(G):
        return jnp.sum(kb.solve_qp(**{**jd, "G": G}).x ** 3)

    H = jax.hessian(loss)(jd["G"])
    grad = jax.jit(jax.grad(loss))
    H_fd = fd_jacobian(lambda G: grad(jnp.asarray(G)), data["G"], eps=1e-5)
    assert rel_err(H, H_fd) < 1e-6


def test_auto_is_the_default_and_reports_its_choice():
    data = {k: jnp.asarray(v) for k, v in random_qp(5).items()}
    sol = kb.solve_qp(**data)
    assert sol.solver_name in kb.QP_SOLVERS and sol.solver_name == kb.QP_SOLVERS[int(sol.solver)]
    ref = kb.solve_qp(**data, solver="osqp")
    assert ref.solver_name == "osqp"
    np.testing.assert_allclose(sol.x, ref.x, rtol=1e-8, atol=1e-9)
    batch = jax.vmap(lambda q: kb.solve_qp(**{**data, "q": q}))(jnp.stack([data["q"], data["q"] + 0.1]))
    assert batch.solver.shape == (2,) and all(name in kb.QP_SOLVERS for name in batch.solver_name)
    failed = kb.solve_qp(-data["P"], data["q"], on_failure="nan")  # non-convex: no solver's answer
    assert int(failed.solver) == -1 and failed.solver_name == "unknown"


def test_batched_gradient_through_the_dense_fallback_at_a_thread_pool_size():
    """Dependent equality rows refuse the Schur complement, so every instance takes the dense
    robust fallback, at a size where XLA:CPU runs it on its intra-op thread pool. A version that
    ran the fallback as a separate program from a host callback deadlocked here; the jitted,
    vmap-ed gradient must finish and equal the per-instance gradients (and the closed form: with
    P = p I and the single effective row 1ᵀx = 1, x* = (1/n) 1 + ((1ᵀq) 1 / n - q) / p)."""
    n, B = 250, 3
    A = jnp.ones((2, n))
    b = jnp.array([1.0, 1.0])

    def loss(p, q):
        return jnp.sum(kb.solve_qp(p * jnp.eye(n), q, A=A, b=b).x ** 2)

    ps = 1.0 + 0.1 * jnp.arange(B)
    qs = jnp.stack([jnp.linspace(0.5, 1.5, n) * (1 + 0.1 * k) for k in range(B)])
    g_p, g_q = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(ps, qs)
    for k in range(B):
        q = np.asarray(qs[k])
        p = float(ps[k])
        x = 1.0 / n + (q.mean() - q) / p
        dx_dq = (np.full((n, n), 1.0 / n) - np.eye(n)) / p
        np.testing.assert_allclose(g_q[k], 2 * dx_dq.T @ x, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(g_p[k], 2 * x @ (-(q.mean() - q) / p**2), rtol=1e-8, atol=1e-10)
