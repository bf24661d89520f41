r"""Sparse matrix arguments of the bridges: BCOO / SciPy inputs as values plus a static pattern.

A sparse matrix argument ``M`` (``jax.experimental.sparse.BCOO``, any ``scipy.sparse`` matrix, or a
concrete dense array passed alongside sparse ones) is split into

* its **values** ``data`` (a JAX array, differentiable: derivatives w.r.t. ``M.data``), and
* its **pattern** :class:`Coords` (host NumPy rows, columns and shape), which is static: it goes
  into the bridge's cache key, so eager calls with new values reuse the compiled stages of the
  pattern and a new pattern compiles once.

Products are ``segment_sum`` scatters over the coordinates (``O(nnz)``), never a dense ``M``;
duplicate coordinates add up, as in COO. Used by :func:`~kktbridge.solve_qp` (``P, A, G``) and
:func:`~kktbridge.bridges._conic.solve_conic` (``A``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.bridges._common import as_array, is_concrete

__all__ = ["Coords", "SparseData", "is_sparse", "sparse_arg"]


class Coords(NamedTuple):
    """Static sparsity pattern of one sparse matrix argument (coordinates in input order)."""

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]

    def key(self) -> tuple:
        return (self.shape, self.rows.tobytes(), self.cols.tobytes())

    def matvec(self, data: jax.Array, x: jax.Array) -> jax.Array:
        """``M @ x`` from the values ``data`` (duplicates add up, as in COO)."""
        return jax.ops.segment_sum(data * x[self.cols], jnp.asarray(self.rows), num_segments=self.shape[0])

    def rmatvec(self, data: jax.Array, y: jax.Array) -> jax.Array:
        """``Mᵀ @ y`` from the values ``data``."""
        return jax.ops.segment_sum(data * y[self.rows], jnp.asarray(self.cols), num_segments=self.shape[1])

    def todense(self, data: jax.Array) -> jax.Array:
        """The dense matrix (duplicates add up)."""
        return jnp.zeros(self.shape, data.dtype).at[self.rows, self.cols].add(data)

    def row_norms(self, data: jax.Array) -> jax.Array:
        """Euclidean norm of every row ``‖M_i‖₂`` (``shape[0]`` values)."""
        # Duplicates are summed per entry first, so that a split entry has its true norm.
        keys, inverse = np.unique(self.rows.astype(np.int64) * self.shape[1] + self.cols, return_inverse=True)
        merged = jax.ops.segment_sum(data, jnp.asarray(inverse.ravel()), num_segments=keys.size)
        return jnp.sqrt(jax.ops.segment_sum(merged**2, jnp.asarray(keys // self.shape[1]), num_segments=self.shape[0]))


class SparseData(NamedTuple):
    """Values on a static pattern: what :func:`sparse_arg` makes of a sparse input, accepted as an
    input too by the bridges (for callers such as the cvxpy layer that compute the values inside
    ``jit``, where a BCOO built there would have traced indices)."""

    data: jax.Array
    coords: Coords


def is_sparse(M: Any) -> bool:
    """Whether ``M`` is a BCOO, SciPy sparse matrix or :class:`SparseData`."""
    from jax.experimental import sparse as jsparse

    return isinstance(M, (jsparse.BCOO, SparseData)) or type(M).__module__.startswith("scipy.sparse")


def sparse_arg(name: str, M: Any, shape: tuple[Optional[int], int], dtype: Any) -> tuple[jax.Array, Coords]:
    """Values and static pattern of a sparse (or concrete dense) matrix argument.

    Args:
      name: the argument's name, for error messages.
      M: BCOO (2-D, concrete indices; padding entries with out-of-range indices are dropped),
        SciPy sparse, :class:`SparseData`, concrete dense array, or ``None`` (an empty ``(0, shape[1])`` matrix).
      shape: expected ``(rows, cols)``; ``rows`` may be ``None`` (any).
      dtype: dtype of the returned values.

    Returns:
      ``(data, coords)`` with ``M = Σ_k data_k e_{rows_k} e_{cols_k}ᵀ``.

    Raises:
      ValueError: naming ``name``: wrong rank or shape, traced BCOO indices, a traced dense matrix.
    """
    from jax.experimental import sparse as jsparse

    if M is None:
        return jnp.zeros((0,), dtype), Coords(np.zeros(0, np.int32), np.zeros(0, np.int32), (0, shape[1]))
    if isinstance(M, SparseData):
        rows, cols, data, mshape = M.coords.rows, M.coords.cols, M.data, tuple(M.coords.shape)
    elif isinstance(M, jsparse.BCOO):
        if M.n_batch or M.n_dense or M.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D BCOO matrix without batch or dense dimensions, got {M}")
        if not is_concrete(M.indices):
            raise ValueError(
                f"{name}: the sparsity pattern (BCOO indices) must be concrete: build the matrix outside jit "
                "(or close over it) and differentiate through its data"
            )
        idx = np.asarray(M.indices)
        rows, cols, data = idx[:, 0], idx[:, 1], M.data
        keep = (rows < M.shape[0]) & (cols < M.shape[1])  # BCOO pads with out-of-range indices
        if not keep.all():
            rows, cols, data = rows[keep], cols[keep], data[np.nonzero(keep)[0]]
        mshape = tuple(M.shape)
    elif is_sparse(M):
        c = M.tocoo()
        rows, cols, data, mshape = np.asarray(c.row), np.asarray(c.col), jnp.asarray(c.data), tuple(c.shape)
    else:
        arr = M if isinstance(M, jax.Array) else np.asarray(M, dtype=np.float64)  # NumPy: concrete even under jit
        if np.ndim(arr) != 2:
            raise ValueError(f"{name}: expected a 2-D array, got shape {tuple(np.shape(arr))}")
        if not is_concrete(arr):
            raise ValueError(f"{name}: a dense matrix passed with sparse ones must be concrete (its pattern is read once)")
        rows, cols = np.nonzero(np.asarray(arr))
        data, mshape = arr[rows, cols], tuple(arr.shape)
    if (shape[0] is not None and mshape[0] != shape[0]) or mshape[1] != shape[1]:
        want = "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {mshape}")
    data = as_array(name, data)
    return data.astype(dtype), Coords(rows.astype(np.int32), cols.astype(np.int32), (int(mshape[0]), int(mshape[1])))
