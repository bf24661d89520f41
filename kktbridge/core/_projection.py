r"""Euclidean and KL projections onto convex sets, differentiable in the point and the set.

Every projection has the JAXopt-style signature ``projection_xxx(x, hyperparams=None)`` and computes

.. math::  \mathrm{proj}_{C(\theta)}(x) = \operatorname*{argmin}_{z \in C(\theta)} \tfrac12 \|z - x\|_2^2

(Euclidean) or, for the ``*_kl`` / transport variants,

.. math::  \mathrm{proj}^{KL}_{C(\theta)}(x)
           = \operatorname*{argmin}_{z \in C(\theta)} \langle z, \log z - 1 - x \rangle,

where ``θ = hyperparams``. Closed forms are left to autodiff (paper, App. B.1); projections that
need an iterative algorithm (box sections, transportation polytopes) run it on ``stop_gradient``-ed
inputs and are differentiated with the implicit function theorem
(:func:`kktbridge.core._implicit.implicit_solution`); isotonic regression (PAV) carries its exact
block-averaging Jacobian in a :func:`jax.custom_jvp`.

Conventions. Projections onto sets of vectors (simplex, balls, affine sets, ...) treat ``x`` as one
vector: a matrix is flattened and projected as a whole. To project each row of a matrix, ``vmap``
over rows, e.g. ``jax.vmap(projection_simplex)(X)``. Hyperparameters are validated (``ValueError``)
when their values are concrete; under ``jit``/``vmap``/``grad`` tracing the checks are skipped.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._checks import check_nonnegative, is_concrete
from kktbridge.core._implicit import implicit_solution

PyTree = Any

__all__ = [
    "projection_non_negative",
    "projection_box",
    "projection_simplex",
    "projection_l1_ball",
    "projection_l2_ball",
    "projection_linf_ball",
    "projection_affine_set",
    "projection_hyperplane",
    "projection_halfspace",
    "projection_box_section",
    "isotonic_regression",
    "projection_order_simplex",
    "projection_transport",
    "projection_birkhoff",
    "projection_simplex_kl",
    "projection_non_negative_kl",
]


def _check_pair(name: str, hyperparams: Any, what: str) -> tuple:
    if not isinstance(hyperparams, (tuple, list)) or len(hyperparams) != 2:
        raise ValueError(f"hyperparams: expected a pair {what} for {name}, got {type(hyperparams).__name__}")
    return tuple(hyperparams)


def _float(x: Any) -> jax.Array:
    """As a floating-point array (integers promoted to the default float type)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float))


# --------------------------------------------------------------------------------------------
# Orthant, box, balls
# --------------------------------------------------------------------------------------------


def projection_non_negative(x: PyTree, hyperparams: Any = None) -> PyTree:
    r"""Projection onto the non-negative orthant: :math:`\max(x, 0)` elementwise (ReLU).

    Args:
      x: array or pytree of arrays.
      hyperparams: ignored (JAXopt compatibility).
    """
    del hyperparams
    return jax.tree_util.tree_map(lambda leaf: jnp.maximum(leaf, 0), x)


def projection_box(x: PyTree, hyperparams: tuple) -> PyTree:
    r"""Projection onto the box :math:`\{z : l \le z \le u\}`: :math:`\mathrm{clip}(x, l, u)`.

    Args:
      x: array or pytree of arrays.
      hyperparams: ``(lower, upper)``; each a scalar, an array broadcastable to ``x``, or a pytree
        with the structure of ``x``. Requires ``lower <= upper``.
    """
    if hyperparams is None:
        raise ValueError("hyperparams: projection_box needs (lower, upper), got None")
    lower, upper = _check_pair("projection_box", hyperparams, "(lower, upper)")
    if is_concrete(lower, upper):
        for lo, up in zip(jax.tree_util.tree_leaves(lower), jax.tree_util.tree_leaves(upper)):
            if np.any(np.asarray(lo) > np.asarray(up)):
                raise ValueError("hyperparams: projection_box expects lower <= upper elementwise")
    clip = lambda leaf, lo, up: jnp.minimum(jnp.maximum(leaf, lo), up)
    x_def = jax.tree_util.tree_structure(x)
    if jax.tree_util.tree_structure(lower) == x_def and jax.tree_util.tree_structure(upper) == x_def:
        return jax.tree_util.tree_map(clip, x, lower, upper)
    return jax.tree_util.tree_map(lambda leaf: clip(leaf, lower, upper), x)


