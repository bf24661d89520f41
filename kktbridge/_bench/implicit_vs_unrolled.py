r"""Suite ``implicit-vs-unrolled``: hypergradients of a multiclass SVM (the paper's Section 4 setting).

Dual multiclass SVM with ``m`` samples, ``p`` features, ``k`` classes, one-hot labels ``Y``:

.. math::
   \beta^*(\theta) = \arg\min_{\beta \in \triangle^m} \tfrac{1}{2\theta}\|X^\top(Y - \beta)\|_F^2
   + \langle \beta, Y\rangle, \qquad W(\beta) = X^\top(Y - \beta)/\theta,

solved by projected gradient ``T(β, θ) = Π_△(β - η∇g(β))`` (row-wise simplex projection,
``η = θ / ‖X‖₂²``) for a fixed number of iterations. The outer loss is the validation error
``½‖X_val W(β*) - Y_val‖²``; its derivative in ``θ`` (the hypergradient) is computed

* implicitly: ``custom_fixed_point(T)`` (one ``mk``-dimensional linear solve, forward iterations
  not differentiated), and
* by unrolling: reverse-mode through all iterations (``lax.scan``).

Reported: warm ``value_and_grad`` time and XLA's compiled temporary memory
(``compiled.memory_analysis().temp_size_in_bytes``) as the number of features grows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, ratio, time_call

SIZES_FULL = [100, 500, 1000, 2000]  # features p
SIZES_QUICK = [50]
SAMPLES, CLASSES = 100, 5
ITERS_FULL, ITERS_QUICK = 300, 100
TARGET_SPEEDUP = 3.0
SOLVE = "bicgstab"


def steps(quick: bool) -> int:
    return len(SIZES_QUICK if quick else SIZES_FULL)


def make_data(p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    W_true = rng.standard_normal((p, CLASSES))
    X = rng.standard_normal((SAMPLES, p)) / np.sqrt(p)
    Xv = rng.standard_normal((SAMPLES, p)) / np.sqrt(p)
    Y = np.eye(CLASSES)[np.argmax(X @ W_true + 0.5 * rng.standard_normal((SAMPLES, CLASSES)), 1)]
    Yv = np.eye(CLASSES)[np.argmax(Xv @ W_true, 1)]
    return X, Y, Xv, Yv


def build(X, Y, Xv, Yv, iters: int):
    """``(implicit_loss, unrolled_loss)``, both ``θ -> validation loss``."""
    import jax
    import jax.numpy as jnp

    from kktbridge import custom_fixed_point
    from kktbridge.projection import projection_simplex

    X, Y, Xv, Yv = map(jnp.asarray, (X, Y, Xv, Yv))
    lip = jnp.linalg.norm(X, 2) ** 2
    proj_rows = jax.vmap(projection_simplex)

    def T(beta, theta):
        grad = -(X @ (X.T @ (Y - beta))) / theta + Y
        return proj_rows(beta - (theta / lip) * grad)

    def iterate(beta0, theta):
        return jax.lax.scan(lambda b, _: (T(b, theta), None), beta0, None, length=iters)[0]

    beta0 = jnp.full(Y.shape, 1.0 / Y.shape[1])
    # Matrix-free BiCGSTAB: I - ∂T is nonsymmetric, and materialising it (mk matvecs through the
    # sort-based projection) costs more than the whole unrolled backward pass.
    implicit_solver = custom_fixed_point(T, solve=SOLVE)(iterate)

    def outer(beta, theta):
        W = X.T @ (Y - beta) / theta
        return 0.5 * jnp.sum((Xv @ W - Yv) ** 2)

    return (lambda theta: outer(implicit_solver(beta0, theta), theta),
            lambda theta: outer(iterate(beta0, theta), theta))


def _temp_mib(fn, theta) -> float | None:
    try:
        stats = fn.lower(theta).compile().memory_analysis()
        return None if stats is None else stats.temp_size_in_bytes / 2**20
    except Exception:  # memory analysis is backend dependent
        return None


def run(ctx: Context) -> SuiteResult:
    import jax
    import jax.numpy as jnp

    res = SuiteResult("implicit-vs-unrolled")
    iters = ITERS_QUICK if ctx.quick else ITERS_FULL
    res.notes.append(f"m={SAMPLES} samples, k={CLASSES} classes, {iters} projected-gradient iterations")
    labels, series = [], {"implicit": [], "unrolled": []}
    last = None
    theta = jnp.asarray(1.0)
    for p in SIZES_QUICK if ctx.quick else SIZES_FULL:
        ctx.step(f"implicit-vs-unrolled p={p}")
        implicit, unrolled = build(*make_data(p), iters)
        row: dict[str, Any] = {"features": p}
        grads = {}
        for name, loss in (("implicit", implicit), ("unrolled", unrolled)):
            vg = jax.jit(jax.value_and_grad(loss))
            t = time_call(lambda: vg(theta), ctx.repeats, min_total_s=0.2, max_repeats=20)
            row[f"{name}_ms"] = t["median_ms"]
            row[f"{name}_temp_mib"] = _temp_mib(vg, theta)
            grads[name] = float(vg(theta)[1])
            series[name].append(t["median_ms"])
        row["speedup"] = ratio(row["unrolled_ms"], row["implicit_ms"])
        # Unrolled PG differentiates the iterate after a finite number of steps; the two agree
        # only as far as the iterations have converged.
        row["hypergrad_rel_diff"] = abs(grads["implicit"] - grads["unrolled"]) / max(abs(grads["unrolled"]), 1e-12)
        res.rows.append(row)
        labels.append(f"p={p}")
        last = row
        jax.clear_caches()
    if last is not None:
        res.targets.append(Target(f"features={last['features']} implicit speed-up vs unrolled", last["speedup"],
                                  TARGET_SPEEDUP, ">="))
        mems = [r["implicit_temp_mib"] for r in res.rows]
        if all(m is not None for m in mems) and len(mems) > 1:
            # "Flat" = the implicit temporary memory grows less than the feature count does.
            growth = mems[-1] / max(mems[0], 1e-9)
            res.targets.append(Target("implicit temp-memory growth over the feature range / feature growth",
                                      growth / (res.rows[-1]["features"] / res.rows[0]["features"]), 1.0, "<="))
    res.plot = {"x": labels, "series": series, "ylabel": "value_and_grad ms (median)", "logy": True}
    return res
