"""Linear solvers of the implicit-differentiation engine, checked against numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import kktbridge.core._linear_solve as ls_impl
from kktbridge import linear_solve as ls

ALL = ["auto", "lu", "cholesky", "inv", "qr", "lstsq", "cg", "normal_cg", "gmres", "bicgstab"]
GENERAL = ["auto", "lu", "inv", "qr", "lstsq", "normal_cg", "gmres", "bicgstab"]  # no symmetry required
DIRECT = {"auto", "lu", "cholesky", "inv", "qr", "lstsq"}

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


def _singular(rng, n=6, rank=4):
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return U @ np.diag(np.r_[np.linspace(3.0, 1.0, rank), np.zeros(n - rank)]) @ V.T


def _program_calls(fun, *args):
    import re

    return set(re.findall(r"lapack_\w+", jax.jit(fun).lower(*args).as_text()))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the robust fallbacks run on the host only on CPU")
def test_robust_fallback_is_not_compiled_and_equals_the_inline_kernel(rng):
    """``solve_auto``'s SVD branch runs on the host (SciPy), not in the program: the program holds
    the LU only; one matrix or a batch, regular or singular, float32 or float64, values and
    derivatives are those of the all-XLA kernel."""
    A_s, A_r = _singular(rng), _nonsym(rng, 6)
    B = rng.standard_normal((3, 6))
    solve = lambda A, b: ls.solve_auto(lambda u: A @ u, b)  # noqa: E731
    inline = lambda A, b: ls_impl._robust_inline(A, b[:, None], 1e-10)[:, 0]  # noqa: E731
    calls = _program_calls(solve, jnp.asarray(A_s), jnp.asarray(B[0]))
    assert calls and not any("gesdd" in c or "gesvd" in c for c in calls), calls
    for A in (A_s, A_r):
        A = jnp.asarray(A)
        # One matrix, many right-hand sides (the host factors it once), jitted.
        out = jax.jit(jax.vmap(solve, in_axes=(None, 0)))(A, jnp.asarray(B))
        np.testing.assert_allclose(out, jax.vmap(inline, in_axes=(None, 0))(A, jnp.asarray(B)), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out, (np.linalg.pinv(np.asarray(A), rcond=1e-10) @ B.T).T, rtol=1e-9, atol=1e-12)
        # Derivatives are the inline kernel's.
        dA = jnp.asarray(rng.standard_normal((6, 6)))
        b = jnp.asarray(A @ B[0]) if A is A_s else jnp.asarray(B[0])
        t, t_ref = jax.jvp(lambda M: solve(M, b), (A,), (dA,))[1], jax.jvp(lambda M: inline(M, b), (A,), (dA,))[1]
        np.testing.assert_allclose(t, t_ref, rtol=1e-9, atol=1e-12)
    # A batch of matrices, one singular: only that member takes the (host) SVD.
    As = jnp.asarray(np.stack([A_r, A_s, 2 * A_r]))
    out = jax.jit(jax.vmap(solve))(As, jnp.asarray(B))
    np.testing.assert_allclose(out, jax.vmap(inline)(As, jnp.asarray(B)), rtol=1e-10, atol=1e-12)
    # float32 in, float32 out (the host computes in float64: at least as accurate; 1e-5 is float32's
    # rounding of the data, amplified by cond(A_s restricted to its range) = 3).
    f32 = lambda t: jnp.asarray(t, jnp.float32)  # noqa: E731
    out32 = jax.jit(lambda A, b: ls_impl.rare_dense(ls_impl._pinv_kernel, A, b, 1e-6))(f32(A_s), f32(B.T))
    assert out32.dtype == jnp.float32
    # Mixed precisions promote as the inline kernel does.
    mixed = jax.jit(lambda A, b: ls_impl.rare_dense(ls_impl._pinv_kernel, A, b, 1e-6))(jnp.asarray(A_s), f32(B.T))
    assert mixed.dtype == ls_impl._pinv_kernel(jnp.asarray(A_s), f32(B.T), 1e-6).dtype == jnp.float64
    np.testing.assert_allclose(out32, np.linalg.pinv(A_s, rcond=1e-6) @ B.T, rtol=1e-5, atol=1e-5)
    # A non-finite matrix gives NaN (LAPACK is never handed it).
    assert np.all(np.isnan(jax.jit(solve)(jnp.asarray(A_s).at[0, 0].set(jnp.nan), jnp.asarray(B[0]))))


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
    with pytest.raises(ValueError, match="solve: unknown linear solver 'svd'"):
        ls.resolve_solver("svd")
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
        "solve_inv", "solve_qr", "solve_iterative_refinement",
    }
    for name in ls.__all__:
        assert getattr(ls, name) is getattr(ls_impl, name)


# --------------------------------------------------------------------------------------------
# JAXopt-compatible additions (issue 15): solve_inv, solve_qr, solve_iterative_refinement and
# the private helpers JAXopt's users reach (_materialize_array, _make_rmatvec, _normal_matvec)
# --------------------------------------------------------------------------------------------

DTYPES = [np.float32, np.float64]


def _rtol(dtype, rtol64):
    # float32: the systems have cond < ~10, so a backward-stable solve is accurate to
    # ~cond * n * eps32 ~ 1e-5 relative; inv is not backward stable (cond^2), same bound here.
    return 2e-5 if dtype == np.float32 else rtol64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["solve_inv", "solve_qr", "solve_lu"])
def test_dense_solvers_both_precisions(rng, dtype, name):
    A, b = _nonsym(rng, 6), rng.standard_normal(6)
    solve = getattr(ls, name)
    x = solve(_matvec(A.astype(dtype)), jnp.asarray(b, dtype))
    assert x.dtype == dtype
    np.testing.assert_allclose(x, np.linalg.solve(A.astype(dtype).astype(np.float64), b.astype(dtype)), rtol=_rtol(dtype, 1e-12))
    x = solve(_matvec(A.astype(dtype)), jnp.asarray(b, dtype), ridge=0.5)
    np.testing.assert_allclose(x, np.linalg.solve(A + 0.5 * np.eye(6), b), rtol=_rtol(dtype, 1e-12))


@pytest.mark.parametrize("dtype", DTYPES)
def test_iterative_refinement_converges_to_the_exact_solution(rng, dtype):
    A, b = _nonsym(rng, 6), rng.standard_normal(6)
    Aj, bj = jnp.asarray(A, dtype), jnp.asarray(b, dtype)
    exact = np.linalg.solve(A.astype(dtype).astype(np.float64), b.astype(dtype))
    tol = 1e-5 if dtype == np.float32 else 1e-13
    x = ls.solve_iterative_refinement(_matvec(Aj), bj, tol=tol)
    assert x.dtype == dtype
    np.testing.assert_allclose(x, exact, rtol=_rtol(dtype, 1e-12))
    # A crude inner solve -- A + 0.5 I, i.e. a biased answer on its own -- is refined to the
    # unbiased solution: the error contracts by rho(I - (A + 0.5 I)^{-1} A) < 1 per step.
    biased = np.linalg.solve(A + 0.5 * np.eye(6), b)
    assert np.abs(biased - exact).max() > 0.05
    x = ls.solve_iterative_refinement(_matvec(Aj), bj, maxiter=200, tol=tol, solve=ls.solve_lu, ridge=0.5)
    np.testing.assert_allclose(x, exact, rtol=_rtol(dtype, 1e-12))
    D = jnp.asarray(np.diag(np.diag(A)) + 1.5 * np.eye(6), dtype)  # Jacobi-like inner matrix
    x = ls.solve_iterative_refinement(_matvec(Aj), bj, maxiter=500, tol=tol, solve=ls.solve_lu, matvec_A_bar=_matvec(D))
    np.testing.assert_allclose(x, exact, rtol=_rtol(dtype, 1e-12))
    # maxiter bounds the work, and running out of steps is a failure, not an answer: one step of
    # the biased inner solve (the biased solution) is reported as NaN, values and derivatives.
    def one_step(b):
        return ls.solve_iterative_refinement(_matvec(Aj), b, maxiter=1, tol=0.0, solve=ls.solve_lu, ridge=0.5)

    assert np.all(np.isnan(one_step(bj)))
    assert np.all(np.isnan(jax.jacfwd(one_step)(bj)))
    assert np.all(np.isnan(jax.grad(lambda b: one_step(b).sum())(bj)))
    # A warm start at the solution stops at once.
    x0 = jnp.asarray(exact, dtype)
    np.testing.assert_array_equal(ls.solve_iterative_refinement(_matvec(Aj), bj, init=x0, tol=1.0, solve=ls.solve_lu, ridge=0.5), x0)


def test_iterative_refinement_derivatives_and_pytrees(rng):
    A, b, dA, db = _nonsym(rng, 5), rng.standard_normal(5), rng.standard_normal((5, 5)), rng.standard_normal(5)

    def solve(A, b):
        return ls.solve_iterative_refinement(lambda u: A @ u, b, tol=1e-14, maxiter=50, solve=ls.solve_lu, ridge=0.3)

    x = np.linalg.solve(A, b)
    _, x_dot = jax.jvp(solve, (jnp.asarray(A), jnp.asarray(b)), (jnp.asarray(dA), jnp.asarray(db)))
    np.testing.assert_allclose(x_dot, np.linalg.solve(A, db - dA @ x), rtol=1e-10)
    # Reverse mode (the transposed system is refined on A^T): d(c^T x)/db = A^{-T} c.
    c = rng.standard_normal(5)
    gA, gb = jax.grad(lambda A, b: jnp.dot(jnp.asarray(c), solve(A, b)), argnums=(0, 1))(jnp.asarray(A), jnp.asarray(b))
    lam = np.linalg.solve(A.T, c)
    np.testing.assert_allclose(gb, lam, rtol=1e-10)
    np.testing.assert_allclose(gA, -np.outer(lam, x), rtol=1e-10)
    # Pytree right-hand side.
    b_tree = {"u": jnp.asarray(b[:2]), "v": jnp.asarray(b[2:])}
    b_flat, unravel = ravel_pytree(b_tree)
    out = ls.solve_iterative_refinement(lambda t: unravel(jnp.asarray(A) @ ravel_pytree(t)[0]), b_tree, tol=1e-14)
    np.testing.assert_allclose(ravel_pytree(out)[0], x, rtol=1e-10)
    # Usable by name as the implicit-differentiation solver.
    assert ls.resolve_solver("iterative_refinement") is ls.solve_iterative_refinement


@pytest.mark.parametrize("dtype", DTYPES)
def test_jaxopt_private_helpers(rng, dtype):
    A = rng.standard_normal((4, 3, 4, 3)).astype(dtype)
    M = A.reshape(12, 12)
    matvec = lambda u: (jnp.asarray(M) @ u.ravel()).reshape(4, 3)
    T = ls_impl._materialize_array(matvec, (4, 3), dtype)
    assert T.shape == (4, 3, 4, 3) and T.dtype == dtype
    np.testing.assert_array_equal(T, A)
    R = rng.standard_normal((5, 3)).astype(dtype)
    mv = lambda u: jnp.asarray(R) @ u
    np.testing.assert_array_equal(ls_impl._materialize_array(mv, (3,), dtype), R)  # non-square
    y, u = rng.standard_normal(5).astype(dtype), rng.standard_normal(3).astype(dtype)
    rmatvec = ls_impl._make_rmatvec(mv, jnp.asarray(u))
    np.testing.assert_allclose(rmatvec(jnp.asarray(y)), R.T @ y, rtol=_rtol(dtype, 1e-14))
    np.testing.assert_allclose(ls_impl._normal_matvec(mv, jnp.asarray(u)), R.T @ (R @ u), rtol=_rtol(dtype, 1e-14))


# --------------------------------------------------------------------------------------------
# Iterative solvers never return an unconverged iterate as an answer
# --------------------------------------------------------------------------------------------

_ITERATIVE = {
    "cg": (ls.solve_cg, "spd"),
    "normal_cg": (ls.solve_normal_cg, "nonsym"),
    "gmres": (ls.solve_gmres, "nonsym"),
    "bicgstab": (ls.solve_bicgstab, "nonsym"),
}


def _ill_conditioned(rng, n, kind):
    """A matrix whose Krylov solvers need many more than 2 iterations (spread-out spectrum)."""
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    A = Q @ np.diag(np.logspace(0, 4, n)) @ Q.T
    if kind == "nonsym":
        A = A + 0.1 * np.triu(rng.standard_normal((n, n)), 1)
    return A


@pytest.mark.parametrize("name", sorted(_ITERATIVE))
def test_iterative_solver_out_of_iterations_gives_nan_values_and_derivatives(rng, name):
    solve, kind = _ITERATIVE[name]
    n = 30
    A = jnp.asarray(_ill_conditioned(rng, n, kind))
    b = jnp.asarray(rng.standard_normal(n))
    exact = np.linalg.solve(np.asarray(A), np.asarray(b))

    kwargs = {"restart": 2} if name == "gmres" else {}
    truncated = lambda b: solve(_matvec(A), b, maxiter=2, **kwargs)  # noqa: E731
    assert np.all(np.isnan(truncated(b)))
    assert np.all(np.isnan(jax.jacfwd(truncated)(b)))
    assert np.all(np.isnan(jax.grad(lambda b: truncated(b).sum())(b)))
    assert np.all(np.isnan(jax.jit(truncated)(b)))
    # check=False hands back the last iterate, finite and (here) visibly not the solution.
    raw = solve(_matvec(A), b, maxiter=2, check=False, **kwargs)
    assert np.all(np.isfinite(raw)) and np.abs(np.asarray(raw) - exact).max() > 1e-3
    # With the default iteration budget the same system converges, and is accepted.
    full = solve(_matvec(A), b, tol=1e-12)
    np.testing.assert_allclose(full, exact, rtol=1e-6, atol=1e-9 * np.abs(exact).max())


def test_iterative_solver_check_is_per_right_hand_side(rng):
    """Under vmap each right-hand side is judged on its own: one unconverged column is NaN, the
    others (here: b = 0, solved exactly by the zero start) stay finite."""
    A = jnp.asarray(_ill_conditioned(rng, 20, "spd"))
    B = jnp.stack([jnp.asarray(rng.standard_normal(20)), jnp.zeros(20)])
    X = jax.vmap(lambda b: ls.solve_cg(_matvec(A), b, maxiter=2))(B)
    assert np.all(np.isnan(X[0])) and np.all(X[1] == 0.0)


def test_implicit_derivative_through_an_unconverged_linear_solve_is_nan():
    """custom_root with a truncated CG: the derivative is NaN rather than a wrong number."""
    from kktbridge import custom_root

    n = 25
    rng = np.random.default_rng(3)
    A = jnp.asarray(_ill_conditioned(rng, n, "spd"))

    def F(x, theta):  # root: A x = theta
        return A @ x - theta

    def make(solve):
        @custom_root(F, solve=solve)
        def solver(init, theta):
            return jnp.linalg.solve(A, theta)

        return solver

    theta = jnp.asarray(rng.standard_normal(n))
    init = jnp.zeros(n)
    good = jax.jacrev(make(functools.partial(ls.solve_cg, tol=1e-12)), argnums=1)(init, theta)
    np.testing.assert_allclose(good, np.linalg.inv(np.asarray(A)), rtol=1e-6, atol=1e-10)
    bad = jax.jacrev(make(functools.partial(ls.solve_cg, maxiter=2)), argnums=1)(init, theta)
    assert np.all(np.isnan(bad))
