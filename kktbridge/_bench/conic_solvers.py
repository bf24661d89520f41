r"""Suite ``conic-solvers``: SCS vs Clarabel behind ``solve_conic`` -- the measurements behind its default.

Each problem is a cvxpy model canonicalised to SCS standard form (``min cᵀx, Ax + s = b, s ∈ K``)
and solved by every installed conic adapter at kktbridge's derivative-grade defaults (SCS
``eps_abs = eps_rel = 1e-9``; Clarabel ``tol_* = 1e-8`` with certified reduced tolerances), through
the public ``solve_conic`` under ``jax.jit``. Reported per solver: forward and forward + backward
(``∇_b Σ x²``) process-CPU time (min over repeats: the machine may be shared), iterations, the
relative conic residual of the returned point, and the relative difference of the gradient to the
other solver's. Target: the default solver of ``solve_conic`` is within 1.5x of the fastest one on
every problem (forward + backward).
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, max_rel_diff, ratio

SOLVERS = ("scs", "clarabel")


def _portfolio(n: int, k: int, seed: int = 0):
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, k)) * 0.2
    w = cp.Variable(n)
    mu = 0.05 + 0.1 * rng.random(n)
    risk = cp.norm(cp.hstack([F.T @ w, 0.05 * w]), 2)
    # list[Any]: cvxpy's stubs type `expr == 1` as bool | Equality
    constraints: list[Any] = [risk <= 0.15, cp.sum(w) == 1, w >= 0]
    return cp.Problem(cp.Maximize(mu @ w), constraints)


def _lp(n: int, m: int, seed: int = 0):
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    x = cp.Variable(n)
    A = rng.standard_normal((m, n))
    b = A @ rng.random(n) + rng.random(m)
    # Box rows written as two inequalities (not |x| <= 1, whose epigraph variables make the LP
    # degenerate where x_i = 0): a generic vertex, so the solution map is differentiable.
    return cp.Problem(cp.Minimize(rng.standard_normal(n) @ x), [A @ x <= b, x <= 1, x >= -1])


def _entropy(n: int, seed: int = 0):
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    x = cp.Variable(n)
    constraints: list[Any] = [cp.sum(x) == 1]
    return cp.Problem(cp.Minimize(rng.standard_normal(n) @ x - cp.sum(cp.entr(x))), constraints)


def _psd_exp(n: int, seed: int = 0):
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    X = cp.Variable((n, n), PSD=True)
    y = cp.Variable(n)
    C = rng.standard_normal((n, n))
    objective = cp.trace((C + C.T) @ X) + cp.log_sum_exp(y) - cp.sum(y) / 2
    constraints: list[Any] = [cp.trace(X) == 1, cp.abs(y) <= 2, X[0, 0] >= 0.1]
    return cp.Problem(cp.Minimize(objective), constraints)


#: (label, builder, quick?)
PROBLEMS: list[tuple[str, Callable[[], Any], bool]] = [
    ("portfolio SOCP, 20 assets", lambda: _portfolio(20, 5), True),
    ("portfolio SOCP, 100 assets", lambda: _portfolio(100, 10), False),
    ("LP 100 vars, 50 rows", lambda: _lp(100, 50), True),
    ("LP 400 vars, 150 rows", lambda: _lp(400, 150), False),
    ("entropy (exp cone), 50", lambda: _entropy(50), False),
    ("PSD 5x5 + log-sum-exp", lambda: _psd_exp(5), True),
]


def steps(quick: bool) -> int:
    return sum(1 for _, _, q in PROBLEMS if q or not quick)


def scs_form(prob: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(A, b, c, cone)`` of a cvxpy problem in SCS standard form (A dense)."""
    import cvxpy as cp
    import jax.numpy as jnp

    data, _, _ = prob.get_problem_data(cp.SCS)
    dims = data["dims"]
    cone = {"z": dims.zero, "l": dims.nonneg, "q": list(dims.soc), "s": list(dims.psd), "ep": dims.exp}
    cone = {k: v for k, v in cone.items() if v}
    return jnp.asarray(data["A"].toarray()), jnp.asarray(data["b"]), jnp.asarray(data["c"]), cone


def _cpu_ms(fn: Callable[[], Any], repeats: int) -> float:
    import jax

    best = np.inf
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(fn())
        best = min(best, time.process_time() - t0)
    return 1e3 * best


def run(ctx: Context) -> SuiteResult:
    import jax
    import jax.numpy as jnp

    import kktbridge as kb
    from kktbridge.adapters import available_solvers

    res = SuiteResult("conic-solvers")
    default = inspect.signature(kb.solve_conic).parameters["solver"].default
    installed = [s for s in SOLVERS if s in available_solvers("conic")]
    for label, build, quick in PROBLEMS:
        if ctx.quick and not quick:
            continue
        ctx.step(f"conic-solvers {label}")
        A, b, c, cone = scs_form(build())
        times: dict[str, float] = {}
        grads: dict[str, Any] = {}
        rows = []
        for solver in installed:

            def solve(b, solver=solver):
                return kb.solve_conic(A, b, c, cone, solver=solver, on_failure="nan")

            fwd = jax.jit(solve)
            vg = jax.jit(jax.grad(lambda b: jnp.sum(solve(b).x ** 2)))
            sol = fwd(b)
            grads[solver] = vg(b)
            t_f = _cpu_ms(lambda: fwd(b).x, ctx.repeats)
            t_fb = _cpu_ms(lambda: vg(b), ctx.repeats)
            times[solver] = t_fb
            rows.append({"problem": label, "m,n": f"{A.shape[0]},{A.shape[1]}", "solver": solver,
                         "fwd_ms": t_f, "fwd_bwd_ms": t_fb, "iterations": int(sol.iterations),
                         "residual": float(sol.diagnostics.residual), "status": int(sol.status)})
        if len(grads) == 2:
            diff = max_rel_diff(*grads.values())
            for row in rows:
                row["grad_rel_diff_other"] = diff
        res.rows += rows
        if default in times:
            best = min(times.values())
            res.targets.append(Target(f"{label}: default ({default}) fwd+bwd / fastest", ratio(times[default], best), 1.5, "<="))
    res.notes.append(f"solve_conic default: {default!r}; process-CPU time, min over {ctx.repeats} repeats")
    return res
