"""Proximity operators (JAXopt-compatible ``prox_xxx(x, hyperparams=None, scaling=1.0)``).

``scaling`` multiplies the regularisation strength: each function returns
``argmin_y 0.5 ||y - x||^2 + scaling * g(y; hyperparams)``. Closed forms, differentiable with
respect to ``x``, ``hyperparams`` and ``scaling``. :func:`make_prox_from_projection` turns a
projection into the prox of the set's indicator. ``prox_elastic_net`` reads ``hyperparams`` as
JAXopt's ``(lam, gamma)`` (l1 strength ``lam``, l2 strength ``lam * gamma``). See
:mod:`kktbridge.core._prox` for the math.
"""

from kktbridge.core._prox import (
    make_prox_from_projection,
    prox_elastic_net,
    prox_group_lasso,
    prox_lasso,
    prox_non_negative_lasso,
    prox_non_negative_ridge,
    prox_none,
    prox_ridge,
)

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
