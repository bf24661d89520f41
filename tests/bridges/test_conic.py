"""solve_conic: solutions vs a known optimum and cvxpy, derivatives vs diffcp and finite differences.

Test problems are built with a *known* primal-dual solution: draw ``x*``, ``v``, set
``y* = Π_{K*}(v)``, ``s* = y* - v`` (complementary by Moreau), ``b = Ax* + s*``, ``c = -Aᵀy*``.
Problems whose IFT Jacobian is ill-conditioned (non-unique or degenerate solutions, where
derivatives do not exist) are redrawn, so every Jacobian below is well defined.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from kktbridge import ConicSolution, SolverError, Status, solve_conic  # the public names
from tests._conic_problems import cvxpy_reference
from tests._conic_problems import make_problem as _shared_make_problem
from kktbridge.core._cones import psd_mat
from kktbridge.core._conic import ConicPoint, conic_jacobian, conic_residual_map, hsde_residual
from tests._fd import fd4_jacobian
from tests._peers import peer

#: SCS tolerances for reference solves: SCS then converges to ~1e-12, which finite differences
#: (see ``_fd``) and the IFT derivatives both need.
TIGHT = dict(eps_abs=1e-12, eps_rel=1e-12)

CONES = {
    "lp": {"l": 6},
    "socp": {"z": 1, "l": 2, "q": [4]},
    "exp": {"l": 2, "ep": 2},
    "psd": {"l": 1, "s": [3]},
    "pow": {"l": 2, "p": [0.3, -0.6]},
}
N = 3


def make_problem(cone, seed, n=N):
    return _shared_make_problem(cone, seed, n)


def cvxpy_solve(A, b, c, cone):
    """Same problem through cvxpy + Clarabel (independent of SCS and of kktbridge's cones)."""
    x, s, _ = cvxpy_reference(A, b, c, cone, "CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return x, s


@pytest.mark.parametrize("name", list(CONES))
def test_solution_matches_known_optimum_and_cvxpy(name):
    cone = CONES[name]
    A, b, c, (x0, y0, s0) = make_problem(cone, seed=1)
    sol = solve_conic(A, b, c, cone)
    assert isinstance(sol, ConicSolution)
    assert int(sol.status) == Status.SOLVED
    # Default eps 1e-9 on a well-conditioned problem: solution error ~ cond * eps.
    for got, want in ((sol.x, x0), (sol.y, y0), (sol.s, s0)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # Independent solver: same optimal value to high accuracy; the point itself only to 1e-4,
    # because an interior-point gap of 1e-10 leaves O(sqrt(gap)) freedom along directions in
    # which the objective is flat to second order (seen on the PSD and exp cases).
    xc, sc = cvxpy_solve(A, b, c, cone)
    np.testing.assert_allclose(c @ sol.x, c @ xc, atol=1e-7, rtol=1e-7)
    np.testing.assert_allclose(sol.x, xc, atol=1e-4)
    np.testing.assert_allclose(sol.s, sc, atol=1e-4)
    # Exact complementarity by construction (Moreau) and primal/dual feasibility.
    assert abs(float(sol.y @ sol.s)) < 1e-10
    np.testing.assert_allclose(A @ sol.x + sol.s, b, atol=1e-7)
    np.testing.assert_allclose(A.T @ sol.y + c, 0.0, atol=1e-7)


def test_hsde_residual_vanishes_at_solution():
    cone = CONES["socp"]
    A, b, c, (x0, y0, s0) = make_problem(cone, seed=2)
    z = np.concatenate([x0, y0 - s0, [1.0]])
    np.testing.assert_allclose(hsde_residual(cone)(z, A, b, c), 0.0, atol=1e-12)
    # Degree-0 homogeneity: the ray direction is in the null space of diffcp's map.
    np.testing.assert_allclose(hsde_residual(cone)(2.5 * z, A, b, c), 0.0, atol=1e-12)


#: Every kind of cone, several blocks of one kind (runs), and blocks of one row.
ALL_KINDS = {"z": 2, "l": 3, "q": [3, 4, 4], "s": [2, 3], "ep": 2, "ed": 1, "p": [0.3, -0.6]}


@pytest.mark.parametrize("where, dtype", [("random", jnp.float64), ("kinks", jnp.float64), ("random", jnp.float32)])
def test_closed_form_jacobian_equals_jacfwd_of_the_residual(where, dtype):
    """``conic_jacobian`` (what the backward factors for a dense ``A``) is ``∂F/∂(x, v)`` exactly:
    the same derivative rules per block, so equal to rounding; at random points (every cone
    region) and where projections have kinks (an orthant entry at 0, an SOC block on the cone's
    boundary and one at its tip, a zero PSD block)."""
    from jax.flatten_util import ravel_pytree

    from kktbridge.core._cones import parse_cone

    rng = np.random.default_rng(11)
    n, m = 5, parse_cone(ALL_KINDS).dim
    A, b, c = (jnp.asarray(a, dtype) for a in (rng.standard_normal((m, n)), rng.standard_normal(m), rng.standard_normal(n)))
    v = rng.standard_normal(m)
    if where == "kinks":
        v[3] = 0.0  # orthant row (rows: z 0-1, l 2-4, q 5-7, 8-11, 12-15, s 16-18, 19-24, ...)
        v[5] = np.linalg.norm(v[6:8])  # SOC of size 3: on the boundary
        v[8:12] = 0.0  # SOC of size 4: the tip
        v[16:19] = 0.0  # PSD of order 2
    z = ConicPoint(jnp.asarray(rng.standard_normal(n), dtype), jnp.asarray(v, dtype))
    F = conic_residual_map(ALL_KINDS)
    flat, unravel = ravel_pytree(z)
    want = jax.jit(jax.jacfwd(lambda u: ravel_pytree(F(unravel(u), A, b, c))[0]))(flat)
    got = jax.jit(conic_jacobian(ALL_KINDS))(z, A, b, c)
    assert got.dtype == dtype and got.shape == (n + m, n + m)
    np.testing.assert_allclose(got, want, atol=10 * float(jnp.finfo(dtype).eps), rtol=0)


@pytest.mark.parametrize("name", list(CONES))
def test_float32_data_gives_float32_derivatives(name):
    """float32 problem data: float32 values and derivatives, close to the float64 ones."""
    cone = CONES[name]
    A, b, c, _ = make_problem(cone, seed=1)

    def loss(A, b, c):
        return jnp.sum(solve_conic(A, b, c, cone).x)

    g32 = jax.grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(a, jnp.float32) for a in (A, b, c)))
    g64 = jax.grad(loss, argnums=(0, 1, 2))(A, b, c)
    for a, e in zip(g32, g64):
        assert a.dtype == jnp.float32
        # float32 IFT solve at the float64 solver's point: ~cond(J) * eps32 (J is drawn with cond < 1e3).
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-3 * (1 + float(jnp.max(jnp.abs(e)))))


