r"""Proximity operators with closed forms, differentiable in the point and the regularisation strength.

Every operator has the JAXopt-style signature ``prox_xxx(x, hyperparams=None, scaling=1.0)`` and computes

.. math::  \mathrm{prox}_{s g}(x) = \operatorname*{argmin}_{y} \tfrac12 \|y - x\|_2^2 + s\, g(y; \lambda),

with ``s = scaling`` and ``λ = hyperparams``. All are closed forms left to autodiff (paper, App. B.2):
their Jacobians are piecewise constant/smooth and exact away from the kinks.

Elementwise operators accept a pytree ``x``; ``hyperparams`` is then a scalar, an array
broadcastable to every leaf, or a pytree with the structure of ``x``. Strengths must be
non-negative (checked with a ``ValueError`` when the values are concrete).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kktbridge.core._checks import check_nonnegative
from kktbridge.core._types import PyTree

__all__ = [
    "prox_none",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_elastic_net",
    "prox_ridge",
    "prox_non_negative_ridge",
    "prox_group_lasso",
    "make_prox_from_projection",
]


def _map(fn: Callable, x: PyTree, *hypers: Any) -> PyTree:
    """Apply ``fn(leaf, *h)`` leafwise; a hyperparameter shaped like the pytree ``x`` is mapped jointly."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    columns = []
    for h in hypers:
        if not jax.tree_util.treedef_is_leaf(treedef) and jax.tree_util.tree_structure(h) == treedef:
            columns.append(treedef.flatten_up_to(h))
        else:  # broadcast one value to every leaf
            columns.append([h] * len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [fn(leaf, *hs) for leaf, *hs in zip(leaves, *columns)])


