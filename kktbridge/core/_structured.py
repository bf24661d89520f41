r"""Explicit formats of the IFT matrix ``∂₁F`` (dense, and the QP's KKT block structure).

:func:`~kktbridge.implicit_solution` may be given the Jacobian ``∂₁F`` in closed form as a pytree of
arrays (``data``) plus a static :class:`MatrixFormat` that knows how to multiply and solve with it.
The default :class:`DenseFormat` is a plain matrix; :class:`QPKKTFormat` keeps a QP's KKT matrix
as its blocks and solves it by a Schur complement, so that, under ``vmap`` over instances that
share ``P``, ``A`` and ``G``, the expensive factorisations are shared by the whole batch. Large
systems on a CPU backend are solved on the host (:func:`_host_saddle`, through
:func:`jax.pure_callback`): there the Schur complement shrinks to the active rows and ``chol(P)``
is reused across calls. Either way the solve sits inside :func:`jax.lax.custom_linear_solve`,
which never differentiates it, so higher derivatives are unaffected.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np

from kktbridge.core._linear_solve import _dense_solver, _robust_inline, _robust_kernel, rare_dense
from kktbridge.core._types import PyTree

__all__ = ["MatrixFormat", "DenseFormat", "QPKKTFormat", "DENSE"]

#: Relative pivot threshold below which a factorisation is treated as singular (as solve_auto).
RCOND = 1e-10


class MatrixFormat(Protocol):
    """How an explicitly given IFT matrix (a pytree ``data``) acts on flat vectors.

    Arguments are positional (implementations name them as they like: ``J`` for a dense matrix).
    """

    def matvec(self, data: PyTree, v: jax.Array, /) -> jax.Array: ...

    def solve(self, data: PyTree, b: jax.Array, /) -> jax.Array: ...

    def transpose_solve(self, data: PyTree, b: jax.Array, /) -> jax.Array: ...

    def dense(self, data: PyTree, /) -> jax.Array: ...


class DenseFormat:
    """``data`` is the dense matrix; solves by robust LU (SVD minimum norm when singular)."""

    def __init__(self, rcond: float = RCOND):
        self._solve = _dense_solver(_robust_kernel, rcond)

    def matvec(self, J, v):
        return J @ v

    def solve(self, J, b):
        return self._solve(J, b)

    def transpose_solve(self, J, b):
        return self._solve(J.T, b)

    def dense(self, J):
        return J


DENSE = DenseFormat()


def _qp_blocks(data):
    """``(P_s, A, G, d, f, p, m)``: ``f`` marks the rows of ``G`` with a finite ``h`` (all when absent).

    ``G`` itself stays unmasked (``G_f = diag(f) G`` is applied as a vector mask) so that a batch
    sharing ``G`` but not ``h`` still shares every factorisation that involves ``G``.
    """
    Ps, A, G, d = data[:4]
    f = data[4] if len(data) > 4 else jnp.ones(G.shape[:1], G.dtype)
    return Ps, A, G, d, f, A.shape[0], G.shape[0]


def qp_kkt_dense(data) -> jax.Array:
    r"""The QP's KKT matrix ``∂_z F`` (flat order ``x, ν, λ``) from its blocks:

    .. math:: \begin{pmatrix} P_s & A^\top & G_f^\top \\ A & 0 & 0 \\ -D G_f & 0 & I - D \end{pmatrix}

    with ``D = diag(d)`` the active rows and ``G_f = diag(f) G`` the rows with a finite ``h``
    (others zero; ``data = (P_s, A, G, d[, f])``).
    """
    Ps, A, G, d, f, p, m = _qp_blocks(data)
    Gf = f[:, None] * G
    dt = Ps.dtype
    z = lambda r, c: jnp.zeros((r, c), dt)  # noqa: E731
    return jnp.block([[Ps, A.T, Gf.T], [A, z(p, p), z(p, m)], [-d[:, None] * Gf, z(m, p), jnp.diag(1 - d)]])


def _chol_ok(L: jax.Array) -> jax.Array:
    # A failed factorisation is all NaN, so the diagonal tells (a full isfinite pass over L costs
    # as much as a triangular solve at n = 500).
    piv = jnp.abs(jnp.diagonal(L)) ** 2
    return jnp.all(jnp.isfinite(piv)) & (jnp.min(piv, initial=jnp.inf) > RCOND * jnp.max(piv, initial=0.0))


def _saddle_factor(Ps, C0, c, e):
    """Cholesky factors of ``P_s`` and of the Schur complement ``S = C P_s⁻¹ Cᵀ + diag(e)``.

    ``C = diag(c) C0``: the row mask ``c`` (the active set) is applied to the *shared* Gram matrix
    ``C0 P_s⁻¹ C0ᵀ`` rather than to ``C0``, so that everything but the small ``chol(S)`` depends only
    on ``P, A, G`` -- computed once by ``vmap`` when the batch shares them.
    """
    # Both matrices are symmetric by construction: no (S + Sᵀ)/2 pass (jnp.linalg.cholesky's), which
    # XLA:CPU runs as a layout-changing fusion as slow as the batch of factorisations itself.
    L = jax.lax.linalg.cholesky(Ps, symmetrize_input=False)
    W0 = jsp.linalg.solve_triangular(L, C0.T, lower=True)  # L⁻¹ C0ᵀ
    S = (c[:, None] * c[None, :]) * (W0.T @ W0) + jnp.diag(e)
    LS = jax.lax.linalg.cholesky(S, symmetrize_input=False)
    return L, LS, _chol_ok(L) & _chol_ok(LS)


def _saddle_solve(L, LS, C0, c, bx, by):
    """Solve ``[[P_s, Cᵀ], [C, -diag(e)]] [x; y] = [bx; by]``, ``C = diag(c) C0``, with the factors
    of :func:`_saddle_factor`. ``C`` is never formed: per instance only ``c`` differs, and a batch of
    masked copies of ``C0`` would cost more memory traffic than the solve itself."""
    # Right-hand sides as (k, 1) columns: XLA's CPU triangular solve is far slower on vectors.
    bx, by = bx[:, None], by[:, None]
    Pinv_bx = jsp.linalg.cho_solve((L, True), bx)
    y = jsp.linalg.cho_solve((LS, True), c[:, None] * (C0 @ Pinv_bx) - by)
    x = jsp.linalg.cho_solve((L, True), bx - C0.T @ (c[:, None] * y))
    return x[:, 0], y[:, 0]


# ----------------------------------------------------------------------------- host (CPU) path

#: Smallest ``n + p + m`` for which, on a CPU backend, the Schur-complement solve runs on the host
#: (:func:`_host_saddle`) instead of in XLA. On the host SciPy's LAPACK factors only the *active*
#: rows' Schur complement (a size XLA's static shapes cannot follow) and a layer's shared
#: ``chol(P)`` is cached across calls; per system it pays ~30 µs of Python. Measured on a 2-core
#: CPU (backward of a vmap-ed layer / jacrev of one instance): at 160 unknowns XLA wins (1.4 vs
#: 2.0 ms, batch of 32), at 240 it depends (2.1 vs 2.8 ms batched, 16 vs 9 ms jacrev), from 320 on
#: the host does (6.3 vs 2.7 ms at 320, 22 vs 6 ms at 750). Tests lower it to run both paths.
HOST_MIN_SIZE = 300


def _use_host(size: int) -> bool:
    """Whether a KKT system of ``size = n + p + m`` unknowns is solved on the host."""
    return size >= HOST_MIN_SIZE and jax.default_backend() == "cpu"


@functools.cache
def _lapack() -> tuple[Callable, Callable, Callable, Callable]:
    """SciPy's double-precision ``potrf``, ``potrs``, ``trtrs`` and ``gemm``, called directly (no
    input checks). Products go through SciPy's BLAS too, not NumPy's ``@``: NumPy's wheel bundles a
    second OpenBLAS, and some thin products through it took 2-8 ms instead of 0.1 (measured)."""
    from scipy.linalg import get_blas_funcs, get_lapack_funcs

    potrf, potrs, trtrs = get_lapack_funcs(("potrf", "potrs", "trtrs"), dtype=np.float64)
    (gemm,) = get_blas_funcs(("gemm",), dtype=np.float64)
    return potrf, potrs, trtrs, gemm


def _host_chol(S: np.ndarray):
    """Lower Cholesky factor of ``S`` and whether it passes :func:`_chol_ok`'s pivot test."""
    L, info = _lapack()[0](S, lower=1, clean=1)
    piv = np.diagonal(L) ** 2
    # NaN pivots fail both comparisons.
    return L, info == 0 and bool(piv.min() > RCOND * piv.max()) if piv.size else info == 0


