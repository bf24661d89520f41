"""Cone projections: vs cvxpy, exact optimality certificates, Moreau, idempotence, Jacobians vs FD."""

from __future__ import annotations

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kktbridge.core._cones import (
    CONES,
    ConeSpec,
    cone_blocks,
    cone_dim,
    cone_projection,
    parse_cone,
    project_exp,
    project_pow,
    project_psd,
    project_soc,
    psd_mat,
    psd_vec,
)

from tests._cvx import solve_clarabel_tight


def cvx_projection(v, kind, arg=None):
    p = cp.Variable(3 if kind in ("exp", "pow") else v.size)
    if kind == "exp":
        cons = [cp.constraints.ExpCone(p[0], p[1], p[2])]
    elif kind == "pow":
        cons = [cp.constraints.PowCone3D(p[0], p[1], p[2], arg)]
    elif kind == "soc":
        cons = [cp.SOC(p[0], p[1:])]
    else:  # psd: p = vec(X)
        n = arg
        X = cp.Variable((n, n), symmetric=True)
        cols, rows = np.triu_indices(n)
        scale = np.where(rows == cols, 1.0, np.sqrt(2.0))
        cons = [p == cp.hstack([scale[k] * X[rows[k], cols[k]] for k in range(rows.size)]), X >> 0]
    # The reference must be certified: CLARABEL at 1e-11 (1e-9 on a retry), status OPTIMAL.
    solve_clarabel_tight(cp.Problem(cp.Minimize(cp.sum_squares(p - v)), cons))
    return p.value


def in_exp(p, tol=1e-9):
    x, y, z = p
    if y > tol:
        return y * np.exp(x / y) <= z + tol * max(1.0, abs(z))
    return x <= tol and abs(y) <= tol and z >= -tol


def in_exp_dual(d, tol=1e-9):
    u, v, w = d
    if u < -tol:
        return -u * np.exp(v / u) <= np.e * w + tol * max(1.0, abs(w))
    return abs(u) <= tol and v >= -tol and w >= -tol


def in_pow(p, a, tol=1e-9):
    x, y, z = p
    return x >= -tol and y >= -tol and max(x, 0) ** a * max(y, 0) ** (1 - a) >= abs(z) - tol


def in_pow_dual(d, a, tol=1e-9):
    u, v, w = d
    return u >= -tol and v >= -tol and max(u / a, 0) ** a * max(v / (1 - a), 0) ** (1 - a) >= abs(w) - tol


def random_points(rng, k, dim=3):
    return [rng.standard_normal(dim) * rng.choice([0.1, 1.0, 5.0]) for _ in range(k)]


def test_exp_projection_certificate_and_cvxpy():
    rng = np.random.default_rng(0)
    proj = jax.jit(project_exp)
    for v in random_points(rng, 60):
        p = np.asarray(proj(v))
        d = p - v  # Moreau: p - v = Π_{K*}(-v) must lie in K* and be orthogonal to p
        assert in_exp(p) and in_exp_dual(d), (v, p)
        assert abs(p @ d) <= 1e-10 * max(1.0, v @ v)
        # cvxpy/Clarabel (certified OPTIMAL at 1e-11) solves the same projection to ~6e-7 on exp
        # cones (measured; its iterates approach the curved boundary like sqrt(gap)); the exact
        # certificate above is the tight check.
        np.testing.assert_allclose(p, cvx_projection(v, "exp"), atol=2e-6 * max(1.0, np.abs(v).max()))


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.85])
def test_pow_projection_certificate_and_cvxpy(alpha):
    rng = np.random.default_rng(1)
    proj = jax.jit(project_pow)
    for v in random_points(rng, 20):
        p = np.asarray(proj(v, alpha))
        d = p - v
        assert in_pow(p, alpha) and in_pow_dual(d, alpha), (v, p)
        assert abs(p @ d) <= 1e-10 * max(1.0, v @ v)
        # Reference error ~9e-7 measured (as for exp cones above); the certificate is the tight check.
        np.testing.assert_allclose(p, cvx_projection(v, "pow", alpha), atol=2e-6 * max(1.0, np.abs(v).max()))


