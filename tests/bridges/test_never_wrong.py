"""Never silently wrong: failed or uncertified solves give NaN values *and* NaN derivatives (or
raise), masked failures leave shared gradients alone, bad input is rejected by name, and weakly
active constraints take the documented branch whatever the scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.core._kkt import activity_tol

from tests._fd import fd_jacobian, rel_err

# ------------------------------------------------------------------ problems that fail

P3 = jnp.eye(3)
Q3 = jnp.array([1.0, -2.0, 0.5])
G_INF = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])  # x0 <= -1 and x0 >= 1: infeasible
H_INF = jnp.array([-1.0, -1.0])

A_LP = jnp.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])  # x >= 0, x1 + x2 <= -1 ...
B_LP = jnp.array([0.0, 0.0, -1.0, 0.0])  # infeasible with x >= 0
C_LP = jnp.array([1.0, 2.0])


def _nlp_obj(x, p):
    return jnp.sum((x - p) ** 2)


def _nlp_infeasible(x, p):
    return jnp.stack([x[0] + 1.0, 1.0 - x[0]])  # x0 <= -1 and x0 >= 1


def failing_qp(q):
    return kb.solve_qp(P3, q, G=G_INF, h=H_INF, on_failure="nan")


def failing_conic(c):
    return kb.solve_conic(A_LP, B_LP, c, {"l": 4}, on_failure="nan")


def failing_nlp(p):
    return kb.solve_nlp(_nlp_obj, jnp.zeros(2), p, ineq=_nlp_infeasible, on_failure="nan")


FAILING = [
    ("qp", failing_qp, Q3, lambda s: s.x),
    ("conic", failing_conic, C_LP, lambda s: s.x),
    ("nlp", failing_nlp, jnp.array([0.3, 0.2]), lambda s: s.x),
]


@pytest.mark.parametrize("name,solve,theta,out", FAILING, ids=[f[0] for f in FAILING])
def test_failed_instance_values_and_every_derivative_are_nan(name, solve, theta, out):
    _assert_values_and_derivatives_nan(name, solve, theta, out)


def test_failed_qp_is_nan_through_the_host_kkt_solve(host_kkt_solve):
    """The same with the QP's KKT solve forced onto the host kernel (kktbridge.core._structured,
    used from 300 unknowns on a CPU): its refusal must end in NaN derivatives too."""
    _assert_values_and_derivatives_nan("qp (host)", failing_qp, Q3, lambda s: s.x)
    # ... and a solved instance does go through it, with the closed-form derivative:
    # min ½|x|² + qᵀx s.t. x0 <= -1, strictly active for q0 < 1 (λ = 1 - q0): x = (-1, -q1, -q2).
    g = jax.jacfwd(lambda q: kb.solve_qp(P3, q, G=G_INF[:1], h=H_INF[:1]).x)(jnp.array([0.0, -2.0, 0.5]))
    np.testing.assert_allclose(g, np.diag([0.0, -1.0, -1.0]), atol=1e-9)
    assert host_kkt_solve


def _assert_values_and_derivatives_nan(name, solve, theta, out):
    sol = solve(theta)
    assert int(sol.status) != int(kb.Status.SOLVED)
    assert np.all(np.isnan(out(sol)))
    f = lambda t: jnp.sum(out(solve(t)))  # noqa: E731
    for what, d in [
        ("grad", jax.grad(f)(theta)),
        ("jit grad", jax.jit(jax.grad(f))(theta)),
        ("jacfwd", jax.jacfwd(lambda t: out(solve(t)))(theta)),
        ("jacrev", jax.jacrev(lambda t: out(solve(t)))(theta)),
        ("jvp", jax.jvp(f, (theta,), (jnp.ones_like(theta),))[1]),
        ("vmap grad", jax.vmap(jax.grad(f))(jnp.stack([theta, theta]))),
    ]:
        assert np.all(np.isnan(np.asarray(d))), f"{name}: {what} of a failed solve is {d}"


def test_failed_instance_hessian_is_nan():
    f = lambda q: jnp.sum(failing_qp(q).x ** 2)  # noqa: E731
    assert np.all(np.isnan(jax.hessian(f)(Q3)))


def _masked_loss(P, H, Q, G):
    sols = jax.vmap(lambda q, h: kb.solve_qp(P, q, G=G, h=h, on_failure="nan"))(Q, H)
    ok = sols.status[:, None] == int(kb.Status.SOLVED)
    x = jnp.where(ok, sols.x, 0.0)  # the "double where" that keeps NaN out of the loss itself
    return jnp.sum(x**2), sols.status


def test_masked_failure_leaves_shared_gradient_exact():
    P = 2.0 * jnp.eye(3) + 0.1
    G = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    H = jnp.array([[0.2, 1.0, 1.0], [1.0, 1.0, 0.3], [-1.0, -1.0, 1.0], [1.0, 0.1, 1.0]])  # row 2 infeasible
    Q = jnp.array([[1.0, -1.0, 0.5], [-0.5, 0.3, 0.2], [0.1, 0.1, 0.1], [-1.0, -0.2, 0.4]])
    loss = lambda P: _masked_loss(P, H, Q, G)[0]  # noqa: E731
    status = _masked_loss(P, H, Q, G)[1]
    assert list(np.asarray(status) == 0) == [True, True, False, True]
    keep = np.array([0, 1, 3])
    ref = lambda P: _masked_loss(P, H[keep], Q[keep], G)[0]  # noqa: E731
    g, g_ref = jax.grad(loss)(P), jax.grad(ref)(P)
    assert np.all(np.isfinite(g))
    # The 4-instance and 3-instance batches are separate OSQP runs (different warm starts), so
    # they agree to the solver's precision (~1e-10), not to the last bit.
    assert rel_err(g, g_ref) < 1e-9
    assert rel_err(jax.jit(jax.grad(loss))(P), g_ref) < 1e-9
    # And the reference itself is right: central differences of the masked loss (P symmetric).
    fd = fd_jacobian(lambda Pn: np.asarray(loss(jnp.asarray(Pn))), np.asarray(P), symmetric_matrix=True)
    sym = 0.5 * (np.asarray(g) + np.asarray(g).T)
    np.testing.assert_allclose(np.where(np.eye(3) == 1, sym, 2 * sym), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("family, field", [("qp", "x"), ("conic", "x"), ("conic", "y"), ("conic", "s")])
def test_masked_failure_leaves_shared_hessian_exact(family, field):
    """A failed instance masked out of the loss leaves the gradient and the Hessian w.r.t. a shared
    parameter finite and equal to those without it. Found by review: at second order its poisoned
    tangent reached them through the Jacobian's derivative at the fallback point (0 · NaN); for the
    conic ``y = Π_{K*}(v)`` and ``s`` already at first order, through the projection's derivative
    at the failed instance's NaN point."""
    if family == "qp":
        G = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
        H = jnp.array([[0.2, 1.0, 1.0], [-1.0, -1.0, 1.0], [1.0, 0.1, 1.0]])  # row 1 infeasible
        Q = jnp.array([[1.0, -1.0, 0.5], [0.1, 0.1, 0.1], [-1.0, -0.2, 0.4]])
        shared = 2.0 * jnp.eye(3) + 0.1

        def batch(P, rows):
            return jax.vmap(lambda q, h: kb.solve_qp(P, q, G=G, h=h, on_failure="nan"))(Q[rows], H[rows])
    else:
        from tests._conic_problems import make_problem

        cone = {"l": 3, "q": [4]}
        A0, b0, c0, _ = make_problem({"l": 1, "q": [4]}, 1, 3)
        e1 = np.array([1.0, 0.0, 0.0])
        shared = jnp.asarray(np.vstack([A0[:1], e1, -e1, A0[1:]]))
        feasible = np.concatenate([b0[:1], [10.0, 10.0], b0[1:]])
        infeasible = feasible.copy()
        infeasible[1:3] = -1.0  # x0 <= -1 and -x0 <= -1
        Bs = jnp.stack([feasible, infeasible, 1.001 * feasible])

        def batch(A, rows):
            return jax.vmap(lambda b: kb.solve_conic(A, b, c0, cone, on_failure="nan", eps_abs=1e-12, eps_rel=1e-12))(Bs[rows])

    def loss(M, rows=np.arange(3)):
        sols = batch(M, rows)
        ok = sols.status[:, None] == int(kb.Status.SOLVED)
        return jnp.sum(jnp.where(ok, getattr(sols, field), 0.0) ** 2)

    sols = batch(shared, np.arange(3))
    assert list(np.asarray(sols.status) == 0) == [True, False, True]
    assert np.all(np.isnan(getattr(sols, field)[1])) and np.all(np.isfinite(getattr(sols, field)[np.array([0, 2])]))
    # The failed instance's own derivatives stay NaN, the others' are finite.
    J = jax.jacfwd(lambda M: getattr(batch(M, np.arange(3)), field))(shared)
    assert np.all(np.isnan(J[1])) and np.all(np.isfinite(J[np.array([0, 2])]))
    g, g_ref = jax.grad(loss)(shared), jax.grad(lambda M: loss(M, np.array([0, 2])))(shared)
    h = jax.jit(jax.hessian(loss))(shared)
    h_ref = jax.hessian(lambda M: loss(M, np.array([0, 2])))(shared)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(h))
    # Separate solver runs (batches of 3 and 2): equal to the solvers' precision, not to the bit.
    assert rel_err(g, g_ref) < 1e-8
    assert rel_err(h, h_ref) < 1e-8


