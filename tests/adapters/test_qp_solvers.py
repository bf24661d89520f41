"""DAQP, ProxSuite, PIQP and ``solver="auto"``: solutions, dual signs, derivatives, statuses, batches.

Test problems are planted: draw ``x*``, an active set with multipliers ``λ* > 0`` (margins >= 0.2
elsewhere), ``ν*``, and set ``q = -(Px* + Aᵀν* + Gᵀλ*)``, ``h = Gx* + slack`` -- the KKT
conditions then hold at ``(x*, ν*, λ*)``, which is the unique solution (``P ≻ 0``, independent
active rows). Each adapter must reproduce it, and OSQP's solution, to 1e-7.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import auto as auto_mod
from kktbridge.adapters import available_solvers, get_adapter
from kktbridge.core._status import SolverError, Status
from tests._fd import fd_jacobian, rel_err
from tests._peers import peer

SOLVERS = ["daqp", "proxsuite", "piqp", "auto"]
NATIVE = {"daqp": "daqp", "proxsuite": "proxsuite", "piqp": "piqp", "auto": "osqp"}
SHARED = frozenset({"P", "A", "G"})


@pytest.fixture(params=SOLVERS)
def solver(request):
    peer(NATIVE[request.param])  # optional peers: skip when missing
    return request.param


def planted(seed, n=6, m_eq=2, m_ineq=6, n_active=2, inf_rows=0, redundant=False, rank=None):
    """A QP with known unique solution ``(x, ν, λ)`` (see the module docstring).

    ``rank``: a singular ``P = FFᵀ`` of that rank (the solution stays unique while the active rows
    and ``P`` have no common null direction, generic when ``m_eq + n_active ≥ n - rank``).
    """
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, n))
    P = F @ F.T / n + np.eye(n) if rank is None else F[:, :rank] @ F[:, :rank].T
    A = rng.standard_normal((m_eq, n))
    G = rng.standard_normal((m_ineq, n))
    x = rng.standard_normal(n)
    nu = rng.standard_normal(m_eq)
    lam = np.zeros(m_ineq)
    lam[:n_active] = rng.uniform(0.5, 1.5, n_active)
    slack = np.where(lam > 0, 0.0, rng.uniform(0.2, 1.0, m_ineq))
    h = G @ x + slack
    h[m_ineq - inf_rows :] = np.inf
    q = -(P @ x + A.T @ nu + G.T @ lam)
    b = A @ x
    if redundant:
        # A repeated equality row and a repeated active inequality row: x stays unique, the
        # multipliers do not (only their sums over each pair are determined).
        A, b = np.vstack([A, A[:1]]), np.concatenate([b, b[:1]])
        G, h = np.vstack([G, G[:1]]), np.concatenate([h, h[:1]])
    return dict(P=P, q=q, A=A, b=b, G=G, h=h), (x, nu, lam)


def host_solve(name, data, options=None):
    return get_adapter(name).solve_batch([data], frozenset(), options or {})[0]


def kkt_residual(d, x, nu, lam):
    return np.abs(d["P"] @ x + d["q"] + d["A"].T @ nu + d["G"].T @ lam).max()


def test_registered_and_available():
    for name in SOLVERS:
        assert get_adapter(name).kind == "qp"
        assert name in available_solvers("qp")
        assert get_adapter(name).REQUIRED_MODULES


def test_every_native_status_is_mapped():
    daqp_flags = {2, 1, -1, -2, -3, -4, -5, -6, -7, -8}  # DAQP 0.11 include/constants.h
    assert set(get_adapter("daqp").status_map) == daqp_flags
    from proxsuite import proxqp

    assert set(get_adapter("proxsuite").status_map) == set(proxqp.QPSolverOutput.__members__)
    import piqp

    assert set(get_adapter("piqp").status_map) == {int(v) for v in piqp.Status.__members__.values()}
    for name in ("daqp", "proxsuite", "piqp"):
        assert get_adapter(name).map_status("unknown") == Status.FAILED


@pytest.mark.parametrize("case", ["plain", "inf_rows", "no_eq", "redundant"])
def test_agrees_with_truth_and_osqp_and_dual_signs(solver, case):
    kw = {"plain": {}, "inf_rows": {"inf_rows": 2}, "no_eq": {"m_eq": 0}, "redundant": {"redundant": True}}[case]
    for seed in range(3):
        d, (x, nu, lam) = planted(seed, **kw)
        r = host_solve(solver, d)
        ref = host_solve("osqp", d)
        assert r.status == Status.SOLVED, (r.status, r.native_status)
        v = r.values
        assert rel_err(v["x"], x) < 1e-7 and rel_err(v["x"], ref.values["x"]) < 1e-7
        # Dual signs through the KKT conditions: stationarity with +Aᵀν + Gᵀλ, λ ≥ 0, λ = 0 on
        # inactive and absent (+inf) rows.
        assert kkt_residual(d, v["x"], v["eq_dual"], v["ineq_dual"]) < 1e-7
        assert v["ineq_dual"].min() > -1e-9
        inactive = d["h"] - d["G"] @ v["x"] > 1e-3
        assert np.abs(v["ineq_dual"][inactive]).max(initial=0.0) < 1e-8
        if case != "redundant":  # unique multipliers: they must match
            assert rel_err(v["eq_dual"], nu) < 1e-7 and rel_err(v["ineq_dual"], lam) < 1e-7


def test_singular_P_solutions_are_exact(solver):
    """A singular P (cvxpy's canonical least squares has P = diag(0, I)): DAQP's proximal-point
    answer is polished on its working set, so every solver returns the planted point to ~1e-12, and
    the directional derivative of x matches a central difference at step 1e-5 (which would see
    1e-5 of noise from a solution accurate to 1e-10 only)."""
    for seed in range(3):
        d, (x, nu, lam) = planted(seed, n=6, m_eq=2, m_ineq=6, n_active=2, rank=3)
        r = host_solve(solver, d)
        assert r.status == Status.SOLVED, (r.status, r.native_status)
        v = r.values
        # proxsuite/piqp stop at their (tightened) tolerances; DAQP and auto (DAQP here) are exact.
        tol = 1e-12 if solver in ("daqp", "auto") else 1e-8
        assert rel_err(v["x"], x) < tol and rel_err(v["ineq_dual"], lam) < tol, solver
        assert kkt_residual(d, v["x"], v["eq_dual"], v["ineq_dual"]) < 10 * tol
    d, _ = planted(0, n=6, m_eq=2, m_ineq=6, n_active=2, rank=3)
    fun = _qp_fun(solver, d, "q")
    dq = np.random.default_rng(1).standard_normal(6)
    jvp = jax.jvp(fun, (jnp.asarray(d["q"]),), (jnp.asarray(dq),))[1]
    h = 1e-5
    fd = (np.asarray(fun(d["q"] + h * dq)) - np.asarray(fun(d["q"] - h * dq))) / (2 * h)
    # The solution is piecewise affine in q (no truncation error): 1e-6 leaves room for the
    # solvers' own tolerances (proxsuite/piqp), DAQP's polished points give ~1e-10.
    assert rel_err(jvp, fd) < (1e-8 if solver in ("daqp", "auto") else 1e-6)


def _qp_fun(solver, d, wrt):
    def fun(v):
        args = {k: jnp.asarray(d[k]) for k in d}
        args[wrt] = jnp.asarray(v)
        s = kb.solve_qp(**args, solver=solver)
        return jnp.concatenate([s.x, s.eq_dual, s.ineq_dual])

    return fun


@pytest.mark.parametrize("wrt", ["q", "b", "h"])
def test_gradients_match_finite_differences(solver, wrt):
    d, _ = planted(7, inf_rows=1)
    fun = _qp_fun(solver, d, wrt)
    J = np.asarray(jax.jacrev(fun)(jnp.asarray(d[wrt])))
    # The solution is affine in (q, b, h) while the active set is fixed (margins >= 0.2 here), so
    # central differences have no truncation error: a step of 1e-4 keeps the active set and
    # divides the solvers' ~1e-11 solution error by 1e-4 only, well below the 1e-6 tolerance.
    v0 = np.where(np.isfinite(d[wrt]), d[wrt], 0.0)
    finite = np.isfinite(d[wrt])

    def fd_fun(v):
        return np.asarray(fun(jnp.asarray(np.where(finite, v, np.inf))))

    fd = fd_jacobian(fd_fun, v0, eps=1e-4)
    assert rel_err(J[:, finite], fd[:, finite]) < 1e-6
    assert np.all(J[:, ~finite] == 0)
    Jf = np.asarray(jax.jacfwd(fun)(jnp.asarray(d[wrt])))
    assert rel_err(Jf[:, finite], fd[:, finite]) < 1e-6


def _infeasible():
    return dict(P=np.eye(2), q=np.zeros(2), A=np.array([[1.0, 0.0]]), b=np.array([1.0]), G=np.array([[1.0, 0.0]]), h=np.array([0.0]))


def _unbounded():
    return dict(P=np.diag([1.0, 0.0]), q=np.array([0.0, -1.0]), A=np.zeros((0, 2)), b=np.zeros(0), G=np.array([[-1.0, 0.0]]), h=np.array([0.0]))


def _nonconvex():
    return dict(P=np.diag([1.0, -1.0]), q=np.zeros(2), A=np.zeros((0, 2)), b=np.zeros(0), G=np.vstack([np.eye(2), -np.eye(2)]), h=np.ones(4))


@pytest.mark.parametrize("problem, expected", [(_infeasible, Status.INFEASIBLE), (_unbounded, Status.UNBOUNDED),
                                               (_nonconvex, Status.NON_CONVEX)])
def test_failure_statuses(solver, problem, expected):
    d = {k: jnp.asarray(v) for k, v in problem().items()}
    s = kb.solve_qp(**d, solver=solver, on_failure="nan")
    assert Status(int(s.status)) == expected
    assert np.all(np.isnan(np.asarray(s.x)))
    g = jax.grad(lambda q: jnp.sum(kb.solve_qp(d["P"], q, d["A"], d["b"], d["G"], d["h"], solver=solver, on_failure="nan").x))(d["q"])
    assert np.all(np.isnan(np.asarray(g)))
    with pytest.raises(SolverError) as err:
        kb.solve_qp(**d, solver=solver)
    assert err.value.status == expected


@pytest.mark.parametrize("batched_matrices", [False, True])
def test_vmap_matches_single_solves(solver, batched_matrices):
    ds = [planted(s, inf_rows=1)[0] for s in range(5)]
    if not batched_matrices:
        ds = [{**d, "P": ds[0]["P"], "A": ds[0]["A"], "G": ds[0]["G"]} for d in ds]
        # Same matrices: re-plant the vectors so that each instance has a different active set.
        ds = [{**ds[0], "q": d["q"] * (1 + 0.1 * i)} for i, d in enumerate(ds)]
    keys = ("P", "q", "A", "b", "G", "h")
    stack = {k: jnp.asarray(np.stack([d[k] for d in ds])) for k in keys}
    axes = {k: (0 if batched_matrices or k in ("q", "b", "h") else None) for k in keys}
    args = {k: (stack[k] if axes[k] == 0 else stack[k][0]) for k in keys}
    xs = jax.jit(jax.vmap(lambda a: kb.solve_qp(**a, solver=solver).x, in_axes=(axes,)))(args)
    for i, d in enumerate(ds):
        ref = host_solve("osqp", d).values["x"]
        assert rel_err(np.asarray(xs[i]), ref) < 1e-7


def test_unknown_options_raise_before_any_solve(solver):
    d, _ = planted(0)
    with pytest.raises(ValueError, match="not_an_option"):
        kb.solve_qp(**d, solver=solver, not_an_option=1)
    if solver in ("proxsuite", "piqp"):
        with pytest.raises(ValueError, match="backend"):
            kb.solve_qp(**d, solver=solver, backend="gpu")


def test_sparse_backends_agree():
    d, (x, _, _) = planted(3, inf_rows=1)
    for name in ("proxsuite", "piqp"):
        peer(name)
        r = host_solve(name, d, {"backend": "sparse"})
        assert r.status == Status.SOLVED and rel_err(r.values["x"], x) < 1e-7


def test_solves_are_silent(solver):
    # Capture file descriptor 1 (where C libraries print), not only sys.stdout.
    d, _ = planted(1, inf_rows=2)
    bad = _infeasible()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        try:
            host_solve(solver, d)
            host_solve(solver, bad)
            get_adapter(solver).solve_batch([d, d], SHARED, {})
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        assert tmp.read() == b""


def test_auto_rule_and_recorded_choice():
    assert auto_mod.choose(10, 2, 5, density=1.0, batch=128) == "daqp"
    assert auto_mod.choose(500, 50, 200, density=1.0, batch=8) == "daqp"
    assert auto_mod.choose(2000, 10, 2000, density=0.01, batch=1) == "osqp"
    d, _ = planted(2)
    r = host_solve("auto", d)
    assert r.native_status.startswith("daqp: ")
    assert auto_mod.SOLVERS[int(r.values["solver"])] == "daqp"
    # Large and sparse: OSQP (diagonal P, a few sparse rows).
    n = auto_mod.SPARSE_MIN_N
    big = dict(P=np.eye(n), q=-np.ones(n), A=np.zeros((0, n)), b=np.zeros(0), G=np.eye(3, n), h=np.full(3, 0.5))
    r = host_solve("auto", big)
    assert r.status == Status.SOLVED and r.native_status.startswith("osqp: ")
    assert np.allclose(r.values["x"], np.r_[np.full(3, 0.5), np.ones(n - 3)], atol=1e-8)


def test_auto_retries_solver_failures_with_osqp(monkeypatch):
    from kktbridge.adapters.daqp import DAQPAdapter

    d, (x, _, _) = planted(4)
    monkeypatch.setattr(DAQPAdapter, "solve", lambda self, s, d, w, o: (None, None, None, -2, 0))  # "cycling"
    r = host_solve("auto", d)
    assert r.status == Status.SOLVED and r.native_status.startswith("osqp: ") and "daqp: -2" in r.native_status
    assert rel_err(r.values["x"], x) < 1e-7
    # A problem verdict is kept, not retried.
    monkeypatch.setattr(DAQPAdapter, "solve", lambda self, s, d, w, o: (None, None, None, -1, 0))
    assert host_solve("auto", d).status == Status.INFEASIBLE


def test_auto_refuses_solver_options():
    d, _ = planted(0)
    with pytest.raises(ValueError, match="eps_abs"):
        kb.solve_qp(**d, solver="auto", eps_abs=1e-6)


def _planted_box_lp(seed, n=10, m=4):
    """A feasible, bounded LP: ``x*`` optimal by construction (half the rows active with positive
    multipliers), plus the box ``|x - x*| <= 5``; ``P = 0``."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(n)
    G = rng.standard_normal((m, n))
    active = rng.random(m) < 0.5
    h = G @ x0 + np.where(active, 0.0, rng.uniform(0.1, 1.0, m))
    q = -G.T @ np.where(active, rng.uniform(0.1, 1.0, m), 0.0)
    G = np.vstack([G, np.eye(n), -np.eye(n)])
    h = np.concatenate([h, x0 + 5, 5 - x0])
    return np.zeros((n, n)), q, G, h, x0


@pytest.mark.parametrize("solver", ["proxsuite", "daqp", "piqp", "osqp"])
def test_feasible_lps_are_never_declared_infeasible(solver):
    """ProxSuite at its default infeasibility tolerance (1e-4) declared some of these planted,
    feasible LPs primal infeasible mid-solve (a wrong status, hence a spurious failure)."""
    if solver not in available_solvers():
        pytest.skip(f"{solver} not installed")
    wrong, solved = [], 0
    for seed in range(40):
        P, q, G, h, x0 = _planted_box_lp(seed)
        sol = kb.solve_qp(P, q, G=G, h=h, solver=solver, on_failure="nan")
        status = Status(int(sol.status))
        if status in (Status.INFEASIBLE, Status.UNBOUNDED):
            wrong.append((seed, status.name))
        if status is Status.SOLVED:
            solved += 1
            # The optimal value is unique (the optimal point need not be, for an LP).
            assert abs(float(q @ np.asarray(sol.x)) - float(q @ x0)) <= 1e-8 * (1 + abs(float(q @ x0)))
        else:  # a failure is a failure: NaN, never a point
            assert np.all(np.isnan(np.asarray(sol.x)))
    assert not wrong, wrong
    # DAQP and ProxSuite solve all. Seeds 10 and 28 draw no active row, so q = 0 (every feasible
    # point optimal): PIQP (2/40) and OSQP (1/40) return feasible points with round-off multipliers,
    # which the scale-free residual check (its scale S is then made of those multipliers alone)
    # refuses as RESIDUAL_TOO_LARGE -- a refusal, never a wrong point.
    assert solved >= (40 if solver in ("proxsuite", "daqp") else 36), solved
