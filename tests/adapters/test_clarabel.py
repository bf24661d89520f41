"""Clarabel adapter: same solutions and derivatives as SCS (and cvxpy), statuses, options, vmap.

Both solvers feed the same residual map (``kktbridge.core._conic``), so once each returns the same
primal-dual point their IFT derivatives must agree; finite differences check them independently.
Test problems have a known, unique, strictly complementary solution: draw ``x*``, ``v``, set
``y* = Π_{K*}(v)``, ``s* = y* - v``, ``b = Ax* + s*``, ``c = -Aᵀy*``, and redraw until the IFT
Jacobian is well conditioned (otherwise derivatives, and even ``y*``, are not unique).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge
from kktbridge.adapters import available_solvers, get_adapter
from kktbridge.adapters.clarabel import ClarabelAdapter, _psd_perm
from kktbridge import solve_conic
from kktbridge.core._cones import psd_vec
from kktbridge.core._status import Status
from tests._conic_problems import cvxpy_reference
from tests._conic_problems import make_problem as _shared_make_problem

from tests._fd import fd4_jacobian
from tests._peers import peer

clarabel = peer("clarabel")  # optional peer: skips when missing, fails under KKTBRIDGE_REQUIRE_PEERS=1

#: SCS reference tolerance: converges to ~1e-12 on these small, well-conditioned problems.
SCS_TIGHT = dict(eps_abs=1e-12, eps_rel=1e-12)

CONES = {
    "lp": {"l": 6},
    "socp": {"z": 1, "l": 2, "q": [4]},
    "exp": {"l": 2, "ep": 1, "ed": 1},  # ed exercises the dual-exponential rewrite
    "psd": {"l": 1, "s": [3]},
    "pow": {"l": 2, "p": [0.3, -0.6]},  # -0.6 exercises the dual-power rewrite
}
N = 3


def make_problem(cone, seed, n=N):
    return _shared_make_problem(cone, seed, n)


def cvxpy_objective(A, b, c, cone):
    """Optimal value through cvxpy + SCS with SCS's cone semantics spelled out."""
    return cvxpy_reference(A, b, c, cone, "SCS", eps_abs=1e-10, eps_rel=1e-10, max_iters=200_000)[2]


def test_registered_as_conic():
    assert "clarabel" in available_solvers("conic")
    assert isinstance(get_adapter("clarabel", kind="conic"), ClarabelAdapter)


def test_every_clarabel_status_is_mapped():
    names = [k for k in dir(clarabel.SolverStatus) if not k.startswith("_")]
    assert len(names) >= 12
    adapter = ClarabelAdapter()
    for k in names:
        assert k in adapter.status_map, k
        assert adapter.map_status(getattr(clarabel.SolverStatus, k)) == adapter.status_map[k]
    assert adapter.map_status(clarabel.SolverStatus.Solved) == Status.SOLVED
    assert adapter.map_status(clarabel.SolverStatus.PrimalInfeasible) == Status.INFEASIBLE
    assert adapter.map_status(clarabel.SolverStatus.DualInfeasible) == Status.UNBOUNDED
    assert adapter.map_status("SomethingNew") == Status.FAILED


def test_psd_permutation_matches_clarabel_upper_triangle():
    # Clarabel's order: upper triangle column-major = (0,0),(0,1),(1,1),(0,2),(1,2),(2,2),...
    n = 4
    X = np.arange(1.0, n * n + 1).reshape(n, n)
    X = X + X.T
    scs = np.asarray(psd_vec(jnp.asarray(X)))
    upper = [X[i, j] * (1.0 if i == j else np.sqrt(2.0)) for j in range(n) for i in range(j + 1)]
    np.testing.assert_array_equal(scs[_psd_perm(n)], upper)


#: Solution tolerance per cone, measured with the default options (gap 1e-14, feasibility 1e-12):
#: LP/SOCP/exp iterates are within ~1e-9 of the truth, PSD within ~3e-8 and power cones only
#: within ~2e-6, because an interior point's last iterate approaches a curved, non-symmetric
#: cone's boundary like the square root of its gap.
SOL_ATOL = {"lp": 1e-7, "socp": 1e-7, "exp": 1e-7, "psd": 1e-6, "pow": 1e-5}


