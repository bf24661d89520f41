r"""Compiled NLP oracles: objective, gradient, constraints, Jacobian and Lagrangian Hessian.

Pure JAX, built once per problem structure by the NLP bridge and handed to an NLP adapter (which
calls them on the host and does no autodiff of its own). Functions take flat ``x`` and flat ``p``.

Two layouts, chosen once per structure (:class:`NLPOracles` ``sparse``):

* **dense**: the ``m × n`` constraint Jacobian by ``jacfwd`` and the lower triangle of the
  ``n × n`` Lagrangian Hessian ``∇²(σ f + λᵀc)`` by ``jax.hessian`` -- ``O(n²)`` time and memory,
  right for small problems;
* **sparse**: the global sparsity patterns of ``∂c/∂x`` and ``∇²(σ f + λᵀc)`` detected from the
  functions' jaxprs (:mod:`kktbridge.core._sparsity`), and their nonzeros computed by colored
  JVPs and Hessian-vector products -- ``O(k · cost(f, c))`` time for ``k`` colors and ``O(nnz)``
  memory.

Either way the adapter receives values in the order of ``jac_rows/jac_cols`` and
``hess_rows/hess_cols`` (lower triangle, ``row ≥ col``).
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._xla import in_background, stage_jit, top_level

__all__ = ["NLPOracles"]

#: Oracles -> ``wait()`` of their background warm-up, kept off the object: process and Ray executors
#: pickle the oracles, and a thread's join neither pickles nor needs to travel.
_WARMING: "weakref.WeakKeyDictionary[NLPOracles, Callable[[], None]]" = weakref.WeakKeyDictionary()


class NLPOracles:
    """Jit-compiled host oracles of one problem structure, over flat ``x`` and flat ``p``.

    Built once per ``(objective, eq, ineq, x structure, params structure, sparse)`` by the NLP
    bridge and reused across calls (the compiled XLA executables are cached by ``jax.jit``).

    Args:
      objective, eq, ineq: the user's functions of ``(x pytree, params pytree)``.
      unravel_x, unravel_p: flat → pytree maps of ``x`` and ``params``.
      m_eq, m_ineq, n: constraint counts and number of variables.
      sparse: ``True`` for the sparse layout, ``False`` for the dense one, ``None`` to decide by
        size and detected density (sparse from :data:`~kktbridge.core._sparsity.SPARSE_MIN_SIZE`
        variables when the KKT pattern fills at most
        :data:`~kktbridge.core._sparsity.SPARSE_MAX_DENSITY` of the dense matrix).
      x_example, p_example: flat example arrays (shapes and dtypes) for pattern detection.

    Attributes:
      values, first_order, hess: the compiled host oracles ``(x, p) -> (f, c)``,
        ``(x, p) -> (f, ∇f, c, J values)`` and ``(x, p, σ, λ) -> lower-triangle Hessian values``
        (:meth:`_first_order`); ``c_jac``: ``(x, p) -> (c, J values)``.
      sparse: the layout chosen.
      jac_rows, jac_cols: the constraint Jacobian's entries (all ``m·n`` when dense).
      hess_rows, hess_cols: the Lagrangian Hessian's lower-triangle entries.
      hess_full_rows, hess_full_cols: the full symmetric Hessian pattern (sparse layout only).
    """

    def __init__(self, objective: Callable, eq: Callable | None, ineq: Callable | None, unravel_x, unravel_p,
                 m_eq: int, m_ineq: int, n: int, sparse: Optional[bool] = False, x_example=None, p_example=None):
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

        def lagrangian(x, p, sigma, lam):
            return sigma * f(x, p) + jnp.vdot(lam, c(x, p))

        self.sparse = False
        if sparse is None or sparse:
            self.sparse = self._try_sparse(f, c, lagrangian, x_example, p_example, required=bool(sparse))
        if self.sparse:
            return
        rows, cols = np.tril_indices(n)
        self.hess_rows, self.hess_cols = rows, cols

        def hess(x, p, sigma, lam):
            return jax.hessian(lagrangian)(x, p, sigma, lam)[rows, cols]

        self._first_order(f, c, lambda x, p: (c(x, p), jnp.ravel(jax.jacfwd(c)(x, p))))
        self.hess = stage_jit(hess)
        self.jac_rows, self.jac_cols = (a.ravel() for a in np.indices((self.m, n)))

    def _first_order(self, f: Callable, c: Callable, c_jac: Callable) -> None:
        """The host oracles of one point: ``values(x, p) -> (f, c)`` and
        ``first_order(x, p) -> (f, ∇f, c, J values)``, one compiled call each.

        IPOPT asks for ``f`` and ``c`` at every trial point of its line search, many of which are
        rejected and never need a derivative (the pendulum OCP: 203 value-only calls next to 103
        first-order ones in 76 iterations), and for ``∇f`` and ``J`` at the point it accepts. Both
        pairs in one call halve the dispatches (tens of microseconds each, which small problems
        feel: they are most of the gap to CasADi's IPOPT there). ``c_jac(x, p) -> (c, J values)``
        also stays on its own (the sparse KKT check takes the row norms of ``J`` from it).
        """
        self.c_jac = stage_jit(c_jac)
        self.values = stage_jit(lambda x, p: (f(x, p), c(x, p)))
        self.first_order = stage_jit(lambda x, p: (*jax.value_and_grad(f)(x, p), *c_jac(x, p)))

    def warm_up(self, p_size: int) -> None:
        """Compile the oracles IPOPT always calls in a background thread; :meth:`ready` waits for it.

        The bridge calls this as soon as the oracles exist, so that their compilation (XLA
        compiles without holding the GIL) overlaps the tracing and compilation of the bridge's own
        solve stage instead of following it when IPOPT first calls back. The arguments are what
        the IPOPT adapter passes (float64 NumPy ``x`` and ``λ``, ``p`` on the device, a Python
        float ``σ``) in :meth:`host_context`, so the compiled executables are the ones its calls
        look up. A failure here is ignored: the real call raises it again (and a failing oracle
        leaves the later ones to their first call).
        """

        def run() -> None:
            with self.host_context():
                x, p, lam = np.zeros(self.n), jax.device_put(np.zeros(p_size)), np.zeros(self.m)
                # Not the value-only oracle: IPOPT calls it only after a rejected trial point.
                for fn, args in ((self.first_order, (x, p)), (self.hess, (x, p, 1.0, lam))):
                    top_level(fn).lower(*args).compile()

        _WARMING[self] = in_background(run)

    @staticmethod
    def host_context():
        """The context the oracles are compiled and called in: JAX's CPU device as the default.

        A ``jax.pure_callback`` sets it for the callback (the inline path), a worker thread has none;
        fixing it makes every call look up the same executables, also those of :meth:`warm_up`
        (the device is part of ``jax.jit``'s cache key)."""
        return jax.default_device(jax.local_devices(backend="cpu")[0])

    def ready(self) -> None:
        """Wait for :meth:`warm_up` (no-op without one, or after the first wait)."""
        wait = _WARMING.pop(self, None)
        if wait is not None:
            wait()

    def _try_sparse(self, f, c, lagrangian, x, p, required: bool) -> bool:
        """Detect patterns and build the colored oracles; ``False`` (dense) when auto declines."""
        from kktbridge.core import _sparsity

        n, m = self.n, self.m
        if not required and (n < _sparsity.SPARSE_MIN_SIZE or not _sparsity.available()):
            return False
        if x is None or p is None:
            raise ValueError("x_example, p_example: needed for sparsity detection")
        sigma, lam = np.ones((), x.dtype), np.zeros((m,), x.dtype)  # NumPy: no eager op (pattern detection traces)
        try:
            hess_col = _sparsity.detect_hessian(lagrangian, x, p, sigma, lam)
            jac_col = _sparsity.detect_jacobian(c, x, p) if m else None
        except Exception as e:
            if required:
                raise ValueError(f"sparse: sparsity detection of the problem's functions failed ({type(e).__name__}: {e}); "
                                 "use sparse=False") from e
            return False
        h_rows = np.asarray(hess_col.sparsity.rows, dtype=np.int64)
        h_cols = np.asarray(hess_col.sparsity.cols, dtype=np.int64)
        j_rows = np.asarray(jac_col.sparsity.rows, dtype=np.int64) if jac_col is not None else np.zeros(0, np.int64)
        j_cols = np.asarray(jac_col.sparsity.cols, dtype=np.int64) if jac_col is not None else np.zeros(0, np.int64)
        # The KKT matrix [[H, Jᵀ], [J, D]] has nnz(H) + 2 nnz(J) + (m + bound rows) entries at most.
        size = n + m
        density = (h_rows.size + 2 * j_rows.size + size) / float(size) ** 2
        if not required and density > _sparsity.SPARSE_MAX_DENSITY:
            return False
        lower = h_rows >= h_cols
        self.hess_full_rows, self.hess_full_cols = h_rows, h_cols
        self.hess_rows, self.hess_cols = h_rows[lower], h_cols[lower]
        self.jac_rows, self.jac_cols = j_rows, j_cols
        self.kkt_density = density
        hess_values = _sparsity.colored_hessian(lagrangian, hess_col)
        lower_idx = np.flatnonzero(lower)
        self.hess = stage_jit(lambda x, p, sigma, lam: hess_values(x, p, sigma, lam)[lower_idx])
        if jac_col is not None:
            self._first_order(f, c, _sparsity.colored_jacobian(c, jac_col))
        else:
            self._first_order(f, c, lambda x, p: (c(x, p), jnp.zeros((0,), x.dtype)))
        return True
