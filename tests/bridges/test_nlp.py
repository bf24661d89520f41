"""solve_nlp (IPOPT): derivatives vs central finite differences, batching, failures, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from tests._fd import fd4_jacobian, fd_jacobian, rel_err

TIGHT = {"tol": 1e-12}


# The tutorial's problem (shared/references/ipopt-jax-tutorial.md); its h >= 0 becomes -h <= 0.
def tut_f(x, p):
    w = jnp.array([p[1], p[0] * p[1], p[0] * p[1] ** 2 * p[2]])
    return jnp.mean((w * x - jnp.array([1.3, 1.2, 1.05])) ** 2)


def tut_eq(x, p):
    M = jnp.array([1.0, 2, 3, 0, 1, 4, 5, 6, 0]).reshape(3, -1)
    return jnp.log(p) * (M @ x) - jnp.array([0.6931472 * 10, -2.3025851 * 6, 1.609438 * 27])


def tut_ineq(x, p):
    return -(p * x**2)


P_TUT = jnp.array([2.0, 0.1, 5.0])


def tut_solution(p):
    return kb.solve_nlp(tut_f, jnp.zeros(3), p, eq=tut_eq, ineq=tut_ineq, **TIGHT)


def tut_lagrangian(p):
    s = tut_solution(p)
    return tut_f(s.x, p) + s.eq_dual @ tut_eq(s.x, p) + s.ineq_dual @ tut_ineq(s.x, p)


def test_tutorial_value_and_grad_matches_fd():
    value, grad = jax.jit(jax.value_and_grad(tut_lagrangian))(P_TUT)
    # Fourth order: L(p) carries ~3e-12 of solver noise at tol 1e-12 (IPOPT 3.14, measured), which a
    # second-order step of 1e-6 turns into ~3e-6; log(p) at p = 0.1 makes a larger second-order step
    # truncate (5e-6 at 1e-5). At h = 2e-4 both errors are ~1e-8.
    fd = fd4_jacobian(lambda p: tut_lagrangian(jnp.asarray(p)), P_TUT)
    assert np.isfinite(value)
    assert rel_err(grad, fd) < 1e-6


@pytest.mark.parametrize("field", ["x", "eq_dual"])
def test_tutorial_jacobians_fwd_rev_match_fd(field):
    fun = lambda p: getattr(tut_solution(p), field)  # noqa: E731
    J_fwd = jax.jacfwd(fun)(P_TUT)
    J_rev = jax.jacrev(fun)(P_TUT)
    fd = fd_jacobian(lambda p: fun(jnp.asarray(p)), P_TUT)
    assert rel_err(J_fwd, fd) < 1e-6
    assert rel_err(J_rev, fd) < 1e-6


def test_tutorial_hessian_matches_fd_of_gradient():
    H = jax.hessian(tut_lagrangian)(P_TUT)
    grad = jax.jit(jax.grad(tut_lagrangian))
    fd = fd_jacobian(lambda p: grad(jnp.asarray(p)), P_TUT, eps=1e-5)
    # FD of an implicit gradient: each gradient evaluation carries the solve's ~1e-10 error,
    # divided by 2*eps=2e-5 -> ~1e-5 absolute noise on entries of size ~5e3, so 1e-6 relative holds.
    assert rel_err(H, fd) < 1e-6
    np.testing.assert_allclose(H, H.T, rtol=1e-8)


# --- an active inequality: Euclidean projection onto a half-space (closed form) ----------------
def proj_obj(x, p):
    return 0.5 * jnp.sum((x - p["y"]) ** 2)


def proj_ineq(x, p):
    return jnp.atleast_1d(p["a"] @ x - p["b"])


def test_active_inequality_matches_closed_form_and_fd():
    params = {"y": jnp.array([1.0, 2.0, -0.5]), "a": jnp.array([1.0, 1.0, 0.5]), "b": jnp.array(1.0)}

    def closed(params):
        a, b, y = params["a"], params["b"], params["y"]
        return y - jnp.maximum(a @ y - b, 0) / (a @ a) * a

    fun = lambda prm: kb.solve_nlp(proj_obj, jnp.zeros(3), prm, ineq=proj_ineq, **TIGHT).x  # noqa: E731
    sol = kb.solve_nlp(proj_obj, jnp.zeros(3), params, ineq=proj_ineq, **TIGHT)
    assert float(sol.ineq_dual[0]) > 0.1  # strongly active
    for key in params:
        J = jax.jacrev(fun)(params)[key]
        J_closed = jax.jacfwd(closed)(params)[key]
        assert rel_err(J, J_closed) < 1e-6, key
    Jy = jax.jacfwd(fun)(params)["y"]
    fd = fd_jacobian(lambda y: fun({**params, "y": jnp.asarray(y)}), params["y"])
    assert rel_err(Jy, fd) < 1e-6


def test_weakly_active_inequality_takes_the_documented_inactive_branch():
    # min 0.5 (x - p)^2 s.t. x <= 0, at p = 0: x* = 0 and lambda* = 0 (weakly active).
    # x*(p) = min(p, 0) has a kink at 0: left derivative 1 (constraint inactive), right 0.
    # README: weakly active constraints are treated as inactive, i.e. the one-sided derivative for
    # perturbations that keep the constraint inactive: dx/dp = 1 and dλ/dp = 0, exactly.
    f = lambda x, p: 0.5 * jnp.sum((x - p) ** 2)  # noqa: E731
    g = lambda x, p: x  # noqa: E731
    sol = lambda p: kb.solve_nlp(f, jnp.ones(1), p, ineq=g, **TIGHT)  # noqa: E731
    fun = lambda p: sol(p).x[0]  # noqa: E731
    p0 = jnp.zeros(1)
    assert int(sol(p0).diagnostics.weakly_active) == 1
    # One-sided differences taken on one branch each (not through the kink, where IPOPT's
    # interior solution is only ~sqrt(tol)-accurate) recover the closed forms 1 and 0 (to the
    # ~1e-7 that IPOPT's tol=1e-12 solutions leave in a difference over h=1e-3): the branches are
    # distinct, and the derivative must be the closed form of the inactive one.
    h = 1e-3
    left = (float(fun(p0 - h)) - float(fun(p0 - 2 * h))) / h
    right = (float(fun(p0 + 2 * h)) - float(fun(p0 + h))) / h
    assert abs(left - 1.0) < 1e-6 and abs(right) < 1e-6
    for d in (jax.grad(fun)(p0)[0], jax.jacfwd(fun)(p0)[0]):
        assert abs(float(d) - 1.0) < 1e-9, (float(d), left, right)
    dlam = jax.jacrev(lambda p: sol(p).ineq_dual[0])(p0)
    np.testing.assert_allclose(dlam, [0.0], atol=1e-12)


def rosen(x, p):
    return (p[0] - x[0]) ** 2 + p[1] * (x[1] - x[0] ** 2) ** 2


def disk(x, p):
    return jnp.atleast_1d(x[0] ** 2 + x[1] ** 2 - p[2])


def test_nonconvex_rosenbrock_with_active_disk_constraint():
    p = jnp.array([1.0, 100.0, 0.5])  # unconstrained minimum (1, 1) lies outside the disk
    fun = lambda p: kb.solve_nlp(rosen, jnp.zeros(2), p, ineq=disk, **TIGHT).x  # noqa: E731
    sol = kb.solve_nlp(rosen, jnp.zeros(2), p, ineq=disk, **TIGHT)
    assert int(sol.status) == 0 and float(sol.ineq_dual[0]) > 1e-3
    J = jax.jacfwd(fun)(p)
    fd = fd_jacobian(lambda q: fun(jnp.asarray(q)), p, eps=1e-6)
    assert rel_err(J, fd) < 1e-6
    assert rel_err(jax.jacrev(fun)(p), J) < 1e-10


def test_bounds_and_their_multipliers_are_differentiable():
    # min 0.5||x - y||^2 s.t. lower <= x <= upper: x* = clip(y, lower, upper).
    f = lambda x, y: 0.5 * jnp.sum((x - y) ** 2)  # noqa: E731
    y = jnp.array([2.0, -3.0, 0.2])
    lo, up = jnp.array([-1.0, -1.0, -1.0]), jnp.array([1.0, 1.0, 1.0])
    fun = lambda y, lo, up: kb.solve_nlp(f, jnp.zeros(3), y, lower=lo, upper=up, **TIGHT)  # noqa: E731
    sol = fun(y, lo, up)
    np.testing.assert_allclose(sol.x, jnp.clip(y, lo, up), atol=1e-8)
    # Multipliers: z_U = max(y - up, 0), z_L = max(lo - y, 0).
    np.testing.assert_allclose(sol.upper_dual, jnp.maximum(y - up, 0), atol=1e-7)
    np.testing.assert_allclose(sol.lower_dual, jnp.maximum(lo - y, 0), atol=1e-7)
    Jx_up = jax.jacfwd(lambda u: fun(y, lo, u).x)(up)
    np.testing.assert_allclose(Jx_up, np.diag([1.0, 0.0, 0.0]), atol=1e-8)
    Jzu_y = jax.jacrev(lambda v: fun(v, lo, up).upper_dual)(y)
    np.testing.assert_allclose(Jzu_y, np.diag([1.0, 0.0, 0.0]), atol=1e-8)


def test_pytree_x_and_params():
    def f(x, p):
        return 0.5 * jnp.sum((x["a"] - p["t"]) ** 2) + 0.5 * (x["b"] - p["s"]) ** 2

    def g(x, p):
        return jnp.atleast_1d(jnp.sum(x["a"]) + x["b"] - 1.0)

    x0 = {"a": jnp.zeros(2), "b": jnp.array(0.0)}
    p = {"t": jnp.array([1.0, 1.0]), "s": jnp.array(1.0)}
    fun = lambda p: kb.solve_nlp(f, x0, p, ineq=g, **TIGHT).x  # noqa: E731
    x = fun(p)
    np.testing.assert_allclose(x["a"], [1 / 3, 1 / 3], atol=1e-8)
    J = jax.jacrev(fun)(p)
    # Projection onto sum(z) <= 1 (active): dz/dy = I - 11^T/3.
    expected = np.eye(3) - 1.0 / 3
    np.testing.assert_allclose(J["a"]["t"], expected[:2, :2], atol=1e-8)
    np.testing.assert_allclose(J["b"]["s"], expected[2, 2], atol=1e-8)


def test_jit_vmap_grad_over_16_nlps_equals_loop():
    rng = np.random.default_rng(3)
    ps = jnp.asarray(np.stack([rng.uniform(0.5, 1.5, 16), rng.uniform(50, 150, 16), rng.uniform(0.3, 0.8, 16)], 1))

    def loss(p):
        return jnp.sum(kb.solve_nlp(rosen, jnp.zeros(2), p, ineq=disk, **TIGHT).x ** 2)

    batched = jax.jit(jax.vmap(jax.grad(loss)))(ps)
    loop = np.stack([jax.grad(loss)(p) for p in ps])
    np.testing.assert_allclose(batched, loop, rtol=1e-8, atol=1e-10)


# --- failures ---------------------------------------------------------------------------------
def _infeasible():
    f = lambda x, p: jnp.sum(x**2)  # noqa: E731
    g = lambda x, p: jnp.array([x[0] - p, p + 1.0 - x[0]])  # x <= p and x >= p + 1  # noqa: E731
    return f, g


def test_infeasible_raises_solver_error():
    f, g = _infeasible()
    with pytest.raises(kb.SolverError, match="ipopt: INFEASIBLE") as info:
        kb.solve_nlp(f, jnp.zeros(1), jnp.array(0.0), ineq=g)
    # The solver's own status travels with the error (IPOPT: 2 = Infeasible_Problem_Detected).
    assert info.value.solver == "ipopt" and info.value.status == kb.Status.INFEASIBLE
    assert "native status: 2" in str(info.value)
    # Eager differentiation raises the same typed error (its solver inputs are concrete).
    with pytest.raises(kb.SolverError, match="ipopt: INFEASIBLE"):
        jax.grad(lambda p: kb.solve_nlp(f, jnp.zeros(1), p, ineq=g).x[0])(jnp.array(0.0))


def test_iteration_limit_raises_and_nan_mode_returns_status():
    with pytest.raises(kb.SolverError, match="MAX_ITER"):
        kb.solve_nlp(rosen, jnp.zeros(2), jnp.array([1.0, 100.0, 0.5]), ineq=disk, max_iter=2)
    sol = kb.solve_nlp(rosen, jnp.zeros(2), jnp.array([1.0, 100.0, 0.5]), ineq=disk, max_iter=2, on_failure="nan")
    assert int(sol.status) == int(kb.Status.MAX_ITER)
    assert np.all(np.isnan(sol.x)) and np.all(np.isnan(sol.ineq_dual))


def test_failure_under_jit_raises_and_nan_mode_works_in_vmap():
    f, g = _infeasible()
    with pytest.raises(Exception, match="INFEASIBLE"):
        jax.jit(lambda p: kb.solve_nlp(f, jnp.zeros(1), p, ineq=g).x)(jnp.array(0.0)).block_until_ready()
    sols = jax.vmap(lambda p: kb.solve_nlp(rosen, jnp.zeros(2), p, ineq=disk, on_failure="nan", **TIGHT))(
        jnp.array([[1.0, 100.0, 0.5], [1.0, 100.0, -1.0]])  # second: empty disk -> infeasible
    )
    assert int(sols.status[0]) == 0 and int(sols.status[1]) == int(kb.Status.INFEASIBLE)
    assert np.all(np.isfinite(sols.x[0])) and np.all(np.isnan(sols.x[1]))


def test_unbounded_is_reported():
    f = lambda x, p: -p * x[0]  # noqa: E731
    with pytest.raises(kb.SolverError, match="ipopt: (UNBOUNDED|MAX_ITER|NUMERICAL_ERROR)"):
        kb.solve_nlp(f, jnp.zeros(1), jnp.array(1.0), max_iter=200)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"objective": "nope"}, "objective: expected a callable"),
        ({"x0": jnp.zeros(0)}, "x0: expected at least one variable"),
        ({"params": jnp.array([1.0, jnp.nan, 0.5])}, "params: contains NaN"),
        ({"lower": jnp.ones(2), "upper": jnp.zeros(2)}, "lower, upper: lower must be <= upper"),
        ({"upper": jnp.zeros(3)}, r"upper: expected a scalar or an array with 2 entries"),
        ({"ineq": lambda x, p: jnp.zeros((2, 2))}, "ineq: must return a scalar or 1-D array"),
        ({"objective": lambda x, p: x}, "objective: must return a scalar"),
        ({"solver": "nosuch"}, "solver: unknown solver 'nosuch'"),
        ({"solver": "osqp"}, "solver: 'osqp' solves qp problems, not nlp"),
        ({"on_failure": "ignore"}, "on_failure: expected one of"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    call = {"objective": rosen, "x0": jnp.zeros(2), "params": jnp.array([1.0, 100.0, 0.5]), "ineq": disk}
    call.update(kwargs)
    objective, x0, params = call.pop("objective"), call.pop("x0"), call.pop("params")
    with pytest.raises(ValueError, match=match):
        kb.solve_nlp(objective, x0, params, **call)


def test_licq_failure_gives_finite_minimum_norm_derivatives():
    # The same active constraint twice: multipliers are not unique (LICQ fails); x* is.
    f = lambda x, p: 0.5 * jnp.sum((x - p) ** 2)  # noqa: E731
    g = lambda x, p: jnp.array([x[0] + x[1] - 1.0, x[0] + x[1] - 1.0])  # noqa: E731
    p = jnp.array([1.0, 2.0])
    fun = lambda p: kb.solve_nlp(f, jnp.zeros(2), p, ineq=g, **TIGHT)  # noqa: E731
    Jx = jax.jacfwd(lambda p: fun(p).x)(p)
    Jlam = jax.jacrev(lambda p: fun(p).ineq_dual)(p)
    # Projection onto x0 + x1 <= 1 (active): dx/dp = I - 11^T/2.
    np.testing.assert_allclose(Jx, np.eye(2) - 0.5, atol=1e-8)
    assert np.all(np.isfinite(Jlam))
    # The total multiplier λ1 + λ2 = (p0 + p1 - 1)/2 is identified; the minimum-norm choice
    # splits its derivative equally between the two copies.
    np.testing.assert_allclose(Jlam.sum(0), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(Jlam[0], Jlam[1], atol=1e-6)


def test_nlp_solution_record():
    # Projection of y onto the half-space a·x <= b (active), with bounds x <= 10 (inactive).
    params = {"y": jnp.array([1.0, 2.0, -0.5]), "a": jnp.array([1.0, 1.0, 0.5]), "b": jnp.array(1.0)}
    s = kb.solve_nlp(proj_obj, jnp.zeros(3), params, ineq=proj_ineq, upper=10.0, **TIGHT)
    assert isinstance(s, kb.NLPSolution)
    assert s._fields == ("x", "eq_dual", "ineq_dual", "lower_dual", "upper_dual", "objective", "status", "iterations", "diagnostics")
    assert isinstance(s.diagnostics, kb.Diagnostics)
    assert s.eq_dual.shape == (0,) and s.ineq_dual.shape == (1,) and s.lower_dual.shape == (3,) and s.upper_dual.shape == (3,)
    assert s.status.dtype == jnp.int32 and int(s.status) == int(kb.Status.SOLVED) and int(s.iterations) >= 1
    np.testing.assert_allclose(s.upper_dual, 0.0, atol=1e-8)  # inactive bounds
    np.testing.assert_allclose(s.lower_dual, 0.0, atol=0)  # no lower bounds: exactly zero
    # objective = f(x*, p), and it is differentiable. Envelope theorem: d f(x*(p), p)/dy = ∂L/∂y
    # = y - x* = λ a (x* = y - λ a), checked in closed form and by central differences.
    np.testing.assert_allclose(s.objective, proj_obj(s.x, params), rtol=1e-12)
    g = jax.grad(lambda p: kb.solve_nlp(proj_obj, jnp.zeros(3), p, ineq=proj_ineq, upper=10.0, **TIGHT).objective)(params)
    np.testing.assert_allclose(g["y"], s.ineq_dual[0] * params["a"], rtol=1e-7)
    fd = fd_jacobian(
        lambda y: kb.solve_nlp(proj_obj, jnp.zeros(3), {**params, "y": jnp.asarray(y)}, ineq=proj_ineq, upper=10.0, **TIGHT).objective,
        params["y"],
    )
    assert rel_err(g["y"], fd) < 1e-6
    # A pytree: flattens and rebuilds with the x structure of x0.
    leaves, tree = jax.tree_util.tree_flatten(s)
    assert isinstance(jax.tree_util.tree_unflatten(tree, leaves), kb.NLPSolution)


def test_ipopt_oracle_cache_skips_derivatives_at_rejected_trial_points():
    """The adapter's cache of (f, c, ∇f, J) at the last point: one first-order call per point while
    trial points are accepted, values alone after a rejection, and every answer equal to the
    oracle's at the point asked (objective and constraints share each call)."""
    from types import SimpleNamespace

    from kktbridge.adapters.ipopt import _Problem

    calls = []

    def values(x, p):
        calls.append("values")
        return np.sum(x**2), x[:1] - 1.0

    def first_order(x, p):
        calls.append("first_order")
        return np.sum(x**2), 2 * x, x[:1] - 1.0, np.array([1.0, 0.0])

    oracles = SimpleNamespace(values=values, first_order=first_order, hess=None, ready=lambda: None)
    problem = _Problem(oracles, np.zeros(1))  # pyright: ignore[reportArgumentType]  (a stand-in)
    x0, x1, x2 = np.array([1.0, 2.0]), np.array([0.5, 1.0]), np.array([0.25, 0.5])
    assert problem.objective(x0) == 5.0 and problem.constraints(x0) == 0.0
    np.testing.assert_array_equal(problem.gradient(x0), 2 * x0)  # accepted: served by the same call
    np.testing.assert_array_equal(problem.jacobian(x0), [1.0, 0.0])
    assert problem.objective(x1) == 1.25  # first order (the last trial was accepted) ...
    assert problem.constraints(x1) == -0.5
    assert problem.objective(x2) == 0.3125  # ... x1 rejected: values alone
    assert problem.constraints(x2) == -0.75
    np.testing.assert_array_equal(problem.gradient(x2), 2 * x2)
    np.testing.assert_array_equal(problem.gradient(x2), 2 * x2)  # cached
    np.testing.assert_array_equal(problem.jacobian(x2), [1.0, 0.0])
    assert calls == ["first_order", "first_order", "values", "first_order"]


