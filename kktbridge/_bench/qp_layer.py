r"""Suite ``qp-layer``: batched QP layers, kktbridge (``CvxpyLayer`` and ``solve_qp`` per solver) vs ``cvxpylayers.jax`` and qpax.

Problem (per batch element ``i``; ``P``, ``G``, ``A`` fixed, ``q, h, b`` batched parameters):

.. math:: x_i^* = \arg\min_x \tfrac12 x^\top P x + q_i^\top x \ \text{s.t.}\ Gx \le h_i,\ Ax = b_i.

Measured per size: forward, and forward + backward of ``L = Σ_i w_iᵀ x_i*`` with respect to
``(q, h, b)``, as medians of warm calls (the kktbridge layer is ``jit``-ed; its compile time is
reported separately); layer construction time and tracemalloc peak for construction plus one
forward + backward call; and the max relative difference between the gradients of the two
layers (cvxpylayers runs SCS at its default tolerance, so agreement is ~1e-3..1e-5, not 1e-10).

``kb.solve_qp`` rows (``solver=`` each QP adapter, ``"auto"`` included; ``vmap``-ed over the batch,
jitted and eager) add the backward share ``bwd/(fwd+bwd)`` and ``grad_fd_rel_err``: the gradient's
directional derivative against a central difference of the loss (step 1e-4: the solution is affine
in ``(q, h, b)`` while the active set is fixed, so the difference has no truncation error).
Targets, for ``solver="auto"`` jitted: forward + backward >= 20x faster than cvxpylayers-JAX,
and backward <= 10 % of forward.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, max_rel_diff, peak_python_memory, ratio, time_call

SIZES_FULL = [(10, 5, 2, 128), (100, 50, 10, 32), (500, 200, 50, 8)]
SIZES_QUICK = [(10, 5, 2, 16)]
TARGET_SPEEDUP = 20.0
TARGET_DERIV_FRACTION = 0.10
#: kktbridge.solve_qp solvers measured as layers (each skipped when its library is missing).
QP_SOLVERS = ("auto", "osqp", "daqp", "proxsuite", "piqp")


def steps(quick: bool) -> int:
    return len(SIZES_QUICK if quick else SIZES_FULL) * (3 + len(QP_SOLVERS))


def make_problem(n: int, m: int, p: int, batch: int, seed: int = 0) -> dict[str, Any]:
    """Random strictly convex, feasible instance with roughly half of the inequalities active."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, n)) / np.sqrt(n)
    P = F @ F.T + 0.5 * np.eye(n)
    G = rng.standard_normal((m, n))
    A = rng.standard_normal((p, n))
    x0 = rng.standard_normal((batch, n))
    slack = np.where(rng.random((batch, m)) < 0.5, 0.0, rng.random((batch, m)))
    h = x0 @ G.T + slack
    b = x0 @ A.T
    # q makes x0 optimal with multipliers on the zero-slack rows, so those constraints are active.
    lam = np.where(slack == 0.0, rng.random((batch, m)) + 0.1, 0.0)
    q = -(x0 @ P) - lam @ G + rng.standard_normal((batch, p)) @ A
    w = rng.standard_normal((batch, n))
    return dict(P=P, G=G, A=A, q=q, h=h, b=b, w=w)


def cvxpy_problem(data: dict[str, Any]):
    import cvxpy as cp

    n, m, p = data["P"].shape[0], data["G"].shape[0], data["A"].shape[0]
    x = cp.Variable(n)
    q, h, b = cp.Parameter(n), cp.Parameter(m), cp.Parameter(p)
    obj = 0.5 * cp.quad_form(x, cp.psd_wrap(data["P"])) + q @ x
    prob = cp.Problem(cp.Minimize(obj), [data["G"] @ x <= h, data["A"] @ x == b])
    return prob, [q, h, b], [x]


def _layer_functions(layer, jit: bool):
    """``(forward, value_and_grad)`` closures around a layer, jitted for kktbridge."""
    import jax
    import jax.numpy as jnp

    def fwd(q, h, b):
        return layer(q, h, b)[0]

    def loss(q, h, b, w):
        return jnp.sum(fwd(q, h, b) * w)

    vg = jax.value_and_grad(loss, argnums=(0, 1, 2))
    if jit:
        fwd, vg = jax.jit(fwd), jax.jit(vg)
    return fwd, vg


