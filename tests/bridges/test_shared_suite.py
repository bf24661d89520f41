"""The shared problem suite: every registered adapter runs it automatically, by problem kind.

Registering a new solver in ``kktbridge.adapters._REGISTRY`` adds it here with no test changes:
each problem below has a closed-form solution and Jacobian, checked in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import available_solvers


def simplex_projection_and_jacobian(y):
    """Euclidean projection onto the probability simplex and its Jacobian diag(s) - s s^T / |s|."""
    u = np.sort(y)[::-1]
    css = np.cumsum(u) - 1
    k = np.nonzero(u - css / np.arange(1, len(y) + 1) > 0)[0][-1]
    x = np.maximum(y - css[k] / (k + 1), 0)
    s = (x > 0).astype(float)
    return x, np.diag(s) - np.outer(s, s) / s.sum()


Y = np.array([0.9, 0.4, -0.3, 0.6, 0.05])  # projection has 3 active coordinates, margins > 0.1


def _check(fun, y=Y):
    x_ref, J_ref = simplex_projection_and_jacobian(y)
    np.testing.assert_allclose(fun(jnp.asarray(y)), x_ref, atol=1e-7)
    np.testing.assert_allclose(jax.jacrev(fun)(jnp.asarray(y)), J_ref, atol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(fun)(jnp.asarray(y)), J_ref, atol=1e-6)
    ys = jnp.stack([jnp.asarray(y), jnp.asarray(y[::-1])])
    xs = jax.jit(jax.vmap(fun))(ys)
    np.testing.assert_allclose(xs[1], simplex_projection_and_jacobian(y[::-1])[0], atol=1e-7)


@pytest.mark.parametrize("solver", available_solvers("qp"))
def test_qp_adapters_simplex_projection(solver):
    n = len(Y)

    def fun(y):
        return kb.solve_qp(jnp.eye(n), -y, jnp.ones((1, n)), jnp.ones(1), -jnp.eye(n), jnp.zeros(n), solver=solver).x

    _check(fun)


@pytest.mark.parametrize("solver", available_solvers("nlp"))
def test_nlp_adapters_simplex_projection(solver):
    f = lambda x, y: 0.5 * jnp.sum((x - y) ** 2)  # noqa: E731
    eq = lambda x, y: jnp.atleast_1d(jnp.sum(x) - 1.0)  # noqa: E731

    def fun(y):
        return kb.solve_nlp(f, jnp.full(len(Y), 0.2), y, eq=eq, lower=0.0, solver=solver, tol=1e-12).x

    _check(fun)


@pytest.mark.parametrize("solver", available_solvers("conic"))
def test_conic_adapters_simplex_projection(solver):
    # min t  s.t. ||x - y||_2 <= t, 1^T x = 1, x >= 0, variables (x, t): same minimiser.
    solve_conic = pytest.importorskip("kktbridge.bridges._conic").solve_conic
    n = len(Y)

    def fun(y):
        I = jnp.eye(n)
        A = jnp.block(
            [
                [jnp.ones((1, n)), jnp.zeros((1, 1))],  # zero cone: 1^T x = 1
                [-I, jnp.zeros((n, 1))],  # nonnegative cone: x >= 0
                [jnp.zeros((1, n)), -jnp.ones((1, 1))],  # second-order cone: (t, x - y)
                [-I, jnp.zeros((n, 1))],
            ]
        )
        b = jnp.concatenate([jnp.ones(1), jnp.zeros(n), jnp.zeros(1), -y])
        c = jnp.concatenate([jnp.zeros(n), jnp.ones(1)])
        cone = {"z": 1, "l": n, "q": [n + 1]}
        return solve_conic(A, b, c, cone, solver=solver).x[:n]

    _check(fun)


def test_every_registered_adapter_is_covered():
    kinds = {kb_kind for name in available_solvers() for kb_kind in [kb_adapter_kind(name)]}
    assert kinds <= {"nlp", "qp", "conic"}


def kb_adapter_kind(name):
    from kktbridge.adapters import get_adapter

    return get_adapter(name).kind
