"""Sparse QP data end to end: BCOO / SciPy inputs give the dense path's values and derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import kktbridge as kb


def chain_qp(n: int, seed: int = 0, bound: float = 0.3):
    """Tridiagonal P, one equality, box constraints with one absent (+inf) row."""
    rng = np.random.default_rng(seed)
    off = -0.5 * np.ones(n - 1)
    P = np.diag(2 + rng.uniform(size=n)) + np.diag(off, 1) + np.diag(off, -1)
    A = np.zeros((1, n))
    A[0, :3] = 1.0
    b = np.array([0.5])
    G = np.vstack([np.eye(n), -np.eye(n)])
    h = np.full(2 * n, bound)
    h[5] = np.inf
    return P, rng.normal(size=n), A, b, G, h


@pytest.mark.parametrize("solver", ["osqp", "auto"])
@pytest.mark.parametrize("kind", ["bcoo", "scipy"])
def test_sparse_and_dense_give_identical_values_and_derivatives(solver, kind):
    P, q, A, b, G, h = chain_qp(12)
    conv = jsparse.BCOO.fromdense if kind == "bcoo" else sp.csr_matrix
    Ps, As, Gs = conv(P), conv(A), conv(G)

    def dense(q, b, h):
        return kb.solve_qp(P, q, A, b, G, h, solver=solver)

    def sparse(q, b, h):
        return kb.solve_qp(Ps, q, As, b, Gs, h, solver=solver)

    d, s = dense(q, b, h), sparse(q, b, h)
    assert int(s.status) == int(kb.Status.SOLVED) and s.solver_name == d.solver_name
    for f in ("x", "eq_dual", "ineq_dual"):
        np.testing.assert_allclose(getattr(s, f), getattr(d, f), atol=1e-9, rtol=1e-9)
    for jac in (jax.jacfwd, jax.jacrev):
        Jd = jac(lambda *a: dense(*a).x, argnums=(0, 1, 2))(q, b, h)
        Js = jac(lambda *a: sparse(*a).x, argnums=(0, 1, 2))(q, b, h)
        for a, c in zip(Jd, Js):
            np.testing.assert_allclose(c, a, atol=1e-9, rtol=1e-9)


def test_derivatives_with_respect_to_sparse_values():
    """Gradients w.r.t. the BCOO values equal the dense gradient at the pattern's entries."""
    P, q, A, b, G, h = chain_qp(10, seed=1)
    Pb, Ab, Gb = (jsparse.BCOO.fromdense(M) for M in (P, A, G))

    def loss_sparse(Pd, Ad, Gd):
        mats = [jsparse.BCOO((d, M.indices), shape=M.shape) for d, M in zip((Pd, Ad, Gd), (Pb, Ab, Gb))]
        return jnp.sum(kb.solve_qp(mats[0], q, mats[1], b, mats[2], h, solver="osqp").x ** 3)

    def loss_dense(P, A, G):
        return jnp.sum(kb.solve_qp(P, q, A, b, G, h, solver="osqp").x ** 3)

    gs = jax.grad(loss_sparse, argnums=(0, 1, 2))(Pb.data, Ab.data, Gb.data)
    gd = jax.grad(loss_dense, argnums=(0, 1, 2))(*map(jnp.asarray, (P, A, G)))
    for g_s, g_d, M in zip(gs, gd, (Pb, Ab, Gb)):
        idx = np.asarray(M.indices)
        np.testing.assert_allclose(g_s, g_d[idx[:, 0], idx[:, 1]], atol=1e-10, rtol=1e-8)


def test_sparse_under_jit_and_vmap_and_duplicates():
    P, q, A, b, G, h = chain_qp(8, seed=2)
    # Duplicate coordinates add up (COO semantics): split P's diagonal in two halves.
    r, c = np.nonzero(P)
    diag = r == c
    rows = np.concatenate([r, r[diag]])
    cols = np.concatenate([c, c[diag]])
    vals = np.concatenate([np.where(diag, 0.5, 1.0) * P[r, c], 0.5 * P[r[diag], c[diag]]])
    Pdup = jsparse.BCOO((jnp.asarray(vals), jnp.asarray(np.stack([rows, cols], 1))), shape=P.shape)
    Q = jnp.asarray(np.random.default_rng(3).normal(size=(3, 8)))
    xs = jax.jit(jax.vmap(lambda q: kb.solve_qp(Pdup, q, A, b, sp.csr_matrix(G), h, solver="osqp").x))(Q)
    xd = jax.vmap(lambda q: kb.solve_qp(P, q, A, b, G, h, solver="osqp").x)(Q)
    np.testing.assert_allclose(xs, xd, atol=1e-9)


def test_sparse_input_errors_name_the_argument():
    P, q, A, b, G, h = chain_qp(6)
    Pb = jsparse.BCOO.fromdense(P)
    with pytest.raises(ValueError, match="P: expected a symmetric"):
        kb.solve_qp(jsparse.BCOO.fromdense(np.triu(P)), q, G=G, h=h)
    with pytest.raises(ValueError, match=r"G: expected shape \(\?, 6\)"):
        kb.solve_qp(Pb, q, G=sp.csr_matrix(np.ones((2, 5))), h=np.ones(2))
    with pytest.raises(ValueError, match="indices.*must be concrete"):
        jax.jit(lambda M: kb.solve_qp(M, q, G=G, h=h).x)(Pb)