def test_batched_gradients_are_per_instance_exact():
    def per_instance(q, h):
        return jnp.sum(kb.solve_qp(P3, q, G=G_INF[:1], h=h, on_failure="nan").x ** 2)

    H = jnp.array([[1.0], [-1.0], [jnp.inf]])
    qs = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [-3.0, 1.0, 0.0]])
    grads = jax.vmap(jax.grad(per_instance))(qs, H)
    # instance 0: x = -q (x0 = -1 <= 1 inactive) -> grad 2q; instance 2: unconstrained -> grad 2q
    np.testing.assert_allclose(grads[0], 2 * qs[0], rtol=1e-9)
    np.testing.assert_allclose(grads[2], 2 * qs[2], rtol=1e-9)
    # instance 1: x0 <= -1 strongly active (λ = 2): x0 = -1 constant, x1 = x2 = 0
    np.testing.assert_allclose(grads[1], [0.0, 0.0, 0.0], atol=1e-9)


# ------------------------------------------------------------------ inaccurate solutions

A_SOC = -jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
B_SOC = jnp.array([1.0, 0.0, 0.0])
C_SOC = jnp.array([1.0, 2.0])  # min x1 + 2 x2 on the unit disc: x = -(1, 2)/sqrt(5)


def test_inaccurate_solution_is_a_failure_unless_accepted():
    with pytest.raises(kb.SolverError) as e:
        kb.solve_conic(A_SOC, B_SOC, C_SOC, {"q": [3]}, max_iters=5)
    assert e.value.status in (kb.Status.SOLVED_INACCURATE, kb.Status.MAX_ITER)
    assert "max_iters" in str(e.value) or "iteration" in str(e.value)
    sol = kb.solve_conic(A_SOC, B_SOC, C_SOC, {"q": [3]}, max_iters=5, on_failure="nan")
    assert np.all(np.isnan(sol.x))
    assert np.all(np.isnan(jax.grad(lambda c: jnp.sum(kb.solve_conic(A_SOC, B_SOC, c, {"q": [3]}, max_iters=5, on_failure="nan").x))(C_SOC)))
    # Opting in returns the point -- but its residual is far from zero, which the check still reports.
    sol = kb.solve_conic(A_SOC, B_SOC, C_SOC, {"q": [3]}, max_iters=5, on_failure="nan", accept_inaccurate=True)
    assert int(sol.status) == int(kb.Status.RESIDUAL_TOO_LARGE)
    sol = kb.solve_conic(
        A_SOC, B_SOC, C_SOC, {"q": [3]}, max_iters=5, accept_inaccurate=True, residual_tol=np.inf
    )
    assert int(sol.status) == int(kb.Status.SOLVED_INACCURATE) and np.all(np.isfinite(sol.x))
    exact = kb.solve_conic(A_SOC, B_SOC, C_SOC, {"q": [3]})
    np.testing.assert_allclose(exact.x, -np.array([1.0, 2.0]) / np.sqrt(5.0), rtol=1e-7)


