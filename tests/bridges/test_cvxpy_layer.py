"""CvxpyLayer: outputs/derivatives vs cvxpylayers, closed forms, finite differences and cvxpy duals.

Problems are cvxpylayers' README/example problems at small sizes. Our solves use OSQP (QP path,
polished: exact active-set solutions) or SCS at eps 1e-9 (conic path); cvxpylayers' default
(diffcp) path is less accurate, so comparisons with it use ``atol = 1e-5`` as asked for by the
cvxpylayers-compatibility requirement, while closed forms and finite differences use 1e-6.
"""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.bridges._cvxpy import CvxpyLayer
from tests._fd import fd_jacobian, rel_err
from tests._peers import peer


# cvxpylayers runs diffcp + SCS, whose default eps (1e-4) gives solutions off by ~1e-5; it is run
# at eps 1e-10 here. 1e-5 is then a generous bound (observed agreement ~1e-8).
REF_TOL = 1e-5
REF_ARGS = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 100_000}
# Finite differences: step 1e-5 on solutions accurate to ~1e-10 (polished OSQP / SCS at 1e-9
# with tiny data) gives O(h²) + O(1e-10 / h) ≈ 1e-5 absolute error at worst; relative to O(1)
# derivatives, 1e-5 is the honest bound. Closed forms are checked at 1e-6.
FD_TOL = 1e-5
FD_EPS = 1e-5


# --------------------------------------------------------------------------- problems
def least_squares(rng, m=5, n=3):
    A, b = cp.Parameter((m, n), name="A"), cp.Parameter(m, name="b")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)))
    return prob, [A, b], [x], [rng.normal(size=(m, n)), rng.normal(size=m)]


def relu(rng, n=5):
    y = cp.Parameter(n, name="y")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0])
    # Keep entries away from 0 so that the active set is stable under finite differences.
    v = rng.uniform(0.3, 1.5, n) * rng.choice([-1.0, 1.0], n)
    return prob, [y], [x], [v]


def sparsemax(rng, n=5):
    y = cp.Parameter(n, name="y")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.sum(x) == 1, x >= 0])
    return prob, [y], [x], [np.array([0.9, -0.4, 0.6, 0.1, -1.2])[:n]]


def portfolio(rng, n=4, k=2):
    mu, F = cp.Parameter(n, name="mu"), cp.Parameter((k, n), name="F")
    w = cp.Variable(n, name="w")
    risk = cp.norm(F @ w) <= 1.0
    prob = cp.Problem(cp.Maximize(mu @ w - 0.1 * cp.sum_squares(w)), [cp.sum(w) == 1, w >= -0.5, risk])
    return prob, [mu, F], [w], [rng.uniform(0.5, 1.5, n), rng.normal(size=(k, n))]


def eq_ineq_qp(rng, n=4):
    Q, q = cp.Parameter((n, n), name="Q"), cp.Parameter(n, name="q")
    A, b = cp.Parameter((2, n), name="A"), cp.Parameter(2, name="b")
    G, h = cp.Parameter((3, n), name="G"), cp.Parameter(3, name="h")
    x = cp.Variable(n, name="x")
    cons = [A @ x == b, G @ x <= h, x >= -10]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Q @ x) + q @ x), cons)
    vals = [
        rng.normal(size=(n, n)) + 2 * np.eye(n),
        rng.normal(size=n),
        rng.normal(size=(2, n)),
        rng.normal(size=2),
        rng.normal(size=(3, n)),
        rng.uniform(0.1, 1.0, 3),
    ]
    return prob, [Q, q, A, b, G, h], [x], vals


def build(maker, seed=0, **kw):
    return maker(np.random.default_rng(seed), **kw)


EXAMPLES = [least_squares, relu, sparsemax, portfolio, eq_ineq_qp]


def cvxpy_solve(prob, params, vals):
    for p, v in zip(params, vals):
        p.value = np.asarray(v)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert prob.status == cp.OPTIMAL


