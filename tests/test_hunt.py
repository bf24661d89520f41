"""Hunting for silent errors with generated problems (issue 10, "Also build").

Every draw is checked against an independent reference, through the public API only
(``kb.solve_qp``, ``kb.solve_conic``, ``kb.solve_nlp``, ``kb.Status``, ``kb.SolverError``,
``solution.diagnostics``):

* QPs with a planted primal-dual solution and active set: values against it, derivatives
  (random directions over all six arrays) against the active-set closed form and central finite
  differences at 1e-6 relative; weakly active draws against the documented inactive branch
  (closed form and a one-sided difference on that branch); duplicated active rows (LICQ failure)
  for the unique primal derivative and the minimum-norm dual split;
* conic programs covering every cone kind (zero, nonnegative, SOC, PSD, primal/dual exponential,
  primal/dual power) with strictly feasible primal and dual points: values against cvxpy+Clarabel,
  derivatives against fourth-order central differences of SCS at 1e-12;
* small NLPs with closed forms (weighted projection onto a scaled half-space: active, inactive
  and weakly active draws under objective/constraint rescaling; the entropic simplex problem);
* failing draws (infeasible): NaN values *and* NaN derivatives in every mode;
* masked batches: a failed instance masked out with ``jnp.where(ok, x, 0)`` leaves the gradient of
  shared data equal to that of the batch without it.

The default tier draws a few examples per hunt (derandomized: the same ones on every run); the
``slow`` tier (``KKTBRIDGE_SLOW=1``) many more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import kktbridge as kb
from tests._conic_problems import cvxpy_reference
from tests._fd import rel_err


def tiers(fast, slow):
    return pytest.mark.parametrize("examples", [fast, pytest.param(slow, marks=pytest.mark.slow)], ids=["fast", "slow"])


def hunt(examples, **strategies):
    """Run the decorated check at once, as a derandomized hypothesis test with ``examples`` examples."""

    def wrap(check):
        settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )(given(**strategies)(check))()

    return wrap


def nan_everywhere(tree):
    return all(np.all(np.isnan(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


# ============================================================================ QPs


def planted_qp(seed, n, m_eq, m_ineq, kind):
    """A convex QP with a planted KKT point and active set.

    ``kind``: ``"strict"`` (every row strictly active or strictly inactive), ``"weak"`` (row 0 has
    λ = 0 and slack 0), ``"dup"`` (row 0 strictly active and duplicated: LICQ fails).
    Returns data, (x, ν, λ) and the mask of rows in the documented derivative's active set.
    """
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-2, 2)  # the objective's scale must not matter
    M = rng.normal(size=(n, n))
    P = scale * (M @ M.T + 0.5 * np.eye(n))
    A = rng.normal(size=(m_eq, n))
    G = rng.normal(size=(m_ineq, n)) * 10.0 ** rng.uniform(-1, 1, size=(m_ineq, 1))  # row scales
    x = rng.normal(size=n)
    nu = scale * rng.normal(size=m_eq)
    n_act = min(int(rng.integers(1, m_ineq + 1)), n - m_eq)
    active = np.arange(m_ineq) < n_act
    lam = np.where(active, scale * rng.uniform(0.5, 2.0, m_ineq), 0.0)
    slack = np.where(active, 0.0, rng.uniform(0.5, 2.0, m_ineq))
    if kind == "weak":
        lam[0], slack[0], active[0] = 0.0, 0.0, False
    q = -(P @ x + A.T @ nu + G.T @ lam)
    h = G @ x + slack
    if kind == "dup":
        G, h = np.vstack([G, G[:1]]), np.concatenate([h, h[:1]])
        lam, active = np.concatenate([lam, [0.0]]), np.concatenate([active, [False]])
    return dict(P=P, q=q, A=A, b=A @ x, G=G, h=h), (x, nu, lam), active


def active_set_derivative(data, sol, active, d):
    """Closed-form directional derivative (dx, dν, dλ) on the active set ``active``."""
    P, A, G = data["P"], data["A"], data["G"]
    x, nu, lam = sol
    n, m_eq = P.shape[0], A.shape[0]
    GS = G[active]
    k = GS.shape[0]
    K = np.block([[P, A.T, GS.T], [A, np.zeros((m_eq, m_eq + k))], [GS, np.zeros((k, m_eq + k))]])
    dGS = d["G"][active]
    rhs = np.concatenate(
        [
            -(d["P"] @ x + d["q"] + d["A"].T @ nu + dGS.T @ lam[active]),
            d["b"] - d["A"] @ x,
            d["h"][active] - dGS @ x,
        ]
    )
    dz = np.linalg.solve(K, rhs)
    dlam = np.zeros(G.shape[0])
    dlam[active] = dz[n + m_eq :]
    return dz[:n], dz[n : n + m_eq], dlam


def qp_flat(data, solver="auto"):
    s = kb.solve_qp(**data, solver=solver)
    return jnp.concatenate([s.x, s.eq_dual, s.ineq_dual])


_qp_jvp = jax.jit(lambda data, d: jax.jvp(qp_flat, (data,), (d,)))
_qp_jvp_osqp = jax.jit(lambda data, d: jax.jvp(lambda dd: qp_flat(dd, "osqp"), (data,), (d,)))
_qp_vjp = jax.jit(lambda data, w: jax.vjp(qp_flat, data)[1](w)[0])
_qp_values = jax.jit(qp_flat)


def random_direction(rng, data, keys=("P", "q", "A", "b", "G", "h")):
    d = {k: np.zeros_like(v) for k, v in data.items()}
    for k in keys:
        d[k] = rng.normal(size=data[k].shape) * max(1.0, np.abs(data[k]).max(initial=0.0)) * 0.1
    d["P"] = 0.5 * (d["P"] + d["P"].T)
    return d


QP_SHAPES = st.sampled_from([(3, 0, 2), (4, 1, 3), (5, 1, 4)])


@tiers(3, 40)
def test_hunt_qp_values_and_derivatives(examples):
    @hunt(examples, seed=st.integers(0, 2**31), shape=QP_SHAPES)
    def check(seed, shape):
        data, (x, nu, lam), active = planted_qp(seed, *shape, kind="strict")
        z = np.asarray(_qp_values(data))
        truth = np.concatenate([x, nu, lam])
        assert rel_err(z, truth) < 1e-7, (z, truth)
        rng = np.random.default_rng(seed + 1)
        d = random_direction(rng, data)
        _, dz = _qp_jvp(data, d)
        exact = np.concatenate(active_set_derivative(data, (x, nu, lam), active, d))
        assert rel_err(dz, exact) < 1e-6
        # Central differences along d (OSQP's polished solutions: ~1e-12, so FD error ~1e-6 * 1e-6).
        t = 1e-6
        fd = (np.asarray(_qp_values({k: data[k] + t * d[k] for k in data}))
              - np.asarray(_qp_values({k: data[k] - t * d[k] for k in data}))) / (2 * t)
        assert rel_err(dz, fd) < 1e-6
        # Reverse mode is the transpose: wᵀ(J d) = (Jᵀw)·d.
        w = rng.normal(size=z.shape)
        ct = _qp_vjp(data, jnp.asarray(w))
        lhs = float(w @ np.asarray(dz))
        rhs = sum(float(np.vdot(np.asarray(ct[k]), d[k])) for k in data)
        assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs)), (lhs, rhs)



@tiers(3, 30)
def test_hunt_qp_weakly_active_takes_the_inactive_branch(examples):
    @hunt(examples, seed=st.integers(0, 2**31), shape=QP_SHAPES)
    def check(seed, shape):
        data, (x, nu, lam), active = planted_qp(seed, *shape, kind="weak")
        s = kb.solve_qp(**data)
        assert int(s.status) == int(kb.Status.SOLVED)
        assert int(s.diagnostics.weakly_active) == 1
        np.testing.assert_allclose(s.x, x, atol=1e-7 * max(1.0, np.abs(x).max()))
        # Perturb q and h only: on a fixed active set the solution is affine in them, so a
        # forward difference on the branch is exact up to the solution error.
        rng = np.random.default_rng(seed + 2)
        d = random_direction(rng, data, keys=("q", "h"))
        _, dz = _qp_jvp(data, d)
        exact = np.concatenate(active_set_derivative(data, (x, nu, lam), active, d))
        assert rel_err(dz, exact) < 1e-6
        # The branch is where row 0 stays inactive: its slack must grow along d (else along -d).
        ds0 = d["h"][0] - data["G"][0] @ exact[: len(x)]
        assume(abs(ds0) > 1e-3 * max(1.0, np.abs(exact).max()))
        sign = 1.0 if ds0 > 0 else -1.0
        t = 1e-4
        one_sided = (np.asarray(_qp_values({k: data[k] + sign * t * d[k] for k in data})) - np.asarray(_qp_values(data))) / (sign * t)
        assert rel_err(dz, one_sided) < 1e-6



@tiers(2, 20)
def test_hunt_qp_duplicated_active_row(examples):
    @hunt(examples, seed=st.integers(0, 2**31), shape=QP_SHAPES)
    def check(seed, shape):
        data, (x, nu, lam), active = planted_qp(seed, *shape, kind="dup")
        rng = np.random.default_rng(seed + 3)
        d = random_direction(rng, data, keys=("q", "b", "h"))
        d["h"][-1] = d["h"][0]  # perturb both copies alike: the rows stay duplicates
        dx, dnu, dlam = active_set_derivative(data, (x, nu, lam), active, d)
        n, m_eq = len(x), len(nu)
        # Default solver (DAQP, active-set: it may put the whole multiplier on one copy, which is
        # then weakly active and keeps a zero derivative) and OSQP (splits it between the copies).
        for jvp in (_qp_jvp, _qp_jvp_osqp):
            z, dz = (np.asarray(a) for a in jvp(data, d))
            assert np.all(np.isfinite(dz))
            assert rel_err(dz[:n], dx) < 1e-6  # the primal derivative is unique
            # The multiplier of the duplicated constraint is shared: the total is unique.
            dl = dz[n + m_eq :]
            assert rel_err(np.array([dl[0] + dl[-1]]), np.array([dlam[0]])) < 1e-6
            lam0, lam1 = z[n + m_eq], z[-1]
            if min(lam0, lam1) > 1e-6 * max(lam0, lam1):
                # Both copies carry multiplier: the minimum-norm derivative splits the change equally.
                np.testing.assert_allclose(dl[0], dl[-1], atol=1e-9 * max(1.0, abs(dlam[0])))
            else:
                # One copy carries it all: the other stays at zero (its inactive branch).
                assert dl[0] == 0.0 if lam0 <= lam1 else dl[-1] == 0.0



def _infeasible_qp(data):
    """Append x₀ ≤ -1 and -x₀ ≤ -1 (x₀ ≥ 1): infeasible whatever the rest."""
    n = data["P"].shape[0]
    e = np.zeros((1, n))
    e[0, 0] = 1.0
    return {**data, "G": np.vstack([data["G"], e, -e]), "h": np.concatenate([data["h"], [-1.0, -1.0]])}


@tiers(2, 12)
def test_hunt_qp_failing_draws_have_nan_derivatives(examples):
    @hunt(examples, seed=st.integers(0, 2**31), shape=QP_SHAPES)
    def check(seed, shape):
        data = _infeasible_qp(planted_qp(seed, *shape, kind="strict")[0])
        with pytest.raises(kb.SolverError):
            kb.solve_qp(**data)
        f = lambda q: kb.solve_qp(**{**data, "q": q}, on_failure="nan")  # noqa: E731
        s = f(jnp.asarray(data["q"]))
        assert int(s.status) != int(kb.Status.SOLVED)
        assert nan_everywhere((s.x, s.ineq_dual))
        q = jnp.asarray(data["q"])
        assert nan_everywhere(jax.jacfwd(lambda q: f(q).x)(q))
        assert nan_everywhere(jax.grad(lambda q: jnp.sum(f(q).x))(q))
        assert nan_everywhere(jax.jvp(lambda q: f(q).ineq_dual, (q,), (jnp.ones_like(q),))[1])



@tiers(2, 10)
def test_hunt_qp_masked_batch_leaves_shared_gradient_exact(examples):
    @hunt(examples, seed=st.integers(0, 2**31), shape=QP_SHAPES, bad=st.integers(0, 2))
    def check(seed, shape, bad):
        data = planted_qp(seed, *shape, kind="strict")[0]
        rng = np.random.default_rng(seed + 4)
        Q = data["q"] + 0.1 * rng.normal(size=(3,) + data["q"].shape)
        H = np.stack([data["h"]] * 3)
        G, h = data["G"], H
        G_inf = np.vstack([G, np.eye(len(data["q"]))[:1], -np.eye(len(data["q"]))[:1]])
        H_inf = np.concatenate([H, np.tile([10.0, 10.0], (3, 1))], axis=1)
        H_inf[bad, -2:] = -1.0  # x₀ ≤ -1 and x₀ ≥ 1: only instance `bad` is infeasible

        def loss(P, Qs, Hs):
            sols = jax.vmap(lambda q, h: kb.solve_qp(P, q, data["A"], data["b"], G_inf, h, on_failure="nan"))(Qs, Hs)
            ok = (sols.status == int(kb.Status.SOLVED))[:, None]
            return jnp.sum(jnp.where(ok, sols.x, 0.0) ** 2), sols.status

        status = np.asarray(loss(data["P"], Q, H_inf)[1])
        assert list(status == int(kb.Status.SOLVED)) == [i != bad for i in range(3)]
        keep = np.array([i for i in range(3) if i != bad])
        g = jax.grad(lambda P: loss(P, Q, H_inf)[0])(jnp.asarray(data["P"]))
        g_ref = jax.grad(lambda P: loss(P, Q[keep], H_inf[keep])[0])(jnp.asarray(data["P"]))
        assert np.all(np.isfinite(np.asarray(g)))
        assert rel_err(g, g_ref) < 1e-12



# ============================================================================ NLPs


def proj_objective(x, p):
    # σ · ½ Σ wᵢ (xᵢ - yᵢ)²: a weighted projection, with an objective scale σ.
    return p["sigma"] * 0.5 * jnp.sum(p["w"] * (x - p["y"]) ** 2)


def proj_halfspace(x, p):
    # κ (aᵀx - β) ≤ 0, with a constraint scale κ.
    return jnp.atleast_1d(p["kappa"] * (p["a"] @ x - p["beta"]))


def proj_closed_form(p, branch):
    """x* and λ* of the weighted projection on a given branch ("active" or "inactive")."""
    y, w, a = p["y"], p["w"], p["a"]
    if branch == "inactive":
        return y, jnp.zeros(1)
    t = (a @ y - p["beta"]) / (a @ (a / w))  # x = y - t W⁻¹a, and σ t = κ λ
    return y - t * a / w, jnp.atleast_1d(p["sigma"] * t / p["kappa"])


def proj_params(seed, kind):
    rng = np.random.default_rng(seed)
    n = 3
    a = rng.normal(size=n)
    y = rng.normal(size=n)
    # The signed distance of y from the hyperplane decides the branch (weak: exactly on it).
    dist = {"active": rng.uniform(0.3, 2.0), "inactive": -rng.uniform(0.3, 2.0), "weak": 0.0}[kind]
    beta = a @ y - dist * np.linalg.norm(a)
    return {
        "y": jnp.asarray(y), "w": jnp.asarray(rng.uniform(0.5, 2.0, n)), "a": jnp.asarray(a),
        "beta": jnp.asarray(beta), "sigma": jnp.asarray(10.0 ** rng.uniform(-2, 2)),
        "kappa": jnp.asarray(10.0 ** rng.uniform(-2, 2)),
    }


NLP_TIGHT = {"tol": 1e-12}


def nlp_solve(p, **kw):
    return kb.solve_nlp(proj_objective, jnp.zeros(3), p, ineq=proj_halfspace, **NLP_TIGHT, **kw)


def nlp_outputs(p):
    s = nlp_solve(p)
    return jnp.concatenate([s.x, s.ineq_dual])


_nlp_jac = jax.jit(jax.jacfwd(nlp_outputs))
_nlp_values = jax.jit(nlp_outputs)


@tiers(3, 30)
def test_hunt_nlp_projection_active_inactive_and_weak(examples):
    @hunt(examples, seed=st.integers(0, 2**31), kind=st.sampled_from(["active", "inactive", "weak"]))
    def check(seed, kind):
        p = proj_params(seed, kind)
        branch = "active" if kind == "active" else "inactive"  # weak: the documented inactive branch
        closed = lambda p: jnp.concatenate(proj_closed_form(p, branch))  # noqa: E731
        s = nlp_solve(p)
        assert int(s.status) == int(kb.Status.SOLVED)
        assert rel_err(_nlp_values(p), closed(p)) < 1e-7
        assert int(s.diagnostics.weakly_active) == (1 if kind == "weak" else 0)
        J, J_closed = _nlp_jac(p), jax.jacfwd(closed)(p)
        for key in ("y", "a", "beta", "w", "sigma", "kappa"):
            assert rel_err(J[key], J_closed[key]) < 1e-6, (kind, key)
        if kind != "weak":
            # Central differences along a random direction of (y, a, β) (IPOPT at tol 1e-12).
            rng = np.random.default_rng(seed + 5)
            d = {k: jnp.zeros_like(v) for k, v in p.items()}
            d.update(y=jnp.asarray(rng.normal(size=3)), a=jnp.asarray(rng.normal(size=3)), beta=jnp.asarray(rng.normal()))
            t = 1e-6
            fd = (_nlp_values(jax.tree_util.tree_map(lambda v, e: v + t * e, p, d))
                  - _nlp_values(jax.tree_util.tree_map(lambda v, e: v - t * e, p, d))) / (2 * t)
            jd = sum(J[k] @ d[k] if d[k].ndim else J[k] * d[k] for k in ("y", "a", "beta"))
            assert rel_err(jd, fd) < 1e-6


def softmax_objective(x, theta):
    return jnp.sum(x * jnp.log(x)) - theta @ x


def simplex_eq(x, theta):
    return jnp.atleast_1d(jnp.sum(x) - 1.0)


@tiers(2, 20)
def test_hunt_nlp_entropic_simplex_is_softmax(examples):
    # min Σ x log x - θᵀx s.t. Σx = 1, x ≥ 0: x = softmax(θ), ν = logsumexp(θ) - 1 (bounds inactive).
    @hunt(examples, theta=st.lists(st.floats(-2, 2), min_size=4, max_size=4))
    def check(theta):
        theta = jnp.asarray(theta)
        f = lambda t: kb.solve_nlp(softmax_objective, jnp.full(4, 0.25), t, eq=simplex_eq, lower=0.0, **NLP_TIGHT)  # noqa: E731
        s = f(theta)
        sm = np.asarray(jax.nn.softmax(theta))
        assert rel_err(s.x, sm) < 1e-8
        # L = f + ν(Σx - 1): log x + 1 - θ + ν = 0, so ν = logsumexp(θ) - 1 and dν/dθ = softmax(θ).
        assert rel_err(s.eq_dual, [float(jax.nn.logsumexp(theta)) - 1.0]) < 1e-8
        J = jax.jacfwd(lambda t: f(t).x)(theta)
        assert rel_err(J, np.diag(sm) - np.outer(sm, sm)) < 1e-6
        Jnu = jax.jacrev(lambda t: f(t).eq_dual[0])(theta)
        assert rel_err(Jnu, sm) < 1e-6


def infeasible_halfspaces(x, p):
    # aᵀx ≤ β and aᵀx ≥ β + δ: infeasible for δ > 0.
    return jnp.stack([p["a"] @ x - p["beta"], p["beta"] + p["delta"] - p["a"] @ x])


@tiers(2, 10)
def test_hunt_nlp_failing_draws_and_masked_batch(examples):
    @hunt(examples, seed=st.integers(0, 2**31), bad=st.integers(0, 2))
    def check(seed, bad):
        rng = np.random.default_rng(seed)
        a = jnp.asarray(rng.normal(size=3))
        Y = jnp.asarray(rng.normal(size=(3, 3)))
        delta = jnp.where(jnp.arange(3) == bad, 0.5, -1.0)  # δ = -1: a slab of width 1
        beta = Y @ a - 0.5 * jnp.linalg.norm(a)  # y beyond the upper face: row 0 strictly active

        def solve(a, y, b, dl):
            p = {"a": a, "beta": b, "delta": dl, "y": y}
            return kb.solve_nlp(lambda x, p: 0.5 * jnp.sum((x - p["y"]) ** 2), jnp.zeros(3), p,
                                ineq=infeasible_halfspaces, on_failure="nan", **NLP_TIGHT)

        # The failing instance alone: NaN values and NaN derivatives in every mode.
        s = solve(a, Y[bad], beta[bad], delta[bad])
        assert int(s.status) != int(kb.Status.SOLVED) and nan_everywhere((s.x, s.ineq_dual))
        assert nan_everywhere(jax.jacfwd(lambda a: solve(a, Y[bad], beta[bad], delta[bad]).x)(a))
        assert nan_everywhere(jax.grad(lambda a: jnp.sum(solve(a, Y[bad], beta[bad], delta[bad]).x))(a))
        with pytest.raises(kb.SolverError):
            kb.solve_nlp(lambda x, p: 0.5 * jnp.sum((x - p["y"]) ** 2), jnp.zeros(3),
                         {"a": a, "beta": beta[bad], "delta": delta[bad], "y": Y[bad]}, ineq=infeasible_halfspaces)

        # Masked batch: the gradient w.r.t. the shared a equals that of the batch without it.
        def loss(a, idx):
            sols = jax.vmap(lambda y, b, dl: solve(a, y, b, dl))(Y[idx], beta[idx], delta[idx])
            ok = (sols.status == int(kb.Status.SOLVED))[:, None]
            return jnp.sum(jnp.where(ok, sols.x, 0.0) ** 2)

        keep = np.array([i for i in range(3) if i != bad])
        g, g_ref = jax.grad(loss)(a, np.arange(3)), jax.grad(loss)(a, keep)
        assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g_ref)).max() > 1e-2  # not vacuous
        assert rel_err(g, g_ref) < 1e-10


# ============================================================================ conic programs

#: Every cone kind in one program (SCS order): zero, nonnegative, SOC, PSD (2x2), primal and
#: dual exponential, primal (α = 0.4) and dual (α = 0.6) power.
MIXED = {"z": 1, "l": 2, "q": [3], "s": [2], "ep": 1, "ed": 1, "p": [0.4, -0.6]}
# adaptive_scale=False: with SCS 3.3.1's adaptive scaling, eps 1e-12 stopped where eps 1e-9 does
# (measured: relative residual 7.9e-10 after 200 iterations, SOLVED), which made the fourth-order
# differences below noisy at 1e-5; with a fixed scale the same solve reaches 9e-15.
SCS_TIGHT = dict(eps_abs=1e-12, eps_rel=1e-12, max_iters=200_000, adaptive_scale=False)


def _exp_primal(rng):  # (x, y, z): y > 0, z > y exp(x/y)
    y = rng.uniform(0.5, 1.5)
    x = 0.5 * rng.normal()
    return [x, y, y * np.exp(x / y) + rng.uniform(0.5, 1.5)]


def _exp_dual(rng):  # (u, v, w): u < 0, e w > -u exp(v/u)
    u = -rng.uniform(0.5, 1.5)
    v = 0.5 * rng.normal()
    return [u, v, -u * np.exp(v / u) / np.e + rng.uniform(0.5, 1.5)]


def _pow_primal(rng, a):  # x, y > 0, |z| < x^a y^(1-a)
    x, y = rng.uniform(0.5, 1.5, 2)
    return [x, y, rng.uniform(-0.8, 0.8) * x**a * y ** (1 - a)]


def _pow_dual(rng, a):  # u, v > 0, |w| < (u/a)^a (v/(1-a))^(1-a)
    u, v = rng.uniform(0.5, 1.5, 2)
    return [u, v, rng.uniform(-0.8, 0.8) * (u / a) ** a * (v / (1 - a)) ** (1 - a)]


def interior_point(rng, cone, dual):
    """A point in the interior of K (or of K* with ``dual``), SCS's conventions, by hand."""
    out = list(rng.normal(size=cone.get("z", 0))) if dual else [0.0] * cone.get("z", 0)
    out += list(rng.uniform(0.5, 2.0, cone.get("l", 0)))
    for k in cone.get("q", []):
        u = rng.normal(size=k - 1)
        out += [np.linalg.norm(u) + rng.uniform(0.5, 1.5), *u]
    for k in cone.get("s", []):
        M = rng.normal(size=(k, k))
        X = M @ M.T + np.eye(k)
        out += [X[i, j] * (1.0 if i == j else np.sqrt(2.0)) for j in range(k) for i in range(j, k)]
    for _ in range(cone.get("ep", 0)):
        out += _exp_dual(rng) if dual else _exp_primal(rng)
    for _ in range(cone.get("ed", 0)):
        out += _exp_primal(rng) if dual else _exp_dual(rng)
    for a in cone.get("p", []):
        primal = (a > 0) != dual
        out += _pow_primal(rng, abs(a)) if primal else _pow_dual(rng, abs(a))
    return np.asarray(out)