def test_residual_too_large_is_reported_and_raised_everywhere():
    # A loose, unpolished OSQP solve leaves a KKT residual of ~1e-5, far above the default
    # residual_tol (1.5e-6 in float64): the solver says "solved", the check says otherwise.
    kw = dict(G=-jnp.eye(3) + 0.3, h=jnp.ones(3), solver="osqp", eps_abs=1e-4, eps_rel=1e-4, polishing=False)
    sol = kb.solve_qp(P3, Q3, on_failure="nan", **kw)
    assert int(sol.status) == int(kb.Status.RESIDUAL_TOO_LARGE)
    assert np.all(np.isnan(sol.x)) and sol.diagnostics.residual > 0
    with pytest.raises(kb.SolverError, match="RESIDUAL_TOO_LARGE"):
        kb.solve_qp(P3, Q3, **kw)
    with pytest.raises(Exception, match="RESIDUAL_TOO_LARGE"):
        jax.block_until_ready(jax.jit(lambda q: kb.solve_qp(P3, q, **kw).x)(Q3))
    # A batch whose second instance passes the check: jit(vmap) still raises for the first, and
    # the "nan" policy poisons the first alone.
    qs = jnp.stack([Q3, 0.5 * Q3])
    status = jax.vmap(lambda q: kb.solve_qp(P3, q, on_failure="nan", **kw).status)(qs)
    assert [int(s) for s in status] == [int(kb.Status.RESIDUAL_TOO_LARGE), int(kb.Status.SOLVED)]
    with pytest.raises(Exception, match="RESIDUAL_TOO_LARGE"):
        jax.block_until_ready(jax.jit(jax.vmap(lambda q: kb.solve_qp(P3, q, **kw).x))(qs))
    xs = jax.jit(jax.vmap(lambda q: kb.solve_qp(P3, q, on_failure="nan", **kw).x))(qs)
    assert np.all(np.isnan(xs[0])) and np.all(np.isfinite(xs[1]))


