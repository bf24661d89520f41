"""Projections: values vs cvxpy / closed forms, Jacobians vs central finite differences, jit/vmap."""

from __future__ import annotations


import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._cvx import solve_clarabel_tight
from tests._fd import fd_jacobian_wrt
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kktbridge import projection as P

# Interior-point reference solutions are accurate to ~1e-9 with the tolerances below; 1e-6 leaves
# room for the conditioning of each small problem.
REF_ATOL = 1e-6
# Central differences with h = 1e-6 in float64: truncation is zero (piecewise-linear maps) or
# O(h^2), round-off O(eps / h) ~ 1e-10.
FD_H = 1e-6
JAC_RTOL = 1e-6
JAC_ATOL = 1e-8


def solve_cvxpy(d, objective, constraints=(), qp=True):
    """Minimise ``objective(z)`` over ``z`` in R^d (or a matrix shape) subject to ``constraints(z)``.

    QPs go to OSQP with solution polishing (an exact active-set KKT solve, accurate to round-off
    even near degenerate/tied solutions); conic problems (SOC, exponential cone) to CLARABEL with
    tight tolerances.
    """
    z = cp.Variable(d)
    prob = cp.Problem(cp.Minimize(objective(z)), list(constraints(z)) if callable(constraints) else [])
    if qp:
        prob.solve(solver=cp.OSQP, eps_abs=1e-10, eps_rel=1e-10, polishing=True, max_iter=200000)
        assert prob.solver_stats.extra_stats.info.status_polish == 1, "OSQP polishing failed"
    else:
        solve_clarabel_tight(prob)
    assert prob.status == cp.OPTIMAL, prob.status
    return z.value


def euclid(x):
    return lambda z: 0.5 * cp.sum_squares(z - x)


def fd_jacobian(fun, args, argnum, h=FD_H):
    """Central-difference Jacobian of ``fun(*args)`` w.r.t. ``args[argnum]`` (jacfwd layout)."""
    return fd_jacobian_wrt(fun, args, argnum, eps=h)


def check_jacobians(fun, args, argnums=None, rtol=JAC_RTOL, atol=JAC_ATOL, h=FD_H):
    """jacfwd and jacrev of ``fun`` agree with central finite differences for each argnum."""
    args = tuple(jnp.asarray(a, dtype=jnp.float64) for a in args)
    argnums = range(len(args)) if argnums is None else argnums
    argnums = tuple(argnums)
    fun_jit = jax.jit(fun)  # compiled once: the finite differences call it 2 * size times
    # One compiled jacfwd and one jacrev for all arguments (compilation dominates the test time).
    jfs = jax.jit(jax.jacfwd(fun, argnums=argnums))(*args)
    jrs = jax.jit(jax.jacrev(fun, argnums=argnums))(*args)
    for i, jf, jr in zip(argnums, jfs, jrs):
        fd = fd_jacobian(fun_jit, args, i, h)
        assert np.all(np.isfinite(fd))
        np.testing.assert_allclose(jf, fd, rtol=rtol, atol=atol, err_msg=f"jacfwd arg {i}")
        np.testing.assert_allclose(jr, fd, rtol=rtol, atol=atol, err_msg=f"jacrev arg {i}")


# --------------------------------------------------------------------------------------------
# Values vs references
# --------------------------------------------------------------------------------------------


def test_non_negative_and_box_vs_cvxpy(rng):
    x = rng.normal(size=6) * 2
    lo, up = -rng.uniform(0.1, 1, 6), rng.uniform(0.1, 1, 6)
    ref = solve_cvxpy(6, euclid(x), lambda z: [z >= 0])
    np.testing.assert_allclose(P.projection_non_negative(x), ref, atol=REF_ATOL)
    ref = solve_cvxpy(6, euclid(x), lambda z: [z >= lo, z <= up])
    np.testing.assert_allclose(P.projection_box(x, (lo, up)), ref, atol=REF_ATOL)
    # pytrees with pytree bounds
    tree = {"a": x[:3], "b": x[3:]}
    out = P.projection_box(tree, ({"a": lo[:3], "b": lo[3:]}, {"a": up[:3], "b": up[3:]}))
    np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), ref, atol=REF_ATOL)


@pytest.mark.parametrize("value", [1.0, 2.5])
def test_simplex_vs_cvxpy(rng, value):
    for _ in range(2):
        x = rng.normal(size=7)
        ref = solve_cvxpy(7, euclid(x), lambda z: [z >= 0, cp.sum(z) == value])
        np.testing.assert_allclose(P.projection_simplex(x, value), ref, atol=REF_ATOL)


def test_simplex_matrix_is_one_vector_and_vmap_is_rowwise(rng):
    X = rng.normal(size=(3, 4))
    whole = P.projection_simplex(X)
    assert whole.shape == X.shape
    np.testing.assert_allclose(whole.ravel(), P.projection_simplex(X.ravel()), atol=1e-14)
    rows = jax.vmap(P.projection_simplex)(X)
    np.testing.assert_allclose(rows, np.stack([P.projection_simplex(r) for r in X]), atol=1e-14)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-12)


def test_simplex_zero_value(rng):
    np.testing.assert_array_equal(P.projection_simplex(rng.normal(size=5), 0.0), 0.0)


@pytest.mark.parametrize(
    "proj, norm",
    [
        (P.projection_l1_ball, lambda z: cp.norm1(z)),
        (P.projection_l2_ball, lambda z: cp.norm2(z)),
        (P.projection_linf_ball, lambda z: cp.norm_inf(z)),
    ],
)
def test_norm_balls_vs_cvxpy(rng, proj, norm):
    for scale, radius in [(3.0, 1.3), (0.05, 1.3)]:  # outside, then inside the ball
        x = rng.normal(size=6) * scale
        ref = solve_cvxpy(6, euclid(x), lambda z: [norm(z) <= radius], qp=False)
        np.testing.assert_allclose(proj(x, radius), ref, atol=REF_ATOL)


