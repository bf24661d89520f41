"""Sparse cone programs end to end: BCOO / SciPy ``A`` give the dense path's values and derivatives.

The solvers receive the same CSC matrix on both paths (BCOO.fromdense and SciPy keep exactly the
nonzeros that ``csc_matrix`` of the dense array keeps), so values agree to rounding and the
derivatives differ only by the linear solve (sparse LU on the Jacobian's pattern vs the dense
default): 1e-9 is checked throughout. The small examples' Jacobian patterns are dense, where the
bridge's default backward is the dense closed form (``_ift_jacobian``); :func:`sparse_lu` forces the
sparse LU so that it stays covered on every cone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import kktbridge as kb
from kktbridge.bridges import _common
from kktbridge.bridges._conic import solve_conic
from kktbridge.core import _cones, _sparsity
from tests._conic_problems import make_problem
from tests.bridges.test_eager import count_compiles

#: One cone dictionary per kind of :data:`kktbridge.core._cones.CONES` (every kind covered).
EXAMPLES = {
    "z": {"z": 2, "l": 3},
    "l": {"l": 5},
    "q": {"q": [3, 4]},
    "s": {"l": 1, "s": [2, 3]},
    "ep": {"l": 2, "ep": 2},
    "ed": {"l": 2, "ed": 2},
    "p": {"l": 2, "p": [0.3, -0.6]},
}
assert set(EXAMPLES) == {c.key for c in _cones.CONES}
TOL = dict(atol=1e-9, rtol=1e-9)


@pytest.fixture
def sparse_lu(monkeypatch):
    """Every sparse ``A`` takes the sparse-LU backward, however dense its Jacobian pattern."""
    monkeypatch.setattr(_sparsity, "SPARSE_MAX_DENSITY", 1.0)
    _common.clear_caches()  # plans built under the default rule
    yield
    _common.clear_caches()


def sparse_problem(cone, seed, n=4, keep=0.6):
    """A program with a known unique solution and a sparse ``A``: zeroing entries of ``A`` and
    recomputing ``b = Ax* + s*``, ``c = -Aᵀy*`` keeps ``(x*, y*, s*)`` optimal."""
    A, _, _, (x, y, s) = make_problem(cone, seed, n)
    mask = np.random.default_rng(seed + 100).uniform(size=A.shape) < keep
    mask[np.arange(A.shape[0]), np.arange(A.shape[0]) % n] = True  # no empty row
    A = np.where(mask, A, 0.0)
    return A, A @ x + s, -A.T @ y


def bcoo_with(data, M):
    return jsparse.BCOO((data, M.indices), shape=M.shape)


def _backward_solvers():
    return [plan.policy.solve for plan in _common.PIPELINE_CACHE._data.values()]


@pytest.mark.parametrize("solver", ["scs", "clarabel"])
@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_sparse_and_dense_agree_for_every_cone(key, solver, sparse_lu):
    cone = EXAMPLES[key]
    A, b, c = sparse_problem(cone, seed=3)
    Ab = jsparse.BCOO.fromdense(A)
    assert Ab.nse < A.size  # genuinely sparse
    idx = np.asarray(Ab.indices)

    def dense(A, b, c):
        sol = solve_conic(A, b, c, cone, solver=solver)
        return jnp.concatenate([sol.x, sol.y, sol.s])

    def sparse(data, b, c):
        sol = solve_conic(bcoo_with(data, Ab), b, c, cone, solver=solver)
        return jnp.concatenate([sol.x, sol.y, sol.s])

    np.testing.assert_allclose(sparse(Ab.data, b, c), dense(A, b, c), **TOL)
    for jac in (jax.jacfwd, jax.jacrev):
        JA, Jb, Jc = jac(dense, argnums=(0, 1, 2))(A, b, c)
        Sd, Sb, Sc = jac(sparse, argnums=(0, 1, 2))(Ab.data, b, c)
        # d/d(data_k) = d/dA at entry k of the pattern.
        np.testing.assert_allclose(Sd, JA[:, idx[:, 0], idx[:, 1]], **TOL)
        np.testing.assert_allclose(Sb, Jb, **TOL)
        np.testing.assert_allclose(Sc, Jc, **TOL)
    assert any(isinstance(s, _sparsity.SparseLUSolver) for s in _backward_solvers())


# Three cone families, not all seven: the closed form itself is checked on every cone kind against
# jacfwd (test_conic.py); this checks the route (sparse values densified into it), 5-9 s per case.
@pytest.mark.parametrize("key", ["q", "s", "ep"])
def test_sparse_a_with_a_dense_jacobian_pattern_uses_the_dense_closed_form(key):
    """Small examples: the Jacobian pattern is > 5 % full, so the backward densifies ``A``'s values
    into the closed-form Jacobian (no sparse LU) -- and gives the dense path's derivatives."""
    cone = EXAMPLES[key]
    A, b, c = sparse_problem(cone, seed=3)
    Ab = jsparse.BCOO.fromdense(A)
    idx = np.asarray(Ab.indices)
    _common.clear_caches()

    def sparse(data, b, c):
        sol = solve_conic(bcoo_with(data, Ab), b, c, cone)
        return jnp.concatenate([sol.x, sol.y, sol.s])

    Sd, Sb, Sc = jax.jacrev(sparse, argnums=(0, 1, 2))(Ab.data, b, c)
    assert not any(isinstance(s, _sparsity.SparseLUSolver) for s in _backward_solvers())
    assert all(plan.jacobian is not None for plan in _common.PIPELINE_CACHE._data.values())
    JA, Jb, Jc = jax.jacrev(lambda A, b, c: jnp.concatenate(solve_conic(A, b, c, cone)[:3]), argnums=(0, 1, 2))(A, b, c)
    np.testing.assert_allclose(Sd, JA[:, idx[:, 0], idx[:, 1]], **TOL)
    np.testing.assert_allclose(Sb, Jb, **TOL)
    np.testing.assert_allclose(Sc, Jc, **TOL)


