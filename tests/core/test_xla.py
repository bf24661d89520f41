"""``stage_jit`` keeps kktbridge's compiled stages off XLA:CPU's miscompiling YNNPACK reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge.core._kkt as kkt
from kktbridge.core._xla import cpu_compiler_options, stage_jit
from tests.bridges.test_nlp_sparse import _exact_chain_kkt_point, chain_eq, chain_f


def _plain_reduce(v, kind):
    """The reductions the KKT check used before its select-based work-around (bare max/sum)."""
    v = jnp.ravel(v)
    if kind == "max":
        return jnp.max(v, initial=-jnp.inf)
    if kind == "min":
        return jnp.min(v, initial=jnp.inf)
    return jnp.sum(v)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU compile option")
def test_cpu_stages_get_the_option_where_jaxlib_accepts_it():
    options = cpu_compiler_options()
    # Each option only where this jaxlib accepts it; the bug work-around is never dropped for the other.
    assert options is None or set(options) <= {"xla_cpu_experimental_ynn_fusion_type", "xla_cpu_use_fusion_emitters"}
    if options is not None and jax.__version__.startswith("0.10."):
        assert options == {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_fusion_emitters": False}
    f = stage_jit(lambda x: jnp.sum(x * x))
    assert float(f(jnp.arange(4.0))) == 14.0


def test_stage_jit_reduces_pad_shifted_tensors_exactly(monkeypatch):
    """The KKT residual of an exact KKT point of the 20,001-variable equality chain, with plain
    reductions: under a plain ``jax.jit`` jaxlib 0.10.2 returned 0.51 here (the fused reduction of
    the transposes of ``s[1:]`` and ``s[:-1]``); ``stage_jit`` must agree with eager evaluation."""
    monkeypatch.setattr(kkt, "_reduce", _plain_reduce)
    x, nu, p = _exact_chain_kkt_point(10_000)
    check = kkt.kkt_activity(chain_f, chain_eq, None)
    z = kkt.KKTPoint(x, nu, jnp.zeros((0,)))
    eager = float(check(z, p)[0])
    staged = float(stage_jit(check)(z, p)[0])
    assert eager < 1e-12  # an exact KKT point up to rounding (states reach |s| ~ 500)
    assert staged < 1e-12


def test_stage_jit_composes_with_transformations_and_an_outer_jit():
    """The options are only legal on a top-level jit: nested uses (the caller's jit, vmap, grad,
    jacrev) fall back to the plain compilation and give the same numbers."""
    f = stage_jit(lambda x: jnp.sum(jnp.sin(x) * x))
    x = jnp.linspace(0.1, 1.0, 7)
    expected = jnp.sum(jnp.sin(x) * x)
    grad = jnp.sin(x) + x * jnp.cos(x)
    assert jnp.allclose(f(x), expected, rtol=1e-14)
    assert jnp.allclose(jax.jit(f)(x), expected, rtol=1e-14)
    assert jnp.allclose(jax.grad(f)(x), grad, rtol=1e-14)
    assert jnp.allclose(jax.jit(jax.grad(f))(x), grad, rtol=1e-14)
    assert jnp.allclose(jax.jacrev(lambda x: f(x)[None])(x)[0], grad, rtol=1e-14)
    assert jnp.allclose(jax.vmap(f)(jnp.stack([x, 2 * x])), jnp.stack([expected, jnp.sum(jnp.sin(2 * x) * 2 * x)]), rtol=1e-14)


def test_first_reverse_mode_call_compiles_each_program_once():
    """Under ``grad`` a stage is refused the compile options only after JAX has compiled its primal
    half; a fresh stage must not compile that half twice (it did: +0.33 s on a first eager QP
    jacrev). Two programs: the primal half and the transposed tangent half."""
    from tests.bridges.test_eager import count_compiles

    f = stage_jit(lambda x, y: jnp.sum(jnp.tanh(x) * y))
    x, y = jnp.linspace(0.1, 1.0, 5), jnp.linspace(2.0, 3.0, 5)
    jax.grad(lambda x: jnp.sin(x).sum())(x)  # compile JAX's own eager helpers for grad once
    with count_compiles() as c:
        g = jax.grad(lambda x: f(x, y))(x)
    assert jnp.allclose(g, y / jnp.cosh(x) ** 2, rtol=1e-14)
    assert c["n"] == 2, c
    x2 = x + 1.0
    with count_compiles() as c2:
        jax.grad(lambda x: f(x, y))(x2)
    assert c2["n"] == 0


# ----------------------------------------------------------------------------- rare_branch

def _singular_system(seed: int = 0, n: int = 6):
    """A consistent rank-4 system: LU is refused, the SVD fallback gives the minimum-norm solution."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = U @ np.diag([3.0, 2.0, 1.5, 1.0, 0.0, 0.0]) @ V.T
    return A, A @ rng.standard_normal(n)