class _FactorCache:
    """The shared part of :func:`_host_saddle` -- ``chol(P_s)``, ``W = L⁻¹C0ᵀ``, ``WᵀW`` -- for the
    last few ``(P_s, C0)``, keyed by their exact contents: a layer called again with the same
    ``P``, ``A``, ``G`` (a training loop; new ``q``, ``h``, ``b`` only) skips the ``O(n³)`` work.
    Bounded (:attr:`SIZE` entries, each at most :attr:`MAX_BYTES`); :func:`kktbridge.clear_caches`
    empties it."""

    SIZE = 4
    MAX_BYTES = 256 << 20

    def __init__(self) -> None:
        self._entries: list[tuple[np.ndarray, np.ndarray, tuple]] = []
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _find(self, Ps: np.ndarray, C0: np.ndarray) -> Optional[int]:
        """Index of the entry for exactly these matrices (caller holds the lock)."""
        for i, (P1, C1, _) in enumerate(self._entries):
            # array_equal is False on a shape mismatch and on NaN: such keys never match.
            if np.array_equal(P1, Ps) and np.array_equal(C1, C0):
                return i
        return None

    def get(self, Ps: np.ndarray, C0: np.ndarray) -> tuple:
        with self._lock:
            i = self._find(Ps, C0)
            if i is not None:
                self._entries.insert(0, self._entries.pop(i))
                return self._entries[0][2]
        value = self._factor(Ps, C0)
        n, k = C0.shape[1], C0.shape[0]
        if value[-1] and 8 * (2 * n * n + 2 * n * k + k * k) <= self.MAX_BYTES:
            with self._lock:
                # Another thread may have factored the same matrices meanwhile: keep one copy.
                if self._find(Ps, C0) is None:
                    self._entries.insert(0, (Ps.copy(), C0.copy(), value))
                    del self._entries[self.SIZE :]
        return value

    @staticmethod
    def _factor(Ps: np.ndarray, C0: np.ndarray) -> tuple:
        L, good = _host_chol(Ps)
        if not good:
            return L, None, None, False
        _, _, trtrs, gemm = _lapack()
        W = trtrs(L, C0.T, lower=1)[0]  # L⁻¹ C0ᵀ, (n, k)
        return L, W, gemm(1.0, W, W, trans_a=1), True