def test_linked_ipopt_release_is_reported_and_current_under_make():
    """``linked_ipopt_version`` names the IPOPT cyipopt links; ``make install`` (where peers are
    required) builds it against the casadi wheel's IPOPT 3.14 -- a regression to Debian's 3.11 would
    silently make every NLP 3-4x slower."""
    import re

    from kktbridge.adapters.ipopt import linked_ipopt_version
    from tests._peers import required

    version = linked_ipopt_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    if required():
        assert tuple(int(v) for v in version.split(".")) >= (3, 14), version


def test_bounds_as_a_list_holding_a_traced_scalar_are_differentiable():
    """``upper=[u, 5.0]`` with ``u`` traced (grad, jit): the list becomes a JAX array, not NumPy."""
    f = lambda x, p: jnp.sum((x - p["t"]) ** 2) + 0.1 * x[0] * x[1]  # noqa: E731
    sx = lambda u: jnp.sum(kb.solve_nlp(f, jnp.zeros(2), {"t": jnp.array([1.0, 2.0])}, upper=[u, 5.0]).x)  # noqa: E731
    g = jax.grad(sx)(0.5)
    eps = 1e-6
    fd = (sx(0.5 + eps) - sx(0.5 - eps)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(sx)(0.5), sx(0.5), rtol=1e-10)