def test_l2_ball_at_origin_has_finite_gradient():
    g = jax.grad(lambda x: jnp.sum(P.projection_l2_ball(x, 1.0)))(jnp.zeros(3))
    np.testing.assert_array_equal(g, 1.0)


def test_affine_set_vs_cvxpy_including_rank_deficient(rng):
    A = rng.normal(size=(2, 5))
    x = rng.normal(size=5)
    b = rng.normal(size=2)
    ref = solve_cvxpy(5, euclid(x), lambda z: [A @ z == b])
    np.testing.assert_allclose(P.projection_affine_set(x, (A, b)), ref, atol=REF_ATOL)
    # Redundant constraints: third row = first + second, consistent right-hand side.
    A3 = np.vstack([A, A[0] + A[1]])
    b3 = np.append(b, b[0] + b[1])
    z = P.projection_affine_set(x, (A3, b3))
    np.testing.assert_allclose(z, ref, atol=REF_ATOL)
    np.testing.assert_allclose(A3 @ z, b3, atol=1e-10)


def test_hyperplane_and_halfspace_vs_cvxpy(rng):
    a, x = rng.normal(size=5), rng.normal(size=5)
    b = float(a @ x) - 0.7  # x violates a^T z <= b
    np.testing.assert_allclose(
        P.projection_hyperplane(x, (a, b)), solve_cvxpy(5, euclid(x), lambda z: [a @ z == b]), atol=REF_ATOL
    )
    np.testing.assert_allclose(
        P.projection_halfspace(x, (a, b)), solve_cvxpy(5, euclid(x), lambda z: [a @ z <= b]), atol=REF_ATOL
    )
    np.testing.assert_array_equal(P.projection_halfspace(x, (a, b + 1.4)), x)  # inside: unchanged


def _box_section_problem(rng, d=7):
    x = rng.normal(size=d)
    alpha = -rng.uniform(0.2, 0.8, d)
    beta = rng.uniform(0.2, 0.8, d)
    w = rng.uniform(0.5, 1.5, d) * rng.choice([-1.0, 1.0], d)
    c = 0.3 * float(np.sum(np.maximum(w * alpha, w * beta)))
    return x, alpha, beta, w, c


def test_box_section_vs_cvxpy(rng):
    for _ in range(3):
        x, alpha, beta, w, c = _box_section_problem(rng)
        ref = solve_cvxpy(7, euclid(x), lambda z: [z >= alpha, z <= beta, w @ z == c])
        z = P.projection_box_section(x, (alpha, beta, w, c))
        np.testing.assert_allclose(z, ref, atol=REF_ATOL)
        np.testing.assert_allclose(w @ z, c, atol=1e-12)  # exact final step, not just bisection accuracy


def test_box_section_with_zero_weights(rng):
    x, alpha, beta, w, c = _box_section_problem(rng)
    w[:2] = 0.0
    c = 0.3 * float(np.sum(np.maximum(w * alpha, w * beta)))
    ref = solve_cvxpy(7, euclid(x), lambda z: [z >= alpha, z <= beta, w @ z == c])
    np.testing.assert_allclose(P.projection_box_section(x, (alpha, beta, w, c)), ref, atol=REF_ATOL)


def isotonic_minmax(y):
    """Exact increasing isotonic regression by the min-max formula max_{j<=i} min_{k>=i} mean(y[j:k+1])."""
    d = len(y)
    return np.array([max(min(np.mean(y[j : k + 1]) for k in range(i, d)) for j in range(i + 1)) for i in range(d)])


@pytest.mark.parametrize("increasing", [True, False])
def test_isotonic_vs_references(rng, increasing):
    for _ in range(3):
        x = rng.normal(size=9)
        out = P.isotonic_regression(x, increasing=increasing)
        exact = isotonic_minmax(x) if increasing else -isotonic_minmax(-x)
        np.testing.assert_allclose(out, exact, atol=1e-13)
        mono = (lambda z: [cp.diff(z) >= 0]) if increasing else (lambda z: [cp.diff(z) <= 0])
        np.testing.assert_allclose(out, solve_cvxpy(9, euclid(x), mono), atol=REF_ATOL)


def test_order_simplex_vs_cvxpy(rng):
    for _ in range(2):
        x = rng.normal(size=9)
        upper, lower = 0.6, -0.4
        ref = solve_cvxpy(9, euclid(x), lambda z: [cp.diff(z) <= 0, z[0] <= upper, z[-1] >= lower])
        np.testing.assert_allclose(P.projection_order_simplex(x, (upper, lower)), ref, atol=REF_ATOL)
    # Without bounds: the monotone (decreasing) cone, against the exact min-max formula.
    np.testing.assert_allclose(P.projection_order_simplex(x), -isotonic_minmax(-x), atol=1e-13)


def test_isotonic_jacobian_is_block_averaging():
    x = jnp.array([0.0, 2.0, 1.0, 3.0, 2.5, 2.4, 5.0])
    # Increasing PAV pools {2, 1} and {3, 2.5, 2.4}.
    expected = np.zeros((7, 7))
    for block in ([0], [1, 2], [3, 4, 5], [6]):
        expected[np.ix_(block, block)] = 1.0 / len(block)
    block_means = np.repeat([0.0, (2.0 + 1.0) / 2, (3.0 + 2.5 + 2.4) / 3, 5.0], [1, 2, 3, 1])
    np.testing.assert_allclose(P.isotonic_regression(x), block_means, rtol=1e-15)
    np.testing.assert_allclose(jax.jacfwd(P.isotonic_regression)(x), expected, atol=1e-15)
    np.testing.assert_allclose(jax.jacrev(P.isotonic_regression)(x), expected, atol=1e-15)