_FACTORS = _FactorCache()


def clear_factor_cache() -> None:
    """Forget the host QP backward's cached factorisations (:class:`_FactorCache`)."""
    _FACTORS.clear()


def _host_saddle(Ps, C0, c, e, bx, by):
    """NumPy kernel of :func:`_saddle`: every operand carries the same number of leading batch axes
    (``vmap_method="expand_dims"``), each of size 1 where that operand is not batched.

    Per batch slot of ``(P_s, C0)`` (usually one: a layer's batch shares them): ``L = chol(P_s)``,
    ``W = L⁻¹C0ᵀ`` and ``WᵀW`` (from :class:`_FactorCache` when the values were seen before), and
    ``C0 P_s⁻¹ bx`` for all right-hand sides in one product. Per batch slot of the masks
    ``(c, e)``: the Cholesky factor of the Schur complement on the rows with ``c = 1`` only -- rows
    with ``c = 0`` decouple, ``y_i = -by_i`` -- which solves every right-hand side that shares the
    slot (all tangents of a ``jacfwd``). Masks must be the QP's (``c, e ∈ {0, 1}``, ``e = 0`` where
    ``c = 1``); others get ``ok = False``.
    """
    _, potrs, trtrs, gemm = _lapack()

    out_dtype = bx.dtype
    Ps, C0, c, e, bx, by = (np.asarray(t, dtype=np.float64) for t in (Ps, C0, c, e, bx, by))
    n, k = Ps.shape[-1], C0.shape[-2]
    lead = np.broadcast_shapes(Ps.shape[:-2], C0.shape[:-2], c.shape[:-1], e.shape[:-1], bx.shape[:-1], by.shape[:-1])
    R = int(np.prod(lead, dtype=np.int64))

    def flat(t, tail):  # (count, *tail) and, per right-hand side, the index into it
        count = int(np.prod(t.shape[: t.ndim - len(tail)], dtype=np.int64))
        ids = np.broadcast_to(np.arange(count).reshape(t.shape[: t.ndim - len(tail)]), lead).reshape(R)
        return t.reshape((count,) + tail), ids

    (Ps_f, P_id), (C0_f, C_id) = flat(Ps, (n, n)), flat(C0, (k, n))
    (c_f, c_id), (e_f, e_id) = flat(c, (k,)), flat(e, (k,))
    BX = np.broadcast_to(bx, lead + (n,)).reshape(R, n)
    BY = np.broadcast_to(by, lead + (k,)).reshape(R, k)
    X, Y, ok = np.full((R, n), np.nan), np.full((R, k), np.nan), np.zeros(R, bool)
    mat = P_id * C0_f.shape[0] + C_id
    for mid in np.unique(mat):
        rows = np.flatnonzero(mat == mid)
        C1 = C0_f[C_id[rows[0]]]
        L, W, gram, good = _FACTORS.get(Ps_f[P_id[rows[0]]], C1)
        if not good:
            continue
        cr, er, byr = c_f[c_id[rows]], e_f[e_id[rows]], BY[rows]
        T = gemm(1.0, trtrs(L, BX[rows].T, lower=1)[0], W, trans_a=1)  # (C0 P⁻¹ bx)ᵀ per row, (r, k)
        # The QP's masks: c, e in {0, 1}, e = 0 where c = 1. Rows with c = 0 then decouple exactly
        # (y_i = -by_i where e_i = 1; e_i = 0 too is a zero row: singular). Anything else is left
        # to the caller's dense robust solve (ok = False), as a failed factor is.
        plain = ((cr == 0) & ((er == 0) | (er == 1))) | ((cr == 1) & (er == 0))
        okr = np.all(plain, axis=1) & ~np.any((cr == 0) & (er == 0), axis=1)
        Yr = np.where(cr != 0, 0.0, -byr)
        masks = c_id[rows] * e_f.shape[0] + e_id[rows]
        order = np.argsort(masks, kind="stable")
        starts = np.flatnonzero(np.diff(masks[order], prepend=-1))
        for sel in np.split(order, starts[1:]):
            i0 = sel[0]
            a = np.flatnonzero(cr[i0])
            if not (okr[i0] and a.size):
                continue
            LS, good = _host_chol(gram[a[:, None], a])
            if not good:
                okr[sel] = False
                continue
            rhs = T[sel[:, None], a] - byr[sel[:, None], a]
            Yr[sel[:, None], a] = potrs(LS, rhs.T, lower=1)[0].T
        Yr[~okr] = 0.0
        X[rows] = potrs(L, (BX[rows] - gemm(1.0, cr * Yr, C1)).T, lower=1)[0].T
        Y[rows] = Yr
        ok[rows] = okr
    X[~ok], Y[~ok] = np.nan, np.nan
    return X.reshape(lead + (n,)).astype(out_dtype), Y.reshape(lead + (k,)).astype(out_dtype), ok.reshape(lead)