def _jacobians(cone, A, b, c, mode=jax.jacfwd, **opts):
    def f(A, b, c):
        sol = solve_conic(A, b, c, cone, **opts)
        return sol.x, sol.y, sol.s

    return jax.jit(mode(f, argnums=(0, 1, 2)))(A, b, c)


def _diffcp_jacobians(cone, A, b, c):
    diffcp = peer("diffcp")  # optional peer: only this comparison needs it
    m, n = A.shape
    _, _, _, D, _ = diffcp.solve_and_derivative(sp.csc_matrix(A), b, c, cone, solve_method="SCS", eps=1e-12)
    zA, zb, zc = sp.csc_matrix((m, n)), np.zeros(m), np.zeros(n)
    cols = {"A": [], "b": [], "c": []}
    for idx in np.ndindex(m, n):
        E = np.zeros((m, n))
        E[idx] = 1.0
        cols["A"].append(D(sp.csc_matrix(E), zb, zc))
    for e in np.eye(m):
        cols["b"].append(D(zA, e, zc))
    for e in np.eye(n):
        cols["c"].append(D(zA, zb, e))
    out = {}
    for key, shape in (("A", (m, n)), ("b", (m,)), ("c", (n,))):
        for j, o in enumerate("xys"):
            out[o, key] = np.stack([d[j] for d in cols[key]], axis=-1).reshape((-1,) + shape)
    return out


# diffcp's power-cone derivative is broken in the installed version (shape error), so it is
# compared on the other cones; the power cone is covered by finite differences below.
@pytest.mark.parametrize("name", ["lp", "socp", "exp", "psd"])
def test_jacobians_match_diffcp(name):
    cone = CONES[name]
    A, b, c, _ = make_problem(cone, seed=3)
    ours = _jacobians(cone, A, b, c, **TIGHT)
    ref = _diffcp_jacobians(cone, A, b, c)
    for j, o in enumerate("xys"):
        for k, key in enumerate("Abc"):
            # diffcp solves its derivative system with LSQR (iterative), accurate to ~1e-8 here.
            np.testing.assert_allclose(ours[j][k], ref[o, key], atol=1e-6, rtol=1e-6, err_msg=f"d{o}/d{key}")