def test_kl_closed_forms_vs_cvxpy(rng):
    x = rng.normal(size=5)
    kl = lambda z: cp.sum(-cp.entr(z)) - cp.sum(z) - x @ z  # <z, log z - 1 - x>
    np.testing.assert_allclose(P.projection_non_negative_kl(x), solve_cvxpy(5, kl, qp=False), atol=REF_ATOL)
    ref = solve_cvxpy(5, kl, lambda z: [cp.sum(z) == 2.0], qp=False)
    np.testing.assert_allclose(P.projection_simplex_kl(x, 2.0), ref, atol=REF_ATOL)


def test_kl_transport_vs_cvxpy(rng):
    X = rng.normal(size=(3, 4))
    a = rng.uniform(0.5, 1.5, 3)
    a /= a.sum()
    b = rng.uniform(0.5, 1.5, 4)
    b /= b.sum()

    def obj(Z):
        return cp.sum(-cp.entr(Z)) - cp.sum(Z) - cp.sum(cp.multiply(X, Z))

    ref = solve_cvxpy((3, 4), obj, lambda Z: [cp.sum(Z, axis=1) == a, cp.sum(Z, axis=0) == b], qp=False)
    out = P.kl_projection_transport(X, (a, b))
    np.testing.assert_allclose(out, ref, atol=REF_ATOL)
    np.testing.assert_allclose(out.sum(axis=1), a, atol=1e-10)
    np.testing.assert_allclose(out.sum(axis=0), b, atol=1e-12)


def test_kl_birkhoff_vs_cvxpy(rng):
    X = rng.normal(size=(4, 4))
    obj = lambda Z: cp.sum(-cp.entr(Z)) - cp.sum(Z) - cp.sum(cp.multiply(X, Z))
    ref = solve_cvxpy((4, 4), obj, lambda Z: [cp.sum(Z, axis=1) == 1, cp.sum(Z, axis=0) == 1], qp=False)
    out = P.kl_projection_birkhoff(X)
    np.testing.assert_allclose(out, ref, atol=REF_ATOL)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-10)
    assert np.all(out > 0)


# --------------------------------------------------------------------------------------------
# Jacobians vs central finite differences (inputs away from kinks)
# --------------------------------------------------------------------------------------------


def test_jac_box(rng):
    x = np.array([-2.0, -0.3, 0.1, 0.8, 2.0])
    check_jacobians(lambda x, lo, up: P.projection_box(x, (lo, up)), (x, -np.ones(5), np.full(5, 1.0)))


def test_jac_non_negative(rng):
    check_jacobians(P.projection_non_negative, (np.array([-1.0, 0.5, 2.0, -0.2]),))


def test_jac_simplex(rng):
    x = rng.normal(size=6)
    z = np.asarray(P.projection_simplex(x, 1.5))
    assert 1 < np.sum(z > 0) < 6  # non-trivial support
    check_jacobians(lambda x, v: P.projection_simplex(x, v), (x, 1.5))
    # Closed form (Martins & Astudillo): diag(s) - s s^T / |s|.
    s = (z > 0).astype(float)
    expected = np.diag(s) - np.outer(s, s) / s.sum()
    np.testing.assert_allclose(jax.jacrev(P.projection_simplex)(x, 1.5), expected, atol=1e-14)


@pytest.mark.parametrize("proj", [P.projection_l1_ball, P.projection_l2_ball, P.projection_linf_ball])
def test_jac_norm_balls(rng, proj):
    x_out = rng.normal(size=5) * 3
    check_jacobians(lambda x, r: proj(x, r), (x_out, 1.2))
    x_in = rng.normal(size=5) * 0.05
    check_jacobians(lambda x, r: proj(x, r), (x_in, 1.2))


def test_jac_affine_set(rng):
    A, b, x = rng.normal(size=(2, 5)), rng.normal(size=2), rng.normal(size=5)
    check_jacobians(lambda x, A, b: P.projection_affine_set(x, (A, b)), (x, A, b))
    # Rank-deficient A: the map is linear in (x, b), derivatives stay exact.
    A3, b3 = np.vstack([A, A[0] - 2 * A[1]]), np.append(b, b[0] - 2 * b[1])
    check_jacobians(lambda x, b: P.projection_affine_set(x, (A3, b)), (x, b3))


def test_jac_hyperplane_halfspace(rng):
    a, x = rng.normal(size=4), rng.normal(size=4)
    b = float(a @ x) - 0.5
    check_jacobians(lambda x, a, b: P.projection_hyperplane(x, (a, b)), (x, a, b))
    check_jacobians(lambda x, a, b: P.projection_halfspace(x, (a, b)), (x, a, b))


def test_jac_box_section(rng):
    x, alpha, beta, w, c = _box_section_problem(rng)
    z = np.asarray(P.projection_box_section(x, (alpha, beta, w, c)))
    free = (z > alpha + 1e-3) & (z < beta - 1e-3)
    assert 0 < free.sum() < 7 and np.all(free | np.isclose(z, alpha) | np.isclose(z, beta))
    check_jacobians(lambda x, al, be, w, c: P.projection_box_section(x, (al, be, w, c)), (x, alpha, beta, w, c))


def test_jac_isotonic_and_order_simplex(rng):
    x = rng.normal(size=8)
    check_jacobians(lambda x: P.isotonic_regression(x, increasing=True), (x,))
    check_jacobians(lambda x, u, l: P.projection_order_simplex(x, (u, l)), (x, 0.6, -0.4))


def test_jac_kl_transport(rng):
    X = rng.normal(size=(3, 4))
    alpha, beta = rng.normal(size=3), rng.normal(size=4)

    # Marginals through a softmax so that every perturbation keeps sum(a) == sum(b).
    def fun(X, alpha, beta):
        return P.kl_projection_transport(X, (jax.nn.softmax(alpha), jax.nn.softmax(beta)), tol=1e-14, max_iter=1000)

    # Sinkhorn stops at a marginal error <= 1e-14 (near round-off), so finite differences see
    # solution noise of ~1e-14 / h; h = 1e-5 keeps it at ~1e-9 with O(h^2) truncation ~1e-10.
    check_jacobians(fun, (X, alpha, beta), h=1e-5)


