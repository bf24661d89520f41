"""Central finite differences for checking implicit derivatives (float64)."""

from __future__ import annotations

import numpy as np


def fd_jacobian(fun, x, eps: float = 1e-6, symmetric_matrix: bool = False):
    """Central-difference Jacobian of ``fun`` (array -> array) at ``x``; shape ``out.shape + x.shape``.

    With ``symmetric_matrix`` the perturbation of entry (i, j) of a square ``x`` is applied to
    (j, i) too, for functions of a symmetric matrix argument.
    """
    x = np.asarray(x, dtype=np.float64)
    out0 = np.asarray(fun(x))
    J = np.zeros(out0.shape + x.shape)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        if symmetric_matrix and idx[0] != idx[1]:
            e[idx[::-1]] = eps
        J[(Ellipsis,) + idx] = (np.asarray(fun(x + e)) - np.asarray(fun(x - e))) / (2 * eps)
    return J


def rel_err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def fd_jacobian_wrt(fun, args, argnum: int, eps: float = 1e-6):
    """Central-difference Jacobian of ``fun(*args)`` w.r.t. ``args[argnum]`` (jacfwd layout)."""
    args = [np.asarray(a, dtype=np.float64) for a in args]

    def partial(v):
        return fun(*args[:argnum], v, *args[argnum + 1 :])

    return fd_jacobian(partial, args[argnum], eps=eps)