def _saddle(Ps, C0, c, e, bx, by):
    """``(x, y, ok)`` solving ``[[P_s, Cᵀ], [C, -diag(e)]] [x; y] = [bx; by]`` with ``C = diag(c) C0``:
    in XLA (:func:`_saddle_factor`, :func:`_saddle_solve`), or on the host for large systems on a
    CPU backend (:data:`HOST_MIN_SIZE`)."""
    n, k = Ps.shape[0], C0.shape[0]
    if not _use_host(n + k):
        L, LS, ok = _saddle_factor(Ps, C0, c, e)
        x, y = _saddle_solve(L, LS, C0, c, bx, by)
        return x, y, ok
    dt = bx.dtype
    shapes = (jax.ShapeDtypeStruct((n,), dt), jax.ShapeDtypeStruct((k,), dt), jax.ShapeDtypeStruct((), jnp.bool_))
    return jax.pure_callback(_host_saddle, shapes, Ps, C0, c, e, bx, by, vmap_method="expand_dims")


def _qp_structured(data, b, transpose: bool):
    """Schur-complement solve of ``J z = b`` (or ``Jᵀ z = b``) and whether it is trustworthy.

    Eliminating the inactive rows (``dλ_i = b_λi``) leaves the symmetric saddle system
    ``[[P_s, Cᵀ], [C, 0]]`` with ``C = [A; G_active]`` (inactive rows of ``C`` zeroed and given a
    unit diagonal instead), solved through ``chol(P_s)`` and ``chol(C P_s⁻¹ Cᵀ)``. Both factors
    depend only on ``P``, ``A``, ``G`` and the active set, so under ``vmap`` over right-hand sides
    (``jacfwd``/``jacrev``) or over instances with shared matrices JAX computes what it can once.
    Not trustworthy (``ok = False``) when ``P_s`` is not positive definite or the active
    constraints are (nearly) dependent: the caller then uses the dense robust solve.
    """
    Ps, A, G, d, f, p, m = _qp_blocks(data)
    n = Ps.shape[0]
    # C = diag(c) [A; G] = diag([1; d]) [A; G_f]: the finite-row mask folds into the row mask.
    # (An "active" absent row keeps S_ii = 0, so the factor is refused, as for the dense matrix.)
    C0 = jnp.concatenate([A, G])
    c = jnp.concatenate([jnp.ones((p,), Ps.dtype), d * f])
    e = jnp.concatenate([jnp.zeros((p,), Ps.dtype), 1 - d])
    bx, bnu, blam = b[:n], b[n : n + p], b[n + p :]
    if not transpose:
        x, y, ok = _saddle(Ps, C0, c, e, bx - G.T @ (f * (1 - d) * blam), jnp.concatenate([bnu, -d * blam]))
        z = jnp.concatenate([x, y[:p], d * y[p:] + (1 - d) * blam])
    else:
        x, y, ok = _saddle(Ps, C0, c, e, bx, jnp.concatenate([bnu, d * blam]))
        z = jnp.concatenate([x, y[:p], -d * y[p:] + (1 - d) * (blam - f * (G @ x))])
    return z, ok & jnp.all(jnp.isfinite(z))


