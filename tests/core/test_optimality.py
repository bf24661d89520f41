"""The optimality-condition catalog (paper Table 1): each map vanishes (root) or is the identity
(fixed point) at a known solution, and differentiating a solution through it matches closed forms
or central finite differences."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge.core._kkt as kkt_impl
from kktbridge import custom_fixed_point, custom_root, optimality
from kktbridge.core._projection import projection_simplex, projection_simplex_kl
from kktbridge.core._prox import prox_lasso, prox_ridge
from kktbridge.optimality import (
    KKTPoint,
    block_proximal_gradient_fixed_point,
    gradient_descent_fixed_point,
    kkt_residual,
    mirror_descent_fixed_point,
    newton_fixed_point,
    newton_root_fixed_point,
    projected_gradient_fixed_point,
    proximal_gradient_fixed_point,
    stationarity_fun,
)

H = 1e-5  # central-FD step: truncation O(h²) ~ 1e-10 on these smooth pieces, round-off ~ eps/h


def _rel_close(actual, expected, rtol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    err = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


def _fd(f, x, h=H):
    """Central finite-difference Jacobian of ``f`` at the array ``x`` (last axis = input index)."""
    x = np.asarray(x, dtype=float)
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        cols.append((np.asarray(f(jnp.asarray(x + e))) - np.asarray(f(jnp.asarray(x - e)))) / (2 * h))
    return np.stack(cols, axis=-1).reshape(np.shape(f(jnp.asarray(x))) + x.shape)


def _fista(step, init, tol=1e-14, max_iter=50_000):
    """Accelerated fixed-point iteration of a (proximal/projected) gradient step, to ``tol``."""

    tmap = jax.tree_util.tree_map

    def cond(state):
        x, _, _, it = state
        diffs = jax.tree_util.tree_leaves(tmap(jnp.subtract, step(x), x))
        gap = jnp.max(jnp.stack([jnp.max(jnp.abs(d)) for d in diffs]))
        return (it < max_iter) & (gap > tol)

    def body(state):
        x, z, t, it = state
        x_new = step(z)
        t_new = (1 + jnp.sqrt(1 + 4 * t**2)) / 2
        return x_new, tmap(lambda a, b: a + (t - 1) / t_new * (a - b), x_new, x), t_new, it + 1

    return jax.lax.while_loop(cond, body, (init, init, 1.0, 0))[0]


def _quadratic(rng, n=4):
    M = rng.standard_normal((n, n))
    return jnp.asarray(M @ M.T / n + np.eye(n))


# --------------------------------------------------------------------------------------------
# Stationarity, gradient descent, KKT
# --------------------------------------------------------------------------------------------


def test_stationarity_fun_is_gradient_and_keeps_signature(rng):
    Q, b = _quadratic(rng), jnp.asarray(rng.standard_normal(4))

    def f(x, theta, scale=1.0):
        return 0.5 * x @ Q @ x - scale * theta @ x

    F = stationarity_fun(f)
    x = jnp.asarray(rng.standard_normal(4))
    np.testing.assert_allclose(F(x, b, scale=2.0), Q @ x - 2.0 * b, rtol=1e-12)
    assert list(inspect.signature(F).parameters) == ["x", "theta", "scale"]

    # Root at the solution; derivative through custom_root with keyword binding by name.
    @custom_root(F)
    def solver(init, theta, scale=1.0):
        return jnp.linalg.solve(Q, scale * theta)

    np.testing.assert_allclose(F(solver(None, b, scale=2.0), b, scale=2.0), 0, atol=1e-12)
    J = jax.jacrev(lambda s: solver(None, b, scale=s))(2.0)
    _rel_close(J, np.linalg.solve(Q, b), 1e-10)


@pytest.mark.parametrize("stepsize", [0.1, 1.0])
def test_gradient_descent_fixed_point_pytree(rng, stepsize):
    """``x = {"u": (2,), "v": (2,)}``; the derivative does not depend on the step size."""
    Q, b = _quadratic(rng), jnp.asarray(rng.standard_normal(4))
    flat = lambda x: jnp.concatenate([x["u"], x["v"]])
    split = lambda z: {"u": z[:2], "v": z[2:]}

    def f(x, theta):
        z = flat(x)
        return 0.5 * z @ Q @ z - theta * b @ z

    T = gradient_descent_fixed_point(f, stepsize=stepsize)

    @custom_fixed_point(T)
    def solver(init, theta):
        return split(jnp.linalg.solve(Q, theta * b))

    x = solver(None, 1.5)
    for a, e in zip(jax.tree_util.tree_leaves(T(x, 1.5)), jax.tree_util.tree_leaves(x)):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-12)
    J = jax.jit(jax.jacfwd(lambda t: flat(solver(None, t))))(1.5)
    _rel_close(J, np.linalg.solve(Q, b), 1e-10)


def test_kkt_is_the_core_machinery(rng):
    """``kkt_residual`` / ``KKTPoint`` are re-exports (one KKT implementation) and work as a root."""
    assert kkt_residual is kkt_impl.kkt_residual and optimality.kkt_fun is kkt_impl.kkt_residual
    assert KKTPoint is kkt_impl.KKTPoint
    # min 0.5||x - c||² s.t. sum(x) = 1: x = c - (sum(c) - 1)/n, ν = (sum(c) - 1)/n.
    F = kkt_residual(lambda x, c: 0.5 * jnp.sum((x - c) ** 2), eq=lambda x, c: jnp.sum(x, keepdims=True) - 1.0)
    c = jnp.asarray(rng.standard_normal(3))

    @custom_root(F)
    def solver(init, c):
        nu = (jnp.sum(c) - 1.0) / 3
        return KKTPoint(c - nu, nu[None], jnp.zeros(0))

    z = solver(None, c)
    for r in jax.tree_util.tree_leaves(F(z, c)):
        np.testing.assert_allclose(r, 0, atol=1e-12)
    _rel_close(jax.jit(jax.jacrev(lambda c: solver(None, c).x))(c), np.eye(3) - 1.0 / 3, 1e-10)


def test_kkt_fun_with_inequalities_active_and_inactive(rng):
    """``kkt_fun`` beyond the identity check: min 0.5||x - y||² s.t. aᵀx ≤ β, x₀ ≤ u (two rows).

    At y with aᵀy > β (row 0 active) and y₀ < u (row 1 inactive): x = y - λa, λ = (aᵀy - β)/‖a‖².
    The residual vanishes there (and not at a perturbed point), and custom_root through it gives
    the projection's Jacobian I - aaᵀ/‖a‖² and dλ/dy = aᵀ/‖a‖² (inactive row: dλ₁ = 0)."""
    a = jnp.asarray([1.0, 2.0, -1.0])
    F = optimality.kkt_fun(
        lambda x, y, beta, u: 0.5 * jnp.sum((x - y) ** 2),
        ineq=lambda x, y, beta, u: jnp.stack([a @ x - beta, x[0] - u]),
    )
    y, beta, u = jnp.asarray([1.0, 1.5, 0.3]), 0.5, 5.0

    def closed(y):
        lam = (a @ y - beta) / (a @ a)
        return KKTPoint(y - lam * a, jnp.zeros(0), jnp.stack([lam, 0.0]))

    z = closed(y)
    assert float(z.ineq_dual[0]) > 0.5  # strongly active
    for r in jax.tree_util.tree_leaves(F(z, y, beta, u)):
        np.testing.assert_allclose(r, 0, atol=1e-14)
    off = KKTPoint(z.x + 1e-3, z.eq_dual, z.ineq_dual)
    assert np.abs(np.asarray(F(off, y, beta, u).x)).max() > 5e-4  # the residual can fail

    @custom_root(F)
    def solver(init, y, beta, u):
        return closed(y)  # a "solver" whose own derivative is discarded by custom_root

    Jx, Jlam = jax.jit(jax.jacrev(lambda y: (solver(None, y, beta, u).x, solver(None, y, beta, u).ineq_dual)))(y)
    an = np.asarray(a)
    _rel_close(Jx, np.eye(3) - np.outer(an, an) / (an @ an), 1e-12)
    _rel_close(Jlam, np.stack([an / (an @ an), np.zeros(3)]), 1e-12)
    # dx/dβ = a/‖a‖², from the active row only.
    _rel_close(jax.jacfwd(lambda b: solver(None, y, b, u).x)(beta), an / (an @ an), 1e-12)


