"""Euclidean and KL projections onto convex sets (JAXopt-compatible ``projection_xxx(x, hyperparams)``).

All are pure JAX, ``jit``/``vmap``-able and differentiable with respect to ``x`` and the
hyperparameters (closed forms by autodiff; box sections, polyhedra and transportation polytopes by
implicit differentiation; isotonic regression by its block-averaging Jacobian). Names, signatures
and meanings follow ``jaxopt.projection`` (``projection_transport`` / ``projection_birkhoff`` are
Euclidean, ``kl_projection_transport`` / ``kl_projection_birkhoff`` the entropic ones);
:func:`isotonic_l2_pav` is ``jaxopt.isotonic.isotonic_l2_pav``. See
:mod:`kktbridge.core._projection` for the math.
"""

from kktbridge.core._projection import (
    isotonic_l2_pav,
    isotonic_regression,
    kl_projection_birkhoff,
    kl_projection_transport,
    projection_affine_set,
    projection_birkhoff,
    projection_box,
    projection_box_section,
    projection_halfspace,
    projection_hypercube,
    projection_hyperplane,
    projection_l1_ball,
    projection_l1_sphere,
    projection_l2_ball,
    projection_l2_sphere,
    projection_linf_ball,
    projection_non_negative,
    projection_non_negative_kl,
    projection_order_simplex,
    projection_polyhedron,
    projection_simplex,
    projection_simplex_kl,
    projection_sparse_simplex,
    projection_transport,
)

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