def measure(label: str, make_layer, data, ctx: Context, jit: bool, repeats: int) -> dict[str, Any]:
    """Construction time, compile (first-call) time, warm medians, peak memory and gradients."""
    import jax.numpy as jnp

    args = tuple(jnp.asarray(data[k]) for k in ("q", "h", "b"))
    w = jnp.asarray(data["w"])

    t0 = time.perf_counter()
    layer = make_layer()
    construct_ms = (time.perf_counter() - t0) * 1e3
    fwd, vg = _layer_functions(layer, jit)
    t0 = time.perf_counter()
    vg(*args, w)
    first_ms = (time.perf_counter() - t0) * 1e3

    def build_and_run():
        return _layer_functions(make_layer(), jit)[1](*args, w)

    # Peak over construction + one forward/backward call (tracing slows this run, so it is not
    # timed). kktbridge's compiled functions are cached by now; XLA buffers are not traced.
    _, peak_mib = peak_python_memory(build_and_run)
    tf = time_call(lambda: fwd(*args), repeats)
    tb = time_call(lambda: vg(*args, w), repeats)
    grads = vg(*args, w)[1]
    bwd_ms = bwd_cold_ms = None
    if jit:
        # Backward pass alone: the pullback at a fixed forward solution, jitted. "cold": with the
        # host QP backward's factor cache emptied before every call (P, A, G seen for the first
        # time); the warm figure is what a layer called again with the same P, A, G pays.
        import jax

        from kktbridge.core._structured import clear_factor_cache

        _, pullback = jax.vjp(fwd, *args)
        pullback = jax.jit(pullback)
        bwd_ms = time_call(lambda: pullback(w), repeats)["median_ms"]
        bwd_cold_ms = time_call(lambda: (clear_factor_cache(), pullback(w))[1], repeats)["median_ms"]
    return {
        "method": label,
        "construct_ms": construct_ms,
        "compile_ms": max(first_ms - tb["median_ms"], 0.0) if jit else None,
        "fwd_ms": tf["median_ms"],
        "fwd_bwd_ms": tb["median_ms"],
        "bwd_only_ms": bwd_ms,
        "bwd_cold_ms": bwd_cold_ms,
        "peak_mib": peak_mib,
        "grad_fd_rel_err": _fd_check(fwd, args, w, grads),
        "_grads": grads,
    }


def _fd_check(fwd, args, w, grads, step: float = 1e-4) -> float:
    """Relative error of the gradient's directional derivative vs a central difference of the loss."""
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    d = [jnp.asarray(rng.standard_normal(a.shape)) for a in args]
    loss = lambda t: float(jnp.sum(fwd(*(a + t * da for a, da in zip(args, d))) * w))  # noqa: E731
    fd = (loss(step) - loss(-step)) / (2 * step)
    exact = sum(float(jnp.vdot(g, da)) for g, da in zip(grads, d))
    return abs(exact - fd) / max(abs(fd), 1e-12)


def solve_qp_layer(data: dict[str, Any], solver: str):
    """A ``layer(q, h, b) -> (x,)`` of ``kb.solve_qp`` with ``P, G, A`` fixed, ``vmap``-ed over the batch."""
    import jax
    import jax.numpy as jnp

    import kktbridge as kb

    P, G, A = (jnp.asarray(data[k]) for k in ("P", "G", "A"))

    def one(q, h, b):
        return kb.solve_qp(P, q, A, b, G, h, solver=solver).x

    return lambda q, h, b: (jax.vmap(one)(q, h, b),)