# --------------------------------------------------------------------------- vs cvxpylayers
@pytest.mark.parametrize("maker", EXAMPLES, ids=lambda f: f.__name__)
def test_outputs_and_gradients_match_cvxpylayers(maker):
    prob, params, variables, vals = build(maker)
    RefLayer = peer("cvxpylayers.jax").CvxpyLayer  # only this test needs the peer
    ours, ref = CvxpyLayer(prob, params, variables), RefLayer(prob, params, variables)
    vals = [jnp.asarray(v) for v in vals]
    w = jnp.asarray(np.random.default_rng(1).normal(size=variables[0].shape))
    (x,), (xr,) = ours(*vals), ref(*vals, solver_args=REF_ARGS)
    np.testing.assert_allclose(x, xr, atol=REF_TOL)
    argnums = tuple(range(len(vals)))
    g = jax.grad(lambda *v: jnp.vdot(w, ours(*v)[0]), argnums=argnums)(*vals)
    gr = jax.grad(lambda *v: jnp.vdot(w, ref(*v, solver_args=REF_ARGS)[0]), argnums=argnums)(*vals)
    for a, b in zip(g, gr):
        np.testing.assert_allclose(a, b, atol=REF_TOL)


@pytest.mark.parametrize("maker", [eq_ineq_qp, portfolio], ids=lambda f: f.__name__)
def test_jacobians_match_finite_differences(maker):
    prob, params, variables, vals = build(maker, seed=3)
    layer = CvxpyLayer(prob, params, variables)
    # One compiled forward-mode Jacobian w.r.t. all parameters.
    Js = jax.jit(jax.jacfwd(lambda *v: layer(*v)[0], argnums=tuple(range(len(vals)))))(*vals)
    for i in range(len(vals)):

        def f(v, i=i):
            args = list(vals)
            args[i] = v
            return layer(*args)[0]

        J_fd = fd_jacobian(f, vals[i], eps=FD_EPS)
        assert rel_err(Js[i], J_fd) < FD_TOL, params[i].name()


# --------------------------------------------------------------------------- closed forms
def test_least_squares_closed_form():
    prob, params, variables, (A, b) = build(least_squares)
    layer = CvxpyLayer(prob, params, variables)
    assert layer.path == "qp"

    def exact(A, b):
        return jnp.linalg.solve(A.T @ A, A.T @ b)

    np.testing.assert_allclose(layer(A, b)[0], exact(A, b), rtol=1e-6, atol=1e-8)
    for argnum in (0, 1):
        J = jax.jacrev(lambda A, b: layer(A, b)[0], argnums=argnum)(A, b)
        np.testing.assert_allclose(J, jax.jacrev(exact, argnums=argnum)(A, b), rtol=1e-6, atol=1e-8)


def test_relu_closed_form_jacfwd_jacrev():
    prob, params, variables, (y,) = build(relu)
    layer = CvxpyLayer(prob, params, variables)
    f = lambda y: layer(y)[0]  # noqa: E731
    np.testing.assert_allclose(f(y), np.maximum(y, 0), atol=1e-8)
    expected = np.diag((y > 0).astype(float))
    np.testing.assert_allclose(jax.jacfwd(f)(y), expected, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(f)(y), expected, atol=1e-8)


def _sparsemax(y):
    z = np.sort(y)[::-1]
    css = np.cumsum(z) - 1
    k = np.arange(1, len(y) + 1)
    rho = k[z - css / k > 0][-1]
    return np.maximum(y - css[rho - 1] / rho, 0)


@pytest.mark.parametrize("solver", [None, "scs"])
def test_sparsemax_closed_form_jacobian(solver):
    prob, params, variables, (y,) = build(sparsemax)
    layer = CvxpyLayer(prob, params, variables, solver=solver)
    assert layer.path == ("qp" if solver is None else "conic")
    x = _sparsemax(y)
    s = (x > 0).astype(float)
    J_exact = np.diag(s) - np.outer(s, s) / s.sum()
    f = lambda y: layer(y)[0]  # noqa: E731
    np.testing.assert_allclose(f(y), x, atol=1e-7)
    np.testing.assert_allclose(jax.jacfwd(f)(y), J_exact, atol=1e-6)
    np.testing.assert_allclose(jax.jacrev(f)(y), J_exact, atol=1e-6)