def conic_draw(seed, cone, n=4):
    """min cᵀx s.t. Ax + s = b, s ∈ K with strictly feasible primal (x₀, s₀) and dual y₀: an
    optimum exists, and is unique and strictly complementary for generic A."""
    rng = np.random.default_rng(seed)
    s0 = interior_point(rng, cone, dual=False)
    y0 = interior_point(rng, cone, dual=True)
    A = rng.normal(size=(s0.size, n))
    return A, A @ rng.normal(size=n) + s0, -A.T @ y0


def conic_flat(A, b, c, cone):
    s = kb.solve_conic(A, b, c, cone, **SCS_TIGHT)
    return jnp.concatenate([s.x, s.y, s.s])


def _fd4_dir(fun, args, d, h=2e-4):
    """Fourth-order central difference of ``fun`` along ``d`` (error ~h⁴ f⁽⁵⁾ + solve error / h)."""
    at = lambda t: np.asarray(fun(*[x + t * e for x, e in zip(args, d)]))  # noqa: E731
    return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)


def conic_check(seed, cone):
    A, b, c = conic_draw(seed, cone)
    s = kb.solve_conic(A, b, c, cone, diagnose=True, **SCS_TIGHT)
    assert int(s.status) == int(kb.Status.SOLVED)
    # Well-posed draws only: the IFT matrix's conditioning bounds how far FD can confirm 1e-6.
    assume(float(s.diagnostics.kkt_condition) < 1e4)
    # Values: the same optimum as cvxpy + Clarabel (independent cones and solver).
    x_ref, s_ref, val = cvxpy_reference(np.asarray(A), np.asarray(b), np.asarray(c), cone, "CLARABEL",
                                        tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert abs(float(c @ s.x) - val) <= 1e-7 * max(1.0, abs(val))
    # The point: interior-point references on exp/power cones are ~1e-6 accurate (see test_cones).
    np.testing.assert_allclose(s.x, x_ref, atol=1e-4 * max(1.0, np.abs(x_ref).max()))
    # Derivatives along a random direction of (A, b, c) vs fourth-order differences of SCS.
    rng = np.random.default_rng(seed + 7)
    d = [0.1 * rng.normal(size=A.shape), 0.1 * rng.normal(size=b.shape), 0.1 * rng.normal(size=c.shape)]
    fun = jax.jit(lambda A, b, c: conic_flat(A, b, c, cone))
    _, jd = jax.jit(lambda args, d: jax.jvp(lambda *a: conic_flat(*a, cone), args, d))((A, b, c), tuple(d))
    assert rel_err(jd, _fd4_dir(fun, (A, b, c), d)) < 1e-6
    # Reverse mode is the transpose of forward mode.
    w = rng.normal(size=jd.shape)
    ct = jax.vjp(lambda *a: conic_flat(*a, cone), A, b, c)[1](jnp.asarray(w))
    lhs, rhs = float(w @ np.asarray(jd)), sum(float(np.vdot(np.asarray(g), e)) for g, e in zip(ct, d))
    assert abs(lhs - rhs) <= 1e-8 * max(1.0, abs(lhs))


@tiers(1, 15)  # one draw already covers every cone kind; compile time dominates
def test_hunt_conic_every_cone_kind(examples):
    @hunt(examples, seed=st.integers(0, 2**31))
    def check(seed):
        conic_check(seed, MIXED)


@pytest.mark.slow
@pytest.mark.parametrize("cone", [{"l": 6}, {"z": 1, "l": 2, "q": [4]}, {"l": 1, "s": [3]}, {"l": 2, "ep": 2},
                                  {"l": 2, "ed": 2}, {"l": 2, "p": [0.3, -0.7]}], ids=["l", "q", "s", "ep", "ed", "p"])
def test_hunt_conic_per_cone_kind(cone):
    @hunt(10, seed=st.integers(0, 2**31))
    def check(seed):
        conic_check(seed, cone)


@tiers(1, 8)
def test_hunt_conic_failing_draw_and_masked_batch(examples):
    # Box LP min cᵀx s.t. -lo ≤ Dx ≤ hi (A = [-D; D] shared): lo = -2 > hi = 1 makes an instance
    # infeasible; masking it out leaves the gradient w.r.t. the shared A as without it.
    @hunt(examples, seed=st.integers(0, 2**31), bad=st.integers(0, 2))
    def check(seed, bad):
        rng = np.random.default_rng(seed)
        D = np.diag(rng.uniform(0.5, 2.0, 2))
        A = jnp.asarray(np.vstack([-D, D]))
        B = rng.uniform(0.5, 1.5, size=(3, 4))
        B[bad, :2] = -2.0  # x₀ ≥ 2/d₀ and x₀ ≤ hi/d₀ < 2/d₀: infeasible
        B[bad, 2:] = 1.0
        c = jnp.asarray(rng.normal(size=2))
        solve = lambda A, b: kb.solve_conic(A, b, c, {"l": 4}, on_failure="nan", **SCS_TIGHT)  # noqa: E731
        s = solve(A, jnp.asarray(B[bad]))
        assert int(s.status) != int(kb.Status.SOLVED) and nan_everywhere((s.x, s.y, s.s))
        assert nan_everywhere(jax.grad(lambda A: jnp.sum(solve(A, jnp.asarray(B[bad])).x))(A))
        assert nan_everywhere(jax.jacfwd(lambda b: solve(A, b).x)(jnp.asarray(B[bad])))

        def loss(A, Bs):
            sols = jax.vmap(lambda b: solve(A, b))(Bs)
            ok = (sols.status == int(kb.Status.SOLVED))[:, None]
            return jnp.sum(jnp.where(ok, sols.x, 0.0) ** 2)

        keep = np.array([i for i in range(3) if i != bad])
        g, g_ref = jax.grad(loss)(A, jnp.asarray(B)), jax.grad(loss)(A, jnp.asarray(B[keep]))
        assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g_ref)).max() > 1e-2
        assert rel_err(g, g_ref) < 1e-9