def test_jac_kl_closed_forms(rng):
    x = rng.normal(size=4)
    check_jacobians(lambda x: P.projection_non_negative_kl(x), (x,))
    check_jacobians(lambda x, v: P.projection_simplex_kl(x, v), (x, 1.7))


def test_box_section_second_order_through_implicit_layer(rng):
    # z(x) is piecewise linear, so second derivatives through the implicit layer must vanish and
    # the Hessian of sum(z^3 / 3) is exactly J^T diag(2 z) J (Gauss-Newton term only).
    x, alpha, beta, w, c = _box_section_problem(rng)
    proj = lambda x: P.projection_box_section(x, (alpha, beta, w, c))
    H = jax.jit(jax.hessian(lambda x: jnp.sum(proj(x) ** 3 / 3)))(jnp.asarray(x))
    J = jax.jit(jax.jacobian(proj))(jnp.asarray(x))
    z = P.projection_box_section(x, (alpha, beta, w, c))
    np.testing.assert_allclose(H, J.T @ np.diag(2 * z) @ J, atol=1e-12)


# --------------------------------------------------------------------------------------------
# jit and vmap
# --------------------------------------------------------------------------------------------

_BOX_SECTION = _box_section_problem(np.random.default_rng(1))
_A = np.random.default_rng(2).normal(size=(2, 5))

JIT_VMAP_CASES = {
    "non_negative": (lambda x: P.projection_non_negative(x), (5,)),
    "box": (lambda x: P.projection_box(x, (-0.5, 0.5)), (5,)),
    "simplex": (lambda x: P.projection_simplex(x, 1.0), (5,)),
    "l1_ball": (lambda x: P.projection_l1_ball(x, 1.0), (5,)),
    "l2_ball": (lambda x: P.projection_l2_ball(x, 1.0), (5,)),
    "linf_ball": (lambda x: P.projection_linf_ball(x, 0.5), (5,)),
    "affine": (lambda x: P.projection_affine_set(x, (_A, np.ones(2))), (5,)),
    "hyperplane": (lambda x: P.projection_hyperplane(x, (jnp.arange(1.0, 6.0), 1.0)), (5,)),
    "halfspace": (lambda x: P.projection_halfspace(x, (jnp.arange(1.0, 6.0), 1.0)), (5,)),
    "box_section": (lambda x: P.projection_box_section(x, _BOX_SECTION[1:]), (7,)),
    "isotonic": (lambda x: P.isotonic_regression(x), (6,)),
    "order_simplex": (lambda x: P.projection_order_simplex(x, (0.5, -0.5)), (6,)),
    "kl_transport": (lambda x: P.kl_projection_transport(x, (jnp.ones(2) / 2, jnp.ones(3) / 3)), (2, 3)),
    "kl_birkhoff": (lambda x: P.kl_projection_birkhoff(x), (3, 3)),
    "transport": (lambda x: P.projection_transport(x, (jnp.ones(2) / 2, jnp.ones(3) / 3)), (2, 3)),
    "birkhoff": (lambda x: P.projection_birkhoff(x), (3, 3)),
    "polyhedron": (lambda x: P.projection_polyhedron(x, (_A, np.ones(2), -np.eye(5), np.ones(5))), (5,)),
    "sparse_simplex": (lambda x: P.projection_sparse_simplex(x, 3), (5,)),
    "l1_sphere": (lambda x: P.projection_l1_sphere(x, 2.0), (5,)),
    "l2_sphere": (lambda x: P.projection_l2_sphere(x, 2.0), (5,)),
    "hypercube": (lambda x: P.projection_hypercube(x, 0.5), (5,)),
    "isotonic_l2_pav": (lambda x: P.isotonic_l2_pav(x, -0.5, 0.5), (6,)),
    "simplex_kl": (lambda x: P.projection_simplex_kl(x, 2.0), (5,)),
    "non_negative_kl": (lambda x: P.projection_non_negative_kl(x), (5,)),
}


@pytest.mark.parametrize("name", sorted(JIT_VMAP_CASES))
def test_jit_vmap_grad(rng, name):
    fun, shape = JIT_VMAP_CASES[name]
    X = rng.normal(size=(3,) + shape)
    eager = np.stack([fun(x) for x in X])
    np.testing.assert_allclose(jax.jit(fun)(X[0]), eager[0], atol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.vmap(fun))(X), eager, atol=1e-12)
    # Batched reverse-mode derivatives under jit agree with the per-example ones.
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(fun(x))))
    g = jax.jit(jax.vmap(grad))(X)
    grad_jit = jax.jit(grad)
    for gi, x in zip(g, X):
        np.testing.assert_allclose(gi, grad_jit(x), atol=1e-10)


