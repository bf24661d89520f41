"""CvxpyLayer as a drop-in for cvxpylayers: what cvxpylayers' own test suite relies on, checked here
against cvxpy (Clarabel at tight tolerances), closed forms and central finite differences, and
also under ``jax.jit``, ``jax.vmap`` and ``jax.jit(jax.vmap(...))`` (which cvxpylayers cannot do).

Tolerances: values and derivatives of the QP path (OSQP, polished: exact active set, solution
error ~1e-12) are checked at 1e-6 relative against closed forms or central differences with step
1e-6 (truncation ~1e-12, rounding ~1e-12/1e-6 = 1e-6 at worst). Conic-path values are compared with
cvxpy's Clarabel at 1e-6 (both solvers converge to ~1e-9 here); conic derivatives against closed
forms at 1e-6.
"""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import get_adapter
from kktbridge.bridges import _cvxpy
from tests._fd import fd_jacobian, rel_err

MODES = ["eager", "jit", "vmap", "jit_vmap"]


def run(layer, mode, *params, **kw):
    """The layer's outputs for one instance, computed through ``mode``.

    Under vmap the instance is stacked with a perturbed copy (batch of 2) and the first row read,
    so that batching cannot silently mix instances.
    """
    f = lambda *p: layer(*p, **kw)  # noqa: E731
    if mode == "eager":
        return f(*params)
    if mode == "jit":
        return jax.jit(f)(*params)
    batch = [jnp.stack([jnp.asarray(p), 1.1 * jnp.asarray(p)]) for p in params]
    g = jax.vmap(f) if mode == "vmap" else jax.jit(jax.vmap(f))
    return tuple(o[0] for o in g(*batch))


