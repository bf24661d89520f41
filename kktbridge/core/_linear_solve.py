"""Linear solvers for the implicit-function-theorem systems ``A x = b``.

Every solver has the signature ``solve(matvec, b, **options) -> x`` where ``matvec`` is a linear
function on pytrees (``u -> A u``) and ``b`` is a pytree of the same structure as ``matvec``'s
output. They are pure JAX (jit-able, vmap-able, differentiable, GPU-capable) so they can be used as
the ``solve`` argument of :func:`jax.lax.custom_linear_solve`, which is how the implicit
differentiation engine calls them.

Matrix-free solvers (``solve_cg``, ``solve_normal_cg``, ``solve_gmres``, ``solve_bicgstab``) only
call ``matvec``; ``solve_iterative_refinement`` wraps any of them. Dense solvers (``solve_lu``,
``solve_cholesky``, ``solve_inv``, ``solve_qr``, ``solve_lstsq``) materialise ``A``
with ``n`` batched matvecs (one ``vmap``), factor it once, and -- because under ``vmap`` over
right-hand sides the factorisation does not depend on the batched axis -- reuse that factorisation
for every tangent or cotangent of a ``jacfwd`` / ``jacrev``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np
import scipy.linalg
import scipy.linalg.lapack
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


def _materialize_array(matvec: MatVec, shape: tuple, dtype: Any = None) -> jax.Array:
    """Dense tensor of a linear ``matvec`` acting on arrays of shape ``shape`` (JAXopt's helper).

    Returns ``A`` of shape ``out_shape + shape`` with ``matvec(u) == tensordot(A, u, ndim(u))``,
    built from one batched (``vmap``-ed) matvec over the identity.
    """
    shape = tuple(shape)
    dtype = jnp.result_type(float) if dtype is None else dtype
    n = int(np.prod(shape, dtype=np.int64))
    eye = jnp.eye(n, dtype=dtype)
    columns = jax.vmap(lambda v: matvec(v.reshape(shape)))(eye)  # (n, *out_shape)
    columns = jnp.asarray(columns)
    out_shape = columns.shape[1:]
    return jnp.moveaxis(columns, 0, -1).reshape(out_shape + shape)


def _make_rmatvec(matvec: MatVec, x: PyTree) -> MatVec:
    """``y -> A^T y`` from ``matvec = u -> A u``; ``x`` is an example input of ``matvec``."""
    transpose = jax.linear_transpose(matvec, x)
    return lambda y: transpose(y)[0]


def _normal_matvec(matvec: MatVec, x: PyTree) -> PyTree:
    """``A^T A x`` from ``matvec = u -> A u`` (one JVP-free VJP of ``matvec`` at ``x``)."""
    ax, vjp = jax.vjp(matvec, x)
    return vjp(ax)[0]


# --------------------------------------------------------------------------------------------
# Dense direct solvers
# --------------------------------------------------------------------------------------------


def _lu_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    return jsp.linalg.lu_solve(jsp.linalg.lu_factor(A), B)


def _cholesky_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    A = 0.5 * (A + A.T)  # symmetrise round-off so the factorisation sees an exactly symmetric matrix
    return jsp.linalg.cho_solve(jsp.linalg.cho_factor(A), B)


def _inv_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    return jnp.linalg.inv(A) @ B


def _qr_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    q, r = jnp.linalg.qr(A)
    return jsp.linalg.solve_triangular(r, q.T @ B, lower=False)


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
    if jnp.finfo(A.dtype).bits < 64:
        # One step of iterative refinement: in single precision the LU solution of a KKT system
        # loses digits to pivot growth; the correction recovers them for one more triangular solve.
        X = X + jsp.linalg.lu_solve((lu, piv), B - A @ X)
    pivots = jnp.abs(jnp.diagonal(lu))
    singular = (jnp.min(pivots, initial=jnp.inf) <= rcond * jnp.max(pivots, initial=0.0)) | ~jnp.all(jnp.isfinite(X))
    return X, singular


def _robust_inline(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    """LU solution, or the SVD minimum-norm one when the LU reveals singularity; all in XLA."""
    X, singular = _lu_or_pinv(A, B, rcond)
    return jax.lax.cond(singular, lambda: _pinv_kernel(A, B, rcond), lambda: X)


def _robust_kernel(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    """:func:`_robust_inline` with its seldom-taken SVD branch on the host (:func:`rare_dense`)."""
    X, singular = _lu_or_pinv(A, B, rcond)
    return jax.lax.cond(singular, lambda: rare_dense(_pinv_kernel, A, B, rcond), lambda: X)


# ------------------------------------------------------------------- seldom-taken branches, host

def _host_pinv(A: np.ndarray, B: np.ndarray, rcond: float) -> np.ndarray:
    """NumPy twin of :func:`_pinv_kernel` (same relative cutoff; NaN for a non-finite ``A``, as
    XLA's SVD gives, and LAPACK is never handed one)."""
    if not np.all(np.isfinite(A)):
        return np.full(B.shape, np.nan)
    u, s, vh = scipy.linalg.svd(A, full_matrices=False, check_finite=False)
    keep = s > rcond * (s.max() if s.size else 0.0)
    return vh[keep].T @ ((u[:, keep].T @ B) / s[keep, None])


def _host_robust(A: np.ndarray, B: np.ndarray, rcond: float) -> np.ndarray:
    """NumPy twin of :func:`_robust_inline` (same pivot test; float64, so no refinement step)."""
    if not np.all(np.isfinite(A)):
        return np.full(B.shape, np.nan)
    getrf, getrs = scipy.linalg.lapack.get_lapack_funcs(("getrf", "getrs"), dtype=np.float64)
    lu, piv, _ = getrf(A)  # LAPACK directly: the pivots are tested below (SciPy's would warn)
    X, _ = getrs(lu, piv, B)
    pivots = np.abs(np.diagonal(lu))
    if pivots.min(initial=np.inf) > rcond * pivots.max(initial=0.0) and np.all(np.isfinite(X)):
        return X
    return _host_pinv(A, B, rcond)


_HOST_TWINS: dict[Callable, Callable] = {_pinv_kernel: _host_pinv, _robust_inline: _host_robust}


def _host_dense(kernel: Callable, rcond: float, A: np.ndarray, B: np.ndarray, out_dtype: Any) -> np.ndarray:
    """``kernel``'s host twin on ``vmap_method="expand_dims"`` operands ``A (..., N, N)``,
    ``B (..., N, k)``: one factorisation per distinct matrix, shared by every right-hand side
    that uses it (all tangents of a ``jacfwd``, a batch sharing ``A``). Computed in float64."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    N, k = B.shape[-2:]
    lead = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    R = int(np.prod(lead, dtype=np.int64))
    a_ids = np.broadcast_to(np.arange(int(np.prod(A.shape[:-2], dtype=np.int64))).reshape(A.shape[:-2]), lead).reshape(R)
    A_f, B_f = A.reshape((-1, N, N)), np.broadcast_to(B, lead + (N, k)).reshape(R, N, k)
    X = np.empty((R, N, k))
    for a in np.unique(a_ids):
        rows = np.flatnonzero(a_ids == a)
        cols = B_f[rows].transpose(1, 0, 2).reshape(N, rows.size * k)
        X[rows] = _HOST_TWINS[kernel](A_f[a], cols, rcond).reshape(N, rows.size, k).transpose(1, 0, 2)
    return X.reshape(lead + (N, k)).astype(out_dtype)


def rare_dense(kernel: Callable, A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    """``kernel(A, B, rcond)`` for a branch that seldom runs (a robust fallback), kept out of the
    compiled program on a CPU backend.

    XLA compiles both branches of a ``lax.cond``; an SVD or a dense LU fallback that a regular
    problem never takes was ~40 % of a QP pullback's compile time and, measured, ~30 % of its run
    time (1.2-1.4 -> 0.8-1.1 ms at n = 100, batch 32). On CPU the branch is a
    :func:`jax.pure_callback` into the kernel's SciPy twin (:data:`_HOST_TWINS`, float64): no XLA
    program runs inside the callback, so nothing can wait on XLA's thread pool from inside it (a
    separately compiled JAX fallback did, and deadlocked). On accelerators the kernel stays inline.
    Derivatives (only when a solve itself is differentiated) are the inline kernel's.
    """
    if jax.default_backend() != "cpu":
        return kernel(A, B, rcond)
    return _rare_dense(kernel, rcond, A, B)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _rare_dense(kernel: Callable, rcond: float, A: jax.Array, B: jax.Array) -> jax.Array:
    dtype = jnp.result_type(A.dtype, B.dtype)  # as the inline kernel's result (mixed precisions)
    shape = jax.ShapeDtypeStruct(B.shape, dtype)
    host = functools.partial(_host_dense, kernel, rcond, out_dtype=dtype)
    return jax.pure_callback(host, shape, A, B, vmap_method="expand_dims")


@_rare_dense.defjvp
def _rare_dense_jvp(kernel: Callable, rcond: float, primals: tuple, tangents: tuple) -> tuple:
    return jax.jvp(lambda A, B: kernel(A, B, rcond), primals, tangents)


def _robust_many(A: jax.Array, B: jax.Array, rcond: float) -> jax.Array:
    """Robust solve of a batch of systems ``A[i] x = B[i]`` (``B`` is ``(batch, n)``).

    All members are LU-solved; the SVD branch runs -- for the whole batch, in one real ``cond`` --
    only if some member is singular. (A plain ``vmap`` of :func:`_robust_kernel` would turn its
    ``cond`` into a ``select`` that pays for the SVD of every member every time.)
    """
    X, singular = jax.vmap(lambda a, b: _lu_or_pinv(a, b[:, None], rcond))(A, B)
    X = X[..., 0]

    def fallback():
        X_pinv = jax.vmap(lambda a, b: rare_dense(_pinv_kernel, a, b[:, None], rcond)[:, 0])(A, B)
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


def dense_robust_solver(rcond: float = 1e-10) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(A, b) -> x`` of :func:`solve_auto`'s dense branch for an already assembled matrix ``A``.

    Robust LU (minimum-norm SVD solution when singular) with the batching rule of
    :func:`_dense_solver`: one factorisation per matrix, shared by all right-hand sides.
    """
    return _dense_solver(_robust_kernel, rcond)


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


def solve_inv(matvec: MatVec, b: PyTree, ridge: Optional[float] = None) -> PyTree:
    r"""Solve ``A x = b`` as :math:`x = A^{-1} b` with an explicitly formed inverse (JAXopt's ``solve_inv``).

    Less accurate than a factorisation (the error grows like :math:`\kappa(A)^2` rather than
    :math:`\kappa(A)`); provided for compatibility. Under ``vmap`` over right-hand sides the inverse
    is formed once.

    Args:
      matvec: linear map ``u -> A u`` on pytrees.
      b: right-hand side pytree.
      ridge: optional ``r``; solves ``(A + r I) x = b``.
    """
    return _dense(_inv_kernel, matvec, b, ridge, 0.0)


def solve_qr(matvec: MatVec, b: PyTree, ridge: Optional[float] = None) -> PyTree:
    r"""Solve ``A x = b`` by a Householder QR factorisation, :math:`x = R^{-1} Q^\top b`.

    Backward stable for any nonsingular ``A`` (no pivoting growth), at about twice the cost of LU.

    Args:
      matvec: linear map ``u -> A u`` on pytrees.
      b: right-hand side pytree.
      ridge: optional ``r``; solves ``(A + r I) x = b``.
    """
    return _dense(_qr_kernel, matvec, b, ridge, 0.0)


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


def _tree_norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree_util.tree_leaves(tree)))