def _lp():
    """min x₁ + 2x₂ s.t. x ≥ 0, x₁ + x₂ ≥ 1 in SCS form (s = b - Ax ∈ R³₊). By hand:
    x* = (1, 0), s* = (1, 0, 0), y* = (0, 1, 1) (c + Aᵀy = 0, yᵀs = 0); near b = (0, 0, -1) the
    rows 2 and 3 stay active, so x(b) = (b₁ - b₂, -b₁)."""
    A = jnp.asarray([[-1.0, 0.0], [0.0, -1.0], [-1.0, -1.0]])
    b = jnp.asarray([0.0, 0.0, -1.0])
    c = jnp.asarray([1.0, 2.0])
    x, y, s = jnp.asarray([1.0, 0.0]), jnp.asarray([0.0, 1.0, 1.0]), jnp.asarray([1.0, 0.0, 0.0])
    return A, b, c, x, y, s


def test_conic_residual_map_vanishes_at_a_known_solution():
    A, b, c, x, y, s = _lp()
    F = optimality.conic_residual_map({"l": 3})
    z = optimality.ConicPoint(x, y - s)
    assert z._fields == ("x", "v")
    r = F(z, A, b, c)
    assert isinstance(r, optimality.ConicPoint)
    for leaf in r:
        np.testing.assert_allclose(leaf, 0.0, atol=1e-15)
    # Not at a wrong point: x off by 0.1, or a dual that violates c + Aᵀy = 0.
    assert np.abs(np.asarray(F(optimality.ConicPoint(x + 0.1, y - s), A, b, c).v)).max() > 0.05
    assert np.abs(np.asarray(F(optimality.ConicPoint(x, 2 * y - s), A, b, c).x)).max() > 0.5
    # A second-order cone: min -x₂ s.t. ‖(x₁, x₂)‖ ≤ 1, i.e. s = (1, x₁, x₂) ∈ Q³ with
    # A = [[0, 0], [-1, 0], [0, -1]], b = (1, 0, 0): x* = (0, 1), s* = (1, 0, 1), y* = (1, 0, -1).
    Aq = jnp.asarray([[0.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    bq, cq = jnp.asarray([1.0, 0.0, 0.0]), jnp.asarray([0.0, -1.0])
    xq, yq, sq = jnp.asarray([0.0, 1.0]), jnp.asarray([1.0, 0.0, -1.0]), jnp.asarray([1.0, 0.0, 1.0])
    rq = optimality.conic_residual_map({"q": [3]})(optimality.ConicPoint(xq, yq - sq), Aq, bq, cq)
    for leaf in rq:
        np.testing.assert_allclose(leaf, 0.0, atol=1e-15)


def test_conic_residual_map_derivative_matches_the_lp_closed_form():
    A, b, c, x, y, s = _lp()
    F = optimality.conic_residual_map({"l": 3})
    from kktbridge import implicit_solution

    def x_of(b):
        return implicit_solution(F, optimality.ConicPoint(x, y - s), (A, b, c)).x

    J = jax.jacfwd(x_of)(b)
    np.testing.assert_allclose(J, [[0.0, 1.0, -1.0], [0.0, -1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(jax.jacrev(x_of)(b), J, atol=1e-12)
    # dx/dc = 0 on an LP vertex (the vertex does not move with the cost).
    np.testing.assert_allclose(
        jax.jacfwd(lambda c: implicit_solution(F, optimality.ConicPoint(x, y - s), (A, b, c)).x)(c), 0.0, atol=1e-12
    )


# --------------------------------------------------------------------------------------------
# Proximal gradient: lasso
# --------------------------------------------------------------------------------------------


def _lasso_data(rng):
    X = jnp.asarray(rng.standard_normal((12, 6)))
    y = jnp.asarray(rng.standard_normal(12))
    return X, y


def test_proximal_gradient_lasso(rng):
    X, y = _lasso_data(rng)
    L = float(np.linalg.norm(np.asarray(X), 2) ** 2)

    def f(w, y):
        return 0.5 * jnp.sum((X @ w - y) ** 2)

    T = proximal_gradient_fixed_point(f, prox_lasso, stepsize=1.0 / L)

    @jax.jit
    @custom_fixed_point(T)
    def lasso(init, y, lam):
        return _fista(lambda w: T(w, y, lam), init)

    lam = 2.0
    w = lasso(jnp.zeros(6), y, lam)
    support = np.abs(np.asarray(w)) > 1e-10
    assert 0 < support.sum() < 6  # a genuinely sparse solution
    np.testing.assert_allclose(T(w, y, lam), w, rtol=0, atol=1e-13)

    # Closed form on the support S: w_S = (X_SᵀX_S)⁻¹(X_Sᵀy - λ sign(w_S)).
    XS, s = np.asarray(X)[:, support], np.sign(np.asarray(w)[support])
    dw_dlam = np.zeros(6)
    dw_dlam[support] = -np.linalg.solve(XS.T @ XS, s)
    dw_dy = np.zeros((6, 12))
    dw_dy[support] = np.linalg.solve(XS.T @ XS, XS.T)

    for jac in (jax.jacfwd, jax.jacrev):
        J_lam, J_y = jax.jit(jac(lasso, argnums=(2, 1)))(jnp.zeros(6), y, lam)
        _rel_close(J_lam, dw_dlam, 1e-8)
        _rel_close(J_y, dw_dy, 1e-8)
    # The closed form itself agrees with FD of the black-box solver (same support at λ ± h).
    fd = (lasso(jnp.zeros(6), y, lam + H) - lasso(jnp.zeros(6), y, lam - H)) / (2 * H)
    _rel_close(dw_dlam, fd, 1e-6)


def test_proximal_gradient_without_prox_is_gradient_descent(rng):
    Q = _quadratic(rng)
    f = lambda x, b: 0.5 * x @ Q @ x - b @ x
    x, b = jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal(4))
    # Both against the explicit step x - η(Qx - b), not against each other (they share code).
    step = np.asarray(x) - 0.3 * (np.asarray(Q) @ np.asarray(x) - np.asarray(b))
    np.testing.assert_allclose(proximal_gradient_fixed_point(f, None, 0.3)(x, b, "ignored"), step, rtol=1e-13)
    np.testing.assert_allclose(gradient_descent_fixed_point(f, 0.3)(x, b), step, rtol=1e-13)


def test_proximal_gradient_jit_vmap(rng):
    """The map itself is plain JAX: batch over regularisation strengths under jit."""
    X, y = _lasso_data(rng)
    T = proximal_gradient_fixed_point(lambda w, y: 0.5 * jnp.sum((X @ w - y) ** 2), prox_lasso, 0.01)
    w = jnp.asarray(rng.standard_normal(6))
    lams = jnp.asarray([0.0, 0.5, 3.0])
    out = jax.jit(jax.vmap(T, in_axes=(None, None, 0)))(w, y, lams)
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(out[i], T(w, y, lam), rtol=1e-13)


# --------------------------------------------------------------------------------------------
# Projected gradient: simplex with a differentiable radius
# --------------------------------------------------------------------------------------------


def test_projected_gradient_simplex_radius(rng):
    """min 0.5||x - c||²_Q over {x ≥ 0, Σx = s}; derivatives w.r.t. c and the radius s."""
    Q = _quadratic(rng, 5)
    c = jnp.asarray([1.0, 0.8, -1.0, 0.5, -0.7])
    L = float(np.linalg.eigvalsh(np.asarray(Q)).max())

    def f(x, c):
        return 0.5 * (x - c) @ Q @ (x - c)

    T = projected_gradient_fixed_point(f, projection_simplex, stepsize=1.0 / L)

    @jax.jit
    @custom_fixed_point(T)
    def solver(init, c, s):
        return _fista(lambda x: T(x, c, s), init)

    init, s = jnp.full(5, 0.4), 2.0
    x = solver(init, c, s)
    assert 0 < int(jnp.sum(x > 1e-9)) < 5
    np.testing.assert_allclose(jnp.sum(x), s, rtol=1e-12)
    np.testing.assert_allclose(T(x, c, s), x, rtol=0, atol=1e-13)
    J_s = jax.jit(jax.jacfwd(solver, argnums=2))(init, c, s)
    J_c = jax.jit(jax.jacrev(solver, argnums=1))(init, c, s)
    _rel_close(J_s, (solver(init, c, s + H) - solver(init, c, s - H)) / (2 * H), 1e-6)
    _rel_close(J_c, _fd(lambda c: solver(init, c, s), c), 1e-6)
    np.testing.assert_allclose(jnp.sum(J_s), 1.0, rtol=1e-10)  # Σx = s ⇒ Σ dx/ds = 1


# --------------------------------------------------------------------------------------------
# Mirror descent: KL geometry on the simplex
# --------------------------------------------------------------------------------------------


def test_mirror_descent_kl_simplex(rng):
    """min 0.5 xᵀQx - θᵀx on the simplex with an interior solution, so the KKT system is linear:
    [[Q, 1], [1ᵀ, 0]] (x, ν) = (θ, 1). The mirror map is log and the KL projection softmax."""
    n = 4
    Q = _quadratic(rng, n)
    # θ built from a chosen interior optimum x° and multiplier: θ = Q x° + ν 1.
    theta = Q @ jnp.asarray([0.1, 0.2, 0.3, 0.4]) + 0.5

    def closed_form(theta):
        K = jnp.block([[Q, jnp.ones((n, 1))], [jnp.ones((1, n)), jnp.zeros((1, 1))]])
        return jnp.linalg.solve(K, jnp.concatenate([theta, jnp.ones(1)]))[:n]

    f = lambda x, theta: 0.5 * x @ Q @ x - theta @ x
    T = mirror_descent_fixed_point(f, projection_simplex_kl, jnp.log, stepsize=0.5)

    @jax.jit
    @custom_fixed_point(T)
    def solver(init, theta, value):
        # Plain mirror descent (exponentiated gradient) iterations: a JAX black box.
        return jax.lax.fori_loop(0, 2000, lambda _, x: T(x, theta, value), init)

    x = solver(jnp.full(n, 1.0 / n), theta, 1.0)
    x_ref = closed_form(theta)
    assert np.all(np.asarray(x_ref) > 0.02)  # interior: the KL fixed point is the simplex optimum
    np.testing.assert_allclose(x, x_ref, rtol=1e-12)
    np.testing.assert_allclose(T(x, theta, 1.0), x, rtol=1e-12)
    init = jnp.full(n, 1.0 / n)
    J_ref = jax.jacfwd(closed_form)(theta)
    J_fwd = jax.jit(jax.jacfwd(solver, argnums=1))(init, theta, 1.0)
    _rel_close(J_fwd, J_ref, 1e-8)
    _rel_close(jax.jit(jax.jacrev(solver, argnums=1))(init, theta, 1.0), J_ref, 1e-8)
    _rel_close(J_fwd, _fd(lambda t: solver(init, t, 1.0), theta), 1e-6)


# --------------------------------------------------------------------------------------------
# Newton fixed points
# --------------------------------------------------------------------------------------------


def test_newton_fixed_point_strongly_convex_pytree(rng):
    """f(x, θ) = 0.5 zᵀQz + Σ log cosh(z) - θᵀz with z = concat(x); x a tuple of two arrays."""
    Q = _quadratic(rng, 5)
    flat = lambda x: jnp.concatenate([x[0], x[1]])

    def f(x, theta):
        z = flat(x)
        return 0.5 * z @ Q @ z + jnp.sum(jnp.log(jnp.cosh(z))) - theta @ z

    T = newton_fixed_point(f)

    @jax.jit
    @custom_fixed_point(T)
    def solver(init, theta):
        return jax.lax.fori_loop(0, 30, lambda _, x: T(x, theta), init)  # Newton's method itself

    init = (jnp.zeros(2), jnp.zeros(3))
    theta = jnp.asarray(rng.standard_normal(5)) * 2
    x = solver(init, theta)
    assert isinstance(x, tuple) and x[1].shape == (3,)
    np.testing.assert_allclose(flat(jax.jit(jax.grad(f))(x, theta)), 0, atol=1e-12)
    np.testing.assert_allclose(flat(jax.jit(T)(x, theta)), flat(x), rtol=0, atol=1e-13)
    J = jax.jit(jax.jacrev(lambda t: flat(solver(init, t))))(theta)  # forward mode: other tests
    # Same derivative as the stationarity condition: (∇²f)⁻¹ (θ enters as -θᵀz).
    z = np.asarray(flat(x))
    hess = np.asarray(Q) + np.diag(1.0 / np.cosh(z) ** 2)
    _rel_close(J, np.linalg.inv(hess), 1e-10)
    _rel_close(J, _fd(lambda t: flat(solver(init, t)), theta), 1e-6)
    # A damped Newton map has the same fixed point and the same implicit derivative.
    T_damped = newton_fixed_point(f, stepsize=0.5)
    np.testing.assert_allclose(flat(jax.jit(T_damped)(x, theta)), flat(x), rtol=0, atol=1e-13)

    @custom_fixed_point(T_damped)
    def damped_solver(init, theta):
        return jax.lax.fori_loop(0, 80, lambda _, x: T_damped(x, theta), init)

    _rel_close(jax.jit(jax.jacfwd(lambda t: flat(damped_solver(init, t))))(theta), np.linalg.inv(hess), 1e-10)


def test_newton_root_fixed_point_scalar_cubic():
    """G(x, θ) = x³ + x - θ (elementwise): dx/dθ = 1 / (3x² + 1)."""
    G = lambda x, theta: x**3 + x - theta
    T = newton_root_fixed_point(G)

    @jax.jit
    @custom_fixed_point(T)
    def solver(init, theta):
        return jax.lax.fori_loop(0, 50, lambda _, x: T(x, theta), init)

    theta = jnp.asarray([-2.0, 0.5, 10.0])
    x = solver(jnp.zeros(3), theta)
    np.testing.assert_allclose(G(x, theta), 0, atol=1e-12)
    J = jax.jit(jax.jacfwd(solver, argnums=1))(jnp.zeros(3), theta)
    _rel_close(J, np.diag(1.0 / (3 * np.asarray(x) ** 2 + 1)), 1e-10)
    with pytest.raises(ValueError, match="G: expected an output with 3 entries"):
        newton_root_fixed_point(lambda x, t: x[:2])(jnp.zeros(3), theta)


# --------------------------------------------------------------------------------------------
# Block proximal gradient
# --------------------------------------------------------------------------------------------


def test_block_proximal_gradient_two_blocks(rng):
    """min 0.5||A u + B v - y||² + λ₁||u||₁ + (λ₂/2)||v||²; per-block step sizes."""
    A = jnp.asarray(rng.standard_normal((15, 4)))
    B = jnp.asarray(rng.standard_normal((15, 3)))
    y = jnp.asarray(rng.standard_normal(15))
    L = float(np.linalg.norm(np.hstack([A, B]), 2) ** 2)

    def f(x, y):
        u, v = x
        return 0.5 * jnp.sum((A @ u + B @ v - y) ** 2)

    T = block_proximal_gradient_fixed_point(f, (prox_lasso, prox_ridge), stepsize=(1.0 / L, 0.5 / L))

    @jax.jit
    @custom_fixed_point(T)
    def solver(init, y, lams):
        return _fista(lambda x: T(x, y, lams), init)

    init = (jnp.zeros(4), jnp.zeros(3))
    lams = (jnp.asarray(3.0), jnp.asarray(0.7))
    x = solver(init, y, lams)
    assert isinstance(x, tuple) and len(x) == 2
    assert 0 < int(jnp.sum(jnp.abs(x[0]) > 1e-10)) < 4
    for a, e in zip(T(x, y, lams), x):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-13)

    flat = lambda x: jnp.concatenate(x)
    # Derivative w.r.t. both blocks' prox hyperparameters and the data, vs central FD.
    J = jax.jit(jax.jacrev(lambda l1, l2, y: flat(solver(init, y, (l1, l2))), argnums=(0, 1, 2)))(*lams, y)
    fd1 = (flat(solver(init, y, (lams[0] + H, lams[1]))) - flat(solver(init, y, (lams[0] - H, lams[1])))) / (2 * H)
    fd2 = (flat(solver(init, y, (lams[0], lams[1] + H))) - flat(solver(init, y, (lams[0], lams[1] - H)))) / (2 * H)
    _rel_close(J[0], fd1, 1e-6)
    _rel_close(J[1], fd2, 1e-6)
    _rel_close(J[2], _fd(lambda y: flat(solver(init, y, lams)), y), 1e-6)

    # Shared step size: the block map equals the proximal gradient map with the separable prox.
    eta = 1.0 / L
    Tb = block_proximal_gradient_fixed_point(f, [prox_lasso, None], stepsize=eta)
    Tp = proximal_gradient_fixed_point(f, lambda x, lam, s: (prox_lasso(x[0], lam, s), x[1]), stepsize=eta)
    xr = (jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal(3)))
    for a, e in zip(Tb(xr, y, (lams[0], None)), Tp(xr, y, lams[0])):
        np.testing.assert_allclose(a, e, rtol=1e-13)


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def test_bad_arguments_raise_value_error():
    f = lambda x, t: jnp.sum(x**2)
    with pytest.raises(ValueError, match="fun: expected a callable"):
        stationarity_fun(3.0)
    with pytest.raises(ValueError, match="stepsize: expected a positive"):
        gradient_descent_fixed_point(f, stepsize=0.0)
    with pytest.raises(ValueError, match="stepsize: expected a positive"):
        newton_fixed_point(f, stepsize="big")
    with pytest.raises(ValueError, match="prox: expected a callable"):
        proximal_gradient_fixed_point(f, "lasso")
    with pytest.raises(ValueError, match="projection: expected a callable"):
        projected_gradient_fixed_point(f, None)
    with pytest.raises(ValueError, match="mapping_fun: expected a callable"):
        mirror_descent_fixed_point(f, projection_simplex_kl, None)
    with pytest.raises(ValueError, match="block_prox: expected a sequence"):
        block_proximal_gradient_fixed_point(f, prox_lasso)
    with pytest.raises(ValueError, match="stepsize: expected a scalar or 2 per-block"):
        block_proximal_gradient_fixed_point(f, (prox_lasso, None), stepsize=(1.0,))
    with pytest.raises(ValueError, match=r"stepsize\[1\]: expected a positive"):
        block_proximal_gradient_fixed_point(f, (prox_lasso, None), stepsize=(1.0, -1.0))
    T = block_proximal_gradient_fixed_point(lambda x, t: jnp.sum(x[0] ** 2), (prox_lasso, None))
    with pytest.raises(ValueError, match="x: expected a tuple or list of 2 blocks"):
        T(jnp.zeros(3), None, None)
    with pytest.raises(ValueError, match="prox_params: expected a tuple or list of 2"):
        T((jnp.zeros(1), jnp.zeros(1)), None, (1.0,))


def test_stepsize_may_be_traced():
    """A step size computed inside jit (e.g. 1/L from the data) is accepted."""
    f = lambda x, t: 0.5 * jnp.sum((x - t) ** 2)
    out = jax.jit(lambda eta, x: gradient_descent_fixed_point(f, eta)(x, 1.0))(0.5, jnp.zeros(2))
    np.testing.assert_allclose(out, 0.5)


def test_public_namespace():
    import kktbridge.core._optimality as impl

    for name in optimality.__all__:
        assert getattr(optimality, name) is getattr(impl, name)
    assert set(optimality.__all__) == set(impl.__all__)