def clarabel(prob, params, vals, gp=False):
    for p, v in zip(params, vals):
        p.value = np.asarray(v, dtype=float) if np.ndim(v) else float(v)
    prob.solve(solver=cp.CLARABEL, gp=gp, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert prob.status == cp.OPTIMAL


def fd_rel(f, x, J, eps=1e-6):
    return rel_err(J, fd_jacobian(f, np.asarray(x, dtype=float), eps=eps))


# --------------------------------------------------------------------------- dual variables
def lp_with_equality():
    c, b = cp.Parameter(2, name="c"), cp.Parameter(name="b")
    x = cp.Variable(2, name="x")
    eq, ineq = cp.sum(x) == b, x >= 0
    prob = cp.Problem(cp.Minimize(c @ x + 0.5 * cp.sum_squares(x)), [eq, ineq])
    return prob, [c, b], x, eq, ineq


@pytest.mark.parametrize("mode", MODES)
def test_qp_duals_requested_as_variables(mode):
    prob, params, x, eq, ineq = lp_with_equality()
    layer = kb.CvxpyLayer(prob, params, [x, eq.dual_variables[0], ineq.dual_variables[0]])  # public name
    assert layer.path == "qp"
    c, b = jnp.array([0.5, -0.3]), jnp.array(1.0)
    xs, nu, lam = run(layer, mode, c, b)
    # x ≥ 0 inactive here: x = -c + μ1 with μ = (b + Σc)/2 = 0.6, i.e. x = (0.1, 0.9).
    np.testing.assert_allclose(xs, [0.1, 0.9], rtol=1e-6)
    clarabel(prob, params, [c, b])
    np.testing.assert_allclose(nu, eq.dual_value, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(lam, ineq.dual_value, rtol=1e-6, atol=1e-8)
    assert nu.shape == () and lam.shape == (2,)

    # d nu / d(c, b) against central differences.
    def nu_of(cb):
        return jnp.atleast_1d(run(layer, mode, cb[:2], cb[2])[1])

    cb = np.array([0.5, -0.3, 1.0])
    J = jax.jacrev(nu_of)(jnp.asarray(cb))
    assert fd_rel(lambda v: np.asarray(nu_of(jnp.asarray(v))), cb, J) < 1e-6
    # Closed form: nu = -(b + Σc)/2 (cvxpy's sign for Σx == b): dnu = (-1/2, -1/2, -1/2).
    np.testing.assert_allclose(J, [[-0.5, -0.5, -0.5]], rtol=1e-6)


def test_dual_only_and_with_duals_agree():
    prob, params, x, eq, ineq = lp_with_equality()
    only = _cvxpy.CvxpyLayer(prob, params, [eq.dual_variables[0]])
    both = _cvxpy.CvxpyLayer(prob, params, [x])
    c, b = jnp.array([1.0, 3.0]), jnp.array(1.0)
    (nu,) = only(c, b)
    (xs,), (nu2, lam2) = both.with_duals(c, b)
    np.testing.assert_allclose(nu, nu2, rtol=1e-12)
    # x = (1, 0) with x2 ≥ 0 strongly active: ν = -(c1 + x1) = -2, λ2 = c2 + x2 + ν = 1.
    np.testing.assert_allclose(xs, [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose([nu2, *lam2], [-2.0, 0.0, 1.0], atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
def test_soc_dual_variables_closed_form(mode):
    c, t = cp.Parameter(3, name="c"), cp.Parameter(nonneg=True, name="t")
    x = cp.Variable(3, name="x")
    soc = cp.SOC(t, x)  # two dual variables: (u, v) with ‖v‖ ≤ u
    prob = cp.Problem(cp.Minimize(c @ x), [soc])
    layer = _cvxpy.CvxpyLayer(prob, [c, t], [x, *soc.dual_variables], solver="clarabel")
    cv, tv = jnp.array([1.0, 0.5, -0.5]), jnp.array(2.0)
    xs, u, v = run(layer, mode, cv, tv)
    nc = np.linalg.norm(cv)
    np.testing.assert_allclose(xs, -tv * cv / nc, rtol=1e-6)
    clarabel(prob, [c, t], [cv, tv])
    np.testing.assert_allclose(u, soc.dual_variables[0].value, rtol=1e-6)
    # cvxpy stores this value as (3, 1); the layer returns the dual variable's declared shape (3,).
    assert v.shape == soc.dual_variables[1].shape
    np.testing.assert_allclose(v, np.ravel(soc.dual_variables[1].value), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(u, nc, rtol=1e-6)  # u = ‖c‖
    # du/dc = c/‖c‖; dx/dc = -t (I/‖c‖ - c cᵀ/‖c‖³).
    Ju = jax.jacfwd(lambda c: run(layer, mode, c, tv)[1])(cv)
    np.testing.assert_allclose(np.reshape(Ju, (3,)), cv / nc, rtol=1e-6, atol=1e-9)  # u has shape (1,)
    Jx = jax.jacrev(lambda c: run(layer, mode, c, tv)[0])(cv)
    np.testing.assert_allclose(Jx, -tv * (np.eye(3) / nc - np.outer(cv, cv) / nc**3), rtol=1e-6, atol=1e-9)


def test_vector_exp_cone_and_psd_duals_match_cvxpy():
    # Two elementwise exponential cones: SCS interleaves their rows, cvxpy de-interleaves the duals.
    a = cp.Parameter(2, name="a")
    x, y, z = cp.Variable(2, name="x"), cp.Variable(2, name="y"), cp.Variable(2, name="z")
    ec = cp.constraints.ExpCone(x, y, z)
    C = cp.Parameter((2, 2), symmetric=True, name="C")
    X = cp.Variable((2, 2), symmetric=True, name="X")
    psd = X >> 0
    cons = [ec, y == 1, z <= a, psd, cp.trace(X) == 1]
    prob = cp.Problem(cp.Minimize(-cp.sum(x) + cp.trace(C @ X)), cons)
    outs = [x, *ec.dual_variables, psd.dual_variables[0]]
    av, Cv = np.array([1.0, 2.0]), np.array([[1.0, 0.5], [0.5, 2.0]])
    for solver in ("scs", "clarabel"):
        layer = _cvxpy.CvxpyLayer(prob, [a, C], outs, solver=solver)
        got = layer(av, Cv)
        clarabel(prob, [a, C], [av, Cv])
        want = [x.value, *(d.value for d in ec.dual_variables), psd.dual_value]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_gp_duals_and_parameters_without_values():
    a, b = cp.Parameter(pos=True, name="a"), cp.Parameter(pos=True, name="b")  # no values
    x, y = cp.Variable(pos=True, name="x"), cp.Variable(pos=True, name="y")
    con = x * y >= b
    prob = cp.Problem(cp.Minimize(a * x + y), [con, x <= 10])
    layer = _cvxpy.CvxpyLayer(prob, [a, b], [x, y, con.dual_variables[0]], gp=True)
    for mode in MODES:
        xs, ys, d = run(layer, mode, jnp.array(2.0), jnp.array(0.5))
        # x = sqrt(b/a), y = sqrt(a b): the optimum of a x + b/x.
        np.testing.assert_allclose([xs, ys], [0.5, 1.0], rtol=1e-6)
        clarabel(prob, [a, b], [2.0, 0.5], gp=True)
        np.testing.assert_allclose(d, con.dual_value, rtol=1e-6)
    dx = jax.grad(lambda a: layer(a, 0.5)[0])(2.0)
    np.testing.assert_allclose(dx, -np.sqrt(0.5) / (2 * 2.0**1.5), rtol=1e-6)


def test_invalid_dual_variable_is_rejected():
    prob, params, x, eq, ineq = lp_with_equality()
    other = cp.Variable(2, name="other")
    with pytest.raises(ValueError, match=r"'other'.*must be a subset of problem.variables"):
        _cvxpy.CvxpyLayer(prob, params, [x, other])


# --------------------------------------------------------------------------- solver_args
def test_solver_args_vocabulary_is_translated_per_solver():
    tr = _cvxpy.translate_options
    assert tr("osqp", {"eps": 1e-7, "max_iters": 50, "acceleration_lookback": 0}) == (
        "osqp",
        {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iter": 50},
    )
    assert tr("scs", {"eps": 1e-7, "max_iters": 50, "acceleration_lookback": 0}) == (
        "scs",
        {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 50, "acceleration_lookback": 0},
    )
    assert tr("clarabel", {"tol": 1e-9, "max_iters": 30})[1] == {
        "tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 30,
    }  # fmt: skip
    # A solver's own name wins over a translated one; bridge keywords pass through.
    assert tr("osqp", {"eps": 1e-3, "eps_abs": 1e-8, "on_failure": "nan"})[1] == {
        "eps_abs": 1e-8, "eps_rel": 1e-3, "on_failure": "nan",
    }  # fmt: skip
    assert tr("scs", {"solve_method": "Clarabel"})[0] == "clarabel"  # diffcp's solver choice
    with pytest.raises(ValueError, match="solve_method"):
        tr("osqp", {"solve_method": "SCS"})


def test_qp_default_is_auto_and_solver_settings_select_osqp(monkeypatch):
    """QPs default to solve_qp's "auto"; a call whose solver_args carry solver settings (which
    "auto" refuses: its candidates name them differently) runs OSQP, whose settings they are."""
    tr = _cvxpy.translate_options
    assert tr("auto", {"on_failure": "nan"}, "qp") == ("auto", {"on_failure": "nan"})
    assert tr("auto", {"eps": 1e-7}, "qp") == ("osqp", {"eps_abs": 1e-7, "eps_rel": 1e-7})
    assert tr("auto", {"eps": 1e-7}, "conic") == ("scs", {"eps_abs": 1e-7, "eps_rel": 1e-7})
    prob, params, x, eq, ineq = lp_with_equality()
    layer = _cvxpy.CvxpyLayer(prob, params, [x])
    assert (layer.solver, layer.path) == ("auto", "qp")
    ran = []
    for name in ("osqp", "daqp"):
        adapter = get_adapter(name)
        monkeypatch.setattr(adapter, "solve_batch", lambda *a, _f=adapter.solve_batch, _n=name, **k: ran.append(_n) or _f(*a, **k))
    c, b = np.array([0.3, -0.2]), 1.0
    x_auto = layer(c, b)[0]
    x_osqp = layer(c, b, solver_args={"eps": 1e-10})[0]
    assert ran == ["daqp", "osqp"]
    # min cᵀx + ½|x|² s.t. 1ᵀx = 1, x ≥ 0: x = c-shifted projection, both interior here.
    expected = -c + (b + c.sum()) / 2
    np.testing.assert_allclose(x_auto, expected, rtol=1e-12)
    np.testing.assert_allclose(x_osqp, expected, rtol=1e-9)
    # "auto" on a cone program is the conic auto.
    soc = cp.Problem(cp.Minimize(cp.norm(x - params[0])), [cp.sum(x) == params[1]])
    conic = _cvxpy.CvxpyLayer(soc, params, [x], solver="auto")
    assert (conic.solver, conic.path) == ("auto", "conic")
    np.testing.assert_allclose(conic(c, b)[0], c + (b - c.sum()) / 2, atol=1e-7)


def test_unknown_solver_option_fails_before_any_solve(monkeypatch):
    prob, params, x, eq, ineq = lp_with_equality()
    with pytest.raises(ValueError, match=r"unknown option 'epsilon'.*valid options: \[.*'eps_abs'"):
        _cvxpy.CvxpyLayer(prob, params, [x], solver_args={"epsilon": 1e-3})
    layer = _cvxpy.CvxpyLayer(prob, params, [x], solver="scs")
    calls = []
    adapter = get_adapter("scs")
    monkeypatch.setattr(adapter, "solve_batch", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"unknown option 'max_iterations' for solver 'scs'"):
        layer(np.ones(2), 1.0, solver_args={"max_iterations": 3})
    assert calls == []


def test_iteration_limit_reaches_the_solver_and_is_reported():
    # cvxpylayers' max_iters reaches OSQP as max_iter; a solve stopped by it is not a solution.
    prob, params, x, eq, ineq = lp_with_equality()
    layer = _cvxpy.CvxpyLayer(prob, params, [x])
    with pytest.raises(kb.SolverError, match="MAX_ITER"):
        layer(np.array([0.5, -0.3]), 1.0, solver_args={"max_iters": 1, "polishing": False})
    np.testing.assert_allclose(layer(np.array([0.5, -0.3]), 1.0, solver_args={"eps": 1e-10})[0], [0.1, 0.9], atol=1e-9)


@pytest.mark.parametrize("name", ["MOREAU", "DIFFCP", cp.SCS, cp.CLARABEL, cp.OSQP])
def test_cvxpylayers_solver_names(name):
    prob, params, x, eq, ineq = lp_with_equality()
    layer = _cvxpy.CvxpyLayer(prob, params, [x], solver=name)
    assert layer.solver == {"MOREAU": "auto", "DIFFCP": "scs"}.get(name, name.lower())
    np.testing.assert_allclose(layer(np.array([0.5, -0.3]), 1.0)[0], [0.1, 0.9], atol=1e-7)


# --------------------------------------------------------------------------- parameters and errors
def test_error_messages_carry_cvxpylayers_phrases():
    x = cp.Variable(1, name="x")
    lam, lam2 = cp.Parameter(1, nonneg=True, name="lam"), cp.Parameter(1, nonneg=True, name="lam2")
    prob = cp.Problem(cp.Minimize(lam * cp.norm(x, 1) + lam2 * cp.sum_squares(x)))
    with pytest.raises(ValueError, match=r"'lam2' is missing.*must exactly match problem.parameters"):
        _cvxpy.CvxpyLayer(prob, [lam], [x])
    layer = _cvxpy.CvxpyLayer(prob, [lam, lam2], [x])
    with pytest.raises(ValueError, match="A tensor must be provided for each CVXPY parameter"):
        layer(jnp.ones(1))
    with pytest.raises(ValueError, match=r"parameter 1 \(lam2\): got None") as e:
        layer(jnp.ones(1), None)
    assert isinstance(e.value, AttributeError)  # what cvxpylayers raises for None
    with pytest.raises(ValueError, match="Inconsistent batch sizes"):
        layer(jnp.ones((2, 1)), jnp.ones((3, 1)))
    with pytest.raises(ValueError, match=r"parameter 1 \(lam2\).*Invalid parameter shape"):
        layer(jnp.ones(1), jnp.ones(2))
    with pytest.raises(ValueError, match="Invalid parameter dimensionality"):
        layer(jnp.ones(1), jnp.ones((2, 2, 1)))


def test_batch_of_one_and_broadcasting():
    x, b = cp.Variable(3, name="x"), cp.Parameter(3, name="b")
    w = cp.Parameter(3, nonneg=True, name="w")
    layer = _cvxpy.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - b) + w @ x), [x >= 0]), [b, w], [x])
    bv, wv = np.array([1.0, -1.0, 2.0]), np.array([0.5, 0.0, 1.0])
    (xb,) = layer(bv[None], wv)
    assert xb.shape == (1, 3)
    np.testing.assert_allclose(xb[0], np.maximum(bv - wv / 2, 0), atol=1e-9)
    g = jax.grad(lambda b: layer(b, wv)[0].sum())(bv[None])
    assert g.shape == (1, 3)
    np.testing.assert_allclose(g, [[1.0, 0.0, 1.0]], atol=1e-9)
    (x2,) = layer(np.stack([bv, -bv]), wv)  # one batched, one broadcast
    np.testing.assert_allclose(x2[1], np.maximum(-bv - wv / 2, 0), atol=1e-9)


@pytest.mark.parametrize(
    "attrs, value, word",
    [({"pos": True}, -1.0, "positive"), ({"nonneg": True}, -1e-3, "nonnegative"), ({"neg": True}, 0.0, "negative")],
)
def test_parameter_attributes_are_validated(attrs, value, word):
    x, p = cp.Variable(name="x"), cp.Parameter(name="p", **attrs)
    sign = -1.0 if attrs.get("neg") else 1.0
    layer = _cvxpy.CvxpyLayer(cp.Problem(cp.Minimize(cp.square(x - sign * p))), [p], [x])
    with pytest.raises(ValueError, match=rf"parameter 0 \(p\).*must be {word}"):
        layer(value)
    with pytest.raises(ValueError, match=rf"must be {word}"):
        layer(np.array([sign * 1.0, value]))  # one bad instance in a batch


def test_psd_parameter_value_is_validated():
    x, P = cp.Variable(2, name="x"), cp.Parameter((2, 2), PSD=True, name="P")
    layer = _cvxpy.CvxpyLayer(cp.Problem(cp.Minimize(cp.quad_form(x, P) + cp.sum(x)), [x >= -1]), [P], [x], solver="osqp")
    with pytest.raises(ValueError, match="not positive semidefinite"):
        layer(np.array([[1.0, 0.0], [0.0, -1.0]]))
    # Only the upper triangle is read (as in cvxpylayers): a PSD upper triangle is accepted.
    np.testing.assert_allclose(layer(np.array([[1.0, 0.0], [5.0, 1.0]]))[0], [-0.5, -0.5], atol=1e-9)


def test_nan_and_float64_warning_without_x64():
    x, b = cp.Variable(2, name="x"), cp.Parameter(2, name="b")
    layer = _cvxpy.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - b)), [x >= 0]), [b], [x])
    with pytest.raises(ValueError, match=r"parameter 0 \(b\): contains NaN"):
        layer(np.array([np.nan, 1.0]))
    jax.config.update("jax_enable_x64", False)
    try:
        _cvxpy._F64_WARNED[0] = False
        with pytest.warns(UserWarning, match="float64 NumPy input is computed in float32"):
            (xs,) = layer(np.array([1.0, -1.0]))
        assert xs.dtype == jnp.float32
        np.testing.assert_allclose(xs, [1.0, 0.0], atol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------------------- parametric quad_form
def _qp_quad_form():
    P, c = cp.Parameter((3, 3), PSD=True, name="P"), cp.Parameter(3, name="c")
    x = cp.Variable(3, name="x")
    P.value = np.eye(3)  # a value at construction that must not be frozen into the data
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + c @ x), [x >= -10])
    return prob, P, c, x


