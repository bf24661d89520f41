r"""Suite ``socp-layer``: a portfolio SOCP layer, kktbridge ``CvxpyLayer`` (SCS, Clarabel) vs cvxpylayers.

.. math::
   w^*(\mu) = \arg\max_w \mu^\top w \ \text{s.t.}\
   \big\|\big(F^\top w,\ \delta w\big)\big\|_2 \le \sigma,\ \mathbf 1^\top w = 1,\ w \ge 0,

with expected returns ``μ`` batched (the ``δ w`` block makes the risk ball strictly convex so the
solution is unique). Measured: forward and forward + backward of ``Σ_i c_iᵀ w_i*`` w.r.t. ``μ``
(medians, warm; kktbridge jitted and eager, with its default SCS and with Clarabel), construction
time, and gradient agreement. The target compares the default layer, jitted, with cvxpylayers.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, max_rel_diff, ratio, time_call

SIZES_FULL = [(20, 5, 32), (100, 10, 8)]  # (assets, factors, batch)
SIZES_QUICK = [(10, 3, 4)]
TARGET_SPEEDUP = 3.0


#: kktbridge rows: (label, CvxpyLayer keywords, jit).
OURS: tuple[tuple[str, dict[str, Any], bool], ...] = (("kktbridge", {}, True), ("kktbridge eager", {}, False), ("kktbridge[clarabel]", {"solver": "clarabel"}, True))


def steps(quick: bool) -> int:
    return (len(OURS) + 1) * len(SIZES_QUICK if quick else SIZES_FULL)


def make_problem(n: int, k: int, batch: int, seed: int = 0):
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, k)) * 0.2
    delta, sigma = 0.05, 0.15
    w = cp.Variable(n)
    mu = cp.Parameter(n)
    risk = cp.norm(cp.hstack([F.T @ w, delta * w]), 2)
    # list[Any]: cvxpy's stubs type `expr == 1` as bool | Equality
    constraints: list[Any] = [risk <= sigma, cp.sum(w) == 1, w >= 0]
    prob = cp.Problem(cp.Maximize(mu @ w), constraints)
    mus = 0.05 + 0.1 * rng.random((batch, n))
    cs = rng.standard_normal((batch, n))
    return prob, [mu], [w], mus, cs


def _functions(layer, jit: bool):
    import jax
    import jax.numpy as jnp

    fwd = lambda mu: layer(mu)[0]  # noqa: E731
    vg = jax.value_and_grad(lambda mu, c: jnp.sum(fwd(mu) * c))
    return (jax.jit(fwd), jax.jit(vg)) if jit else (fwd, vg)


def run(ctx: Context) -> SuiteResult:
    import time

    import jax.numpy as jnp

    from kktbridge.bridges._cvxpy import CvxpyLayer

    res = SuiteResult("socp-layer")
    try:
        from cvxpylayers.jax import CvxpyLayer as PeerLayer
    except Exception as e:  # pragma: no cover
        PeerLayer = None
        res.notes.append(f"cvxpylayers.jax unavailable: {e}")
    labels, series = [], {"kktbridge": [], "cvxpylayers": []}
    for n, k, batch in SIZES_QUICK if ctx.quick else SIZES_FULL:
        case = f"assets={n},factors={k},B={batch}"
        labels.append(case)
        prob, params, variables, mus, cs = make_problem(n, k, batch)
        mus, cs = jnp.asarray(mus), jnp.asarray(cs)
        out: dict[str, Any] = {}
        makers: list[tuple[str, Callable[[], Any], bool]] = [
            (label, lambda kw=kw: CvxpyLayer(prob, params, variables, **kw), jit) for label, kw, jit in OURS
        ]
        if PeerLayer is not None:
            makers.append(("cvxpylayers.jax", lambda: PeerLayer(prob, params, variables), False))
        for label, make, jit in makers:
            ctx.step(f"socp-layer {case}: {label}")
            t0 = time.perf_counter()
            layer = make()
            construct = (time.perf_counter() - t0) * 1e3
            fwd, vg = _functions(layer, jit)
            reps = ctx.repeats if jit else max(1, min(ctx.repeats, 3))
            tf = time_call(lambda: fwd(mus), reps)
            tb = time_call(lambda: vg(mus, cs), reps)
            out[label] = {"case": case, "method": label, "construct_ms": construct,
                          "compile_ms": max(tb["first_ms"] - tb["median_ms"], 0.0) if jit else None,
                          "fwd_ms": tf["median_ms"], "fwd_bwd_ms": tb["median_ms"], "_g": vg(mus, cs)[1]}
        ours = out["kktbridge"]
        series["kktbridge"].append(ours["fwd_bwd_ms"])
        peer = out.get("cvxpylayers.jax")
        series["cvxpylayers"].append(peer["fwd_bwd_ms"] if peer else None)
        if peer:
            # Per kktbridge row: cvxpylayers' time / its time (> 1: kktbridge faster).
            for label, _, _ in OURS:
                r = out[label]
                r["speedup_fwd_bwd_vs_cvxpylayers"] = ratio(peer["fwd_bwd_ms"], r["fwd_bwd_ms"])
            peer["speedup_fwd"] = ratio(peer["fwd_ms"], ours["fwd_ms"])
            peer["speedup_fwd_bwd"] = ratio(peer["fwd_bwd_ms"], ours["fwd_bwd_ms"])
            peer["grad_max_rel_diff"] = max_rel_diff(ours["_g"], peer["_g"])
            res.targets.append(Target(f"{case} fwd+bwd speed-up vs cvxpylayers-JAX", peer["speedup_fwd_bwd"],
                                      TARGET_SPEEDUP, ">="))
        res.rows += [{k: v for k, v in r.items() if not k.startswith("_")} for r in out.values()]
    res.plot = {"x": labels, "series": series, "ylabel": "fwd+bwd ms (median)", "logy": True}
    return res
