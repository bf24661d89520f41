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

from typing import Any, Callable

import jax
import jax.numpy as jnp

from kktbridge.core._checks import check_nonnegative

PyTree = Any

__all__ = [
    "prox_none",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_elastic_net",
    "prox_ridge",
    "prox_non_negative_ridge",
    "prox_group_lasso",
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


def prox_none(x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
    r"""Proximity operator of :math:`g = 0`: the identity.

    Args:
      x: array or pytree.
      hyperparams: ignored.
      scaling: ignored.
    """
    del hyperparams, scaling
    return x


def prox_lasso(x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
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


def prox_non_negative_lasso(x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
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


def prox_elastic_net(x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
    r"""Prox of the elastic net :math:`g(y) = \lambda_1 \|y\|_1 + \tfrac{\lambda_2}{2} \|y\|_2^2`:

    .. math::  \mathrm{prox}_{s g}(x) = \frac{\mathrm{sign}(x) \max(|x| - s\lambda_1, 0)}{1 + s\lambda_2}.

    Note the parametrisation ``(l1, l2)`` of the two strengths; JAXopt uses ``(λ, γ)`` with
    :math:`\lambda_1 = \lambda`, :math:`\lambda_2 = \lambda\gamma`.

    Args:
      x: array or pytree.
      hyperparams: ``(l1, l2)``, both :math:`\ge 0` (default ``(1.0, 1.0)``).
      scaling: :math:`s \ge 0`.
    """
    if hyperparams is None:
        hyperparams = (1.0, 1.0)
    if not isinstance(hyperparams, (tuple, list)) or len(hyperparams) != 2:
        raise ValueError("hyperparams: prox_elastic_net expects a pair (l1, l2)")
    l1, l2 = hyperparams
    check_nonnegative("hyperparams[0] (l1 strength)", l1)
    check_nonnegative("hyperparams[1] (l2 strength)", l2)
    check_nonnegative("scaling", scaling)
    return _map(lambda leaf, a, b: _soft(leaf, scaling * a) / (1 + scaling * b), x, l1, l2)


def prox_ridge(x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
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


def prox_non_negative_ridge(x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
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


def prox_group_lasso(x: jax.Array, hyperparams: Any = None, scaling: Any = 1.0) -> jax.Array:
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
