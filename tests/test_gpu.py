"""GPU checks: run only where JAX sees a GPU (never in CI, which has none); skip cleanly otherwise.

Every GPU result is compared with a reference computed on the CPU device *explicitly*
(``jax.devices("cpu")[0]``; JAX's default device is the GPU when one exists) and with the closed
form, computed in NumPy float64.
"""

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

CPU = jax.devices("cpu")[0]


def _ridge():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 40))
    y = rng.normal(size=60)
    lam = 0.3
    w = np.linalg.solve(X.T @ X + lam * np.eye(40), X.T @ y)
    v = rng.normal(size=40)
    # Closed form: w(λ) = (XᵀX + λI)⁻¹Xᵀy, dw/dλ = -(XᵀX + λI)⁻¹ w, so vᵀ dw/dλ = -vᵀ(XᵀX + λI)⁻¹w.
    exact = -v @ np.linalg.solve(X.T @ X + lam * np.eye(40), w)
    return X, y, lam, w, v, exact


@pytest.mark.parametrize("solve", ["lu", "auto", "gmres", "bicgstab"])
def test_backward_linear_algebra_on_gpu_matches_cpu_and_closed_form(solve):
    X, y, lam, w, v, exact = _ridge()

    def vjp(w, v):
        F = lambda w, lam: X.T @ (X @ w - y) + lam * w  # noqa: E731
        return kb.root_vjp(F, w, (lam,), v, solve=getattr(linear_solve, f"solve_{solve}"))[0]

    with jax.default_device(CPU):
        cpu = jax.jit(vjp)(jax.device_put(w, CPU), jax.device_put(v, CPU))
    gpu_in = (jax.device_put(w, _gpus()[0]), jax.device_put(v, _gpus()[0]))
    gpu = jax.jit(vjp)(*gpu_in)
    assert list(gpu.devices())[0].platform == "gpu" and list(cpu.devices())[0].platform == "cpu"
    # cond(XᵀX + λI) ~ 10 here; direct solves agree to round-off, iterative ones stop at a
    # relative residual of 1e-10 (hence 1e-8 against the closed form).
    np.testing.assert_allclose(float(cpu), exact, rtol=1e-8)
    np.testing.assert_allclose(float(gpu), exact, rtol=1e-8)
    np.testing.assert_allclose(float(gpu), float(cpu), rtol=1e-8)


def test_qp_gradient_with_gpu_default_device():
    # Projection onto x >= 0 with P = I: x* = max(-q, 0), d||x||²/dq = -2 max(-q, 0). The solver
    # runs on the host; the derivative's linear algebra on the GPU.
    q = np.array([1.0, -2.0, 0.5, -0.25])
    exact = -2 * np.maximum(-q, 0.0)
    loss = lambda q: jnp.sum(kb.solve_qp(jnp.eye(4), q, G=-jnp.eye(4), h=jnp.zeros(4)).x ** 2)  # noqa: E731
    with jax.default_device(_gpus()[0]):
        g = jax.jit(jax.grad(loss))(jnp.asarray(q))
    assert list(g.devices())[0].platform == "gpu"
    np.testing.assert_allclose(np.asarray(g), exact, rtol=1e-9, atol=1e-12)
