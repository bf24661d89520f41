"""``stage_jit`` keeps kktbridge's compiled stages off XLA:CPU's miscompiling YNNPACK reductions."""

import jax
import jax.numpy as jnp
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