def _simplex_flat(v: jax.Array, value: jax.Array) -> jax.Array:
    """Sort-based exact projection of a vector onto ``{z >= 0, sum z = value}`` (Held et al.)."""
    d = v.shape[0]
    u = jnp.sort(v)[::-1]
    cssv = jnp.cumsum(u) - value
    ind = jnp.arange(1, d + 1, dtype=v.dtype)
    # The support is a prefix of the sorted vector: k = #{j : u_j > (sum_{i<=j} u_i - value) / j}.
    k = jnp.maximum(jnp.sum(u * ind > cssv), 1)  # k >= 1 also covers value == 0
    tau = cssv[k - 1] / k.astype(v.dtype)
    return jnp.maximum(v - tau, 0)


def projection_simplex(x: jax.Array, value: Any = 1.0) -> jax.Array:
    r"""Projection onto the (scaled) probability simplex :math:`\{z \ge 0 : \sum_i z_i = s\}`.

    Exact sort-based algorithm, :math:`O(d \log d)`: with :math:`u` the values of ``x`` sorted in
    decreasing order and :math:`k = \max\{j : u_j > (\sum_{i \le j} u_i - s)/j\}`,

    .. math::  \mathrm{proj}(x) = \max(x - \tau, 0), \qquad \tau = \frac{\sum_{i \le k} u_i - s}{k}.

    The Jacobian (obtained by autodiff) is :math:`\mathrm{diag}(\sigma) - \sigma\sigma^\top/\|\sigma\|_1`
    with :math:`\sigma` the support indicator, and :math:`\partial/\partial s = \sigma/\|\sigma\|_1`.

    Args:
      x: array; projected as *one* flattened vector (the whole array sums to ``value``). For a
        row-wise projection of a matrix use ``jax.vmap(projection_simplex)(X)``.
      value: the sum ``s >= 0`` (scalar; JAXopt calls it ``hyperparams``).
    """
    if value is None:
        value = 1.0
    check_nonnegative("value", value)
    x = _float(x)
    value = jnp.asarray(value, dtype=x.dtype)
    if value.ndim != 0:
        raise ValueError(f"value: expected a scalar, got shape {value.shape}")
    return _simplex_flat(x.ravel(), value).reshape(x.shape)


def projection_l1_ball(x: jax.Array, radius: Any = 1.0) -> jax.Array:
    r"""Projection onto the :math:`\ell_1` ball :math:`\{z : \|z\|_1 \le r\}`.

    :math:`x` itself if :math:`\|x\|_1 \le r`, else
    :math:`\mathrm{sign}(x) \odot \mathrm{proj}_{\Delta_r}(|x|)` (Duchi et al., 2008).

    Args:
      x: array, projected as one flattened vector.
      radius: ``r >= 0`` (scalar).
    """
    if radius is None:
        radius = 1.0
    check_nonnegative("radius", radius)
    x = _float(x)
    radius = jnp.asarray(radius, dtype=x.dtype)
    outside = jnp.sign(x) * projection_simplex(jnp.abs(x), radius)
    return jnp.where(jnp.sum(jnp.abs(x)) <= radius, x, outside)


