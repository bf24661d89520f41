r"""Suite ``eager``: eager derivatives at compiled speed (issue 11), against CasADi and diffcp.

Part 1, the three cases of issue 11, each differentiated *eagerly* the way a notebook does it
(a fresh ``lambda`` around the solve on every call; the user functions are the same objects):

* ``jax.jacrev`` of ``x*(p)`` for the IPOPT tutorial's 3-variable NLP
  (``kktbridge/_bench/nlp.py``: 3 equalities, 3 inequalities, plus bounds ``0 ≤ x ≤ 10``);
* ``jax.jacrev`` of ``x*`` w.r.t. ``(q, b, h)`` for a random strictly convex QP with ``n = 20``,
  5 equalities and 20 inequalities (OSQP);
* ``jax.jvp`` of ``(x*, y*, s*)`` w.r.t. ``(A, b, c)`` for a conic program with
  LP + SOC + PSD + exponential cones (SCS), drawn with a known, strictly complementary solution.

For each: the first eager derivative after ``kb.clear_caches()`` (so it includes every
compilation), the median warm eager derivative, and the median warm ``jax.jit``-ed derivative.

Part 2, peers measured in the same run:

* **CasADi** (IPOPT solution plus its parametric Jacobian ``dx*/dp``) on the sIPOPT paper
  example, a 77-variable pendulum optimal-control problem (direct multiple shooting, RK4, torque
  bounds; parameters: initial angle, initial velocity, mass) and a 50-asset mean-variance
  portfolio with a risk constraint (parameters: expected returns), against ``kb.solve_nlp`` +
  ``jax.jacobian``, eager and jitted. Both sides run IPOPT with the same options; the Jacobians
  are compared (max relative difference).
* **diffcp**: ``diffcp.solve_and_derivative`` plus one forward derivative call against
  kktbridge's eager and jitted ``jvp`` on the conic case of part 1.

Ratios in this suite are *kktbridge time / other time* (≤ 1 means kktbridge is faster), the
direction the targets are stated in.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, block, max_rel_diff

TARGET_EAGER_VS_JIT = 2.0
TARGET_FIRST_S = 1.5
TARGET_FIRST_CONIC_S = 3.0
TARGET_JIT_VS_CASADI = 1.0
TARGET_EAGER_VS_CASADI = 2.0
TARGET_VS_DIFFCP = 1.0

#: IPOPT tolerance on both sides of the CasADi comparison (kktbridge's default, for exact
#: derivatives); the other IPOPT options are left at their defaults on both sides.
IPOPT_TOL = 1e-10
#: SCS tolerance on both sides of the diffcp comparison (kktbridge's default).
SCS_EPS = 1e-9
#: CasADi decides the active set from the multiplier signs (``lam > min_lam`` / ``lam < -min_lam``);
#: with its default ``min_lam = 0`` every bound whose interior-point multiplier is a tiny nonzero
#: number counts as active and the sensitivity KKT matrix is singular ("Evaluation failed").
CASADI_MIN_LAM = 1e-6

CONIC_CONE = {"l": 3, "q": [3], "s": [2], "ep": 1}
CONIC_N = 3


def steps(quick: bool) -> int:
    return 1 if quick else 6


def _finite(v: Optional[float]) -> Optional[float]:
    return v if v is not None and math.isfinite(v) else None


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b > 0:
        return None
    return _finite(a / b)


# ----------------------------------------------------------------------------- part 1 problems


def _trivial(*out_shapes):
    """A jitted map of any arguments to arrays of ``out_shapes`` filled with the sum of all their
    entries: the same transform applied eagerly to it (``jax_floor_ms``) is what JAX's own eager
    machinery costs for these shapes -- tracing the transform, basis vectors, dispatch -- with no
    solver at all."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def fun(*args):
        total = sum(jnp.sum(a) for a in args)
        return tuple(jnp.full(s, total) for s in out_shapes)

    return fun