def _soft(x: jax.Array, t: Any) -> jax.Array:
    """Soft thresholding ``sign(x) max(|x| - t, 0)`` written to be differentiable in ``t`` too."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0)


def prox_none(x: PyTree, hyperparams: object = None, scaling: ArrayLike = 1.0) -> PyTree:
    r"""Proximity operator of :math:`g = 0`: the identity.

    Args:
      x: array or pytree.
      hyperparams: ignored.
      scaling: ignored.
    """
    del hyperparams, scaling
    return x


def prox_lasso(x: PyTree, hyperparams: Optional[PyTree] = None, scaling: ArrayLike = 1.0) -> PyTree:
    r"""Soft thresholding, the prox of :math:`g(y) = \lambda \|y\|_1`:

    .. math::  \mathrm{prox}_{s g}(x) = \mathrm{sign}(x) \max(|x| - s\lambda, 0).

    Args:
      x: array or pytree.
      hyperparams: :math:`\lambda \ge 0` (default 1.0).
      scaling: :math:`s \ge 0`.
    """
    lam = 1.0 if hyperparams is None else hyperparams
    check_nonnegative("hyperparams (l1 strength)", lam)
    check_nonnegative("scaling", scaling)
    return _map(lambda leaf, l: _soft(leaf, scaling * l), x, lam)


def prox_non_negative_lasso(x: PyTree, hyperparams: Optional[PyTree] = None, scaling: ArrayLike = 1.0) -> PyTree:
    r"""Prox of :math:`g(y) = \lambda \sum_i y_i + \iota_{y \ge 0}(y)`:

    .. math::  \mathrm{prox}_{s g}(x) = \max(x - s\lambda, 0).

    Args:
      x: array or pytree.
      hyperparams: :math:`\lambda \ge 0` (default 1.0).
      scaling: :math:`s \ge 0`.
    """
    lam = 1.0 if hyperparams is None else hyperparams
    check_nonnegative("hyperparams (l1 strength)", lam)
    check_nonnegative("scaling", scaling)
    return _map(lambda leaf, l: jnp.maximum(leaf - scaling * l, 0), x, lam)


def prox_elastic_net(x: PyTree, hyperparams: Optional[PyTree] = None, scaling: ArrayLike = 1.0) -> PyTree:
    r"""Prox of the elastic net :math:`g(y) = \lambda \big(\|y\|_1 + \tfrac{\gamma}{2} \|y\|_2^2\big)`:

    .. math::  \mathrm{prox}_{s g}(x) = \frac{\mathrm{sign}(x) \max(|x| - s\lambda, 0)}{1 + s\lambda\gamma}.

    JAXopt's parametrisation ``(λ, γ)``: the l1 strength is :math:`\lambda` and the l2 strength
    :math:`\lambda\gamma`. (Before the JAXopt-compatibility release kktbridge read
    ``hyperparams`` as ``(l1, l2)``; to keep strengths ``(l1, l2)`` pass ``(l1, l2 / l1)``.)

    Args:
      x: array or pytree.
      hyperparams: ``(lam, gamma)``, both :math:`\ge 0` (default ``(1.0, 1.0)``); each a scalar, an
        array broadcastable to every leaf, or a pytree with the structure of ``x``.
      scaling: :math:`s \ge 0`.
    """
    if hyperparams is None:
        hyperparams = (1.0, 1.0)
    if not isinstance(hyperparams, (tuple, list)) or len(hyperparams) != 2:
        raise ValueError("hyperparams: prox_elastic_net expects a pair (lam, gamma)")
    lam, gamma = hyperparams
    check_nonnegative("hyperparams[0] (l1 strength lam)", lam)
    check_nonnegative("hyperparams[1] (l2 ratio gamma)", gamma)
    check_nonnegative("scaling", scaling)
    return _map(lambda leaf, a, b: _soft(leaf, scaling * a) / (1 + scaling * a * b), x, lam, gamma)


def prox_ridge(x: PyTree, hyperparams: Optional[PyTree] = None, scaling: ArrayLike = 1.0) -> PyTree:
    r"""Prox of :math:`g(y) = \tfrac{\lambda}{2}\|y\|_2^2`: :math:`x / (1 + s\lambda)`.

    Args:
      x: array or pytree.
      hyperparams: :math:`\lambda \ge 0` (default 1.0).
      scaling: :math:`s \ge 0`.
    """
    lam = 1.0 if hyperparams is None else hyperparams
    check_nonnegative("hyperparams (l2 strength)", lam)
    check_nonnegative("scaling", scaling)
    return _map(lambda leaf, l: leaf / (1 + scaling * l), x, lam)


def prox_non_negative_ridge(x: PyTree, hyperparams: Optional[PyTree] = None, scaling: ArrayLike = 1.0) -> PyTree:
    r"""Prox of :math:`g(y) = \tfrac{\lambda}{2}\|y\|_2^2 + \iota_{y \ge 0}(y)`: :math:`\max(x, 0) / (1 + s\lambda)`.

    Args:
      x: array or pytree.
      hyperparams: :math:`\lambda \ge 0` (default 1.0).
      scaling: :math:`s \ge 0`.
    """
    lam = 1.0 if hyperparams is None else hyperparams
    check_nonnegative("hyperparams (l2 strength)", lam)
    check_nonnegative("scaling", scaling)
    return _map(lambda leaf, l: jnp.maximum(leaf, 0) / (1 + scaling * l), x, lam)


def prox_group_lasso(x: jax.Array, hyperparams: Optional[PyTree] = None, scaling: ArrayLike = 1.0) -> jax.Array:
    r"""Block soft thresholding, the prox of :math:`g(y) = \lambda \|y\|_2`:

    .. math::  \mathrm{prox}_{s g}(x) = \max\Big(1 - \frac{s\lambda}{\|x\|_2}, 0\Big)\, x.

    The whole array is one group. For several groups stack them as rows of equal length and use
    ``jax.vmap(prox_group_lasso, in_axes=(0, None))(X, lam)`` (or ``in_axes=(0, 0)`` for one
    strength per group).

    Args:
      x: array (one group).
      hyperparams: :math:`\lambda \ge 0` scalar (default 1.0).
      scaling: :math:`s \ge 0`.
    """
    lam = 1.0 if hyperparams is None else hyperparams
    check_nonnegative("hyperparams (group strength)", lam)
    check_nonnegative("scaling", scaling)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    sq = jnp.sum(x * x)
    t = scaling * lam
    shrink = sq > t * t  # outside the ball of radius t: shrink, else the group is zeroed
    # Guard the norm so that x = 0 (always zeroed) gives a finite gradient.
    norm = jnp.sqrt(jnp.where(shrink, sq, 1.0))
    return jnp.where(shrink, 1 - t / norm, 0.0) * x


def make_prox_from_projection(projection: Callable) -> Callable:
    r"""Turn a projection onto a convex set :math:`C` into the prox of its indicator :math:`\iota_C`.

    .. math::  \mathrm{prox}_{s\,\iota_C}(x) = \operatorname*{argmin}_y \tfrac12\|y - x\|^2
               + s\,\iota_C(y) = \mathrm{proj}_C(x) \quad \text{for every } s > 0,

    so ``scaling`` is ignored.

    Args:
      projection: ``projection(x, hyperparams) -> z``, e.g. :func:`kktbridge.projection.projection_simplex`.

    Returns:
      ``prox(x, hyperparams=None, scaling=1.0)`` calling ``projection(x, hyperparams)``.
    """

    def prox(x: PyTree, hyperparams: Any = None, scaling: ArrayLike = 1.0) -> PyTree:
        del scaling  # the indicator is invariant to positive scaling
        return projection(x, hyperparams)

    prox.__name__ = f"prox_from_{getattr(projection, '__name__', 'projection')}"
    prox.__doc__ = f"Prox of the indicator of the set of ``{getattr(projection, '__name__', 'projection')}``."
    return prox
