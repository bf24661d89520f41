"""Linear solvers for the implicit-function-theorem systems ``A x = b``.

Every solver has the signature ``solve(matvec, b, **options) -> x`` where ``matvec`` is a linear
function on pytrees (``u -> A u``) and ``b`` is a pytree of the same structure as ``matvec``'s
output. They are pure JAX (jit-able, vmap-able, differentiable, GPU-capable) so they can be used as
the ``solve`` argument of :func:`jax.lax.custom_linear_solve`, which is how the implicit
differentiation engine calls them.

Matrix-free solvers (``solve_cg``, ``solve_normal_cg``, ``solve_gmres``, ``solve_bicgstab``) only
call ``matvec``. Dense solvers (``solve_lu``, ``solve_cholesky``, ``solve_lstsq``) materialise ``A``
with ``n`` batched matvecs (one ``vmap``), factor it once, and -- because under ``vmap`` over
right-hand sides the factorisation does not depend on the batched axis -- reuse that factorisation
for every tangent or cotangent of a ``jacfwd`` / ``jacrev``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import jax.scipy as jsp
from jax.flatten_util import ravel_pytree

PyTree = Any
MatVec = Callable[[PyTree], PyTree]

#: Largest number of unknowns for which :func:`solve_auto` uses a dense factorisation.
DENSE_MAX_SIZE = 2048


class LinearSolver(Protocol):
    """Extension point: anything called as ``solve(matvec, b) -> x`` with ``matvec(x) == b``."""

    def __call__(self, matvec: MatVec, b: PyTree, /) -> PyTree: ...


def _tree_add_scaled(x: PyTree, alpha: float, y: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a, c: a + alpha * c, x, y)


def _with_ridge(matvec: MatVec, ridge: Optional[float]) -> MatVec:
    """Return ``u -> (A + ridge I) u``; the ridge makes singular systems solvable (biased)."""
    if ridge is None or ridge == 0:
        return matvec
    return lambda u: _tree_add_scaled(matvec(u), ridge, u)


def materialize(matvec: MatVec, b: PyTree) -> tuple[jax.Array, jax.Array, Callable]:
    """Build the dense matrix of ``matvec`` in the flat coordinates of ``b``.

    Returns ``(A, b_flat, unravel)`` with ``A @ ravel(u) == ravel(matvec(u))``. Costs one batched
    (``vmap``-ed) matvec over the identity.
    """
    b_flat, unravel = ravel_pytree(b)
    n = b_flat.shape[0]

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    eye = jnp.eye(n, dtype=b_flat.dtype)
    A = jax.vmap(flat_matvec, in_axes=1, out_axes=1)(eye)
    return A, b_flat, unravel


# --------------------------------------------------------------------------------------------
# Dense direct solvers
# --------------------------------------------------------------------------------------------


def _lu_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    return jsp.linalg.lu_solve(jsp.linalg.lu_factor(A), B)


def _cholesky_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    A = 0.5 * (A + A.T)  # symmetrise round-off so the factorisation sees an exactly symmetric matrix
    return jsp.linalg.cho_solve(jsp.linalg.cho_factor(A), B)


def _pinv_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    """Minimum-norm least-squares solution ``A^+ B`` through an SVD with relative cutoff."""
    u, s, vh = jnp.linalg.svd(A, full_matrices=False)
    cutoff = rcond * jnp.max(s, initial=0.0)
    s_inv = jnp.where(s > cutoff, 1.0 / jnp.where(s > cutoff, s, 1.0), 0.0)
    return vh.T @ (s_inv[:, None] * (u.T @ B))


def _lu_or_pinv(A: jax.Array, B: jax.Array, rcond: float) -> tuple[jax.Array, jax.Array]:
    """LU solution and whether the pivots (or a non-finite result) reveal singularity."""
    lu, piv = jsp.linalg.lu_factor(A)
    X = jsp.linalg.lu_solve((lu, piv), B)
    pivots = jnp.abs(jnp.diagonal(lu))
    singular = (jnp.min(pivots, initial=jnp.inf) <= rcond * jnp.max(pivots, initial=0.0)) | ~jnp.all(jnp.isfinite(X))
    return X, singular


def _robust_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    X, singular = _lu_or_pinv(A, B, rcond)
    return jax.lax.cond(singular, lambda: _pinv_kernel(A, B, rcond), lambda: X)


def _robust_many(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    """Robust solve of a batch of systems ``A[i] x = B[i]`` (``B`` is ``(batch, n)``).

    All members are LU-solved; the SVD branch runs -- for the whole batch, in one real ``cond`` --
    only if some member is singular. (A plain ``vmap`` of :func:`_robust_kernel` would turn its
    ``cond`` into a ``select`` that pays for the SVD of every member every time.)
    """
    X, singular = jax.vmap(lambda a, b: _lu_or_pinv(a, b[:, None], rcond))(A, B)
    X = X[..., 0]

    def fallback():
        X_pinv = jax.vmap(lambda a, b: _pinv_kernel(a, b[:, None], rcond)[:, 0])(A, B)
        return jnp.where(singular[:, None], X_pinv, X)

    return jax.lax.cond(jnp.any(singular), fallback, lambda: X)


def _dense_solver(kernel: Callable, rcond: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(A, b) -> A^{-1} b`` for one dense system, with a batching rule tuned for IFT solves.

    * One matrix, many right-hand sides (the tangents/cotangents of ``jacfwd``/``jacrev``):
      factor once and solve all columns in one call.
    * Many matrices (``vmap`` over problems): batched factorisations.

    Right-hand sides are always passed as columns: XLA's CPU triangular solve is over an order of
    magnitude slower on vectors than on ``(n, k)`` matrices.
    """

    @jax.custom_batching.custom_vmap
    def solve(A, b):
        return kernel(A, b[:, None], rcond)[:, 0]

    @solve.def_vmap
    def solve_vmap(axis_size, in_batched, A, b):
        a_batched, b_batched = in_batched
        if not b_batched:
            b = jnp.broadcast_to(b, (axis_size,) + b.shape)
        if not a_batched:
            return kernel(A, b.T, rcond).T, True
        if kernel is _robust_kernel:
            return _robust_many(A, b, rcond), True
        return jax.vmap(lambda a, v: kernel(a, v[:, None], rcond)[:, 0])(A, b), True

    return solve


