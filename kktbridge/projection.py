"""Euclidean and KL projections onto convex sets (JAXopt-compatible ``projection_xxx(x, hyperparams)``).

All are pure JAX, ``jit``/``vmap``-able and differentiable with respect to ``x`` and the
hyperparameters (closed forms by autodiff; box sections and transportation polytopes by implicit
differentiation; isotonic regression by its block-averaging Jacobian). See
:mod:`kktbridge.core._projection` for the math.
"""

from kktbridge.core._projection import (
    isotonic_regression,
    projection_affine_set,
    projection_birkhoff,
    projection_box,
    projection_box_section,
    projection_halfspace,
    projection_hyperplane,
    projection_l1_ball,
    projection_l2_ball,
    projection_linf_ball,
    projection_non_negative,
    projection_non_negative_kl,
    projection_order_simplex,
    projection_simplex,
    projection_simplex_kl,
    projection_transport,
)

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