def test_sparse_backward_is_the_sparse_lu_on_the_jacobian_pattern():
    """A banded LP with one small SOC block: 1.6 % of the Jacobian is nonzero, so the default
    backward is the sparse LU (on the pattern), and it gives the dense path's gradient."""
    n = 60
    rng = np.random.default_rng(4)
    cone = {"l": 2 * n, "q": [4]}
    band = np.diag(2 + rng.uniform(size=n)) + np.diag(0.3 * rng.standard_normal(n - 1), 1)
    soc = np.zeros((4, n))
    soc[1:, :3] = -np.eye(3)
    A = np.vstack([band, -np.eye(n), soc])
    b = np.concatenate([rng.uniform(1, 2, n), np.ones(n), [3.0, 0, 0, 0]])
    c = rng.standard_normal(n)
    _common.clear_caches()
    g = jax.grad(lambda b: solve_conic(sp.csr_matrix(A), b, c, cone).x @ c)(b)
    assert any(isinstance(s, _sparsity.SparseLUSolver) for s in _backward_solvers())
    gd = jax.grad(lambda b: solve_conic(A, b, c, cone).x @ c)(b)
    np.testing.assert_allclose(g, gd, **TOL)


def test_scipy_constant_matrix():
    cone = {"z": 1, "l": 2, "q": [4], "s": [2]}
    A, b, c = sparse_problem(cone, seed=5)
    for conv in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        As = conv(A)

        def both(b, c, As=As):
            return solve_conic(As, b, c, cone).x, solve_conic(A, b, c, cone).x

        xs, xd = both(b, c)
        np.testing.assert_allclose(xs, xd, **TOL)
        Js = jax.jacrev(lambda b, c: both(b, c)[0], argnums=(0, 1))(b, c)
        Jd = jax.jacrev(lambda b, c: both(b, c)[1], argnums=(0, 1))(b, c)
        for s_, d_ in zip(Js, Jd):
            np.testing.assert_allclose(s_, d_, **TOL)


