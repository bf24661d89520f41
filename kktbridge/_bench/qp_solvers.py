r"""Suite ``qp-solvers``: the QP adapters' forward solves, host side -- the measurements behind ``solver="auto"``.

For each size ``(n, m_eq, m_ineq, batch)`` the problem of the ``qp-layer`` suite (``P, A, G``
shared, ``q, b, h`` batched) is solved by every installed QP adapter through
:meth:`~kktbridge.adapters.Adapter.solve_batch` -- exactly what one ``vmap``-ed ``solve_qp`` hands
the host -- and, for reference, one instance alone. Reported per solver: batch time (median ms),
µs per instance, single-instance µs, accuracy ``max|x - x_daqp|`` (DAQP's active-set solution is
exact to rounding), and the thread-pool speed-up of independent single solves on all cores
(``> 1`` only for solvers that release the GIL). Targets: the solver ``auto`` picks is never slower
than OSQP, and is within 1.5x of the fastest solver measured.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, ratio, time_call

#: (n, m_eq, m_ineq, batch): the qp-layer bench sizes.
SIZES_FULL = [(10, 2, 5, 128), (100, 10, 50, 32), (500, 50, 200, 8)]
SIZES_QUICK = [(10, 2, 5, 16)]
CANDIDATES = [("osqp", {}), ("daqp", {}), ("proxsuite", {}), ("proxsuite", {"backend": "sparse"}), ("piqp", {}), ("auto", {})]


def steps(quick: bool) -> int:
    return len(SIZES_QUICK if quick else SIZES_FULL)


def batch_of(n: int, m_eq: int, m_ineq: int, batch: int) -> list[dict[str, np.ndarray]]:
    from kktbridge._bench.qp_layer import make_problem

    d = make_problem(n, m_ineq, m_eq, batch)
    return [dict(P=d["P"], q=d["q"][i], A=d["A"], b=d["b"][i], G=d["G"], h=d["h"][i]) for i in range(batch)]


def _pool_speedup(adapter, batch, options) -> float:
    """Sequential single solves / the same solves on the shared thread pool (GIL release test)."""
    from kktbridge.adapters._base import thread_pool

    one = lambda d: adapter.solve_batch([d], frozenset(), options)  # noqa: E731
    t0 = time.perf_counter()
    for d in batch:
        one(d)
    seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(thread_pool().map(one, batch))
    return seq / (time.perf_counter() - t0)


def run(ctx: Context) -> SuiteResult:
    from kktbridge.adapters import auto, available_solvers, get_adapter

    res = SuiteResult("qp-solvers")
    installed = set(available_solvers("qp"))
    shared = frozenset({"P", "A", "G"})
    for n, m_eq, m_ineq, B in SIZES_QUICK if ctx.quick else SIZES_FULL:
        case = f"n={n},m_eq={m_eq},m_ineq={m_ineq},B={B}"
        ctx.step(f"qp-solvers {case}")
        batch = batch_of(n, m_eq, m_ineq, B)
        repeats = max(1, min(ctx.repeats, 3)) if n >= 500 else ctx.repeats
        ref = get_adapter("daqp").solve_batch(batch, shared, {}) if "daqp" in installed else None
        times: dict[str, float] = {}
        for name, options in CANDIDATES:
            if name not in installed:
                continue
            label = name + (f"[{options['backend']}]" if options else "")
            adapter = get_adapter(name)
            t = time_call(lambda: adapter.solve_batch(batch, shared, options), repeats, min_total_s=0.1, max_repeats=10)
            single = time_call(lambda: adapter.solve_batch(batch[:1], frozenset(), options), repeats, min_total_s=0.1, max_repeats=20)
            out = adapter.solve_batch(batch, shared, options)
            err = max(float(np.abs(o.values["x"] - r.values["x"]).max()) for o, r in zip(out, ref)) if ref else None
            row: dict[str, Any] = {"case": case, "solver": label, "batch_ms": t["median_ms"], "us_per_instance": 1e3 * t["median_ms"] / B,
                                   "single_us": 1e3 * single["median_ms"], "max_abs_err_x": err,
                                   "solved": sum(o.status.ok for o in out)}
            if name == "auto":
                row["chose"] = out[0].native_status.split(":")[0]
            elif n < 500:
                row["pool_speedup"] = _pool_speedup(adapter, batch, options)
            res.rows.append(row)
            times[label] = t["median_ms"]
        if "auto" in times and "osqp" in times:
            res.targets.append(Target(f"{case} auto time / OSQP time", ratio(times["auto"], times["osqp"]), 1.0, "<="))
            best = min(v for k, v in times.items() if k != "auto")
            res.targets.append(Target(f"{case} auto time / fastest solver", ratio(times["auto"], best), 1.5, "<="))
    res.notes.append(f"auto rule: osqp when n >= {auto.SPARSE_MIN_N} and density <= {auto.SPARSE_MAX_DENSITY}, else daqp")
    return res
