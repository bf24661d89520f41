"""Solver-independent status codes and the error raised when a solve fails.

Adapters map every native status of their solver onto :class:`Status`; bridges turn a failed
status into :class:`SolverError` (``on_failure="raise"``) or NaNs (``on_failure="nan"``).
"""

from __future__ import annotations

import enum
from typing import Optional


class Status(enum.IntEnum):
    """Outcome of a solve, shared by every adapter.

    ``SOLVED`` and ``SOLVED_INACCURATE`` are successes (derivatives are computed);
    everything else is a failure.
    """

    SOLVED = 0
    SOLVED_INACCURATE = 1
    INFEASIBLE = 2
    UNBOUNDED = 3
    MAX_ITER = 4
    TIME_LIMIT = 5
    NUMERICAL_ERROR = 6
    INVALID_PROBLEM = 7
    FAILED = 8
    RESIDUAL_TOO_LARGE = 9
    NON_CONVEX = 10

    @property
    def ok(self) -> bool:
        """The solver returned a point (possibly flagged inaccurate): used by adapters for warm starts."""
        return self in (Status.SOLVED, Status.SOLVED_INACCURATE)

    def accepted(self, accept_inaccurate: bool = False) -> bool:
        """Whether values and derivatives are returned under the failure policy.

        Only ``SOLVED`` is accepted by default; ``SOLVED_INACCURATE`` only when the caller opts in
        with ``accept_inaccurate=True`` (a point the solver itself does not certify gives
        derivatives of unknown quality).
        """
        return self is Status.SOLVED or (accept_inaccurate and self is Status.SOLVED_INACCURATE)

    @property
    def message(self) -> str:
        """What the status means and what to try."""
        return _HINTS.get(self, "")


_HINTS = {
    Status.INFEASIBLE: "the constraints admit no feasible point for these parameters; check the data or relax constraints",
    Status.UNBOUNDED: "the objective is unbounded below on the feasible set; add bounds or regularization",
    Status.MAX_ITER: "the iteration limit was reached; raise it (e.g. max_iter=...) or improve scaling/warm start",
    Status.TIME_LIMIT: "the time limit was reached; raise it",
    Status.NUMERICAL_ERROR: "the solver ran into numerical trouble; rescale the problem or tighten/loosen tolerances",
    Status.INVALID_PROBLEM: "the solver rejected the problem definition (NaN/inf values, wrong sizes or invalid options)",
    Status.FAILED: "the solver failed for an unspecified reason",
    Status.SOLVED_INACCURATE: (
        "the solver flagged its solution as inaccurate (e.g. an iteration or time limit hit near the optimum); "
        "tighten or raise the solver's limits, or pass accept_inaccurate=True to use it anyway"
    ),
    Status.RESIDUAL_TOO_LARGE: (
        "the returned point violates the optimality conditions by more than residual_tol, so its derivatives "
        "would be meaningless; tighten the solver tolerance, rescale the problem, or raise residual_tol"
    ),
    Status.NON_CONVEX: "the problem is not convex (e.g. an indefinite P); the solver requires a convex problem",
    Status.SOLVED: "",
}


def _error_bases() -> tuple[type, ...]:
    # ``except diffcp.SolverError`` (what cvxpylayers users write) must keep working: subclass it
    # when diffcp is importable; kktbridge itself never needs diffcp.
    try:
        import diffcp

        return (RuntimeError, diffcp.SolverError)
    except Exception:  # pragma: no cover - diffcp missing or broken
        return (RuntimeError,)


class SolverError(*_error_bases()):  # type: ignore[misc]
    """A solver did not return a usable solution, so no derivative can be trusted.

    Attributes:
      solver: adapter name (``"ipopt"``, ``"osqp"``, ``"scs"``...).
      status: the mapped :class:`Status`.
      native_status: the solver's own status (code or message).
      hint: what to try.
    """

    def __init__(self, solver: str, status: Status, native_status: object = None, hint: Optional[str] = None):
        self.solver = solver
        self.status = Status(status)
        self.native_status = native_status
        self.hint = hint if hint is not None else self.status.message
        native = f" (native status: {native_status})" if native_status is not None else ""
        super().__init__(f"{solver}: {self.status.name}{native}. {self.hint}".rstrip())
