"""``python -m kktbridge bench``: benchmark suites, JSON/PNG output and a summary table.

Every suite module exposes ``run(ctx) -> SuiteResult``. A suite reports *rows* (one per problem
size / method: medians in milliseconds, ratios against peers measured in the same run, gradient
agreement) and *targets* (a measured value compared with a threshold, printed MET / MISSED).
Timings are medians over ``ctx.repeats`` warm calls; compile time is measured separately.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from typing import Any, Callable, Optional, Sequence

#: Suite name -> module (under ``kktbridge._bench``).
SUITES: dict[str, str] = {
    "qp-layer": "qp_layer",
    "qp-solvers": "qp_solvers",
    "conic-solvers": "conic_solvers",
    "socp-layer": "socp_layer",
    "nlp": "nlp",
    "eager": "eager",
    "implicit-vs-unrolled": "implicit_vs_unrolled",
    "scaling": "scaling",
    "gpu": "gpu",
    "core": "core",
    "sparse": "sparse",
    "scale-out": "scale_out",
}


@dataclasses.dataclass
class Target:
    """A performance target: ``value`` compared with ``threshold`` (``>=`` or ``<=``)."""

    name: str
    value: Optional[float]  # None (or NaN): not measured, so not met
    threshold: float
    op: str  # ">=" or "<="

    @property
    def met(self) -> bool:
        if self.value is None or not math.isfinite(self.value):
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


@dataclasses.dataclass
class SuiteResult:
    """What one suite measured (``status``: ``ok``, ``skipped``, ``unavailable`` or ``error``)."""

    suite: str
    status: str = "ok"
    reason: str = ""
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    targets: list[Target] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    plot: Optional[dict[str, Any]] = None  # {"x": labels, "series": {name: values}, "ylabel": str, "logy": bool}
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = [{**dataclasses.asdict(t), "met": t.met} for t in self.targets]
        return d


class Progress:
    """A dependency-free progress bar on stderr (``\\r``-redrawn; plain lines when not a TTY)."""

    def __init__(self, total: int, stream=None, width: int = 28) -> None:
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def step(self, message: str, advance: int = 1) -> None:
        self.done = min(self.done + advance, self.total)
        frac = self.done / self.total
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        text = f"[{bar}] {self.done:3d}/{self.total} {time.perf_counter() - self.t0:6.1f}s {message}"
        if self.tty:
            self.stream.write("\r" + text[:118].ljust(118))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


@dataclasses.dataclass
class Context:
    """Shared settings handed to every suite."""

    quick: bool
    repeats: int
    progress: Progress

    def step(self, message: str) -> None:
        self.progress.step(message)


# ----------------------------------------------------------------------------------- helpers


def block(x: Any) -> Any:
    """Wait for JAX results (no-op for numpy / Python values)."""
    try:
        import jax

        return jax.block_until_ready(x)
    except Exception:
        return x


def time_call(fun: Callable[[], Any], repeats: int, warmup: int = 1, min_total_s: float = 0.3,
              max_repeats: int = 50) -> dict[str, float]:
    """Median / min wall time of ``fun()`` in ms over warm calls; the first call separately.

    At least ``repeats`` calls, more (up to ``max_repeats``) while less than ``min_total_s``
    has been spent, so millisecond timings get enough samples for a stable median.
    Returns ``{"first_ms", "median_ms", "min_ms", "n"}``; ``first_ms`` includes compilation.
    """
    t0 = time.perf_counter()
    block(fun())
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        block(fun())
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_total_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        block(fun())
        times.append(time.perf_counter() - t0)
    return {"first_ms": first * 1e3, "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "n": len(times)}


def peak_python_memory(fun: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fun`` under :mod:`tracemalloc`; return its result and the peak traced memory in MiB.

    tracemalloc sees Python and NumPy allocations (NumPy reports to it), not XLA's buffers.
    """
    tracemalloc.start()
    try:
        out = block(fun())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak / 2**20


def max_rel_diff(a: Any, b: Any) -> float:
    """``max|a - b| / max(max|b|, 1e-12)`` over matching pytrees/arrays."""
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = max((float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb)), default=0.0)
    den = max((float(np.max(np.abs(np.asarray(y)))) for y in lb), default=0.0)
    return num / max(den, 1e-12)


def ratio(slow: Optional[float], fast: Optional[float]) -> Optional[float]:
    if slow is None or fast is None or not fast > 0:
        return None
    return slow / fast