def projection_l2_ball(x: jax.Array, radius: Any = 1.0) -> jax.Array:
    r"""Projection onto the :math:`\ell_2` ball: :math:`x \cdot \min(1, r / \|x\|_2)`.

    Args:
      x: array, projected as one flattened vector.
      radius: ``r >= 0`` (scalar).
    """
    if radius is None:
        radius = 1.0
    check_nonnegative("radius", radius)
    x = _float(x)
    radius = jnp.asarray(radius, dtype=x.dtype)
    sq = jnp.sum(x * x)
    inside = sq <= radius**2
    # Guard the norm so that x = 0 (always inside) gives a finite gradient.
    norm = jnp.sqrt(jnp.where(inside, 1.0, sq))
    return x * jnp.where(inside, 1.0, radius / norm)


def projection_linf_ball(x: PyTree, radius: Any = 1.0) -> PyTree:
    r"""Projection onto the :math:`\ell_\infty` ball: :math:`\mathrm{clip}(x, -r, r)`.

    Args:
      x: array or pytree of arrays.
      radius: ``r >= 0`` (scalar or array broadcastable to ``x``).
    """
    if radius is None:
        radius = 1.0
    check_nonnegative("radius", radius)
    return jax.tree_util.tree_map(lambda leaf: jnp.minimum(jnp.maximum(leaf, -radius), radius), x)


# --------------------------------------------------------------------------------------------
# Affine sets, hyperplanes, half spaces
# --------------------------------------------------------------------------------------------


def projection_affine_set(x: jax.Array, hyperparams: tuple) -> jax.Array:
    r"""Projection onto the affine set :math:`\{z : A z = b\}`.

    .. math::  \mathrm{proj}(x) = x - A^+ (A x - b),

    with :math:`A^+` the Moore-Penrose pseudo-inverse, so rank-deficient ``A`` (redundant rows)
    works as long as the system is consistent (for an inconsistent one this projects onto
    :math:`\{z : A^\top A z = A^\top b\}`, the least-squares solutions). Derivatives with respect
    to ``A`` are those of ``pinv`` and assume its rank is locally constant (true for full-rank ``A``).

    Args:
      x: vector of shape ``(d,)``.
      hyperparams: ``(A, b)`` with ``A`` of shape ``(p, d)`` and ``b`` of shape ``(p,)``.
    """
    A, b = _check_pair("projection_affine_set", hyperparams, "(A, b)")
    x, A, b = _float(x), jnp.asarray(A, dtype=_float(x).dtype), jnp.asarray(b, dtype=_float(x).dtype)
    if x.ndim != 1 or A.ndim != 2 or b.ndim != 1 or A.shape != (b.shape[0], x.shape[0]):
        raise ValueError(
            f"hyperparams: projection_affine_set expects x (d,), A (p, d), b (p,); got x {x.shape}, "
            f"A {A.shape}, b {b.shape}"
        )
    return x - jnp.linalg.pinv(A) @ (A @ x - b)


def _hyperplane_args(name: str, x: Any, hyperparams: Any) -> tuple:
    a, b = _check_pair(name, hyperparams, "(a, b)")
    x = _float(x)
    a, b = jnp.asarray(a, dtype=x.dtype), jnp.asarray(b, dtype=x.dtype)
    if a.shape != x.shape or b.ndim != 0:
        raise ValueError(
            f"hyperparams: {name} expects a with the shape of x {x.shape} and scalar b; got a {a.shape}, b {b.shape}"
        )
    if is_concrete(a) and not np.any(np.asarray(a) != 0):
        raise ValueError(f"hyperparams: {name} expects a nonzero normal vector a")
    return x, a, b


def projection_hyperplane(x: jax.Array, hyperparams: tuple) -> jax.Array:
    r"""Projection onto the hyperplane :math:`\{z : a^\top z = b\}`: :math:`x - \frac{a^\top x - b}{\|a\|^2} a`.

    Args:
      x: array (treated as a flattened vector).
      hyperparams: ``(a, b)``, ``a`` nonzero with the shape of ``x``, ``b`` scalar.
    """
    x, a, b = _hyperplane_args("projection_hyperplane", x, hyperparams)
    return x - (jnp.vdot(a, x) - b) / jnp.vdot(a, a) * a


