r"""Euclidean and KL projections onto convex sets, differentiable in the point and the set.

Every projection has the JAXopt-style signature ``projection_xxx(x, hyperparams=None)`` and computes

.. math::  \mathrm{proj}_{C(\theta)}(x) = \operatorname*{argmin}_{z \in C(\theta)} \tfrac12 \|z - x\|_2^2

(Euclidean) or, for the ``*_kl`` / ``kl_*`` variants,

.. math::  \mathrm{proj}^{KL}_{C(\theta)}(x)
           = \operatorname*{argmin}_{z \in C(\theta)} \langle z, \log z - 1 - x \rangle,

where ``θ = hyperparams``. Closed forms are left to autodiff (paper, App. B.1); projections that
need an iterative algorithm (box sections, polyhedra, transportation polytopes) run it on ``stop_gradient``-ed
inputs and are differentiated with the implicit function theorem
(:func:`kktbridge.core._implicit.implicit_solution`); isotonic regression (PAV) carries its exact
block-averaging Jacobian in a :func:`jax.custom_jvp`.

Conventions. Projections onto sets of vectors (simplex, balls, affine sets, ...) treat ``x`` as one
vector: a matrix is flattened and projected as a whole. To project each row of a matrix, ``vmap``
over rows, e.g. ``jax.vmap(projection_simplex)(X)``. Hyperparameters are validated (``ValueError``)
when their values are concrete; under ``jit``/``vmap``/``grad`` tracing the checks are skipped
(and an empty set gives NaN where it can be detected: box sections, polyhedra).

Names, signatures and meanings follow ``jaxopt.projection`` (``projection_transport`` and
``projection_birkhoff`` are Euclidean, as in JAXopt; the entropic ones are ``kl_projection_*``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kktbridge.core._checks import check_nonnegative, is_concrete
from kktbridge.core._implicit import implicit_solution
from kktbridge.core._types import PyTree

__all__ = [
    "projection_non_negative",
    "projection_box",
    "projection_hypercube",
    "projection_simplex",
    "projection_sparse_simplex",
    "projection_l1_sphere",
    "projection_l1_ball",
    "projection_l2_sphere",
    "projection_l2_ball",
    "projection_linf_ball",
    "projection_affine_set",
    "projection_hyperplane",
    "projection_halfspace",
    "projection_polyhedron",
    "projection_box_section",
    "isotonic_regression",
    "isotonic_l2_pav",
    "projection_order_simplex",
    "projection_transport",
    "projection_birkhoff",
    "kl_projection_transport",
    "kl_projection_birkhoff",
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


def projection_non_negative(x: PyTree, hyperparams: object = None) -> PyTree:
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


def projection_hypercube(x: PyTree, unit: Optional[ArrayLike] = 1.0) -> PyTree:
    r"""Projection onto the hypercube :math:`[0, u]^n`: :math:`\mathrm{clip}(x, 0, u)`.

    :func:`projection_box` with ``(0, unit)``.

    Args:
      x: array or pytree of arrays.
      unit: the side :math:`u \ge 0` (scalar, default 1).
    """
    if unit is None:
        unit = 1.0
    check_nonnegative("unit", unit)
    return projection_box(x, (0.0, unit))


def _simplex_shifted(v: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Threshold of the simplex projection of a vector, in the frame of its largest entry.

    Returns ``(w, t, m)`` with ``m = max(v)``, ``w = v - m`` and ``proj(v) = max(w - t, 0)``; the
    threshold of ``v`` itself is ``tau = m + t``. Working relative to ``max(v)`` keeps every quantity on the
    support at the scale of ``value`` (the support lies within ``value`` of the maximum): computing
    ``tau = max(v) - value`` directly rounds to ``max(v)`` once ``|v| / value`` exceeds ``1 / eps``
    (``[3e7, 0]`` in float32 projected to ``[0, 0]``). The shift carries no derivative: the
    projection is invariant to ``v -> v + c 1``.
    """
    d = v.shape[0]
    m = jax.lax.stop_gradient(jnp.max(v))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))  # all -inf: no finite anchor
    w = v - m
    u = jnp.sort(w)[::-1]
    cssv = jnp.cumsum(u) - value
    ind = jnp.arange(1, d + 1, dtype=v.dtype)
    # The support is a prefix of the sorted vector: k = #{j : u_j > (sum_{i<=j} u_i - value) / j}.
    # (-inf entries never qualify: -inf * j > -inf is false.)
    k = jnp.maximum(jnp.sum(u * ind > cssv), 1)  # k >= 1 also covers value == 0
    t = cssv[k - 1] / k.astype(v.dtype)
    return w, t, m


def _simplex_tau(v: jax.Array, value: jax.Array) -> jax.Array:
    """Threshold ``tau`` with ``proj(v) = max(v - tau, 0)`` (in the frame of ``v``)."""
    _, t, m = _simplex_shifted(v, value)
    return m + t


def _simplex_flat(v: jax.Array, value: jax.Array) -> jax.Array:
    """Sort-based exact projection of a vector onto ``{z >= 0, sum z = value}`` (Held et al.)."""
    w, t, _ = _simplex_shifted(v, value)
    return jnp.maximum(w - t, 0)


def projection_simplex(x: jax.Array, value: Optional[ArrayLike] = 1.0) -> jax.Array:
    r"""Projection onto the (scaled) probability simplex :math:`\{z \ge 0 : \sum_i z_i = s\}`.

    Exact sort-based algorithm, :math:`O(d \log d)`: with :math:`u` the values of ``x`` sorted in
    decreasing order and :math:`k = \max\{j : u_j > (\sum_{i \le j} u_i - s)/j\}`,

    .. math::  \mathrm{proj}(x) = \max(x - \tau, 0), \qquad \tau = \frac{\sum_{i \le k} u_i - s}{k}.

    The computation runs on :math:`x - \max_i x_i` (the projection is invariant to adding a
    constant to every entry), so the result is on the simplex to working precision at any scale of
    ``x`` relative to ``s`` (``[1e16, 0]`` gives ``[s, 0]`` in float64 and float32 alike). Entries
    equal to ``-inf`` are allowed and get zero mass.

    The Jacobian (obtained by autodiff) is :math:`\mathrm{diag}(\sigma) - \sigma\sigma^\top/\|\sigma\|_1`
    with :math:`\sigma` the support indicator, and :math:`\partial/\partial s = \sigma/\|\sigma\|_1`.

    Args:
      x: array; projected as *one* flattened vector (the whole array sums to ``value``). For a
        row-wise projection of a matrix use ``jax.vmap(projection_simplex)(X)``.
      value: the sum ``s >= 0`` (scalar).
    """
    if value is None:
        value = 1.0
    check_nonnegative("value", value)
    x = _float(x)
    value = jnp.asarray(value, dtype=x.dtype)
    if value.ndim != 0:
        raise ValueError(f"value: expected a scalar, got shape {value.shape}")
    return _simplex_flat(x.ravel(), value).reshape(x.shape)


