"""Optimality conditions and fixed-point maps to pair with :func:`kktbridge.custom_root` and
:func:`kktbridge.custom_fixed_point` (paper Table 1).

* Roots: :func:`stationarity_fun` (``∇₁f``), :func:`kkt_residual` / :class:`KKTPoint` (KKT conditions;
  ``kkt_fun`` is an alias).
* Fixed points: :func:`gradient_descent_fixed_point`, :func:`proximal_gradient_fixed_point`,
  :func:`projected_gradient_fixed_point`, :func:`mirror_descent_fixed_point`,
  :func:`newton_fixed_point`, :func:`newton_root_fixed_point`,
  :func:`block_proximal_gradient_fixed_point`.
* Conic programs: :func:`conic_residual_map` / :class:`ConicPoint` (the ``τ = 1`` slice of the
  homogeneous self-dual embedding residual, as differentiated by diffcp).
"""


from kktbridge.core._optimality import (
    ConicPoint,
    conic_residual_map,
    KKTPoint,
    block_proximal_gradient_fixed_point,
    gradient_descent_fixed_point,
    kkt_fun,
    kkt_residual,
    mirror_descent_fixed_point,
    newton_fixed_point,
    newton_root_fixed_point,
    projected_gradient_fixed_point,
    proximal_gradient_fixed_point,
    stationarity_fun,
)

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
