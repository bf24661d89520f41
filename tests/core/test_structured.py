"""The QP's KKT matrix in block form: Schur-complement solves equal dense solves, batched or not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kktbridge.core._structured import DENSE, QP_KKT, qp_kkt_dense


def blocks(seed=0, n=7, p=2, m=6, P_scale=1.0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Ps = jnp.asarray(P_scale * (M @ M.T + 0.5 * np.eye(n)))
    A = jnp.asarray(rng.normal(size=(p, n)))
    Gf = jnp.asarray(rng.normal(size=(m, n))).at[4].set(0.0)  # row 4 absent (h = +inf)
    d = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    return (Ps, A, Gf, d), rng


@pytest.mark.parametrize("P_scale", [1.0, 0.0])  # 0: an LP, P singular -> the dense robust fallback
def test_solves_match_dense(P_scale):
    data, rng = blocks(P_scale=P_scale)
    J = qp_kkt_dense(data)
    b = jnp.asarray(rng.normal(size=J.shape[0]))
    np.testing.assert_allclose(QP_KKT.matvec(data, b), J @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(QP_KKT.solve(data, b), DENSE.solve(J, b), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(QP_KKT.transpose_solve(data, b), DENSE.solve(J.T, b), rtol=1e-9, atol=1e-11)
    if P_scale:  # nonsingular: an exact solution (the LP's system is singular: min-norm least squares)
        np.testing.assert_allclose(J @ QP_KKT.solve(data, b), b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("P_scale", [1.0, 0.0])
def test_batched_right_hand_sides_and_active_sets(P_scale):
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


def test_dependent_active_constraints_fall_back_to_minimum_norm():
    """Two identical active rows: the Schur complement is singular; the dense min-norm answer is returned."""
    (Ps, A, Gf, d), rng = blocks(seed=2)
    Gf = Gf.at[2].set(Gf[0])
    data = (Ps, A, Gf, d)
    J = qp_kkt_dense(data)
    b = jnp.asarray(rng.normal(size=J.shape[0]))
    np.testing.assert_allclose(QP_KKT.solve(data, b), DENSE.solve(J, b), rtol=1e-8, atol=1e-10)


def test_transposed_matvec_and_single_precision_refinement():
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
    out = np.asarray(QP_KKT.transpose_solve(data32, b.astype(jnp.float32)), dtype=np.float64)
    assert np.max(np.abs(out - ref)) <= 1e-4 * np.max(np.abs(ref))


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