def projection_sparse_simplex(
    x: jax.Array, max_nz: int, use_approx_max_nz: bool = False, value: Optional[ArrayLike] = 1.0
) -> jax.Array:
    r"""Projection onto the simplex with at most ``max_nz`` nonzero entries.

    .. math::  \operatorname*{argmin}_{z} \|z - x\|_2^2 \quad \text{s.t.} \quad z \ge 0,\
               \textstyle\sum_i z_i = s,\ \|z\|_0 \le k.

    The set is not convex, but this problem is solved exactly by projecting the :math:`k` largest
    entries of ``x`` onto the simplex and setting the others to zero (Kyrillidis et al., 2013).
    The Jacobian is that of :func:`projection_simplex` on the selected entries, scattered back
    (zero for the others), which is the derivative wherever the top-:math:`k` set is unique.

    Args:
      x: vector of shape ``(d,)``.
      max_nz: :math:`k`, a static integer with ``1 <= k <= d``.
      use_approx_max_nz: select the entries with :func:`jax.lax.approx_max_k` (faster on TPU,
        may miss a top entry) instead of :func:`jax.lax.top_k`.
      value: the sum ``s >= 0`` (scalar).
    """
    if value is None:
        value = 1.0
    check_nonnegative("value", value)
    x = _float(x)
    if x.ndim != 1:
        raise ValueError(f"x: projection_sparse_simplex expects a vector, got shape {x.shape}")
    max_nz = int(max_nz)
    if not 1 <= max_nz <= x.shape[0]:
        raise ValueError(f"max_nz: expected 1 <= max_nz <= {x.shape[0]}, got {max_nz}")
    value = jnp.asarray(value, dtype=x.dtype)
    if use_approx_max_nz:
        top, idx = jax.lax.approx_max_k(x, max_nz)
    else:
        top, idx = jax.lax.top_k(x, max_nz)
    return jnp.zeros_like(x).at[idx].set(_simplex_flat(top, value))


def projection_l1_sphere(x: jax.Array, value: Optional[ArrayLike] = 1.0) -> jax.Array:
    r"""A Euclidean projection onto the :math:`\ell_1` sphere :math:`\{z : \|z\|_1 = r\}`.

    .. math::  \mathrm{proj}(x) = \mathrm{sgn}(x) \odot \mathrm{proj}_{\Delta_r}(|x|),
               \qquad \mathrm{sgn}(t) = 1 \text{ if } t \ge 0 \text{ else } -1.

    The sphere is not convex: for ``x`` strictly inside the ball the nearest point need not be
    unique; this returns the one that keeps the signs of ``x`` (zeros counted as positive, so the
    result always has :math:`\|z\|_1 = r`). Jacobian: that of the simplex projection, with signs.

    Args:
      x: array, projected as one flattened vector.
      value: the radius ``r >= 0`` (scalar).
    """
    if value is None:
        value = 1.0
    check_nonnegative("value", value)
    x = _float(x)
    sign = jnp.where(x < 0, -1.0, 1.0).astype(x.dtype)
    return sign * projection_simplex(jnp.abs(x), jnp.asarray(value, dtype=x.dtype))


def projection_l1_ball(x: jax.Array, radius: Optional[ArrayLike] = 1.0) -> jax.Array:
    r"""Projection onto the :math:`\ell_1` ball :math:`\{z : \|z\|_1 \le r\}`.

    :math:`x` itself if :math:`\|x\|_1 \le r`, else
    :math:`\mathrm{sign}(x) \odot \mathrm{proj}_{\Delta_r}(|x|)` (Duchi et al., 2008), i.e.
    :func:`projection_l1_sphere`. On the boundary the Jacobian is the identity's (one-sided,
    from the inside) and the derivative in ``r`` is zero.

    Args:
      x: array, projected as one flattened vector.
      radius: ``r >= 0`` (scalar; JAXopt calls it ``max_value``).
    """
    if radius is None:
        radius = 1.0
    check_nonnegative("radius", radius)
    x = _float(x)
    radius = jnp.asarray(radius, dtype=x.dtype)
    outside = jnp.sign(x) * projection_simplex(jnp.abs(x), radius)
    return jnp.where(jnp.sum(jnp.abs(x)) <= radius, x, outside)


def _tree_sq_norm(x: PyTree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(x)
    return jnp.asarray(sum(jnp.sum(leaf * leaf) for leaf in leaves))


def _tree_float(x: PyTree) -> PyTree:
    return jax.tree_util.tree_map(_float, x)


def projection_l2_ball(x: PyTree, radius: Optional[ArrayLike] = 1.0) -> PyTree:
    r"""Projection onto the :math:`\ell_2` ball: :math:`x \cdot \min(1, r / \|x\|_2)`.

    Args:
      x: array or pytree of arrays, projected as one flattened vector (the norm is over all
        leaves).
      radius: ``r >= 0`` (scalar; JAXopt calls it ``max_value``).
    """
    if radius is None:
        radius = 1.0
    check_nonnegative("radius", radius)
    x = _tree_float(x)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(x))
    radius = jnp.asarray(radius, dtype=dtype)
    sq = _tree_sq_norm(x)
    # Guard the norm so that x = 0 (always inside) gives a finite gradient.
    norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    inside = norm <= radius
    factor = jnp.where(inside, 1.0, radius / jnp.where(inside, 1.0, norm))
    return jax.tree_util.tree_map(lambda leaf: leaf * factor.astype(leaf.dtype), x)


