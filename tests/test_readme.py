"""The README's Python examples run as written (in order, sharing one namespace), and the results
they state or imply are right: each is checked against its closed form, so the README cannot drift
from the code (or the code from the README)."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def ns():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 5, "README: expected the example plus one block per bridge"
    namespace: dict = {}
    first: dict = {}  # each name as the block that first defined it left it (`sol` is reused)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
        for k, v in namespace.items():
            first.setdefault(k, v)
    return {"first": first, "last": dict(namespace)}


def test_readme_example_projection_onto_the_disk(ns):
    # min ||x - t||² s.t. ||x||² <= r with t = (1, 2), r = 1: x = t/||t|| (t outside the disk),
    # 2(x - t) + 2λx = 0  ->  λ = ||t||/sqrt(r) - 1;  x(r) = t sqrt(r)/||t||.
    t, r = np.array([1.0, 2.0]), 1.0
    nt = np.linalg.norm(t)
    sol = ns["first"]["sol"]
    assert int(sol.status) == 0
    np.testing.assert_allclose(sol.x, t / nt, rtol=1e-8)
    np.testing.assert_allclose(sol.ineq_dual, [nt / np.sqrt(r) - 1.0], rtol=1e-8)
    np.testing.assert_allclose(ns["first"]["dx_dp"]["radius"], t / (2 * nt * np.sqrt(r)), rtol=1e-7)
    np.testing.assert_allclose(ns["first"]["dx_dp"]["target"], np.sqrt(r) / nt * (np.eye(2) - np.outer(t, t) / nt**2), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(ns["first"]["dlam_dr"], -nt / (2 * r**1.5), rtol=1e-7)
    # vmap over targets (1, 1): each x = (1, 1)/sqrt(2).
    batched = np.asarray(ns["first"]["batched"](jnp.ones((8, 2))))
    np.testing.assert_allclose(batched, np.full((8, 2), 1 / np.sqrt(2.0)), rtol=1e-8)


def test_readme_lagrangian_value_gradient_and_hessian(ns):
    # V(t, r) = (||t|| - sqrt(r))²; envelope theorem: ∇_t V = 2(t - x), ∂_r V = -λ; ∂²_r V = ||t||/(2 r^1.5).
    t, r = np.array([1.0, 2.0]), 1.0
    nt = np.linalg.norm(t)
    np.testing.assert_allclose(ns["first"]["value"], (nt - np.sqrt(r)) ** 2, rtol=1e-8)
    np.testing.assert_allclose(ns["first"]["grad"]["target"], 2 * (t - t / nt), rtol=1e-7)
    np.testing.assert_allclose(ns["first"]["grad"]["radius"], -(nt / np.sqrt(r) - 1.0), rtol=1e-7)
    np.testing.assert_allclose(ns["first"]["hess"], nt / (2 * r**1.5), rtol=1e-6)


def test_readme_qp_gradients(ns):
    # P = I, x >= 0: x* = max(-q, 0) = 0 for q = 1 (every bound strictly active, λ = q), so
    # ∂x/∂q = 0 and the gradient of ||x||² is 0 for all 64 instances.
    grads = np.asarray(ns["first"]["grads"])
    assert grads.shape == (64, 3)
    np.testing.assert_allclose(grads, 0.0, atol=1e-12)
    # A point where the gradient is not zero, through the README's own `loss`: x = (0, 2, 0),
    # ∂x/∂q = diag(0, -1, 0), so ∇ = 2x ∂x/∂q = (0, -4, 0).
    np.testing.assert_allclose(jax.grad(ns["first"]["loss"])(jnp.array([1.0, -2.0, 0.5])), [0.0, -4.0, 0.0], atol=1e-9)


def test_readme_lp_solution_and_jacobian(ns):
    # min x1 + 2 x2 s.t. x >= 0, x1 + x2 >= 1: x* = (1, 0). Active rows 1 and 2 of s = b - Ax:
    # b1 + x2 = 0 and b2 + x1 + x2 = 0, so x = (b1 - b2, -b1) near b = (0, 0, -1).
    lp = ns["last"]["sol"]  # the conic block re-binds `sol`
    assert int(lp.status) == 0
    np.testing.assert_allclose(lp.x, [1.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(ns["last"]["dx_db"], [[0.0, 1.0, -1.0], [0.0, -1.0, 0.0]], atol=1e-8)


def test_readme_cvxpy_layer(ns):
    # x* = max(-q/2, 0) (stated in the README) and its Jacobian diag(-1/2 where -q/2 > 0).
    q = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(ns["first"]["x_star"], np.maximum(-q / 2, 0.0), atol=1e-8)
    np.testing.assert_allclose(ns["first"]["dx_dq"], np.diag(np.where(-q / 2 > 0, -0.5, 0.0)), atol=1e-8)