def test_scs_iteration_limit_status_names_the_cause():
    sol = kb.solve_conic(A_SOC, B_SOC, C_SOC, {"q": [3]}, max_iters=2, on_failure="nan")
    assert kb.Status(int(sol.status)) in (kb.Status.SOLVED_INACCURATE, kb.Status.MAX_ITER)


# ------------------------------------------------------------------ bad input


def test_infinite_or_nan_bounds_rejected():
    with pytest.raises(ValueError, match="lower"):
        kb.solve_nlp(_nlp_obj, jnp.zeros(2), jnp.ones(2), lower=jnp.inf)
    with pytest.raises(ValueError, match="upper"):
        kb.solve_nlp(_nlp_obj, jnp.zeros(2), jnp.ones(2), upper=-jnp.inf)
    with pytest.raises(ValueError, match="lower"):
        kb.solve_nlp(_nlp_obj, jnp.zeros(2), jnp.ones(2), lower=jnp.array([jnp.nan, 0.0]))

    def solve(lo):
        return kb.solve_nlp(_nlp_obj, jnp.zeros(2), jnp.ones(2), lower=lo, on_failure="nan")

    bad = jnp.array([jnp.nan, 0.0])
    sol = jax.jit(solve)(bad)
    assert int(sol.status) == int(kb.Status.INVALID_PROBLEM) and np.all(np.isnan(sol.x))
    assert np.all(np.isnan(jax.jit(jax.grad(lambda lo: jnp.sum(solve(lo).x)))(bad)))
    with pytest.raises(Exception, match="INVALID_PROBLEM"):
        jax.block_until_ready(jax.jit(lambda lo: kb.solve_nlp(_nlp_obj, jnp.zeros(2), jnp.ones(2), lower=lo).x)(bad))


def test_indefinite_P_is_non_convex_per_instance():
    with pytest.raises(kb.SolverError, match="NON_CONVEX"):
        kb.solve_qp(-P3, Q3)
    assert int(kb.solve_qp(-P3, Q3, on_failure="nan").status) == int(kb.Status.NON_CONVEX)
    batched = jax.jit(jax.vmap(lambda P: kb.solve_qp(P, Q3, on_failure="nan")))
    for pos in range(3):
        Ps = jnp.stack([P3, P3, P3]).at[pos].set(-P3)
        sols = batched(Ps)
        want = [int(kb.Status.NON_CONVEX) if i == pos else 0 for i in range(3)]
        assert list(np.asarray(sols.status)) == want
        good = [i for i in range(3) if i != pos]
        np.testing.assert_allclose(sols.x[np.array(good)], np.tile(-Q3, (2, 1)), rtol=1e-8)


def test_empty_qp_rejected_by_name():
    with pytest.raises(ValueError, match="P"):
        kb.solve_qp(jnp.zeros((0, 0)), jnp.zeros(0))


@pytest.mark.parametrize(
    "options,match",
    [({"foo_bar": 1}, "foo_bar"), ({"tol": "abc"}, "tol"), ({"mu_strategy": "bogus"}, "mu_strategy")],
)
def test_bad_ipopt_options_rejected_before_solving(options, match):
    with pytest.raises(ValueError, match=match):
        kb.solve_nlp(_nlp_obj, jnp.zeros(2), jnp.ones(2), **options)