# Fourth-order central differences.
#
# The solution maps here have large higher derivatives (first derivatives up to ~50), so the
# O(h^4) truncation error is ~1e-8 at h = 2e-4 (measured: 1.5e-7 at h = 1e-3, 6e-9 at 3e-4),
# while SCS's ~1e-13 solution error contributes only ~1e-9.
_fd = fd4_jacobian


@pytest.mark.parametrize("name", list(CONES))
def test_jacobians_match_finite_differences(name):
    cone = CONES[name]
    A, b, c, _ = make_problem(cone, seed=4)
    ours = _jacobians(cone, A, b, c, **TIGHT)
    solve = jax.jit(lambda A, b, c: jnp.concatenate(solve_conic(A, b, c, cone, **TIGHT)[:3]))
    refs = (
        _fd(lambda A_: solve(A_, b, c), A),
        _fd(lambda b_: solve(A, b_, c), b),
        _fd(lambda c_: solve(A, b, c_), c),
    )
    for k, key in enumerate("Abc"):
        got = np.concatenate([ours[j][k] for j in range(3)])
        # FD error ~1e-9 (see _fd); the IFT Jacobian is exact up to the solve's ~1e-12 residual.
        np.testing.assert_allclose(got, refs[k], atol=1e-6, rtol=1e-6, err_msg=f"d(x,y,s)/d{key}")


@pytest.mark.parametrize("name", ["socp"])
def test_jacfwd_equals_jacrev(name):
    cone = CONES[name]
    A, b, c, _ = make_problem(cone, seed=5)
    fwd = _jacobians(cone, A, b, c, jax.jacfwd)
    rev = _jacobians(cone, A, b, c, jax.jacrev)
    for jf, jr in zip(jax.tree_util.tree_leaves(fwd), jax.tree_util.tree_leaves(rev)):
        # Same primal solution and the same linear system in both modes: equal to round-off.
        np.testing.assert_allclose(jf, jr, atol=1e-10)