def projection_l2_sphere(x: PyTree, value: Optional[ArrayLike] = 1.0) -> PyTree:
    r"""Projection onto the :math:`\ell_2` sphere :math:`\{z : \|z\|_2 = r\}`: :math:`r\,x / \|x\|_2`.

    Unique for :math:`x \ne 0`. At :math:`x = 0` every point of the sphere is nearest; the
    constant vector :math:`r / \sqrt{n}\,\mathbf 1` is returned (with a zero derivative there).

    Args:
      x: array or pytree of arrays, treated as one flattened vector.
      value: the radius ``r >= 0`` (scalar).
    """
    if value is None:
        value = 1.0
    check_nonnegative("value", value)
    x = _tree_float(x)
    leaves = jax.tree_util.tree_leaves(x)
    dtype = jnp.result_type(*leaves)
    value = jnp.asarray(value, dtype=dtype)
    n = sum(leaf.size for leaf in leaves)
    sq = _tree_sq_norm(x)
    nz = sq > 0
    factor = value / jnp.sqrt(jnp.where(nz, sq, 1.0))
    at_zero = value / np.sqrt(max(n, 1))
    return jax.tree_util.tree_map(
        lambda leaf: jnp.where(nz, leaf * factor, jnp.full_like(leaf, at_zero)).astype(leaf.dtype), x
    )


def projection_linf_ball(x: PyTree, radius: Optional[ArrayLike] = 1.0) -> PyTree:
    r"""Projection onto the :math:`\ell_\infty` ball: :math:`\mathrm{clip}(x, -r, r)`.

    Args:
      x: array or pytree of arrays.
      radius: ``r >= 0`` (scalar or array broadcastable to ``x``).
    """
    if radius is None:
        radius = 1.0
    check_nonnegative("radius", radius)
    return jax.tree_util.tree_map(lambda leaf: jnp.minimum(jnp.maximum(leaf, jnp.negative(radius)), radius), x)


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


# --------------------------------------------------------------------------------------------
# Polyhedra: dense ADMM (OSQP's iteration) + active-set polish, implicit differentiation
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _polyhedron_solve(x, A, b, G, h, max_iter: int = 10000) -> tuple:
    """Primal-dual solution ``(y, mu, lam)`` of ``min 0.5 ||y - x||^2 s.t. A y = b, G y <= h``.

    ADMM on ``l <= C y <= u`` with ``C = [A; G]`` (OSQP's splitting, relaxation 1.6, rows scaled to
    unit norm, a 1e3 times stiffer penalty on equality rows), factorised once by Cholesky, run to a
    residual of ``sqrt(eps)``; then an exact *polish*: the KKT system on the active set guessed from
    the ADMM multipliers, solved in the least-squares sense, is kept if it is primal and dual
    feasible (it then is the solution to round-off).
    """
    dtype = x.dtype
    n, p, m = x.shape[0], A.shape[0], G.shape[0]
    eps = jnp.finfo(dtype).eps
    C = jnp.concatenate([A, G], axis=0)
    lo = jnp.concatenate([b, jnp.full((m,), -jnp.inf, dtype)])
    hi = jnp.concatenate([b, h])
    rn = jnp.linalg.norm(C, axis=1)
    rn = jnp.where(rn > 0, rn, 1.0)
    Cs, los, his = C / rn[:, None], lo / rn, hi / rn
    is_eq = jnp.arange(p + m) < p
    rho = jnp.where(is_eq, 1e3, 1.0).astype(dtype)
    sigma, relax = 1e-6, 1.6
    K = (1.0 + sigma) * jnp.eye(n, dtype=dtype) + (Cs.T * rho) @ Cs
    chol = jax.scipy.linalg.cho_factor(K)
    tol = jnp.sqrt(eps)

    def residuals(y, z, w):
        Cy, Ctw = Cs @ y, Cs.T @ w
        prim = jnp.max(jnp.abs(Cy - z), initial=0.0)
        dual = jnp.max(jnp.abs(y - x + Ctw), initial=0.0)
        prim_ok = prim <= tol * (1.0 + jnp.maximum(jnp.max(jnp.abs(Cy), initial=0.0), jnp.max(jnp.abs(z), initial=0.0)))
        dual_ok = dual <= tol * (1.0 + jnp.maximum(jnp.max(jnp.abs(y - x)), jnp.max(jnp.abs(Ctw))))
        return prim_ok & dual_ok

    def cond(state):
        _, _, _, it, done = state
        return (it < max_iter) & ~done

    def body(state):
        y, z, w, it, _ = state
        y_t = jax.scipy.linalg.cho_solve(chol, x + sigma * y + Cs.T @ (rho * z - w))
        z_t = Cs @ y_t
        y = relax * y_t + (1.0 - relax) * y
        z_r = relax * z_t + (1.0 - relax) * z
        z_new = jnp.clip(z_r + w / rho, los, his)
        w = w + rho * (z_r - z_new)
        return y, z_new, w, it + 1, residuals(y, z_new, w)

    zero_c = jnp.zeros(p + m, dtype)
    y, z, w, _, _ = jax.lax.while_loop(cond, body, (x, jnp.clip(Cs @ x, los, his), zero_c, 0, False))

    # Polish: equality rows, and the inequality rows whose slack is below their multiplier
    # (OSQP's guess: exact zeros of w on inactive rows are only zero up to round-off).
    active = is_eq | (his - z < w)
    mask = active.astype(dtype)
    M = (mask[:, None] * (Cs @ Cs.T)) * mask[None, :] + jnp.diag(1.0 - mask)
    rhs = mask * (Cs @ x - jnp.where(active, his, 0.0))
    nu = jnp.linalg.pinv(M) @ rhs
    y_p = x - Cs.T @ nu
    scale = 1.0 + jnp.max(jnp.abs(x)) + jnp.max(jnp.abs(y_p))
    feas_tol = 1e2 * eps * scale
    Cy_p = Cs @ y_p
    ok = (
        jnp.all(jnp.abs(jnp.where(is_eq, Cy_p - his, 0.0)) <= feas_tol)
        & jnp.all(jnp.where(is_eq, True, Cy_p <= his + feas_tol))
        & jnp.all(jnp.where(is_eq, True, nu >= -feas_tol))
    )
    y = jnp.where(ok, y_p, y)
    nu = jnp.where(ok, nu, w)
    nu = jnp.where(is_eq, nu, jnp.maximum(nu, 0.0)) / rn  # multipliers of the unscaled rows
    return y, nu[:p], nu[p:]


