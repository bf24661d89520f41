r"""Clarabel adapter: cone programs in SCS form solved by Clarabel's interior-point method.

Clarabel (0.11) solves ``min ½xᵀPx + qᵀx s.t. Ax + s = b, s ∈ K'`` with dual ``z ∈ K'^*`` and
``Px + q + Aᵀz = 0``; here ``P = 0`` and ``q = c``, so its dual sign convention is SCS's
(``Aᵀy + c = 0``). The adapter takes exactly the SCS adapter's data (``A, b, c``, with ``A`` dense
or as coordinates ``A_data, A_rows, A_cols`` turned into CSC without a dense round trip; the SCS
cone dictionary in the adapter's :class:`~kktbridge.core._types.ConicStructure`) and returns SCS-form
``x, y, s``.

Not every SCS block is a Clarabel cone as is, so each block ``s_i ∈ K_i`` is rewritten as
``T_i s_i ∈ K'_i`` with an invertible ``T_i`` (``T`` is block diagonal over the blocks):

* zero, nonnegative, second-order, primal exponential, primal power (``α > 0``): ``T_i = I``;
* PSD: Clarabel vectorises the *upper* triangle column-major (SCS: lower, column-major; both scale
  off-diagonals by ``√2``), so ``T_i`` is the permutation between the two orders;
* dual exponential (``ed``): ``(u, v, w) ∈ K_exp^*  ⇔  (u - v, -u, w) ∈ K_exp`` (substitute
  ``y' = -u > 0`` in ``-u e^{v/u} ≤ e w``, i.e. ``-u e^{(u-v)/(-u)} ≤ w``);
* dual power (``α < 0``, ``a = |α|``): ``(u, v, w) ∈ K_a^*  ⇔  (u/a, v/(1-a), w) ∈ K_a``.

Clarabel then solves ``min cᵀx s.t. (TA)x + s' = Tb, s' ∈ K'``, whose dual is ``z ∈ K'^*`` with
``(TA)ᵀz + c = 0``. The SCS-form solution is ``s = T⁻¹s'`` and ``y = Tᵀz`` (``Aᵀ(Tᵀz) + c = 0``
and ``{s : Ts ∈ K'}^* = Tᵀ K'^*``), so the adapter is exact, not an approximation.

Interior-point iterates do not warm-start usefully, so optional ``x0, y0, s0`` are ignored, and
each instance of a batch is solved independently on the shared thread pool.

Default options (:data:`DEFAULT_OPTIONS`) tighten Clarabel's ``1e-8`` gap/feasibility tolerances
to ``1e-14``/``1e-12``: the implicit derivatives are those of the exact solution and inherit its
error. Interior-point accuracy on curved cones is limited (power cones: ~1e-6, see below), so for
the most accurate derivatives on such cones SCS at ``eps = 1e-12`` is preferable.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Mapping

import numpy as np

from kktbridge.adapters._base import Adapter, HostSolution, cone_and_settings
from kktbridge.adapters.scs import conic_matrix, finite_data
from kktbridge.core._cones import ALL_CONE_KINDS, ConeSpec, cone_blocks, parse_cone
from kktbridge.core._status import Status

#: ``clarabel.SolverStatus`` names (0.11 defines exactly these) -> :class:`Status`.
_STATUS: dict[str, Status] = {
    "Solved": Status.SOLVED,
    "AlmostSolved": Status.SOLVED_INACCURATE,  # met only the reduced tolerances (SOLVED at our defaults, below)
    "PrimalInfeasible": Status.INFEASIBLE,
    "AlmostPrimalInfeasible": Status.INFEASIBLE,
    "DualInfeasible": Status.UNBOUNDED,
    "AlmostDualInfeasible": Status.UNBOUNDED,
    "MaxIterations": Status.MAX_ITER,
    "MaxTime": Status.TIME_LIMIT,
    "NumericalError": Status.NUMERICAL_ERROR,
    "InsufficientProgress": Status.NUMERICAL_ERROR,  # stalled steps: a numerical, not a modelling, problem
    "Unsolved": Status.FAILED,  # solve() never ran to a conclusion
    "CallbackTerminated": Status.FAILED,  # a user termination callback stopped it
}

#: Tight tolerances for accurate derivatives; ``verbose=False`` keeps batches quiet. Users override
#: any Clarabel setting through ``solve_conic(..., solver="clarabel", max_iter=..., tol_feas=...)``.
#: Measured on well-conditioned random LP/SOCP/exp/PSD/power problems: gap 1e-14 / feasibility
#: 1e-12 gives solutions within ~1e-8 of the truth (LP/SOCP/exp/PSD) and ~2e-6 for power cones,
#: whose final iterates stay off the boundary by ~sqrt(gap); 1e-10 was 10-100x worse. When
#: progress stalls first, Clarabel reports AlmostSolved against its "reduced" tolerances, which are
#: tightened from 5e-5 to 1e-7 so that AlmostSolved (-> SOLVED_INACCURATE) is still usable (1e-9 made
#: some PSD instances end in InsufficientProgress although their iterate was within 2e-8).
DEFAULT_OPTIONS: dict[str, Any] = {
    "tol_gap_abs": 1e-14,
    "tol_gap_rel": 1e-14,
    "tol_feas": 1e-12,
    "reduced_tol_gap_abs": 1e-7,
    "reduced_tol_gap_rel": 1e-7,
    "reduced_tol_feas": 1e-7,
    "max_iter": 500,
    "verbose": False,
}

_ED = np.array([[1.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # K_exp^* -> K_exp


def _psd_perm(n: int) -> np.ndarray:
    """``perm[t]`` = SCS index of Clarabel's ``t``-th PSD entry (upper triangle, column-major)."""
    # SCS lower triangle column-major: entry (r, c), r >= c, sits at c*n - c(c-1)/2 + (r - c).
    scs_index = lambda r, c: c * n - c * (c - 1) // 2 + (r - c)  # noqa: E731
    # Clarabel's (i, j), i <= j, column j = SCS's (j, i) by symmetry (same √2 scaling).
    return np.array([scs_index(j, i) for j in range(n) for i in range(j + 1)], dtype=int)