def _scaled_sum(x, y, k):
    return k * x + jnp.sum(y)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the separately compiled branch is CPU-only")
def test_rare_branch_equals_the_inline_call_under_jit_vmap_and_static_args():
    from kktbridge.core._xla import rare_branch

    x, y = jnp.arange(3.0), jnp.ones(4)
    want = 2.5 * x + 4.0
    np.testing.assert_array_equal(rare_branch(_scaled_sum, x, x, y, static=(2.5,)), want)
    np.testing.assert_array_equal(jax.jit(lambda x, y: rare_branch(_scaled_sum, x, x, y, static=(2.5,)))(x, y), want)
    xs = jnp.stack([x, 2 * x])
    # An explicit in_axes batch, and an outer vmap of the branch (run per member).
    got = rare_branch(_scaled_sum, xs, xs, y, static=(2.5,), in_axes=(0, None))
    np.testing.assert_array_equal(got, jnp.stack([want, 2.5 * 2 * x + 4.0]))
    got = jax.vmap(lambda x: rare_branch(_scaled_sum, x, x, y, static=(2.5,)))(xs)
    np.testing.assert_array_equal(got, jnp.stack([want, 2.5 * 2 * x + 4.0]))
    f32 = rare_branch(_scaled_sum, x.astype(jnp.float32), x.astype(jnp.float32), y.astype(jnp.float32), static=(2.5,))
    assert f32.dtype == jnp.float32


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the separately compiled branch is CPU-only")
def test_robust_solve_compiles_its_svd_fallback_only_when_a_system_is_singular():
    """A program with the robust dense solve compiles without the SVD; the first singular system
    compiles it (once), and its answer is the minimum-norm solution, as inline."""
    from kktbridge.core import _xla
    from kktbridge.core._linear_solve import dense_robust_solver
    from tests.bridges.test_eager import compiled_names

    _xla.clear_rare_branches()  # so that the first singular system below must compile the SVD
    solve = jax.jit(dense_robust_solver(1e-10))
    A, b = _singular_system()
    regular = A + np.eye(6)
    with compiled_names() as names:
        x = solve(jnp.asarray(regular), jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(regular, b), rtol=1e-12)
    assert not any(n.startswith("jit(rare_") for n in names), names
    with compiled_names() as names:
        x = solve(jnp.asarray(A), jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=1e-9, atol=1e-12)
    assert names == ["jit(rare__pinv_kernel)"], names
    with compiled_names() as names:
        x2 = solve(jnp.asarray(A), jnp.asarray(2 * b))
    assert names == []
    np.testing.assert_allclose(x2, 2 * x, rtol=1e-9, atol=1e-12)
    # A batch with one singular member: the batched fallback, only that member changes.
    As, bs = jnp.stack([jnp.asarray(regular), jnp.asarray(A)]), jnp.stack([jnp.asarray(b), jnp.asarray(b)])
    xs = jax.vmap(solve)(As, bs)
    np.testing.assert_allclose(xs[0], np.linalg.solve(regular, b), rtol=1e-12)
    np.testing.assert_allclose(xs[1], np.linalg.pinv(A) @ b, rtol=1e-9, atol=1e-12)


def test_rare_branch_is_inline_off_cpu(monkeypatch):
    """On an accelerator backend the branch is traced into the program (no host callback)."""
    import kktbridge.core._xla as xla

    monkeypatch.setattr(xla.jax, "default_backend", lambda: "gpu")
    x, y = jnp.arange(3.0), jnp.ones(4)
    jaxpr = jax.make_jaxpr(lambda x, y: xla.rare_branch(_scaled_sum, x, x, y, static=(2.0,)))(x, y)
    assert "callback" not in str(jaxpr)
    np.testing.assert_array_equal(xla.rare_branch(_scaled_sum, x, x, y, static=(2.0,)), 2.0 * x + 4.0)
