r"""Catalog of optimality conditions and fixed-point maps (paper Table 1, Sec. 2.2 and App. C).

Every factory returns a plain JAX function to hand to :func:`~kktbridge.custom_root` (a residual
``F(x, *args)`` whose root is the solution) or :func:`~kktbridge.custom_fixed_point` (a map
``T(x, *args)`` whose fixed point is the solution, i.e. ``F = T - id``). The conventions follow
JAXopt:

* ``fun(x, *args)`` is the smooth part of the objective, differentiated in ``x`` by autodiff.
* ``prox(y, hyperparams, scaling)`` is the proximity operator of ``scaling * g(·, hyperparams)``:
  :math:`\mathrm{prox}_{ηg}(y, θ) = \arg\min_x \tfrac12\|x - y\|^2 + η\, g(x, θ)`.
* ``projection(y, hyperparams)`` is the projection onto ``C(hyperparams)`` (Euclidean for the
  projected gradient map, Bregman -- mirror map included -- for the mirror descent map).

The solution ``x`` may be any pytree wherever the formula is elementwise (``x - η∇f``); the Newton
maps flatten it with :func:`jax.flatten_util.ravel_pytree` to form the dense (inverse) Hessian.

For a stationary point the step size ``η > 0`` cancels out of the implicit-differentiation linear
system, so the derivative does not depend on it; it only matters for how well-conditioned that
system is (``A = η ∇²f`` for gradient descent).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from kktbridge.core._conic import ConicPoint, conic_residual_map
from kktbridge.core._kkt import KKTPoint, kkt_residual
from kktbridge.core._types import PyTree

Prox = Callable[[PyTree, Any, Any], PyTree]
Projection = Callable[[PyTree, Any], PyTree]

__all__ = [
    "stationarity_fun",
    "kkt_residual",
    "kkt_fun",
    "KKTPoint",
    "gradient_descent_fixed_point",
    "proximal_gradient_fixed_point",
    "projected_gradient_fixed_point",
    "mirror_descent_fixed_point",
    "newton_fixed_point",
    "newton_root_fixed_point",
    "block_proximal_gradient_fixed_point",
    "conic_residual_map",
    "ConicPoint",
]

#: Name of the KKT residual in the catalog (Table 1); the single implementation is
#: :func:`kktbridge.core._kkt.kkt_residual`.
kkt_fun = kkt_residual


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_callable(value: Any, name: str, what: str) -> None:
    if not callable(value):
        raise ValueError(f"{name}: expected a callable {what}, got {type(value).__name__}")


def _check_stepsize(stepsize: Any, name: str = "stepsize") -> None:
    """Reject non-positive step sizes when they are concrete (traced values cannot be checked)."""
    if isinstance(stepsize, bool) or not isinstance(stepsize, (numbers.Real, jax.Array, np.ndarray)):
        raise ValueError(f"{name}: expected a positive real number, got {type(stepsize).__name__}")
    shape = () if isinstance(stepsize, numbers.Real) else tuple(stepsize.shape)  # a Real is a scalar
    if shape != ():
        raise ValueError(f"{name}: expected a scalar, got an array of shape {shape}")
    try:
        value = float(stepsize)
    except jax.errors.ConcretizationTypeError:
        return  # traced inside jit: positivity is the caller's responsibility
    if not value > 0:
        raise ValueError(f"{name}: expected a positive real number, got {stepsize}")


def _with_signature(f: Callable, reference: Callable) -> Callable:
    """Give ``f`` the signature of ``reference`` so that ``custom_root`` binds keywords by name."""
    try:
        f.__signature__ = inspect.signature(reference)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass  # builtins / C callables without an introspectable signature: keep ``(x, *args, **kwargs)``
    return f


def _step(x: PyTree, grad: PyTree, stepsize: Any) -> PyTree:
    """``x - η ∇`` leafwise."""
    return jax.tree_util.tree_map(lambda a, g: a - stepsize * g, x, grad)


# --------------------------------------------------------------------------------------------
# Stationarity (4) and gradient descent (5)
# --------------------------------------------------------------------------------------------


def stationarity_fun(fun: Callable[..., jax.Array]) -> Callable[..., PyTree]:
    r"""Stationarity condition of an unconstrained problem (paper eq. 4).

    For :math:`x^\star(θ) = \arg\min_x f(x, θ)` with ``f`` twice differentiable, the solution is a
    root of

    .. math::  F(x, θ) = ∇_1 f(x, θ),

    so :math:`A = -∂_1F = -∇_1^2 f` and :math:`B = ∂_2 ∇_1 f`.

    Args:
      fun: ``f(x, *args, **kwargs) -> scalar``; ``x`` may be a pytree.

    Returns:
      ``F(x, *args, **kwargs) -> ∇_1 f(x, *args, **kwargs)`` (same structure as ``x``), carrying
      ``fun``'s signature so keyword arguments bind by name in :func:`~kktbridge.custom_root`.
    """
    _check_callable(fun, "fun", "objective fun(x, *args) -> scalar")

    def F(x, *args, **kwargs):
        return jax.grad(fun)(x, *args, **kwargs)

    return _with_signature(F, fun)


def gradient_descent_fixed_point(fun: Callable[..., jax.Array], stepsize: float = 1.0) -> Callable[..., PyTree]:
    r"""Gradient descent fixed point (paper eq. 5).

    .. math::  T(x, θ) = x - η ∇_1 f(x, θ).

    A fixed point of ``T`` is a stationary point of ``f`` for any ``η > 0``; ``η`` cancels out of the
    implicit system (:math:`A = η∇_1^2 f`, :math:`B = -η ∂_2∇_1 f`).

    Args:
      fun: ``f(x, *args, **kwargs) -> scalar``; ``x`` may be a pytree.
      stepsize: ``η > 0``.

    Returns:
      ``T(x, *args, **kwargs)`` with ``fun``'s signature, for :func:`~kktbridge.custom_fixed_point`.
    """
    _check_callable(fun, "fun", "objective fun(x, *args) -> scalar")
    _check_stepsize(stepsize)

    def T(x, *args, **kwargs):
        return _step(x, jax.grad(fun)(x, *args, **kwargs), stepsize)

    return _with_signature(T, fun)


# --------------------------------------------------------------------------------------------
# Proximal (7), projected (9) and mirror descent (11) fixed points
# --------------------------------------------------------------------------------------------


def proximal_gradient_fixed_point(
    fun: Callable[[PyTree, Any], jax.Array],
    prox: Optional[Prox],
    stepsize: float = 1.0,
) -> Callable[[PyTree, Any, Any], PyTree]:
    r"""Proximal gradient fixed point (paper eq. 7).

    For :math:`x^\star(θ) = \arg\min_x f(x, θ_f) + g(x, θ_g)` with ``f`` smooth and ``g`` convex,

    .. math::  T(x, θ_f, θ_g) = \mathrm{prox}_{ηg}\big(x - η∇_1 f(x, θ_f),\; θ_g\big),

    for any ``η > 0``. The prox is 1-Lipschitz, hence differentiable almost everywhere; autodiff of
    its closed form gives the (generalised) Jacobian the implicit system needs.

    Args:
      fun: ``f(x, fun_params) -> scalar``. ``fun_params`` is a single argument (pass a tuple or dict
        and unpack it inside ``fun`` for several).
      prox: ``prox(y, prox_params, scaling)``, the proximity operator of ``scaling * g``; ``None`` means
        ``g = 0`` (``T`` is then the gradient descent map and ``prox_params`` is ignored).
      stepsize: ``η > 0``.

    Returns:
      ``T(x, fun_params, prox_params)``.
    """
    _check_callable(fun, "fun", "objective fun(x, fun_params) -> scalar")
    if prox is not None:
        _check_callable(prox, "prox", "proximity operator prox(y, prox_params, scaling)")
    _check_stepsize(stepsize)

    def T(x, fun_params, prox_params):
        y = _step(x, jax.grad(fun)(x, fun_params), stepsize)
        return y if prox is None else prox(y, prox_params, stepsize)

    return T


def projected_gradient_fixed_point(
    fun: Callable[[PyTree, Any], jax.Array],
    projection: Projection,
    stepsize: float = 1.0,
) -> Callable[[PyTree, Any, Any], PyTree]:
    r"""Projected gradient fixed point (paper eq. 9).

    For :math:`x^\star(θ) = \arg\min_{x ∈ C(θ_C)} f(x, θ_f)`, the prox of the indicator of ``C`` is
    the Euclidean projection, and

    .. math::  T(x, θ_f, θ_C) = \mathrm{proj}_{C}\big(x - η∇_1 f(x, θ_f),\; θ_C\big).

    Args:
      fun: ``f(x, fun_params) -> scalar``.
      projection: ``projection(y, proj_params)``, Euclidean projection onto ``C(proj_params)`` (use
        ``None``-like dummy ``proj_params`` for a fixed set).
      stepsize: ``η > 0``.

    Returns:
      ``T(x, fun_params, proj_params)``.
    """
    _check_callable(fun, "fun", "objective fun(x, fun_params) -> scalar")
    _check_callable(projection, "projection", "projection(y, proj_params)")
    _check_stepsize(stepsize)

    def T(x, fun_params, proj_params):
        return projection(_step(x, jax.grad(fun)(x, fun_params), stepsize), proj_params)

    return T


def mirror_descent_fixed_point(
    fun: Callable[[PyTree, Any], jax.Array],
    projection: Projection,
    mapping_fun: Callable[[PyTree], PyTree],
    stepsize: float = 1.0,
) -> Callable[[PyTree, Any, Any], PyTree]:
    r"""Mirror descent fixed point (paper eq. 11).

    With a mirror map :math:`∇φ` and the Bregman projection (mirror map included, eq. 10)
    :math:`\mathrm{proj}^φ_C(y, θ) = \arg\min_{x∈C(θ)} D_φ(x, ∇φ^*(y))`,

    .. math::

       \hat x = ∇φ(x), \qquad y = \hat x - η ∇_1 f(x, θ_f), \qquad
       T(x, θ_f, θ_C) = \mathrm{proj}^φ_C(y, θ_C).

    Example (KL geometry on the simplex): :math:`φ(x) = ⟨x, \log x - 1⟩`, ``mapping_fun = jnp.log``
    and ``projection = lambda y, _: jax.nn.softmax(y)``, giving the exponentiated-gradient map
    :math:`T(x) = \mathrm{softmax}(\log x - η∇f)`.

    Args:
      fun: ``f(x, fun_params) -> scalar``.
      projection: ``projection(y, proj_params)``, the Bregman projection from the dual (mirror) space.
      mapping_fun: the mirror map ``x -> ∇φ(x)``.
      stepsize: ``η > 0``.

    Returns:
      ``T(x, fun_params, proj_params)``.
    """
    _check_callable(fun, "fun", "objective fun(x, fun_params) -> scalar")
    _check_callable(projection, "projection", "Bregman projection(y, proj_params)")
    _check_callable(mapping_fun, "mapping_fun", "mirror map x -> ∇φ(x)")
    _check_stepsize(stepsize)

    def T(x, fun_params, proj_params):
        x_hat = mapping_fun(x)
        y = _step(x_hat, jax.grad(fun)(x, fun_params), stepsize)
        return projection(y, proj_params)

    return T


# --------------------------------------------------------------------------------------------
# Newton fixed points (App. C, eq. 14)
# --------------------------------------------------------------------------------------------


def newton_root_fixed_point(G: Callable[..., PyTree], stepsize: float = 1.0) -> Callable[..., PyTree]:
    r"""Newton fixed point for root finding (paper App. C).

    For :math:`G(x^\star, θ) = 0`,

    .. math::  T(x, θ) = x - η\,[∂_1 G(x, θ)]^{-1} G(x, θ).

    At a root, :math:`∂_1T = (1-η)I` and :math:`∂_2T = -η[∂_1G]^{-1}∂_2G`, so the implicit system is
    the same as for ``G`` itself (scaled by ``η``).

    Implementation: ``x`` (any pytree) is flattened, :math:`∂_1G` is formed densely with
    :func:`jax.jacfwd` and the Newton step is one dense LU solve, i.e. ``O(d^3)``; meant for small
    and medium ``d``. Differentiating ``T`` differentiates through that solve (second derivatives
    of ``G``); prefer :func:`~kktbridge.custom_root` with ``G`` directly when only the derivative
    of the root is needed, which is cheaper and equivalent.

    Args:
      G: ``G(x, *args, **kwargs)`` with output of the same structure as ``x``.
      stepsize: ``η > 0``.

    Returns:
      ``T(x, *args, **kwargs)`` with ``G``'s signature.
    """
    _check_callable(G, "G", "root function G(x, *args)")
    _check_stepsize(stepsize)

    def T(x, *args, **kwargs):
        x_flat, unravel = ravel_pytree(x)

        def G_flat(v):
            out = G(unravel(v), *args, **kwargs)
            out_flat = ravel_pytree(out)[0]
            if out_flat.shape != v.shape:
                raise ValueError(
                    f"G: expected an output with {v.shape[0]} entries (the size of x), got {out_flat.shape[0]}"
                )
            return out_flat

        g, jac = G_flat(x_flat), jax.jacfwd(G_flat)(x_flat)
        return unravel(x_flat - stepsize * jnp.linalg.solve(jac, g))

    return _with_signature(T, G)


def newton_fixed_point(fun: Callable[..., jax.Array], stepsize: float = 1.0) -> Callable[..., PyTree]:
    r"""Newton fixed point for minimisation (paper eq. 14).

    .. math::  T(x, θ) = x - η\,[∇_1^2 f(x, θ)]^{-1} ∇_1 f(x, θ),

    i.e. :func:`newton_root_fixed_point` with :math:`G = ∇_1 f`; the implicit system is the same as
    for the gradient descent map.

    Implementation: dense Hessian (``jax.hessian`` on the flattened ``x``) and a dense LU solve,
    ``O(d^3)``; differentiating ``T`` needs third derivatives of ``f``.

    Args:
      fun: ``f(x, *args, **kwargs) -> scalar``, twice differentiable, with nonsingular Hessian near
        the solution (e.g. strongly convex).
      stepsize: ``η > 0``.

    Returns:
      ``T(x, *args, **kwargs)`` with ``fun``'s signature.
    """
    _check_callable(fun, "fun", "objective fun(x, *args) -> scalar")
    _check_stepsize(stepsize)

    def T(x, *args, **kwargs):
        x_flat, unravel = ravel_pytree(x)

        def f_flat(v):
            return fun(unravel(v), *args, **kwargs)

        g, hess = jax.grad(f_flat)(x_flat), jax.hessian(f_flat)(x_flat)
        return unravel(x_flat - stepsize * jnp.linalg.solve(hess, g))

    return _with_signature(T, fun)


# --------------------------------------------------------------------------------------------
# Block proximal gradient (App. C, eq. 15)
# --------------------------------------------------------------------------------------------


def block_proximal_gradient_fixed_point(
    fun: Callable[[Sequence[PyTree], Any], jax.Array],
    block_prox: Sequence[Optional[Prox]],
    stepsize: Union[float, Sequence[float]] = 1.0,
) -> Callable[[Sequence[PyTree], Any, Sequence[Any]], Sequence[PyTree]]:
    r"""Block proximal gradient (block coordinate descent) fixed point (paper eq. 15).

    For :math:`x^\star(θ) = \arg\min_x f(x, θ_f) + \sum_j g_j(x_j, θ_j)` with blocks
    :math:`x = (x_1, …, x_m)`,

    .. math::  [T(x, θ)]_j = \mathrm{prox}_{η_j g_j}\big(x_j - η_j [∇_1 f(x, θ_f)]_j,\; θ_j\big).

    With a shared step size this is the proximal gradient map for the separable
    :math:`g = \sum_j g_j`.

    Args:
      fun: ``f(x, fun_params) -> scalar`` where ``x`` is a tuple/list of ``m`` blocks (each a pytree).
      block_prox: sequence of ``m`` proximity operators ``prox_j(y_j, prox_params_j, scaling)``;
        ``None`` for a block without a non-smooth term.
      stepsize: ``η > 0`` shared by all blocks, or a sequence of ``m`` per-block step sizes.

    Returns:
      ``T(x, fun_params, prox_params)`` with ``prox_params`` a sequence of ``m`` per-block
      hyperparameters; the output has the container type of ``x``.
    """
    _check_callable(fun, "fun", "objective fun(x, fun_params) -> scalar")
    if callable(block_prox) or not isinstance(block_prox, Sequence):
        raise ValueError(
            f"block_prox: expected a sequence (tuple/list) of prox functions, one per block, got "
            f"{type(block_prox).__name__}"
        )
    for j, p in enumerate(block_prox):
        if p is not None:
            _check_callable(p, f"block_prox[{j}]", "proximity operator prox(y, prox_params, scaling) or None")
    m = len(block_prox)
    if isinstance(stepsize, Sequence):
        if len(stepsize) != m:
            raise ValueError(f"stepsize: expected a scalar or {m} per-block step sizes, got {len(stepsize)}")
        stepsizes = tuple(stepsize)
        for j, s in enumerate(stepsizes):
            _check_stepsize(s, f"stepsize[{j}]")
    else:
        _check_stepsize(stepsize)
        stepsizes = (stepsize,) * m
    block_prox = tuple(block_prox)

    def T(x, fun_params, prox_params):
        if not isinstance(x, (tuple, list)) or len(x) != m:
            raise ValueError(f"x: expected a tuple or list of {m} blocks (one per prox), got {type(x).__name__}"
                             + (f" of length {len(x)}" if isinstance(x, (tuple, list)) else ""))
        if prox_params is None:
            prox_params = (None,) * m
        if not isinstance(prox_params, (tuple, list)) or len(prox_params) != m:
            raise ValueError(f"prox_params: expected a tuple or list of {m} per-block hyperparameters (or None)")
        grads = jax.grad(fun)(x, fun_params)
        blocks = []
        for x_j, g_j, prox_j, params_j, eta_j in zip(x, grads, block_prox, prox_params, stepsizes):
            y_j = _step(x_j, g_j, eta_j)
            blocks.append(y_j if prox_j is None else prox_j(y_j, params_j, eta_j))
        # Keep the container type (tuple, list or namedtuple) of x so T(x) matches x's pytree structure.
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return type(x)(*blocks)
        return type(x)(blocks)

    return T