@pytest.mark.parametrize("mode", MODES)
def test_parametric_quad_form_is_carried_on_the_qp_path(mode):
    prob, P, c, x = _qp_quad_form()
    layer = _cvxpy.CvxpyLayer(prob, [P, c], [x], solver="MOREAU")
    assert layer.path == "qp"
    M = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    cv = np.array([1.0, -1.0, 0.5])
    (xs,) = run(layer, mode, M, cv, solver_args={"tol": 1e-12, "max_iters": 500})
    np.testing.assert_allclose(xs, -np.linalg.solve(M, cv), rtol=1e-6)  # not -c (P = I at construction)
    # d x / d P_ij of x = -P⁻¹c, P read from its upper triangle: symmetric perturbation of (i, j).
    # P is read from its upper triangle (as in cvxpy/cvxpylayers): d/dP_ij (i ≤ j) is the derivative
    # along the symmetric perturbation of (i, j) and (j, i); the lower triangle gets zero.
    J = np.asarray(jax.jacfwd(lambda M: run(layer, mode, M, cv)[0])(jnp.asarray(M)))
    J_fd = fd_jacobian(lambda M: -np.linalg.solve(M, cv), M, symmetric_matrix=True)
    iu, il = np.triu_indices(3), np.tril_indices(3, -1)
    assert rel_err(J[:, iu[0], iu[1]], J_fd[:, iu[0], iu[1]]) < 1e-6
    assert np.all(J[:, il[0], il[1]] == 0)