def _nlp_case():
    import jax
    import jax.numpy as jnp

    import kktbridge as kb
    from kktbridge._bench.nlp import tutorial_eq, tutorial_ineq, tutorial_objective

    x0, lower, upper = jnp.ones(3), jnp.zeros(3), jnp.full(3, 10.0)

    def solve(p):
        return kb.solve_nlp(tutorial_objective, x0, p, eq=tutorial_eq, ineq=tutorial_ineq, lower=lower, upper=upper).x

    p = jnp.array([2.0, 0.1, 5.0])
    eager = lambda: jax.jacrev(lambda p: solve(p))(p)  # noqa: E731  (fresh lambda per call, as in a notebook)
    jitted = jax.jit(jax.jacrev(solve))
    triv = _trivial((3,))
    floor = lambda: jax.jacrev(lambda p: triv(p)[0])(p)  # noqa: E731
    return "NLP n=3, 3 eq+3 ineq+bounds: jacrev", eager, lambda: jitted(p), floor


def _qp_case(n: int = 20, m_eq: int = 5, m_in: int = 20, seed: int = 0):
    import jax
    import jax.numpy as jnp

    import kktbridge as kb

    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    P = jnp.asarray(M @ M.T / n + np.eye(n))
    A = jnp.asarray(rng.standard_normal((m_eq, n)))
    G = jnp.asarray(rng.standard_normal((m_in, n)))
    x_feas = rng.standard_normal(n)
    b = jnp.asarray(np.asarray(A) @ x_feas)
    # About half of the inequalities active at the solution, the rest with slack.
    h = jnp.asarray(np.asarray(G) @ x_feas + rng.uniform(0.0, 1.0, m_in))
    q = jnp.asarray(rng.standard_normal(n) * 3.0)

    def solve(q, b, h):
        return kb.solve_qp(P, q, A, b, G, h).x

    eager = lambda: jax.jacrev(lambda q, b, h: solve(q, b, h), argnums=(0, 1, 2))(q, b, h)  # noqa: E731
    jitted = jax.jit(jax.jacrev(solve, argnums=(0, 1, 2)))
    triv = _trivial((n,))
    floor = lambda: jax.jacrev(lambda q, b, h: triv(q, b, h)[0], argnums=(0, 1, 2))(q, b, h)  # noqa: E731
    return f"QP n={n}, {m_eq} eq+{m_in} ineq: jacrev(q,b,h)", eager, lambda: jitted(q, b, h), floor


def conic_problem(seed: int = 0):
    """``(A, b, c)`` with a known, unique, strictly complementary solution for :data:`CONIC_CONE`.

    Draw ``x*``, ``v``; ``y* = Π_{K*}(v)``, ``s* = y* - v`` (complementary by Moreau),
    ``b = Ax* + s*``, ``c = -Aᵀy*``; redraw if the residual map's Jacobian is ill-conditioned.
    """
    import jax
    import jax.numpy as jnp

    from kktbridge.core._cones import cone_projection, parse_cone
    from kktbridge.core._conic import ConicPoint, conic_residual_map

    n = CONIC_N
    rng = np.random.default_rng(seed)
    m = parse_cone(CONIC_CONE).dim
    F = conic_residual_map(CONIC_CONE)
    proj_dual = jax.jit(cone_projection(CONIC_CONE, dual=True))
    jac = jax.jit(jax.jacfwd(lambda z, A, b, c: jnp.concatenate(F(ConicPoint(z[:n], z[n:]), A, b, c))))
    for _ in range(100):
        A = rng.standard_normal((m, n))
        v = rng.standard_normal(m)
        x = rng.standard_normal(n)
        y = np.asarray(proj_dual(v))
        s = y - v
        b, c = A @ x + s, -A.T @ y
        if np.linalg.cond(np.asarray(jac(np.concatenate([x, v]), A, b, c))) < 1e3:
            dA, db, dc = rng.standard_normal((m, n)), rng.standard_normal(m), rng.standard_normal(n)
            return (A, b, c), (dA, db, dc)
    raise RuntimeError("could not draw a well-conditioned conic problem")