def test_hessian_matches_fd_of_gradient():
    cone = CONES["socp"]
    A, b, c, _ = make_problem(cone, seed=6)
    w = np.random.default_rng(0).standard_normal(N)

    def loss(b):
        sol = solve_conic(A, b, c, cone, **TIGHT)
        return jnp.sum(w * sol.x**2) + jnp.sum(sol.y**3)

    H = jax.jit(jax.hessian(loss))(b)
    g = jax.jit(jax.grad(loss))
    Hfd = _fd(g, b)
    assert np.abs(H).max() > 1e-2  # the loss is curved in b: the check is not vacuous
    np.testing.assert_allclose(H, Hfd, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(H, H.T, atol=1e-8)


def test_jit_and_vmap_over_b_equal_the_loop():
    cone = CONES["exp"]
    A, b, c, _ = make_problem(cone, seed=7)
    B = b + 0.05 * np.random.default_rng(1).standard_normal((5, b.size))
    single = jax.jit(lambda b: solve_conic(A, b, c, cone, **TIGHT))
    batched = jax.jit(jax.vmap(single))(B)
    for i, bi in enumerate(B):
        for got, want in zip(batched[:3], single(bi)[:3]):
            np.testing.assert_allclose(got[i], want, atol=1e-9)
    assert np.all(np.asarray(batched.status) == Status.SOLVED)
    # Gradients through the batch equal per-instance gradients.
    grad = jax.grad(lambda b: jnp.sum(solve_conic(A, b, c, cone, **TIGHT).x))
    gb = jax.jit(jax.vmap(grad))(B)
    single_grad = jax.jit(grad)
    for i, bi in enumerate(B):  # every instance: a mix-up anywhere in the batch fails
        np.testing.assert_allclose(gb[i], single_grad(bi), atol=1e-9)


def test_vmap_over_a_batched_matrix():
    # Perturb A and rebuild b, c so that (x*, y*, s*) stays the optimum of every instance.
    cone = CONES["socp"]
    A, b, c, (x0, y0, s0) = make_problem(cone, seed=8)
    As = A + 0.05 * np.random.default_rng(2).standard_normal((3,) + A.shape)
    bs = As @ x0 + s0
    cs = -np.einsum("kmn,m->kn", As, y0)
    single = jax.jit(lambda A, b, c: solve_conic(A, b, c, cone, **TIGHT).x)
    xs = jax.jit(jax.vmap(single))(As, bs, cs)
    for i in range(3):
        np.testing.assert_allclose(xs[i], single(As[i], bs[i], cs[i]), atol=1e-9)
        np.testing.assert_allclose(xs[i], x0, atol=1e-8)


def test_warm_start_reuses_solution():
    cone = CONES["socp"]
    A, b, c, _ = make_problem(cone, seed=9)
    cold = solve_conic(A, b, c, cone)
    warm = solve_conic(A, b, c, cone, warm_start=(cold.x, cold.y, cold.s))
    np.testing.assert_allclose(warm.x, cold.x, atol=1e-8)
    assert int(warm.iterations) <= int(cold.iterations)


# --- failures --------------------------------------------------------------------------------

# x >= 1 and x <= 0: s = b - Ax with A = [[-1], [1]], b = [-1, 0].
INFEASIBLE = (np.array([[-1.0], [1.0]]), np.array([-1.0, 0.0]), np.array([1.0]), {"l": 2})
# min -x s.t. x >= 0.
UNBOUNDED = (np.array([[-1.0]]), np.array([0.0]), np.array([-1.0]), {"l": 1})


@pytest.mark.parametrize("problem, status", [(INFEASIBLE, Status.INFEASIBLE), (UNBOUNDED, Status.UNBOUNDED)])
def test_failure_raises_with_status(problem, status):
    with pytest.raises(SolverError, match=status.name) as info:
        solve_conic(*problem)
    assert info.value.status == status


@pytest.mark.parametrize("problem, status", [(INFEASIBLE, Status.INFEASIBLE), (UNBOUNDED, Status.UNBOUNDED)])
def test_failure_nan_policy(problem, status):
    sol = solve_conic(*problem, on_failure="nan")
    assert int(sol.status) == status
    assert np.all(np.isnan(sol.x)) and np.all(np.isnan(sol.y)) and np.all(np.isnan(sol.s))


def test_failure_raises_under_jit():
    A, b, c, cone = INFEASIBLE
    with pytest.raises(Exception, match="INFEASIBLE"):
        jax.block_until_ready(jax.jit(lambda b: solve_conic(A, b, c, cone).x)(b))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(b=np.zeros(3)), "b"),
        (dict(c=np.zeros(2)), "c"),
        (dict(A=np.zeros(6)), "A"),
        (dict(b=np.array([np.nan, 0, 0, 0, 0, 0])), "b"),
        (dict(A=np.full((6, 3), np.inf)), "A"),
        (dict(cone={"l": 5, "foo": 1}), "cone"),
        (dict(cone={"l": 5}), "cone"),
        (dict(cone={"bu": [1.0], "bl": [0.0], "l": 5}), "cone"),
        (dict(cone={"q": [2, "x"], "l": 4}), "cone"),
        (dict(cone=[6]), "cone"),
        (dict(on_failure="ignore"), "on_failure"),
        (dict(warm_start=(np.zeros(3),)), "warm_start"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(A=np.ones((6, 3)), b=np.ones(6), c=np.ones(3), cone={"l": 6})
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        solve_conic(**args)


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="solver"):
        solve_conic(np.ones((1, 1)), np.ones(1), np.ones(1), {"l": 1}, solver="nope")


def test_psd_vectorisation_agrees_with_scs():
    # Independent check of the PSD convention against SCS itself: min <C, X> s.t. tr X = 1, X PSD
    # has the solution X = u uᵀ for the eigenvector u of C's smallest eigenvalue.
    rng = np.random.default_rng(10)
    n = 3
    C = rng.standard_normal((n, n))
    C = C + C.T
    r, col = np.triu_indices(n)
    scale = np.where(r == col, 1.0, np.sqrt(2.0))
    c = C[col, r] * scale  # <C, X> = c . vec(X)
    tr = np.where(r == col, 1.0, 0.0)
    d = n * (n + 1) // 2
    # Variables x = vec(X); s_eq = 1 - tr.x = 0, s_psd = x  (A = [tr; -I], b = [1; 0]).
    A = np.vstack([tr[None, :], -np.eye(d)])
    b = np.concatenate([[1.0], np.zeros(d)])
    sol = solve_conic(A, b, c, {"z": 1, "s": [n]})
    X = np.asarray(psd_mat(sol.x, n))
    w, V = np.linalg.eigh(C)
    np.testing.assert_allclose(X, np.outer(V[:, 0], V[:, 0]), atol=1e-6)