def test_conic_path_for_qp_agrees_with_qp_path():
    prob, params, variables, vals = build(eq_ineq_qp, seed=5)
    qp, conic = CvxpyLayer(prob, params, variables), CvxpyLayer(prob, params, variables, solver="scs")
    assert (qp.path, conic.path) == ("qp", "conic")
    np.testing.assert_allclose(qp(*vals)[0], conic(*vals)[0], atol=1e-7)
    Jq = jax.jacrev(lambda q: qp(vals[0], q, *vals[2:])[0])(vals[1])
    Jc = jax.jacrev(lambda q: conic(vals[0], q, *vals[2:])[0])(vals[1])
    # SCS at eps 1e-9: its derivative inherits the solution's ~1e-8 residual (conditioning ~10).
    np.testing.assert_allclose(Jq, Jc, atol=1e-6)


# --------------------------------------------------------------------------- batching, jit, vmap
def test_batched_unbatched_mixed_and_vmap():
    prob, params, variables, vals = build(eq_ineq_qp, seed=7)
    layer = CvxpyLayer(prob, params, variables)
    rng = np.random.default_rng(8)
    qs = vals[1] + 0.3 * rng.normal(size=(3, vals[1].size))
    hs = vals[5] + rng.uniform(0, 0.3, size=(3, vals[5].size))
    loop = np.stack([layer(vals[0], qs[i], *vals[2:5], hs[i])[0] for i in range(3)])
    (xb,) = layer(vals[0], qs, *vals[2:5], hs)  # two batched, four unbatched parameters
    assert xb.shape == (3, 4)
    np.testing.assert_allclose(xb, loop, atol=1e-10)
    (xv,) = jax.vmap(lambda q, h: layer(vals[0], q, *vals[2:5], h))(qs, hs)
    np.testing.assert_allclose(xv, loop, atol=1e-10)
    # Everything batched (unbatched values broadcast by hand) gives the same.
    full = [np.broadcast_to(v, (3,) + np.shape(v)) for v in vals]
    full[1], full[5] = qs, hs
    np.testing.assert_allclose(layer(*full)[0], loop, atol=1e-10)
    # Batched gradient = per-instance gradients.
    gb = jax.grad(lambda q: layer(vals[0], q, *vals[2:5], hs)[0].sum())(qs)
    gl = np.stack([jax.grad(lambda q, i=i: layer(vals[0], q, *vals[2:5], hs[i])[0].sum())(qs[i]) for i in range(3)])
    np.testing.assert_allclose(gb, gl, atol=1e-10)


def test_jit_matches_eager_values_and_gradients():
    prob, params, variables, vals = build(portfolio, seed=2)
    layer = CvxpyLayer(prob, params, variables)
    f = lambda mu, F: layer(mu, F)[0] @ jnp.arange(1.0, 5.0)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(*vals), f(*vals), rtol=1e-12)
    g_eager = jax.grad(f, argnums=(0, 1))(*vals)
    g_jit = jax.jit(jax.grad(f, argnums=(0, 1)))(*vals)
    for a, b in zip(g_eager, g_jit):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # Batched input under jit (vmap inside the layer, one host call).
    mus = np.stack([vals[0], vals[0] * 1.1])
    np.testing.assert_allclose(jax.jit(lambda m: layer(m, vals[1])[0])(mus)[1], layer(mus[1], vals[1])[0], atol=1e-10)


def test_solver_args_are_forwarded():
    prob, params, variables, vals = build(eq_ineq_qp)
    loose_args = {"eps_abs": 1e-3, "eps_rel": 1e-3, "polishing": False}
    # A loose solve is not certified for derivatives: refused unless the user lifts residual_tol.
    with pytest.raises(kb.SolverError, match="RESIDUAL_TOO_LARGE"):
        CvxpyLayer(prob, params, variables, solver_args=loose_args)(*vals)
    layer = CvxpyLayer(prob, params, variables, solver_args={**loose_args, "residual_tol": np.inf})
    loose = layer(*vals)[0]
    tight = layer(*vals, solver_args={"eps_abs": 1e-10, "eps_rel": 1e-10, "polishing": True})[0]
    exact = CvxpyLayer(prob, params, variables)(*vals)[0]
    np.testing.assert_allclose(tight, exact, atol=1e-8)
    assert np.abs(np.asarray(loose) - np.asarray(exact)).max() > 1e-9  # the loose options were used