def _conic_case(data):
    import jax
    import jax.numpy as jnp

    import kktbridge as kb

    (A, b, c), (dA, db, dc) = [tuple(map(jnp.asarray, t)) for t in data]

    def solve(A, b, c):
        s = kb.solve_conic(A, b, c, CONIC_CONE)
        return s.x, s.y, s.s

    eager = lambda: jax.jvp(lambda A, b, c: solve(A, b, c), (A, b, c), (dA, db, dc))  # noqa: E731
    jitted = jax.jit(lambda A, b, c, dA, db, dc: jax.jvp(solve, (A, b, c), (dA, db, dc)))
    name = "conic l+q+s+ep m=12 n=3: jvp(A,b,c)"
    triv = _trivial(c.shape, b.shape, b.shape)
    floor = lambda: jax.jvp(lambda A, b, c: triv(A, b, c), (A, b, c), (dA, db, dc))  # noqa: E731
    return name, eager, lambda: jitted(A, b, c, dA, db, dc), floor


def _diffcp_peer(data):
    """``solve_and_derivative`` + one forward derivative; returns (callable, mode)."""
    import diffcp
    import scipy.sparse as sp

    (A, b, c), (dA, db, dc) = data
    As, dAs = sp.csc_matrix(A), sp.csc_matrix(dA)

    def run(mode):
        def call():
            x, y, s, D, _ = diffcp.solve_and_derivative(As, b, c, CONIC_CONE, mode=mode, eps_abs=SCS_EPS,
                                                        eps_rel=SCS_EPS, verbose=False)
            dx, dy, ds = D(dAs, db, dc)
            return (x, y, s), (dx, dy, ds)

        return call

    return run


# ----------------------------------------------------------------------------- part 2 problems
# Each problem is written once for JAX (kb.solve_nlp) and once with CasADi SX symbols.


def sipopt_problem():
    """sIPOPT paper example: min ‖x‖² s.t. 6x1+3x2+2x3 = p1, p2 x1 + x2 - x3 = 1, x ≥ 0; p = (5, 1)."""
    import jax.numpy as jnp

    def f(x, p):
        return jnp.sum(x**2)

    def eq(x, p):
        return jnp.stack([6 * x[0] + 3 * x[1] + 2 * x[2] - p[0], p[1] * x[0] + x[1] - x[2] - 1.0])

    def casadi_nlp(ca):
        x, p = ca.SX.sym("x", 3), ca.SX.sym("p", 2)
        g = ca.vertcat(6 * x[0] + 3 * x[1] + 2 * x[2] - p[0], p[1] * x[0] + x[1] - x[2] - 1.0)
        return {"x": x, "p": p, "f": ca.sumsqr(x), "g": g}, 2

    return {"name": "sIPOPT n=3 p=2: jacobian", "short": "sIPOPT", "f": f, "eq": eq, "ineq": None,
            "x0": np.full(3, 0.15), "p": np.array([5.0, 1.0]), "lower": np.zeros(3), "upper": None,
            "ng": (2, 0), "casadi": casadi_nlp}


PEND_N, PEND_DT, PEND_UMAX = 25, 0.1, 6.0


def _rk4(th, om, u, m, sin):
    """One RK4 step of the damped pendulum θ'' = -(g/l) sin θ - c ω + u/(m l²), l = 1 (elementwise)."""
    grav, damp = 9.81, 0.1

    def rhs(th, om):
        return om, -grav * sin(th) - damp * om + u / m

    h = PEND_DT
    k1 = rhs(th, om)
    k2 = rhs(th + h / 2 * k1[0], om + h / 2 * k1[1])
    k3 = rhs(th + h / 2 * k2[0], om + h / 2 * k2[1])
    k4 = rhs(th + h * k3[0], om + h * k3[1])
    return (th + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0]),
            om + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1]))


def _pend_cost(th, om, u, sq, total):
    target = math.pi
    stage = total(sq(th[:-1] - target) + 0.1 * sq(om[:-1]) + 0.01 * sq(u)) * PEND_DT
    return stage + 10.0 * (sq(th[-1] - target) + sq(om[-1]))


