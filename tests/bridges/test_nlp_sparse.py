"""solve_nlp's sparse path: sparse oracles + sparse LU backward agree with the dense path and with
finite differences; failures stay NaN; a 20,001-variable NLP solves and differentiates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from tests._fd import fd_jacobian, rel_err

pytest.importorskip("asdex")

TIGHT = {"tol": 1e-12}
#: Sparse and dense paths differ only in the rounding of their oracles and linear solves; both
#: solve to IPOPT tol 1e-12, so values and derivatives agree far below this.
SAME = 1e-9


# ---------------------------------------------------------------- chain NLP (the problem)
def chain_f(x, p):
    """``Σ (s_i - t_i)² + 0.1 Σ u_i²`` over states ``s`` (N+1) and controls ``u`` (N)."""
    N = p.shape[0] - 2
    s, u = x[: N + 1], x[N + 1 :]
    return jnp.sum((s - p[1:]) ** 2) + 0.1 * jnp.sum(u**2)


def chain_eq(x, p):
    """``s_0 = p_0`` (initial state) and ``s_{i+1} = s_i + u_i``."""
    N = p.shape[0] - 2
    s, u = x[: N + 1], x[N + 1 :]
    return jnp.concatenate([s[:1] - p[:1], s[1:] - s[:-1] - u])


def chain_data(N, u_max=None):
    p = jnp.concatenate([jnp.array([0.3]), 2 * jnp.sin(4 * jnp.pi * jnp.arange(N + 1) / N)])
    n = 2 * N + 1
    bounds = {}
    if u_max is not None:
        lo = jnp.concatenate([jnp.full(N + 1, -jnp.inf), jnp.full(N, -u_max)])
        bounds = {"lower": lo, "upper": -lo}
    return jnp.zeros(n), p, bounds


# ---------------------------------------------------------------- a nonlinear problem with inequalities
def nl_f(x, p):
    return 0.5 * jnp.sum((x - p) ** 2) + 0.25 * jnp.sum(x**4)


def nl_eq(x, p):
    return jnp.sum(x, keepdims=True) - 1.0


def nl_ineq(x, p):
    return jnp.concatenate([jnp.sum(x**2, keepdims=True) - 0.5, x[:-1] * x[1:] - 0.02])


def test_chain_with_bounds_sparse_equals_dense_and_fd():
    x0, p, bounds = chain_data(12, u_max=0.5)
    sol = lambda p, sp: kb.solve_nlp(chain_f, x0, p, eq=chain_eq, sparse=sp, **bounds, **TIGHT)  # noqa: E731
    s_sp, s_de = sol(p, True), sol(p, False)
    assert int(s_sp.status) == int(kb.Status.SOLVED)
    assert float(jnp.max(s_sp.upper_dual + s_sp.lower_dual)) > 1e-3  # some bound is active
    for field in ("x", "eq_dual", "lower_dual", "upper_dual", "objective"):
        assert rel_err(getattr(s_sp, field), getattr(s_de, field)) < SAME, field
    J_sp_fwd = jax.jacfwd(lambda p: sol(p, True).x)(p)
    J_sp_rev = jax.jacrev(lambda p: sol(p, True).x)(p)
    J_de = jax.jacfwd(lambda p: sol(p, False).x)(p)
    assert rel_err(J_sp_fwd, J_de) < SAME
    assert rel_err(J_sp_rev, J_de) < SAME
    fd = fd_jacobian(lambda q: sol(jnp.asarray(q), True).x, p)
    assert rel_err(J_sp_rev, fd) < 1e-6


def test_nonlinear_with_inequalities_sparse_equals_dense():
    n = 8
    p = jnp.asarray(np.random.default_rng(0).standard_normal(n))
    x0 = jnp.full(n, 1.0 / n)
    sol = lambda p, sp: kb.solve_nlp(nl_f, x0, p, eq=nl_eq, ineq=nl_ineq, sparse=sp, **TIGHT)  # noqa: E731
    s_sp, s_de = sol(p, True), sol(p, False)
    for field in ("x", "eq_dual", "ineq_dual"):
        assert rel_err(getattr(s_sp, field), getattr(s_de, field)) < SAME, field
    for field in ("x", "ineq_dual"):
        J_sp = jax.jacrev(lambda p: getattr(sol(p, True), field))(p)
        J_de = jax.jacrev(lambda p: getattr(sol(p, False), field))(p)
        assert rel_err(J_sp, J_de) < SAME, field
    fd = fd_jacobian(lambda q: sol(jnp.asarray(q), True).x, p)
    assert rel_err(jax.jacfwd(lambda p: sol(p, True).x)(p), fd) < 1e-6


def test_second_order_and_vmap_on_the_sparse_path():
    n = 6
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.standard_normal(n))
    w = jnp.asarray(rng.standard_normal(n))
    x0 = jnp.full(n, 1.0 / n)

    def loss(p, sp):
        return jnp.vdot(w, kb.solve_nlp(nl_f, x0, p, eq=nl_eq, ineq=nl_ineq, sparse=sp, **TIGHT).x)

    H_sp = jax.hessian(loss)(p, True)
    H_de = jax.hessian(loss)(p, False)
    assert rel_err(H_sp, H_de) < 1e-8  # second derivatives: one more solve, rounding amplified by cond(KKT)
    P = jnp.stack([p, 0.5 * p, -p])
    G_sp = jax.vmap(jax.grad(lambda p: loss(p, True)))(P)
    G_de = jax.vmap(jax.grad(lambda p: loss(p, False)))(P)
    assert rel_err(G_sp, G_de) < SAME


def test_failed_instance_is_nan_on_the_sparse_path():
    x0, p, _ = chain_data(10)
    # Infeasible: s_0 = p_0 and s_0 >= p_0 + 1.
    lower = jnp.full(x0.shape, -jnp.inf).at[0].set(p[0] + 1.0)

    def fields(p):
        s = kb.solve_nlp(chain_f, x0, p, eq=chain_eq, lower=lower, sparse=True, on_failure="nan", max_iter=50)
        return s.x, s.status

    x, status = fields(p)
    assert int(status) != int(kb.Status.SOLVED)
    assert np.all(np.isnan(x))
    g = jax.grad(lambda p: jnp.sum(fields(p)[0]))(p)
    assert np.all(np.isnan(g))


def test_sparse_flag_validation():
    x0, p, _ = chain_data(4)
    with pytest.raises(ValueError, match="sparse"):
        kb.solve_nlp(chain_f, x0, p, eq=chain_eq, sparse="yes")


def test_auto_chooses_sparse_for_a_large_chain_and_dense_for_a_small_one():
    from kktbridge.bridges._nlp import _oracles

    for N, expect in ((600, True), (20, False)):
        x0, p, _ = chain_data(N)
        assert _oracles(chain_f, chain_eq, None, x0, p, N + 1, 0, None).sparse is expect


def _chain_closed_form_grad(N, u_max, w, sol):
    """``∇_p wᵀx*`` of the bounded chain in closed form: the equality-constrained QP with the bounds
    whose multipliers exceed 1e-6 in ``sol`` as equalities, ``K (x, ν, z) = R(p)``,
    ``∇_p wᵀx* = -(∂R/∂p)ᵀ K⁻ᵀ (w, 0, 0)`` (SciPy's sparse direct solve)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    n = 2 * N + 1
    mult = np.asarray(sol.upper_dual + sol.lower_dual)
    active = np.flatnonzero(mult > 1e-6)
    assert active.size > 1000 and np.all(np.abs(np.abs(np.asarray(sol.x)[active]) - u_max) < 1e-6)
    H = sp.diags(np.concatenate([np.full(N + 1, 2.0), np.full(N, 0.2)]))
    i = np.arange(N)
    J = sp.vstack([sp.csr_matrix(([1.0], ([0], [0])), shape=(1, n)),
                   sp.csr_matrix((np.concatenate([np.ones(N), -np.ones(N), -np.ones(N)]),
                                  (np.tile(i, 3), np.concatenate([i + 1, i, N + 1 + i]))), shape=(N, n)),
                   sp.csr_matrix((np.ones(active.size), (np.arange(active.size), active)), shape=(active.size, n))])
    m = J.shape[0]
    K = sp.bmat([[H, J.T], [J, None]]).tocsc()
    dR = sp.lil_matrix((n + m, N + 2))
    dR[np.arange(N + 1), np.arange(1, N + 2)] = -2.0
    dR[n, 0] = -1.0
    y = spla.spsolve(K.T, np.concatenate([np.asarray(w), np.zeros(m)]))
    return -(dR.tocsr().T @ y)


def test_chain_20001_variables_solves_and_differentiates():
    """The issue's chain at 20,001 variables with control bounds (some active), sparse by default
    (auto), at tol 1e-12, against the closed form on the active set the multipliers name. (Not a
    finite difference: at this resolution ~65 bounds sit at the ends of active arcs with slack and
    multiplier both below 1e-6, so any step crosses kinks, and the difference quotient then measures
    the interior-point solver's smoothing of them -- it differed by 2e-5 between IPOPT 3.11 and 3.14.)"""
    N = 10_000
    x0, p, bounds = chain_data(N, u_max=20.0 / N)
    w = jnp.asarray(np.random.default_rng(2).standard_normal(x0.shape[0]))

    def loss(p):
        return jnp.vdot(w, kb.solve_nlp(chain_f, x0, p, eq=chain_eq, **bounds, **TIGHT).x)

    value, grad = jax.jit(jax.value_and_grad(loss))(p)
    assert np.isfinite(value)
    sol = kb.solve_nlp(chain_f, x0, p, eq=chain_eq, **bounds, **TIGHT)
    assert rel_err(grad, _chain_closed_form_grad(N, 20.0 / N, w, sol)) < 1e-9


# ---------------------------------------------------------------- jitted residual check at N = 10,000
# XLA:CPU (jaxlib 0.10.x) hands large reductions, with the pads and adds feeding them, to a YNNPACK
# fusion that reads misaligned elements when one tensor enters it through two pads with different
# offsets (here the transposes of ``s[1:]`` and ``s[:-1]`` in ∇(νᵀh)). Full arrays came out right,
# only reductions of them were wrong -- at N = 10,000 but not 5,000 or 20,000 -- so the jitted KKT
# check measured a residual of 3e-4 at an exact KKT point and refused the solve.
def _exact_chain_kkt_point(N, seed=0):
    """A KKT point of the equality-only chain, exact up to rounding: pick ``ν`` and ``s_0``, then
    ``u_i = 5 ν_{i+1}`` (∂/∂u_i), ``s_{i+1} = s_i + u_i`` (feasible) and the targets
    ``t_i = s_i + (ν_i - ν_{i+1})/2`` (∂/∂s_i, with ``ν_{N+1} = 0``) as parameters."""
    rng = np.random.default_rng(seed)
    nu = rng.standard_normal(N + 1)
    u = 5.0 * nu[1:]
    s = 0.3 + np.concatenate([[0.0], np.cumsum(u)])
    t = s + 0.5 * (nu - np.append(nu[1:], 0.0))
    return jnp.asarray(np.concatenate([s, u])), jnp.asarray(nu), jnp.asarray(np.concatenate([[0.3], t]))


def test_jitted_kkt_check_of_the_equality_chain_at_N_10000_matches_eager():
    from kktbridge.core._kkt import KKTPoint, kkt_activity

    x, nu, p = _exact_chain_kkt_point(10_000)
    check = kkt_activity(chain_f, chain_eq, None)
    z = KKTPoint(x, nu, jnp.zeros((0,)))
    eager = float(check(z, p)[0])
    jitted = float(jax.jit(check)(z, p)[0])
    # Rounding only (the point is exact; the states reach |s| ~ 500): far below residual_tol 1.5e-6.
    assert eager < 1e-12
    assert jitted < 1e-12


def test_equality_chain_20001_variables_solves_and_matches_closed_form_gradient():
    """Equality-only chain at N = 10,000 (the size the fused-reduction bug hit): accepted as SOLVED,
    and ∇_p wᵀx* equal to the closed form -(∂R/∂p)ᵀ K⁻ᵀ (w, 0) of the linear KKT system K (x, ν) = R(p)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    N = 10_000
    n = 2 * N + 1
    x0, p, _ = chain_data(N)
    w = jnp.asarray(np.random.default_rng(4).standard_normal(n))

    def loss(p):
        return jnp.vdot(w, kb.solve_nlp(chain_f, x0, p, eq=chain_eq, **TIGHT).x)

    sol = kb.solve_nlp(chain_f, x0, p, eq=chain_eq, **TIGHT)
    assert int(sol.status) == int(kb.Status.SOLVED)
    assert float(sol.diagnostics.residual) < 1e-12
    grad = jax.jit(jax.grad(loss))(p)
    # K = [[H, Jᵀ], [J, 0]] with H = diag(2 (states), 0.2 (controls)); J: h_0 = s_0 - p_0,
    # h_{i+1} = s_{i+1} - s_i - u_i. The p-dependence: ∇f has -2 t_i on the state rows, h_0 has -p_0.
    H = sp.diags(np.concatenate([np.full(N + 1, 2.0), np.full(N, 0.2)]))
    i = np.arange(N)
    J = sp.vstack([sp.csr_matrix(([1.0], ([0], [0])), shape=(1, n)),
                   sp.csr_matrix((np.concatenate([np.ones(N), -np.ones(N), -np.ones(N)]),
                                  (np.tile(i, 3), np.concatenate([i + 1, i, N + 1 + i]))), shape=(N, n))])
    K = sp.bmat([[H, J.T], [J, None]]).tocsc()
    dR = sp.lil_matrix((n + N + 1, N + 2))
    dR[np.arange(N + 1), np.arange(1, N + 2)] = -2.0
    dR[n, 0] = -1.0
    y = spla.spsolve(K.T, np.concatenate([np.asarray(w), np.zeros(N + 1)]))
    expected = -(dR.tocsr().T @ y)
    assert rel_err(grad, expected) < 1e-9  # a linear KKT system: both sides are direct solves


# ---------------------------------------------------------------- activity rule independent of problem size
def test_activity_of_a_row_does_not_depend_on_how_many_other_rows_there_are():
    """``min ½‖x - p‖² s.t. x ≤ 0`` at an interior-point-like point ``x = -s``, ``λ = p + s``:
    row 0 has a small multiplier (2.5e-4) and slack 1e-8 (``λ/s = 2.5e4``: strongly active). Adding
    10,000 rows with multipliers 100 must not change its activity (a scale summing over rows did)."""
    from kktbridge.core._kkt import KKTPoint, kkt_activity

    f = lambda x, p: 0.5 * jnp.sum((x - p) ** 2)  # noqa: E731
    g = lambda x, p: x  # noqa: E731
    check = kkt_activity(f, None, g)
    for k in (0, 10_000):
        p = jnp.concatenate([jnp.array([2.5e-4]), jnp.full(k, 100.0)])
        s = jnp.full(k + 1, 1e-8)
        z = KKTPoint(-s, jnp.zeros((0,)), p + s)
        active = check(z, p)[1]
        assert float(active[0]) == 1.0, k
        assert float(jnp.min(active)) == 1.0, k


def test_chain_20001_with_bounds_gradient_at_default_tol_matches_closed_form():
    """At IPOPT's default tol (1e-10) bounds with multipliers ~2.5e-4 keep slacks ~1e-7; they are
    active (CasADi's sensitivity and finite differences agree), as in the closed form."""
    N = 10_000
    n = 2 * N + 1
    u_max = 20.0 / N
    x0, p, bounds = chain_data(N, u_max=u_max)
    w = jnp.asarray(np.random.default_rng(5).standard_normal(n))

    def loss(p):
        return jnp.vdot(w, kb.solve_nlp(chain_f, x0, p, eq=chain_eq, **bounds).x)

    grad = jax.jit(jax.grad(loss))(p)
    sol = kb.solve_nlp(chain_f, x0, p, eq=chain_eq, **bounds, **TIGHT)
    expected = _chain_closed_form_grad(N, u_max, w, sol)
    # Direct solves on both sides; the IFT at tol 1e-10 sees slacks ~1e-7 on the active rows, which
    # the min-map residual treats exactly (active rows as equalities), so only rounding differs.
    assert rel_err(grad, expected) < 1e-9