#: Slack of the convergence check of the iterative solvers: the recomputed residual may exceed
#: the solver's own stopping tolerance by this factor (their estimates drift in floating point).
CHECK_SLACK = 100.0


def _checked(matvec: MatVec, b: PyTree, x: PyTree, tol: float, check: bool = True) -> PyTree:
    r"""``x`` if it solves ``A x = b`` to the requested accuracy, else NaN (values *and* derivatives).

    An iterative solver that stops at ``maxiter`` returns its last iterate as if it were the
    answer; a derivative built on it would be silently wrong. The true residual is recomputed
    (one extra matvec) and the solve accepted iff

    .. math::  \|b - A x\|_2 \le \max(\text{CHECK\_SLACK}\cdot\text{tol},\ \sqrt{\varepsilon})\,\|b\|_2,

    the :math:`\sqrt{\varepsilon}` floor keeping float32 solves with a float64-sized ``tol`` usable.
    The mask multiplies ``x`` (rather than replacing it) so that tangents through a rejected solve
    are NaN too.
    """
    leaves = jax.tree_util.tree_leaves(b)
    if not check or not leaves:
        return x
    dtype = jnp.result_type(*leaves)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return x
    eps = jnp.finfo(dtype).eps
    r = jax.tree_util.tree_map(jnp.subtract, b, matvec(x))
    bound = max(CHECK_SLACK * tol, float(np.sqrt(eps))) * _tree_norm(b) + jnp.finfo(dtype).tiny
    scale = jnp.where(_tree_norm(r) <= bound, 1.0, jnp.nan).astype(dtype)
    return jax.tree_util.tree_map(lambda leaf: leaf * scale.astype(leaf.dtype), x)