def pendulum_problem():
    """Pendulum stabilisation towards upright, direct multiple shooting: 26 + 26 states + 25 torques = 77.

    Parameters ``p = (θ0, ω0, m)``; equality constraints: initial state and the RK4 continuity
    conditions (52); bounds ``|u| ≤ 6``.
    """
    import jax.numpy as jnp

    N = PEND_N
    nv = 3 * N + 2

    def split(z):
        return z[: N + 1], z[N + 1 : 2 * N + 2], z[2 * N + 2 :]

    def f(z, p):
        th, om, u = split(z)
        return _pend_cost(th, om, u, jnp.square, jnp.sum)

    def eq(z, p):
        th, om, u = split(z)
        th1, om1 = _rk4(th[:-1], om[:-1], u, p[2], jnp.sin)
        return jnp.concatenate([jnp.stack([th[0] - p[0], om[0] - p[1]]), th[1:] - th1, om[1:] - om1])

    def casadi_nlp(ca):
        z, p = ca.SX.sym("z", nv), ca.SX.sym("p", 3)
        th, om, u = z[: N + 1], z[N + 1 : 2 * N + 2], z[2 * N + 2 :]
        th1, om1 = _rk4(th[:-1], om[:-1], u, p[2], ca.sin)
        g = ca.vertcat(th[0] - p[0], om[0] - p[1], th[1:] - th1, om[1:] - om1)
        return {"x": z, "p": p, "f": _pend_cost(th, om, u, lambda v: v**2, ca.sum1), "g": g}, 2 * N + 2

    lower = np.concatenate([np.full(2 * N + 2, -np.inf), np.full(N, -PEND_UMAX)])
    upper = np.concatenate([np.full(2 * N + 2, np.inf), np.full(N, PEND_UMAX)])
    p = np.array([math.pi - 1.0, 0.0, 1.0])
    x0 = np.concatenate([np.linspace(p[0], math.pi, N + 1), np.zeros(N + 1), np.zeros(N)])
    return {"name": f"pendulum OCP n={nv} p=3: jacobian", "short": "pendulum", "f": f, "eq": eq, "ineq": None,
            "x0": x0, "p": p, "lower": lower, "upper": upper, "ng": (2 * N + 2, 0), "casadi": casadi_nlp}