def test_vmap_over_hyperparams(rng):
    x = rng.normal(size=5) * 3
    radii = jnp.array([0.5, 1.0, 2.0])
    out = jax.vmap(lambda r: P.projection_l2_ball(x, r))(radii)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), radii, rtol=1e-12)
    cs = jnp.array([-0.2, 0.0, 0.3])
    x, alpha, beta, w, _ = _BOX_SECTION
    zs = jax.vmap(lambda c: P.projection_box_section(x, (alpha, beta, w, c)))(cs)
    np.testing.assert_allclose(zs @ w, cs, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_bad_hyperparams_raise():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="radius"):
        P.projection_l2_ball(x, -1.0)
    with pytest.raises(ValueError, match="radius"):
        P.projection_l1_ball(x, -0.1)
    with pytest.raises(ValueError, match="value"):
        P.projection_simplex(x, -1.0)
    with pytest.raises(ValueError, match="lower <= upper"):
        P.projection_box(x, (1.0, 0.0))
    with pytest.raises(ValueError, match="nonzero"):
        P.projection_hyperplane(x, (jnp.zeros(3), 1.0))
    with pytest.raises(ValueError, match="A"):
        P.projection_affine_set(x, (jnp.ones((2, 4)), jnp.ones(2)))
    with pytest.raises(ValueError, match="empty box section"):
        P.projection_box_section(x, (0.0, 1.0, jnp.ones(3), 5.0))
    with pytest.raises(ValueError, match="alpha <= beta"):
        P.projection_box_section(x, (1.0, 0.0, jnp.ones(3), 0.5))
    with pytest.raises(ValueError, match="upper >= lower"):
        P.projection_order_simplex(x, (0.0, 1.0))
    for transport in (P.projection_transport, P.kl_projection_transport):
        with pytest.raises(ValueError, match="equal sums"):
            transport(jnp.ones((2, 3)), (jnp.ones(2), jnp.ones(3)))
    with pytest.raises(ValueError, match="strictly positive"):
        P.kl_projection_transport(jnp.ones((2, 2)), (jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5])))
    with pytest.raises(ValueError, match="non-negative"):
        P.projection_transport(jnp.ones((2, 2)), (jnp.array([1.5, -0.5]), jnp.array([0.5, 0.5])))
    # A zero marginal is fine for the Euclidean projection (that row of the plan is zero).
    np.testing.assert_allclose(
        P.projection_transport(jnp.ones((2, 2)), (jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]))), [[0.5, 0.5], [0, 0]]
    )
    for birkhoff in (P.projection_birkhoff, P.kl_projection_birkhoff):
        with pytest.raises(ValueError, match="square"):
            birkhoff(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="max_nz"):
        P.projection_sparse_simplex(x, 4)
    with pytest.raises(ValueError, match="y_min <= y_max"):
        P.isotonic_l2_pav(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="structure"):
        P.projection_hyperplane({"a": x}, ({"b": x}, 1.0))
    with pytest.raises(ValueError, match="unit"):
        P.projection_hypercube(x, -1.0)
    # Under tracing the value checks are skipped (no ConcretizationError) and the result is right.
    out = jax.jit(lambda r: P.projection_l2_ball(x, r))(1.0)
    np.testing.assert_allclose(out, np.ones(3) / np.sqrt(3), rtol=1e-15)


# --------------------------------------------------------------------------------------------
# Properties (hypothesis)
# --------------------------------------------------------------------------------------------

_vec = hnp.arrays(np.float64, 6, elements=st.floats(-10, 10, allow_nan=False))


@settings(max_examples=30, deadline=None)
@given(_vec, st.floats(0.1, 5.0))
def test_simplex_properties(x, value):
    z = np.asarray(P.projection_simplex(x, value))
    assert np.all(z >= 0)
    np.testing.assert_allclose(z.sum(), value, rtol=1e-12)
    np.testing.assert_allclose(P.projection_simplex(z, value), z, atol=1e-12)  # idempotent


@settings(max_examples=30, deadline=None)
@given(_vec, st.floats(0.1, 5.0))
def test_l1_ball_properties(x, radius):
    z = np.asarray(P.projection_l1_ball(x, radius))
    assert np.abs(z).sum() <= radius * (1 + 1e-12)
    np.testing.assert_allclose(P.projection_l1_ball(z, radius), z, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(_vec)
def test_isotonic_properties(x):
    z = np.asarray(P.isotonic_regression(x))
    assert np.all(np.diff(z) >= -1e-12)
    np.testing.assert_allclose(z.sum(), x.sum(), atol=1e-10)  # PAV preserves the total (block means)
    np.testing.assert_allclose(P.isotonic_regression(z), z, atol=1e-12)


# --------------------------------------------------------------------------------------------
# JAXopt-compatible additions (issue 15), in float32 and float64
# --------------------------------------------------------------------------------------------

DTYPES = [np.float32, np.float64]
# float32 values are compared with float64 references at 1e-5 relative to the data's scale: a
# few ulps (6e-8) of every rounding in an O(d)-term computation, with margin.
TOL32 = 1e-5


def _tol(dtype, tol64=1e-10):
    return TOL32 if dtype == np.float32 else tol64


def simplex_exact(x, value):
    """Exact projection onto {z >= 0, sum z = value} in rational arithmetic (x, value as given)."""
    from fractions import Fraction

    xs = [Fraction(float(v)) for v in x]
    s = Fraction(float(value))
    u = sorted(xs, reverse=True)
    k, csum, best = 0, Fraction(0), None
    for j, uj in enumerate(u, start=1):
        csum += uj
        if uj * j > csum - s:
            k, best = j, (csum - s) / j
    tau = best
    return np.array([float(max(v - tau, 0)) for v in xs])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1.0, 1e4, 3e7, 1e9, 1e12, 1e16])
def test_simplex_at_every_scale(rng, dtype, scale):
    """Issue 10 item 7: the result is on the simplex and exact, whatever |x| / value."""
    for value in (1.0, 0.3):
        for x in (np.array([1.0, 0.0]) * scale, rng.normal(size=9) * scale, rng.uniform(size=9) * scale):
            x = x.astype(dtype)
            z = np.asarray(P.projection_simplex(jnp.asarray(x), value))
            assert z.dtype == dtype
            assert np.all(z >= 0)
            np.testing.assert_allclose(z.sum(), value, rtol=4 * np.finfo(dtype).eps * 9)
            # Exact reference on the same (rounded) input: error a few ulps of the value.
            np.testing.assert_allclose(z, simplex_exact(x, value), rtol=0, atol=8 * np.finfo(dtype).eps * value)
    z = P.projection_simplex(jnp.asarray(np.array([3e7, 0.0], dtype)))
    np.testing.assert_array_equal(z, [1.0, 0.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e-8, 1.0, 3e7, 1e16])
