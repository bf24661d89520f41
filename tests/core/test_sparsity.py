"""Sparsity detection, colored Jacobians/Hessians and the sparse LU solver (core/_sparsity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("asdex")

from kktbridge.core import _sparsity  # noqa: E402
from kktbridge.core._implicit import implicit_solution  # noqa: E402


def _dense_from(values, rows, cols, shape):
    A = np.zeros(shape)
    np.add.at(A, (np.asarray(rows), np.asarray(cols)), np.asarray(values))
    return A


def banded(x, p):
    """A map whose Jacobian is banded plus one dense row (colored by rows and VJPs)."""
    return jnp.concatenate([jnp.sin(x[1:] * x[:-1]) + p[0], jnp.sum(x**2, keepdims=True)])


def lagrangian(x, p, sigma, lam):
    return sigma * jnp.sum(jnp.cos(x) * p[0]) + jnp.vdot(lam, banded(x, p))


def test_colored_jacobian_matches_jacfwd():
    x = jnp.linspace(-1.0, 1.0, 40)
    p = jnp.array([0.7])
    col = _sparsity.detect_jacobian(banded, x, p)
    value, vals = jax.jit(_sparsity.colored_jacobian(banded, col))(x, p)
    J = _dense_from(vals, col.sparsity.rows, col.sparsity.cols, (40, 40))
    np.testing.assert_allclose(value, banded(x, p), rtol=1e-15)
    np.testing.assert_allclose(J, jax.jacfwd(banded)(x, p), rtol=1e-13, atol=1e-15)
    # The pattern is global: a different point needs no new detection.
    x2 = jnp.cos(jnp.arange(40.0))
    J2 = _dense_from(_sparsity.colored_jacobian(banded, col)(x2, p)[1], col.sparsity.rows, col.sparsity.cols, (40, 40))
    np.testing.assert_allclose(J2, jax.jacfwd(banded)(x2, p), rtol=1e-13, atol=1e-15)
    assert col.num_colors < 40  # fewer VJPs than rows


def test_colored_hessian_matches_hessian():
    x = jnp.linspace(-1.0, 1.0, 30)
    p, lam = jnp.array([1.3]), jnp.linspace(0.5, 2.0, 30)
    col = _sparsity.detect_hessian(lagrangian, x, p, jnp.ones(()), lam)
    vals = jax.jit(_sparsity.colored_hessian(lagrangian, col))(x, p, 2.0, lam)
    H = _dense_from(vals, col.sparsity.rows, col.sparsity.cols, (30, 30))
    np.testing.assert_allclose(H, jax.hessian(lagrangian)(x, p, 2.0, lam), rtol=1e-13, atol=1e-14)


def _random_sparse(n, rng, density=0.1):
    A = np.where(rng.random((n, n)) < density, rng.standard_normal((n, n)), 0.0) + 4 * np.eye(n)
    r, c = np.nonzero(A)
    return A, r, c


def test_sparse_lu_solves_and_transposes(rng):
    n = 25
    A, r, c = _random_sparse(n, rng)
    solver = _sparsity.SparseLUSolver(r, c, n)
    b = rng.standard_normal(n)
    Aj = jnp.asarray(A)
    x = jax.jit(lambda b: solver(lambda v: Aj @ v, b))(jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-12)
    # The transpose solve recovers Aᵀ from the transposed map (the pattern is symmetrised).
    xt = solver(lambda v: Aj.T @ v, jnp.asarray(b))
    np.testing.assert_allclose(xt, np.linalg.solve(A.T, b), rtol=1e-12)


def test_sparse_lu_factors_once_for_all_right_hand_sides(rng, monkeypatch):
    import scipy.sparse.linalg as spla

    n = 20
    A, r, c = _random_sparse(n, rng)
    solver = _sparsity.SparseLUSolver(r, c, n)
    calls = []
    real = spla.splu
    monkeypatch.setattr(spla, "splu", lambda M, *a, **k: calls.append(1) or real(M, *a, **k))
    B = rng.standard_normal((7, n))
    Aj = jnp.asarray(A)
    X = jax.jit(jax.vmap(lambda b: solver(lambda v: Aj @ v, b)))(jnp.asarray(B))
    np.testing.assert_allclose(X, np.linalg.solve(A, B.T).T, rtol=1e-12)
    assert len(calls) == 1  # one factorization, seven right-hand sides
    # A batch of matrices: one factorization each.
    calls.clear()
    As = jnp.stack([Aj, 2 * Aj, Aj + jnp.eye(n)])
    X = jax.vmap(lambda M, b: solver(lambda v: M @ v, b))(As, jnp.asarray(B[:3]))
    for k in range(3):
        np.testing.assert_allclose(X[k], np.linalg.solve(np.asarray(As[k]), B[k]), rtol=1e-12)
    assert len(calls) == 3


def test_entry_outside_the_pattern_gives_nan(rng):
    n = 12
    A, r, c = _random_sparse(n, rng)
    A[0, n - 1] = A[n - 1, 0] = 0.0
    keep = ~(((r == 0) & (c == n - 1)) | ((r == n - 1) & (c == 0)))
    solver = _sparsity.SparseLUSolver(r[keep], c[keep], n)
    A_bad = A.copy()
    A_bad[0, n - 1] = 1.0  # not in the pattern: the probe must catch it
    x = solver(lambda v: jnp.asarray(A_bad) @ v, jnp.ones(n))
    assert np.all(np.isnan(x))


def test_singular_system_gives_minimum_norm_solution():
    # Rank-deficient and consistent: the dense path's minimum-norm answer, not inf/NaN.
    A = np.diag([2.0, 1.0, 0.0, 3.0])
    A[0, 1] = 1.0
    b = np.array([1.0, 2.0, 0.0, 3.0])
    r, c = np.nonzero(A + np.eye(4))
    solver = _sparsity.SparseLUSolver(r, c, 4)
    x = solver(lambda v: jnp.asarray(A) @ v, jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=1e-12, atol=1e-14)


def test_implicit_derivatives_through_sparse_lu_to_second_order():
    """Root of F(x, θ) = A x + x³/3 - θ (tridiagonal A): first and second derivatives of a scalar
    of the root, sparse LU against the default dense solve (and the first against the closed form
    dx/dθ = (A + diag x²)⁻¹)."""
    n = 15
    A = jnp.asarray(np.diag(np.full(n, 3.0)) + np.diag(np.full(n - 1, -1.0), 1) + np.diag(np.full(n - 1, -0.5), -1))
    r, c = np.nonzero(np.asarray(A))
    solver = _sparsity.SparseLUSolver(r, c, n)

    def F(x, theta):
        return A @ x + x**3 / 3 - theta

    def root(theta):
        # Newton from 0, converged to round-off (a loop, so it is traced once)
        newton = lambda _, x: x - jnp.linalg.solve(A + jnp.diag(x**2), F(x, theta))  # noqa: E731
        return jax.lax.fori_loop(0, 40, newton, jnp.zeros(n))

    w = jnp.linspace(1.0, 2.0, n)

    def loss(theta, solve):
        return jnp.vdot(w, implicit_solution(F, jax.lax.stop_gradient(root(theta)), (theta,), solve))

    theta = jnp.linspace(-1.0, 1.5, n)
    x = root(theta)
    g_closed = np.linalg.solve(np.asarray(A + jnp.diag(x**2)).T, np.asarray(w))
    g_sparse = jax.grad(loss)(theta, solver)
    np.testing.assert_allclose(g_sparse, g_closed, rtol=1e-12)
    H_sparse = jax.hessian(loss)(theta, solver)
    H_dense = jax.hessian(loss)(theta, None)
    np.testing.assert_allclose(H_sparse, H_dense, rtol=1e-10, atol=1e-13)


def test_bad_pattern_indices_raise():
    with pytest.raises(ValueError, match="rows, cols"):
        _sparsity.SparseLUSolver(np.array([0, 5]), np.array([0, 1]), 3)
