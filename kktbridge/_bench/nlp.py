r"""Suite ``nlp``: IPOPT through ``solve_nlp``: solve time vs derivative time, and vs the tutorial way.

Problem family (``n`` variables, parameters ``p ∈ Rⁿ``; nonconvex-free but nonlinear):

.. math::
   \min_x \tfrac12\|x - p\|^2 + \tfrac14\textstyle\sum_i x_i^4 \ \text{s.t.}\
   \mathbf 1^\top x = 1,\ \ \|x\|^2 - r \le 0,\ \ x_i x_{i+1} \le c .

Measured: the jitted forward solve, the backward pass alone (pullback at a fixed solution), their
ratio (target ≤ 25%), and warm ``value_and_grad`` of ``L(p) = wᵀx*(p)`` for ``solve_nlp`` and for
the *tutorial-style* baseline re-implemented here (the approach of the IPOPT/JAX tutorial users come
from): a ``pure_callback`` that builds fresh ``jax.jit``-ed objective/gradient/Hessian/constraint
oracles on every call and hands them to ``cyipopt.minimize_ipopt``, plus a ``custom_jvp`` that
solves the dense KKT system ``∂_z R · ż = -∂_p R · ṗ`` of ``R = (∇ₓL, g, μ ⊙ h)``. The gradient
agreement between the two is reported next to the speed-up.
"""

from __future__ import annotations

import functools

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, max_rel_diff, ratio, time_call

SIZES_FULL = [10, 50, 200]
SIZES_QUICK = [10]
TARGET_DERIV_FRACTION = 0.25
TARGET_TUTORIAL_SPEEDUP = 30.0
TARGET_TUTORIAL_VG_MS = 25.0
TOL = 1e-8


def steps(quick: bool) -> int:
    return 2 * (1 + len(SIZES_QUICK if quick else SIZES_FULL))


# The tutorial's own 3-variable problem (shared/references/ipopt-jax-tutorial.md, section 4).
def tutorial_objective(x, p):
    import jax.numpy as jnp

    w = jnp.array([p[1], p[0] * p[1], p[0] * p[1] ** 2 * p[2]])
    return jnp.mean((w * x - jnp.array([1.3, 1.2, 1.05])) ** 2)


def tutorial_eq(x, p):
    import jax.numpy as jnp

    M = jnp.array([1.0, 2, 3, 0, 1, 4, 5, 6, 0]).reshape(3, -1)
    return jnp.log(p) * (M @ x) - jnp.array([0.6931472 * 10, -2.3025851 * 6, 1.609438 * 27])


def tutorial_ineq(x, p):
    """The tutorial's ``p x² ≥ 0`` in the ``≤ 0`` convention."""
    return -(p * x**2)


def objective(x, p):
    import jax.numpy as jnp

    return 0.5 * jnp.sum((x - p) ** 2) + 0.25 * jnp.sum(x**4)


def eq(x, p):
    import jax.numpy as jnp

    return jnp.sum(x, keepdims=True) - 1.0


def ineq(x, p):
    """``≤ 0`` convention (``solve_nlp``)."""
    import jax.numpy as jnp

    return jnp.concatenate([jnp.sum(x**2, keepdims=True) - 0.5, x[:-1] * x[1:] - 0.02])


def make_params(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n), rng.standard_normal(n)


# ------------------------------------------------------------------ tutorial-style baseline


def _tutorial_host_solve(x0, p, f, g, h):
    """The tutorial's callback: fresh jitted oracles on *every* call, then ``minimize_ipopt``."""
    import jax
    import jax.numpy as jnp
    from cyipopt import minimize_ipopt

    p = jnp.asarray(p)
    obj = jax.jit(lambda x: f(x, p))
    jac = jax.jit(jax.grad(obj))
    hess = jax.jit(jax.hessian(obj))
    g_ = jax.jit(lambda x: g(x, p))
    h_ = jax.jit(lambda x: h(x, p))
    cons = [
        {"type": "eq", "fun": g_, "jac": jax.jit(jax.jacobian(g_)),
         "hess": jax.jit(lambda x, v: jax.hessian(lambda z: v @ g_(z))(x))},
        {"type": "ineq", "fun": h_, "jac": jax.jit(jax.jacobian(h_)),
         "hess": jax.jit(lambda x, v: jax.hessian(lambda z: v @ h_(z))(x))},
    ]
    res = minimize_ipopt(obj, jac=jac, hess=hess, x0=np.asarray(x0), constraints=cons, tol=TOL,
                         options={"disp": 0, "sb": "yes", "max_iter": 3000})
    m_eq = int(np.size(g_(jnp.asarray(x0))))
    mult = np.asarray(res.info["mult_g"])
    return np.asarray(res.x), mult[:m_eq], mult[m_eq:]