def test_l1_ball_at_every_scale(rng, dtype, scale):
    x = (rng.normal(size=7) * scale).astype(dtype)
    radius = 1.0
    z = np.asarray(P.projection_l1_ball(jnp.asarray(x), radius))
    if np.abs(x.astype(np.float64)).sum() <= radius:
        np.testing.assert_array_equal(z, x)
    else:
        np.testing.assert_allclose(np.abs(z).sum(), radius, rtol=64 * np.finfo(dtype).eps)
        exact = np.sign(x) * simplex_exact(np.abs(x), radius)
        np.testing.assert_allclose(z, exact, rtol=0, atol=8 * np.finfo(dtype).eps)
    assert np.all(z * x >= 0)  # never flips a sign


def test_simplex_accepts_minus_inf():
    x = jnp.array([0.0, 1.0, -jnp.inf, 0.5])
    np.testing.assert_allclose(P.projection_simplex(x), [0.0, 0.75, 0.0, 0.25], rtol=1e-15)
    J = jax.jacfwd(P.projection_simplex)(x)
    assert np.all(np.isfinite(J))
    np.testing.assert_allclose(J[:, 2], 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_simplex_vs_brute_force(rng, dtype):
    import itertools

    x = rng.normal(size=6).astype(dtype)
    for k, value in [(1, 1.0), (2, 1.0), (3, 2.5), (6, 1.0)]:
        z = np.asarray(P.projection_sparse_simplex(jnp.asarray(x), k, value=value))
        assert z.dtype == dtype and np.count_nonzero(z) <= k
        # Brute force over all supports of size k: the best simplex projection of the subvector.
        best, best_d = None, np.inf
        for S in itertools.combinations(range(6), k):
            cand = np.zeros(6)
            cand[list(S)] = simplex_exact(x[list(S)], value)
            d = np.sum((cand - x) ** 2)
            if d < best_d:
                best, best_d = cand, d
        np.testing.assert_allclose(z, best, atol=_tol(dtype, 1e-14))
        approx = P.projection_sparse_simplex(jnp.asarray(x), k, use_approx_max_nz=True, value=value)
        np.testing.assert_allclose(approx, best, atol=_tol(dtype, 1e-14))  # exact on CPU


def test_jac_sparse_simplex(rng):
    x = rng.normal(size=7)
    z = np.asarray(P.projection_sparse_simplex(x, 3, value=2.0))
    assert np.count_nonzero(z) >= 2
    check_jacobians(lambda x, v: P.projection_sparse_simplex(x, 3, value=v), (x, 2.0))
    # Closed form: simplex Jacobian on the support, zero elsewhere.
    s = (z > 0).astype(float)
    np.testing.assert_allclose(jax.jacrev(lambda x: P.projection_sparse_simplex(x, 3, value=2.0))(x),
                               np.diag(s) - np.outer(s, s) / s.sum(), atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spheres_closed_forms(rng, dtype):
    x = rng.normal(size=6).astype(dtype)
    for r in (0.5, 40.0):  # outside and inside the ball
        z = np.asarray(P.projection_l2_sphere(jnp.asarray(x), r))
        assert z.dtype == dtype
        np.testing.assert_allclose(z, r * x / np.linalg.norm(x.astype(np.float64)), rtol=_tol(dtype, 1e-14))
        z1 = np.asarray(P.projection_l1_sphere(jnp.asarray(x), r))
        assert z1.dtype == dtype
        np.testing.assert_allclose(np.abs(z1).sum(), r, rtol=_tol(dtype, 1e-14))
        # Nearest sign-consistent point: sign(x) * proj_simplex(|x|, r), and no nearer point on
        # the sphere among random sign-consistent candidates.
        np.testing.assert_allclose(z1, np.sign(x) * simplex_exact(np.abs(x), r), atol=_tol(dtype, 1e-13) * r)
        d = np.sum((z1 - x) ** 2)
        for _ in range(200):
            c = rng.dirichlet(np.ones(6)) * r * np.sign(x)
            assert np.sum((c - x) ** 2) >= d * (1 - 1e-5)
    # Pytrees: one flattened vector.
    tree = {"a": jnp.asarray(x[:2]), "b": jnp.asarray(x[2:])}
    out = P.projection_l2_sphere(tree, 3.0)
    np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), P.projection_l2_sphere(jnp.asarray(x), 3.0))
    # x = 0: a point of the sphere, not NaN; zeros in x still give a point of the l1 sphere.
    np.testing.assert_allclose(np.linalg.norm(P.projection_l2_sphere(jnp.zeros(4, dtype), 2.0)), 2.0, rtol=1e-6)
    np.testing.assert_allclose(np.abs(P.projection_l1_sphere(jnp.zeros(4, dtype), 2.0)).sum(), 2.0, rtol=1e-6)