def test_bad_qp_and_conic_options_rejected_by_name():
    with pytest.raises(ValueError, match="'eps'.*eps_abs"):
        kb.solve_qp(P3, Q3, solver="osqp", eps=1e-3)
    with pytest.raises(ValueError, match="'eps_abs'.*solver='auto' takes no solver options"):
        kb.solve_qp(P3, Q3, eps_abs=1e-3)
    with pytest.raises(ValueError, match="'max_iter'.*max_iters"):
        kb.solve_conic(A_SOC, B_SOC, C_SOC, {"q": [3]}, max_iter=10)


def test_float32_nlp_uses_a_tolerance_float32_can_meet():
    def rosen(x, p):
        return (p[0] - x[0]) ** 2 + p[1] * (x[1] - x[0] ** 2) ** 2

    def disk(x, p):
        return jnp.atleast_1d(x[0] ** 2 + x[1] ** 2 - 1.5)

    p = jnp.array([1.0, 100.0], dtype=jnp.float32)
    s32 = kb.solve_nlp(rosen, jnp.zeros(2, jnp.float32), p, ineq=disk)
    s64 = kb.solve_nlp(rosen, jnp.zeros(2), p.astype(jnp.float64), ineq=disk)
    assert s32.x.dtype == jnp.float32
    np.testing.assert_allclose(s32.x, s64.x, atol=1e-4)


# ------------------------------------------------------------------ weakly active constraints


@pytest.mark.parametrize("obj_scale", [1e-3, 0.25, 1.0, 4.0, 100.0])
@pytest.mark.parametrize("con_scale", [1e-3, 1.0, 1e3])
def test_weakly_active_constraint_takes_the_inactive_branch(obj_scale, con_scale):
    # min a((x0 - p)^2 + (x1 - 1)^2) s.t. d x0 <= 0 at p = 0: weakly active. Inactive branch:
    # x0 = p (dx0/dp = 1), λ = 0 (dλ/dp = 0).
    def f(x, p):
        return obj_scale * ((x[0] - p) ** 2 + (x[1] - 1.0) ** 2)

    def g(x, p):
        return jnp.atleast_1d(con_scale * x[0])

    def outs(p):
        s = kb.solve_nlp(f, jnp.full(2, 0.5), p, ineq=g)
        return jnp.stack([s.x[0], s.ineq_dual[0]])

    J = jax.jacfwd(outs)(0.0)
    np.testing.assert_allclose(J, [1.0, 0.0], atol=1e-6)
    sol = kb.solve_nlp(f, jnp.full(2, 0.5), 0.0, ineq=g)
    assert int(sol.diagnostics.weakly_active) == 1
    assert float(sol.diagnostics.complementarity_margin) <= activity_tol(jnp.float64)


@pytest.mark.parametrize("obj_scale", [0.25, 1.0, 4.0])
def test_weakly_active_bound_and_qp_take_the_inactive_branch(obj_scale):
    def f(x, p):
        return obj_scale * ((x[0] - p) ** 2 + (x[1] - 1.0) ** 2)

    dx = jax.jacfwd(lambda p: kb.solve_nlp(f, jnp.full(2, -0.5), p, upper=jnp.array([0.0, jnp.inf])).x[0])(0.0)
    np.testing.assert_allclose(dx, 1.0, atol=1e-6)
    P = obj_scale * 2.0 * jnp.eye(2)
    dx = jax.jacfwd(
        lambda p: kb.solve_qp(P, obj_scale * jnp.array([-2.0 * p, -2.0]), G=jnp.array([[1.0, 0.0]]), h=jnp.zeros(1)).x[0]
    )(0.0)
    np.testing.assert_allclose(dx, 1.0, atol=1e-9)


def test_strictly_active_constraint_keeps_the_active_branch():
    # p = 1: x0 <= 0 strongly active, x0 = 0 (dx0/dp = 0), λ = 2a(p - x0) (dλ/dp = 2a).
    for a in (0.25, 1.0, 4.0):
        def f(x, p, a=a):
            return a * ((x[0] - p) ** 2 + (x[1] - 1.0) ** 2)

        J = jax.jacfwd(lambda p: (lambda s: jnp.stack([s.x[0], s.ineq_dual[0]]))(
            kb.solve_nlp(f, jnp.full(2, 0.5), p, ineq=lambda x, p: jnp.atleast_1d(x[0]))))(1.0)
        np.testing.assert_allclose(J, [0.0, 2.0 * a], atol=1e-6)


# ------------------------------------------------------------------ diagnostics