def test_jit_and_vmap_shared_sparse_matrix_and_batched_values(sparse_lu):
    cone = {"l": 3, "q": [3]}
    A, b, c = sparse_problem(cone, seed=6)
    Ab = jsparse.BCOO.fromdense(A)
    rng = np.random.default_rng(0)
    # Perturbations small enough to keep the (strictly complementary) solutions' structure.
    B = b + 0.01 * rng.standard_normal((3, b.size))
    C = c + 0.01 * rng.standard_normal((3, c.size))
    D = Ab.data + 0.01 * rng.standard_normal((3, Ab.nse))

    xs = jax.jit(jax.vmap(lambda b, c: solve_conic(Ab, b, c, cone).x))(B, C)
    xd = jax.vmap(lambda b, c: solve_conic(A, b, c, cone).x)(B, C)
    np.testing.assert_allclose(xs, xd, **TOL)
    gs = jax.jit(jax.grad(lambda B: jnp.sum(jax.vmap(lambda b: solve_conic(Ab, b, c, cone).x)(B) ** 2)))(B)
    gd = jax.grad(lambda B: jnp.sum(jax.vmap(lambda b: solve_conic(A, b, c, cone).x)(B) ** 2))(B)
    np.testing.assert_allclose(gs, gd, **TOL)

    # Batched BCOO values on one pattern.
    idx = np.asarray(Ab.indices)
    dense_of = lambda d: jnp.zeros(A.shape, d.dtype).at[idx[:, 0], idx[:, 1]].add(d)  # noqa: E731
    xs = jax.jit(jax.vmap(lambda d: solve_conic(bcoo_with(d, Ab), b, c, cone).x))(D)
    xd = jax.vmap(lambda d: solve_conic(dense_of(d), b, c, cone).x)(D)
    np.testing.assert_allclose(xs, xd, **TOL)
    Js = jax.vmap(jax.jacfwd(lambda d: solve_conic(bcoo_with(d, Ab), b, c, cone).x))(D)
    Jd = jax.vmap(jax.jacfwd(lambda d: solve_conic(dense_of(d), b, c, cone).x))(D)
    np.testing.assert_allclose(Js, Jd, **TOL)


def test_failed_instance_gives_nan_values_and_nan_derivatives(sparse_lu):
    # 0 <= x <= b0 (rows x <= b0, -x <= 0): b0 = -1 is infeasible.
    A = sp.csr_matrix(np.array([[1.0], [-1.0]]))
    c = jnp.array([-1.0])
    B = jnp.array([[1.0, 0.0], [-1.0, 0.0]])

    def x_of(b):
        return solve_conic(A, b, c, {"l": 2}, on_failure="nan").x

    sol = jax.vmap(lambda b: solve_conic(A, b, c, {"l": 2}, on_failure="nan"))(B)
    assert [kb.Status(int(s)) for s in sol.status] == [kb.Status.SOLVED, kb.Status.INFEASIBLE]
    np.testing.assert_allclose(sol.x[0], [1.0], **TOL)
    assert np.all(np.isnan(sol.x[1])) and np.all(np.isnan(sol.y[1]))
    J = jax.vmap(jax.jacfwd(x_of))(B)
    np.testing.assert_allclose(J[0], [[1.0, 0.0]], **TOL)  # x* = b0
    assert np.all(np.isnan(J[1]))
    g = jax.grad(lambda b: x_of(b).sum())(B[1])
    assert np.all(np.isnan(g))
    with pytest.raises(kb.SolverError):
        solve_conic(A, B[1], c, {"l": 2})


def test_eager_calls_compile_once_per_pattern():
    cone = {"l": 3, "q": [3]}
    A, b, c = sparse_problem(cone, seed=7)
    Ab = jsparse.BCOO.fromdense(A)

    def call(i):
        d = Ab.data * (1 + 1e-3 * i)
        x = solve_conic(bcoo_with(d, Ab), b + 1e-3 * i, c, cone).x
        g = jax.grad(lambda d: solve_conic(bcoo_with(d, Ab), b, c, cone).x.sum())(d)
        return x, g

    for i in range(2):  # warm-up: compile the pattern's stages once
        call(i)
    with count_compiles() as counted:
        for i in range(2, 8):
            x, g = call(i)
    assert counted["n"] == 0, f"{counted['n']} compilations in eager calls with new values on one pattern"
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(g))
    # A new pattern is a new structure: it compiles (and is then cached like the first).
    A2 = A.copy()
    A2[tuple(np.argwhere(A == 0)[0])] = 0.5
    A2_b = jsparse.BCOO.fromdense(A2)
    new_data = A2_b.data * 1.001
    with count_compiles() as counted:
        x2 = solve_conic(A2_b, b, c, cone, on_failure="nan").x
    assert counted["n"] > 0
    with count_compiles() as counted:
        solve_conic(bcoo_with(new_data, A2_b), b, c, cone, on_failure="nan")
    assert counted["n"] == 0 and x2.shape == x.shape


