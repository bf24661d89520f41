"""IPOPT adapter (through cyipopt): nonlinear programs with JAX-compiled oracles.

The problem ``min f(x, p) s.t. c_E(x, p) = 0, c_I(x, p) ≤ 0, l ≤ x ≤ u`` reaches IPOPT as
``cl ≤ c(x) ≤ cu`` with ``c = (c_E, c_I)``, ``cl = (0, -inf)``, ``cu = (0, 0)``. Objective,
gradient, constraints, the constraint Jacobian's values (dense or on a detected pattern) and the
lower triangle of the Lagrangian Hessian ``σ ∇²f + Σ λ_i ∇²c_i`` are compiled once per problem
*structure* by the NLP bridge (:class:`kktbridge.core._oracles.NLPOracles`, handed over in the
adapter's :class:`~kktbridge.core._types.NLPStructure` record by
:meth:`~kktbridge.adapters.Adapter.prepare`) and called on the host by IPOPT, on JAX's CPU device;
this adapter does no autodiff itself.

Multiplier conventions (IPOPT's): ``∇f + J_Eᵀν + J_Iᵀλ - z_L + z_U = 0`` with ``λ, z_L, z_U ≥ 0``,
which is exactly the Lagrangian kktbridge's KKT residual uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional

import numpy as np

from kktbridge.adapters._base import Adapter, HostSolution
from kktbridge.core._status import Status
from kktbridge.core._types import NLPStructure

if TYPE_CHECKING:  # the bridge builds the oracles; the adapter only calls them
    from kktbridge.core._oracles import NLPOracles

# Every ApplicationReturnStatus IPOPT documents (cyipopt reports it as info["status"]).
_STATUS = {
    0: Status.SOLVED,  # Solve_Succeeded
    1: Status.SOLVED_INACCURATE,  # Solved_To_Acceptable_Level
    2: Status.INFEASIBLE,  # Infeasible_Problem_Detected
    3: Status.NUMERICAL_ERROR,  # Search_Direction_Becomes_Too_Small
    4: Status.UNBOUNDED,  # Diverging_Iterates
    5: Status.FAILED,  # User_Requested_Stop
    6: Status.SOLVED_INACCURATE,  # Feasible_Point_Found (square problems)
    -1: Status.MAX_ITER,  # Maximum_Iterations_Exceeded
    -2: Status.INFEASIBLE,  # Restoration_Failed (usually locally infeasible)
    -3: Status.NUMERICAL_ERROR,  # Error_In_Step_Computation
    -4: Status.TIME_LIMIT,  # Maximum_CpuTime_Exceeded
    -5: Status.TIME_LIMIT,  # Maximum_WallTime_Exceeded
    -10: Status.INVALID_PROBLEM,  # Not_Enough_Degrees_Of_Freedom
    -11: Status.INVALID_PROBLEM,  # Invalid_Problem_Definition
    -12: Status.INVALID_PROBLEM,  # Invalid_Option
    -13: Status.INVALID_PROBLEM,  # Invalid_Number_Detected
    -100: Status.FAILED,  # Unrecoverable_Exception
    -101: Status.FAILED,  # NonIpopt_Exception_Thrown
    -102: Status.FAILED,  # Insufficient_Memory
    -199: Status.FAILED,  # Internal_Error
}

#: Defaults chosen for derivative quality: a tight tolerance and no output. Users override any.
DEFAULT_OPTIONS: dict[str, Any] = {"tol": 1e-10, "print_level": 0, "sb": "yes", "max_iter": 3000}


def linked_ipopt_version() -> str:
    """The IPOPT release cyipopt was built against, e.g. ``"3.14.19"`` (``""`` without cyipopt).

    Speed depends on it: ``make install`` links the IPOPT 3.14 / MUMPS 5.8 that the casadi wheel
    ships, which solved the same iterations 3-4x faster than Debian's IPOPT 3.11 / MUMPS 5.5."""
    try:
        import cyipopt
    except ImportError:
        return ""
    return ".".join(str(v) for v in getattr(cyipopt, "IPOPT_VERSION", ()))  # compiled, stub-less