def test_jac_spheres(rng):
    x = rng.normal(size=5)
    check_jacobians(lambda x, r: P.projection_l2_sphere(x, r), (x, 0.7))
    check_jacobians(lambda x, r: P.projection_l1_sphere(x, r), (x, 0.7))
    check_jacobians(lambda x, r: P.projection_l1_sphere(x, r), (x, 30.0))  # inside: every entry moves


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_ball_on_pytrees_and_on_the_boundary(rng, dtype):
    x = rng.normal(size=6).astype(dtype)
    tree = (jnp.asarray(x[:4]), {"b": jnp.asarray(x[4:])})
    out = P.projection_l2_ball(tree, 0.5)
    flat = np.concatenate([out[0], out[1]["b"]])
    assert flat.dtype == dtype
    np.testing.assert_allclose(flat, 0.5 * x / np.linalg.norm(x.astype(np.float64)), rtol=_tol(dtype, 1e-14))
    # On the boundary: unchanged, identity Jacobian and zero derivative in the radius.
    r = jnp.linalg.norm(jnp.asarray(x))
    np.testing.assert_array_equal(P.projection_l2_ball(jnp.asarray(x), r), x)
    np.testing.assert_array_equal(jax.jacrev(P.projection_l2_ball)(jnp.asarray(x), r), np.eye(6))
    np.testing.assert_array_equal(jax.jacrev(P.projection_l2_ball, argnums=1)(jnp.asarray(x), r), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hypercube(dtype):
    x = jnp.asarray([-1.0, 2.0, 0.5, 0.9], dtype)
    np.testing.assert_array_equal(P.projection_hypercube(x), np.array([0.0, 1.0, 0.5, 0.9], dtype))
    out = P.projection_hypercube(x, 0.8)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array([0.0, 0.8, 0.5, 0.8], dtype))
    check_jacobians(lambda x, u: P.projection_hypercube(x, u), (np.array([-1.0, 2.0, 0.5]), 0.8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hyperplane_halfspace_on_pytrees(rng, dtype):
    x, a = rng.normal(size=5).astype(dtype), rng.normal(size=5).astype(dtype)
    b = float(a.astype(np.float64) @ x) - 0.7
    split = lambda v: (jnp.asarray(v[:1]), {"k": jnp.asarray(v[1:3]), "l": jnp.asarray(v[3:])})
    flat = lambda t: np.concatenate([t[0], t[1]["k"], t[1]["l"]])
    x64, a64 = x.astype(np.float64), a.astype(np.float64)
    hyper = x64 - (a64 @ x64 - b) / (a64 @ a64) * a64  # closed form
    for proj, expected in [(P.projection_hyperplane, hyper), (P.projection_halfspace, hyper)]:
        out = proj(split(x), (split(a), b))
        assert flat(out).dtype == dtype
        np.testing.assert_allclose(flat(out), expected, rtol=_tol(dtype, 1e-14), atol=_tol(dtype, 1e-14))
    np.testing.assert_array_equal(flat(P.projection_halfspace(split(x), (split(a), b + 1.4))), x)
    # Scalar (Python float) leaves work too, and the result is on the hyperplane.
    out = P.projection_hyperplane((1.0, {"k": 2.0}), ((1.0, {"k": 1.0}), 1.0))
    np.testing.assert_allclose([out[0], out[1]["k"]], [0.0, 1.0])


def _polyhedron_problem(rng, n=6, p=2, m=4):
    x = rng.normal(size=n) * 2
    A, G = rng.normal(size=(p, n)), rng.normal(size=(m, n))
    z0 = rng.normal(size=n) * 0.3  # a feasible point: b = A z0, h = G z0 + slack
    return x, A, A @ z0, G, G @ z0 + rng.uniform(0.0, 0.5, m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_polyhedron_vs_cvxpy(rng, dtype):
    for _ in range(3):
        x, A, b, G, h = _polyhedron_problem(rng)
        ref = solve_cvxpy(6, euclid(x), lambda z: [A @ z == b, G @ z <= h])
        args = [jnp.asarray(v, dtype) for v in (x, A, b, G, h)]
        z = P.projection_polyhedron(args[0], tuple(args[1:]))
        assert z.dtype == dtype
        # float64: the polished active-set solution is exact to round-off; OSQP-polished reference.
        np.testing.assert_allclose(z, ref, atol=_tol(dtype, 1e-8) * 10)
        assert np.sum(G @ np.asarray(z, np.float64) > h - 1e-6) >= 1  # some inequality active
    # Only equalities: the affine-set projection; only inequalities: a halfspace.
    x, A, b, G, h = _polyhedron_problem(rng, m=1)
    np.testing.assert_allclose(P.projection_polyhedron(x, (A, b, None, None)), P.projection_affine_set(x, (A, b)), atol=1e-10)
    np.testing.assert_allclose(P.projection_polyhedron(x, (None, None, G, h)), P.projection_halfspace(x, (G[0], h[0])), atol=1e-10)


def test_jac_polyhedron(rng):
    x, A, b, G, h = _polyhedron_problem(rng)
    z = np.asarray(P.projection_polyhedron(x, (A, b, G, h)))
    slack = h - G @ z
    assert np.any(slack < 1e-8) and np.all((slack < 1e-8) | (slack > 1e-3))  # strictly complementary
    check_jacobians(lambda x, A, b, G, h: P.projection_polyhedron(x, (A, b, G, h)), (x, A, b, G, h))


def test_polyhedron_empty_raises_or_nan():
    A = jnp.array([[1.0, 1.0], [0.0, 1.0], [-1.0, 1.0]])
    b = jnp.array([1.0, 1.0, -1.0])  # inconsistent equalities
    G, h = -jnp.eye(2), jnp.zeros(2)
    with pytest.raises(ValueError, match="empty"):
        P.projection_polyhedron(jnp.zeros(2), (A, b, G, h))
    assert np.all(np.isnan(P.projection_polyhedron(jnp.zeros(2), (A, b, G, h), check_feasible=False)))
    out = jax.jit(lambda b: P.projection_polyhedron(jnp.zeros(2), (A, b, G, h)))(b)  # traced: NaN, no raise
    assert np.all(np.isnan(out))
    # x >= 0 and x <= -1: empty through inequalities only.
    with pytest.raises(ValueError, match="empty"):
        P.projection_polyhedron(jnp.zeros(2), (None, None, jnp.vstack([-jnp.eye(2), jnp.eye(2)]), jnp.array([0, 0, -1.0, -1.0])))


def test_box_section_check_feasible():
    x = jnp.array([1.2, 3.0, 0.7])
    w = jnp.array([1.0, 2.0, 3.0])
    empty = (jnp.full(3, 1.5), jnp.full(3, 2.0), w, 1.0)  # w^T alpha = 9 > c
    for flag in (None, True):
        with pytest.raises(ValueError, match="empty box section"):
            P.projection_box_section(x, empty, flag)
    assert np.all(np.isnan(P.projection_box_section(x, empty, False)))  # unchecked: NaN, not a point
    assert np.all(np.isnan(jax.jit(lambda c: P.projection_box_section(x, empty[:3] + (c,)))(1.0)))
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda c: P.projection_box_section(x, (0.0, 1.0, w, c), True))(1.0)
    ok = P.projection_box_section(x, (0.0, 0.8, w, 1.0), True)
    np.testing.assert_allclose(w @ ok, 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_isotonic_l2_pav_vs_cvxpy(rng, dtype):
    y = rng.normal(size=8).astype(dtype)
    for increasing, lo, hi in [(True, -np.inf, np.inf), (True, -0.3, 0.4), (False, -0.5, 0.2)]:
        out = P.isotonic_l2_pav(jnp.asarray(y), lo, hi, increasing)
        assert out.dtype == dtype
        y64 = y.astype(np.float64)
        cons = lambda z: [cp.diff(z) >= 0 if increasing else cp.diff(z) <= 0] + (
            [z >= lo, z <= hi] if np.isfinite(lo) else []
        )
        np.testing.assert_allclose(out, solve_cvxpy(8, euclid(y64), cons), atol=_tol(dtype, REF_ATOL))
    check_jacobians(lambda y, lo, hi: P.isotonic_l2_pav(y, lo, hi), (rng.normal(size=7), -0.3, 0.4))


def _transport_data(rng, p=3, d=4):
    X = rng.normal(size=(p, d))
    a, b = rng.uniform(0.5, 1.5, p), rng.uniform(0.5, 1.5, d)
    return X, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("dtype", DTYPES)
def test_euclidean_transport_vs_cvxpy(rng, dtype):
    for scale in (1.0, 0.05):  # sparse plan, then a dense one
        X, a, b = _transport_data(rng)
        X = X * scale
        ref = solve_cvxpy((3, 4), lambda Z: 0.5 * cp.sum_squares(Z - X), lambda Z: [Z >= 0, cp.sum(Z, axis=1) == a, cp.sum(Z, axis=0) == b])
        out = P.projection_transport(jnp.asarray(X, dtype), (jnp.asarray(a, dtype), jnp.asarray(b, dtype)))
        assert out.dtype == dtype
        np.testing.assert_allclose(out, ref, atol=_tol(dtype, 1e-8))
        np.testing.assert_allclose(out.sum(axis=1), a, atol=_tol(dtype, 1e-12))
        np.testing.assert_allclose(out.sum(axis=0), b, atol=_tol(dtype, 1e-12))
    X = rng.normal(size=(4, 4))
    ref = solve_cvxpy((4, 4), lambda Z: 0.5 * cp.sum_squares(Z - X), lambda Z: [Z >= 0, cp.sum(Z, axis=1) == 1, cp.sum(Z, axis=0) == 1])
    np.testing.assert_allclose(P.projection_birkhoff(jnp.asarray(X, dtype)), ref, atol=_tol(dtype, 1e-8))
    # A doubly stochastic matrix is its own projection.
    D = np.array([[0.6, 0.4], [0.4, 0.6]], dtype)
    np.testing.assert_allclose(P.projection_birkhoff(jnp.asarray(D)), D, atol=_tol(dtype, 1e-15))


def test_jac_euclidean_transport_and_birkhoff(rng):
    X, _, _ = _transport_data(rng)
    alpha, beta = rng.normal(size=3), rng.normal(size=4)
    X = 0.3 * X  # a plan with zeros and a connected support
    plan = np.asarray(P.projection_transport(X, (jax.nn.softmax(alpha), jax.nn.softmax(beta))))
    assert np.any(plan == 0) and np.all((plan == 0) | (plan > 1e-4))

    def fun(X, alpha, beta):
        return P.projection_transport(X, (jax.nn.softmax(alpha), jax.nn.softmax(beta)))

    check_jacobians(fun, (X, alpha, beta))
    Xb = rng.normal(size=(4, 4)) * 0.3
    Pb = np.asarray(P.projection_birkhoff(Xb))
    assert np.all((Pb == 0) | (Pb > 1e-4))
    check_jacobians(P.projection_birkhoff, (Xb,))  # issue 18: birkhoff Jacobian vs FD


def test_jac_kl_birkhoff(rng):
    # Sinkhorn to 1e-14 marginal error: FD noise ~1e-14 / h; h = 1e-5 (see test_jac_kl_transport).
    check_jacobians(lambda X: P.kl_projection_birkhoff(X, tol=1e-14), (rng.normal(size=(3, 3)),), h=1e-5)


@pytest.mark.parametrize("semi", [True, False])
def test_transport_make_solver(rng, semi):
    """JAXopt's ``make_solver`` option: any object whose ``run(init).params`` minimises ``fun``."""
    import jaxopt

    X, a, b = _transport_data(rng)
    make_solver = lambda fun: jaxopt.LBFGS(fun=fun, tol=1e-12, maxiter=5000)
    for euclidean, kl in [(P.projection_transport, False), (P.kl_projection_transport, True)]:
        out = euclidean(X, (a, b), make_solver, use_semi_dual=semi)
        ref = euclidean(X, (a, b))  # built-in solver
        # L-BFGS stops at a gradient norm (= marginal error) of 1e-12-ish; the columns are exact.
        np.testing.assert_allclose(out, ref, atol=1e-8)
        np.testing.assert_allclose(out.sum(axis=0), b, atol=1e-12)
    D = jnp.asarray(rng.uniform(size=(3, 3)))
    np.testing.assert_allclose(P.kl_projection_birkhoff(D, make_solver, semi), P.kl_projection_birkhoff(D), atol=1e-8)
    np.testing.assert_allclose(P.projection_birkhoff(D, make_solver, semi), P.projection_birkhoff(D), atol=1e-8)