@pytest.mark.parametrize("name", CONES)
def test_solution_matches_known_optimum_scs_and_cvxpy(name):
    cone = CONES[name]
    A, b, c, truth = make_problem(cone, seed=1)
    sol = solve_conic(A, b, c, cone, solver="clarabel")
    ref = solve_conic(A, b, c, cone, solver="scs", **SCS_TIGHT)
    assert Status(int(sol.status)).ok
    for got, want, scs in zip(sol[:3], truth, ref[:3]):
        np.testing.assert_allclose(got, want, atol=SOL_ATOL[name])
        np.testing.assert_allclose(got, scs, atol=SOL_ATOL[name])
    # cvxpy (SCS backend at 1e-10, independent cone bookkeeping): same optimal value.
    np.testing.assert_allclose(c @ sol.x, cvxpy_objective(A, b, c, cone), atol=1e-6, rtol=1e-6)


def _jacobians(cone, A, b, c, solver, **opts):
    f = lambda A, b, c: jnp.concatenate(solve_conic(A, b, c, cone, solver=solver, **opts)[:3])  # noqa: E731
    return jax.jit(jax.jacrev(f, argnums=(0, 1, 2)))(A, b, c)


#: Jacobian agreement with SCS: both use the same residual map, so the difference is the
#: solution difference times the IFT system's conditioning (< 1e3): ~1e-8 measured except for
#: power cones (up to 5e-6, from Clarabel's ~2e-6 power-cone solution error, see SOL_ATOL).
JAC_TOL = {"lp": 1e-6, "socp": 1e-6, "exp": 1e-6, "psd": 1e-6, "pow": 2e-5}


@pytest.mark.parametrize("name", CONES)
def test_jacobians_match_scs(name):
    cone = CONES[name]
    A, b, c, _ = make_problem(cone, seed=3)
    ours = _jacobians(cone, A, b, c, "clarabel")
    ref = _jacobians(cone, A, b, c, "scs", **SCS_TIGHT)
    for k, key in enumerate("Abc"):
        np.testing.assert_allclose(ours[k], ref[k], atol=JAC_TOL[name], rtol=JAC_TOL[name], err_msg=f"d/d{key}")


# Fourth-order central differences (error budget: see ``tests/bridges/test_conic.py::_fd``).
_fd4 = fd4_jacobian


#: Clarabel's Jacobian vs central differences of the exact solution map. The map is sampled with
#: SCS at eps 1e-12 (solution error ~1e-12, so FD error ~1e-9): independent of Clarabel and of the
#: residual map both derivatives share. Clarabel's own solution error (SOL_ATOL) bounds the
#: agreement: 1e-6 for LP/SOCP/exp/PSD, 2e-5 for power cones (their ~2e-6 solution error times
#: the IFT conditioning, as measured in JAC_TOL).
@pytest.mark.parametrize("name", CONES)
def test_jacobians_match_central_differences(name):
    cone = CONES[name]
    A, b, c, _ = make_problem(cone, seed=3)
    ours = _jacobians(cone, A, b, c, "clarabel")
    solve = jax.jit(lambda A, b, c: jnp.concatenate(solve_conic(A, b, c, cone, solver="scs", **SCS_TIGHT)[:3]))
    refs = (_fd4(lambda A_: solve(A_, b, c), A), _fd4(lambda b_: solve(A, b_, c), b), _fd4(lambda c_: solve(A, b, c_), c))
    for k, key in enumerate("Abc"):
        assert np.abs(refs[k]).max() > 1e-2, key  # a nonzero derivative: the check is not vacuous
        np.testing.assert_allclose(ours[k], refs[k], atol=JAC_TOL[name], rtol=JAC_TOL[name], err_msg=f"d/d{key}")


@pytest.mark.parametrize(
    "A, b, c, word",
    [
        ([[1.0], [-1.0]], [-1.0, -1.0], [1.0], "INFEASIBLE"),  # x <= -1 and x >= 1
        ([[1.0]], [1.0], [1.0], "UNBOUNDED"),  # min x s.t. x <= 1
    ],
)
def test_infeasible_and_unbounded_raise(A, b, c, word):
    cone = {"l": len(b)}
    with pytest.raises(kktbridge.SolverError, match=f"clarabel: {word}"):
        solve_conic(jnp.array(A), jnp.array(b), jnp.array(c), cone, solver="clarabel")
    sol = solve_conic(jnp.array(A), jnp.array(b), jnp.array(c), cone, solver="clarabel", on_failure="nan")
    assert int(sol.status) == Status[word]
    assert np.all(np.isnan(sol.x))


def test_vmap_over_b_equals_loop():
    cone = CONES["socp"]
    A, b, c, _ = make_problem(cone, seed=2)
    bs = jnp.stack([b, b + 0.01, b - 0.02])
    f = jax.jit(jax.vmap(lambda b: solve_conic(A, b, c, cone, solver="clarabel").x))
    xs = f(bs)
    for i in range(3):
        np.testing.assert_allclose(xs[i], solve_conic(A, bs[i], c, cone, solver="clarabel").x, atol=1e-12)


