"""kktbridge's JAX work-arounds change no behaviour: the (discarded) repr of a pullback, and where concrete calls dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge  # noqa: F401  (applies the patch)
from kktbridge.core import _jax_compat


def test_vjp_repr_is_constant_time_and_debug_info_unchanged():
    if not _jax_compat.PATCHED:
        pytest.skip("this JAX has no VJP dataclass to patch")
    from jax._src import api_util

    _, pullback = jax.vjp(lambda x: jnp.sin(x) * x, jnp.ones(3))
    text = repr(pullback)
    assert "lambda" not in text and len(text) < 40  # no jaxpr printed
    # What jax.vmap records for the pullback is what it recorded before the patch.
    assert api_util.fun_sourceinfo(pullback) == "<unknown>"


def test_jacrev_values_unchanged():
    f = lambda x: jnp.tanh(x) * jnp.sum(x**2)  # noqa: E731
    x = jnp.asarray(np.linspace(-1.0, 1.0, 4))
    np.testing.assert_allclose(jax.jacrev(f)(x), jax.jacfwd(f)(x), rtol=1e-12, atol=1e-14)


def test_eval_context_runs_concrete_calls_out_of_the_current_trace(monkeypatch):
    """Inside an eager grad, a jitted call on concrete inputs in ``eval_context`` returns a concrete
    array (dispatched like a top-level call) equal to the traced result."""
    import jax
    import jax.numpy as jnp

    from kktbridge.core._jax_compat import eval_context

    f = jax.jit(lambda v: jnp.cumsum(v) * 2.0)
    const = jnp.arange(3.0)
    seen = {}

    def g(x):
        with eval_context():
            seen["y"] = f(const)
        return jnp.sum(x * seen["y"])

    grad = jax.grad(g)(jnp.ones(3))
    assert not isinstance(seen["y"], jax.core.Tracer)
    assert jnp.allclose(grad, f(const))
    monkeypatch.setenv("KKTBRIDGE_NO_JAX_PATCHES", "1")
    with eval_context():  # the no-op context when patches are disabled
        assert jnp.allclose(f(const), jnp.array([0.0, 2.0, 6.0]))


def test_concrete_batch_splits_one_eager_vmap_and_wraps_back():
    """Inside one eager ``vmap`` the tracers' concrete values and batch axes come out; a batched
    compiled call on them, wrapped back, gives what the batching rule gives."""
    from kktbridge.core._jax_compat import concrete_batch, eval_context

    f = jax.jit(lambda v, w: jnp.sin(v) * w)
    w = jnp.arange(1.0, 4.0)
    seen = {}

    def g(v):
        split = concrete_batch([v, w])
        seen["split"] = split
        values, axes, wrap = split
        with eval_context():
            out = jax.jit(jax.vmap(f, in_axes=axes))(*values)
        return wrap(out)

    vs = jnp.asarray(np.linspace(0.0, 1.0, 12).reshape(3, 4))  # batch on axis 1 (in_axes=1)
    got = jax.vmap(g, in_axes=1)(vs)
    np.testing.assert_allclose(got, jax.vmap(f, in_axes=(1, None))(vs, w), rtol=1e-15)
    values, axes, _ = seen["split"]
    assert axes == (1, None) and not isinstance(values[0], jax.core.Tracer)


@pytest.mark.parametrize("where", ["plain", "jit", "nested_vmap", "grad", "two_vmaps"])
def test_concrete_batch_declines_everything_else(where, monkeypatch):
    from kktbridge.core._jax_compat import concrete_batch

    seen = []

    def probe(*xs):
        seen.append(concrete_batch(list(xs)))
        return sum(jnp.sum(x) for x in xs)

    x = jnp.ones((2, 3))
    if where == "plain":
        probe(x)
    elif where == "jit":
        jax.jit(jax.vmap(probe))(x)
    elif where == "nested_vmap":
        jax.vmap(jax.vmap(probe))(x)
    elif where == "grad":
        jax.vmap(jax.grad(probe))(x)
    else:  # tracers of two different vmaps
        jax.vmap(lambda a: jax.vmap(lambda b: probe(a, b))(x))(x)
    assert seen and all(s is None for s in seen)
    monkeypatch.setenv("KKTBRIDGE_NO_JAX_PATCHES", "1")
    seen.clear()
    jax.vmap(probe)(x)
    assert seen == [None]