def test_diagnostics_record():
    sol = kb.solve_qp(P3, Q3, G=-jnp.eye(3), h=jnp.zeros(3), diagnose=True)
    d = sol.diagnostics
    assert float(d.residual) < 1e-9
    assert int(d.weakly_active) == 0
    # x* = max(-q, 0) = (0, 2, 0): rows 0 and 2 active with λ = (1, 0.5); margin is positive.
    assert 0.0 < float(d.complementarity_margin) < 1.0
    # The KKT matrix [[I, -I], [active rows, inactive identity]] is well conditioned.
    assert 1.0 <= float(d.kkt_condition) < 10.0
    assert np.isnan(float(kb.solve_qp(P3, Q3).diagnostics.kkt_condition))
    # Diagnostics of a batch are per instance, and -1 / NaN for failed instances.
    sols = jax.vmap(lambda h: kb.solve_qp(P3, Q3, G=G_INF[:1], h=h, on_failure="nan"))(jnp.array([[1.0], [-1.0]]))
    assert sols.diagnostics.residual.shape == (2,)


def test_strongly_active_bound_with_tiny_multiplier_keeps_the_active_branch():
    # 49 bounds active with λ = 20 and one with λ = 2e-3: scale-free multiplier ~2e-6, far below
    # any absolute floor, but the constraint is strongly active (dλ0/dt0 = 2, dx0/dt0 = 0).
    n = 50
    t = jnp.full(n, 10.0).at[0].set(1e-3)

    def f(x, p):
        return jnp.sum((x - p) ** 2)

    def outs(p):
        s = kb.solve_nlp(f, jnp.zeros(n), p, upper=jnp.zeros(n))
        return jnp.stack([s.x[0], s.upper_dual[0]])

    J = jax.jacfwd(outs)(t)[:, 0]
    np.testing.assert_allclose(J, [0.0, 2.0], atol=1e-6)


def test_weak_constraint_in_an_anisotropic_problem_takes_the_inactive_branch():
    # Curvature 2000 along the constraint normal, 2 elsewhere (n = 60): the weak row must still
    # end on the inactive branch (dx0/dp = 1), among 59 other strongly active bounds.
    n = 60

    def f(x, p):
        return 1000.0 * (x[0] - p) ** 2 + jnp.sum((x[1:] - 3.0) ** 2)

    def x0(p):
        return kb.solve_nlp(f, jnp.zeros(n), p, upper=jnp.concatenate([jnp.zeros(1), jnp.ones(n - 1)])).x[0]

    np.testing.assert_allclose(jax.jacfwd(x0)(0.0), 1.0, atol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(x0)(1.0), 0.0, atol=1e-6)  # strongly active at p = 1


def test_solvers_are_silent_unless_verbose(capfd):
    # Nothing active: OSQP's polish step would print "Polishing not needed..." through Python.
    P, G, h = jnp.eye(3), jnp.eye(3), jnp.full(3, 1e3)
    for solver in kb.available_solvers("qp"):
        kb.solve_qp(P, Q3, G=G, h=h, solver=solver)
        jax.vmap(lambda q: kb.solve_qp(P, q, G=G, h=h, solver=solver).x)(jnp.stack([Q3, Q3 + 1.0]))
    out = capfd.readouterr()
    assert out.out == "" and out.err == "", out
    kb.solve_qp(P, Q3, G=G, h=h, solver="osqp", verbose=True)
    assert "OSQP" in capfd.readouterr().out


def test_failure_policy_enum_and_strings_are_the_same_option():
    """``on_failure`` takes the enum or its string (an infeasible QP: x >= 1 and x <= 0)."""
    P, q = jnp.eye(1), jnp.zeros(1)
    G, h = jnp.array([[-1.0], [1.0]]), jnp.array([-1.0, 0.0])
    for policy in (kb.FailurePolicy.NAN, "nan"):
        sol = kb.solve_qp(P, q, G=G, h=h, on_failure=policy)
        assert np.all(np.isnan(sol.x)) and int(sol.status) != int(kb.Status.SOLVED)
        g = jax.grad(lambda q: kb.solve_qp(P, q, G=G, h=h, on_failure=policy).x.sum())(q)
        assert np.all(np.isnan(g))
    for policy in (kb.FailurePolicy.RAISE, "raise"):
        with pytest.raises(kb.SolverError):
            kb.solve_qp(P, q, G=G, h=h, on_failure=policy)
    with pytest.raises(ValueError, match="on_failure: expected one of \\('raise', 'nan'\\)"):
        kb.solve_qp(P, q, G=G, h=h, on_failure="ignore")  # type: ignore[arg-type]