def portfolio_problem(n: int = 50, k: int = 5, seed: int = 0):
    """min -μᵀw + (γ/2) wᵀΣw  s.t.  wᵀΣw ≤ σ², 1ᵀw = 1, w ≥ 0  (Σ = FFᵀ + D); parameters μ."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    Fm = rng.standard_normal((n, k)) * 0.2
    d = rng.uniform(0.01, 0.05, n)
    Sigma = Fm @ Fm.T + np.diag(d)
    gamma, sigma2 = 1.0, 0.02
    mu = 0.05 + 0.1 * rng.random(n)
    Sj = jnp.asarray(Sigma)

    def f(w, mu):
        return -mu @ w + 0.5 * gamma * w @ (Sj @ w)

    def eq(w, mu):
        return jnp.sum(w, keepdims=True) - 1.0

    def ineq(w, mu):
        return jnp.atleast_1d(w @ (Sj @ w) - sigma2)

    def casadi_nlp(ca):
        w, p = ca.SX.sym("w", n), ca.SX.sym("mu", n)
        S = ca.DM(Sigma)
        risk = ca.dot(w, ca.mtimes(S, w))
        return {"x": w, "p": p, "f": -ca.dot(p, w) + 0.5 * gamma * risk, "g": ca.vertcat(ca.sum1(w) - 1.0, risk - sigma2)}, 1

    return {"name": f"portfolio n={n} p={n}: jacobian", "short": "portfolio", "f": f, "eq": eq, "ineq": ineq,
            "x0": np.full(n, 1.0 / n), "p": mu, "lower": np.zeros(n), "upper": None, "ng": (1, 1),
            "casadi": casadi_nlp}


def _kb_nlp(prob):
    """(eager thunk, jitted thunk) of ``jax.jacobian`` of ``x*(p)``, plus ``x*(p)`` itself."""
    import jax
    import jax.numpy as jnp

    import kktbridge as kb

    x0, p = jnp.asarray(prob["x0"]), jnp.asarray(prob["p"])
    kw = {"eq": prob["eq"], "ineq": prob["ineq"], "tol": IPOPT_TOL}
    if prob["lower"] is not None:
        kw["lower"] = jnp.asarray(prob["lower"])
    if prob["upper"] is not None:
        kw["upper"] = jnp.asarray(prob["upper"])
    f = prob["f"]

    def solve(p):
        return kb.solve_nlp(f, x0, p, **kw).x

    eager = lambda: jax.jacobian(lambda p: solve(p))(p)  # noqa: E731
    jitted = jax.jit(jax.jacobian(solve))
    return eager, lambda: jitted(p), lambda: kb.solve_nlp(f, x0, p, **kw)


def _casadi_peer(prob):
    """Build CasADi's ``p ↦ (x*(p), dx*/dp)`` (IPOPT + nlpsol's own parametric sensitivities)."""
    import casadi as ca

    nlp, n_eq = prob["casadi"](ca)
    opts = {"ipopt.print_level": 0, "ipopt.sb": "yes", "print_time": False, "ipopt.tol": IPOPT_TOL,
            "min_lam": CASADI_MIN_LAM, "sens_force_equality": True}
    S = ca.nlpsol("S", "ipopt", nlp, opts)
    n_g = nlp["g"].shape[0]
    lbg = np.concatenate([np.zeros(n_eq), np.full(n_g - n_eq, -np.inf)])
    ubg = np.zeros(n_g)
    P = ca.MX.sym("P", nlp["p"].shape[0])
    nx = nlp["x"].shape[0]
    lbx = -np.inf * np.ones(nx) if prob["lower"] is None else prob["lower"]
    ubx = np.inf * np.ones(nx) if prob["upper"] is None else prob["upper"]
    r = S(x0=prob["x0"], p=P, lbx=lbx, ubx=ubx, lbg=lbg, ubg=ubg)
    F = ca.Function("F", [P], [r["x"], ca.jacobian(r["x"], P)])
    p = prob["p"]
    S(x0=prob["x0"], p=p, lbx=lbx, ubx=ubx, lbg=lbg, ubg=ubg)
    status = S.stats()["return_status"] if not S.stats().get("success", False) else None

    def call():
        x, J = F(p)
        return np.asarray(x).ravel(), np.asarray(J)

    def fd_jacobian(x_star, h_rel=1e-6):
        """Central differences of IPOPT solutions (tol 1e-12, started at ``x*``): an independent arbiter."""
        S_fd = ca.nlpsol("S_fd", "ipopt", nlp, {**opts, "ipopt.tol": 1e-12})
        J = np.zeros((nx, p.size))
        for j in range(p.size):
            h = h_rel * (1.0 + abs(p[j]))
            xs = []
            for sgn in (1.0, -1.0):
                pj = p.copy()
                pj[j] += sgn * h
                xs.append(np.asarray(S_fd(x0=x_star, p=pj, lbx=lbx, ubx=ubx, lbg=lbg, ubg=ubg)["x"]).ravel())
            J[:, j] = (xs[0] - xs[1]) / (2 * h)
        return J

    return call, status, fd_jacobian


# ----------------------------------------------------------------------------- measurement


def _time(fun: Callable[[], Any], repeats: int, warmup: int = 1, min_total_s: float = 0.3,
          max_repeats: int = 50) -> dict[str, float]:
    """:func:`~kktbridge._bench.time_call` that also records process CPU time (all threads).

    On a shared machine wall time swings with the other tenants' load; CPU time much less.
    Returns ``{"first_ms", "median_ms", "cpu_ms", "n"}`` (medians over the warm calls).
    """
    import statistics

    t0 = time.perf_counter()
    block(fun())
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        block(fun())
    walls: list[float] = []
    cpus: list[float] = []
    while len(walls) < repeats or (sum(walls) < min_total_s and len(walls) < max_repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        block(fun())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"first_ms": first * 1e3, "median_ms": statistics.median(walls) * 1e3,
            "cpu_ms": statistics.median(cpus) * 1e3, "n": len(walls)}


def _measure_kb(ctx: Context, eager: Callable[[], Any], jitted: Callable[[], Any],
                floor: Optional[Callable[[], Any]] = None) -> dict[str, Any]:
    import kktbridge as kb

    kb.clear_caches()
    t0, c0 = time.perf_counter(), time.process_time()
    out = block(eager())
    first, first_cpu = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
    te = _time(eager, ctx.repeats, warmup=0)
    tj = _time(jitted, ctx.repeats)
    tf = _time(floor, ctx.repeats) if floor is not None else None
    return {"first_eager_ms": first, "first_eager_cpu_ms": first_cpu, "eager_ms": te["median_ms"],
            "eager_cpu_ms": te["cpu_ms"], "jit_ms": tj["median_ms"], "jit_cpu_ms": tj["cpu_ms"],
            "jit_compile_ms": max(tj["first_ms"] - tj["median_ms"], 0.0),
            "eager/jit": _div(te["median_ms"], tj["median_ms"]),
            # JAX's own eager cost for the same transform and shapes (see _trivial), and how far
            # above it kktbridge's eager call is, in units of the jitted call.
            "jax_floor_ms": tf["median_ms"] if tf else None,
            "(eager-floor)/jit": _div(te["median_ms"] - tf["median_ms"], tj["median_ms"]) if tf else None,
            "_out": out, "_jit_out": block(jitted())}


def _diffcp_compare(ctx: Context, res: SuiteResult, data, m: dict, repeats: int) -> dict[str, Any]:
    """diffcp's solve_and_derivative + one forward derivative on the same conic problem."""
    try:
        import diffcp  # noqa: F401
    except Exception as e:
        res.notes.append(f"diffcp unavailable ({type(e).__name__}): diffcp row says 'unavailable'")
        return {"peer": "diffcp: unavailable"}
    run = _diffcp_peer(data)
    timings = {}
    for mode in ("dense", "lsqr"):
        try:
            timings[mode] = (_time(run(mode), repeats), run(mode)())
        except Exception as e:
            res.notes.append(f"diffcp mode={mode} failed: {type(e).__name__}: {str(e)[:80]}")
    if not timings:
        return {"peer": "diffcp: failed"}
    mode = min(timings, key=lambda k: timings[k][0]["median_ms"])
    tc, (prim, tang) = timings[mode]
    res.notes.append("diffcp peer: solve_and_derivative (SCS, eps_abs = eps_rel = %g as kktbridge) + one call of D "
                     "(forward); the faster of its modes is reported (%s)" % (SCS_EPS, ", ".join(
                         f"{k}: {v[0]['median_ms']:.1f} ms" for k, v in timings.items())))
    ours_prim, ours_tang = m["_jit_out"]
    out = {"peer": f"diffcp ({mode})", "peer_first_ms": tc["first_ms"], "peer_ms": tc["median_ms"],
           "peer_cpu_ms": tc["cpu_ms"],
           "eager/peer": _div(m["eager_ms"], tc["median_ms"]), "jit/peer": _div(m["jit_ms"], tc["median_ms"]),
           "x_rel_diff": _finite(max_rel_diff(ours_prim, prim)),
           "deriv_rel_diff": _finite(max_rel_diff(ours_tang, tang))}
    res.targets.append(Target("conic: kktbridge eager jvp / diffcp time", out["eager/peer"], TARGET_VS_DIFFCP, "<="))
    res.targets.append(Target("conic: kktbridge jitted jvp / diffcp time", out["jit/peer"], TARGET_VS_DIFFCP, "<="))
    return out


