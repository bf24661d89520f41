r"""Suite ``core``: kktbridge's ``custom_root`` / ``custom_fixed_point`` against JAXopt's.

Same problems, same forward solver, same linear solver (one callable passed to both sides), jitted,
float64; only the implicit-differentiation layer differs. Ratios are JAXopt time / kktbridge time
(> 1: kktbridge faster); the target is reverse mode at least as fast as JAXopt's at every size.

* **ridge** (``custom_root``): :math:`w^\star(\lambda) = \arg\min_w \tfrac12\|Xw - y\|^2 +
  \tfrac\lambda2\|w\|^2`, optimality :math:`F = X^\top(Xw - y) + \lambda w`, forward by a
  Cholesky solve, IFT system by conjugate gradient. Timed: ``value_and_grad`` of the validation
  loss :math:`\tfrac12\|X_v w^\star - y_v\|^2` in :math:`\lambda`, and ``jacrev`` of
  :math:`w^\star(\lambda)` (``p`` cotangents).
* **svm-pg / svm-md** (``custom_fixed_point``): the dual multiclass SVM of the JAXopt paper,
  :math:`\beta^\star(\theta) = \arg\min_{\beta \in \triangle^m} \tfrac1{2\theta}\|X^\top(Y -
  \beta)\|_F^2 + \langle\beta, Y\rangle`, as the fixed point of projected gradient
  :math:`T(\beta) = \Pi_\triangle(\beta - \eta\nabla g)` (row-wise Euclidean simplex projection)
  or of mirror descent :math:`T(\beta) = \beta \odot e^{-\eta\nabla g} / \langle\cdot, 1\rangle`
  (row-wise), forward by a fixed number of iterations, IFT system by BiCGSTAB (nonsymmetric).
  Timed: ``value_and_grad`` of the validation loss in :math:`\theta`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, max_rel_diff, ratio, time_call

RIDGE_FULL = [(200, 50), (2000, 500)]  # (samples, features)
RIDGE_QUICK = [(100, 20)]
SVM_FULL = [(100, 50), (200, 200)]  # (samples, features); 5 classes
SVM_QUICK = [(30, 10)]
CLASSES = 5
SVM_ITERS_FULL, SVM_ITERS_QUICK = 300, 20
TARGET_RATIO = 1.0


def _svm_kinds(quick: bool) -> tuple:
    return ("pg",) if quick else ("pg", "md")  # --quick: a smoke test of every code path but one


def steps(quick: bool) -> int:
    return len(RIDGE_QUICK if quick else RIDGE_FULL) + len(_svm_kinds(quick)) * len(SVM_QUICK if quick else SVM_FULL)


def _linear_solver(name: str):
    """One callable, handed to both libraries, so both solve the same IFT system the same way."""
    import functools

    from kktbridge import linear_solve

    if name == "cg":
        return functools.partial(linear_solve.solve_cg, tol=1e-10, maxiter=1000)
    return functools.partial(linear_solve.solve_bicgstab, tol=1e-10, maxiter=1000)


def _ridge(n: int, p: int, lib: str):
    """``(value_and_grad, jacrev)``, each ``(lam, data) -> ...``: data are jit arguments, not
    constants (as in JAXopt's examples; also keeps XLA from constant-folding ``X^T X``)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    X, Xv = rng.standard_normal((n, p)) / np.sqrt(n), rng.standard_normal((n, p)) / np.sqrt(n)
    w0 = rng.standard_normal(p)
    y, yv = X @ w0 + 0.1 * rng.standard_normal(n), Xv @ w0
    data = tuple(map(jnp.asarray, (X, y, Xv, yv)))

    def F(w, lam, X, y):
        return X.T @ (X @ w - y) + lam * w

    def solver(init, lam, X, y):
        del init
        return jax.scipy.linalg.solve(X.T @ X + lam * jnp.eye(p), X.T @ y, assume_a="pos")

    solve = _linear_solver("cg")
    if lib == "kktbridge":
        from kktbridge import custom_root
    else:
        from jaxopt.implicit_diff import custom_root
    w_star = custom_root(F, solve=solve)(solver)
    init = jnp.zeros(p)

    def val_loss(lam, data):
        X, y, Xv, yv = data
        w = w_star(init, lam, X, y)
        return 0.5 * jnp.sum((Xv @ w - yv) ** 2)

    vg = jax.jit(jax.value_and_grad(val_loss))
    jr = jax.jit(jax.jacrev(lambda lam, data: w_star(init, lam, data[0], data[1])))
    return (lambda lam: vg(lam, data)), (lambda lam: jr(lam, data))


def _svm(m: int, p: int, kind: str, iters: int, lib: str):
    """``theta -> value_and_grad`` of the validation loss (data passed as jit arguments)."""
    import jax
    import jax.numpy as jnp

    from kktbridge.projection import projection_simplex

    rng = np.random.default_rng(1)
    W_true = rng.standard_normal((p, CLASSES))
    X, Xv = rng.standard_normal((m, p)) / np.sqrt(p), rng.standard_normal((m, p)) / np.sqrt(p)
    Y = np.eye(CLASSES)[np.argmax(X @ W_true + 0.5 * rng.standard_normal((m, CLASSES)), 1)]
    Yv = np.eye(CLASSES)[np.argmax(Xv @ W_true, 1)]
    data = tuple(map(jnp.asarray, (X, Y, Xv, Yv)))
    proj_rows = jax.vmap(projection_simplex)

    def grad_g(beta, theta, X, Y):
        return -(X @ (X.T @ (Y - beta))) / theta + Y

    def projected_gradient(beta, theta, X, Y, lip):
        return proj_rows(beta - (theta / lip) * grad_g(beta, theta, X, Y))

    def mirror_descent(beta, theta, X, Y, lip):
        # Mirror descent with the entropy: a multiplicative update, renormalised per row
        # (step theta / lip keeps it stable; the max-shift avoids overflow).
        g = -(theta / lip) * grad_g(beta, theta, X, Y)
        e = beta * jnp.exp(g - jnp.max(g, axis=1, keepdims=True))
        return e / jnp.sum(e, axis=1, keepdims=True)

    T = projected_gradient if kind == "pg" else mirror_descent

    def iterate(beta0, theta, X, Y, lip):
        return jax.lax.fori_loop(0, iters, lambda _, b: T(b, theta, X, Y, lip), beta0)

    solve = _linear_solver("bicgstab")
    if lib == "kktbridge":
        from kktbridge import custom_fixed_point
    else:
        from jaxopt.implicit_diff import custom_fixed_point
    beta_star = custom_fixed_point(T, solve=solve)(iterate)
    beta0 = jnp.full(Y.shape, 1.0 / CLASSES)

    def val_loss(theta, data):
        X, Y, Xv, Yv = data
        lip = jax.lax.stop_gradient(jnp.linalg.norm(X, 2) ** 2)
        beta = beta_star(beta0, theta, X, Y, lip)
        W = X.T @ (Y - beta) / theta
        return 0.5 * jnp.sum((Xv @ W - Yv) ** 2)

    vg = jax.jit(jax.value_and_grad(val_loss))
    return lambda theta: vg(theta, data)


def run(ctx: Context) -> SuiteResult:
    import warnings

    import jax
    import jax.numpy as jnp

    res = SuiteResult("core")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "JAXopt is no longer maintained"
            import jaxopt.implicit_diff  # noqa: F401
    except Exception as e:  # jaxopt is in the test extra, not a runtime dependency
        return SuiteResult("core", status="unavailable", reason=f"unavailable: jaxopt ({type(e).__name__}: {e})"[:300])
    res.notes.append("ratio = JAXopt min ms / kktbridge min ms (fastest warm call: robust to a shared machine's "
                     "load; medians shown too); same forward solver, same linear-solver callable")
    labels, series = [], {"kktbridge": [], "jaxopt": []}
    lam = jnp.asarray(0.5)
    theta = jnp.asarray(1.0)
    kw: dict[str, Any] = dict(min_total_s=0.2, max_repeats=30)  # the two libraries alternate problem by problem

    def record(problem: str, size: str, what: str, fns: dict, arg) -> None:
        times, outs = {}, {}
        for lib, fn in fns.items():
            times[lib] = time_call(lambda: fn(arg), ctx.repeats, **kw)
            outs[lib] = fn(arg)
        kb, jo = times["kktbridge"], times["jaxopt"]
        row = {"problem": problem, "size": size, "timed": what,
               "kktbridge_ms": kb["median_ms"], "jaxopt_ms": jo["median_ms"],
               "kktbridge_min_ms": kb["min_ms"], "jaxopt_min_ms": jo["min_ms"],
               "ratio": ratio(jo["min_ms"], kb["min_ms"]),
               "grad_rel_diff": max_rel_diff(outs["kktbridge"], outs["jaxopt"])}
        res.rows.append(row)
        labels.append(f"{problem} {size} {what}")
        series["kktbridge"].append(kb["min_ms"])
        series["jaxopt"].append(jo["min_ms"])
        res.targets.append(Target(f"{problem} {size} {what}: reverse mode speed vs JAXopt", row["ratio"],
                                  TARGET_RATIO, ">="))

    for n, p in RIDGE_QUICK if ctx.quick else RIDGE_FULL:
        ctx.step(f"core ridge n={n} p={p}")
        built = {lib: _ridge(n, p, lib) for lib in ("kktbridge", "jaxopt")}
        record("ridge", f"n={n},p={p}", "value_and_grad", {lib: b[0] for lib, b in built.items()}, lam)
        if not ctx.quick:
            record("ridge", f"n={n},p={p}", "jacrev w*", {lib: b[1] for lib, b in built.items()}, lam)
        jax.clear_caches()
    iters = SVM_ITERS_QUICK if ctx.quick else SVM_ITERS_FULL
    for kind in _svm_kinds(ctx.quick):
        for m, p in SVM_QUICK if ctx.quick else SVM_FULL:
            ctx.step(f"core svm-{kind} m={m} p={p}")
            fns = {lib: _svm(m, p, kind, iters, lib) for lib in ("kktbridge", "jaxopt")}
            record(f"svm-{kind}", f"m={m},p={p}", "value_and_grad", fns, theta)
            jax.clear_caches()
    res.notes.append(f"svm: {CLASSES} classes, {iters} forward iterations; IFT solve BiCGSTAB (tol 1e-10)")
    res.plot = {"x": labels, "series": series, "ylabel": "reverse mode ms (fastest warm call)", "logy": True}
    return res