# --------------------------------------------------------------------------- duals
@pytest.mark.parametrize("solver", [None, "scs"])
def test_duals_match_cvxpy_and_are_differentiable(solver):
    prob, params, variables, vals = build(eq_ineq_qp, seed=11)
    layer = CvxpyLayer(prob, params, variables, solver=solver)
    (x,), duals = layer.with_duals(*vals)
    cvxpy_solve(prob, params, vals)
    np.testing.assert_allclose(x, variables[0].value, atol=1e-7)
    assert len(duals) == len(prob.constraints)
    for d, con in zip(duals, prob.constraints):
        assert d.shape == np.shape(con.dual_value)
        np.testing.assert_allclose(d, con.dual_value, atol=1e-6)

    def duals_of(lay):
        return lambda h: jnp.concatenate([jnp.ravel(d) for d in lay.with_duals(*vals[:5], h)[1]])

    J = jax.jacfwd(duals_of(layer))(vals[5])
    # Finite differences of the polished-OSQP layer (exact active set, ~1e-12 solutions) for both
    # paths: differencing SCS's 1e-9 solutions with h = 1e-5 would itself carry ~1e-4 relative noise.
    exact = CvxpyLayer(prob, params, variables, solver="osqp")
    assert rel_err(J, fd_jacobian(duals_of(exact), vals[5], eps=FD_EPS)) < FD_TOL


def test_soc_and_psd_duals_match_cvxpy():
    rng = np.random.default_rng(4)
    n = 3
    C = cp.Parameter((n, n), name="C")
    X = cp.Variable((n, n), symmetric=True, name="X")
    t, y = cp.Variable(name="t"), cp.Variable(2, name="y")
    # min ‖u‖ + ½ Σu over u = y - 1 ≥ 1: u = (1, 1), t = √2 (SOC active, off its apex).
    cons = [X >> 0, cp.trace(X) == 1, cp.SOC(t, y - 1.0), y >= 2]
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X) + cp.sum_squares(X) + t + 0.5 * cp.sum(y)), cons)
    Cv = rng.normal(size=(n, n))
    layer = CvxpyLayer(prob, [C], [X, t])
    assert layer.path == "conic"
    (Xs, ts), duals = layer.with_duals(Cv)
    cvxpy_solve(prob, [C], [Cv])
    np.testing.assert_allclose(Xs, X.value, atol=1e-6)
    np.testing.assert_allclose(ts, np.sqrt(2.0), atol=1e-7)
    np.testing.assert_allclose(ts, t.value, atol=1e-6)
    np.testing.assert_allclose(duals[0], cons[0].dual_value, atol=1e-6)  # PSD dual matrix
    np.testing.assert_allclose(duals[1], cons[1].dual_value, atol=1e-6)
    soc_dual = np.concatenate([np.ravel(a) for a in cons[2].dual_value])  # cvxpy: [t part, x part]
    np.testing.assert_allclose(duals[2], soc_dual, atol=1e-6)
    np.testing.assert_allclose(duals[3], cons[3].dual_value, atol=1e-6)


# --------------------------------------------------------------------------- special problems
def test_parametric_quad_form_on_qp_path():
    rng = np.random.default_rng(6)
    n = 3
    P, q = cp.Parameter((n, n), PSD=True, name="P"), cp.Parameter(n, name="q")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), [x >= 0, cp.sum(x) == 1])
    M = rng.normal(size=(n, n))
    Pv, qv = M @ M.T + np.eye(n), np.array([0.2, -0.1, 0.05])
    layer = CvxpyLayer(prob, [P, q], [x], solver="osqp")
    assert layer.path == "qp"
    cvxpy_solve(prob, [P, q], [Pv, qv])
    np.testing.assert_allclose(layer(Pv, qv)[0], x.value, atol=1e-7)
    # cvxpy reads a PSD parameter from its upper triangle, so that is what the layer differentiates.
    f = lambda P: layer(P, qv)[0]  # noqa: E731
    assert rel_err(jax.jacrev(f)(Pv), fd_jacobian(f, Pv, eps=FD_EPS)) < FD_TOL
    with pytest.raises(ValueError, match="quad_form"):
        CvxpyLayer(prob, [P, q], [x], solver="scs")
    # As in cvxpylayers, the default (conic) solver refuses it instead of freezing P.
    with pytest.raises(ValueError, match=r"quad_form.*solver='osqp'"):
        CvxpyLayer(prob, [P, q], [x])


