"""OSQP adapter: convex QPs ``min ½xᵀPx + qᵀx s.t. Ax = b, Gx ≤ h``.

OSQP's form is ``l ≤ [A; G] x ≤ u`` with ``l = (b, -inf)``, ``u = (b, h)``; its dual ``y`` satisfies
``Px + q + [A; G]ᵀ y = 0``, so ``y = (ν, λ)`` with ``λ ≥ 0`` directly.

Batches (from ``vmap``) are split into one chunk per worker thread. Each chunk sets OSQP up once
and then, instance after instance, only ``update``-s what changes -- vectors always, matrix values
only when ``P`` or ``A``/``G`` are themselves batched -- and warm-starts from the previous solution,
so a batch with fixed matrices is factorised once per thread. Matrices use the union of the
batch's nonzero patterns so that every instance fits the factorised structure.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from kktbridge.adapters._base import ChunkedAdapter, HostSolution, quiet_stdout
from kktbridge.core._status import Status

# osqp.SolverStatus values (OSQP >= 1.0).
_STATUS = {
    1: Status.SOLVED,  # OSQP_SOLVED
    2: Status.SOLVED_INACCURATE,  # OSQP_SOLVED_INACCURATE
    3: Status.INFEASIBLE,  # OSQP_PRIMAL_INFEASIBLE
    4: Status.INFEASIBLE,  # OSQP_PRIMAL_INFEASIBLE_INACCURATE
    5: Status.UNBOUNDED,  # OSQP_DUAL_INFEASIBLE
    6: Status.UNBOUNDED,  # OSQP_DUAL_INFEASIBLE_INACCURATE
    7: Status.MAX_ITER,  # OSQP_MAX_ITER_REACHED
    8: Status.TIME_LIMIT,  # OSQP_TIME_LIMIT_REACHED
    9: Status.NON_CONVEX,  # OSQP_NON_CVX (P not positive semidefinite)
    10: Status.FAILED,  # OSQP_SIGINT
    11: Status.FAILED,  # OSQP_UNSOLVED
}

#: Tight tolerances plus polishing (an exact active-set refinement): derivative quality depends on
#: an accurate active set. ``verbose=False`` keeps batches quiet. Users override any of these.
DEFAULT_OPTIONS: dict[str, Any] = {
    "eps_abs": 1e-9,
    "eps_rel": 1e-9,
    "polishing": True,
    "polish_refine_iter": 10,
    "max_iter": 100_000,
    "verbose": False,
}


def _settings_names() -> list[str]:
    import osqp

    names = [k for k in osqp.OSQP().ext.OSQPSettings.__dict__ if not k.startswith("_")]
    return [k for k in names if k not in ("device", "rho_is_vec")]


def _pattern(mats: Sequence[np.ndarray], upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row/column indices (CSC order) of the union of nonzeros of ``mats``."""
    mask = np.zeros(mats[0].shape, dtype=bool)
    for M in mats:
        mask |= M != 0
    if upper:
        mask = np.triu(mask)
    cols, rows = np.nonzero(mask.T)  # column-major order is CSC order
    return rows, cols