def _checked_krylov(method: Callable, matvec: MatVec, b: PyTree, tol: float, check: bool, symmetric: bool) -> PyTree:
    """Run the Krylov ``method(matvec, rhs) -> x`` with the convergence check in both directions.

    The solve is attached to ``A x = b`` by :func:`jax.lax.custom_linear_solve` whose forward *and*
    transposed solves are checked: JAX's Krylov loops stop at once on a NaN right-hand side and
    return their zero start, so a NaN cotangent would otherwise come back as a zero gradient.
    """

    def run(mv: MatVec, rhs: PyTree) -> PyTree:
        return _checked(mv, rhs, method(mv, rhs), tol, check)

    return jax.lax.custom_linear_solve(matvec, b, solve=run, transpose_solve=run, symmetric=symmetric)


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
    check: bool = True,
) -> PyTree:
    """Conjugate gradient; requires ``A`` (plus ``ridge``) symmetric positive definite.

    Stops when ``‖b - A x‖ ≤ tol·‖b‖`` or after ``maxiter`` iterations (default ``10 n``); an
    unconverged result is NaN (see :func:`_checked`).
    """
    def method(mv, rhs):
        return jsp.sparse.linalg.cg(mv, rhs, x0=init, tol=tol, atol=0.0, maxiter=maxiter)[0]

    return _checked_krylov(method, _with_ridge(matvec, ridge), b, tol, check, symmetric=True)