def test_geometric_program_closed_form():
    a, b = cp.Parameter(pos=True, name="a"), cp.Parameter(pos=True, name="b")
    x, y = cp.Variable(pos=True, name="x"), cp.Variable(pos=True, name="y")
    prob = cp.Problem(cp.Minimize(a * x + b * y), [x * y >= 1, x <= 3])
    layer = CvxpyLayer(prob, [a, b], [x, y], gp=True)
    av, bv = 2.0, 0.5  # optimum x = sqrt(b/a) = 0.5 < 3, y = sqrt(a/b) = 2
    xs, ys = layer(av, bv)
    np.testing.assert_allclose([xs, ys], [0.5, 2.0], rtol=1e-7)
    dx = jax.grad(lambda a, b: layer(a, b)[0], argnums=(0, 1))(av, bv)
    # d sqrt(b/a)/da = -sqrt(b)/(2 a^1.5), d/db = 1/(2 sqrt(a b)).
    np.testing.assert_allclose(dx, [-np.sqrt(bv) / (2 * av**1.5), 1 / (2 * np.sqrt(av * bv))], rtol=1e-6)


# --------------------------------------------------------------------------- errors
def test_non_dpp_and_non_dcp_problems_raise_naming_the_expression():
    x = cp.Variable(2, name="x")
    a, b = cp.Parameter(2, name="a"), cp.Parameter(name="b")
    non_dpp = cp.Problem(cp.Minimize(cp.sum_squares(x)), [(a * b) @ x <= 1])
    with pytest.raises(ValueError, match=r"not DPP.*constraint 0"):
        CvxpyLayer(non_dpp, [a, b], [x])
    non_dcp = cp.Problem(cp.Maximize(cp.sum_squares(x)), [a @ x <= b])
    with pytest.raises(ValueError, match=r"not DCP.*objective"):
        CvxpyLayer(non_dcp, [a, b], [x])


def test_bad_parameters_variables_and_shapes_raise():
    x = cp.Variable(2, name="x")
    a, b, other = cp.Parameter(2, name="a"), cp.Parameter(name="b"), cp.Parameter(2, name="other")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [a @ x <= b])
    with pytest.raises(ValueError, match="'other' is not a parameter"):
        CvxpyLayer(prob, [a, b, other], [x])
    with pytest.raises(ValueError, match="'b' is missing"):
        CvxpyLayer(prob, [a], [x])
    with pytest.raises(ValueError, match="'z' is not a variable"):
        CvxpyLayer(prob, [a, b], [cp.Variable(3, name="z")])
    with pytest.raises(ValueError, match="solver"):
        CvxpyLayer(prob, [a, b], [x], solver="no-such-solver")
    with pytest.raises(ValueError, match="needs a QP"):
        CvxpyLayer(cp.Problem(cp.Minimize(cp.norm(x)), [a @ x <= b]), [a, b], [x], solver="osqp")
    layer = CvxpyLayer(prob, [a, b], [x])
    with pytest.raises(ValueError, match=r"parameter 0 \(a\).*\(3,\)"):
        layer(np.ones(3), 1.0)
    with pytest.raises(ValueError, match="batch sizes"):
        layer(np.ones((2, 2)), np.ones(3))
    with pytest.raises(ValueError, match="expected 2 arrays"):
        layer(np.ones(2))
    with pytest.raises(ValueError, match=r"parameter 1 \(b\): contains NaN"):
        layer(np.ones(2), np.nan)


def test_infeasible_instance_raises_solver_error():
    x = cp.Variable(2, name="x")
    b = cp.Parameter(name="b")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) >= b, cp.sum(x) <= 1])
    layer = CvxpyLayer(prob, [b], [x])
    np.testing.assert_allclose(layer(0.5)[0], [0.25, 0.25], atol=1e-8)
    with pytest.raises(kb.SolverError, match="INFEASIBLE"):
        layer(2.0)
    nan_layer = CvxpyLayer(prob, [b], [x], solver_args={"on_failure": "nan"})
    assert np.isnan(np.asarray(nan_layer(np.array([0.5, 2.0]))[0][1])).all()