def test_large_sparse_qp_solves_and_differentiates():
    """20,000 variables: never densified (a dense KKT matrix would need 29 GB)."""
    n = 20_000
    rng = np.random.default_rng(0)
    P = sp.diags([2 + rng.uniform(size=n), -0.5 * np.ones(n - 1), -0.5 * np.ones(n - 1)], [0, 1, -1]).tocsc()
    G = sp.vstack([sp.eye(n), -sp.eye(n)]).tocsc()
    h = np.ones(2 * n)
    q = jnp.asarray(3 * rng.normal(size=n))
    loss = lambda q: jnp.sum(kb.solve_qp(P, q, G=G, h=h).x ** 2)  # noqa: E731
    sol = kb.solve_qp(P, q, G=G, h=h)
    assert sol.solver_name == "osqp" and 0 < int(jnp.sum(sol.ineq_dual > 0)) < n  # some bounds active
    g = jax.grad(loss)(q)
    # The solution is affine in q while the active set holds: a central difference along a random
    # direction is exact up to the solver's accuracy (1e-9) over the step.
    v = jnp.asarray(rng.normal(size=n))
    eps = 1e-6
    fd = (loss(q + eps * v) - loss(q - eps * v)) / (2 * eps)
    assert abs(float(g @ v) - float(fd)) <= 1e-6 * abs(float(fd))


def _cvxpy_chain(k: int, eq: bool = True, quad: bool = True):
    """A cvxpy QP on a chain: diagonal weights ``L`` (parameter) in the objective, difference bounds
    ``x_{i+1} - x_i ≤ d_i``, optional ``Σx = 1`` and a box. ``n + m`` is large and ``A`` ~1 % full."""
    import cvxpy as cp

    x = cp.Variable(k, name="x")
    c, d, L = cp.Parameter(k, name="c"), cp.Parameter(k - 1, name="d"), cp.Parameter(k, name="L")
    D = np.diff(np.eye(k), axis=0)
    obj = c @ x + (0.5 * cp.sum_squares(cp.multiply(L, x)) if quad else 0)
    cons = [D @ x <= d, x >= -1, x <= 1] + ([cp.sum(x) == 1] if eq else [])
    rng = np.random.default_rng(k)
    vals = [rng.normal(size=k), rng.uniform(0.01, 0.1, k - 1), rng.uniform(0.5, 2.0, k)]
    params = [c, d, L] if quad else [c, d]
    return cp.Problem(cp.Minimize(obj), cons), params, x, cons, vals[: len(params)]


@pytest.mark.parametrize("case", ["eq_ineq", "ineq_only", "lp"])
def test_cvxpy_layer_qp_path_keeps_p_and_a_sparse(case):
    """The cvxpy layer's QP path keeps A (split into equality and inequality rows) and P sparse by
    default on large sparse problems: values, duals and gradients equal the dense route's (1e-9),
    batched too, and a directional derivative matches a central difference (the solution is
    piecewise affine in c and d, so the difference has no truncation error)."""
    from kktbridge import CvxpyLayer

    prob, params, x, cons, vals = _cvxpy_chain(40, eq=case != "ineq_only", quad=case != "lp")
    outs = [x, cons[0].dual_variables[0]] + ([cons[-1].dual_variables[0]] if case != "ineq_only" else [])
    layers = {s: CvxpyLayer(prob, params, outs, sparse=s) for s in (None, False)}
    canon = layers[None]._canon
    assert layers[None].path == "qp" and canon.sparse_a is not None and layers[False]._canon.sparse_a is None
    assert (canon.sparse_p.coords.rows.size == 0) == (case == "lp")  # an LP: P has no entries
    for a, b in zip(layers[None](*vals), layers[False](*vals)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    w = np.random.default_rng(1).normal(size=40)

    def loss(layer, *v):
        return jnp.vdot(w, layer(*v)[0]) + jnp.sum(layer(*v)[1] ** 2)

    argnums = tuple(range(len(vals)))
    gs = jax.grad(lambda *v: loss(layers[None], *v), argnums=argnums)(*vals)
    gd = jax.grad(lambda *v: loss(layers[False], *v), argnums=argnums)(*vals)
    for a, b in zip(gs, gd):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    dc = np.random.default_rng(2).normal(size=40)
    f = lambda t: float(loss(layers[None], vals[0] + t * dc, *vals[1:]))  # noqa: E731
    fd = (f(1e-5) - f(-1e-5)) / 2e-5
    assert abs(float(jnp.vdot(gs[0], dc)) - fd) <= 1e-6 * abs(fd)
    # jit, jacfwd and jacrev w.r.t. c: the sparse route equals the dense route's Jacobian.
    xs = lambda c: layers[None](c, *vals[1:])[0]  # noqa: E731
    xd = lambda c: layers[False](c, *vals[1:])[0]  # noqa: E731
    np.testing.assert_allclose(jax.jit(xs)(vals[0]), xs(vals[0]), rtol=1e-12, atol=1e-12)
    J = jax.jacfwd(xd)(vals[0])
    np.testing.assert_allclose(jax.jacfwd(xs)(vals[0]), J, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(jax.jacrev(xs)(vals[0]), J, rtol=1e-9, atol=1e-10)
    # A batch of cost vectors: one vmap-ed host call, same as the loop.
    cs = vals[0] + 0.2 * np.random.default_rng(3).normal(size=(3, 40))
    xb = layers[None](cs, *vals[1:])[0]
    for i in range(3):
        np.testing.assert_allclose(xb[i], layers[False](cs[i], *vals[1:])[0], rtol=1e-9, atol=1e-10)