def solve_normal_cg(
    matvec: MatVec,
    b: PyTree,
    ridge: Optional[float] = None,
    init: Optional[PyTree] = None,
    tol: float = 1e-10,
    maxiter: Optional[int] = None,
    check: bool = True,
) -> PyTree:
    """Conjugate gradient on the normal equations ``(A^T A + ridge I) x = A^T b``.

    Works for any nonsingular ``A`` (converges to the least-squares solution otherwise); the
    transpose ``A^T`` is obtained from ``matvec`` by :func:`jax.linear_transpose`. An unconverged
    result (after ``maxiter`` iterations, default ``10 n``) is NaN.
    """
    example = init if init is not None else b
    rmatvec = jax.linear_transpose(matvec, example)

    def normal_matvec(u):
        return rmatvec(matvec(u))[0]

    Atb = rmatvec(b)[0]

    def method(mv, rhs):
        return jsp.sparse.linalg.cg(mv, rhs, x0=init, tol=tol, atol=0.0, maxiter=maxiter)[0]

    # Checked on the normal equations: a least-squares solution of an inconsistent system is a
    # converged answer here, not a failure.
    return _checked_krylov(method, _with_ridge(normal_matvec, ridge), Atb, tol, check, symmetric=True)


def solve_gmres(
    matvec: MatVec,
    b: PyTree,
    ridge: Optional[float] = None,
    init: Optional[PyTree] = None,
    tol: float = 1e-10,
    restart: int = 50,
    maxiter: Optional[int] = None,
    solve_method: str = "batched",
    check: bool = True,
) -> PyTree:
    """Restarted GMRES for general (nonsymmetric) ``A``.

    Stops when ``‖b - A x‖ ≤ tol·‖b‖`` or after ``maxiter`` restart cycles of ``restart`` steps
    each (default: ``⌈10 n / restart⌉`` cycles, i.e. at most ``10 n`` matvecs -- JAX's own default
    of ``10 n`` *cycles* would run ``restart`` times longer before giving up). An unconverged
    result is NaN (see :func:`_checked`).
    """
    if maxiter is None:
        size = ravel_pytree(b)[0].shape[0]
        maxiter = max(1, -(-10 * size // max(1, min(restart, size))))

    def method(mv, rhs):
        return jsp.sparse.linalg.gmres(
            mv, rhs, x0=init, tol=tol, atol=0.0, restart=restart, maxiter=maxiter, solve_method=solve_method
        )[0]

    return _checked_krylov(method, _with_ridge(matvec, ridge), b, tol, check, symmetric=False)


def solve_bicgstab(
    matvec: MatVec,
    b: PyTree,
    ridge: Optional[float] = None,
    init: Optional[PyTree] = None,
    tol: float = 1e-10,
    maxiter: Optional[int] = None,
    check: bool = True,
) -> PyTree:
    """BiCGSTAB for general (nonsymmetric) ``A``; an unconverged result (after ``maxiter``
    iterations, default ``10 n``) is NaN (see :func:`_checked`)."""
    def method(mv, rhs):
        return jsp.sparse.linalg.bicgstab(mv, rhs, x0=init, tol=tol, atol=0.0, maxiter=maxiter)[0]

    return _checked_krylov(method, _with_ridge(matvec, ridge), b, tol, check, symmetric=False)


def solve_iterative_refinement(
    matvec: MatVec,
    b: PyTree,
    init: Optional[PyTree] = None,
    maxiter: int = 10,
    tol: float = 1e-7,
    solve: Optional[Callable] = None,
    ridge: Optional[float] = None,
    matvec_A_bar: Optional[MatVec] = None,
) -> PyTree:
    r"""Iterative refinement around an inner (possibly inexact) solver.

    Starting from :math:`x_0` (``init``, or zero), iterate

    .. math::  r_t = b - A x_t, \qquad \bar A\, \delta_t = r_t, \qquad x_{t+1} = x_t + \delta_t,

    until :math:`\|r_t\|_2 \le` ``tol`` or ``maxiter`` steps (then NaN unless
    :math:`\|r_t\|_2 \le \sqrt{\varepsilon}\,\|b\|_2`), where :math:`\bar A` is an
    approximation of :math:`A` that is easier to solve with: ``matvec_A_bar`` if given, else
    :math:`A + \rho I` with :math:`\rho` = ``ridge`` (default :math:`\bar A = A`). The fixed point
    is the exact solution of :math:`A x = b` whatever :math:`\bar A`, provided the iteration
    contracts (:math:`\rho(I - \bar A^{-1} A) < 1`): a ridge-regularised inner solve gives an
    unbiased answer.

    The loop is not differentiated: the result is attached to ``A x = b`` by
    :func:`jax.lax.custom_linear_solve`, so derivatives with respect to ``b`` and to what
    ``matvec`` closes over are those of :math:`A^{-1} b`, and the transposed system is solved by
    the same refinement on :math:`A^\top`.

    Args:
      matvec: linear map ``u -> A u`` on pytrees.
      b: right-hand side pytree.
      init: optional warm start :math:`x_0` (structure of ``b``).
      maxiter: maximum number of refinement steps.
      tol: absolute tolerance on the residual norm :math:`\|b - A x\|_2`.
      solve: inner solver ``solve(matvec, b) -> x`` (default :func:`solve_gmres` with
        ``check=False``: the inner solves may be inexact, the refinement's own residual is checked;
        pass ``check=False`` to an inexact iterative inner solver of your own for the same reason).
      ridge: optional :math:`\rho` for the inner matrix :math:`\bar A = A + \rho I`.
      matvec_A_bar: optional inner matrix :math:`\bar A` as a matvec (overrides ``ridge``).

    Returns:
      ``x`` with the structure of ``b``.
    """

    def refine(mv: MatVec, mv_bar: MatVec, rhs: PyTree, x0: PyTree) -> PyTree:
        def residual(x):
            return jax.tree_util.tree_map(jnp.subtract, rhs, mv(x))

        def cond(state):
            _, r, it = state
            return (it < maxiter) & (_tree_norm(r) > tol)

        def body(state):
            x, r, it = state
            x = jax.tree_util.tree_map(jnp.add, x, inner(mv_bar, r))
            return x, residual(x), it + 1

        x, r, _ = jax.lax.while_loop(cond, body, (x0, residual(x0), 0))
        # Out of steps with the residual above tol (or above √ε‖b‖ when tol is below what the
        # precision can reach): NaN, not the last iterate.
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(rhs))
        bound = jnp.maximum(tol, float(np.sqrt(jnp.finfo(dtype).eps)) * _tree_norm(rhs))
        scale = jnp.where(_tree_norm(r) <= bound, 1.0, jnp.nan).astype(dtype)
        return jax.tree_util.tree_map(lambda leaf: leaf * scale.astype(leaf.dtype), x)

    x0 = jax.tree_util.tree_map(jnp.zeros_like, b) if init is None else init
    inner: Callable = functools.partial(solve_gmres, check=False) if solve is None else solve

    def forward(mv, rhs):
        return refine(mv, matvec_A_bar if matvec_A_bar is not None else _with_ridge(mv, ridge), rhs, x0)

    def transposed(vecmat, rhs):
        bar_t = _make_rmatvec(matvec_A_bar, rhs) if matvec_A_bar is not None else _with_ridge(vecmat, ridge)
        return refine(vecmat, bar_t, rhs, jax.tree_util.tree_map(jnp.zeros_like, rhs))

    return jax.lax.custom_linear_solve(matvec, b, solve=forward, transpose_solve=transposed)


_SOLVERS: dict[str, LinearSolver] = {
    "auto": solve_auto,
    "lu": solve_lu,
    "cholesky": solve_cholesky,
    "inv": solve_inv,
    "qr": solve_qr,
    "lstsq": solve_lstsq,
    "cg": solve_cg,
    "normal_cg": solve_normal_cg,
    "gmres": solve_gmres,
    "bicgstab": solve_bicgstab,
    "iterative_refinement": solve_iterative_refinement,
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