class _Problem:
    """cyipopt problem object evaluating the compiled oracles at fixed parameters ``p``.

    IPOPT asks for ``f`` and ``c`` at every trial point of its line search and for ``∇f`` and ``J``
    only at the point it accepts. One cache holds all four at the last point: while trial points
    keep being accepted (the derivatives are asked for at the point of the last values), a new
    point gets all four from one ``first_order`` call; after a rejection, only ``(f, c)`` from the
    ``values`` call, so rejected trials never pay for a derivative (a dense constraint Jacobian
    costs ``n`` JVPs). ``p`` is moved to the device once, not at every oracle call. Outputs are
    host float64 arrays.
    """

    def __init__(self, oracles: "NLPOracles", p: np.ndarray):
        import jax

        from kktbridge.core._xla import top_level

        oracles.ready()  # their compilation may still be running in the background (NLPOracles.warm_up)
        self.o, self.p = oracles, jax.device_put(p)
        self._values, self._first_order, self._hess = (top_level(fn) for fn in (oracles.values, oracles.first_order, oracles.hess))
        self.iterations = 0
        self.x: Optional[np.ndarray] = None
        self.f, self.c = 0.0, np.zeros(0)  # meaningful once self.x is set
        self.g: Optional[np.ndarray] = None
        self.J: Optional[np.ndarray] = None
        self.fused = True  # the first point is always used (IPOPT starts with values + derivatives)

    def _at(self, x) -> bool:
        return self.x is not None and np.array_equal(self.x, x)

    def _all(self, x) -> None:
        f, g, c, J = self._first_order(x, self.p)
        self.x, self.f, self.c = np.array(x, copy=True), float(f), np.asarray(c, dtype=np.float64)
        self.g, self.J = np.asarray(g, dtype=np.float64), np.asarray(J, dtype=np.float64)

    def _point(self, x) -> None:
        if not self._at(x):
            if self.fused:
                self._all(x)
            else:
                f, c = self._values(x, self.p)
                self.x, self.f, self.c, self.g, self.J = np.array(x, copy=True), float(f), np.asarray(c, dtype=np.float64), None, None
            # Until the derivatives at this point are asked for, the point counts as rejected.
            self.fused = False

    def _derivatives(self, x) -> None:
        if self.g is None or not self._at(x):
            self._all(x)
        self.fused = True

    def objective(self, x):
        self._point(x)
        return self.f

    def gradient(self, x):
        self._derivatives(x)
        return self.g

    def constraints(self, x):
        self._point(x)
        return self.c

    def jacobianstructure(self):
        return self.o.jac_rows, self.o.jac_cols

    def jacobian(self, x):
        self._derivatives(x)
        return self.J

    def hessianstructure(self):
        return self.o.hess_rows, self.o.hess_cols

    def hessian(self, x, lagrange, obj_factor):
        return np.asarray(self._hess(x, self.p, obj_factor, lagrange))

    def intermediate(self, alg_mod, iter_count, *args):
        self.iterations = int(iter_count)
        return True


