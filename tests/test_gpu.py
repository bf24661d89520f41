"""GPU checks: run only where JAX sees a GPU (never in CI, which has none); skip cleanly otherwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge import linear_solve


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


pytestmark = pytest.mark.skipif(not _gpus(), reason="no GPU visible to JAX")


@pytest.mark.parametrize("solve", ["lu", "auto", "gmres", "bicgstab"])
def test_backward_linear_algebra_on_gpu_matches_cpu(solve):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 40))
    y = rng.normal(size=60)

    def F(w, lam):
        return X.T @ (X @ w - y) + lam * w

    w = np.linalg.solve(X.T @ X + 0.3 * np.eye(40), X.T @ y)
    v = rng.normal(size=40)
    cpu = kb.root_vjp(F, jnp.asarray(w), (0.3,), jnp.asarray(v), solve=solve)[0]
    with jax.default_device(_gpus()[0]):
        gpu = jax.jit(lambda w, v: kb.root_vjp(F, w, (0.3,), v, solve=getattr(linear_solve, f"solve_{solve}"))[0])(
            jax.device_put(w, _gpus()[0]), jax.device_put(v, _gpus()[0])
        )
    np.testing.assert_allclose(np.asarray(gpu), np.asarray(cpu), rtol=1e-6)
