"""Central finite differences and the relative error used to compare derivatives (float64)."""

from __future__ import annotations

import numpy as np

#: Absolute floor of :func:`rel_err`'s denominator: a reference whose largest entry is below it
#: counts as zero, and the comparison becomes absolute at ``tol * ABS_FLOOR``. The derivatives the
#: suite checks are O(0.1)…O(10^3), so the floor only matters for (near-)zero references, where
#: central differences carry ~1e-10 of solver noise (1e-12 solution error / step 1e-6 … 1e-5).
ABS_FLOOR = 1e-3


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
    """Normwise relative error of ``a`` against the reference ``b``:
    ``max|a - b| / max(max|b|, ABS_FLOOR)`` (``ABS_FLOOR = 1e-3``).

    A true relative error for every reference of size >= 1e-3 (so "< 1e-6" means six correct
    digits of the largest entry, whatever its scale); below the floor it is an absolute check at
    ``tol * 1e-3``. Shapes must match exactly (no broadcasting), and NaN anywhere gives NaN, which
    fails every ``rel_err(...) < tol`` assertion.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_err: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), ABS_FLOOR))


def fd_jacobian_wrt(fun, args, argnum: int, eps: float = 1e-6):
    """Central-difference Jacobian of ``fun(*args)`` w.r.t. ``args[argnum]`` (jacfwd layout)."""
    args = [np.asarray(a, dtype=np.float64) for a in args]

    def partial(v):
        return fun(*args[:argnum], v, *args[argnum + 1 :])

    return fd_jacobian(partial, args[argnum], eps=eps)


def fd4_jacobian(fun, x, h: float = 2e-4):
    """Fourth-order central-difference Jacobian, ``out.shape + x.shape``.

    ``(8(f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h``: truncation error O(h⁴), for solution maps
    with large higher derivatives (conic programs), where second order would need a smaller ``h``
    than the solvers' accuracy allows.
    """
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        f = lambda t: np.asarray(fun(x + t * e))  # noqa: E731
        cols.append((8 * (f(1) - f(-1)) - (f(2) - f(-2))) / (12 * h))
    return np.stack(cols, axis=-1).reshape(np.shape(fun(x)) + x.shape)