class IpoptAdapter(Adapter):
    """IPOPT through cyipopt. Data: ``x0, p, lower, upper`` (flat); oracles in the :attr:`structure` record.

    ``options`` are IPOPT's own options only; the adapter must be prepared with an
    :class:`~kktbridge.core._types.NLPStructure` (as ``solve_nlp`` does) before it solves.
    """

    name: ClassVar[str] = "ipopt"
    kind: ClassVar[str] = "nlp"
    status_map: ClassVar[Mapping[int, Status]] = _STATUS
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ('cyipopt',)

    #: Options users set most; the suggestions offered for a misspelt name.
    COMMON_OPTIONS: ClassVar[tuple[str, ...]] = (
        "tol", "max_iter", "max_cpu_time", "max_wall_time", "print_level", "sb", "acceptable_tol",
        "acceptable_iter", "constr_viol_tol", "dual_inf_tol", "compl_inf_tol", "mu_strategy", "mu_init",
        "mu_target", "hessian_approximation", "linear_solver", "nlp_scaling_method", "bound_push",
        "bound_frac", "bound_relax_factor", "warm_start_init_point", "derivative_test", "print_timing_statistics",
    )

    def validate_options(self, options: Mapping[str, Any]) -> None:
        """Try every option on a one-variable problem: IPOPT rejects unknown names and bad values
        only when a solve is set up, and reports the reason on stdout."""
        import difflib

        import cyipopt

        class _Tiny:
            def objective(self, x):
                return float(x @ x)

            def gradient(self, x):
                return 2 * x

        nlp = cyipopt.Problem(n=1, m=0, problem_obj=_Tiny(), lb=[-1.0], ub=[1.0])  # pyright: ignore[reportAttributeAccessIssue]  (cyipopt ships no stub for its compiled Problem)
        try:
            for key, value in options.items():
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise ValueError(f"options: {key!r} must be a str, int or float for IPOPT, got {type(value).__name__}")
                try:
                    with _quiet_stdout():
                        nlp.add_option(key, value)
                except TypeError:
                    close = difflib.get_close_matches(key, self.COMMON_OPTIONS, n=3)
                    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                    raise ValueError(
                        f"options: IPOPT rejected {key}={value!r} (unknown option, or a value of the wrong type or "
                        f"range){hint} Common options: {', '.join(self.COMMON_OPTIONS)}"
                    ) from None
        finally:
            nlp.close()

    def solve_one(self, data: dict[str, np.ndarray], options: Mapping[str, Any]) -> HostSolution:
        import cyipopt

        if not isinstance(self.structure, NLPStructure):
            raise ValueError(
                f"structure: the IPOPT adapter solves a prepared NLP (adapter.prepare(NLPStructure(...)), as "
                f"solve_nlp does); got {type(self.structure).__name__}"
            )
        oracles = self.structure.oracles
        n, m, m_eq = oracles.n, oracles.m, oracles.m_eq
        p = np.asarray(data["p"], dtype=np.float64)
        x0 = np.asarray(data["x0"], dtype=np.float64)
        nan = lambda k: np.full(k, np.nan)  # noqa: E731
        bad = {"x": nan(n), "mult_g": nan(m), "mult_x_L": nan(n), "mult_x_U": nan(n)}
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(x0))):
            return HostSolution(_values(bad, m_eq), Status.INVALID_PROBLEM, 0, "non-finite data")
        lo, up = np.asarray(data["lower"]), np.asarray(data["upper"])
        if np.isnan(lo).any() or np.isnan(up).any() or (lo == np.inf).any() or (up == -np.inf).any() or (lo > up).any():
            return HostSolution(_values(bad, m_eq), Status.INVALID_PROBLEM, 0, "NaN or empty bounds")
        cl = np.concatenate([np.zeros(m_eq), np.full(m - m_eq, -np.inf)])
        cu = np.zeros(m)
        with oracles.host_context():
            problem = _Problem(oracles, p)
            nlp = cyipopt.Problem(n=n, m=m, problem_obj=problem,  # pyright: ignore[reportAttributeAccessIssue]  (no stub, as above)
                                  lb=data["lower"], ub=data["upper"], cl=cl, cu=cu)
            for key, value in {**DEFAULT_OPTIONS, **options}.items():
                nlp.add_option(key, value)
            try:
                x, info = nlp.solve(x0)
            except Exception as e:  # cyipopt raises for invalid options and oracle exceptions
                return HostSolution(_values(bad, m_eq), Status.INVALID_PROBLEM, problem.iterations, repr(e))
            finally:
                nlp.close()
        status = self.map_status(info["status"])
        info = dict(info, x=x)
        return HostSolution(_values(info, m_eq), status, problem.iterations, f"{info['status']}: {info.get('status_msg', b'')!r}")


class _quiet_stdout:
    """Silence C-level stdout (IPOPT prints option errors there) for the duration of a block."""

    def __enter__(self):
        import os
        import sys

        sys.stdout.flush()
        self._fd = os.dup(1)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        return self

    def __exit__(self, *exc):
        import os

        os.dup2(self._fd, 1)
        os.close(self._fd)
        os.close(self._null)
        return False


def _values(info: Mapping[str, Any], m_eq: int) -> dict[str, np.ndarray]:
    mult_g = np.asarray(info["mult_g"], dtype=np.float64)
    return {
        "x": np.asarray(info["x"], dtype=np.float64),
        "eq_dual": mult_g[:m_eq],
        "ineq_dual": mult_g[m_eq:],
        "lower_dual": np.asarray(info["mult_x_L"], dtype=np.float64),
        "upper_dual": np.asarray(info["mult_x_U"], dtype=np.float64),
    }
