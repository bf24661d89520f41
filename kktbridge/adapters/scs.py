"""SCS adapter: cone programs ``min cᵀx s.t. Ax + s = b, s ∈ K`` (SCS 3.x).

Data: ``A`` (dense ``(m, n)``, converted to CSC) or its coordinates ``A_data, A_rows, A_cols``
(from a sparse ``solve_conic`` input: the CSC structure is built once from the coordinates, never
through a dense matrix), ``b``, ``c`` and optional warm start ``x0, y0, s0``. The cone dictionary
is static structure (it fixes the shapes): it comes in the adapter's
:class:`~kktbridge.core._types.ConicStructure` (:meth:`~kktbridge.adapters.Adapter.prepare`).

Batches (from ``vmap``) are split into one chunk per worker thread. When ``A`` is shared by the
whole batch, each chunk builds (and factorises) one SCS workspace and then only calls
``solver.update(b=..., c=...)`` per instance, warm-starting from the previous solution; SCS
keeps its factorisation across updates. A batched ``A`` is solved instance by instance.

Default options (:data:`DEFAULT_OPTIONS`) are much tighter than SCS's own (``1e-4``): the
implicit derivatives are those of the exact solution, and their error is proportional to the
solution's residual, so ``eps_abs = eps_rel = 1e-9`` (with SCS's Anderson acceleration, on by
default) is used; on small problems this costs a few hundred to a few thousand iterations.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from kktbridge.adapters._base import ChunkedAdapter, HostSolution, cone_and_settings
from kktbridge.core._cones import ALL_CONE_KINDS
from kktbridge.core._status import Status

# SCS 3.x ``info["status_val"]`` codes (``scs.SOLVED`` etc.; include/glbopts.h).
_STATUS = {
    1: Status.SOLVED,  # SCS_SOLVED
    2: Status.SOLVED_INACCURATE,  # SCS_SOLVED_INACCURATE (e.g. max_iters / time limit hit near optimum)
    0: Status.FAILED,  # SCS_UNFINISHED: no solution computed
    -1: Status.UNBOUNDED,  # SCS_UNBOUNDED (dual infeasible)
    -2: Status.INFEASIBLE,  # SCS_INFEASIBLE (primal infeasible)
    -3: Status.NUMERICAL_ERROR,  # SCS_INDETERMINATE
    -4: Status.FAILED,  # SCS_FAILED
    -5: Status.FAILED,  # SCS_SIGINT (interrupted)
    -6: Status.UNBOUNDED,  # SCS_UNBOUNDED_INACCURATE
    -7: Status.INFEASIBLE,  # SCS_INFEASIBLE_INACCURATE
}

#: Tight tolerances for accurate derivatives; ``verbose=False`` keeps batches quiet. Users override
#: any of these through ``solve_conic(..., eps_abs=..., max_iters=...)``.
DEFAULT_OPTIONS: dict[str, Any] = {
    "eps_abs": 1e-9,
    "eps_rel": 1e-9,
    "max_iters": 100_000,
    "verbose": False,
}


def conic_matrix(d0: Mapping[str, np.ndarray]) -> Callable[[Mapping[str, np.ndarray]], Any]:
    """``d -> A`` as SciPy CSC for the instances of a batch shaped like ``d0`` (shared by Clarabel).

    Dense instances are converted as they are. Coordinate instances (``A_data, A_rows, A_cols``,
    all with ``d0``'s pattern) get one CSC structure computed once: entry ``k`` adds its value to a
    fixed slot (duplicates add up, explicit zeros stay in the structure), so building an
    instance's matrix is one ``bincount``, ``O(nnz)``.
    """
    import scipy.sparse as sp

    if "A_data" not in d0:
        return lambda d: sp.csc_matrix(np.asarray(d["A"], dtype=np.float64))
    from kktbridge.adapters.osqp import _SparseMatrices  # the same fixed-structure CSC as OSQP's

    shape = (d0["b"].shape[0], d0["c"].shape[0])
    rows, cols = np.asarray(d0["A_rows"], np.int64), np.asarray(d0["A_cols"], np.int64)
    slots, (indices, indptr, _, nnz) = _SparseMatrices._structure(rows, cols, shape)

    def csc(d):
        values = _SparseMatrices._sum(slots, np.asarray(d["A_data"], np.float64), nnz)
        return sp.csc_matrix((values, indices, indptr), shape=shape)

    return csc


def finite_data(d: Mapping[str, np.ndarray]) -> bool:
    """Whether an instance's ``A`` (dense or its values), ``b`` and ``c`` are all finite."""
    return all(np.all(np.isfinite(np.asarray(d[k]))) for k in ("A_data" if "A_data" in d else "A", "b", "c"))


def _failed(n: int, m: int, status: Status, why: Any) -> HostSolution:
    nan = lambda k: np.full(k, np.nan)  # noqa: E731
    return HostSolution({"x": nan(n), "y": nan(m), "s": nan(m)}, status, 0, why)


class SCSAdapter(ChunkedAdapter):
    """SCS. Data: ``A, b, c`` (``A`` dense or as coordinates ``A_data, A_rows, A_cols``), optional
    ``x0, y0, s0``; the cone dict is in the :attr:`structure` record."""

    name: ClassVar[str] = "scs"
    kind: ClassVar[str] = "conic"
    status_map: ClassVar[Mapping[int, Status]] = _STATUS
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ('scs', 'scipy')
    #: Cone kinds accepted (every kind: SCS takes the cone dictionary as it is).
    CONES: ClassVar[frozenset] = ALL_CONE_KINDS

    #: SCS 3.x settings (``scs.SCS(data, cone, **settings)``).
    SETTINGS: ClassVar[tuple[str, ...]] = (
        "normalize", "scale", "adaptive_scale", "rho_x", "max_iters", "eps_abs", "eps_rel", "eps_infeas",
        "alpha", "time_limit_secs", "verbose", "warm_start", "acceleration_lookback",
        "acceleration_interval", "write_data_filename", "log_csv_filename", "use_indirect", "mkl", "gpu",
    )

    def validate_options(self, options: Mapping[str, Any]) -> None:
        for key in options:
            if key not in self.SETTINGS and key != "cone":
                raise ValueError(f"options: {key!r} is not an SCS setting; valid settings: {', '.join(sorted(self.SETTINGS))}")

    def reuses_setup(self, shared: frozenset) -> bool:
        # SCS can update b and c in place, but a new A needs a new factorisation.
        return "A" in shared or "A_data" in shared

    def solve_chunk(self, batch: Sequence[dict], shared: frozenset, options: Mapping[str, Any]) -> list[HostSolution]:
        """Solve instances sharing ``A`` with one SCS workspace (or one instance)."""
        import scs

        cone, options = cone_and_settings(self, options)
        settings = {**DEFAULT_OPTIONS, **options}
        m, n = batch[0]["b"].shape[0], batch[0]["c"].shape[0]
        csc = conic_matrix(batch[0])
        solver: Optional[Any] = None
        out: list[HostSolution] = []
        for d in batch:
            if not finite_data(d):
                out.append(_failed(n, m, Status.INVALID_PROBLEM, "non-finite data"))
                continue
            b, c = (np.asarray(d[k], dtype=np.float64) for k in ("b", "c"))
            if solver is None:
                try:
                    solver = scs.SCS({"A": csc(d), "b": b, "c": c}, dict(cone), **settings)
                except (ValueError, TypeError) as e:  # bad cone / settings are rejected at setup
                    out.append(_failed(n, m, Status.INVALID_PROBLEM, str(e)))
                    continue
                warm = False
            else:
                solver.update(b=b, c=c)
                warm = True  # SCS reuses the previous instance's solution
            if "x0" in d:
                res = solver.solve(warm_start=True, x=d["x0"], y=d["y0"], s=d["s0"])
            else:
                res = solver.solve(warm_start=warm)
            info = res["info"]
            status = self.map_status(int(info["status_val"]))
            if status in (Status.FAILED, Status.NUMERICAL_ERROR) and int(info["iter"]) >= int(settings["max_iters"]):
                status = Status.MAX_ITER  # name the cause: the iteration limit, not an unknown failure
            if not status.ok:
                sol = _failed(n, m, status, info["status"])
                sol.iterations = int(info["iter"])
                out.append(sol)
                continue
            out.append(
                HostSolution(
                    {k: np.asarray(res[k], dtype=np.float64) for k in ("x", "y", "s")},
                    status,
                    int(info["iter"]),
                    info["status"],
                )
            )
        return out