def test_soc_and_psd_projection_vs_cvxpy():
    rng = np.random.default_rng(2)
    for _ in range(10):
        v = rng.standard_normal(5)
        # Clarabel (certified OPTIMAL at 1e-11) on SOC/PSD least squares: within 3e-11 (measured).
        np.testing.assert_allclose(project_soc(jnp.asarray(v)), cvx_projection(v, "soc"), atol=1e-9)
    for n in (2, 3):
        for _ in range(5):
            v = rng.standard_normal(n * (n + 1) // 2)
            np.testing.assert_allclose(project_psd(jnp.asarray(v), n), cvx_projection(v, "psd", n), atol=1e-9)


def test_psd_vectorisation_is_scs_convention():
    X = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
    r = np.sqrt(2.0)
    # SCS: lower triangle column by column, off-diagonals times sqrt(2).
    np.testing.assert_allclose(psd_vec(jnp.asarray(X)), [1.0, 2 * r, 3 * r, 4.0, 5 * r, 6.0])
    np.testing.assert_allclose(psd_mat(psd_vec(jnp.asarray(X)), 3), X)
    Y = np.random.default_rng(3).standard_normal((3, 3))
    Y = Y + Y.T
    np.testing.assert_allclose(psd_vec(jnp.asarray(X)) @ psd_vec(jnp.asarray(Y)), np.trace(X @ Y))


FULL_CONE = {"z": 2, "l": 3, "q": [3, 3, 4], "s": [2, 3], "ep": 2, "ed": 1, "p": [0.3, -0.7]}


@pytest.mark.parametrize("dual", [False, True])
def test_whole_cone_idempotent_and_moreau(dual):
    spec = parse_cone(FULL_CONE)
    proj = jax.jit(cone_projection(FULL_CONE, dual=dual))
    proj_other = jax.jit(cone_projection(FULL_CONE, dual=not dual))
    rng = np.random.default_rng(4)
    for _ in range(5):
        v = 2 * rng.standard_normal(spec.dim)
        p = proj(v)
        np.testing.assert_allclose(proj(p), p, atol=1e-10)
        # v = Π_K(v) - Π_{K*}(-v), the two parts orthogonal.
        q = proj_other(-v)
        np.testing.assert_allclose(p - q, v, atol=1e-10)
        assert abs(float(p @ q)) < 1e-9


def test_whole_cone_blocks_and_zero_cone():
    proj = cone_projection({"z": 2, "l": 2, "q": [3]})
    v = jnp.array([1.0, -2.0, -1.0, 3.0, 0.0, 3.0, 4.0])
    np.testing.assert_allclose(proj(v), [0, 0, 0, 3, 2.5, 1.5, 2.0], atol=1e-14)
    proj_dual = cone_projection({"z": 2, "l": 2, "q": [3]}, dual=True)
    np.testing.assert_allclose(proj_dual(v)[:2], [1.0, -2.0])  # dual of {0} is free


def _fd(fun, v, h=1e-6):
    return np.stack([(np.asarray(fun(v + h * e)) - np.asarray(fun(v - h * e))) / (2 * h) for e in np.eye(v.size)], 1)


@pytest.mark.parametrize("dual", [False, True])
def test_jacobian_vs_fd_away_from_kinks(dual):
    proj = cone_projection(FULL_CONE, dual=dual)
    spec = parse_cone(FULL_CONE)
    v = 2 * np.random.default_rng(5).standard_normal(spec.dim)
    Jf = jax.jit(jax.jacfwd(proj))(v)
    Jr = jax.jit(jax.jacrev(proj))(v)
    # Central FD at h=1e-6 on smooth pieces: O(h^2) + round-off ~1e-9.
    np.testing.assert_allclose(Jf, _fd(jax.jit(proj), v), atol=1e-7)
    np.testing.assert_allclose(Jf, Jr, atol=1e-12)


def test_exp_and_pow_jacobians_on_each_region():
    rng = np.random.default_rng(6)
    pe = jax.jit(project_exp)
    je = jax.jit(jax.jacfwd(project_exp))
    pp = jax.jit(lambda v: project_pow(v, 0.4))
    jp = jax.jit(jax.jacfwd(lambda v: project_pow(v, 0.4)))
    for v in random_points(rng, 25):
        # Central FD at h=1e-6: O(h^2) truncation plus the projections' Newton round-off / h,
        # measured at most 2e-9 here (Jacobian entries are O(1)).
        np.testing.assert_allclose(je(v), _fd(pe, v), atol=1e-8)
        np.testing.assert_allclose(jp(v), _fd(pp, v), atol=1e-8)


def test_psd_jacobian_finite_at_repeated_eigenvalues():
    # Eigenvalues (2, 2, -1): jnp.linalg.eigh's own derivative divides by zero here.
    Q = np.linalg.qr(np.random.default_rng(7).standard_normal((3, 3)))[0]
    X = Q @ np.diag([2.0, 2.0, -1.0]) @ Q.T
    v = np.asarray(psd_vec(jnp.asarray(X)))
    J = jax.jacfwd(lambda u: project_psd(u, 3))(v)
    assert np.all(np.isfinite(J))
    np.testing.assert_allclose(J, _fd(lambda u: project_psd(jnp.asarray(u), 3), v), atol=1e-7)
    g = jax.grad(lambda u: jnp.sum(project_psd(u, 3) ** 2))(v)
    assert np.all(np.isfinite(g))


def test_soc_gradient_finite_at_origin_of_x():
    g = jax.grad(lambda v: jnp.sum(project_soc(v)))(jnp.array([1.0, 0.0, 0.0]))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "cone, msg",
    [
        ({"foo": 1}, "unknown key"),
        ({"bu": [1.0], "bl": [0.0]}, "not supported"),
        ({"l": -1}, "nonnegative"),
        ({"q": [3, 0]}, "q"),
        ({"p": [1.5]}, "power"),
        ({"ep": 1.5}, "ep"),
        ("l", "dict"),
    ],
)
def test_parse_cone_errors_name_cone(cone, msg):
    with pytest.raises(ValueError, match="cone") as info:
        parse_cone(cone)
    assert msg in str(info.value)


