"""Tight cvxpy reference solves shared by the projection and prox tests."""

from __future__ import annotations

import warnings

import cvxpy as cp


def solve_clarabel_tight(prob: "cp.Problem") -> None:
    """Solve with CLARABEL at 1e-11, retrying at 1e-9 (the tighter one occasionally stalls at
    "optimal_inaccurate"); the problem must end OPTIMAL."""
    for tol in (1e-11, 1e-9):
        with warnings.catch_warnings():  # "solution may be inaccurate": handled by the retry
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol, tol_ktratio=tol)
        if prob.status == cp.OPTIMAL:
            break
    assert prob.status == cp.OPTIMAL, prob.status
