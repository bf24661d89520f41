"""Suite ``gpu``: the backward linear algebra (dense LU IFT solve) on GPU vs CPU, when a GPU exists."""

from __future__ import annotations

from typing import Any

from kktbridge._bench import Context, SuiteResult, ratio, time_call

SIZES_FULL = [500, 1000, 2000]
SIZES_QUICK = [200]


def steps(quick: bool) -> int:
    return len(SIZES_QUICK if quick else SIZES_FULL)


def _gpus():
    import jax

    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend at all
        return []


def run(ctx: Context) -> SuiteResult:
    import jax

    from kktbridge._bench.scaling import backward_fn, make_ridge

    gpus = _gpus()
    if not gpus:
        print("gpu: skipped: no GPU")
        return SuiteResult("gpu", status="skipped", reason="skipped: no GPU")
    res = SuiteResult("gpu")
    cpu = jax.devices("cpu")[0]
    labels, series = [], {"cpu": [], "gpu": []}
    for n in SIZES_QUICK if ctx.quick else SIZES_FULL:
        ctx.step(f"gpu n={n}")
        row: dict[str, Any] = {"case": f"ridge KKT n={n}, solve_lu"}
        for name, dev in (("cpu", cpu), ("gpu", gpus[0])):
            args = jax.device_put(make_ridge(n), dev)
            f = jax.jit(backward_fn("lu"))  # runs where its (committed) arguments live
            row[f"{name}_ms"] = time_call(lambda: f(*args), ctx.repeats)["median_ms"]
            series[name].append(row[f"{name}_ms"])
        row["gpu_speedup"] = ratio(row["cpu_ms"], row["gpu_ms"])
        labels.append(f"n={n}")
        res.rows.append(row)
    res.plot = {"x": labels, "series": series, "ylabel": "backward ms", "logy": True}
    return res