def _issue_targets(res: SuiteResult, short: str, row: dict, first_limit_s: float) -> None:
    res.targets.append(Target(f"{short}: warm eager / jitted derivative", row["eager/jit"], TARGET_EAGER_VS_JIT, "<="))
    res.targets.append(Target(f"{short}: first eager derivative (s, compile included)", row["first_eager_ms"] / 1e3,
                              first_limit_s, "<="))


def run(ctx: Context) -> SuiteResult:
    import jax  # noqa: F401  (x64 is enabled by run_bench)

    from kktbridge.adapters import available_solvers

    res = SuiteResult("eager")
    solvers = available_solvers()
    repeats_peer = ctx.repeats
    labels: list[str] = []
    series: dict[str, list] = {"kktbridge first eager": [], "kktbridge eager": [], "kktbridge jit": [], "peer": []}

    def add_plot(label, row):
        labels.append(label)
        series["kktbridge first eager"].append(row.get("first_eager_ms"))
        series["kktbridge eager"].append(row.get("eager_ms"))
        series["kktbridge jit"].append(row.get("jit_ms"))
        series["peer"].append(row.get("peer_ms"))

    # ---- part 1: the three cases of issue 11 (full mode only; cold compiles take seconds)
    if not ctx.quick:
        for short, make, limit, needs in (("NLP", _nlp_case, TARGET_FIRST_S, "ipopt"),
                                          ("QP", _qp_case, TARGET_FIRST_S, "osqp"),
                                          ("conic", None, TARGET_FIRST_CONIC_S, "scs")):
            ctx.step(f"eager {short}")
            if needs not in solvers:
                res.notes.append(f"{short}: unavailable ({needs} not installed)")
                continue
            try:
                if make is None:  # the conic case: its data also serves the diffcp comparison
                    conic_data = conic_problem()
                    name, eager, jitted, floor = _conic_case(conic_data)
                else:
                    name, eager, jitted, floor = make()
                m = _measure_kb(ctx, eager, jitted, floor)
            except Exception as e:
                res.notes.append(f"{short}: kktbridge failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            row = {"case": name, **{k: v for k, v in m.items() if not k.startswith("_")}}
            d = max_rel_diff(m["_out"], m["_jit_out"])
            if not d <= 1e-8:
                res.notes.append(f"{short}: eager and jitted derivatives differ by {d:.2e} (relative)")
            if short == "conic":
                row.update(_diffcp_compare(ctx, res, conic_data, m, repeats_peer))
            res.rows.append(row)
            _issue_targets(res, short, row, limit)
            add_plot(short, row)

    # ---- part 2: CasADi peer on three NLPs
    problems = [sipopt_problem] if ctx.quick else [sipopt_problem, pendulum_problem, portfolio_problem]
    try:
        import casadi  # noqa: F401

        casadi_ok = True
    except Exception as e:  # pragma: no cover
        casadi_ok = False
        res.notes.append(f"casadi unavailable ({type(e).__name__}: {e}): CasADi rows say 'unavailable'")
    for make in problems:
        prob = make()
        short = prob["short"]
        ctx.step(f"eager {short} vs CasADi")
        if "ipopt" not in solvers:
            res.notes.append(f"{short}: unavailable (cyipopt not installed)")
            continue
        eager, jitted, kb_solution = _kb_nlp(prob)
        try:
            m = _measure_kb(ctx, eager, jitted)
        except Exception as e:
            res.notes.append(f"{short}: kktbridge failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        row = {"case": prob["name"], **{k: v for k, v in m.items() if not k.startswith("_")}}
        if casadi_ok:
            try:
                t0 = time.perf_counter()
                call, failed, fd_jacobian = _casadi_peer(prob)
                tc = _time(call, repeats_peer)
                setup = (time.perf_counter() - t0) * 1e3 - tc["median_ms"] * tc["n"]
                x_ca, J_ca = call()
                row.update({"peer": "casadi" if failed is None else f"casadi ({failed})",
                            "peer_first_ms": setup, "peer_ms": tc["median_ms"], "peer_cpu_ms": tc["cpu_ms"],
                            "eager/peer": _div(m["eager_ms"], tc["median_ms"]),
                            "jit/peer": _div(m["jit_ms"], tc["median_ms"]),
                            "x_rel_diff": None, "deriv_rel_diff": _finite(max_rel_diff(m["_out"], J_ca))})
                sol = kb_solution()
                row["x_rel_diff"] = _finite(max_rel_diff(sol.x, x_ca))
                if not max_rel_diff(m["_out"], J_ca) <= 1e-4:
                    J_fd = fd_jacobian(np.asarray(sol.x))
                    d = sol.diagnostics
                    res.notes.append(
                        f"{short}: the Jacobians differ ({max_rel_diff(m['_out'], J_ca):.2e}). Central finite differences "
                        f"of IPOPT solutions (tol 1e-12) agree with CasADi to {max_rel_diff(J_ca, J_fd):.1e} and with "
                        f"kktbridge to {max_rel_diff(m['_out'], J_fd):.1e}; kktbridge's diagnostics: weakly_active="
                        f"{int(d.weakly_active)}, complementarity_margin={float(d.complementarity_margin):.1e} "
                        f"(rows with scaled multiplier and slack below 1.2e-4 are treated as inactive).")
                res.targets.append(Target(f"{short}: kktbridge jitted / CasADi time", row["jit/peer"],
                                          TARGET_JIT_VS_CASADI, "<="))
                res.targets.append(Target(f"{short}: kktbridge eager / CasADi time", row["eager/peer"],
                                          TARGET_EAGER_VS_CASADI, "<="))
            except Exception as e:
                row["peer"] = f"casadi failed: {type(e).__name__}: {str(e).splitlines()[-1][:80]}"
        else:
            row["peer"] = "casadi: unavailable"
        res.rows.append(row)
        add_plot(short, row)

    from kktbridge.adapters.ipopt import linked_ipopt_version

    res.notes.append(
        f"CasADi peer: nlpsol('ipopt') with its own parametric sensitivities: one casadi.Function "
        f"P -> (x*, jacobian(x*, P)) built once (peer_first_ms = its construction + first call), "
        f"options ipopt.tol={IPOPT_TOL:g} (the tol kktbridge uses; both IPOPTs otherwise at defaults; "
        f"kktbridge's cyipopt links IPOPT {linked_ipopt_version() or '?'}, CasADi's own is 3.14), "
        f"min_lam={CASADI_MIN_LAM:g}, sens_force_equality=True. min_lam is required: CasADi picks the active set "
        f"from multiplier signs with threshold min_lam (default 0), so IPOPT's tiny interior-point bound "
        f"multipliers mark every bound active and the sensitivity KKT matrix is singular (\"Evaluation failed\").")
    res.notes.append("Ratios in this suite are kktbridge time / other time (eager/jit, eager/peer, jit/peer): "
                     "<= 1 means kktbridge is faster; *_rel_diff compare kktbridge with the peer.")
    res.notes.append("jax_floor_ms: the same eager transform (jacrev / jvp, fresh lambda) of a trivial jitted map "
                     "with the case's argument and output shapes -- JAX's own eager cost, no solver. A warm "
                     "eager/jit ratio cannot go below (jax_floor_ms + jit_ms) / jit_ms; (eager-floor)/jit is "
                     "what kktbridge adds above that floor, in units of the jitted call.")
    res.notes.append("*_ms are wall-clock medians (the targets use them); *_cpu_ms are medians of process CPU "
                     "time (all threads), which move much less than wall time on a shared, loaded machine.")
    res.notes.append("Eager timings call jax.jacrev/jacobian/jvp on a fresh lambda each time (notebook style); "
                     "first_eager_ms is the first such call after kb.clear_caches() (all compilation included).")
    if not res.rows:
        res.status, res.reason = "unavailable", "unavailable: no solver for any case (" + "; ".join(res.notes[:3]) + ")"
    res.plot = {"x": labels, "series": series, "ylabel": "ms (median; first eager incl. compile)", "logy": True}
    return res