def projection_halfspace(x: jax.Array, hyperparams: tuple) -> jax.Array:
    r"""Projection onto the half space :math:`\{z : a^\top z \le b\}`.

    .. math::  \mathrm{proj}(x) = x - \frac{\max(a^\top x - b, 0)}{\|a\|^2} a.

    Args:
      x: array (treated as a flattened vector).
      hyperparams: ``(a, b)``, ``a`` nonzero with the shape of ``x``, ``b`` scalar.
    """
    x, a, b = _hyperplane_args("projection_halfspace", x, hyperparams)
    return x - jnp.maximum(jnp.vdot(a, x) - b, 0) / jnp.vdot(a, a) * a


# --------------------------------------------------------------------------------------------
# Box sections: bisection on the dual variable + implicit differentiation (paper App. B.1)
# --------------------------------------------------------------------------------------------


def _box_section_primal(nu: jax.Array, x: jax.Array, alpha: jax.Array, beta: jax.Array, w: jax.Array) -> jax.Array:
    """Dual-to-primal map ``L(nu) = clip(w nu + x, alpha, beta)``."""
    return jnp.minimum(jnp.maximum(w * nu + x, alpha), beta)


def _box_section_root(nu, x, alpha, beta, w, c):
    """``F(nu) = w^T L(nu) - c``, non-decreasing in ``nu`` (slope = sum of w_i^2 over free i)."""
    return jnp.vdot(w, _box_section_primal(nu, x, alpha, beta, w)) - c


@functools.partial(jax.jit, static_argnames=("max_iter",))  # compiled once per shape, not per call
def _box_section_dual(x, alpha, beta, w, c, max_iter: int = 200) -> jax.Array:
    """Root of the piecewise-linear ``F`` by bisection, finished with one exact linear step."""
    dtype = x.dtype
    nz = w != 0
    w_safe = jnp.where(nz, w, 1.0)
    # Beyond all breakpoints every coordinate with w_i != 0 is saturated, so F(lo) <= 0 <= F(hi)
    # whenever the set is non-empty.
    t1, t2 = (alpha - x) / w_safe, (beta - x) / w_safe
    lo = jnp.min(jnp.where(nz, jnp.minimum(t1, t2), jnp.inf), initial=jnp.inf)
    hi = jnp.max(jnp.where(nz, jnp.maximum(t1, t2), -jnp.inf), initial=-jnp.inf)
    lo = jnp.where(jnp.isfinite(lo), lo, 0.0).astype(dtype)
    hi = jnp.where(jnp.isfinite(hi), hi, 0.0).astype(dtype)
    eps = jnp.finfo(dtype).eps

    def cond(state):
        lo, hi, it = state
        return (hi - lo > 4 * eps * jnp.maximum(1.0, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))) & (it < max_iter)

    def body(state):
        lo, hi, it = state
        mid = 0.5 * (lo + hi)
        neg = _box_section_root(mid, x, alpha, beta, w, c) < 0
        return jnp.where(neg, mid, lo), jnp.where(neg, hi, mid), it + 1

    lo, hi, _ = jax.lax.while_loop(cond, body, (lo, hi, 0))
    mid = 0.5 * (lo + hi)
    # F is linear on the piece containing mid: solve it exactly there (kept only if it stays in
    # the final bracket, i.e. the piece is the right one).
    z = w * mid + x
    free = (z > alpha) & (z < beta)
    slope = jnp.sum(jnp.where(free, w * w, 0.0))
    fixed = jnp.sum(jnp.where(free, w * x, w * _box_section_primal(mid, x, alpha, beta, w)))
    exact = (c - fixed) / jnp.where(slope > 0, slope, 1.0)
    ok = (slope > 0) & (exact >= lo) & (exact <= hi)
    return jnp.where(ok, exact, mid)


