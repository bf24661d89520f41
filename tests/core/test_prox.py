"""Proximity operators: values vs cvxpy, Jacobians vs central finite differences, jit/vmap, pytrees."""

from __future__ import annotations


import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._cvx import solve_clarabel_tight
from tests._fd import fd_jacobian_wrt
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kktbridge import prox as X

# Interior-point references are accurate to ~1e-9 at the tolerances used; see test_projection.py.
REF_ATOL = 1e-6
FD_H = 1e-6
JAC_RTOL = 1e-6
JAC_ATOL = 1e-8


def prox_cvxpy(x, penalty, scaling, nonneg=False):
    """argmin_y 0.5 ||y - x||^2 + scaling * penalty(y) (s.t. y >= 0 if ``nonneg``), by CLARABEL."""
    y = cp.Variable(x.shape[0])
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x) + scaling * penalty(y)), [y >= 0] if nonneg else [])
    solve_clarabel_tight(prob)
    return y.value


# (name, function, hyperparams, cvxpy penalty as a function of (y, hyperparams), non-negativity)
CASES = {
    "none": (X.prox_none, None, lambda y, h: 0 * cp.sum(y), False),
    "lasso": (X.prox_lasso, 0.7, lambda y, h: h * cp.norm1(y), False),
    "non_negative_lasso": (X.prox_non_negative_lasso, 0.7, lambda y, h: h * cp.sum(y), True),
    "elastic_net": (
        X.prox_elastic_net,
        (0.7, 0.4),  # JAXopt's (lam, gamma): l1 strength lam, l2 strength lam * gamma
        lambda y, h: h[0] * (cp.norm1(y) + 0.5 * h[1] * cp.sum_squares(y)),
        False,
    ),
    "ridge": (X.prox_ridge, 0.6, lambda y, h: 0.5 * h * cp.sum_squares(y), False),
    "non_negative_ridge": (X.prox_non_negative_ridge, 0.6, lambda y, h: 0.5 * h * cp.sum_squares(y), True),
    "group_lasso": (X.prox_group_lasso, 0.9, lambda y, h: h * cp.norm2(y), False),
}


def fd_jacobian(fun, args, argnum, h=FD_H):
    """Central-difference Jacobian of ``fun(*args)`` w.r.t. ``args[argnum]`` (jacfwd layout)."""
    return fd_jacobian_wrt(fun, args, argnum, eps=h)


