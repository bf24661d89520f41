r"""Sparse derivatives of large structured problems: patterns, colored evaluation, sparse LU.

Three pieces, each built once per problem *structure* and reused for every call:

1. **Pattern detection.** The global sparsity pattern of a Jacobian ``∂f/∂x`` (or of a Hessian
   ``∇²f``) is read off the function's jaxpr by `asdex <https://github.com/adrhill/asdex>`_:
   index sets are propagated through every primitive, so the pattern is valid for *every* input
   (a conservative superset: ``where`` keeps the entries of both branches), not just the point it
   was traced at. Why asdex: it is the maintained JAX library that *detects* patterns
   (``sparsejac`` only evaluates a Jacobian whose pattern the user already knows), and it also
   colors and decompresses. Probing a dense Jacobian instead would cost ``O(m·n)`` memory, which
   is what this module exists to avoid. Measured on the chain NLP of ``python -m kktbridge bench
   --suite sparse`` (2·10⁵ variables): constraint Jacobian 1.5 s, Lagrangian Hessian 6 s, once.

2. **Coloring.** Columns whose nonzeros never share a row get one color; with the ``n × k`` seed
   matrix ``S`` (``S_jc = 1`` iff column ``j`` has color ``c``) the ``k`` JVPs ``J S`` contain
   every nonzero exactly once, and a gather returns the values in pattern order (rows and VJPs
   when that needs fewer colors). Hessians use a symmetric (star) coloring and Hessian-vector
   products. A banded or block-diagonal problem needs a handful of colors whatever ``n``.

3. **Sparse LU** (:class:`SparseLUSolver`): a linear solver ``solve(matvec, b)`` for the IFT
   system ``∂₁F · ż = r`` whose pattern is known. The matrix values are recovered from ``k``
   colored matvecs, checked against one random probe ``A r`` (a pattern that missed an entry
   gives NaN, never a wrong derivative), and factored by SciPy's SuperLU on the host through
   :func:`jax.pure_callback`. Under ``vmap`` over right-hand sides (the tangents of ``jacfwd``, the
   cotangents of ``jacrev``) one factorization serves all of them. Memory is ``O(nnz(L + U))``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "SPARSE_MIN_SIZE",
    "SPARSE_MAX_DENSITY",
    "SPARSE_DENSE_FALLBACK_MAX",
    "SparseLUSolver",
    "available",
    "detect_jacobian",
    "detect_hessian",
    "colored_jacobian",
    "colored_hessian",
]

#: ``solve_nlp(..., sparse=None)`` takes the sparse path from this many variables on ... (64: the
#: 77-variable pendulum OCP of the eager bench solves 2x faster with colored oracles -- IPOPT
#: calls them hundreds of times, and factors a 4%-dense KKT matrix instead of a dense one -- at
#: the same compile time; below it the dense oracles are as cheap.)
SPARSE_MIN_SIZE = 64
#: ... when the detected KKT pattern fills at most this fraction of the dense matrix.
SPARSE_MAX_DENSITY = 0.05
#: A sparse LU that fails (exactly or numerically singular system) is replaced by the dense
#: minimum-norm (SVD) solution up to this many unknowns -- what the dense path returns -- and by
#: NaN above it: a matrix is never densified beyond this size.
SPARSE_DENSE_FALLBACK_MAX = 2048
#: Pivot ratio ``min|U_ii| / max|U_ii|`` below which the sparse LU is treated as singular (the
#: dense path's ``rcond``).
RCOND = 1e-10


def _asdex():
    try:
        import asdex
    except ImportError as e:  # pragma: no cover - asdex is in the test extra
        raise ImportError(
            "sparse derivatives need the 'asdex' package (sparsity detection and coloring): "
            "pip install 'kktbridge[sparse]'"
        ) from e
    return asdex


class _dense_coloring_ok:
    """Silence asdex's warning that a coloring needs as many colors as a dense evaluation: a small
    or dense block is a legitimate input (the caller decides the layout by density)."""

    def __init__(self, asdex):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._category = asdex.DenseColoringWarning

    def __enter__(self):
        import warnings

        self._ctx.__enter__()
        warnings.simplefilter("ignore", self._category)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def available() -> bool:
    """Whether the sparse path can run (asdex importable)."""
    try:
        _asdex()
    except ImportError:
        return False
    return True


def detect_jacobian(fun: Callable, *args: Any) -> Any:
    """Colored global sparsity pattern of ``∂fun/∂args[0]`` (an ``asdex.ColoredPattern``).

    ``fun`` maps a flat array (first argument) and any further arguments to a flat array; only
    shapes and dtypes of ``args`` are used. ``.sparsity.rows`` / ``.cols`` give the pattern in
    the order :func:`colored_jacobian` returns values.
    """
    asdex = _asdex()
    pattern = asdex.jacobian_sparsity(fun, *args)
    with _dense_coloring_ok(asdex):
        return asdex.jacobian_coloring_from_sparsity(pattern)


def detect_hessian(fun: Callable, *args: Any) -> Any:
    """Colored (symmetric, star-colored) global sparsity pattern of ``∇²_{args[0]} fun``."""
    asdex = _asdex()
    pattern = asdex.hessian_sparsity(fun, *args)
    with _dense_coloring_ok(asdex):
        return asdex.hessian_coloring_from_sparsity(pattern)


def colored_jacobian(fun: Callable, coloring: Any) -> Callable:
    """``(*args) -> (fun(*args), values)``: the Jacobian's nonzeros in pattern order.

    Costs one ``vmap`` of ``k`` JVPs (or VJPs) for ``k`` colors plus a gather: ``O(k · cost(fun))``
    time and ``O(nnz)`` memory, never an ``m × n`` array.
    """
    asdex = _asdex()
    compressed = asdex.value_and_compressed_jacobian_from_coloring(fun, coloring)

    def values(*args):
        value, B = compressed(*args)
        return value, asdex.decompress_data(B, coloring)

    return values


def colored_hessian(fun: Callable, coloring: Any) -> Callable:
    """``(*args) -> values``: the nonzeros of ``∇²_{args[0]} fun`` in pattern order (``k`` HVPs)."""
    asdex = _asdex()
    compressed = asdex.compressed_hessian_from_coloring(fun, coloring)
    return lambda *args: asdex.decompress_data(compressed(*args), coloring)


class SparseLUSolver:
    r"""Linear solver ``solve(matvec, b)`` for square systems with a known sparsity pattern.

    Given the pattern ``P`` of ``A`` (in the flat coordinates of ``b``), the solver works on
    ``P ∪ Pᵀ ∪ diag``: symmetric, so the same coloring recovers ``A`` from ``matvec`` and
    ``Aᵀ`` from the transposed map that :func:`jax.lax.custom_linear_solve` hands to the
    transpose solve, and with the diagonal so that the identity rows the implicit engine puts on
    failed instances are inside it. Then, per call:

    1. ``k`` colored matvecs (one ``vmap``) give the values of ``A`` on the pattern;
    2. a random probe checks ``A r = (sparse A) r`` row by row to ``√ε`` relative accuracy; a
       mismatch (an entry outside the pattern) makes the solution NaN;
    3. on the host, SciPy's ``splu`` factors the CSC matrix once and solves every right-hand side
       of the call (all tangents of a ``jacfwd`` or cotangents of a ``jacrev`` arrive together).
       A singular factor (pivot ratio below ``1e-10``, or SuperLU's own failure) falls back to the
       dense SVD minimum-norm solution -- the dense path's answer -- up to
       :data:`SPARSE_DENSE_FALLBACK_MAX` unknowns, and to NaN above.

    The result is differentiable like any ``solve`` of :func:`jax.lax.custom_linear_solve`
    (which never differentiates the solver's internals), so higher-order derivatives work.

    Args:
      rows, cols: integer arrays, the pattern of ``A`` (duplicates allowed).
      size: the number of unknowns ``N`` (``A`` is ``N × N``).
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, size: int):
        asdex = _asdex()
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.shape != cols.shape or (rows.size and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= size)):
            raise ValueError(f"rows, cols: expected equal-length index arrays within [0, {size}), got shapes {rows.shape}, {cols.shape}")
        diag = np.arange(size, dtype=np.int64)
        keys = np.unique(np.concatenate([rows * size + cols, cols * size + rows, diag * size + diag]))
        r, c = keys // size, keys % size
        pattern = asdex.SparsityPattern.from_coo(r.astype(np.int32), c.astype(np.int32), (size, size))
        with _dense_coloring_ok(asdex):
            self.coloring = asdex.jacobian_coloring_from_sparsity(pattern)
        # asdex's value order; the CSC layout of the same entries is a fixed permutation of it.
        self.rows = np.asarray(self.coloring.sparsity.rows, dtype=np.int64)
        self.cols = np.asarray(self.coloring.sparsity.cols, dtype=np.int64)
        self.size, self.nnz = int(size), int(self.rows.size)
        self._csc_perm = np.lexsort((self.rows, self.cols))
        self._csc_indices = self.rows[self._csc_perm].astype(np.int32)
        self._csc_indptr = np.searchsorted(self.cols[self._csc_perm], np.arange(size + 1)).astype(np.int32)

    @property
    def num_colors(self) -> int:
        return int(self.coloring.num_colors)

    def __call__(self, matvec: Callable, b: Any) -> Any:
        asdex = _asdex()
        b_flat, unravel = ravel_pytree(b)
        N, dtype = self.size, b_flat.dtype
        if b_flat.shape != (N,):
            raise ValueError(f"b: expected {N} unknowns (the pattern's size), got {b_flat.shape[0]}")

        def flat_matvec(v):
            return ravel_pytree(matvec(unravel(v)))[0]

        B = asdex.compressed_jacobian_from_coloring(flat_matvec, self.coloring)(jnp.zeros_like(b_flat))
        values = asdex.decompress_data(B, self.coloring).astype(dtype)
        # Probe: every nonzero of A must lie in the pattern. Structural zeros of the colored
        # products are exact, so only rounding separates the two products of a correct pattern.
        r = jax.random.uniform(jax.random.key(0), (N,), dtype, 0.5, 1.5)
        rows, cols = jnp.asarray(self.rows), jnp.asarray(self.cols)
        Ar = flat_matvec(r)
        terms = values * r[cols]
        Sr = jax.ops.segment_sum(terms, rows, num_segments=N)
        scale = jax.ops.segment_sum(jnp.abs(terms), rows, num_segments=N)
        eps = jnp.finfo(dtype).eps
        ok = jnp.all(jnp.abs(Ar - Sr) <= jnp.sqrt(eps) * scale + eps * jnp.max(scale, initial=0.0))
        x = jax.pure_callback(self._host_solve, jax.ShapeDtypeStruct((N,), dtype), values, b_flat, vmap_method="expand_dims")
        return unravel(jnp.where(ok, x, jnp.nan))

    # ---------------------------------------------------------------- host side

    def _host_solve(self, values: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Solve for every right-hand side; one factorization per distinct matrix.

        With ``vmap_method="expand_dims"`` both operands carry the same number of leading batch
        axes, each either the batch size or 1 (unbatched): a matrix shared along an axis is
        factored once for every right-hand side along it.
        """
        values, b = np.asarray(values), np.asarray(b)
        dtype = b.dtype
        lead = np.broadcast_shapes(values.shape[:-1], b.shape[:-1])
        b = np.broadcast_to(b, lead + (self.size,))
        out = np.empty(lead + (self.size,), dtype=dtype)
        lead_v = values.shape[:-1]
        for idx in np.ndindex(*lead_v):
            sel = tuple(slice(None) if lead_v[d] == 1 else idx[d] for d in range(len(lead)))
            rhs = np.asarray(b[sel], dtype=np.float64)
            shape = rhs.shape
            X = self._factor_solve(np.asarray(values[idx], dtype=np.float64), rhs.reshape(-1, self.size).T)
            out[sel] = X.T.reshape(shape).astype(dtype)
        return out

    def _factor_solve(self, values: np.ndarray, B: np.ndarray) -> np.ndarray:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        N = self.size
        A = sp.csc_matrix((values[self._csc_perm], self._csc_indices, self._csc_indptr), shape=(N, N))
        X = None
        if np.all(np.isfinite(values)):
            try:
                lu = spla.splu(A)
                pivots = np.abs(lu.U.diagonal())
                if pivots.size == 0 or pivots.min() > RCOND * pivots.max():
                    X = lu.solve(B)
            except RuntimeError:  # "Factor is exactly singular"
                X = None
        if X is not None and np.all(np.isfinite(X)):
            return X
        if N <= SPARSE_DENSE_FALLBACK_MAX and np.all(np.isfinite(values)):
            return np.linalg.lstsq(A.toarray(), B, rcond=RCOND)[0]
        return np.full(B.shape, np.nan)
