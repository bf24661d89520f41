"""Acceptance tests of the implicit-differentiation engine (``custom_root``, ``custom_fixed_point``,
``root_jvp``, ``root_vjp``, ``implicit_solution``).

The workhorse is ridge regression (paper Figure 1): ``w*(θ) = argmin 0.5||Xw - y||² + 0.5 θ||w||²``
has the closed form ``w* = (XᵀX + θI)⁻¹ Xᵀy``, so every implicit derivative can be compared with
the derivative of that formula. The solver is a numpy closed form behind ``jax.pure_callback``: a
black box JAX cannot differentiate, so any correct derivative must come from the IFT.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kktbridge import custom_fixed_point, custom_root, implicit_solution, root_jvp, root_vjp
from kktbridge.linear_solve import resolve_solver, solve_lstsq
from kktbridge.optimality import gradient_descent_fixed_point, projected_gradient_fixed_point, stationarity_fun

DIRECT = ["lu", "cholesky", "lstsq", "auto"]
ITERATIVE = ["cg", "normal_cg", "gmres", "bicgstab"]
# Iterative solvers stop at a relative residual of 1e-10; with cond(XᵀX + θI) ~ 10 here the
# Jacobian error is far below 1e-6, the tolerance the acceptance criteria set for them.
RTOL = {**{s: 1e-8 for s in DIRECT}, **{s: 1e-6 for s in ITERATIVE}}


# --------------------------------------------------------------------------------------------
# Ridge regression fixtures
# --------------------------------------------------------------------------------------------


def ridge_objective(w, theta, X, y):
    r = X @ w - y
    return 0.5 * jnp.sum(r**2) + 0.5 * theta * jnp.sum(w**2)


def ridge_closed_form(theta, X, y):
    """Differentiable reference: ``(XᵀX + θI)⁻¹Xᵀy`` written with jnp."""
    n = X.shape[1]
    return jnp.linalg.solve(X.T @ X + theta * jnp.eye(n), X.T @ y)


def _numpy_ridge(theta, X, y):
    theta, X, y = np.asarray(theta), np.asarray(X), np.asarray(y)
    return np.linalg.solve(X.T @ X + theta * np.eye(X.shape[1]), X.T @ y)


def black_box_ridge(init, theta, X, y):
    """Host (numpy) solve: not traceable, not differentiable, sequential under vmap."""
    del init
    shape = jax.ShapeDtypeStruct((X.shape[1],), jnp.result_type(X))
    return jax.pure_callback(_numpy_ridge, shape, theta, X, y, vmap_method="sequential")


def make_ridge_solver(solve="auto"):
    return custom_root(stationarity_fun(ridge_objective), solve=solve)(black_box_ridge)


@pytest.fixture
def data(rng):
    X = jnp.asarray(rng.standard_normal((8, 4)))
    y = jnp.asarray(rng.standard_normal(8))
    return X, y, 1.3


def _rel_close(actual, expected, rtol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    err = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


# --------------------------------------------------------------------------------------------
# Jacobians vs closed form, every linear solver, forward and reverse
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize("solve", DIRECT + ITERATIVE)
def test_ridge_jacobians_match_closed_form(data, solve, mode):
    X, y, theta = data
    solver = make_ridge_solver(solve)
    jac = jax.jacfwd if mode == "fwd" else jax.jacrev
    init = jnp.zeros(X.shape[1])

    w = solver(init, theta, X, y)
    _rel_close(w, _numpy_ridge(theta, X, y), 1e-12)

    J = jac(solver, argnums=(1, 2, 3))(init, theta, X, y)
    J_ref = jax.jacfwd(ridge_closed_form, argnums=(0, 1, 2))(theta, X, y)
    for a, e in zip(J, J_ref):
        _rel_close(a, e, RTOL[solve])

    # Independent hand-derived forms for θ and y: dw/dθ = -(XᵀX+θI)⁻¹ w, dw/dy = (XᵀX+θI)⁻¹ Xᵀ.
    H = np.asarray(X.T @ X) + theta * np.eye(X.shape[1])
    _rel_close(J[0], -np.linalg.solve(H, np.asarray(w)), RTOL[solve])
    _rel_close(J[2], np.linalg.solve(H, np.asarray(X.T)), RTOL[solve])


def test_init_params_get_zero_derivative(data):
    X, y, theta = data
    solver = make_ridge_solver()
    J = jax.jacrev(solver, argnums=0)(jnp.ones(X.shape[1]), theta, X, y)
    np.testing.assert_array_equal(J, np.zeros((4, 4)))


# --------------------------------------------------------------------------------------------
# Second order
# --------------------------------------------------------------------------------------------


def _central_fd_jacobian(f, x, h):
    x = np.asarray(x, dtype=float)
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        cols.append((np.asarray(f(jnp.asarray(x + e))) - np.asarray(f(jnp.asarray(x - e)))) / (2 * h))
    return np.stack(cols, axis=-1)


def test_hessian_through_black_box_matches_fd_of_gradient(rng):
    """Per-feature ridge θ ∈ R⁴; Hessian of a validation loss of w*(θ)."""
    X, y = jnp.asarray(rng.standard_normal((10, 4))), jnp.asarray(rng.standard_normal(10))
    Xv, yv = jnp.asarray(rng.standard_normal((6, 4))), jnp.asarray(rng.standard_normal(6))

    def objective(w, theta):
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(theta * w**2)

    def host(theta):
        return np.linalg.solve(np.asarray(X.T @ X) + np.diag(theta), np.asarray(X.T @ y))

    @custom_root(stationarity_fun(objective))
    def solver(init, theta):
        return jax.pure_callback(host, jax.ShapeDtypeStruct((4,), jnp.float64), theta, vmap_method="sequential")

    def loss(theta):
        return 0.5 * jnp.sum((Xv @ solver(None, theta) - yv) ** 2)

    theta = jnp.asarray([0.5, 1.0, 2.0, 0.8])

    def loss_ref(theta):
        w = jnp.linalg.solve(X.T @ X + jnp.diag(theta), X.T @ y)
        return 0.5 * jnp.sum((Xv @ w - yv) ** 2)

    # The gradient the Hessian is differenced from is itself checked: against the closed form and
    # against central differences of the black-box loss values (independent of the implicit rule).
    grad = jax.jit(jax.grad(loss))
    _rel_close(grad(theta), jax.grad(loss_ref)(theta), 1e-10)
    _rel_close(grad(theta), _central_fd_jacobian(lambda t: loss(t)[None], theta, 1e-5)[0], 1e-8)
    hess = jax.jit(jax.hessian(loss))(theta)
    # Central FD of the (implicit) gradient: truncation O(h²) ~ 1e-10, round-off ~ eps/h ~ 1e-11.
    fd = _central_fd_jacobian(grad, theta, 1e-5)
    _rel_close(hess, fd, 1e-6)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-10)
    _rel_close(hess, jax.hessian(loss_ref)(theta), 1e-8)


def test_hessian_nonquadratic_inner_problem_jax_loop(rng):
    """ℓ2-regularised logistic regression solved by Newton iterations in a JAX loop (non-quadratic,
    so the second-order terms of the implicit rule are exercised)."""
    X = jnp.asarray(rng.standard_normal((15, 3)))
    t = jnp.asarray((rng.random(15) < 0.5).astype(float))
    Xv = jnp.asarray(rng.standard_normal((5, 3)))

    def objective(w, theta):
        z = X @ w
        return jnp.sum(jax.nn.softplus(z) - t * z) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)

    grad_f, hess_f = jax.grad(objective), jax.hessian(objective)

    @custom_root(stationarity_fun(objective))
    def solver(init, theta):
        return jax.lax.fori_loop(0, 30, lambda _, w: w - jnp.linalg.solve(hess_f(w, theta), grad_f(w, theta)), init)

    def loss(theta):
        return jnp.sum(jnp.tanh(Xv @ solver(jnp.zeros(3), theta)))

    theta = jnp.asarray([-0.5, 0.3, 0.1])
    w = solver(jnp.zeros(3), theta)
    assert np.linalg.norm(grad_f(w, theta)) < 1e-12
    # The implicit gradient vs central differences of the loss values (the Newton loop converges
    # to ~1e-15, so FD at h = 1e-5 is accurate to ~1e-10).
    loss_values = jax.jit(lambda t: loss(t)[None])
    _rel_close(jax.jit(jax.grad(loss))(theta), _central_fd_jacobian(loss_values, theta, 1e-5)[0], 1e-8)
    hess = jax.jit(jax.hessian(loss))(theta)
    fd = _central_fd_jacobian(jax.jit(jax.grad(loss)), theta, 1e-5)  # error budget as in the test above
    _rel_close(hess, fd, 1e-6)


# --------------------------------------------------------------------------------------------
# Structure of arguments and solutions
# --------------------------------------------------------------------------------------------


def test_pytree_solution_and_pytree_args(data):
    """Solution ``{"head": w[:1], "tail": (w[1:3], w[3])}``; args a dict holding a tuple."""
    X, y, theta = data

    def split(w):
        return {"head": w[:1], "tail": (w[1:3], w[3])}

    def merge(s):
        return jnp.concatenate([s["head"], s["tail"][0], s["tail"][1][None]])

    def objective(s, params):
        X, y = params["data"]
        return ridge_objective(merge(s), params["theta"], X, y)

    @custom_root(stationarity_fun(objective))
    def solver(init, params):
        return split(black_box_ridge(None, params["theta"], *params["data"]))

    params = {"theta": theta, "data": (X, y)}
    s = solver(None, params)
    assert jax.tree_util.tree_structure(s) == jax.tree_util.tree_structure(split(jnp.zeros(4)))

    J_ref = jax.jacfwd(ridge_closed_form, argnums=(0, 1, 2))(theta, X, y)
    for jac in (jax.jacfwd, jax.jacrev):
        J = jac(lambda p: merge(solver(None, p)))(params)
        _rel_close(J["theta"], J_ref[0], 1e-8)
        _rel_close(J["data"][0], J_ref[1], 1e-8)
        _rel_close(J["data"][1], J_ref[2], 1e-8)


def test_closure_over_traced_value(data):
    """The optimality function closes over ``X`` traced by an outer ``grad``: d/dX is implicit too."""
    X, y, theta = data
    v = jnp.arange(1.0, 5.0)

    def outer(X):
        F = lambda w, theta: jax.grad(ridge_objective)(w, theta, X, y)  # captures the tracer X

        @custom_root(F)
        def solver(init, theta):
            # The solver only needs X's value; its derivative comes from F's closure.
            return black_box_ridge(init, theta, jax.lax.stop_gradient(X), y)

        return v @ solver(None, theta)

    g = jax.grad(outer)(X)
    g_ref = jax.grad(lambda X: v @ ridge_closed_form(theta, X, y))(X)
    _rel_close(g, g_ref, 1e-8)
    _rel_close(jax.jit(jax.grad(outer))(X), g_ref, 1e-8)


def test_keyword_arguments(data):
    X, y, theta = data
    solver = make_ridge_solver()
    w = solver(None, theta, X=X, y=y)
    _rel_close(w, _numpy_ridge(theta, X, y), 1e-12)

    def by_keyword(theta, y):
        return solver(None, y=y, X=X, theta=theta)

    J = jax.jacrev(by_keyword, argnums=(0, 1))(theta, y)
    J_ref = jax.jacfwd(ridge_closed_form, argnums=(0, 2))(theta, X, y)
    _rel_close(J[0], J_ref[0], 1e-8)
    _rel_close(J[1], J_ref[1], 1e-8)


def test_signature_mismatch_is_reported(data):
    X, y, theta = data
    # A solver that tolerates the extra argument; the optimality function's signature does not.
    solver = custom_root(stationarity_fun(ridge_objective))(lambda init, *a: black_box_ridge(init, *a[:3]))
    with pytest.raises(TypeError, match="signature"):
        solver(None, theta, X, y, 1.0)


def test_jit(data):
    X, y, theta = data
    solver = make_ridge_solver()
    J = jax.jit(jax.jacrev(solver, argnums=(1, 2)))(None, theta, X, y)
    J_ref = jax.jacfwd(ridge_closed_form, argnums=(0, 1))(theta, X, y)
    _rel_close(J[0], J_ref[0], 1e-8)
    _rel_close(J[1], J_ref[1], 1e-8)
    _rel_close(jax.jit(solver)(None, theta, X, y), _numpy_ridge(theta, X, y), 1e-12)


def test_vmap_over_decorated_solver(data):
    X, y, _ = data
    solver = make_ridge_solver()
    thetas = jnp.asarray([0.1, 1.0, 5.0])
    batched = jax.jit(
        jax.vmap(
            lambda t: (
                solver(None, t, X, y),
                jax.jacfwd(solver, argnums=1)(None, t, X, y),
                jax.grad(lambda y: jnp.sum(solver(None, t, X, y)))(y),
            )
        )
    )
    ws, dws, grads_y = batched(thetas)
    Xn = np.asarray(X)
    for i, t in enumerate(np.asarray(thetas)):
        H = Xn.T @ Xn + t * np.eye(4)
        w = _numpy_ridge(t, X, y)
        _rel_close(ws[i], w, 1e-12)
        _rel_close(dws[i], -np.linalg.solve(H, w), 1e-8)
        _rel_close(grads_y[i], Xn @ np.linalg.solve(H, np.ones(4)), 1e-8)


# --------------------------------------------------------------------------------------------
# root_jvp / root_vjp / implicit_solution
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solve", ["auto", "cg"])
def test_root_jvp_and_vjp_directly(rng, data, solve):
    X, y, theta = data
    F = stationarity_fun(ridge_objective)
    w = jnp.asarray(_numpy_ridge(theta, X, y))
    args = (theta, X, y)
    tangents = (0.7, jnp.asarray(rng.standard_normal(X.shape)), jnp.asarray(rng.standard_normal(y.shape)))
    tol = RTOL[solve]

    w_dot = root_jvp(F, w, args, tangents, solve=solve)
    _, w_dot_ref = jax.jvp(ridge_closed_form, args, tangents)
    _rel_close(w_dot, w_dot_ref, tol)

    v = jnp.asarray(rng.standard_normal(w.shape))
    cotangents = root_vjp(F, w, args, v, solve=solve)
    _, vjp_ref = jax.vjp(ridge_closed_form, *args)
    assert len(cotangents) == 3
    for a, e in zip(cotangents, vjp_ref(v)):
        _rel_close(a, e, tol)


def test_root_jvp_single_argument_and_mismatched_tangents(data):
    X, y, theta = data
    F = lambda w, theta: jax.grad(ridge_objective)(w, theta, X, y)
    w = jnp.asarray(_numpy_ridge(theta, X, y))
    _rel_close(root_jvp(F, w, theta, 1.0), jax.jacfwd(ridge_closed_form)(theta, X, y), 1e-8)
    with pytest.raises(ValueError, match="tangents"):
        root_jvp(F, w, (theta,), (1.0, 2.0))


def test_implicit_solution_discards_solution_derivatives(data):
    """A solution computed by differentiable JAX code gets IFT derivatives, not unrolled ones."""
    X, y, theta = data
    F = stationarity_fun(ridge_objective)

    def f(theta):
        w_wrong = ridge_closed_form(2.0 * theta, X, y)  # derivative info that must be discarded
        w = w_wrong + jax.lax.stop_gradient(ridge_closed_form(theta, X, y) - w_wrong)
        return implicit_solution(F, w, (theta, X, y))

    _rel_close(jax.jacrev(f)(theta), jax.jacfwd(ridge_closed_form)(theta, X, y), 1e-8)


# --------------------------------------------------------------------------------------------
# custom_fixed_point, aux, static args, ridge
# --------------------------------------------------------------------------------------------


def test_custom_fixed_point_with_aux(data):
    X, y, theta = data
    eta = 1.0 / (np.linalg.norm(np.asarray(X), 2) ** 2 + theta)
    T = gradient_descent_fixed_point(ridge_objective, stepsize=eta)

    @custom_fixed_point(T, has_aux=True)
    def solver(init, theta, X, y):
        w = black_box_ridge(init, theta, X, y)
        return w, {"residual": jnp.linalg.norm(T(w, theta, X, y) - w), "iterations": 0}

    w, aux = solver(None, theta, X, y)
    assert aux["iterations"] == 0 and float(aux["residual"]) < 1e-12
    _rel_close(w, _numpy_ridge(theta, X, y), 1e-12)
    J_ref = jax.jacfwd(ridge_closed_form)(theta, X, y)
    _rel_close(jax.jacrev(lambda t: solver(None, t, X, y)[0])(theta), J_ref, 1e-8)
    J, aux = jax.jacfwd(lambda t: solver(None, t, X, y), has_aux=True)(theta)
    _rel_close(J, J_ref, 1e-8)
    assert float(aux["residual"]) < 1e-12


def test_non_array_static_arguments(data):
    """A string and a callable among the arguments are passed through untouched, not traced."""
    X, y, theta = data

    def objective(w, theta, penalty, link):
        reg = jnp.sum(w**2) if penalty == "l2" else jnp.sum(jnp.abs(w))
        return 0.5 * jnp.sum((link(X) @ w - y) ** 2) + 0.5 * theta * reg

    @custom_root(stationarity_fun(objective))
    def solver(init, theta, penalty, link):
        assert isinstance(penalty, str) and callable(link)
        return black_box_ridge(init, theta, link(X), y)

    link = lambda A: 2.0 * A
    w = solver(None, theta, "l2", link)
    _rel_close(w, _numpy_ridge(theta, 2.0 * X, y), 1e-12)
    for jac in (jax.jacfwd, jax.jacrev):
        J = jac(solver, argnums=1)(None, theta, "l2", link)
        _rel_close(J, jax.jacfwd(ridge_closed_form)(theta, 2.0 * X, y), 1e-8)


def test_ridge_option_of_linear_solver(data):
    """``solve=partial(solver, ridge=r)`` solves ``(∂₁F + rI) ż = -∂₂F θ̇``: the biased derivative."""
    X, y, theta = data
    r = 0.25
    H = np.asarray(X.T @ X) + theta * np.eye(4)
    w = _numpy_ridge(theta, X, y)
    expected = -np.linalg.solve(H + r * np.eye(4), w)  # ∂₂F = w for F = ∇_w (…+ θ/2||w||²)
    for base in ("lu", "lstsq", "cg"):
        solver = make_ridge_solver(functools.partial(resolve_solver(base), ridge=r))
        for jac in (jax.jacfwd, jax.jacrev):
            _rel_close(jac(solver, argnums=1)(None, theta, X, y), expected, RTOL["cg" if base == "cg" else "lu"])


def test_singular_optimality_system_gives_finite_minimum_norm_derivative():
    """Flat direction: f(w, θ) = 0.5 (w₀ - θ)²  (w₁ free). Default solver -> minimum-norm, finite."""
    F = stationarity_fun(lambda w, theta: 0.5 * (w[0] - theta) ** 2)

    @custom_root(F)
    def solver(init, theta):
        return jnp.stack([theta, 3.0])

    solver_lstsq = custom_root(F, solve=solve_lstsq)(solver.__wrapped__)
    jacs = jax.jit(
        lambda t: (
            jax.jacfwd(solver, argnums=1)(None, t),
            jax.jacrev(solver, argnums=1)(None, t),
            jax.jacrev(solver_lstsq, argnums=1)(None, t),
        )
    )(2.0)
    for J in jacs:
        np.testing.assert_allclose(J, [1.0, 0.0], atol=1e-12)


# --------------------------------------------------------------------------------------------
# Multiclass SVM dual (paper Sec. 4.1): projected gradient on a product of simplices
# --------------------------------------------------------------------------------------------


def test_multiclass_svm_dual_matches_finite_differences(rng):
    from kktbridge.core._projection import projection_simplex

    m, p, k = 20, 5, 3
    X = jnp.asarray(rng.standard_normal((m, p)))
    Y = jnp.asarray(np.eye(k)[rng.integers(0, k, m)])
    X_val = jnp.asarray(rng.standard_normal((10, p)))
    Y_val = jnp.asarray(np.eye(k)[rng.integers(0, k, 10)])

    def W(x, theta):  # dual-primal map
        return X.T @ (Y - x) / theta

    def f(x, theta):  # dual objective (paper Sec. 4.1)
        return 0.5 * theta * jnp.sum(W(x, theta) ** 2) + jnp.vdot(x, Y)

    proj_rows = jax.vmap(projection_simplex)
    T = projected_gradient_fixed_point(f, lambda v, _: proj_rows(v), stepsize=1.0)
    lipschitz = float(np.linalg.norm(np.asarray(X), 2) ** 2)

    @custom_fixed_point(T)
    def svm_dual(init, theta, proj_params):
        """Accelerated projected gradient (FISTA) run to a fixed-point residual of 1e-14."""
        T_step = projected_gradient_fixed_point(f, lambda v, _: proj_rows(v), stepsize=theta / lipschitz)
        step = lambda x: T_step(x, theta, None)

        def cond(state):
            x, _, _, it = state
            return (it < 50_000) & (jnp.max(jnp.abs(step(x) - x)) > 1e-14)

        def body(state):
            x, z, t, it = state
            x_new = step(z)
            t_new = (1 + jnp.sqrt(1 + 4 * t**2)) / 2
            return x_new, x_new + (t - 1) / t_new * (x_new - x), t_new, it + 1

        return jax.lax.while_loop(cond, body, (init, init, 1.0, 0))[0]

    init = jnp.full((m, k), 1.0 / k)
    theta = 1.5
    solve = jax.jit(lambda t: svm_dual(init, t, None))
    x = solve(theta)
    assert float(jnp.max(jnp.abs(T(x, theta, None) - x))) < 1e-12
    np.testing.assert_allclose(jnp.sum(x, axis=1), 1.0, atol=1e-12)
    assert 0 < int(jnp.sum((x > 1e-9) & (x < 1 - 1e-9))) < m * k  # some rows strictly inside a face

    # Central FD of the black-box solution (solutions accurate to ~1e-14, h = 1e-5: error ~1e-9).
    h = 1e-5
    fd = (solve(theta + h) - solve(theta - h)) / (2 * h)
    assert np.linalg.norm(fd) > 1e-3  # the Jacobian is not trivially zero
    _rel_close(jax.jit(jax.jacfwd(solve))(theta), fd, 1e-6)
    _rel_close(jax.jit(jax.jacrev(solve))(theta), fd, 1e-6)

    def outer_loss(log_theta):
        theta = jnp.exp(log_theta)
        y_pred = X_val @ W(solve(theta), theta)
        return 0.5 * jnp.sum((y_pred - Y_val) ** 2)

    lam = np.log(theta)
    fd_outer = (outer_loss(lam + h) - outer_loss(lam - h)) / (2 * h)
    _rel_close(jax.jit(jax.grad(outer_loss))(lam), fd_outer, 1e-6)


def _ridge_kkt(w, X, y, lam):
    return X.T @ (X @ w - y) + lam * w


def _ridge_matrix(w, X, y, lam):
    return X.T @ X + lam * jnp.eye(X.shape[1], dtype=X.dtype)


@pytest.mark.parametrize("valid", [None, True])
def test_explicit_jacobian_gives_the_same_derivatives_to_second_order(valid):
    """``implicit_solution(jacobian=...)``: same first and second derivatives as JVP-built systems."""
    rng = np.random.default_rng(3)
    X, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=8))

    def solution(lam, jac):
        w = jnp.linalg.solve(X.T @ X + lam * jnp.eye(3), X.T @ y)  # the "black box"
        extra = {} if valid is None else dict(valid=jnp.asarray(valid), fallback=jnp.zeros(3))
        return implicit_solution(_ridge_kkt, w, (X, y, lam), jacobian=_ridge_matrix if jac else None, **extra)

    lam = jnp.asarray(0.7)
    closed = lambda lam: jnp.linalg.solve(X.T @ X + lam * jnp.eye(3), X.T @ y)  # noqa: E731
    for jac in (False, True):
        f = lambda lam: solution(lam, jac)  # noqa: E731
        np.testing.assert_allclose(jax.jacfwd(f)(lam), jax.jacfwd(closed)(lam), rtol=1e-10)
        np.testing.assert_allclose(jax.jacrev(f)(lam), jax.jacfwd(closed)(lam), rtol=1e-10)
        np.testing.assert_allclose(jax.hessian(f)(lam), jax.hessian(closed)(lam), rtol=1e-9)
        gX = jax.grad(lambda X_: jnp.sum(implicit_solution(_ridge_kkt, closed(lam), (X_, y, lam), jacobian=_ridge_matrix if jac else None) ** 2))(X)
        gX_ref = jax.grad(lambda X_: jnp.sum(jnp.linalg.solve(X_.T @ X_ + lam * jnp.eye(3), X_.T @ y) ** 2))(X)
        np.testing.assert_allclose(gX, gX_ref, rtol=1e-9)


def test_explicit_jacobian_of_a_failed_instance_is_poisoned():
    rng = np.random.default_rng(4)
    X, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=8))

    def f(lam, ok):
        w = jnp.linalg.solve(X.T @ X + lam * jnp.eye(3), X.T @ y)
        return implicit_solution(_ridge_kkt, w, (X, y, lam), valid=ok, fallback=jnp.zeros(3), jacobian=_ridge_matrix)

    assert np.all(np.isnan(jax.jacfwd(f)(jnp.asarray(0.5), jnp.asarray(False))))
    assert np.all(np.isfinite(jax.jacfwd(f)(jnp.asarray(0.5), jnp.asarray(True))))


def test_explicit_jacobian_shape_is_checked():
    w = jnp.zeros(3)
    bad = lambda w, lam: jnp.eye(2)  # noqa: E731
    with pytest.raises(ValueError, match="jacobian"):
        jax.jacfwd(lambda lam: implicit_solution(lambda w, lam: w - lam, w, (lam,), jacobian=bad))(jnp.ones(3))