@functools.partial(__import__("jax").custom_jvp, nondiff_argnums=(2, 3, 4))
def tutorial_solve(x0, p, f, g, h):
    """``(x*, v*, μ*)`` of ``min f s.t. g = 0, h ≥ 0`` (IPOPT signs: ``∇f + Jgᵀv + Jhᵀμ = 0``)."""
    import jax

    m_eq = jax.eval_shape(g, x0, p).shape[0]
    m_in = jax.eval_shape(h, x0, p).shape[0]
    shapes = (jax.ShapeDtypeStruct(x0.shape, x0.dtype), jax.ShapeDtypeStruct((m_eq,), x0.dtype),
              jax.ShapeDtypeStruct((m_in,), x0.dtype))
    return jax.pure_callback(functools.partial(_tutorial_host_solve, f=f, g=g, h=h), shapes, x0, p)


@tutorial_solve.defjvp
def _tutorial_jvp(f, g, h, primals, tangents):
    import jax
    import jax.numpy as jnp

    x0, p = primals
    _, p_dot = tangents
    z = tutorial_solve(x0, p, f, g, h)

    def R(z, p):
        x, v, mu = z
        grad_l = jax.grad(lambda x: f(x, p) + v @ g(x, p) + mu @ h(x, p))(x)
        return jnp.concatenate([grad_l, g(x, p), mu * h(x, p)])

    flat = lambda z: jnp.concatenate(z)  # noqa: E731
    sizes = np.cumsum([z[0].shape[0], z[1].shape[0]])
    unflat = lambda u: tuple(jnp.split(u, sizes))  # noqa: E731
    K = jax.jacobian(lambda u: R(unflat(u), p))(flat(z))
    rhs = jax.jvp(lambda p: R(z, p), (p,), (p_dot,))[1]
    return z, unflat(-jnp.linalg.solve(K, rhs))


# ------------------------------------------------------------------ suite


def run(ctx: Context) -> SuiteResult:
    import jax
    import jax.numpy as jnp

    from kktbridge import solve_nlp
    from kktbridge.adapters import available_solvers

    if "ipopt" not in available_solvers():
        return SuiteResult("nlp", status="unavailable", reason="unavailable: cyipopt not installed")
    res = SuiteResult("nlp")
    labels, series = [], {"solve_nlp fwd": [], "solve_nlp bwd": [], "solve_nlp v&g": [], "tutorial v&g": []}
    cases = [("tutorial problem (n=3)", tutorial_objective, tutorial_eq, tutorial_ineq,
              jnp.array([2.0, 0.1, 5.0]), jnp.ones(3), jnp.zeros(3))]
    for n in SIZES_QUICK if ctx.quick else SIZES_FULL:
        p, w = map(jnp.asarray, make_params(n))
        cases.append((f"n={n}, m_eq=1, m_ineq={n}", objective, eq, ineq, p, w, jnp.full(n, 1.0 / n)))
    for case, objective_, eq_, ineq_, p, w, x0 in cases:
        n = x0.shape[0]
        ctx.step(f"nlp {case}: solve_nlp")

        def xstar(p):
            return solve_nlp(objective_, x0, p, eq=eq_, ineq=ineq_, tol=TOL)

        fwd = jax.jit(lambda p: xstar(p).x)
        vg = jax.jit(jax.value_and_grad(lambda p: jnp.vdot(w, xstar(p).x)))
        tf = time_call(lambda: fwd(p), ctx.repeats)
        _, pullback = jax.vjp(fwd, p)
        pullback = jax.jit(pullback)
        tb = time_call(lambda: pullback(w), ctx.repeats)
        tv = time_call(lambda: vg(p), ctx.repeats)
        g_ours = vg(p)[1]
        frac = tb["median_ms"] / tf["median_ms"]
        row = {"case": case, "solve_ms": tf["median_ms"], "deriv_ms": tb["median_ms"], "deriv/solve": frac,
               "vg_ms": tv["median_ms"], "vg_compile_ms": max(tv["first_ms"] - tv["median_ms"], 0.0)}

        ctx.step(f"nlp {case}: tutorial baseline")
        vg_tut = jax.jit(jax.value_and_grad(
            lambda p: jnp.vdot(w, tutorial_solve(x0, p, objective_, eq_, lambda x, p: -ineq_(x, p))[0])))
        tt = time_call(lambda: vg_tut(p), max(1, min(ctx.repeats, 3)), min_total_s=0.0)
        row.update({"tutorial_vg_ms": tt["median_ms"], "speedup_vs_tutorial": ratio(tt["median_ms"], tv["median_ms"]),
                    "grad_max_rel_diff": max_rel_diff(g_ours, vg_tut(p)[1])})
        res.rows.append(row)
        res.targets.append(Target(f"{case} derivative / solve time (NLP)", frac, TARGET_DERIV_FRACTION, "<="))
        if case.startswith("tutorial"):
            res.targets.append(Target(f"{case} warm value_and_grad speed-up vs the tutorial's code",
                                      row["speedup_vs_tutorial"], TARGET_TUTORIAL_SPEEDUP, ">="))
            res.targets.append(Target(f"{case} warm value_and_grad time (ms)", tv["median_ms"], TARGET_TUTORIAL_VG_MS, "<="))
        labels.append("tutorial" if case.startswith("tutorial") else f"n={n}")
        for k, v in zip(series, (tf["median_ms"], tb["median_ms"], tv["median_ms"], tt["median_ms"])):
            series[k].append(v)
        jax.clear_caches()
    res.plot = {"x": labels, "series": series, "ylabel": "ms (median)", "logy": True}
    return res
