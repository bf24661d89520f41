r"""Explicit formats of the IFT matrix ``∂₁F`` (dense, and the QP's KKT block structure).

:func:`~kktbridge.implicit_solution` may be given the Jacobian ``∂₁F`` in closed form as a pytree of
arrays (``data``) plus a static :class:`MatrixFormat` that knows how to multiply and solve with it.
The default :class:`DenseFormat` is a plain matrix; :class:`QPKKTFormat` keeps a QP's KKT matrix
as its blocks and solves it by a Schur complement, so that, under ``vmap`` over instances that
share ``P``, ``A`` and ``G``, the expensive factorisations are shared by the whole batch.
"""

from __future__ import annotations

from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import jax.scipy as jsp

from kktbridge.core._linear_solve import _dense_solver, _robust_kernel
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
    L, LS, ok = _saddle_factor(Ps, C0, c, e)
    bx, bnu, blam = b[:n], b[n : n + p], b[n + p :]
    if not transpose:
        x, y = _saddle_solve(L, LS, C0, c, bx - G.T @ (f * (1 - d) * blam), jnp.concatenate([bnu, -d * blam]))
        z = jnp.concatenate([x, y[:p], d * y[p:] + (1 - d) * blam])
    else:
        x, y = _saddle_solve(L, LS, C0, c, bx, jnp.concatenate([bnu, d * blam]))
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
    if jnp.finfo(b.dtype).bits < 64:
        dz, ok2 = _qp_structured(data, b - _qp_matvec(data, z, transpose), transpose)
        z, ok = z + dz, ok & ok2
    return z, ok


def _make_qp_solver(transpose: bool) -> Callable:
    robust = _dense_solver(_robust_kernel, RCOND)

    def fallback(data, b):
        J = qp_kkt_dense(data)
        return robust(J.T if transpose else J, b)

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
