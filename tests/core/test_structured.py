"""The QP's KKT matrix in block form: Schur-complement solves equal dense solves, batched or not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge.core._structured as structured
from kktbridge.core._structured import DENSE, QP_KKT, qp_kkt_dense
from tests._host_kkt import count_host_kkt_calls


@pytest.fixture(params=["xla", "host"])
def path(request, monkeypatch):
    """Run a test through the XLA Schur solve and through the host kernel (``HOST_MIN_SIZE`` moved
    so that these small systems take it); yields the number of host kernel calls so far."""
    calls = count_host_kkt_calls(monkeypatch)
    monkeypatch.setattr(structured, "HOST_MIN_SIZE", 0 if request.param == "host" else 10**9)
    structured.clear_factor_cache()
    return request.param, calls


def _used(path):
    """The host kernel ran iff the host path was asked for (no trace leaked across the settings)."""
    name, calls = path
    assert bool(calls) == (name == "host"), (name, calls)


def blocks(seed=0, n=7, p=2, m=6, P_scale=1.0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Ps = jnp.asarray(P_scale * (M @ M.T + 0.5 * np.eye(n)))
    A = jnp.asarray(rng.normal(size=(p, n)))
    Gf = jnp.asarray(rng.normal(size=(m, n))).at[4].set(0.0)  # row 4 absent (h = +inf)
    d = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    return (Ps, A, Gf, d), rng


@pytest.mark.parametrize("P_scale", [1.0, 0.0])  # 0: an LP, P singular -> the dense robust fallback
def test_solves_match_dense(P_scale, path):
    data, rng = blocks(P_scale=P_scale)
    J = qp_kkt_dense(data)
    b = jnp.asarray(rng.normal(size=J.shape[0]))
    np.testing.assert_allclose(QP_KKT.matvec(data, b), J @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(QP_KKT.solve(data, b), DENSE.solve(J, b), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(QP_KKT.transpose_solve(data, b), DENSE.solve(J.T, b), rtol=1e-9, atol=1e-11)
    if P_scale:  # nonsingular: an exact solution (the LP's system is singular: min-norm least squares)
        np.testing.assert_allclose(J @ QP_KKT.solve(data, b), b, rtol=1e-9, atol=1e-10)
    _used(path)


@pytest.mark.parametrize("P_scale", [1.0, 0.0])
def test_batched_right_hand_sides_and_active_sets(P_scale, path):
    (Ps, A, Gf, d), rng = blocks(seed=1, P_scale=P_scale)
    N = Ps.shape[0] + A.shape[0] + Gf.shape[0]
    B = jnp.asarray(rng.normal(size=(5, N)))
    D = jnp.asarray(rng.uniform(size=(5, Gf.shape[0])) > 0.5).astype(Ps.dtype).at[:, 4].set(0.0)
    # Many right-hand sides, one matrix (jacfwd / jacrev of one instance).
    out = jax.vmap(lambda b: QP_KKT.solve((Ps, A, Gf, d), b))(B)
    np.testing.assert_allclose(out, jax.vmap(lambda b: DENSE.solve(qp_kkt_dense((Ps, A, Gf, d)), b))(B), rtol=1e-9, atol=1e-11)
    # Shared P, A, G, one active set per instance (a vmap-ed layer), transposed and not.
    for solve, tr in ((QP_KKT.solve, False), (QP_KKT.transpose_solve, True)):
        out = jax.jit(jax.vmap(lambda dd, b: solve((Ps, A, Gf, dd), b)))(D, B)
        ref = jnp.stack([DENSE.solve(qp_kkt_dense((Ps, A, Gf, D[i])).T if tr else qp_kkt_dense((Ps, A, Gf, D[i])), B[i]) for i in range(5)])
        np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-11)
        # Instances x right-hand sides (jacrev of a vmap-ed layer), and a batched P as well.
        Js = jnp.stack([qp_kkt_dense((Ps * (1.0 + i), A, Gf, D[i])) for i in range(5)])
        Js = jnp.swapaxes(Js, 1, 2) if tr else Js
        ref = np.stack([np.linalg.lstsq(J, np.asarray(B).T, rcond=1e-10)[0].T for J in np.asarray(Js)])
        out = jax.vmap(lambda P, dd: jax.vmap(lambda b: solve((P, A, Gf, dd), b))(B))(Ps * (1.0 + jnp.arange(5.0))[:, None, None], D)
        np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-10)
    _used(path)


def test_dependent_active_constraints_fall_back_to_minimum_norm(path):
    """Two identical active rows: the Schur complement is singular; the dense min-norm answer is returned."""
    (Ps, A, Gf, d), rng = blocks(seed=2)
    Gf = Gf.at[2].set(Gf[0])
    data = (Ps, A, Gf, d)
    J = qp_kkt_dense(data)
    b = jnp.asarray(rng.normal(size=J.shape[0]))
    np.testing.assert_allclose(QP_KKT.solve(data, b), DENSE.solve(J, b), rtol=1e-8, atol=1e-10)
    _used(path)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the dense fallback runs on the host only on CPU")
@pytest.mark.parametrize("transpose", [False, True])
def test_dense_fallback_is_not_compiled_into_the_solve(transpose):
    """The dense robust fallback (a regular QP never takes it) runs on the host, not in the solve's
    program: that program factors by Cholesky only, alone and vmap-ed; a refused system, alone or
    in a batch, still gets the dense minimum-norm answer."""
    from tests.core.test_linear_solve import _program_calls

    solve = QP_KKT.transpose_solve if transpose else QP_KKT.solve
    (Ps, A, Gf, d), rng = blocks(seed=3)
    dependent = (Ps, A, Gf.at[2].set(Gf[0]), d)
    b = jnp.asarray(rng.normal(size=(4, Ps.shape[0] + A.shape[0] + Gf.shape[0])))
    for fun, args in ((solve, ((Ps, A, Gf, d), b[0])), (jax.vmap(solve, in_axes=(None, 0)), ((Ps, A, Gf, d), b))):
        calls = _program_calls(fun, *args)
        assert calls and not any(k in c for c in calls for k in ("getrf", "gesdd", "gesvd")), calls
    dense = lambda data, v: DENSE.solve(qp_kkt_dense(data).T if transpose else qp_kkt_dense(data), v)  # noqa: E731
    np.testing.assert_allclose(jax.jit(solve)(dependent, b[0]), dense(dependent, b[0]), rtol=1e-8, atol=1e-10)
    # A batch of instances (one refused): the others keep the Schur answer, the refused one the dense.
    Ds = jnp.stack([Gf, Gf.at[2].set(Gf[0]), Gf])
    out = jax.jit(jax.vmap(lambda G, v: solve((Ps, A, G, d), v)))(Ds, b[:3])
    ref = np.stack([dense((Ps, A, Ds[i], d), b[i]) for i in range(3)])
    np.testing.assert_allclose(out, ref, rtol=1e-8, atol=1e-10)


def test_transposed_matvec_and_single_precision_refinement(path):
    from kktbridge.core._structured import _qp_matvec

    data, rng = blocks(seed=3, n=30, p=5, m=20)
    Ps, A, Gf, d = data
    d = jnp.asarray(rng.uniform(size=20) > 0.5).astype(Ps.dtype).at[4].set(0.0)
    data = (Ps, A, Gf, d)
    J = qp_kkt_dense(data)
    b = jnp.asarray(rng.normal(size=J.shape[0]))
    np.testing.assert_allclose(_qp_matvec(data, b, transpose=True), J.T @ b, rtol=1e-12, atol=1e-12)
    # float32 in: one refinement step brings the Schur-complement solve to single precision's
    # accuracy times the (moderate, ~1e3) condition number, as for the dense LU.
    ref = np.linalg.solve(np.asarray(J).T, np.asarray(b))
    data32 = tuple(a.astype(jnp.float32) for a in data)
    out = QP_KKT.transpose_solve(data32, b.astype(jnp.float32))
    assert out.dtype == jnp.float32
    # (The host kernel computes in float64 and rounds once: well inside the bound.)
    assert np.max(np.abs(np.asarray(out, np.float64) - ref)) <= 1e-4 * np.max(np.abs(ref))
    _used(path)


def _operand_shapes(jaxpr, primitive: str) -> list:
    """Operand shapes of every ``primitive`` in a (closed) jaxpr, sub-jaxprs included."""
    from jax.extend import core as jcore

    out = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == primitive:
                out.append(tuple(tuple(v.aval.shape) for v in eqn.invars))
            for p in eqn.params.values():
                for sub in p if isinstance(p, (tuple, list)) else (p,):
                    if isinstance(sub, jcore.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jcore.Jaxpr):
                        walk(sub)

    walk(jaxpr.jaxpr)
    return out


def test_batch_sharing_p_a_g_factorises_p_once():
    """vmap over instances that share P, A, G but not q, h, b (a QP layer): the backward's chol(P)
    and L⁻¹[A; G]ᵀ are unbatched -- computed once for the batch -- and only the Schur complements
    are per instance (a finite-row mask folded into G made L⁻¹[A; G]ᵀ and the Gram matrix batched)."""
    import kktbridge as kb

    n, p, m, B = 6, 2, 5, 4
    rng = np.random.default_rng(0)
    F = rng.normal(size=(n, n))
    P, A, G = F @ F.T + np.eye(n), rng.normal(size=(p, n)), rng.normal(size=(m, n))
    q, b, h = rng.normal(size=(B, n)), rng.normal(size=(B, p)), rng.uniform(1, 2, size=(B, m))
    h[:, 2] = np.inf  # an absent row: its mask must not batch G

    def loss(q, b, h):
        return jnp.sum(jax.vmap(lambda q, b, h: kb.solve_qp(P, q, A, b, G, h).x)(q, b, h) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, b, h)
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, b, h)
    chol = [s[0] for s in _operand_shapes(jaxpr, "cholesky")]
    assert (n, n) in chol and (B, n, n) not in chol, chol
    assert (B, p + m, p + m) in chol  # the per-instance Schur complements
    trsm = [s[1] for s in _operand_shapes(jaxpr, "triangular_solve")]
    assert (n, p + m) in trsm and (B, n, p + m) not in trsm, trsm
    # Same gradients as instance-by-instance solves.
    for i in range(B):
        gi = jax.grad(lambda q, b, h: jnp.sum(kb.solve_qp(P, q, A, b, G, h).x ** 2), argnums=(0, 1, 2))(q[i], b[i], h[i])
        for g, g1 in zip(grads, gi):
            np.testing.assert_allclose(g[i], g1, rtol=1e-10, atol=1e-12)


def test_host_kernel_without_constraints_and_with_an_absent_active_row():
    """Edge cases of the host kernel: no constraint rows at all (k = 0), and an "active" row with
    no finite bound (c = e = 0: a zero row and column, so singular -- refused, never a guess)."""
    rng = np.random.default_rng(5)
    n = 6
    M = rng.normal(size=(n, n))
    Ps = M @ M.T + np.eye(n)
    bx = rng.normal(size=n)
    x, y, ok = structured._host_saddle(Ps, np.zeros((0, n)), np.zeros(0), np.zeros(0), bx, np.zeros(0))
    assert ok and y.shape == (0,)
    np.testing.assert_allclose(Ps @ x, bx, rtol=1e-12, atol=1e-12)
    C0 = rng.normal(size=(3, n))
    x, y, ok = structured._host_saddle(Ps, C0, np.array([1.0, 0.0, 1.0]), np.array([0.0, 0.0, 0.0]), bx, rng.normal(size=3))
    assert not ok and np.all(np.isnan(x)) and np.all(np.isnan(y))
    # Masks other than the QP's (c, e in {0, 1}, e = 0 where c = 1) are refused, never guessed.
    for c, e in (([0.5, 0.0, 1.0], [0.0, 1.0, 0.0]), ([1.0, 0.0, 1.0], [0.3, 1.0, 0.0]), ([1.0, 0.0, 1.0], [0.0, 2.0, 0.0])):
        assert not structured._host_saddle(Ps, C0, np.array(c), np.array(e), bx, rng.normal(size=3))[2]
    # A QP mask: row 1 inactive (y_1 = -by_1), rows 0 and 2 active; against the dense saddle matrix.
    by = rng.normal(size=3)
    x, y, ok = structured._host_saddle(Ps, C0, np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0]), bx, by)
    C = np.diag([1.0, 0.0, 1.0]) @ C0
    K = np.block([[Ps, C.T], [C, -np.diag([0.0, 1.0, 0.0])]])
    assert ok
    np.testing.assert_allclose(np.concatenate([x, y]), np.linalg.solve(K, np.concatenate([bx, by])), rtol=1e-10, atol=1e-12)


def test_host_factor_cache_reuses_chol_p_by_value_and_is_cleared(monkeypatch):
    """A layer called again with the same P, A, G (new q, h, b) reuses chol(P) and L⁻¹Cᵀ; any change
    of P or G refactors (keyed by contents, not identity); kb.clear_caches() forgets them."""
    import kktbridge as kb

    monkeypatch.setattr(structured, "HOST_MIN_SIZE", 0)
    structured.clear_factor_cache()
    factored = []
    factor = structured._FactorCache._factor
    monkeypatch.setattr(structured._FactorCache, "_factor", staticmethod(lambda P, C: factored.append(1) or factor(P, C)))
    (Ps, A, Gf, d), rng = blocks(seed=4)
    b = jnp.asarray(rng.normal(size=Ps.shape[0] + A.shape[0] + Gf.shape[0]))
    solve = jax.jit(lambda P, b: QP_KKT.solve((P, A, Gf, d), b))
    x1 = solve(Ps, b)
    x2 = solve(Ps, 2 * b)
    assert len(factored) == 1
    np.testing.assert_allclose(x2, 2 * x1, rtol=1e-12, atol=1e-12)
    P2 = Ps.at[0, 0].add(1.0)
    np.testing.assert_allclose(solve(P2, b), DENSE.solve(qp_kkt_dense((P2, A, Gf, d)), b), rtol=1e-9, atol=1e-11)
    assert len(factored) == 2
    G2 = Gf.at[1, 0].add(1.0)  # same P, another G: part of the key too
    x3 = jax.jit(lambda P, G, b: QP_KKT.solve((P, A, G, d), b))(Ps, G2, b)
    np.testing.assert_allclose(x3, DENSE.solve(qp_kkt_dense((Ps, A, G2, d)), b), rtol=1e-9, atol=1e-11)
    assert len(factored) == 3
    kb.clear_caches()
    solve(Ps, b)
    assert len(factored) == 4


def test_qp_gradients_and_hessian_through_the_host_path_match_xla(monkeypatch):
    """End to end through kb.solve_qp: a vmap-ed layer's gradient and one instance's Hessian (the
    host solve sits inside custom_linear_solve, so second derivatives still work) agree with
    the XLA path, and the gradient with central differences."""
    import kktbridge as kb

    n, p, m, B = 12, 2, 8, 3
    rng = np.random.default_rng(7)
    F = rng.normal(size=(n, n))
    P, A, G = F @ F.T / n + np.eye(n), rng.normal(size=(p, n)), rng.normal(size=(m, n))
    x0 = rng.normal(size=(B, n))
    h = x0 @ G.T + np.where(rng.random((B, m)) < 0.5, 0.0, 0.5)
    b = x0 @ A.T
    q = rng.normal(size=(B, n))
    w = rng.normal(size=(B, n))

    def loss(q, h, b):
        return jnp.sum(w * jax.vmap(lambda q, h, b: kb.solve_qp(P, q, A, b, G, h).x)(q, h, b))

    def one(q):  # smooth in q near q[0]: x* is piecewise affine, so its Hessian is zero
        return jnp.sum(kb.solve_qp(P, q, A, b[0], G, h[0]).x ** 2)

    out, calls = {}, count_host_kkt_calls(monkeypatch)
    try:
        for name, size in (("xla", 10**9), ("host", 0)):
            monkeypatch.setattr(structured, "HOST_MIN_SIZE", size)
            kb.clear_caches()
            out[name] = (jax.grad(loss, argnums=(0, 1, 2))(q, h, b), jax.hessian(one)(q[0]))
            assert bool(calls) == (name == "host"), name
    finally:
        kb.clear_caches()  # no stage traced with HOST_MIN_SIZE = 0 may serve later tests
    for gx, gh in zip(out["xla"][0], out["host"][0]):
        np.testing.assert_allclose(gh, gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["host"][1], out["xla"][1], rtol=1e-9, atol=1e-11)
    direction = rng.normal(size=q.shape)
    step = 1e-4  # x* is affine in q while the active set is fixed: no truncation error
    fd = (loss(q + step * direction, h, b) - loss(q - step * direction, h, b)) / (2 * step)
    np.testing.assert_allclose(jnp.vdot(out["host"][0][0], direction), fd, rtol=1e-7)