def check_jacobians(fun, args):
    args = tuple(jnp.asarray(a, dtype=jnp.float64) for a in args)
    fun_jit = jax.jit(fun)
    argnums = tuple(range(len(args)))
    jfs = jax.jacfwd(fun, argnums=argnums)(*args)
    jrs = jax.jacrev(fun, argnums=argnums)(*args)
    for i, jf, jr in zip(argnums, jfs, jrs):
        fd = fd_jacobian(fun_jit, args, i)
        np.testing.assert_allclose(jf, fd, rtol=JAC_RTOL, atol=JAC_ATOL, err_msg=f"jacfwd {i}")
        np.testing.assert_allclose(jr, fd, rtol=JAC_RTOL, atol=JAC_ATOL, err_msg=f"jacrev {i}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_prox_vs_cvxpy(rng, name):
    fn, hyper, penalty, nonneg_ = CASES[name]
    for scaling, scale in [(1.0, 1.0), (0.5, 2.0)]:
        x = rng.normal(size=6) * scale
        ref = prox_cvxpy(x, lambda y: penalty(y, hyper), scaling, nonneg=nonneg_)
        np.testing.assert_allclose(fn(x, hyper, scaling), ref, atol=REF_ATOL)


def test_group_lasso_zeroes_small_groups_and_finite_grad_at_zero():
    x = jnp.array([0.1, -0.2, 0.05])
    np.testing.assert_array_equal(X.prox_group_lasso(x, 1.0), 0.0)
    g = jax.grad(lambda x: jnp.sum(X.prox_group_lasso(x, 1.0)))(jnp.zeros(3))
    np.testing.assert_array_equal(g, 0.0)


def test_group_lasso_vmap_over_groups(rng):
    G = rng.normal(size=(4, 3))
    lams = jnp.array([0.1, 0.5, 1.0, 5.0])
    out = jax.vmap(X.prox_group_lasso)(G, lams)
    for row, g, lam in zip(out, G, lams):
        np.testing.assert_allclose(row, prox_cvxpy(g, lambda y: lam * cp.norm2(y), 1.0), atol=REF_ATOL)


# x away from the kinks |x_i| = scaling * l1 (and x_i = 0 for the non-negative variants).
X0 = np.array([-2.1, -0.35, 0.2, 0.9, 1.7, -1.1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_prox_jacobians(name):
    fn, hyper, _, _ = CASES[name]
    if hyper is None:
        check_jacobians(lambda x, s: fn(x, None, s), (X0, 0.8))
    elif isinstance(hyper, tuple):
        check_jacobians(lambda x, a, b, s: fn(x, (a, b), s), (X0, *hyper, 0.8))
    else:
        check_jacobians(lambda x, h, s: fn(x, h, s), (X0, hyper, 0.8))


def test_lasso_per_coordinate_strength_jacobian(rng):
    lam = rng.uniform(0.1, 0.5, 6)
    check_jacobians(lambda x, lam: X.prox_lasso(x, lam, 1.3), (X0, lam))


@pytest.mark.parametrize("name", sorted(CASES))
def test_prox_jit_vmap(rng, name):
    fn, hyper, _, _ = CASES[name]
    xs = rng.normal(size=(3, 5))
    eager = np.stack([fn(x, hyper, 0.7) for x in xs])
    np.testing.assert_allclose(jax.jit(lambda x: fn(x, hyper, 0.7))(xs[0]), eager[0], atol=1e-14)
    np.testing.assert_allclose(jax.vmap(lambda x: fn(x, hyper, 0.7))(xs), eager, atol=1e-14)
    # vmap over the scaling (traced, so value checks are skipped)
    scalings = jnp.array([0.1, 0.7, 2.0])
    batched = jax.jit(jax.vmap(lambda s: fn(xs[0], hyper, s)))(scalings)
    np.testing.assert_allclose(batched, np.stack([fn(xs[0], hyper, float(s)) for s in scalings]), atol=1e-14)


def test_elementwise_prox_on_pytrees(rng):
    tree = {"w": rng.normal(size=4), "b": rng.normal(size=2)}
    lam = {"w": 0.3, "b": 0.0}
    out = X.prox_lasso(tree, lam, 2.0)
    np.testing.assert_allclose(out["w"], X.prox_lasso(tree["w"], 0.3, 2.0))
    np.testing.assert_allclose(out["b"], tree["b"])
    out = X.prox_elastic_net(tree, (lam, 1.0))
    w = tree["w"]
    np.testing.assert_allclose(out["w"], np.sign(w) * np.maximum(np.abs(w) - 0.3, 0) / 1.3, rtol=1e-15)
    np.testing.assert_allclose(out["b"], tree["b"])  # lam = 0: no shrinkage at all, whatever gamma
    out = X.prox_elastic_net(tree, (1.0, {"w": 0.0, "b": 3.0}))  # gamma as a pytree
    np.testing.assert_allclose(out["w"], np.sign(w) * np.maximum(np.abs(w) - 1.0, 0), rtol=1e-15)
    b = tree["b"]
    np.testing.assert_allclose(out["b"], np.sign(b) * np.maximum(np.abs(b) - 1.0, 0) / 4.0, rtol=1e-15)
    out = X.prox_ridge(tree, 1.0)  # scalar strength broadcast to every leaf
    np.testing.assert_allclose(out["b"], tree["b"] / 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elastic_net_jaxopt_parametrisation(dtype):
    """``(lam, gamma)`` means l1 strength ``lam`` and l2 strength ``lam * gamma`` (JAXopt's convention)."""
    x = np.array([-2.0, -0.5, 0.25, 1.5, 3.0], dtype)
    lam, gamma, s = dtype(0.4), dtype(2.5), dtype(0.5)
    out = X.prox_elastic_net(jnp.asarray(x), (lam, gamma), s)
    assert out.dtype == dtype
    expected = np.sign(x) * np.maximum(np.abs(x) - s * lam, 0) / (1 + s * lam * gamma)
    rtol = 1e-6 if dtype == np.float32 else 1e-15  # float32: a few ulps of the two roundings
    np.testing.assert_allclose(out, expected, rtol=rtol)
    # Optimality of the prox objective 0.5 (y - x)^2 + s lam (|y| + gamma/2 y^2) at nonzero y.
    y = np.asarray(out, np.float64)
    nz = y != 0
    grad = (y - x) + s * lam * (np.sign(y) + gamma * y)
    np.testing.assert_allclose(grad[nz], 0, atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_make_prox_from_projection(dtype):
    from kktbridge import projection as P

    x = jnp.asarray([0.3, -1.2, 2.0, 0.7], dtype)
    prox = X.make_prox_from_projection(P.projection_simplex)
    for scaling in (1.0, 0.01, 7.0):  # the prox of an indicator ignores the scaling
        out = prox(x, 2.0, scaling)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, P.projection_simplex(x, 2.0))
    np.testing.assert_array_equal(prox(x), P.projection_simplex(x))  # hyperparams=None -> default set
    # Closed form: support {2.0, 0.7}, tau = (2.0 + 0.7 - 2) / 2 = 0.35.
    np.testing.assert_allclose(prox(x, 2.0), [0.0, 0.0, 1.65, 0.35], rtol=1e-6)
    box = X.make_prox_from_projection(P.projection_box)
    np.testing.assert_array_equal(box(x, (0.0, 1.0), 3.0), np.clip(np.asarray(x), 0.0, 1.0))
    # Differentiable like the projection: Jacobian of the simplex projection on its support.
    J = jax.jacfwd(lambda v: prox(v, 2.0, 5.0))(x)
    np.testing.assert_allclose(J, [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0.5, -0.5], [0, 0, -0.5, 0.5]], atol=1e-7)


def test_bad_hyperparams_raise():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="l1 strength"):
        X.prox_lasso(x, -0.1)
    with pytest.raises(ValueError, match="scaling"):
        X.prox_ridge(x, 1.0, scaling=-1.0)
    with pytest.raises(ValueError, match=r"hyperparams\[0\]"):
        X.prox_elastic_net(x, (-0.1, 1.0))
    with pytest.raises(ValueError, match=r"hyperparams\[1\]"):
        X.prox_elastic_net(x, (0.1, -1.0))
    with pytest.raises(ValueError, match="pair"):
        X.prox_elastic_net(x, 0.1)
    with pytest.raises(ValueError, match="group strength"):
        X.prox_group_lasso(x, -1.0)
    with pytest.raises(ValueError, match="l1 strength"):
        X.prox_lasso({"a": x}, {"a": -1.0})


_vec = hnp.arrays(np.float64, 5, elements=st.floats(-10, 10, allow_nan=False))


@settings(max_examples=30, deadline=None)
@given(_vec, _vec, st.floats(0.0, 3.0))
def test_lasso_is_firmly_nonexpansive(x, y, lam):
    # Proximity operators of convex functions are firmly non-expansive:
    # ||p(x) - p(y)||^2 <= <p(x) - p(y), x - y>.
    px, py = np.asarray(X.prox_lasso(x, lam)), np.asarray(X.prox_lasso(y, lam))
    d = px - py
    assert d @ d <= d @ (x - y) + 1e-9


@settings(max_examples=30, deadline=None)
@given(_vec, st.floats(0.0, 3.0))
def test_group_lasso_moreau_decomposition(x, lam):
    # Moreau: prox_{lam ||.||_2}(x) + proj_{||.||_2 <= lam}(x) = x.
    from kktbridge.projection import projection_l2_ball

    np.testing.assert_allclose(X.prox_group_lasso(x, lam) + projection_l2_ball(x, lam), x, atol=1e-12)