def _csc(M: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    import scipy.sparse as sp

    shape = M.shape
    indptr = np.searchsorted(cols, np.arange(shape[1] + 1))
    return sp.csc_matrix((M[rows, cols], rows, indptr), shape=shape)


class _DenseMatrices:
    """OSQP's ``P`` (upper triangle of the symmetric part) and ``[A; G]`` from dense instances,
    on the union of the batch's nonzero patterns (so every instance fits one factorised structure)."""

    def __init__(self, batch: Sequence[dict]):
        self.P = [0.5 * (d["P"] + d["P"].T) for d in batch]
        self.A = [np.vstack([d["A"], d["G"]]) for d in batch]
        self.p_rows, self.p_cols = _pattern(self.P, upper=True)
        self.a_rows, self.a_cols = _pattern(self.A, upper=False)

    def finite(self, i: int) -> bool:
        return bool(np.all(np.isfinite(self.P[i])) and np.all(np.isfinite(self.A[i])))

    def csc(self, i: int):
        return _csc(self.P[i], self.p_rows, self.p_cols), _csc(self.A[i], self.a_rows, self.a_cols)

    def values(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.P[i][self.p_rows, self.p_cols], self.A[i][self.a_rows, self.a_cols]


class _SparseMatrices:
    """The same from coordinate instances (a sparse ``solve_qp`` input), never densified.

    Every instance has the input's pattern, so the CSC structure is computed once: entry ``k`` of
    the coordinates adds its value (halved off the diagonal, for ``(P + Pᵀ)/2``) to a fixed CSC
    slot, and explicit zeros stay in the structure (OSQP's matrix updates need a fixed pattern).
    """

    def __init__(self, batch: Sequence[dict]):
        from kktbridge.adapters._qp_common import sizes

        d0 = batch[0]
        n, m_eq, m_ineq = sizes(d0)
        self.batch = batch
        r, c = d0["P_rows"].astype(np.int64), d0["P_cols"].astype(np.int64)
        self.p_weight = np.where(r == c, 1.0, 0.5)
        self.p_slots, self.p_struct = self._structure(np.minimum(r, c), np.maximum(r, c), (n, n))
        ra = np.concatenate([d0["A_rows"].astype(np.int64), d0["G_rows"].astype(np.int64) + m_eq])
        ca = np.concatenate([d0["A_cols"].astype(np.int64), d0["G_cols"].astype(np.int64)])
        self.a_slots, self.a_struct = self._structure(ra, ca, (m_eq + m_ineq, n))

    @staticmethod
    def _structure(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]):
        keys = cols * max(shape[0], 1) + rows  # CSC order: by column, then row
        unique, slots = np.unique(keys, return_inverse=True)
        indices = (unique % max(shape[0], 1)).astype(np.int64)
        indptr = np.searchsorted(unique // max(shape[0], 1), np.arange(shape[1] + 1))
        return slots, (indices, indptr, shape, unique.size)

    @staticmethod
    def _sum(slots: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
        return np.bincount(slots, weights=values, minlength=size) if slots.size else np.zeros(size)

    def finite(self, i: int) -> bool:
        d = self.batch[i]
        return all(np.all(np.isfinite(d[k + "_data"])) for k in ("P", "A", "G"))

    def values(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.batch[i]
        P_x = self._sum(self.p_slots, d["P_data"] * self.p_weight, self.p_struct[3])
        A_x = self._sum(self.a_slots, np.concatenate([d["A_data"], d["G_data"]]), self.a_struct[3])
        return P_x, A_x

    def csc(self, i: int):
        import scipy.sparse as sp

        P_x, A_x = self.values(i)
        (pi, pp, ps, _), (ai, ap, as_, _) = self.p_struct, self.a_struct
        return sp.csc_matrix((P_x, pi, pp), shape=ps), sp.csc_matrix((A_x, ai, ap), shape=as_)


class OSQPAdapter(ChunkedAdapter):
    """OSQP. Data: ``P, q, A, b, G, h`` (``P, A, G`` dense, or as coordinates ``P_data, P_rows,
    P_cols``...; absent groups have zero rows), optional ``x0, y0``."""

    name: ClassVar[str] = "osqp"
    kind: ClassVar[str] = "qp"
    status_map: ClassVar[Mapping[int, Status]] = _STATUS
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ('osqp', 'scipy')

    def map_exception(self, error: Exception) -> Status:
        # OSQPException carries OSQP's error code; 4 is OSQP_NONCVX_ERROR (an indefinite P).
        code = error.args[0] if getattr(error, "args", None) else None
        if type(error).__name__ == "OSQPException" and int(code or 0) == 4 or "non-convex" in str(error).lower():
            return Status.NON_CONVEX
        return Status.INVALID_PROBLEM

    def validate_options(self, options: Mapping[str, Any]) -> None:
        valid = sorted(set(_settings_names()) | {"solver_type", "cg_preconditioner", "polish", "warm_start"})
        for key in options:
            if key not in valid:
                raise ValueError(f"options: {key!r} is not an OSQP setting; valid settings: {', '.join(valid)}")

    def solve_chunk(self, batch: Sequence[dict], shared: frozenset, options: Mapping[str, Any]) -> list[HostSolution]:
        settings = {**DEFAULT_OPTIONS, **options}
        with quiet_stdout(not settings.get("verbose", False)):
            return self._solve_chunk(batch, shared, settings)

    def _solve_chunk(self, batch: Sequence[dict], shared: frozenset, settings: Mapping[str, Any]) -> list[HostSolution]:
        import osqp

        from kktbridge.adapters._qp_common import is_sparse, sizes

        n, m_eq, m_ineq = sizes(batch[0])
        m = m_eq + m_ineq
        sparse = is_sparse(batch[0])
        mats = _SparseMatrices(batch) if sparse else _DenseMatrices(batch)
        suffix = "_data" if sparse else ""
        P_batched = "P" + suffix not in shared
        A_batched = not {"A" + suffix, "G" + suffix} <= shared
        solver = None
        out = []
        prev = None
        for i, d in enumerate(batch):
            l = np.concatenate([d["b"], np.full(m - m_eq, -np.inf)])
            u = np.concatenate([d["b"], d["h"]])
            finite = mats.finite(i) and all(np.all(np.isfinite(d[k])) for k in ("q", "b"))
            if not finite or np.isnan(d["h"]).any():
                out.append(_failed(n, m, m_eq, Status.INVALID_PROBLEM, "non-finite data"))
                continue
            if solver is None:
                solver = osqp.OSQP()
                try:
                    P_csc, A_csc = mats.csc(i)
                    solver.setup(P=P_csc, q=d["q"], A=A_csc, l=l, u=u, **settings)
                except Exception as e:  # noqa: BLE001 - e.g. OSQPException(4) for a non-convex P
                    solver = None
                    out.append(_failed(n, m, m_eq, self.map_exception(e), f"{type(e).__name__}: {e}"))
                    continue
            else:
                solver.update(q=d["q"], l=l, u=u)
                if P_batched or A_batched:
                    # OSQP's public update() prints but swallows a failed refactorisation (e.g. a
                    # non-convex P), which would silently solve the *previous* instance's problem:
                    # call the binding, check its code, and set up afresh on failure.
                    P_x, A_x = mats.values(i)
                    rc = solver._solver.update_data_mat(  # pyright: ignore[reportOptionalMemberAccess]  (set by setup(); osqp types it Optional)
                        P_x=P_x if P_batched else None,
                        P_i=None,
                        A_x=A_x if A_batched else None,
                        A_i=None,
                    )
                    if rc:
                        solver = None
                        prev = None
                        try:
                            solver = osqp.OSQP()
                            P_csc, A_csc = mats.csc(i)
                            solver.setup(P=P_csc, q=d["q"], A=A_csc, l=l, u=u, **settings)
                        except Exception as e:  # noqa: BLE001
                            solver = None
                            out.append(_failed(n, m, m_eq, self.map_exception(e), f"{type(e).__name__}: {e}"))
                            continue
            if "x0" in d:
                solver.warm_start(x=d["x0"], y=d.get("y0", np.zeros(m)))
            elif prev is not None:
                solver.warm_start(x=prev[0], y=prev[1])
            res = solver.solve(raise_error=False)  # statuses are mapped, not raised
            status = self.map_status(int(res.info.status_val))
            if status.ok:
                prev = (res.x, res.y)
            x = np.asarray(res.x, dtype=np.float64) if status.ok else np.full(n, np.nan)
            y = np.asarray(res.y, dtype=np.float64) if status.ok else np.full(m, np.nan)
            out.append(
                HostSolution(
                    {"x": x, "eq_dual": y[:m_eq], "ineq_dual": y[m_eq:]},
                    status,
                    int(res.info.iter),
                    f"{res.info.status} (polish {res.info.status_polish})",
                )
            )
        return out


def _failed(n: int, m: int, m_eq: int, status: Status, why: str) -> HostSolution:
    return HostSolution({"x": np.full(n, np.nan), "eq_dual": np.full(m_eq, np.nan), "ineq_dual": np.full(m - m_eq, np.nan)}, status, 0, why)
