r"""PIQP adapter: convex QPs ``min ½xᵀPx + qᵀx s.t. Ax = b, Gx ≤ h`` by a proximal interior-point method.

PIQP solves ``min ½xᵀPx + cᵀx s.t. Ax = b, h_l ≤ Gx ≤ h_u, x_l ≤ x ≤ x_u`` and returns ``y``
(equalities) and ``z_l, z_u ≥ 0`` (lower / upper side of the ``G`` rows) with
``Px + c + Aᵀy + Gᵀ(z_u - z_l) + (box terms) = 0``. Here ``c = q``, ``h_l`` and the box bounds are
absent, ``h_u = h``; so ``ν = y`` and ``λ = z_u - z_l`` (``z_l = 0`` without lower bounds).

Rows with ``h_i = +∞`` are removed before the solver sees them (their ``λ_i = 0``): PIQP would
zero them itself, but prints a warning from C for every such solve, which no ``verbose`` setting
silences.

Accuracy: an interior-point method stops at a small but non-zero barrier parameter, so the
solution error is about the tolerance. ``eps_abs = eps_rel = 1e-12`` plus the duality-gap check
at the same level gives solutions within ~1e-10 of an exact active-set solver on the bench
problems (measured: 1e-10 tolerances left errors up to 2e-7 at n = 500), still in 8-13 iterations.

Batches: the solve holds the GIL (a thread pool is slower than a loop, measured), so a batch with
shared ``P, A, G`` is one chunk on one ``DenseSolver`` (``SparseSolver`` with option
``backend="sparse"``): set up once, then ``update``-d with ``c, b, h_u`` (the pattern of finite
``h`` rows must stay the same, otherwise it is set up afresh). Interior-point methods do not
warm-start, so ``x0, y0`` are ignored. An indefinite ``P`` is not detected by PIQP (it returns a
stationary point as solved); convexity is checked by one Cholesky factorisation at setup.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import numpy as np

from kktbridge.adapters._qp_common import DenseQPAdapter
from kktbridge.core._status import Status

#: ``piqp.Status`` values (PIQP 0.7 defines exactly these) -> Status.
_STATUS: dict[int, Status] = {
    1: Status.SOLVED,  # PIQP_SOLVED
    -1: Status.MAX_ITER,  # PIQP_MAX_ITER_REACHED
    -2: Status.INFEASIBLE,  # PIQP_PRIMAL_INFEASIBLE
    -3: Status.UNBOUNDED,  # PIQP_DUAL_INFEASIBLE
    -8: Status.NUMERICAL_ERROR,  # PIQP_NUMERICS
    -9: Status.FAILED,  # PIQP_UNSOLVED
    -10: Status.INVALID_PROBLEM,  # PIQP_INVALID_SETTINGS
}

DEFAULT_OPTIONS: dict[str, Any] = {
    "eps_abs": 1e-12,
    "eps_rel": 1e-12,
    "check_duality_gap": True,
    "eps_duality_gap_abs": 1e-12,
    "eps_duality_gap_rel": 1e-12,
    "max_iter": 500,
    "verbose": False,
    "backend": "dense",
}

_BACKENDS = ("dense", "sparse")


class PIQPAdapter(DenseQPAdapter):
    """PIQP. Data: ``P, q, A, b, G, h`` (dense; ``h`` may hold ``+inf``); ``x0, y0`` are ignored.

    Options: every ``piqp`` solver setting plus ``backend`` (``"dense"`` or ``"sparse"``).
    """

    name: ClassVar[str] = "piqp"
    status_map: ClassVar[Mapping[int, Status]] = _STATUS
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ("piqp", "scipy")
    DEFAULT_OPTIONS: ClassVar[dict[str, Any]] = DEFAULT_OPTIONS
    releases_gil: ClassVar[bool] = False
    check_convexity: ClassVar[bool] = True

    def valid_options(self) -> list[str]:
        import piqp

        return [k for k in dir(piqp.DenseSolver().settings) if not k.startswith("_")] + ["backend"]

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        if options.get("backend", "dense") not in _BACKENDS:
            raise ValueError(f"options: backend must be one of {_BACKENDS}, got {options['backend']!r}")

    def setup(self, d, settings):
        import piqp
        import scipy.sparse as sp

        rows = np.isfinite(d["h"])
        sparse = settings["backend"] == "sparse"
        solver = piqp.SparseSolver() if sparse else piqp.DenseSolver()
        for key, value in settings.items():
            if key != "backend":
                setattr(solver.settings, key, value)
        m_eq = d["A"].shape[0]
        b = d["b"] if m_eq else None
        h = d["h"][rows] if rows.any() else None
        # One branch per backend: each solver class takes its own matrix type.
        if isinstance(solver, piqp.SparseSolver):
            A = sp.csc_matrix(d["A"]) if m_eq else None
            G = sp.csc_matrix(d["G"][rows]) if rows.any() else None
            solver.setup(sp.csc_matrix(np.triu(d["P"])), d["q"], A, b, G, None, h)
        else:
            A = np.asfortranarray(d["A"]) if m_eq else None
            G = np.asfortranarray(d["G"][rows]) if rows.any() else None
            solver.setup(np.asfortranarray(d["P"]), d["q"], A, b, G, None, h)
        return solver, rows

    def update(self, solver_rows, d, settings):
        solver, rows = solver_rows
        if not np.array_equal(np.isfinite(d["h"]), rows):
            return self.setup(d, settings)
        kw = {"c": d["q"]}
        if d["A"].shape[0]:
            kw["b"] = d["b"]
        if rows.any():
            kw["h_u"] = d["h"][rows]
        solver.update(**kw)
        return solver_rows

    def solve(self, solver_rows, d, warm: Optional[tuple], settings):
        solver, rows = solver_rows
        native = int(solver.solve())
        r = solver.result
        lam = np.zeros(d["G"].shape[0])
        if rows.any():
            lam[rows] = np.asarray(r.z_u) - np.asarray(r.z_l)
        nu = np.array(r.y) if d["A"].shape[0] else np.zeros(0)
        return np.array(r.x), nu, lam, native, int(r.info.iter)