def banded_lp(n: int, seed: int = 0):
    """``min cᵀx s.t. -1 ≤ Bx ≤ 1`` with a tridiagonal, diagonally dominant ``B``.

    With ``y = Bx`` the program is ``min (B⁻ᵀc)ᵀy s.t. -1 ≤ y ≤ 1``: ``y* = -sign(B⁻ᵀc)``, a
    unique nondegenerate vertex, and ``x*(b) = B⁻¹ y*(b)`` is affine in the bounds ``b`` as long
    as they keep the opposite bounds inactive (a slack of 2 here).
    """
    rng = np.random.default_rng(seed)
    B = sp.diags([3 + rng.uniform(size=n), rng.uniform(-1, 1, n - 1), rng.uniform(-1, 1, n - 1)], [0, 1, -1])
    A = sp.vstack([B, -B]).tocsc()
    return A, np.ones(2 * n), rng.standard_normal(n)


def test_large_sparse_lp_solves_and_differentiates():
    """20,000 variables, 40,000 rows: a dense IFT matrix would need 29 GB; sparse it is O(nnz)."""
    n = 20_000
    A, b, c = banded_lp(n)
    cone = {"l": 2 * n}
    w = jnp.asarray(np.random.default_rng(1).standard_normal(n))
    bj = jnp.asarray(b)

    def loss(b):
        return jnp.vdot(w, solve_conic(A, b, c, cone, solver="clarabel").x)

    value, g = jax.value_and_grad(loss)(bj)
    assert np.isfinite(float(value)) and np.all(np.isfinite(g))
    # Affine in b (see banded_lp): a central difference with a large step is exact up to the
    # solver's accuracy (~1e-10) divided by the step.
    v = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, 2 * n))
    eps = 0.1
    fd = (loss(bj + eps * v) - loss(bj - eps * v)) / (2 * eps)
    assert abs(float(g @ v) - float(fd)) <= 1e-6 * abs(float(fd))


def test_cvxpy_layer_sparse_route_gives_the_dense_route_gradient():
    import cvxpy as cp

    from kktbridge import CvxpyLayer

    n = 60
    rng = np.random.default_rng(0)
    x = cp.Variable(n)
    d0, d1, h, cost = cp.Parameter(n), cp.Parameter(n - 1), cp.Parameter(n), cp.Parameter(n)
    band = cp.multiply(d0, x) + cp.hstack([cp.multiply(d1, x[1:]), np.zeros(1)])
    prob = cp.Problem(cp.Minimize(cost @ x), [band <= h, x >= -1, cp.norm(x[:5]) <= 3])
    params = [d0, d1, h, cost]
    vals = [2 + rng.uniform(size=n), 0.3 * rng.standard_normal(n - 1), rng.uniform(1, 2, n), rng.standard_normal(n)]
    layers = {s: CvxpyLayer(prob, parameters=params, variables=[x], sparse=s) for s in (None, True, False)}
    assert layers[None]._canon.sparse_a is not None  # n + m = 188, 2.5% dense: sparse by default
    assert layers[False]._canon.sparse_a is None

    def grads(layer):
        return jax.grad(lambda *p: jnp.sum(layer(*p)[0] ** 2), argnums=(0, 1, 2, 3))(*vals)

    np.testing.assert_allclose(layers[True](*vals)[0], layers[False](*vals)[0], **TOL)
    for gs, gd in zip(grads(layers[True]), grads(layers[False])):
        np.testing.assert_allclose(gs, gd, **TOL)
