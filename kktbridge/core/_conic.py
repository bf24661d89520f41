r"""The conic residual map whose root is the primal-dual solution of a cone program.

Problem (SCS standard form) and its dual:

.. math::

   \min_x\ c^\top x \ \ \text{s.t.}\ \ Ax + s = b,\ s \in K
   \qquad\qquad
   \max_y\ -b^\top y \ \ \text{s.t.}\ \ A^\top y + c = 0,\ y \in K^*.

Optimality: ``Ax + s = b``, ``Aᵀy + c = 0``, ``s ∈ K``, ``y ∈ K*``, ``sᵀy = 0``. The three cone
conditions are encoded by one vector ``v = y - s``: by Moreau's decomposition for ``K*``
(``v = Π_{K*}(v) - Π_K(-v)`` with orthogonal parts), ``y ∈ K*, s ∈ K, y ⊥ s`` holds iff
``y = Π_{K*}(v)`` and ``s = Π_{K*}(v) - v``. Hence the *reduced residual*

.. math::

   F(x, v;\ A, b, c) = \begin{bmatrix} A^\top \Pi_{K^*}(v) + c \\ Ax + \Pi_{K^*}(v) - v - b \end{bmatrix}

vanishes exactly at primal-dual solutions, and ``x, y, s`` are differentiable functions of
``(A, b, c)`` by the implicit function theorem applied to ``F`` (``n + m`` equations in
``n + m`` unknowns).

Relation to diffcp (Agrawal et al., 2019, "Differentiating through a cone program"). diffcp uses
the homogeneous self-dual embedding: ``u = (x, y, τ)``, ``v_h = (0, s, κ)``, ``z = u - v_h``,
``Q = [[0, Aᵀ, c], [-A, 0, b], [-cᵀ, -bᵀ, 0]]`` and

.. math::  \mathcal N(z, Q) = \big((Q - I)\,\Pi(z) + z\big) / |w|, \qquad \Pi = \Pi_{\mathbb R^n \times K^* \times \mathbb R_+},

with ``w = τ - κ``. At a solution ``τ = 1, κ = 0`` so ``z = (x, v, 1)`` and ``Π(z) = (x, y, 1)``;
since ``Π(z) - z = (0, s, 0)``, ``𝒩 = (Aᵀy + c,\ b - Ax - s,\ -cᵀx - bᵀy)``: the first two blocks
are ``F`` (second block negated) and the third is the duality gap, which equals ``yᵀs`` given
the first two blocks and is therefore already zero by the Moreau construction. ``𝒩`` is
positively homogeneous of degree 0 in ``z``, so its Jacobian annihilates the ray direction ``z``
and diffcp resolves that with a least-squares solve; fixing ``τ = 1`` removes exactly that
direction, leaving the square system ``∂F`` whose solution gives the same derivatives of
``x, y, s`` (it is diffcp's system restricted to ``dw = 0``). :func:`hsde_residual` is provided
for checking this correspondence.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._cones import ConeSpec, cone_blocks, cone_projection, parse_cone, projection_jacobian_blocks

__all__ = [
    "ConicPoint",
    "LinearOperator",
    "DENSE",
    "conic_residual_map",
    "conic_check",
    "conic_jacobian",
    "conic_jacobian_pattern",
    "to_embedding",
    "from_embedding",
    "hsde_residual",
]


class ConicPoint(NamedTuple):
    """Unknowns of the reduced residual: primal ``x`` (n,) and ``v = y - s`` (m,)."""

    x: jax.Array
    v: jax.Array


class LinearOperator(NamedTuple):
    """How the residual applies the constraint matrix: its argument ``A`` is whatever the operator
    reads (a dense array, or the values of a sparse matrix whose pattern the functions close over).

    Attributes:
      matvec: ``(A, x) -> A x``.
      rmatvec: ``(A, y) -> Aᵀ y``.
      row_norms: ``A -> (‖A_i‖₂)_i`` for every row ``i``.
    """

    matvec: Callable[[Any, jax.Array], jax.Array]
    rmatvec: Callable[[Any, jax.Array], jax.Array]
    row_norms: Callable[[Any], jax.Array]


#: ``A`` is a dense ``(m, n)`` array.
DENSE = LinearOperator(lambda A, x: A @ x, lambda A, y: A.T @ y, lambda A: jnp.linalg.norm(A, axis=1))


def to_embedding(x: jax.Array, y: jax.Array, s: jax.Array) -> ConicPoint:
    """``(x, y, s) ↦ (x, v = y - s)`` (the ``τ = 1`` slice of diffcp's ``z = (x, y - s, τ - κ)``)."""
    return ConicPoint(jnp.asarray(x), jnp.asarray(y) - jnp.asarray(s))


def from_embedding(z: ConicPoint, cone: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x, v) ↦ (x, y, s)`` with ``y = Π_{K*}(v)`` and ``s = y - v`` (Moreau)."""
    proj_dual = cone_projection(cone, dual=True)
    y = proj_dual(z.v)
    return z.x, y, y - z.v


def conic_residual_map(cone: Any, operator: LinearOperator = DENSE) -> Callable[[ConicPoint, Any, jax.Array, jax.Array], ConicPoint]:
    """Return ``F(z, A, b, c)``, the reduced conic residual (see module docstring).

    The result is usable directly with :func:`~kktbridge.core._implicit.implicit_solution`::

        F = conic_residual_map(cone)
        z = implicit_solution(F, to_embedding(x, y, s), (A, b, c))
        x, y, s = from_embedding(z, cone)

    Args:
      cone: SCS cone dictionary (static) or :class:`~kktbridge.core._cones.ConeSpec`.
      operator: how ``A`` is applied (:data:`DENSE`, or a sparse matrix's matvec/rmatvec pair: the
        residual then costs ``O(nnz(A))`` plus the projection, and ``A`` is never densified).
    """
    spec: ConeSpec = parse_cone(cone)
    proj_dual = cone_projection(spec, dual=True)

    def residual(z: ConicPoint, A: Any, b: jax.Array, c: jax.Array) -> ConicPoint:
        y = proj_dual(z.v)
        return ConicPoint(operator.rmatvec(A, y) + c, operator.matvec(A, z.x) + (y - z.v) - b)

    return residual


def conic_check(cone: Any, operator: LinearOperator = DENSE) -> Callable[..., tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    """Relative residual and complementarity diagnostics of a conic point.

    Returns ``check(z, A, b, c) -> (residual, activity, margin, n_weak)``: the residual is
    ``max(‖Aᵀy + c‖∞ / (1 + ‖c‖∞), ‖Ax + s - b‖∞ / (1 + ‖b‖∞))`` with ``y = Π_{K*}(v)``,
    ``s = y - v``; the margin and weakly active count cover the nonnegative-orthant rows, with
    ``y_i`` and ``s_i`` scaled like :func:`kktbridge.core._kkt.kkt_activity` (``y_i‖a_i‖/‖c‖`` and
    ``s_i/(‖a_i‖(1 + ‖x‖∞))``). ``activity`` is an empty placeholder (the conic residual map needs
    none). ``operator`` as in :func:`conic_residual_map` (its ``row_norms`` give ``‖a_i‖``).
    """
    from kktbridge.core._kkt import activity_tol

    spec: ConeSpec = parse_cone(cone)
    F = conic_residual_map(spec, operator)
    lo, n_l = int(spec.z), int(spec.l)

    def check(z: ConicPoint, A: Any, b: jax.Array, c: jax.Array):
        r = F(z, A, b, c)
        dtype = z.x.dtype
        res = jnp.maximum(
            jnp.max(jnp.abs(r.x), initial=0.0) / (1.0 + jnp.max(jnp.abs(c), initial=0.0)),
            jnp.max(jnp.abs(r.v), initial=0.0) / (1.0 + jnp.max(jnp.abs(b), initial=0.0)),
        )
        empty = jnp.zeros((0,), dtype)
        if n_l == 0:
            return res, empty, jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32)
        _, y, s = from_embedding(z, spec)
        rows = slice(lo, lo + n_l)
        an = operator.row_norms(A)[rows]
        an_safe = jnp.where(an > 0, an, 1.0)
        cs = jnp.linalg.norm(c)
        y_hat = jnp.where(cs > 0, y[rows] * an / jnp.where(cs > 0, cs, 1.0), 0.0)
        s_hat = s[rows] / (an_safe * (1.0 + jnp.max(jnp.abs(z.x), initial=0.0)))
        tau = activity_tol(dtype)
        weak = (y_hat <= tau) & (s_hat <= tau)
        margin = jnp.min(jnp.maximum(y_hat, s_hat), initial=jnp.inf)
        return res, empty, margin, jnp.sum(weak).astype(jnp.int32)

    return check


def conic_jacobian(cone: Any) -> Callable[[ConicPoint, jax.Array, jax.Array, jax.Array], jax.Array]:
    r"""Return ``J(z, A, b, c)``: the Jacobian ``∂F/∂(x, v)`` of :func:`conic_residual_map` for a
    dense ``A``, assembled in closed form,

    .. math::  J = \begin{bmatrix} 0 & A^\top D\Pi \\ A & D\Pi - I \end{bmatrix},
       \qquad D\Pi = \frac{\partial \Pi_{K^*}}{\partial v}(v)\ \text{block diagonal by cone,}

    as an ``(n + m, n + m)`` matrix in the flat order of :class:`ConicPoint` (unknowns and residual
    alike). ``DΠ`` comes block by block (:func:`~kktbridge.core._cones.projection_jacobian_blocks`)
    and ``AᵀDΠ`` block column by block column, ``O(n Σ size²)``: materialising ``J`` by ``n + m``
    JVPs of ``F`` costs ``O((n + m) m n)``, as much as its LU factorisation at ``n + m`` of a few
    hundred. Equal to ``jax.jacfwd`` of the residual (tested).
    """
    spec: ConeSpec = parse_cone(cone)
    m = spec.dim
    dproj = projection_jacobian_blocks(spec, dual=True)

    def jacobian(z: ConicPoint, A: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
        n = A.shape[1]
        runs = dproj(z.v)
        dtype = jnp.result_type(A, z.v)
        AtD = [
            jnp.einsum("ksn,kst->nkt", A[r.start : r.start + r.size * r.count].reshape(r.count, r.size, n), r.blocks).reshape(n, -1)
            for r in runs
        ]
        D_minus_I = jnp.zeros((m, m), dtype)
        for r in runs:  # row and column of each block entry are static: one scatter per run
            k, a, e = np.meshgrid(np.arange(r.count), np.arange(r.size), np.arange(r.size), indexing="ij")
            D_minus_I = D_minus_I.at[r.start + k * r.size + a, r.start + k * r.size + e].set(r.blocks.astype(dtype))
        D_minus_I = D_minus_I - jnp.eye(m, dtype=dtype)
        top = jnp.concatenate([jnp.zeros((n, n), dtype)] + [a.astype(dtype) for a in AtD], axis=1)
        return jnp.concatenate([top, jnp.concatenate([A.astype(dtype), D_minus_I], axis=1)], axis=0)

    return jacobian


def conic_jacobian_pattern(cone: Any, rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Sparsity pattern of ``∂F/∂(x, v)`` for a sparse ``A`` with pattern ``(rows, cols)``.

    In the flat order ``(x, v)`` of :class:`ConicPoint` (unknowns and residual alike),

    .. math::  \frac{\partial F}{\partial (x, v)} = \begin{bmatrix} 0 & A^\top D\Pi \\ A & D\Pi - I \end{bmatrix},
       \qquad D\Pi = \frac{\partial \Pi_{K^*}}{\partial v}\ \text{block diagonal by cone.}

    ``DΠ`` is diagonal on the zero and orthant rows (each row its own block) and dense within a
    second-order, PSD, exponential or power block, so ``(AᵀDΠ)_{j, i'}`` can be nonzero exactly
    when some row ``i`` of ``i'``'s block has ``A_{ij} ≠ 0``. The pattern holds every entry that
    can be nonzero for *any* values (a superset for the values at hand, as a sparse LU needs);
    the diagonal is included. Duplicates may occur. ``O(nnz(A) · block size)`` entries.

    Args:
      cone: SCS cone dictionary or :class:`~kktbridge.core._cones.ConeSpec` (``m`` rows).
      rows, cols: coordinates of ``A``'s entries (``A`` is ``m × n``).
      n: number of columns of ``A``.

    Returns:
      ``(rows, cols)`` of the ``(n + m) × (n + m)`` Jacobian, int64.
    """
    spec: ConeSpec = parse_cone(cone)
    m = spec.dim
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    # Block of every row of s: start and size (zero/orthant rows: blocks of one).
    start, size = np.arange(m, dtype=np.int64), np.ones(m, np.int64)
    i = 0
    for c, k, _ in cone_blocks(spec):
        if c.key not in ("z", "l"):
            start[i : i + k], size[i : i + k] = i, k
        i += k
    # AᵀDΠ: one (column j, block) pair per entry, expanded to every row of the block.
    pairs = np.unique(np.stack([cols, start[rows]], axis=1), axis=0) if rows.size else np.zeros((0, 2), np.int64)
    reps = size[pairs[:, 1]]  # pairs[:, 1] is a block's first row; size is its length
    j = np.repeat(pairs[:, 0], reps)
    offset = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    top_r, top_c = j, n + np.repeat(pairs[:, 1], reps) + offset
    # DΠ - I: the blocks themselves (their diagonal included).
    blk = np.nonzero(size > 1)[0]
    blk_r = np.repeat(blk, size[blk])
    blk_c = np.repeat(start[blk], size[blk]) + (np.arange(size[blk].sum()) - np.repeat(np.cumsum(size[blk]) - size[blk], size[blk]))
    diag = np.arange(n + m, dtype=np.int64)
    out_r = np.concatenate([top_r, n + rows, n + blk_r, diag])
    out_c = np.concatenate([top_c, cols, n + blk_c, diag])
    return out_r, out_c


def hsde_residual(cone: Any) -> Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]:
    """diffcp's normalised residual ``𝒩(z, Q) = ((Q - I)Π(z) + z)/|w|`` of the self-dual embedding.

    ``z = (x, v, w)`` is a flat vector of length ``n + m + 1``. Provided for reference and tests:
    the bridges differentiate the reduced residual of :func:`conic_residual_map` instead.
    """
    spec: ConeSpec = parse_cone(cone)
    proj_dual = cone_projection(spec, dual=True)

    def residual(z: jax.Array, A: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
        m, n = A.shape
        x, v, w = z[:n], z[n : n + m], z[n + m]
        u = jnp.concatenate([x, proj_dual(v), jnp.maximum(w, 0.0)[None]])
        Q = jnp.block(
            [
                [jnp.zeros((n, n), A.dtype), A.T, c[:, None]],
                [-A, jnp.zeros((m, m), A.dtype), b[:, None]],
                [-c[None, :], -b[None, :], jnp.zeros((1, 1), A.dtype)],
            ]
        )
        return (Q @ u - u + z) / jnp.abs(w)

    return residual