@functools.lru_cache(maxsize=64)
def _clarabel() -> Any:
    """The ``clarabel`` module, typed ``Any``: its names come from a compiled extension without stubs."""
    import clarabel

    return clarabel


def _clarabel_cones():
    """Translation table, cone kind -> ``(size, param) -> (Clarabel cone, T_i, T_i⁻¹)``.

    ``T_i`` maps the block of SCS's ``s`` to Clarabel's convention for the same cone (identity
    where they agree); one entry per kind in :attr:`ClarabelAdapter.CONES`.
    """
    import scipy.sparse as sp

    clarabel = _clarabel()

    def same(cone):
        return lambda size, param: (cone(size, param), sp.identity(size), sp.identity(size))

    def psd(size, n):
        P = sp.csr_matrix((np.ones(size), (np.arange(size), _psd_perm(n))), shape=(size, size))
        return clarabel.PSDTriangleConeT(n), P, P.T

    def power(size, alpha):
        a = abs(float(alpha))
        if not 0.0 < a < 1.0:
            # α = ±1 makes the scaling singular (and Clarabel requires 0 < α < 1).
            raise _Unsupported(f"power-cone parameter {alpha!r} is not supported by Clarabel (needs 0 < |α| < 1)")
        if alpha > 0:
            return clarabel.PowerConeT(a), sp.identity(3), sp.identity(3)
        D = np.array([1.0 / a, 1.0 / (1.0 - a), 1.0])  # dual power cone: a diagonal rescaling
        return clarabel.PowerConeT(a), np.diag(D), np.diag(1.0 / D)

    return {
        "zero": same(lambda size, _: clarabel.ZeroConeT(size)),
        "nonnegative": same(lambda size, _: clarabel.NonnegativeConeT(size)),
        "soc": same(lambda size, _: clarabel.SecondOrderConeT(size)),
        "psd": psd,
        "exp": same(lambda size, _: clarabel.ExponentialConeT()),
        # Clarabel has no dual exponential cone: a fixed linear map takes it to the primal one.
        "exp_dual": lambda size, _: (clarabel.ExponentialConeT(), _ED, np.linalg.inv(_ED)),
        "power": power,
    }


class _Unsupported(Exception):
    """A block this solver cannot take (reported as a failed instance, not raised to the user)."""


def _translate(spec: ConeSpec):
    """Clarabel cones and the block-diagonal ``T``, ``T⁻¹`` (sparse) for an SCS cone spec."""
    import scipy.sparse as sp

    table = _clarabel_cones()
    cones: list = []
    blocks: list = []  # (T_i, T_i^{-1}), sparse or dense
    try:
        for cone, size, param in cone_blocks(spec):
            native, T, Tinv = table[cone.kind](size, param)
            cones.append(native)
            blocks.append((T, Tinv))
    except _Unsupported as e:
        return None, None, None, str(e)
    if not blocks:
        return cones, sp.csr_matrix((0, 0)), sp.csr_matrix((0, 0)), None
    T = sp.block_diag([t for t, _ in blocks], format="csr")
    Tinv = sp.block_diag([ti for _, ti in blocks], format="csr")
    return cones, T, Tinv, None


