r"""``solver="auto"``: pick the fastest derivative-grade solver for the batch at hand.

For cone programs the rule is :func:`choose_conic` (Clarabel for LPs, SCS otherwise; opt in with
``solve_conic(..., solver="auto")``); the rest of this docstring is about QPs, where ``"auto"``
is ``solve_qp``'s default.

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
from kktbridge.core._cones import ALL_CONE_KINDS
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


class _AutoAdapter(Adapter):
    """Shared delegation of the ``solver="auto"`` adapters (one per problem kind).

    Per batch: :meth:`pick` names a solver; its adapter (prepared with this adapter's structure)
    solves the batch with its own defaults; instances it fails on for a *solver* reason
    (:data:`_RETRY`) are solved again by :meth:`fallback_for`'s solver, if any. Every instance's
    ``native_status`` reads ``"<solver>: <status>"`` and its values carry ``"solver"``, an index
    into :attr:`SOLVERS`. Solver options differ between the candidates, so ``"auto"`` accepts none.
    """

    name: ClassVar[str] = "auto"
    #: Solvers the rule may return; ``values["solver"]`` indexes this tuple.
    SOLVERS: ClassVar[tuple[str, ...]] = ()
    #: Native statuses are the chosen solver's (``"<solver>: <status>"``); nothing to map here.
    status_map: ClassVar[Mapping[Any, Status]] = {}

    def pick(self, batch: Sequence[Mapping[str, np.ndarray]], shared: frozenset) -> str:
        raise NotImplementedError

    def fallback_for(self, name: str) -> "str | None":
        raise NotImplementedError

    def validate_options(self, options: Mapping[str, Any]) -> None:
        for key in options:
            raise ValueError(
                f"options: {key!r}: solver='auto' takes no solver options (they differ between the solvers it "
                f"picks from); pass solver= one of {list(self.SOLVERS)} to set {key!r}"
            )

    def solve_one(self, data, options):
        return self.solve_batch([data], frozenset(), options)[0]

    def _adapter(self, name: str) -> tuple[str, Adapter]:
        from kktbridge.adapters import get_adapter

        adapter = get_adapter(name, kind=self.kind)
        if not type(adapter).is_installed():
            name = self.fallback_for(name) or name
            adapter = get_adapter(name, kind=self.kind)
        return name, adapter.prepare(self.structure) if self.structure is not None else adapter

    def solve_batch(self, batch, shared, options) -> list[HostSolution]:
        name, adapter = self._adapter(self.pick(batch, shared))
        results = [self._tag(r, name) for r in adapter.solve_batch(batch, shared, {})]
        fallback = self.fallback_for(name)
        retry = [i for i, r in enumerate(results) if r.status in _RETRY] if fallback else []
        if retry and fallback:
            fallback, other = self._adapter(fallback)
            again = other.solve_batch([batch[i] for i in retry], shared, {})
            for i, r in zip(retry, again):
                r = self._tag(r, fallback)
                r.native_status = f"{r.native_status} (after {results[i].native_status})"
                results[i] = r
        return results

    def _tag(self, r: HostSolution, name: str) -> HostSolution:
        values = {**r.values, "solver": np.int32(self.SOLVERS.index(name))}
        return HostSolution(values, r.status, r.iterations, f"{name}: {r.native_status}")


class AutoQPAdapter(_AutoAdapter):
    """QPs: the solver :func:`choose` picks for the batch's sizes and density; OSQP retries."""

    kind: ClassVar[str] = "qp"
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ("osqp", "scipy")
    SOLVERS: ClassVar[tuple[str, ...]] = SOLVERS

    def pick(self, batch, shared) -> str:
        from kktbridge.adapters._qp_common import sizes

        n, m_eq, m_ineq = sizes(batch[0])
        return choose(n, m_eq, m_ineq, density_of(batch, shared), len(batch))

    def fallback_for(self, name: str) -> "str | None":
        return None if name == _FALLBACK else _FALLBACK


#: Conic solvers ``solver="auto"`` picks from (``values["solver"]`` indexes this tuple).
CONIC_SOLVERS: tuple[str, ...] = ("scs", "clarabel")
#: Cone kinds of a linear program: Clarabel's interior point takes those (measured, module doc).
_LP_CONES = frozenset({"z", "l"})


def choose_conic(cone: Mapping[str, Any]) -> str:
    """The solver ``solve_conic(..., solver="auto")`` uses for a cone (an SCS cone dictionary).

    Measured with ``python -m kktbridge bench --suite conic-solvers`` at derivative-grade
    accuracy: on LPs Clarabel was as fast as SCS at 100 variables and SCS did not converge to
    ``1e-9`` at all at 400 (100,000 iterations, 16.6 s; Clarabel 18 iterations, 0.35 s), while on
    SOCP, exponential-cone and PSD problems SCS was 1.2-3x faster. So: **Clarabel** when every
    cone block is a zero or nonnegative-orthant block, **SCS** otherwise; each retries the
    instances the other fails on for a solver reason.
    """
    from kktbridge.core._cones import parse_cone

    kinds = {block for block, size in parse_cone(cone).as_dict().items() if size}
    return "clarabel" if kinds <= _LP_CONES else "scs"


class AutoConicAdapter(_AutoAdapter):
    """Cone programs: Clarabel for LPs, SCS otherwise (:func:`choose_conic`); each retries the other."""

    kind: ClassVar[str] = "conic"
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ("scs", "scipy")
    SOLVERS: ClassVar[tuple[str, ...]] = CONIC_SOLVERS
    #: Cone kinds accepted: every kind (SCS takes them all, and so does Clarabel).
    CONES: ClassVar[frozenset] = ALL_CONE_KINDS

    def pick(self, batch, shared) -> str:
        from kktbridge.core._types import ConicStructure

        if not isinstance(self.structure, ConicStructure):
            raise ValueError("solver='auto' for cone programs needs the problem's cone (a prepared adapter)")
        return choose_conic(self.structure.cone)

    def fallback_for(self, name: str) -> "str | None":
        from kktbridge.adapters import get_adapter

        other = "scs" if name == "clarabel" else "clarabel"
        return other if type(get_adapter(other)).is_installed() else None