def projection_box_section(x: jax.Array, hyperparams: tuple) -> jax.Array:
    r"""Projection onto the box section :math:`\{z : \alpha \le z \le \beta,\ w^\top z = c\}`.

    A singly-constrained bounded QP. With :math:`\nu` the multiplier of the linear constraint the
    solution is :math:`z^\star = L(\nu^\star) = \mathrm{clip}(w \nu^\star + x, \alpha, \beta)` where
    :math:`\nu^\star` is the root of the non-decreasing piecewise-linear function

    .. math::  F(\nu, \theta) = w^\top L(\nu, \theta) - c, \qquad \theta = (x, \alpha, \beta, w, c).

    :math:`\nu^\star` is found by bisection (then one exact linear step on the final piece) and
    differentiated implicitly, :math:`\partial\nu^\star = -(\partial_\nu F)^{-1}\partial_\theta F`;
    the Jacobian of :math:`z^\star` follows by the chain rule through ``L`` (paper, App. B.1).

    Args:
      x: vector of shape ``(d,)``.
      hyperparams: ``(alpha, beta, w, c)``; ``alpha``, ``beta``, ``w`` scalars or ``(d,)`` arrays with
        ``alpha <= beta``, ``c`` a scalar with ``min_{alpha<=z<=beta} w^T z <= c <= max w^T z``.
    """
    if not isinstance(hyperparams, (tuple, list)) or len(hyperparams) != 4:
        raise ValueError("hyperparams: projection_box_section expects a 4-tuple (alpha, beta, w, c)")
    x = _float(x)
    if x.ndim != 1:
        raise ValueError(f"x: projection_box_section expects a vector, got shape {x.shape}")
    alpha, beta, w = (jnp.broadcast_to(jnp.asarray(v, dtype=x.dtype), x.shape) for v in hyperparams[:3])
    c = jnp.asarray(hyperparams[3], dtype=x.dtype)
    if c.ndim != 0:
        raise ValueError(f"hyperparams: c must be a scalar, got shape {c.shape}")
    if is_concrete(alpha, beta, w, c):
        an, bn, wn, cn = (np.asarray(v) for v in (alpha, beta, w, c))
        if np.any(an > bn):
            raise ValueError("hyperparams: projection_box_section expects alpha <= beta elementwise")
        lo, hi = np.sum(np.minimum(wn * an, wn * bn)), np.sum(np.maximum(wn * an, wn * bn))
        tol = 1e-9 * max(1.0, abs(lo), abs(hi))
        if not (lo - tol <= cn <= hi + tol):
            raise ValueError(f"hyperparams: empty box section, c={cn} is outside [{lo}, {hi}]")
    args = (x, alpha, beta, w, c)
    nu = _box_section_dual(*jax.lax.stop_gradient(args))
    nu = implicit_solution(_box_section_root, nu, args)
    return _box_section_primal(nu, x, alpha, beta, w)


# --------------------------------------------------------------------------------------------
# Isotonic regression (PAV) and the order simplex
# --------------------------------------------------------------------------------------------


