"""Eager reverse mode (``grad``/``jacrev``/``vjp`` outside ``jit``) runs a compiled ``custom_vjp``
pullback (``bridges/_common._reverse_stage``) instead of linearizing the compiled stage. It must
give the same derivatives as the jitted (traced) path, for every output including duals, keep
NaN derivatives for failed instances, and step aside for forward mode, ``vmap``, ``jit`` and
nested derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.core import Tracer

import kktbridge as kb
from kktbridge.bridges._common import PIPELINE_CACHE, _forward_primals, _reverse_primals
from tests.bridges.test_eager import _nlp_f, _nlp_g, _nlp_h, count_compiles

P = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
A_EQ, G = jnp.ones((1, 3)), -jnp.eye(3)


def qp_out(q, b, h):
    sol = kb.solve_qp(P, q, A=A_EQ, b=b, G=G, h=h)
    return sol.x, sol.eq_dual, sol.ineq_dual


Q0, B0, H0 = jnp.array([1.0, -2.0, 0.5]), jnp.array([1.0]), jnp.zeros(3)


def _reverse_stages_built() -> int:
    return sum("reverse" in plan.stages for plan in PIPELINE_CACHE._data.values())


def test_qp_eager_jacrev_of_primal_and_duals_equals_jit_and_fd():
    kb.clear_caches()
    eager = jax.jacrev(qp_out, argnums=(0, 1, 2))(Q0, B0, H0)
    assert _reverse_stages_built() == 1  # the custom_vjp path ran
    jitted = jax.jit(jax.jacrev(qp_out, argnums=(0, 1, 2)))(Q0, B0, H0)
    for e, j in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(e, j, rtol=1e-12, atol=1e-13)
    # Central differences in q (a QP's solution is piecewise linear: exact away from kinks).
    eps = 1e-6
    for k in range(3):
        d = jnp.zeros(3).at[k].set(eps)
        fd = [(p - m) / (2 * eps) for p, m in zip(qp_out(Q0 + d, B0, H0), qp_out(Q0 - d, B0, H0))]
        for out in range(3):
            np.testing.assert_allclose(eager[out][0][:, k], fd[out], rtol=1e-6, atol=1e-8)


def test_eager_grad_and_vjp_with_partial_cotangents():
    """Unused outputs give symbolic-zero cotangents; a cotangent on one dual alone works too."""
    g = jax.grad(lambda q: jnp.sum(qp_out(q, B0, H0)[2] ** 2))(Q0)
    g_jit = jax.jit(jax.grad(lambda q: jnp.sum(qp_out(q, B0, H0)[2] ** 2)))(Q0)
    np.testing.assert_allclose(g, g_jit, rtol=1e-12, atol=1e-13)
    (x, nu, lam), pull = jax.vjp(qp_out, Q0, B0, H0)
    ct = (jnp.zeros_like(x), jnp.ones_like(nu), jnp.zeros_like(lam))
    _, pull_jit = jax.vjp(jax.jit(qp_out), Q0, B0, H0)
    for e, j in zip(pull(ct), pull_jit(ct)):
        np.testing.assert_allclose(e, j, rtol=1e-12, atol=1e-13)


def test_nlp_and_conic_eager_jacrev_equal_jit():
    def nlp(t):
        p = {"t": t, "r": jnp.array(1.0)}
        s = kb.solve_nlp(_nlp_f, jnp.zeros(2), p, eq=_nlp_h, ineq=_nlp_g, lower=-5.0, upper=5.0)
        return s.x, s.ineq_dual

    t0 = jnp.array([1.0, 2.0])
    for e, j in zip(jax.tree_util.tree_leaves(jax.jacrev(nlp)(t0)), jax.tree_util.tree_leaves(jax.jit(jax.jacrev(nlp))(t0))):
        np.testing.assert_allclose(e, j, rtol=1e-10, atol=1e-12)

    A = jnp.array([[-1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])

    def conic(b):
        s = kb.solve_conic(A, b, jnp.array([1.0, 2.0]), {"q": [3], "l": 1})
        return s.x, s.y

    b0 = jnp.array([0.3, 1.0, 0.0, 0.0])
    for e, j in zip(jax.tree_util.tree_leaves(jax.jacrev(conic)(b0)), jax.tree_util.tree_leaves(jax.jit(jax.jacrev(conic))(b0))):
        np.testing.assert_allclose(e, j, rtol=1e-9, atol=1e-11)


def test_failed_instance_gives_nan_derivative_eagerly():
    """An infeasible QP with on_failure="nan": NaN value and NaN gradient, never a finite number."""
    def f(h):
        return jnp.sum(kb.solve_qp(P, Q0, G=jnp.array([[1.0, 0, 0], [-1.0, 0, 0]]), h=h, on_failure="nan").x)

    h_bad = jnp.array([-1.0, -1.0])  # x0 <= -1 and x0 >= 1
    assert np.isnan(f(h_bad))
    assert np.all(np.isnan(jax.grad(f)(h_bad)))
    g_ok = jax.grad(f)(jnp.array([1.0, 1.0]))
    assert np.all(np.isfinite(g_ok))


def test_second_order_vmap_and_jit_keep_the_traced_path():
    def f(q):
        return jnp.sum(qp_out(q, B0, H0)[0] ** 3)

    # Away from kinks the QP solution is affine in q: the Hessian of sum(x^3) is 6 Jᵀ diag(x) J.
    q = jnp.array([1.0, -2.0, 0.5])
    J = jax.jacfwd(lambda q: qp_out(q, B0, H0)[0])(q)
    x = qp_out(q, B0, H0)[0]
    expected = 6 * J.T @ jnp.diag(x) @ J
    np.testing.assert_allclose(jax.hessian(f)(q), expected, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(jax.jacrev(jax.jacrev(f))(q), expected, rtol=1e-9, atol=1e-10)
    qs = jnp.stack([q, q * 1.1])
    np.testing.assert_allclose(jax.vmap(jax.grad(f))(qs)[1], jax.grad(f)(qs[1]), rtol=1e-10, atol=1e-12)


X2 = jnp.ones(2)
_CALLS = {
    "grad": lambda f: jax.grad(f)(X2),
    "jvp": lambda f: jax.jvp(f, (X2,), (X2,)),
    "jacfwd": lambda f: jax.jacfwd(f)(X2),  # tangents batched, primals concrete
    "jit grad": lambda f: jax.jit(jax.grad(f))(X2),
    "jit jacfwd": lambda f: jax.jit(jax.jacfwd(f))(X2),
    "vmap grad": lambda f: jax.vmap(jax.grad(f))(jnp.ones((3, 2))),
    "vmap jacfwd": lambda f: jax.vmap(jax.jacfwd(f))(jnp.ones((3, 2))),
    "hessian": lambda f: jax.hessian(f)(X2),
}


@pytest.mark.parametrize("detect, eager_calls", [(_reverse_primals, {"grad"}), (_forward_primals, {"jvp", "jacfwd"})],
                         ids=["reverse", "forward"])
def test_primals_taken_only_for_eager_autodiff_of_concrete_values(detect, eager_calls):
    seen = {}

    def probe(x):
        seen["p"] = detect((x, jnp.ones(2)))
        return jnp.sum(x)

    for name, call in _CALLS.items():
        seen.clear()
        call(probe)
        if name in eager_calls:
            assert seen["p"] is not None and not isinstance(seen["p"][0], Tracer), name
        else:
            assert seen["p"] is None, name
    assert detect((jnp.ones(2),)) is None  # no tracer: plain eager call


def test_eager_forward_mode_solves_eagerly_and_matches_jit():
    """An eager jvp/jacfwd runs the solve as a plain eager call (its primal values only): the same
    derivatives as the jitted path, a failure raises kktbridge's own SolverError (from the host,
    not out of a compiled callback), and warm calls compile nothing."""
    f = jax.jacfwd(qp_out, argnums=(0, 1, 2))
    eager, jitted = f(Q0, B0, H0), jax.jit(f)(Q0, B0, H0)
    for e, j in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(e, j, rtol=1e-12, atol=1e-13)
    t = (jnp.ones(3), jnp.ones(1), jnp.ones(3))
    np.testing.assert_allclose(jax.jvp(qp_out, (Q0, B0, H0), t)[1][0], jax.jit(lambda *a: jax.jvp(qp_out, a, t))(Q0, B0, H0)[1][0],
                               rtol=1e-12, atol=1e-13)
    infeasible = jnp.array([-1.0, -1.0, -1.0])  # x >= 1 with sum(x) = 1
    with pytest.raises(kb.SolverError):
        jax.jvp(lambda h: qp_out(Q0, B0, h)[0], (infeasible,), (jnp.ones(3),))
    qs = [Q0 * (1 + 0.01 * i) for i in range(5)]  # made before counting (each is an eager op)
    with count_compiles() as c:
        for q in qs:
            jax.block_until_ready(f(q, B0, H0))
    assert c["n"] == 0


def test_eager_jacrev_compiles_nothing_once_warm():
    f = jax.jacrev(qp_out, argnums=(0, 1, 2))
    jax.block_until_ready(f(Q0, B0, H0))
    jax.block_until_ready(f(Q0 * 1.01, B0, H0))
    qs = [Q0 * (1 + 0.001 * i) for i in range(20)]
    with count_compiles() as c:
        for q in qs:
            jax.block_until_ready(f(q, B0, H0))
    assert c["n"] == 0


@pytest.mark.parametrize("dtype", [jnp.float32])
def test_eager_jacrev_float32(dtype):
    """float32 in, float32 derivatives out, equal to the jitted path at float32 precision."""
    q = Q0.astype(dtype)
    e = jax.jacrev(lambda q: kb.solve_qp(P.astype(dtype), q, A=A_EQ.astype(dtype), b=B0.astype(dtype), G=G.astype(dtype), h=H0.astype(dtype)).x)(q)
    j = jax.jit(jax.jacrev(lambda q: kb.solve_qp(P.astype(dtype), q, A=A_EQ.astype(dtype), b=B0.astype(dtype), G=G.astype(dtype), h=H0.astype(dtype)).x))(q)
    assert e.dtype == dtype
    np.testing.assert_allclose(e, j, rtol=1e-5, atol=1e-6)


def test_eager_jacrev_wrt_a_subset_of_matrices_and_vectors():
    """Cotangents are computed for the perturbed arguments only (the others are symbolic zeros):
    a mix of a matrix and a vector, against the jitted path and central differences in P."""
    def f(Pm, h):
        return kb.solve_qp(Pm, Q0, A=A_EQ, b=B0, G=G, h=h).x

    h0 = jnp.array([0.0, -0.1, 0.2])
    e = jax.jacrev(f, argnums=(0, 1))(P, h0)
    j = jax.jit(jax.jacrev(f, argnums=(0, 1)))(P, h0)
    for a, b in zip(e, j):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    eps, dP = 1e-6, jnp.zeros((3, 3)).at[0, 1].set(1.0).at[1, 0].set(1.0)
    fd = (f(P + eps * dP, h0) - f(P - eps * dP, h0)) / (2 * eps)
    np.testing.assert_allclose(jnp.tensordot(e[0], dP, axes=2), fd, rtol=1e-6, atol=1e-8)



def test_vmapped_eager_pullback_runs_batched_with_any_axis_and_mixed_cotangents(monkeypatch):
    """jacrev's vmap over the pullback runs one batched compiled program: a batch on axis 1, and
    cotangents of which only some are batched, equal the jitted path's."""
    from kktbridge.bridges import _common

    split = []
    real = _common.concrete_batch
    monkeypatch.setattr(_common, "concrete_batch", lambda leaves: split.append(real(leaves)) or split[-1])
    kb.clear_caches()
    (x, nu, lam), pull = jax.vjp(qp_out, Q0, B0, H0)
    _, pull_jit = jax.vjp(jax.jit(qp_out), Q0, B0, H0)
    cx = jnp.asarray(np.linspace(-1.0, 1.0, 12).reshape(3, 4))  # 4 cotangents of x, batch on axis 1

    def both(p):
        return jax.vmap(lambda c: p((c, jnp.ones_like(nu), lam)), in_axes=1)(cx)

    got, want = both(pull), both(pull_jit)
    assert split and split[-1] is not None and split[-1][1] == (1, None, None)  # x's cotangent batched, nu's and lam's not
    for e, j in zip(got, want):
        assert e.shape[0] == 4
        np.testing.assert_allclose(e, j, rtol=1e-12, atol=1e-13)
    # Nested: vmap over vmap of the pullback keeps JAX's general path and the same numbers.
    nested = jax.vmap(jax.vmap(lambda c: pull((c, nu, lam))))(jnp.stack([cx.T, 2 * cx.T]))
    nested_jit = jax.vmap(jax.vmap(lambda c: pull_jit((c, nu, lam))))(jnp.stack([cx.T, 2 * cx.T]))
    for e, j in zip(nested, nested_jit):
        np.testing.assert_allclose(e, j, rtol=1e-12, atol=1e-13)