def test_parametric_quad_form_is_refused_where_it_would_be_frozen():
    P, c = cp.Parameter((2, 2), PSD=True, name="P"), cp.Parameter(2, name="c")
    x = cp.Variable(2, name="x")
    P.value = np.eye(2)
    in_constraint = cp.Problem(cp.Minimize(c @ x), [cp.quad_form(x, P) <= 1])
    for solver in (None, "scs", "MOREAU"):
        with pytest.raises(ValueError, match=r"constraint 0 .*QuadForm.*only supported in the objective"):
            _cvxpy.CvxpyLayer(in_constraint, [P, c], [x], solver=solver)
    conic_objective = cp.Problem(cp.Minimize(cp.quad_form(x, P) + c @ x), [cp.norm(x) <= 10])
    for solver in (None, "scs", "clarabel", "MOREAU"):
        with pytest.raises(ValueError, match=r"quad_form"):
            _cvxpy.CvxpyLayer(conic_objective, [P, c], [x], solver=solver)
    prob, P3, c3, x3 = _qp_quad_form()
    with pytest.raises(ValueError, match=r"objective .*solver='osqp'"):
        _cvxpy.CvxpyLayer(prob, [P3, c3], [x3])  # the default (conic) solver cannot carry P


def test_constant_quad_form_and_affine_parameters_are_carried_on_the_conic_path():
    # Audit: with a constant matrix, quad_form is DPP; every parameter must reach the conic data.
    c, t = cp.Parameter(2, name="c"), cp.Parameter(pos=True, name="t")
    x = cp.Variable(2, name="x")
    Q = np.array([[2.0, 0.5], [0.5, 1.0]])
    prob = cp.Problem(cp.Minimize(cp.quad_form(x, Q) + c @ x), [cp.norm(x) <= t])
    c.value, t.value = np.array([5.0, 5.0]), 100.0  # construction-time values, not used below
    layer = _cvxpy.CvxpyLayer(prob, [c, t], [x], solver="clarabel")
    (xs,) = layer(np.array([1.0, -1.0]), 10.0)
    np.testing.assert_allclose(xs, -0.5 * np.linalg.solve(Q, [1.0, -1.0]), rtol=1e-6)
    (xs,) = layer(np.array([100.0, 0.0]), 1.0)  # the norm constraint now binds
    np.testing.assert_allclose(np.linalg.norm(xs), 1.0, rtol=1e-6)
