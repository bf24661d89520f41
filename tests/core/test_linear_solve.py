"""Linear solvers of the implicit-differentiation engine, checked against numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import kktbridge.core._linear_solve as ls_impl
from kktbridge import linear_solve as ls

ALL = ["auto", "lu", "cholesky", "lstsq", "cg", "normal_cg", "gmres", "bicgstab"]
GENERAL = ["auto", "lu", "lstsq", "normal_cg", "gmres", "bicgstab"]  # no symmetry required
DIRECT = {"auto", "lu", "cholesky", "lstsq"}

# Direct solvers are exact up to round-off on these well-conditioned (cond < ~10) systems. The
# iterative ones stop at a relative residual of 1e-10 (their default ``tol``), which bounds the
# relative error by cond * 1e-10; 1e-8 leaves margin for that.
RTOL = {name: (1e-10 if name in DIRECT else 1e-8) for name in ALL}


def _solver(name):
    return ls.resolve_solver(name)


def _spd(rng, n):
    M = rng.standard_normal((n, n))
    return M @ M.T / n + np.eye(n)


def _nonsym(rng, n):
    # Diagonally shifted so it is well conditioned but clearly nonsymmetric.
    return rng.standard_normal((n, n)) / np.sqrt(n) + 2.0 * np.eye(n)


def _matvec(A):
    A = jnp.asarray(A)
    return lambda u: A @ u


@pytest.mark.parametrize("name", ALL)
def test_spd_system_matches_numpy(rng, name):
    A, b = _spd(rng, 7), rng.standard_normal(7)
    x = _solver(name)(_matvec(A), jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=RTOL[name], atol=0)


@pytest.mark.parametrize("name", GENERAL)
def test_nonsymmetric_system_matches_numpy(rng, name):
    A, b = _nonsym(rng, 6), rng.standard_normal(6)
    assert np.abs(A - A.T).max() > 0.1
    x = _solver(name)(_matvec(A), jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=RTOL[name], atol=0)


@pytest.mark.parametrize("name", ALL)
def test_pytree_system_matches_numpy(rng, name):
    """``matvec`` acting on a dict of differently shaped arrays; the solution keeps that structure."""
    b_tree = {"a": jnp.asarray(rng.standard_normal(3)), "b": jnp.asarray(rng.standard_normal((2, 2)))}
    b_flat, unravel = ravel_pytree(b_tree)
    A = _spd(rng, b_flat.shape[0])

    def matvec(u):
        return unravel(jnp.asarray(A) @ ravel_pytree(u)[0])

    x = _solver(name)(matvec, b_tree)
    assert jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(b_tree)
    assert x["b"].shape == (2, 2)
    np.testing.assert_allclose(ravel_pytree(x)[0], np.linalg.solve(A, np.asarray(b_flat)), rtol=RTOL[name], atol=0)


@pytest.mark.parametrize("name", ["lstsq", "auto"])
def test_singular_consistent_system_gives_minimum_norm_solution(rng, name):
    n, rank = 6, 4
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.array([3.0, 2.0, 1.5, 1.0, 0.0, 0.0])
    A = U @ np.diag(s) @ V.T
    b = A @ rng.standard_normal(n)  # consistent: b in range(A)
    assert np.linalg.matrix_rank(A) == rank
    x = np.asarray(_solver(name)(_matvec(A), jnp.asarray(b)))
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(A @ x, b, rtol=1e-9, atol=1e-12)


def test_auto_falls_back_only_when_singular(rng):
    """On a nonsingular system ``solve_auto`` is the LU solution (not a truncated pseudo-inverse)."""
    A, b = _nonsym(rng, 5), rng.standard_normal(5)
    np.testing.assert_allclose(ls.solve_auto(_matvec(A), jnp.asarray(b)), np.linalg.solve(A, b), rtol=1e-12)


def test_auto_uses_matrix_free_solver_above_dense_max_size(rng, monkeypatch):
    """Above ``DENSE_MAX_SIZE`` unknowns the default switches to GMRES; the answer must not change."""
    A, b = _nonsym(rng, 8), rng.standard_normal(8)
    calls = []
    original = ls_impl.solve_gmres

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ls_impl, "DENSE_MAX_SIZE", 4)
    monkeypatch.setattr(ls_impl, "solve_gmres", spy)
    x = ls_impl.solve_auto(_matvec(A), jnp.asarray(b))
    assert calls, "solve_auto did not dispatch to GMRES above DENSE_MAX_SIZE"
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-8)


@pytest.mark.parametrize("name", [n for n in ALL if n != "normal_cg"])
def test_ridge(rng, name):
    """``ridge=r`` solves ``(A + r I) x = b``."""
    A, b, r = _spd(rng, 5), rng.standard_normal(5), 0.7
    x = _solver(name)(_matvec(A), jnp.asarray(b), ridge=r)
    np.testing.assert_allclose(x, np.linalg.solve(A + r * np.eye(5), b), rtol=RTOL[name], atol=0)


def test_ridge_normal_cg_regularises_normal_equations(rng):
    """Documented difference: ``solve_normal_cg`` applies the ridge to ``A^T A`` (Tikhonov)."""
    A, b, r = _nonsym(rng, 5), rng.standard_normal(5), 0.7
    x = ls.solve_normal_cg(_matvec(A), jnp.asarray(b), ridge=r)
    np.testing.assert_allclose(x, np.linalg.solve(A.T @ A + r * np.eye(5), A.T @ b), rtol=1e-8, atol=0)


def test_ridge_makes_singular_system_solvable(rng):
    A = np.diag([2.0, 1.0, 0.0])
    b = np.array([1.0, 1.0, 1.0])  # inconsistent without ridge
    x = ls.solve_lu(_matvec(A), jnp.asarray(b), ridge=0.5)
    np.testing.assert_allclose(x, b / (np.diag(A) + 0.5), rtol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_jit_and_vmap(rng, name):
    """jit over the whole solve; vmap over a batch of (A, b) pairs."""
    As = np.stack([_spd(rng, 4) for _ in range(3)])
    bs = rng.standard_normal((3, 4))
    solve = _solver(name)

    @jax.jit
    def solve_one(A, b):
        return solve(lambda u: A @ u, b)

    xs = jax.vmap(solve_one)(jnp.asarray(As), jnp.asarray(bs))
    expected = np.stack([np.linalg.solve(A, b) for A, b in zip(As, bs)])
    np.testing.assert_allclose(xs, expected, rtol=RTOL[name], atol=0)


@pytest.mark.parametrize("name", ["lu", "cg"])
def test_solution_is_differentiable(rng, name):
    """Solvers are plain JAX: d/dA of x = A^{-1} b is -A^{-1} (dA) x."""
    A, b, dA = _spd(rng, 4), rng.standard_normal(4), rng.standard_normal((4, 4))
    dA = dA + dA.T  # keep A + t dA symmetric for CG
    solve = _solver(name)
    _, x_dot = jax.jvp(lambda A: solve(lambda u: A @ u, jnp.asarray(b)), (jnp.asarray(A),), (jnp.asarray(dA),))
    x = np.linalg.solve(A, b)
    np.testing.assert_allclose(x_dot, -np.linalg.solve(A, dA @ x), rtol=RTOL[name] * 10, atol=0)


def test_unknown_solver_name_raises():
    with pytest.raises(ValueError, match="solve: unknown linear solver 'qr'"):
        ls.resolve_solver("qr")
    with pytest.raises(ValueError, match="solve: expected a callable"):
        ls.resolve_solver(3)


def test_resolve_solver_names_and_callables():
    assert ls.resolve_solver(None) is ls.solve_auto
    assert ls.resolve_solver("cholesky") is ls.solve_cholesky
    custom = functools.partial(ls.solve_lstsq, rcond=1e-8)
    assert ls.resolve_solver(custom) is custom


def test_public_namespace():
    assert set(ls.__all__) >= {
        "solve_auto", "solve_lu", "solve_cholesky", "solve_lstsq", "solve_cg", "solve_normal_cg",
        "solve_gmres", "solve_bicgstab", "LinearSolver", "DENSE_MAX_SIZE",
    }
    for name in ls.__all__:
        assert getattr(ls, name) is getattr(ls_impl, name)