def _polyhedron_optimality(sol, x, A, b, G, h):
    """KKT map: stationarity, equalities, and the min-map ``min(lam, h - G y)`` for inequalities."""
    y, mu, lam = sol
    slack = h - G @ y
    return y - x + A.T @ mu + G.T @ lam, A @ y - b, jnp.where(slack < lam, slack, lam)


def projection_polyhedron(x: jax.Array, hyperparams: tuple, check_feasible: bool = True) -> jax.Array:
    r"""Projection onto the polyhedron :math:`\{z : A z = b,\ G z \le h\}`.

    .. math::  \operatorname*{argmin}_{z} \tfrac12 \|z - x\|_2^2 \quad \text{s.t.} \quad A z = b,\ G z \le h.

    Solved in pure JAX (``jit``/``vmap``-able, GPU-capable): ADMM on the dense problem, finished by
    an exact solve of the KKT system on the identified active set. The solution
    :math:`(z^\star, \mu^\star, \lambda^\star)` is differentiated implicitly through

    .. math::  F = \big(z - x + A^\top\mu + G^\top\lambda,\ Az - b,\ \min(\lambda, h - Gz)\big) = 0,

    whose Jacobian is nonsingular under LICQ and strict complementarity (otherwise the default
    linear solver returns the minimum-norm derivative). Jacobians with respect to ``x``, ``A``,
    ``b``, ``G`` and ``h`` are available.

    An empty polyhedron is detected from the solution's constraint violation: with
    ``check_feasible=True`` (default, JAXopt's) and concrete hyperparameters it raises
    ``ValueError``; otherwise (or under ``jit``) the result is NaN. (Unlike JAXopt, the function
    stays jit-able with ``check_feasible=True``: under tracing the NaN result is the report.)

    Args:
      x: vector of shape ``(n,)``.
      hyperparams: ``(A, b, G, h)`` with ``A`` ``(p, n)``, ``b`` ``(p,)``, ``G`` ``(m, n)``, ``h``
        ``(m,)``; ``(A, b)`` or ``(G, h)`` may be ``(None, None)``.
      check_feasible: raise ``ValueError`` for an empty polyhedron when the values are concrete.
    """
    if not isinstance(hyperparams, (tuple, list)) or len(hyperparams) != 4:
        raise ValueError("hyperparams: projection_polyhedron expects a 4-tuple (A, b, G, h)")
    x = _float(x)
    if x.ndim != 1:
        raise ValueError(f"x: projection_polyhedron expects a vector, got shape {x.shape}")
    n, dtype = x.shape[0], x.dtype
    A, b, G, h = hyperparams
    A = jnp.zeros((0, n), dtype) if A is None else jnp.asarray(A, dtype)
    b = jnp.zeros((0,), dtype) if b is None else jnp.asarray(b, dtype)
    G = jnp.zeros((0, n), dtype) if G is None else jnp.asarray(G, dtype)
    h = jnp.zeros((0,), dtype) if h is None else jnp.asarray(h, dtype)
    if A.ndim != 2 or A.shape[1] != n or b.shape != (A.shape[0],) or G.ndim != 2 or G.shape[1] != n or h.shape != (G.shape[0],):
        raise ValueError(
            f"hyperparams: projection_polyhedron expects A (p, {n}), b (p,), G (m, {n}), h (m,); "
            f"got A {A.shape}, b {b.shape}, G {G.shape}, h {h.shape}"
        )
    args = (x, A, b, G, h)
    y, mu, lam = _polyhedron_solve(*jax.lax.stop_gradient(args))
    # Constraint violation of the returned point, relative to the data's scale.
    eps = jnp.finfo(dtype).eps
    viol = jnp.maximum(
        jnp.max(jnp.abs(A @ y - b), initial=0.0), jnp.max(G @ y - h, initial=0.0)
    )
    scale = 1.0 + jnp.max(jnp.abs(y)) * jnp.maximum(jnp.max(jnp.abs(A), initial=0.0), jnp.max(jnp.abs(G), initial=0.0))
    scale = scale + jnp.maximum(jnp.max(jnp.abs(b), initial=0.0), jnp.max(jnp.abs(h), initial=0.0))
    empty = viol > jnp.sqrt(eps) * scale
    if check_feasible and is_concrete(y) and bool(empty):
        raise ValueError(
            f"hyperparams: the polyhedron is empty (the closest point found violates the constraints by {float(viol):.3g})"
        )
    y, mu, lam = implicit_solution(_polyhedron_optimality, (y, mu, lam), args)
    return jnp.where(empty, jnp.nan, y)


def _hyperplane_args(name: str, x: Any, hyperparams: Any) -> tuple:
    """Validate ``(a, b)`` for a hyperplane/half space; ``x`` and ``a`` arrays or matching pytrees."""
    a, b = _check_pair(name, hyperparams, "(a, b)")
    x = _tree_float(x)
    x_leaves, x_def = jax.tree_util.tree_flatten(x)
    if not x_leaves:
        raise ValueError(f"x: {name} expects an array or a non-empty pytree of arrays")
    dtype = jnp.result_type(*x_leaves)
    a_leaves, a_def = jax.tree_util.tree_flatten(a)
    if a_def != x_def:
        raise ValueError(f"hyperparams: {name} expects a with the structure of x ({x_def}), got {a_def}")
    a_leaves = [jnp.asarray(al, dtype=xl.dtype) for al, xl in zip(a_leaves, x_leaves)]
    b = jnp.asarray(b, dtype=dtype)
    for al, xl in zip(a_leaves, x_leaves):
        if al.shape != xl.shape:
            raise ValueError(f"hyperparams: {name} expects a with the shape of x {xl.shape}, got {al.shape}")
    if b.ndim != 0:
        raise ValueError(f"hyperparams: {name} expects a scalar b, got shape {b.shape}")
    if is_concrete(a_leaves) and not any(np.any(np.asarray(al) != 0) for al in a_leaves):
        raise ValueError(f"hyperparams: {name} expects a nonzero normal vector a")
    return x_leaves, x_def, a_leaves, b