def _dense(kernel: Callable, matvec: MatVec, b: PyTree, ridge: Optional[float], rcond: float) -> PyTree:
    A, b_flat, unravel = materialize(_with_ridge(matvec, ridge), b)
    return unravel(_dense_solver(kernel, rcond)(A, b_flat))


def solve_lu(matvec: MatVec, b: PyTree, ridge: Optional[float] = None) -> PyTree:
    """Solve ``A x = b`` by a dense LU factorisation with partial pivoting.

    Args:
      matvec: linear map ``u -> A u`` on pytrees.
      b: right-hand side pytree.
      ridge: optional ``r``; solves ``(A + r I) x = b`` instead.

    Returns:
      ``x`` with the structure of ``b``. Singular ``A`` gives inf/NaN: use :func:`solve_lstsq`
      (or :func:`solve_auto`, which falls back to it) when the system may be degenerate.
    """
    return _dense(_lu_kernel, matvec, b, ridge, 0.0)


def solve_cholesky(matvec: MatVec, b: PyTree, ridge: Optional[float] = None) -> PyTree:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` by a Cholesky factorisation.

    Args:
      matvec: linear map ``u -> A u`` (must be symmetric positive definite).
      b: right-hand side pytree.
      ridge: optional ``r``; solves ``(A + r I) x = b``.
    """
    return _dense(_cholesky_kernel, matvec, b, ridge, 0.0)


def solve_lstsq(
    matvec: MatVec, b: PyTree, ridge: Optional[float] = None, rcond: float = 1e-10
) -> PyTree:
    """Minimum-norm least-squares solution ``x = A^+ b`` (SVD pseudo-inverse).

    For a nonsingular ``A`` this is ``A^{-1} b``. For a singular or rank-deficient ``A`` (redundant
    equality constraints, LICQ failure, weakly active constraints) it returns the solution of
    ``min ||x||`` over ``argmin ||A x - b||``: the minimum-norm derivative when the system is
    consistent. Singular values below ``rcond * max(s)`` are treated as zero.

    Args:
      matvec: linear map ``u -> A u``.
      b: right-hand side pytree.
      ridge: optional ``r``; uses ``A + r I``.
      rcond: relative cutoff on singular values.
    """
    return _dense(_pinv_kernel, matvec, b, ridge, rcond)


def solve_auto(matvec: MatVec, b: PyTree, ridge: Optional[float] = None, rcond: float = 1e-10) -> PyTree:
    """Default solver: dense and robust for small systems, matrix-free for large ones.

    The rule (decided at trace time from the static size ``n`` of ``b``):

    * ``n <= DENSE_MAX_SIZE`` (2048): materialise ``A``, LU-factor it, and use it unless the
      factorisation reveals (numerical) singularity -- smallest pivot below ``rcond`` times the
      largest, or a non-finite result -- in which case the SVD minimum-norm solution of
      :func:`solve_lstsq` is returned instead. Degenerate KKT systems therefore yield finite,
      minimum-norm derivatives rather than inf/NaN. Under ``vmap`` one factorisation serves all
      right-hand sides of a matrix, and the SVD runs only when some system needs it.
    * ``n > DENSE_MAX_SIZE``: restarted GMRES (:func:`solve_gmres`), which never forms ``A``.
    """
    size = ravel_pytree(b)[0].shape[0]
    if size > DENSE_MAX_SIZE:
        return solve_gmres(matvec, b, ridge=ridge)
    return _dense(_robust_kernel, matvec, b, ridge, rcond)


# --------------------------------------------------------------------------------------------
# Matrix-free iterative solvers (pytree vectors; jax.scipy implementations)
# --------------------------------------------------------------------------------------------


def solve_cg(
    matvec: MatVec,
    b: PyTree,
    ridge: Optional[float] = None,
    init: Optional[PyTree] = None,
    tol: float = 1e-10,
    maxiter: Optional[int] = None,
) -> PyTree:
    """Conjugate gradient; requires ``A`` (plus ``ridge``) symmetric positive definite."""
    return jsp.sparse.linalg.cg(_with_ridge(matvec, ridge), b, x0=init, tol=tol, atol=0.0, maxiter=maxiter)[0]


def solve_normal_cg(
    matvec: MatVec,
    b: PyTree,
    ridge: Optional[float] = None,
    init: Optional[PyTree] = None,
    tol: float = 1e-10,
    maxiter: Optional[int] = None,
) -> PyTree:
    """Conjugate gradient on the normal equations ``(A^T A + ridge I) x = A^T b``.

    Works for any nonsingular ``A`` (converges to the least-squares solution otherwise); the
    transpose ``A^T`` is obtained from ``matvec`` by :func:`jax.linear_transpose`.
    """
    example = init if init is not None else b
    rmatvec = jax.linear_transpose(matvec, example)

    def normal_matvec(u):
        return rmatvec(matvec(u))[0]

    Atb = rmatvec(b)[0]
    return jsp.sparse.linalg.cg(
        _with_ridge(normal_matvec, ridge), Atb, x0=init, tol=tol, atol=0.0, maxiter=maxiter
    )[0]


def solve_gmres(
    matvec: MatVec,
    b: PyTree,
    ridge: Optional[float] = None,
    init: Optional[PyTree] = None,
    tol: float = 1e-10,
    restart: int = 50,
    maxiter: Optional[int] = None,
    solve_method: str = "batched",
) -> PyTree:
    """Restarted GMRES for general (nonsymmetric) ``A``."""
    return jsp.sparse.linalg.gmres(
        _with_ridge(matvec, ridge),
        b,
        x0=init,
        tol=tol,
        atol=0.0,
        restart=restart,
        maxiter=maxiter,
        solve_method=solve_method,
    )[0]


def solve_bicgstab(
    matvec: MatVec,
    b: PyTree,
    ridge: Optional[float] = None,
    init: Optional[PyTree] = None,
    tol: float = 1e-10,
    maxiter: Optional[int] = None,
) -> PyTree:
    """BiCGSTAB for general (nonsymmetric) ``A``."""
    return jsp.sparse.linalg.bicgstab(
        _with_ridge(matvec, ridge), b, x0=init, tol=tol, atol=0.0, maxiter=maxiter
    )[0]


_SOLVERS: dict[str, LinearSolver] = {
    "auto": solve_auto,
    "lu": solve_lu,
    "cholesky": solve_cholesky,
    "lstsq": solve_lstsq,
    "cg": solve_cg,
    "normal_cg": solve_normal_cg,
    "gmres": solve_gmres,
    "bicgstab": solve_bicgstab,
}


def resolve_solver(solve: "LinearSolver | str | None") -> LinearSolver:
    """Turn ``None`` / a name / a callable into a linear solver, with a clear error otherwise."""
    if solve is None:
        return solve_auto
    if isinstance(solve, str):
        try:
            return _SOLVERS[solve]
        except KeyError:
            raise ValueError(
                f"solve: unknown linear solver {solve!r}; expected one of {sorted(_SOLVERS)} or a callable "
                "solve(matvec, b) -> x"
            ) from None
    if not callable(solve):
        raise ValueError(f"solve: expected a callable solve(matvec, b) -> x or a name, got {type(solve).__name__}")
    return solve
