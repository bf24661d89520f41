r"""Suite ``scaling``: backward-pass time vs problem size, dense direct vs iterative IFT solves.

Ridge regression ``w*(λ) = argmin ½‖Xw - y‖² + ½λ‖w‖²`` with ``X`` of shape ``(n/2, n)``; the
backward pass is :func:`~kktbridge.root_vjp` at ``w*``: one solve with ``H = XᵀX + λI``
(``n`` unknowns, SPD) then a VJP. Compared: ``solve_lu`` (materialise ``H`` with ``n`` matvecs,
LU), ``solve_cg`` (matrix-free), ``solve_gmres``, and the default ``solve_auto``, which is dense
for ``n <= DENSE_MAX_SIZE`` and GMRES above.
"""

from __future__ import annotations

import numpy as np

from kktbridge._bench import Context, SuiteResult, time_call

SIZES_FULL = [250, 500, 1000, 2000, 3000]
SIZES_QUICK = [100]
METHODS = ("lu", "cg", "gmres", "auto")


def steps(quick: bool) -> int:
    return len(SIZES_QUICK if quick else SIZES_FULL)


def make_ridge(n: int, seed: int = 0):
    """``(w*, X, y, λ, cotangent)`` for a random ridge problem with ``n`` features."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((max(n // 2, 1), n)) / np.sqrt(n)
    y = rng.standard_normal(X.shape[0])
    lam = 0.1
    w = np.linalg.solve(X.T @ X + lam * np.eye(n), X.T @ y)
    return tuple(map(jnp.asarray, (w, X, y, lam, rng.standard_normal(n))))


def _optimality(w, X, y, lam):
    return X.T @ (X @ w - y) + lam * w


def backward_fn(method: str):
    """``(w, X, y, lam, v) -> vᵀ ∂w*/∂(X, y, λ)`` with the given linear solver."""
    from kktbridge import root_vjp

    def bwd(w, X, y, lam, v):
        return root_vjp(_optimality, w, (X, y, lam), v, solve=method)

    return bwd


def run(ctx: Context) -> SuiteResult:
    import jax

    from kktbridge.core._linear_solve import DENSE_MAX_SIZE

    res = SuiteResult("scaling")
    res.notes.append(f"solve_auto is dense (LU) for n <= DENSE_MAX_SIZE = {DENSE_MAX_SIZE}, GMRES above")
    labels, series = [], {m: [] for m in METHODS}
    ref = None
    for n in SIZES_QUICK if ctx.quick else SIZES_FULL:
        ctx.step(f"scaling n={n}")
        args = make_ridge(n)
        row = {"n": n, "auto_uses": "lu" if n <= DENSE_MAX_SIZE else "gmres"}
        for m in METHODS:
            f = jax.jit(backward_fn(m))
            t = time_call(lambda: f(*args), ctx.repeats, min_total_s=0.1, max_repeats=10)
            row[f"{m}_ms"] = t["median_ms"]
            series[m].append(t["median_ms"])
            out = f(*args)
            if m == "lu":
                ref = out
            else:
                from kktbridge._bench import max_rel_diff

                row[f"{m}_vs_lu_rel_diff"] = max_rel_diff(out, ref)
        row["fastest"] = min(("lu", "cg", "gmres"), key=lambda m: row[f"{m}_ms"])
        labels.append(f"n={n}")
        res.rows.append(row)
        jax.clear_caches()
    res.plot = {"x": labels, "series": series, "ylabel": "backward ms (median)", "logy": True}
    return res