def _tree_vdot(u: list, v: list) -> jax.Array:
    return jnp.asarray(sum(jnp.vdot(ul, vl) for ul, vl in zip(u, v)))


def projection_hyperplane(x: PyTree, hyperparams: tuple) -> PyTree:
    r"""Projection onto the hyperplane :math:`\{z : a^\top z = b\}`: :math:`x - \frac{a^\top x - b}{\|a\|^2} a`.

    Args:
      x: array or pytree of arrays (treated as one flattened vector).
      hyperparams: ``(a, b)``: ``a`` nonzero, with the shape (pytree structure) of ``x``; ``b``
        scalar. :math:`a^\top x` is summed over all leaves.
    """
    xl, xdef, al, b = _hyperplane_args("projection_hyperplane", x, hyperparams)
    step = (_tree_vdot(al, xl) - b) / _tree_vdot(al, al)
    return jax.tree_util.tree_unflatten(xdef, [x_ - (step * a_).astype(x_.dtype) for x_, a_ in zip(xl, al)])


def projection_halfspace(x: PyTree, hyperparams: tuple) -> PyTree:
    r"""Projection onto the half space :math:`\{z : a^\top z \le b\}`.

    .. math::  \mathrm{proj}(x) = x - \frac{\max(a^\top x - b, 0)}{\|a\|^2} a.

    Args:
      x: array or pytree of arrays (treated as one flattened vector).
      hyperparams: ``(a, b)``: ``a`` nonzero, with the shape (pytree structure) of ``x``; ``b``
        scalar.
    """
    xl, xdef, al, b = _hyperplane_args("projection_halfspace", x, hyperparams)
    step = jnp.maximum(_tree_vdot(al, xl) - b, 0) / _tree_vdot(al, al)
    return jax.tree_util.tree_unflatten(xdef, [x_ - (step * a_).astype(x_.dtype) for x_, a_ in zip(xl, al)])


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