def test_options_nonfinite_and_unknown():
    A, b, c, _ = make_problem(CONES["lp"], seed=1)
    adapter = ClarabelAdapter()
    cone = CONES["lp"]
    bad = adapter.solve_one({"A": A, "b": np.where(np.arange(len(b)) == 0, np.nan, b), "c": c}, {"cone": cone})
    assert bad.status == Status.INVALID_PROBLEM and "non-finite" in bad.native_status
    unk = adapter.solve_one({"A": A, "b": b, "c": c}, {"cone": cone, "not_an_option": 1})
    assert unk.status == Status.INVALID_PROBLEM and "not_an_option" in unk.native_status
    wrong = adapter.solve_one({"A": A, "b": b, "c": c}, {"cone": cone, "max_iter": "many"})
    assert wrong.status == Status.INVALID_PROBLEM and "max_iter" in wrong.native_status
    # A real option passes through: one iteration cannot converge.
    one = adapter.solve_one({"A": A, "b": b, "c": c}, {"cone": cone, "max_iter": 1})
    assert one.status == Status.MAX_ITER and one.native_status == "MaxIterations"
    # Outside jit the bridge only sees the status code, so the message names the status.
    with pytest.raises(kktbridge.SolverError, match="clarabel: INVALID_PROBLEM"):
        solve_conic(A, b, c, cone, solver="clarabel", not_an_option=1)


def _simplex_least_squares(seed, n=5, m=8):
    """``min ‖F w - g‖² s.t. w ≥ 0, Σw = 1`` as a cone program (SCS form via cvxpy, no quadratic
    objective: an epigraph over a second-order cone), with some ``w_i = 0`` at the optimum."""
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    w = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(rng.standard_normal((m, n)) @ w - rng.standard_normal(m))), [w >= 0, cp.sum(w) == 1])
    data, _, _ = prob.get_problem_data(cp.SCS, solver_opts={"use_quad_obj": False})
    dims = data["dims"]
    cone = {"z": dims.zero, "l": dims.nonneg, "q": list(dims.soc)}
    return jnp.asarray(data["A"].toarray()), jnp.asarray(data["b"]), jnp.asarray(data["c"]), cone


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interior_point_solutions_are_refined_to_exact_points(seed):
    """Clarabel's last iterate is complementary only to ~√μ: rebuilding y = Π(y - s) left a relative
    residual of 4.5e-6 on seed 0 (refused as RESIDUAL_TOO_LARGE). After the Newton refinement the
    solution equals SCS's to 1e-8, the residual is below SCS's default accuracy, and the JVP
    matches central differences of SCS-solved problems."""
    A, b, c, cone = _simplex_least_squares(seed)
    sol = solve_conic(A, b, c, cone, solver="clarabel")
    ref = solve_conic(A, b, c, cone, **SCS_TIGHT)
    assert int(sol.status) == int(Status.SOLVED)
    # One Newton step from a point ~√μ ≈ 3e-6 off: quadratic convergence leaves ~1e-11 (measured
    # 4.9e-12 on seed 0; SCS at its default eps 1e-9 leaves ~1e-10 on such problems).
    assert float(sol.diagnostics.residual) < 1e-10
    np.testing.assert_allclose(sol.x, ref.x, atol=1e-8)
    np.testing.assert_allclose(sol.y, ref.y, atol=1e-8)
    rng = np.random.default_rng(seed + 1)
    db = jnp.asarray(rng.standard_normal(b.shape)) * (jnp.abs(b) > 0)  # perturb the data rows only
    f = lambda bb: solve_conic(A, bb, c, cone, solver="clarabel").x  # noqa: E731
    _, jd = jax.jvp(f, (b,), (db,))
    eps = 1e-5
    g = lambda bb: solve_conic(A, bb, c, cone, **SCS_TIGHT).x  # noqa: E731
    fd = (8 * (g(b + eps * db) - g(b - eps * db)) - (g(b + 2 * eps * db) - g(b - 2 * eps * db))) / (12 * eps)
    np.testing.assert_allclose(jd, fd, rtol=1e-6, atol=1e-7)
    # Batched (the refinement runs as a select under vmap) and jitted: the same points.
    bs = jnp.stack([b, b + 1e-3 * db])
    xs = jax.jit(jax.vmap(f))(bs)
    np.testing.assert_allclose(xs[0], sol.x, atol=1e-10)