def _qp_matvec(data, v, transpose: bool) -> jax.Array:
    """``J v`` (or ``Jᵀ v``) from the blocks, never forming ``J``."""
    Ps, A, G, d, f, p, m = _qp_blocks(data)
    n = Ps.shape[0]
    x, nu, lam = v[:n], v[n : n + p], v[n + p :]
    if transpose:
        return jnp.concatenate([Ps @ x + A.T @ nu - G.T @ (f * d * lam), A @ x, f * (G @ x) + (1 - d) * lam])
    return jnp.concatenate([Ps @ x + A.T @ nu + G.T @ (f * lam), A @ x, -d * f * (G @ x) + (1 - d) * lam])


def _qp_refined(data, b, transpose: bool):
    """:func:`_qp_structured`, plus one step of iterative refinement in single precision (where the
    Schur complement loses digits; as the dense solver's LU does)."""
    z, ok = _qp_structured(data, b, transpose)
    if jnp.finfo(b.dtype).bits < 64 and not _use_host(b.shape[-1]):  # the host computes in float64
        dz, ok2 = _qp_structured(data, b - _qp_matvec(data, z, transpose), transpose)
        z, ok = z + dz, ok & ok2
    return z, ok


def _make_qp_solver(transpose: bool) -> Callable:
    robust = _dense_solver(_robust_kernel, RCOND)

    def fallback(data, b):
        J = qp_kkt_dense(data)
        J = J.T if transpose else J
        if jax.default_backend() == "cpu":  # the whole dense solve on the host (see rare_dense)
            return rare_dense(_robust_inline, J, b[:, None], RCOND)[:, 0]
        return robust(J, b)

    @jax.custom_batching.custom_vmap
    def solve(data, b):
        z, ok = _qp_refined(data, b, transpose)
        return jax.lax.cond(ok, lambda: z, lambda: fallback(data, b))

    @solve.def_vmap
    def solve_vmap(axis_size, in_batched, data, b):
        data_b, b_b = in_batched
        axes = (jax.tree_util.tree_map(lambda t: 0 if t else None, data_b), 0 if b_b else None)
        z, ok = jax.vmap(lambda dd, bb: _qp_refined(dd, bb, transpose), in_axes=axes)(data, b)
        # The dense robust solve only when some member needs it (a vmap-ed cond would run it always).
        z = jax.lax.cond(
            jnp.all(ok),
            lambda: z,
            lambda: jnp.where(ok[:, None], z, jax.vmap(fallback, in_axes=axes)(data, b)),
        )
        return z, True

    return solve


class QPKKTFormat:
    """A QP's KKT matrix as blocks ``(P_s, A, G, d[, f])``; see :func:`qp_kkt_dense` and :func:`_qp_structured`."""

    def __init__(self) -> None:
        self._solve = _make_qp_solver(False)
        self._tsolve = _make_qp_solver(True)

    def matvec(self, data, v):
        return _qp_matvec(data, v, transpose=False)

    def solve(self, data, b):
        return self._solve(data, b)

    def transpose_solve(self, data, b):
        return self._tsolve(data, b)

    def dense(self, data):
        return qp_kkt_dense(data)


QP_KKT = QPKKTFormat()