def run(ctx: Context) -> SuiteResult:
    import jax

    from kktbridge.bridges._cvxpy import CvxpyLayer

    res = SuiteResult("qp-layer")
    try:
        from cvxpylayers.jax import CvxpyLayer as PeerLayer
    except Exception as e:  # pragma: no cover - depends on the environment
        PeerLayer = None
        res.notes.append(f"cvxpylayers.jax unavailable: {e}")
    try:
        import qpax  # noqa: F401
    except ImportError:
        qpax = None
        res.notes.append("qpax not installed: no qpax comparison")

    sizes = SIZES_QUICK if ctx.quick else SIZES_FULL
    labels, series = [], {"kktbridge": [], "cvxpylayers": [], "qpax": []}
    for n, m, p, batch in sizes:
        case = f"n={n},m={m},p={p},B={batch}"
        labels.append(case)
        data = make_problem(n, m, p, batch)
        prob, params, variables = cvxpy_problem(data)
        ctx.step(f"qp-layer {case}: kktbridge")
        ours = measure("kktbridge", lambda: CvxpyLayer(prob, params, variables), data, ctx, True, ctx.repeats)
        rows = [ours]
        qp_rows = _measure_solve_qp(data, ctx, case)
        peer = None
        if PeerLayer is not None:
            ctx.step(f"qp-layer {case}: cvxpylayers")
            # The peer is slow at large sizes: fewer repeats, median still reported.
            peer = measure("cvxpylayers.jax", lambda: PeerLayer(prob, params, variables), data, ctx, False,
                           max(1, min(ctx.repeats, 3)))
            rows.append(peer)
        if qpax is not None:
            ctx.step(f"qp-layer {case}: qpax")
            rows.append(_measure_qpax(data, ctx))
        else:
            ctx.step(f"qp-layer {case}: qpax skipped")
        # Derivative share of the kktbridge layer: backward pass alone / forward (solve) time.
        deriv_frac = ours["bwd_only_ms"] / ours["fwd_ms"]
        for r in qp_rows:
            out = {"case": case, **{k: v for k, v in r.items() if not k.startswith("_")}}
            if r["bwd_only_ms"] is not None:
                out["bwd_share"] = r["bwd_only_ms"] / (r["fwd_ms"] + r["bwd_only_ms"])
                out["bwd/fwd"] = r["bwd_only_ms"] / r["fwd_ms"]
                out["cold_bwd/fwd"] = r["bwd_cold_ms"] / r["fwd_ms"]
            if peer is not None:
                out["speedup_fwd_bwd_vs_cvxpylayers"] = ratio(peer["fwd_bwd_ms"], r["fwd_bwd_ms"])
            res.rows.append(out)
        auto = next((r for r in qp_rows if r["method"] == "solve_qp[auto] jit"), None)
        if auto is not None:
            if peer is not None:
                res.targets.append(Target(f"{case} solve_qp(auto) fwd+bwd speed-up vs cvxpylayers-JAX",
                                          ratio(peer["fwd_bwd_ms"], auto["fwd_bwd_ms"]), TARGET_SPEEDUP, ">="))
            res.targets.append(Target(f"{case} solve_qp(auto) backward / forward", auto["bwd_only_ms"] / auto["fwd_ms"],
                                      TARGET_DERIV_FRACTION, "<="))
        for r in rows:
            out = {"case": case, **{k: v for k, v in r.items() if not k.startswith("_")}}
            if r is ours:
                out["deriv/solve"] = deriv_frac
            else:
                out["speedup_fwd"] = ratio(r["fwd_ms"], ours["fwd_ms"])
                out["speedup_fwd_bwd"] = ratio(r["fwd_bwd_ms"], ours["fwd_bwd_ms"])
                out["grad_max_rel_diff"] = max_rel_diff(ours["_grads"], r["_grads"])
            res.rows.append(out)
        series["kktbridge"].append(ours["fwd_bwd_ms"])
        series["cvxpylayers"].append(peer["fwd_bwd_ms"] if peer else None)
        if qpax is not None:
            series["qpax"].append(rows[-1]["fwd_bwd_ms"])
        if peer is not None:
            res.targets.append(Target(f"{case} fwd+bwd speed-up vs cvxpylayers-JAX", ratio(peer["fwd_bwd_ms"], ours["fwd_bwd_ms"]),
                                      TARGET_SPEEDUP, ">="))
        res.targets.append(Target(f"{case} derivative / solve time (QP)", deriv_frac, TARGET_DERIV_FRACTION, "<="))
        jax.clear_caches()
    if qpax is None:
        series.pop("qpax")
    res.plot = {"x": labels, "series": series, "ylabel": "fwd+bwd ms (median)", "logy": True}
    return res


def _measure_solve_qp(data, ctx: Context, case: str) -> list[dict[str, Any]]:
    """``kb.solve_qp`` layers for every installed QP solver, jitted and eager."""
    from kktbridge.adapters import available_solvers

    installed = set(available_solvers("qp"))
    out = []
    for solver in QP_SOLVERS:
        ctx.step(f"qp-layer {case}: solve_qp[{solver}]")
        if solver not in installed:
            continue
        for jit in (True, False):
            label = f"solve_qp[{solver}] {'jit' if jit else 'eager'}"
            out.append(measure(label, lambda: solve_qp_layer(data, solver), data, ctx, jit, ctx.repeats))
    return out


def _measure_qpax(data, ctx: Context) -> dict[str, Any]:  # pragma: no cover - qpax optional
    """qpax (Tracy & Manchester): a pure-JAX primal-dual interior point QP layer."""
    import jax
    import jax.numpy as jnp
    import qpax

    P, G, A = (jnp.asarray(data[k]) for k in ("P", "G", "A"))
    args = tuple(jnp.asarray(data[k]) for k in ("q", "h", "b"))
    w = jnp.asarray(data["w"])

    def one(q, h, b):
        return qpax.solve_qp_primal(P, q, A, b, G, h, solver_tol=1e-8)

    fwd = jax.jit(jax.vmap(one))
    vg = jax.jit(jax.value_and_grad(lambda q, h, b, w: jnp.sum(fwd(q, h, b) * w), argnums=(0, 1, 2)))
    tf = time_call(lambda: fwd(*args), ctx.repeats)
    tb = time_call(lambda: vg(*args, w), ctx.repeats)
    grads = vg(*args, w)[1]
    return {"method": "qpax", "construct_ms": 0.0, "compile_ms": tb["first_ms"] - tb["median_ms"],
            "fwd_ms": tf["median_ms"], "fwd_bwd_ms": tb["median_ms"], "peak_mib": None,
            "grad_fd_rel_err": _fd_check(fwd, args, w, grads), "_grads": grads}