def projection_box_section(x: jax.Array, hyperparams: tuple, check_feasible: Optional[bool] = None) -> jax.Array:
    r"""Projection onto the box section :math:`\{z : \alpha \le z \le \beta,\ w^\top z = c\}`.

    A singly-constrained bounded QP. With :math:`\nu` the multiplier of the linear constraint the
    solution is :math:`z^\star = L(\nu^\star) = \mathrm{clip}(w \nu^\star + x, \alpha, \beta)` where
    :math:`\nu^\star` is the root of the non-decreasing piecewise-linear function

    .. math::  F(\nu, \theta) = w^\top L(\nu, \theta) - c, \qquad \theta = (x, \alpha, \beta, w, c).

    :math:`\nu^\star` is found by bisection (then one exact linear step on the final piece) and
    differentiated implicitly, :math:`\partial\nu^\star = -(\partial_\nu F)^{-1}\partial_\theta F`;
    the Jacobian of :math:`z^\star` follows by the chain rule through ``L`` (paper, App. B.1).

    The set is empty unless :math:`\min_{\alpha \le z \le \beta} w^\top z \le c \le \max w^\top z`.
    Whenever the hyperparameters are concrete this is checked and an empty set raises
    ``ValueError``; under tracing (``jit``, ``vmap``) the check cannot raise, and a result that
    misses :math:`w^\top z = c` is returned as NaN instead of a wrong point.

    Args:
      x: vector of shape ``(d,)``.
      hyperparams: ``(alpha, beta, w, c)``; ``alpha``, ``beta``, ``w`` scalars or ``(d,)`` arrays with
        ``alpha <= beta``, ``c`` a scalar with ``min_{alpha<=z<=beta} w^T z <= c <= max w^T z``.
      check_feasible: ``None`` (default): check when the hyperparameters are concrete. ``True``
        (JAXopt's option): the check is required, so traced hyperparameters raise ``ValueError``.
        ``False``: skip the check (the NaN guard stays).
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
    concrete = is_concrete(alpha, beta, w, c)
    if check_feasible and not concrete:
        raise ValueError(
            "check_feasible=True needs concrete hyperparams (alpha, beta, w, c), not traced ones; "
            "under jit/vmap pass check_feasible=None or False (an empty set then gives NaN)"
        )
    if concrete and check_feasible is not False:
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
    z = _box_section_primal(nu, x, alpha, beta, w)
    # An empty set (only reachable when the check was skipped) leaves w^T z != c: say so with NaN.
    scale = jnp.sum(jnp.abs(w) * jnp.maximum(jnp.abs(alpha), jnp.abs(beta))) + jnp.abs(c) + 1.0
    bad = jnp.abs(jnp.vdot(w, jax.lax.stop_gradient(z)) - c) > 1e3 * jnp.finfo(x.dtype).eps * scale
    return jnp.where(jax.lax.stop_gradient(bad), jnp.nan, z)


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


def isotonic_l2_pav(
    y: jax.Array, y_min: Any = -jnp.inf, y_max: Any = jnp.inf, increasing: bool = True
) -> jax.Array:
    r"""Bounded isotonic regression under JAXopt's name (``jaxopt.isotonic.isotonic_l2_pav``).

    .. math::  \operatorname*{argmin}_{y_{\min} \le v_1 \le \dots \le v_n \le y_{\max}} \|v - y\|_2^2

    (``increasing=False``: :math:`v_1 \ge \dots \ge v_n`). Solved as :func:`isotonic_regression`
    followed by clipping to :math:`[y_{\min}, y_{\max}]`, which is exact for bounds common to all
    coordinates (clipping is monotone, and a pooled block's mean lies outside the bounds only
    if the clipped values are optimal). Jacobian: block averaging composed with the clip.

    Args:
      y: vector of shape ``(n,)``.
      y_min: lower bound on every value (scalar, default :math:`-\infty`).
      y_max: upper bound on every value (scalar, default :math:`+\infty`), ``y_min <= y_max``.
      increasing: order of the constraints.
    """
    v = isotonic_regression(y, increasing=increasing)
    if is_concrete(y_min, y_max) and float(np.asarray(y_min)) > float(np.asarray(y_max)):
        raise ValueError(f"y_min, y_max: expected y_min <= y_max, got ({y_min}, {y_max})")
    return jnp.clip(v, jnp.asarray(y_min, v.dtype), jnp.asarray(y_max, v.dtype))


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


def projection_non_negative_kl(x: PyTree, hyperparams: object = None) -> PyTree:
    r"""KL projection onto the non-negative orthant.

    .. math::  \operatorname*{argmin}_{z \ge 0} \langle z, \log z - 1 - x\rangle = e^x.

    Args:
      x: array or pytree of arrays.
      hyperparams: ignored.
    """
    del hyperparams
    return jax.tree_util.tree_map(jnp.exp, x)


def projection_simplex_kl(x: jax.Array, value: Optional[ArrayLike] = 1.0) -> jax.Array:
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


def _run_make_solver(make_solver: Callable, fun: Callable, init: PyTree) -> PyTree:
    """Minimise ``fun`` from ``init`` with a JAXopt-style solver ``make_solver(fun).run(init)``."""
    out = make_solver(fun).run(init)
    if hasattr(out, "params"):
        return out.params
    return out[0] if isinstance(out, tuple) else out


def _transport_args(name: str, x: Any, marginals: Any, strict: bool) -> tuple:
    a, b = _check_pair(name, marginals, "(a, b) of marginals")
    x = _float(x)
    a, b = jnp.asarray(a, dtype=x.dtype), jnp.asarray(b, dtype=x.dtype)
    if x.ndim != 2 or a.shape != (x.shape[0],) or b.shape != (x.shape[1],):
        raise ValueError(
            f"marginals: {name} expects x (p, d), a (p,), b (d,); got x {x.shape}, a {a.shape}, b {b.shape}"
        )
    if is_concrete(a, b):
        an, bn = np.asarray(a), np.asarray(b)
        if strict and (np.any(an <= 0) or np.any(bn <= 0)):
            raise ValueError(f"marginals: {name} expects strictly positive marginals a, b")
        if not strict and (np.any(an < 0) or np.any(bn < 0)):
            raise ValueError(f"marginals: {name} expects non-negative marginals a, b")
        if not np.isclose(an.sum(), bn.sum(), rtol=1e-6, atol=0.0):
            raise ValueError(f"marginals: must have equal sums, got sum(a)={an.sum()}, sum(b)={bn.sum()}")
    return x, a, b


def _to_gauge(f: jax.Array, g: jax.Array) -> tuple:
    """``(f, g) -> (f + g_d, g - g_d)[:, :-1]``: the representative with ``g_d = 0``, ``g_d`` dropped."""
    return f + g[-1], (g - g[-1])[:-1]


def _from_gauge(g_head: jax.Array) -> jax.Array:
    return jnp.concatenate([g_head, jnp.zeros((1,), g_head.dtype)])


# KL (entropic) projection -----------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _sinkhorn(x: jax.Array, log_a: jax.Array, log_b: jax.Array, max_iter: int, tol: float, f0=None) -> tuple:
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

    f0 = jnp.zeros(x.shape[0], x.dtype) if f0 is None else f0
    g0 = log_b - jax.nn.logsumexp(x + f0[:, None], axis=0)
    f, g, _, _ = jax.lax.while_loop(cond, body, (f0, g0, row_error(f0, g0), 0))
    return f, g


def _kl_transport_optimality(sol, x, log_a, log_b):
    """Marginal conditions in log scale, with the gauge ``g_d = 0`` and the last column condition dropped.

    ``(f, g) -> (f + c, g - c)`` leaves the plan unchanged, so the full system is singular; pinning
    ``g_d = 0`` removes that direction and dropping one column equation (implied by the others when
    ``sum(a) == sum(b)``) keeps the system square and nonsingular.
    """
    f, g_head = sol
    logits = f[:, None] + x + _from_gauge(g_head)[None, :]
    rows = jax.nn.logsumexp(logits, axis=1) - log_a
    cols = jax.nn.logsumexp(logits, axis=0) - log_b
    return rows, cols[:-1]


def kl_projection_transport(
    sim_matrix: jax.Array,
    marginals: tuple,
    make_solver: Optional[Callable] = None,
    use_semi_dual: bool = True,
    max_iter: int = 2000,
    tol: Optional[float] = None,
) -> jax.Array:
    r"""KL projection onto the transportation polytope :math:`U(a, b) = \{P \ge 0 : P 1 = a,\ P^\top 1 = b\}`.

    .. math::  P^\star = \operatorname*{argmin}_{P \in U(a, b)} \mathrm{KL}(P, e^{S})
               = \operatorname*{argmin}_{P \in U(a, b)} \langle P, \log P - 1 - S \rangle
               = \mathrm{diag}(e^{f}) \, e^{S} \, \mathrm{diag}(e^{g}),

    i.e. entropy-regularised optimal transport with cost :math:`C = -S`. The dual potentials
    :math:`(f, g)` minimise the dual :math:`\sum_{ij} e^{f_i + S_{ij} + g_j} - f^\top a - g^\top b`,
    or, eliminating :math:`g_j = \log b_j - \mathrm{logsumexp}_i(f_i + S_{ij})`, the semi-dual
    :math:`\sum_j b_j\, \mathrm{logsumexp}_i(f_i + S_{ij}) - f^\top a`. By default they are
    computed by log-domain Sinkhorn (stopped when :math:`\|P1 - a\|_1 \le` ``tol`` or after
    ``max_iter`` sweeps); with ``make_solver`` (JAXopt's option, e.g.
    ``lambda fun: jaxopt.LBFGS(fun=fun, tol=1e-6)``) that solver minimises the semi-dual
    (``use_semi_dual=True``) or the dual. Either way :math:`g` is finally recomputed from
    :math:`f` in closed form, so the column marginals hold to round-off.

    Derivatives come from the implicit function theorem on the marginal conditions
    :math:`\mathrm{logsumexp}_j(f_i + S_{ij} + g_j) = \log a_i`, :math:`\mathrm{logsumexp}_i(\cdot) =
    \log b_j`, whose null direction :math:`(f + t, g - t)` is removed by fixing :math:`g_d = 0` (and
    dropping the redundant last column equation). Derivatives with respect to ``(a, b)`` are
    meaningful only along directions that keep ``sum(a) == sum(b)``.

    Args:
      sim_matrix: similarity matrix :math:`S` of shape ``(p, d)``.
      marginals: ``(a, b)``, strictly positive, shapes ``(p,)`` and ``(d,)``, equal sums.
      make_solver: optional ``make_solver(fun)`` returning an object whose ``run(init)`` minimises
        ``fun`` (e.g. a JAXopt solver); ``None`` uses Sinkhorn.
      use_semi_dual: with ``make_solver``, minimise the semi-dual in :math:`f` (else the dual in
        :math:`(f, g)`). Ignored by Sinkhorn.
      max_iter: maximum number of Sinkhorn sweeps.
      tol: Sinkhorn tolerance on the row-marginal error (default ``1e-10`` in float64, ``1e-6`` in
        float32).
    """
    x, a, b = _transport_args("kl_projection_transport", sim_matrix, marginals, strict=True)
    if tol is None:
        tol = 1e-10 if x.dtype == jnp.float64 else 1e-6
    log_a, log_b = jnp.log(a), jnp.log(b)
    xs, la, lb = jax.lax.stop_gradient((x, log_a, log_b))
    if make_solver is None:
        f, g = _sinkhorn(xs, la, lb, max_iter=max_iter, tol=tol)
    else:
        bs = jnp.exp(lb)
        as_ = jnp.exp(la)
        if use_semi_dual:

            def semi_dual(f):
                return jnp.vdot(bs, jax.nn.logsumexp(f[:, None] + xs, axis=0)) - jnp.vdot(f, as_)

            f = _run_make_solver(make_solver, semi_dual, jnp.zeros(x.shape[0], x.dtype))
        else:

            def dual(fg):
                f, g = fg
                return jnp.sum(jnp.exp(f[:, None] + xs + g[None, :])) - jnp.vdot(f, as_) - jnp.vdot(g, bs)

            f, _ = _run_make_solver(make_solver, dual, (jnp.zeros(x.shape[0], x.dtype), jnp.zeros(x.shape[1], x.dtype)))
        g = lb - jax.nn.logsumexp(xs + f[:, None], axis=0)  # exact column marginals
    f, g_head = implicit_solution(_kl_transport_optimality, _to_gauge(f, g), (x, log_a, log_b))
    return jnp.exp(f[:, None] + x + _from_gauge(g_head)[None, :])


def kl_projection_birkhoff(
    sim_matrix: jax.Array,
    make_solver: Optional[Callable] = None,
    use_semi_dual: bool = True,
    max_iter: int = 2000,
    tol: Optional[float] = None,
) -> jax.Array:
    r"""KL projection onto the Birkhoff polytope (doubly stochastic matrices: rows and columns sum to 1).

    :func:`kl_projection_transport` with :math:`a = b = \mathbf 1_n`; see there for the math
    and the options.

    Args:
      sim_matrix: square matrix of shape ``(n, n)``.
      make_solver: optional solver factory (see :func:`kl_projection_transport`).
      use_semi_dual: with ``make_solver``, minimise the semi-dual.
      max_iter: maximum number of Sinkhorn sweeps.
      tol: tolerance on the marginal error.
    """
    x = _float(sim_matrix)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"sim_matrix: kl_projection_birkhoff expects a square matrix, got shape {x.shape}")
    ones = jnp.ones(x.shape[0], x.dtype)
    return kl_projection_transport(x, (ones, ones), make_solver, use_semi_dual, max_iter=max_iter, tol=tol)


# Euclidean projection ----------------------------------------------------------------------


def _euclid_plan(x, f, g):
    return jnp.maximum(x + f[:, None] + g[None, :], 0)


@functools.partial(jax.jit, static_argnames=("max_iter", "newton_steps"))
def _euclid_transport_dual(x, a, b, f0, max_iter: int, tol: "float | jax.Array", newton_steps: int = 8) -> tuple:
    """Dual potentials ``(f, g)`` with ``P = max(x + f 1^T + 1 g^T, 0)`` of marginals ``(a, b)``.

    Exact block minimisation of the (concave) dual, alternating over rows and columns -- each
    block is a set of independent simplex projections -- until the row-marginal error is below
    ``tol``, then semismooth Newton steps (the marginals are linear in ``(f, g)`` on a fixed
    support), each kept only if it lowers the marginal error.
    """
    tau = jax.vmap(_simplex_tau, in_axes=(0, 0))

    def col_step(f):
        return -tau((x + f[:, None]).T, b)

    def row_step(g):
        return -tau(x + g[None, :], a)

    def error(f, g):
        P = _euclid_plan(x, f, g)
        return jnp.sum(jnp.abs(P.sum(1) - a)) + jnp.sum(jnp.abs(P.sum(0) - b))

    def cond(state):
        _, _, err, it = state
        return (err > tol) & (it < max_iter)

    def body(state):
        f, g, _, it = state
        f = row_step(g)
        g = col_step(f)
        return f, g, error(f, g), it + 1

    g0 = col_step(f0)
    f, g, err, _ = jax.lax.while_loop(cond, body, (f0, g0, error(f0, g0), 0))

    p, d = x.shape

    def newton(_, state):
        f, g, err = state
        S = (x + f[:, None] + g[None, :] > 0).astype(x.dtype)
        H = jnp.block([[jnp.diag(S.sum(1)), S], [S.T, jnp.diag(S.sum(0))]])
        rhs = jnp.concatenate([a - (S * x).sum(1), b - (S * x).sum(0)])
        fg = jnp.linalg.pinv(H) @ rhs  # minimum norm: the gauge direction (1, -1) is free
        f_n, g_n = fg[:p], fg[p:]
        err_n = error(f_n, g_n)
        better = err_n < err
        return jnp.where(better, f_n, f), jnp.where(better, g_n, g), jnp.where(better, err_n, err)

    f, g, _ = jax.lax.fori_loop(0, newton_steps, newton, (f, g, err))
    return f, g


def _euclid_transport_optimality(sol, x, a, b):
    """Marginal conditions of ``P = max(x + f 1^T + 1 g^T, 0)``, gauge ``g_d = 0``, last column dropped."""
    f, g_head = sol
    P = _euclid_plan(x, f, _from_gauge(g_head))
    return P.sum(1) - a, (P.sum(0) - b)[:-1]


def projection_transport(
    sim_matrix: jax.Array,
    marginals: tuple,
    make_solver: Optional[Callable] = None,
    use_semi_dual: bool = True,
    max_iter: int = 10000,
    tol: Optional[float] = None,
) -> jax.Array:
    r"""Euclidean projection onto the transportation polytope :math:`U(a, b) = \{P \ge 0 : P 1 = a,\ P^\top 1 = b\}`.

    .. math::  P^\star = \operatorname*{argmin}_{P \in U(a, b)} \tfrac12 \|P - S\|_F^2
               = \max(S + f 1^\top + 1 g^\top, 0),

    i.e. quadratically regularised optimal transport with cost :math:`C = -S` (as JAXopt's
    ``projection_transport``; the entropic version is :func:`kl_projection_transport`). The dual
    potentials minimise :math:`D(f, g) = \tfrac12\|\max(S + f1^\top + 1g^\top, 0)\|^2 - f^\top a -
    g^\top b`; eliminating :math:`g` (each column of :math:`P` is then the projection of
    :math:`S_{:j} + f` onto the simplex of mass :math:`b_j`) gives the semi-dual in :math:`f`.

    Built-in solver: exact block minimisation of :math:`D` over :math:`f` and :math:`g` in turn
    (row-wise and column-wise simplex projections) until :math:`\|P1 - a\|_1 + \|P^\top 1 - b\|_1
    \le` ``tol``, finished by semismooth Newton steps on the support (exact once the support is
    identified). With ``make_solver`` (JAXopt's option) that solver minimises the semi-dual
    (``use_semi_dual=True``) or the dual instead. Either way :math:`g` is finally recomputed from
    :math:`f` by the exact column step, so the column marginals hold to round-off.

    Derivatives come from the implicit function theorem on the marginal conditions
    :math:`P1 = a`, :math:`P^\top 1 = b` in :math:`(f, g)` with the gauge :math:`g_d = 0` (last
    column equation dropped); the system is nonsingular when the bipartite graph of the support of
    :math:`P^\star` is connected, and the minimum-norm derivative is returned otherwise.
    Derivatives with respect to ``(a, b)`` are meaningful only along directions keeping
    ``sum(a) == sum(b)``.

    Args:
      sim_matrix: similarity matrix :math:`S` of shape ``(p, d)``.
      marginals: ``(a, b)``, non-negative, shapes ``(p,)`` and ``(d,)``, equal sums.
      make_solver: optional ``make_solver(fun)`` returning an object whose ``run(init)`` minimises
        ``fun`` (e.g. a JAXopt solver); ``None`` uses the built-in solver.
      use_semi_dual: with ``make_solver``, minimise the semi-dual in :math:`f` (else the dual in
        :math:`(f, g)`). Ignored by the built-in solver.
      max_iter: maximum number of block-minimisation sweeps of the built-in solver.
      tol: its tolerance on the marginal error (default ``1e-12`` in float64, ``1e-6`` in float32,
        times ``sum(a)``).
    """
    x, a, b = _transport_args("projection_transport", sim_matrix, marginals, strict=False)
    xs, as_, bs = jax.lax.stop_gradient((x, a, b))
    # Relative to the total mass sum(a): a traced value, hence an array rather than a float.
    tol_abs = (1e-12 if x.dtype == jnp.float64 else 1e-6) * jnp.sum(as_) if tol is None else tol
    col_tau = jax.vmap(_simplex_tau, in_axes=(0, 0))

    def col_step(f):
        return -col_tau((xs + f[:, None]).T, bs)

    f0 = jnp.zeros(x.shape[0], x.dtype)
    if make_solver is None:
        f, g = _euclid_transport_dual(xs, as_, bs, f0, max_iter=max_iter, tol=tol_abs)
    else:
        if use_semi_dual:

            def semi_dual(f):
                g = jax.lax.stop_gradient(col_step(f))  # Danskin: g(f) carries no gradient term
                P = _euclid_plan(xs, f, g)
                return 0.5 * jnp.sum(P * P) - jnp.vdot(f, as_) - jnp.vdot(g, bs)

            f = _run_make_solver(make_solver, semi_dual, f0)
        else:

            def dual(fg):
                f, g = fg
                P = _euclid_plan(xs, f, g)
                return 0.5 * jnp.sum(P * P) - jnp.vdot(f, as_) - jnp.vdot(g, bs)

            f, _ = _run_make_solver(make_solver, dual, (f0, jnp.zeros(x.shape[1], x.dtype)))
        g = col_step(f)  # exact column marginals
    f, g_head = implicit_solution(_euclid_transport_optimality, _to_gauge(f, g), (x, a, b))
    return _euclid_plan(x, f, _from_gauge(g_head))


def projection_birkhoff(
    sim_matrix: jax.Array,
    make_solver: Optional[Callable] = None,
    use_semi_dual: bool = True,
    max_iter: int = 10000,
    tol: Optional[float] = None,
) -> jax.Array:
    r"""Euclidean projection onto the Birkhoff polytope (doubly stochastic matrices).

    .. math::  \operatorname*{argmin}_{P \ge 0,\ P1 = 1,\ P^\top 1 = 1} \tfrac12 \|P - S\|_F^2.

    :func:`projection_transport` with :math:`a = b = \mathbf 1_n` (as JAXopt's
    ``projection_birkhoff``); the KL version is :func:`kl_projection_birkhoff`.

    Args:
      sim_matrix: square matrix of shape ``(n, n)``.
      make_solver: optional solver factory (see :func:`projection_transport`).
      use_semi_dual: with ``make_solver``, minimise the semi-dual.
      max_iter: maximum number of sweeps of the built-in solver.
      tol: its tolerance on the marginal error.
    """
    x = _float(sim_matrix)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"sim_matrix: projection_birkhoff expects a square matrix, got shape {x.shape}")
    ones = jnp.ones(x.shape[0], x.dtype)
    return projection_transport(x, (ones, ones), make_solver, use_semi_dual, max_iter=max_iter, tol=tol)
