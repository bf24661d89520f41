r"""ProxSuite (ProxQP) adapter: convex QPs ``min ½xᵀPx + qᵀx s.t. Ax = b, Gx ≤ h``, dense or sparse.

ProxQP solves ``min ½xᵀHx + gᵀx s.t. Ax = b, l ≤ Cx ≤ u`` by a primal-dual proximal augmented
Lagrangian. Here ``H = P``, ``g = q``, ``C = G``, ``l = -∞``, ``u = h`` (``+∞`` rows allowed as
they are). Its multipliers satisfy ``Hx + g + Aᵀy + Cᵀz = 0`` with ``z > 0`` at an active upper
bound and ``z < 0`` at an active lower bound, so ``ν = results.y`` and ``λ = results.z``
(``≥ 0``: every lower bound is ``-∞``).

Backends (adapter option ``backend``): ``"dense"`` (default; ``proxqp.dense.QP``, dense
factorisations -- the fast choice for the dense problems a ``vmap``-ed layer sees) or
``"sparse"`` (``proxqp.sparse.QP`` on CSC matrices, for large sparse problems).

Accuracy: ``eps_abs = 1e-10`` with ``eps_rel = 0`` and a duality-gap check bound the KKT residual
to ~1e-10 (solutions within ~1e-10 of an exact active-set solver on the bench problems).

Batches: ``QP.solve`` holds the GIL (a thread pool gives no speed-up, measured), so while
``P, A, G`` are shared a batch is solved in one chunk on one ``QP`` object that is ``init``-ed once
(preconditioner and factorisation reused) and then only ``update``-d with ``q, b, h``. Each
instance starts from ProxQP's equality-constrained initial guess: warm-starting from the previous
*instance's* solution was measured 1.05-2.8x slower and less accurate (1.6e-8 at n = 10).
Explicit ``x0, y0`` are used with ``InitialGuess.WARM_START``. For large dense batches
(``n ≥ PARALLEL_MIN_N``) ProxSuite's own ``dense.solve_in_parallel`` (OpenMP, outside the GIL)
solves the batch on ``num_workers()`` threads instead.

ProxQP does not detect an indefinite ``P`` (it returns a saddle point as ``SOLVED``), so
convexity is checked by one Cholesky factorisation at setup
(:func:`~kktbridge.adapters._qp_common.is_convex`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import numpy as np

from kktbridge.adapters._base import num_workers, quiet_stdout
from kktbridge.adapters._qp_common import DenseQPAdapter, failed, invalid_data, is_convex
from kktbridge.core._status import Status

#: ``proxqp.QPSolverOutput`` names (ProxSuite 0.8 defines exactly these) -> Status.
_STATUS: dict[str, Status] = {
    "PROXQP_SOLVED": Status.SOLVED,
    "PROXQP_MAX_ITER_REACHED": Status.MAX_ITER,
    "PROXQP_PRIMAL_INFEASIBLE": Status.INFEASIBLE,
    # Only with primal_infeasibility_solving=True: the closest feasible point of an infeasible
    # problem, not a solution of the one posed.
    "PROXQP_SOLVED_CLOSEST_PRIMAL_FEASIBLE": Status.INFEASIBLE,
    "PROXQP_DUAL_INFEASIBLE": Status.UNBOUNDED,
    "PROXQP_NOT_RUN": Status.FAILED,
}

#: Derivative-grade tolerances: absolute KKT residual and duality gap 1e-10, no relative slack.
#: The infeasibility certificates are tightened with them: at ProxSuite's default 1e-4 a feasible,
#: bounded LP (n = 10, 4 rows plus bounds) was declared PROXQP_PRIMAL_INFEASIBLE in mid-solve,
#: while at 1e-12 it solved in 7 iterations (an infeasible problem still ends infeasible, or at
#: max_iter: either way a failure, never a point).
DEFAULT_OPTIONS: dict[str, Any] = {
    "eps_abs": 1e-10,
    "eps_rel": 0.0,
    "check_duality_gap": True,
    "eps_duality_gap_abs": 1e-10,
    "eps_duality_gap_rel": 0.0,
    "eps_primal_inf": 1e-12,
    "eps_dual_inf": 1e-12,
    "max_iter": 100_000,
    "verbose": False,
    "backend": "dense",
}

#: Smallest ``n`` from which a dense batch goes to ``solve_in_parallel`` (measured: below it the
#: per-QP objects and OpenMP start-up cost more than the sequential update loop).
PARALLEL_MIN_N = 256

_BACKENDS = ("dense", "sparse")


class ProxSuiteAdapter(DenseQPAdapter):
    """ProxQP. Data: ``P, q, A, b, G, h`` (dense; ``h`` may hold ``+inf``), optional ``x0, y0``.

    Options: every ``proxqp.Settings`` attribute plus ``backend`` (``"dense"`` or ``"sparse"``).
    """

    name: ClassVar[str] = "proxsuite"
    status_map: ClassVar[Mapping[str, Status]] = _STATUS
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ("proxsuite", "scipy")
    DEFAULT_OPTIONS: ClassVar[dict[str, Any]] = DEFAULT_OPTIONS
    releases_gil: ClassVar[bool] = False
    check_convexity: ClassVar[bool] = True

    def valid_options(self) -> list[str]:
        from proxsuite import proxqp

        return [k for k in dir(proxqp.dense.QP(1, 0, 0).settings) if not k.startswith("_")] + ["backend"]

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        if options.get("backend", "dense") not in _BACKENDS:
            raise ValueError(f"options: backend must be one of {_BACKENDS}, got {options['backend']!r}")

    def map_exception(self, error: Exception) -> Status:
        return Status.INVALID_PROBLEM

    @staticmethod
    def _configure(qp: Any, settings: Mapping[str, Any]) -> None:
        for key, value in settings.items():
            if key != "backend":
                setattr(qp.settings, key, value)

    def setup(self, d, settings):
        import scipy.sparse as sp
        from proxsuite import proxqp

        n, m_eq, m_ineq = d["P"].shape[0], d["A"].shape[0], d["G"].shape[0]
        lower = np.full(m_ineq, -np.inf)
        if settings["backend"] == "sparse":
            qp = proxqp.sparse.QP(n, m_eq, m_ineq)
            mats = [sp.csc_matrix(d[k]) for k in ("P", "A", "G")]
        else:
            qp = proxqp.dense.QP(n, m_eq, m_ineq)
            mats = [np.asfortranarray(d[k]) for k in ("P", "A", "G")]
        self._configure(qp, settings)
        qp.init(mats[0], d["q"], mats[1], d["b"], mats[2], lower, d["h"])
        return qp

    def update(self, qp, d, settings):
        qp.update(g=d["q"], b=d["b"], u=d["h"], update_preconditioner=False)
        return qp

    def solve(self, qp, d, warm: Optional[tuple], settings):
        from proxsuite import proxqp

        if warm is not None:
            m_eq = d["A"].shape[0]
            x0, y0 = (np.asarray(v, np.float64) for v in warm)
            qp.settings.initial_guess = proxqp.WARM_START
            qp.solve(x0, y0[:m_eq], y0[m_eq:])
        else:
            qp.settings.initial_guess = proxqp.EQUALITY_CONSTRAINED_INITIAL_GUESS
            qp.solve()
        return self._read(qp)

    @staticmethod
    def _read(qp):
        r = qp.results
        return np.array(r.x), np.array(r.y), np.array(r.z), r.info.status.name, int(r.info.iter)

    def solve_batch(self, batch, shared, options):
        settings = {**self.DEFAULT_OPTIONS, **options}
        n = batch[0]["P"].shape[0]
        if len(batch) > 1 and settings["backend"] == "dense" and n >= PARALLEL_MIN_N and not any("x0" in d for d in batch):
            with quiet_stdout(not settings.get("verbose", False)):
                return self._solve_in_parallel(batch, settings)
        return super().solve_batch(batch, shared, options)

    def _solve_in_parallel(self, batch, settings):
        """One ProxQP object per instance in a ``BatchQP``, solved by ``dense.solve_in_parallel``."""
        from proxsuite import proxqp

        n, m_eq, m_ineq = batch[0]["P"].shape[0], batch[0]["A"].shape[0], batch[0]["G"].shape[0]
        out: list = [None] * len(batch)
        qps = proxqp.dense.BatchQP(len(batch))
        slots = []
        for i, d in enumerate(batch):
            d = {k: np.array(v, dtype=np.float64) for k, v in d.items()}  # writable float64 (see _qp_common)
            why = invalid_data(d)
            P = 0.5 * (d["P"] + d["P"].T) if why is None else None  # None exactly when the data is invalid
            if P is None or not is_convex(P):
                status = Status.INVALID_PROBLEM if why else Status.NON_CONVEX
                out[i] = failed(n, m_eq, m_ineq, status, why or "P is not positive semidefinite")
                continue
            qp = qps.init_qp_in_place(n, m_eq, m_ineq)
            self._configure(qp, settings)
            qp.settings.initial_guess = proxqp.EQUALITY_CONSTRAINED_INITIAL_GUESS
            try:
                qp.init(np.asfortranarray(P), d["q"], np.asfortranarray(d["A"]), d["b"], np.asfortranarray(d["G"]),
                        np.full(m_ineq, -np.inf), d["h"])
            except Exception as e:  # noqa: BLE001 - rejected data: this instance only
                out[i] = failed(n, m_eq, m_ineq, self.map_exception(e), f"{type(e).__name__}: {e}")
                continue
            slots.append((i, qps.size() - 1))
        if slots:
            proxqp.dense.solve_in_parallel(qps, num_workers())
        for i, k in slots:
            x, nu, lam, native, iters = self._read(qps.get(k))
            status = self.map_status(native)
            out[i] = (failed(n, m_eq, m_ineq, status, native, iters) if not status.ok else
                      self._solution(x, nu, lam, status, iters, native))
        return out

    @staticmethod
    def _solution(x, nu, lam, status, iters, native):
        from kktbridge.adapters._base import HostSolution

        return HostSolution({"x": x, "eq_dual": nu, "ineq_dual": lam}, status, iters, native)