# ----------------------------------------------------------------------------------- output


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1e4 or a < 1e-2:
            return f"{v:.2e}"
        return f"{v:.3g}" if a < 100 else f"{v:.0f}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned text table over the union of the rows' keys (first-seen order)."""
    if not rows:
        return "  (no rows)"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(keys), "  " + "-" * (sum(widths) + 2 * (len(widths) - 1))] + [line(c) for c in cells])


def format_report(results: Sequence[SuiteResult]) -> str:
    out = []
    for r in results:
        out.append(f"== {r.suite} [{r.status}] ({r.wall_s:.1f} s)" + (f": {r.reason}" if r.reason else ""))
        if r.rows:
            out.append(format_table(r.rows))
        for t in r.targets:
            v = "n/a" if t.value is None else _fmt(float(t.value))
            out.append(f"  target {t.name}: {v} {t.op} {_fmt(float(t.threshold))}  -> {'MET' if t.met else 'MISSED'}")
        out += [f"  note: {n}" for n in r.notes]
        out.append("")
    return "\n".join(out)


def write_plot(results: Sequence[SuiteResult], path: str) -> None:
    """One panel per suite with plot data (Agg backend, PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = [r for r in results if r.plot and r.plot.get("series")]
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no plottable results", ha="center", va="center")
    for ax, r in zip(axes.flat, panels):
        plot = r.plot or {}  # panels all have one
        labels = [str(x) for x in plot["x"]]
        series = plot["series"]
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            vals = [v if (v is not None and math.isfinite(v)) else 0.0 for v in values]
            ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))], vals, width, label=name)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, fontsize=7, ha="right")
        if plot.get("logy", True):
            ax.set_yscale("log")
        ax.set_ylabel(plot.get("ylabel", "ms"))
        ax.set_title(r.suite, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python numbers, unknown -> str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    try:
        v = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return v if math.isfinite(v) else None


def _environment() -> dict[str, Any]:
    import platform

    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import jax

        env["jax"] = jax.__version__
        env["devices"] = [str(d) for d in jax.devices()]
    except Exception:
        pass
    return env


def run_bench(
    suites: Optional[Sequence[str]] = None,
    *,
    quick: bool = False,
    json_path: str = "bench-results/bench.json",
    plot_path: str = "bench-results/bench.png",
    repeats: Optional[int] = None,
    stream=None,
) -> int:
    """Run the selected suites (default all), print the report, write JSON and PNG.

    Returns 0 unless a suite crashed (targets MISSED do not change the exit code: they are
    measurements, not checks).
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    names = list(suites) if suites else list(SUITES)
    for name in names:
        if name not in SUITES:
            raise ValueError(f"suite: unknown suite {name!r}; expected one of {list(SUITES)}")
    modules = {name: importlib.import_module(f"kktbridge._bench.{SUITES[name]}") for name in names}
    total = sum(m.steps(quick) for m in modules.values())
    ctx = Context(quick=quick, repeats=repeats or (3 if quick else 7), progress=Progress(total, stream))
    results = []
    t_all = time.perf_counter()
    for name, module in modules.items():
        t0 = time.perf_counter()
        done_before = ctx.progress.done
        try:
            result = module.run(ctx)
        except Exception as e:  # report and continue with the other suites
            import traceback

            traceback.print_exc()
            result = SuiteResult(name, status="error", reason=f"{type(e).__name__}: {e}"[:300])
        # Keep the bar consistent if a suite skipped some of its steps.
        remaining = done_before + module.steps(quick) - ctx.progress.done
        if remaining > 0:
            ctx.progress.step(f"{name} done", remaining)
        result.wall_s = time.perf_counter() - t0
        results.append(result)
    report = format_report(results)
    print(f"\nkktbridge bench ({'quick' if quick else 'full'}; medians of {ctx.repeats} warm repeats; "
          f"ratios = peer time / kktbridge time; total {time.perf_counter() - t_all:.1f} s)\n")
    print(report)
    payload = {
        "quick": quick,
        "repeats": ctx.repeats,
        "environment": _environment(),
        "suites": {r.suite: r.to_json() for r in results},
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(_clean(payload), f, indent=2)
    write_plot(results, plot_path)
    print(f"wrote {json_path} and {plot_path}")
    return 1 if any(r.status == "error" for r in results) else 0
