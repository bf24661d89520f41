"""Compiled NLP oracles: objective, gradient, constraints, Jacobian and Lagrangian Hessian.

Pure JAX, built once per problem structure by the NLP bridge and handed to an NLP adapter (which
calls them on the host and does no autodiff of its own). Functions take flat ``x`` and flat ``p``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NLPOracles"]


class NLPOracles:
    """Jit-compiled host oracles of one problem structure, over flat ``x`` and flat ``p``.

    Built once per ``(objective, eq, ineq, x structure, params structure)`` by the NLP bridge and
    reused across calls (the compiled XLA executables are cached by ``jax.jit``).
    """

    def __init__(self, objective: Callable, eq: Callable | None, ineq: Callable | None, unravel_x, unravel_p, m_eq: int, m_ineq: int, n: int):
        self.n, self.m_eq, self.m_ineq = n, m_eq, m_ineq
        self.m = m_eq + m_ineq

        def f(x, p):
            return objective(unravel_x(x), unravel_p(p))

        def c(x, p):
            parts = []
            if eq is not None:
                parts.append(jnp.ravel(eq(unravel_x(x), unravel_p(p))))
            if ineq is not None:
                parts.append(jnp.ravel(ineq(unravel_x(x), unravel_p(p))))
            return jnp.concatenate(parts) if parts else jnp.zeros((0,), x.dtype)

        rows, cols = np.tril_indices(n)
        self.hess_rows, self.hess_cols = rows, cols

        def hess(x, p, sigma, lam):
            H = jax.hessian(lambda x: sigma * f(x, p) + jnp.vdot(lam, c(x, p)))(x)
            return H[rows, cols]

        # One compiled call for (f, ∇f) and one for (c, J): IPOPT asks for a value and then its
        # derivative at the same x, so each pair is computed once and the second half served from
        # the last evaluation (see _Problem).
        self.f_grad = jax.jit(jax.value_and_grad(f))
        self.c_jac = jax.jit(lambda x, p: (c(x, p), jnp.ravel(jax.jacfwd(c)(x, p))))
        self.hess = jax.jit(hess)
        self.jac_rows, self.jac_cols = (a.ravel() for a in np.indices((self.m, n)))
