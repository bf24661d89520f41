r"""``solver="auto"`` for QPs: pick the fastest derivative-grade solver for the batch at hand.

The choice is made on the host, at solve time, where the adapter sees the data of the whole
(``vmap``-ed) batch: its size ``n``, ``m_eq``, ``m_ineq``, the density of ``[P; A; G]`` and the
batch size. The rule (:func:`choose`), measured on this project's 2-core machine with
``python -m kktbridge bench --suite qp-solvers`` (``kktbridge/_bench/qp_solvers.py``):

1. **large sparse** (``n ≥ 800`` and at most 5 % of ``[P; A; G]`` nonzero) → ``"osqp"``:
   sparse factorisations win (n = 1000, 1.8 % dense, m_ineq = n: OSQP 0.96 s, PIQP 1.1 s,
   DAQP 1.8 s, ProxQP 2.6 s per instance);
2. **everything else** (dense, or small) → ``"daqp"``: DAQP's dual active-set method returns an
   exact solution and, with ``P, A, G`` shared by the batch, factorises once and warm-starts each
   instance from the previous working set. Per instance at the bench sizes
   ``(n, m_eq, m_ineq) = (10, 2, 5), (100, 10, 50), (500, 50, 200)`` it was 10-40x faster than
   OSQP at the same accuracy and faster than ProxQP and PIQP (see the bench); with many more
   inequalities than variables (m_ineq = 10 n) it stayed ahead at n = 200 (PIQP was 1.7x faster
   at n = 100, not enough of a pattern to encode).

The batch size does not change the choice on this machine (DAQP's per-batch setup reuse only
widens its lead as batches grow), but it is an argument of :func:`choose` so that a rule measured
on a many-core machine (where ProxSuite's OpenMP ``solve_in_parallel`` scales) can use it.

Robustness: a chosen solver whose library is missing falls back to OSQP (a hard dependency).
Instances the chosen solver fails on for a *solver* reason (``NUMERICAL_ERROR``, ``MAX_ITER``,
``INVALID_PROBLEM``, ``FAILED`` -- e.g. DAQP cycling or an overdetermined working set from
redundant equalities) are solved again by OSQP; problem verdicts (``INFEASIBLE``, ``UNBOUNDED``,
``NON_CONVEX``) are kept.

How to read the choice: every instance's ``native_status`` is ``"<solver>: <native status>"``
(e.g. ``"daqp: 1"``, ``"osqp: solved (polish 1)"``; visible in :class:`~kktbridge.SolverError`
messages), and each instance's values carry ``"solver"``, an ``int32`` index into
:data:`SOLVERS` (returned when the bridge asks for it in its ``out_spec``, e.g.
``jax.ShapeDtypeStruct((), jnp.int32)``). :func:`choose` is pure, for callers that know the sizes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from kktbridge.adapters._base import Adapter, HostSolution
from kktbridge.core._status import Status

#: Solvers the rule may return; ``values["solver"]`` indexes this tuple.
SOLVERS: tuple[str, ...] = ("daqp", "proxsuite", "piqp", "osqp")

#: Rule thresholds (measured, see the module docstring).
SPARSE_MIN_N = 800
SPARSE_MAX_DENSITY = 0.05

#: Statuses that say more about the solver than about the problem: retried with OSQP.
_RETRY = frozenset({Status.NUMERICAL_ERROR, Status.MAX_ITER, Status.INVALID_PROBLEM, Status.FAILED})
_FALLBACK = "osqp"


def choose(n: int, m_eq: int, m_ineq: int, density: float = 1.0, batch: int = 1) -> str:
    """The solver ``solver="auto"`` uses for a batch of QPs of these sizes (see the module docstring).

    Args:
      n: number of variables.
      m_eq: equality rows.
      m_ineq: inequality rows.
      density: fraction of nonzeros in ``[P; A; G]`` (union over the batch).
      batch: number of instances solved together.
    """
    if n >= SPARSE_MIN_N and density <= SPARSE_MAX_DENSITY:
        return "osqp"
    return "daqp"


def density_of(batch: Sequence[Mapping[str, np.ndarray]], shared: frozenset) -> float:
    """Fraction of nonzeros of ``[P; A; G]`` (union of the patterns when the matrices are batched)."""
    from kktbridge.adapters._qp_common import MATRICES, coo, is_sparse, sizes

    if is_sparse(batch[0]):
        n, m_eq, m_ineq = sizes(batch[0])
        total = n * (n + m_eq + m_ineq)
        # Every instance of a sparse batch has the same pattern (the input's indices).
        nnz = sum(int(np.count_nonzero(coo(batch[0], k).tocsr().data)) for k in MATRICES)
        return nnz / total if total else 1.0
    items = batch[:1] if {"P", "A", "G"} <= shared else batch
    mask = np.vstack([items[0]["P"], items[0]["A"], items[0]["G"]]) != 0
    for d in items[1:]:
        mask |= np.vstack([d["P"], d["A"], d["G"]]) != 0
    return float(mask.mean()) if mask.size else 1.0


class AutoQPAdapter(Adapter):
    """Delegates each batch to the adapter :func:`choose` picks; options go to that adapter.

    Solver options are solver-specific, so ``solver="auto"`` accepts none (a ``ValueError`` names
    the argument): pick a solver explicitly to tune it.
    """

    name: ClassVar[str] = "auto"
    kind: ClassVar[str] = "qp"
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ("osqp", "scipy")
    #: Native statuses are the chosen solver's (``"<solver>: <status>"``); nothing to map here.
    status_map: ClassVar[Mapping[Any, Status]] = {}

    def validate_options(self, options: Mapping[str, Any]) -> None:
        for key in options:
            raise ValueError(
                f"options: {key!r}: solver='auto' takes no solver options (they differ between the solvers it "
                f"picks from); pass solver= one of {list(SOLVERS)} to set {key!r}"
            )

    def solve_one(self, data, options):
        return self.solve_batch([data], frozenset(), options)[0]

    @staticmethod
    def _adapter(name: str) -> tuple[str, Adapter]:
        from kktbridge.adapters import get_adapter

        adapter = get_adapter(name, kind="qp")
        if not type(adapter).is_installed():
            name, adapter = _FALLBACK, get_adapter(_FALLBACK, kind="qp")
        return name, adapter

    def solve_batch(self, batch, shared, options) -> list[HostSolution]:
        d0 = batch[0]
        from kktbridge.adapters._qp_common import sizes

        n, m_eq, m_ineq = sizes(d0)
        name, adapter = self._adapter(choose(n, m_eq, m_ineq, density_of(batch, shared), len(batch)))
        results = [self._tag(r, name) for r in adapter.solve_batch(batch, shared, {})]
        retry = [i for i, r in enumerate(results) if r.status in _RETRY] if name != _FALLBACK else []
        if retry:
            _, fallback = self._adapter(_FALLBACK)
            again = fallback.solve_batch([batch[i] for i in retry], shared, {})
            for i, r in zip(retry, again):
                r = self._tag(r, _FALLBACK)
                r.native_status = f"{r.native_status} (after {results[i].native_status})"
                results[i] = r
        return results

    @staticmethod
    def _tag(r: HostSolution, name: str) -> HostSolution:
        values = {**r.values, "solver": np.int32(SOLVERS.index(name))}
        return HostSolution(values, r.status, r.iterations, f"{name}: {r.native_status}")