@jax.jit  # compiled once per shape: eager calls would otherwise retrace the loops every time
def _pav_blocks(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pool-Adjacent-Violators for increasing isotonic regression.

    Returns the solution and, per coordinate, the index of its block. A stack of blocks (sum,
    count) is grown left to right; the top two blocks are merged while their means decrease. Each
    element is pushed once and merged at most once, so the work is O(d).
    """
    d = y.shape[0]
    sums0 = jnp.zeros(d, y.dtype)
    cnts0 = jnp.zeros(d, y.dtype)

    def violated(state):
        sums, cnts, top = state
        i, j = jnp.maximum(top - 2, 0), jnp.maximum(top - 1, 0)
        # mean_i > mean_j, written without division (counts are positive).
        return (top > 1) & (sums[i] * cnts[j] > sums[j] * cnts[i])

    def merge(state):
        sums, cnts, top = state
        sums = sums.at[top - 2].add(sums[top - 1])
        cnts = cnts.at[top - 2].add(cnts[top - 1])
        return sums.at[top - 1].set(0.0), cnts.at[top - 1].set(0.0), top - 1

    def push(k, state):
        sums, cnts, top = state
        state = (sums.at[top].set(y[k]), cnts.at[top].set(1.0), top + 1)
        return jax.lax.while_loop(violated, merge, state)

    sums, cnts, _ = jax.lax.fori_loop(0, d, push, (sums0, cnts0, jnp.asarray(0)))
    means = sums / jnp.where(cnts > 0, cnts, 1.0)
    block = jnp.repeat(jnp.arange(d), cnts.astype(jnp.int32), total_repeat_length=d)
    return means[block], block


@jax.custom_jvp
def _isotonic_increasing(y: jax.Array) -> jax.Array:
    return _pav_blocks(y)[0]


@_isotonic_increasing.defjvp
def _isotonic_increasing_jvp(primals, tangents):
    (y,), (y_dot,) = primals, tangents
    _, block = _pav_blocks(jax.lax.stop_gradient(y))
    d = y.shape[0]
    # The solution is the block-wise mean of y, so its tangent is the block-wise mean of y_dot
    # (linear in y_dot, hence transposable for reverse mode; second derivatives are zero).
    counts = jax.ops.segment_sum(jnp.ones_like(y_dot), block, num_segments=d)
    sums = jax.ops.segment_sum(y_dot, block, num_segments=d)
    return _isotonic_increasing(y), (sums / jnp.where(counts > 0, counts, 1.0))[block]


def isotonic_regression(x: jax.Array, increasing: bool = True) -> jax.Array:
    r"""Euclidean isotonic regression :math:`\operatorname*{argmin}_{z_1 \le \dots \le z_d} \|z - x\|^2`.

    Solved exactly by Pool-Adjacent-Violators (a ``lax.fori_loop`` with an inner merge loop, O(d)).
    The solution is constant on blocks and equal to the mean of ``x`` over each block, so its
    Jacobian is the block-averaging matrix :math:`\partial z_i / \partial x_j = 1/|B|` for
    :math:`i, j` in the same block :math:`B` (0 otherwise); it is attached with a custom JVP.

    Args:
      x: vector of shape ``(d,)`` (``vmap`` for batches).
      increasing: ``True`` for :math:`z_1 \le \dots \le z_d`, ``False`` for :math:`z_1 \ge \dots \ge z_d`.
    """
    x = _float(x)
    if x.ndim != 1:
        raise ValueError(f"x: isotonic_regression expects a vector, got shape {x.shape}")
    if x.shape[0] == 0:
        return x
    return _isotonic_increasing(x) if increasing else -_isotonic_increasing(-x)


def projection_order_simplex(x: jax.Array, hyperparams: Optional[tuple] = None) -> jax.Array:
    r"""Projection onto the order simplex :math:`\{z : \theta_1 \ge z_1 \ge z_2 \ge \dots \ge z_d \ge \theta_2\}`.

    Decreasing isotonic regression followed by clipping to :math:`[\theta_2, \theta_1]` (with
    bounds that are the same for every coordinate, clipping the unbounded isotonic solution is
    optimal). Jacobian: block averaging (see :func:`isotonic_regression`) composed with the clip;
    the derivative with respect to :math:`\theta_1` (:math:`\theta_2`) is the indicator of the
    coordinates clipped at the upper (lower) bound.

    Args:
      x: vector of shape ``(d,)``.
      hyperparams: ``(upper, lower)`` = :math:`(\theta_1, \theta_2)` scalars with ``upper >= lower``,
        or ``None`` for the unbounded monotone cone (plain decreasing isotonic regression).
    """
    z = isotonic_regression(x, increasing=False)
    if hyperparams is None:
        return z
    upper, lower = _check_pair("projection_order_simplex", hyperparams, "(upper, lower)")
    upper, lower = jnp.asarray(upper, dtype=z.dtype), jnp.asarray(lower, dtype=z.dtype)
    if upper.ndim != 0 or lower.ndim != 0:
        raise ValueError("hyperparams: projection_order_simplex expects scalar (upper, lower)")
    if is_concrete(upper, lower) and float(upper) < float(lower):
        raise ValueError(f"hyperparams: projection_order_simplex expects upper >= lower, got ({upper}, {lower})")
    return jnp.minimum(jnp.maximum(z, lower), upper)


# --------------------------------------------------------------------------------------------
# KL projections: closed forms and the transportation polytope (Sinkhorn + implicit diff)
# --------------------------------------------------------------------------------------------


def projection_non_negative_kl(x: PyTree, hyperparams: Any = None) -> PyTree:
    r"""KL projection onto the non-negative orthant.

    .. math::  \operatorname*{argmin}_{z \ge 0} \langle z, \log z - 1 - x\rangle = e^x.

    Args:
      x: array or pytree of arrays.
      hyperparams: ignored.
    """
    del hyperparams
    return jax.tree_util.tree_map(jnp.exp, x)


def projection_simplex_kl(x: jax.Array, value: Any = 1.0) -> jax.Array:
    r"""KL projection onto :math:`\{z \ge 0 : \sum_i z_i = s\}`: :math:`s \cdot \mathrm{softmax}(x)`.

    Args:
      x: array, treated as one flattened vector (``vmap`` over rows for row-wise softmax).
      value: the sum ``s >= 0``.
    """
    if value is None:
        value = 1.0
    check_nonnegative("value", value)
    x = _float(x)
    return jnp.asarray(value, dtype=x.dtype) * jax.nn.softmax(x.ravel()).reshape(x.shape)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _sinkhorn(x: jax.Array, log_a: jax.Array, log_b: jax.Array, max_iter: int, tol: float) -> tuple:
    """Log-domain Sinkhorn: potentials ``(f, g)`` with ``exp(f_i + x_ij + g_j)`` of marginals ``(a, b)``."""
    a = jnp.exp(log_a)

    def row_error(f, g):
        rows = jnp.exp(jax.nn.logsumexp(f[:, None] + x + g[None, :], axis=1))
        return jnp.sum(jnp.abs(rows - a))

    def cond(state):
        _, _, err, it = state
        return (err > tol) & (it < max_iter)

    def body(state):
        f, g, _, it = state
        f = log_a - jax.nn.logsumexp(x + g[None, :], axis=1)
        g = log_b - jax.nn.logsumexp(x + f[:, None], axis=0)
        # Column marginals are exact after the g-update, so the row error is the whole error.
        return f, g, row_error(f, g), it + 1

    f0 = jnp.zeros(x.shape[0], x.dtype)
    g0 = jnp.zeros(x.shape[1], x.dtype)
    f, g, _, _ = jax.lax.while_loop(cond, body, (f0, g0, jnp.asarray(jnp.inf, x.dtype), 0))
    return f, g


def _transport_optimality(sol, x, log_a, log_b):
    """Marginal conditions in log scale, with the gauge ``g_d = 0`` and the last column condition dropped.

    ``(f, g) -> (f + c, g - c)`` leaves the plan unchanged, so the full system is singular; pinning
    ``g_d = 0`` removes that direction and dropping one column equation (implied by the others when
    ``sum(a) == sum(b)``) keeps the system square and nonsingular.
    """
    f, g_head = sol
    g = jnp.concatenate([g_head, jnp.zeros((1,), g_head.dtype)])
    logits = f[:, None] + x + g[None, :]
    rows = jax.nn.logsumexp(logits, axis=1) - log_a
    cols = jax.nn.logsumexp(logits, axis=0) - log_b
    return rows, cols[:-1]


def projection_transport(
    x: jax.Array, hyperparams: tuple, max_iter: int = 2000, tol: Optional[float] = None
) -> jax.Array:
    r"""KL projection onto the transportation polytope :math:`U(a, b) = \{P \ge 0 : P 1 = a,\ P^\top 1 = b\}`.

    .. math::  P^\star = \operatorname*{argmin}_{P \in U(a, b)} \langle P, \log P - 1 - X \rangle
               = \mathrm{diag}(e^{f}) \, e^{X} \, \mathrm{diag}(e^{g}),

    i.e. entropy-regularised optimal transport with cost :math:`C = -\varepsilon X`. The dual
    potentials :math:`(f, g)` are computed by log-domain Sinkhorn (stopped when the marginal error
    :math:`\|P1 - a\|_1 \le` ``tol`` or after ``max_iter`` sweeps) and differentiated implicitly
    through the marginal conditions :math:`\mathrm{logsumexp}_j(f_i + X_{ij} + g_j) = \log a_i`,
    :math:`\mathrm{logsumexp}_i(\cdot) = \log b_j`, whose one-dimensional null space
    :math:`(f + t, g - t)` is removed by fixing :math:`g_d = 0` (and dropping the redundant last
    column equation).

    Derivatives with respect to ``(a, b)`` are meaningful only along directions that keep
    ``sum(a) == sum(b)`` (otherwise the set is empty); e.g. parametrise the marginals by a softmax.
    Unlike JAXopt's ``projection_transport`` (Euclidean), this is the KL projection.

    Args:
      x: matrix ``X`` of shape ``(p, d)`` (log-kernel / similarity).
      hyperparams: ``(a, b)``: marginals, strictly positive, shapes ``(p,)`` and ``(d,)``, equal sums.
      max_iter: maximum number of Sinkhorn sweeps.
      tol: tolerance on the row-marginal error (default ``1e-10`` in float64, ``1e-6`` in float32).
    """
    a, b = _check_pair("projection_transport", hyperparams, "(a, b)")
    x = _float(x)
    a, b = jnp.asarray(a, dtype=x.dtype), jnp.asarray(b, dtype=x.dtype)
    if x.ndim != 2 or a.shape != (x.shape[0],) or b.shape != (x.shape[1],):
        raise ValueError(
            "hyperparams: projection_transport expects x (p, d), a (p,), b (d,); "
            f"got x {x.shape}, a {a.shape}, b {b.shape}"
        )
    if is_concrete(a, b):
        an, bn = np.asarray(a), np.asarray(b)
        if np.any(an <= 0) or np.any(bn <= 0):
            raise ValueError("hyperparams: projection_transport expects strictly positive marginals a, b")
        if not np.isclose(an.sum(), bn.sum(), rtol=1e-6, atol=0.0):
            raise ValueError(f"hyperparams: marginals must have equal sums, got sum(a)={an.sum()}, sum(b)={bn.sum()}")
    if tol is None:
        tol = 1e-10 if x.dtype == jnp.float64 else 1e-6
    log_a, log_b = jnp.log(a), jnp.log(b)
    f, g = _sinkhorn(*jax.lax.stop_gradient((x, log_a, log_b)), max_iter=max_iter, tol=tol)
    # Move to the gauge g_d = 0 used by the optimality conditions.
    f, g_head = f + g[-1], (g - g[-1])[:-1]
    f, g_head = implicit_solution(_transport_optimality, (f, g_head), (x, log_a, log_b))
    g = jnp.concatenate([g_head, jnp.zeros((1,), g_head.dtype)])
    return jnp.exp(f[:, None] + x + g[None, :])


def projection_birkhoff(
    x: jax.Array, hyperparams: Any = None, max_iter: int = 2000, tol: Optional[float] = None
) -> jax.Array:
    r"""KL projection onto the Birkhoff polytope (doubly stochastic matrices: rows and columns sum to 1).

    :func:`projection_transport` with :math:`a = b = 1_n`; see there for the math.

    Args:
      x: square matrix of shape ``(n, n)``.
      hyperparams: ignored.
      max_iter: maximum number of Sinkhorn sweeps.
      tol: tolerance on the marginal error.
    """
    del hyperparams
    x = _float(x)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"x: projection_birkhoff expects a square matrix, got shape {x.shape}")
    ones = jnp.ones(x.shape[0], x.dtype)
    return projection_transport(x, (ones, ones), max_iter=max_iter, tol=tol)