def test_parse_cone_sizes_must_add_up():
    assert parse_cone({"l": 2, "q": [3], "s": [2], "ep": 1, "p": [0.5]}, m=2 + 3 + 3 + 3 + 3).dim == 14
    with pytest.raises(ValueError, match="cone.*A has 5 rows"):
        parse_cone({"l": 2, "q": [4]}, m=5)


# --------------------------------------------------------------------------- the cone records
#: One cone-dictionary entry per record (the dual power cone is a power block with α < 0).
RECORD_ENTRIES = {"z": 3, "l": 2, "q": [3, 3, 4], "s": [2, 3], "ep": 2, "ed": 1, "p": [0.3, -0.6]}


def test_every_record_has_an_entry_and_blocks_add_up():
    assert {c.key for c in CONES} == set(RECORD_ENTRIES) and [c.key for c in CONES] == list(ConeSpec._fields)
    spec = parse_cone(RECORD_ENTRIES)
    sizes = [size for _, size, _ in cone_blocks(spec)]
    assert sizes == [3, 2, 3, 3, 4, 3, 6, 3, 3, 3, 3, 3] and cone_dim(spec) == sum(sizes) == 39


@pytest.mark.parametrize("cone", CONES, ids=lambda c: c.kind)
def test_record_projections_satisfy_moreau(cone):
    # v = Π_K(v) - Π_K*(-v) with Π_K(v) ⟂ Π_K*(-v), block by block, for each record's entry.
    rng = np.random.default_rng(3)
    spec = parse_cone({cone.key: RECORD_ENTRIES[cone.key]})
    for c, size, param in cone_blocks(spec):
        assert c is cone
        for _ in range(5):
            v = jnp.asarray(rng.normal(size=size))
            p, d = cone.project(v, param), cone.project_dual(-v, param)
            np.testing.assert_allclose(p - d, v, rtol=1e-10, atol=1e-10)
            assert abs(float(jnp.vdot(p, d))) <= 1e-9 * (1 + float(jnp.vdot(v, v)))
    # and the whole-dictionary projection is the records' projections side by side
    v = jnp.asarray(rng.normal(size=cone_dim(spec)))
    i, parts = 0, []
    for c, size, param in cone_blocks(spec):
        parts.append(c.project(v[i : i + size], param))
        i += size
    np.testing.assert_allclose(cone_projection(spec)(v), jnp.concatenate(parts), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("cone", CONES, ids=lambda c: c.kind)
def test_record_projections_and_jacobians_keep_float32(cone):
    # float32 in, float32 out -- also with x64 on, where a NumPy float64 constant would promote
    # (the PSD scale factors did: every float32 derivative through a PSD cone then failed).
    from kktbridge.core._cones import projection_jacobian_blocks

    spec = parse_cone({cone.key: RECORD_ENTRIES[cone.key]})
    v = jnp.asarray(np.random.default_rng(4).normal(size=cone_dim(spec)), jnp.float32)
    for dual in (False, True):
        assert cone_projection(spec, dual=dual)(v).dtype == jnp.float32
        assert jax.jacfwd(cone_projection(spec, dual=dual))(v).dtype == jnp.float32
        assert all(r.blocks.dtype == jnp.float32 for r in projection_jacobian_blocks(spec, dual=dual)(v))