def _failed(n: int, m: int, status: Status, why: Any, iterations: int = 0) -> HostSolution:
    nan = lambda k: np.full(k, np.nan)  # noqa: E731
    return HostSolution({"x": nan(n), "y": nan(m), "s": nan(m)}, status, iterations, why)


def _settings(options: Mapping[str, Any]):
    """``clarabel.DefaultSettings`` with defaults and user options; ``(settings, error)``."""
    clarabel = _clarabel()
    settings = clarabel.DefaultSettings()
    for key, value in {**DEFAULT_OPTIONS, **options}.items():
        if not hasattr(settings, key):
            return None, f"unknown Clarabel option {key!r}"
        try:
            setattr(settings, key, value)
        except (TypeError, ValueError, OverflowError) as e:
            return None, f"invalid value {value!r} for Clarabel option {key!r}: {e}"
    return settings, None


class ClarabelAdapter(Adapter):
    """Clarabel. Data: ``A, b, c`` (``A`` dense or as coordinates ``A_data, A_rows, A_cols``; ``x0, y0, s0``
    ignored); the SCS cone dict is in the :attr:`structure` record."""

    name: ClassVar[str] = "clarabel"
    kind: ClassVar[str] = "conic"
    status_map: ClassVar[Mapping[str, Status]] = _STATUS
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ('clarabel', 'scipy')
    #: Cone kinds accepted (every kind: :func:`_clarabel_cones` translates each one).
    CONES: ClassVar[frozenset] = ALL_CONE_KINDS

    def map_status(self, native: Any) -> Status:
        # SolverStatus members print as their names ("Solved", ...); key by name so that the map
        # needs no import of clarabel at module load.
        return super().map_status(str(native).rsplit(".", 1)[-1])

    def solve_one(self, data: dict[str, np.ndarray], options: Mapping[str, Any]) -> HostSolution:
        """Solve one SCS-form instance with Clarabel and map the result back to SCS form."""
        import scipy.sparse as sp

        clarabel = _clarabel()

        cone, options = cone_and_settings(self, options)
        b, c = (np.asarray(data[k], dtype=np.float64) for k in ("b", "c"))
        m, n = b.shape[0], c.shape[0]
        if not finite_data(data):
            return _failed(n, m, Status.INVALID_PROBLEM, "non-finite data")
        try:
            spec = parse_cone(cone, m=m)
        except ValueError as e:
            return _failed(n, m, Status.INVALID_PROBLEM, str(e))
        cones, T, Tinv, why = _translate(spec)
        if why is not None or T is None or Tinv is None:  # T, Tinv are None exactly when why is set
            return _failed(n, m, Status.INVALID_PROBLEM, why)
        settings, why = _settings(options)
        if why is not None:
            return _failed(n, m, Status.INVALID_PROBLEM, why)
        A_t = sp.csc_matrix(T @ conic_matrix(data)(data))  # sparse @ sparse: never dense
        b_t = np.asarray(T @ b, dtype=np.float64)
        P = sp.csc_matrix((n, n))
        try:
            solver = clarabel.DefaultSolver(P, c, A_t, b_t, cones, settings)
        except (ValueError, TypeError, RuntimeError) as e:  # inconsistent dimensions / cones
            return _failed(n, m, Status.INVALID_PROBLEM, str(e))
        sol = solver.solve()
        native = str(sol.status).rsplit(".", 1)[-1]
        status = self.map_status(native)
        if native == "AlmostSolved" and _certified_reduced(options):
            # AlmostSolved certifies Clarabel's *reduced* tolerances; kktbridge's defaults set them to
            # 1e-7, tighter than the residual check that every bridge applies afterwards, so such a
            # point is a certified solution. A user who loosens them gets SOLVED_INACCURATE.
            status = Status.SOLVED
        iters = int(sol.iterations)
        if not status.ok:
            return _failed(n, m, status, native, iters)
        x = np.asarray(sol.x, dtype=np.float64)
        z = np.asarray(sol.z, dtype=np.float64)
        s_t = np.asarray(sol.s, dtype=np.float64)
        # Back to SCS form: s = T⁻¹ s', y = Tᵀ z.
        y = np.asarray(T.T @ z, dtype=np.float64)
        s = np.asarray(Tinv @ s_t, dtype=np.float64)
        return HostSolution({"x": x, "y": y, "s": s}, status, iters, native)


def _certified_reduced(options: Mapping[str, Any]) -> bool:
    keys = ("reduced_tol_gap_abs", "reduced_tol_gap_rel", "reduced_tol_feas")
    merged = {**DEFAULT_OPTIONS, **options}
    return all(float(merged[k]) <= 1e-7 for k in keys)


__all__ = ["ClarabelAdapter", "DEFAULT_OPTIONS"]
