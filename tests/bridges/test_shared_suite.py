"""The shared problem suite: every registered adapter runs it automatically, by problem kind.

Registering a new solver in ``kktbridge.adapters._REGISTRY`` adds it here with no test changes:
each problem below has a closed-form solution and Jacobian, checked in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import _REGISTRY, available_solvers, get_adapter
from tests._peers import peer

#: Adapters whose solver library is a hard dependency of kktbridge (pyproject ``dependencies``):
#: they must import. The others wrap optional peers: they skip when the peer is missing (and
#: fail under ``KKTBRIDGE_REQUIRE_PEERS=1``, see tests/_peers.py).
HARD = {"ipopt": "cyipopt", "osqp": "osqp", "scs": "scs"}
OPTIONAL = {"clarabel": "clarabel", "daqp": "daqp", "proxsuite": "proxsuite", "piqp": "piqp", "auto": "osqp"}


def _kind(name):
    """The adapter's problem kind, without swallowing a broken import (unlike available_solvers)."""
    if name in OPTIONAL:
        peer(OPTIONAL[name])
    return get_adapter(name).kind


#: Known library bugs this suite reveals: (kind, solver) -> reason. Strict xfail: fixing the bug
#: makes the test XPASS, which fails until the entry is removed.
KNOWN_BUGS: dict = {}


def _params(kind):
    return [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=kb.SolverError, reason=KNOWN_BUGS[kind, n])) if (kind, n) in KNOWN_BUGS else n
        for n in registered(kind)
    ]


def registered(kind):
    """Every registered adapter of ``kind`` (a broken adapter is collected and fails, not dropped)."""
    out = []
    for name in _REGISTRY:
        try:
            if _kind(name) != kind:
                continue
        except BaseException:  # noqa: BLE001 -- surfaced by test_every_registered_adapter_imports
            pass
        out.append(name)
    return out


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


@pytest.mark.parametrize("solver", _params("qp"))
def test_qp_adapters_simplex_projection(solver):
    assert _kind(solver) == "qp"
    n = len(Y)

    def fun(y):
        return kb.solve_qp(jnp.eye(n), -y, jnp.ones((1, n)), jnp.ones(1), -jnp.eye(n), jnp.zeros(n), solver=solver).x

    _check(fun)


@pytest.mark.parametrize("solver", _params("nlp"))
def test_nlp_adapters_simplex_projection(solver):
    assert _kind(solver) == "nlp"
    f = lambda x, y: 0.5 * jnp.sum((x - y) ** 2)  # noqa: E731
    eq = lambda x, y: jnp.atleast_1d(jnp.sum(x) - 1.0)  # noqa: E731

    def fun(y):
        return kb.solve_nlp(f, jnp.full(len(Y), 0.2), y, eq=eq, lower=0.0, solver=solver, tol=1e-12).x

    _check(fun)


@pytest.mark.parametrize("solver", _params("conic"))
def test_conic_adapters_simplex_projection(solver):
    # min t  s.t. ||x - y||_2 <= t, 1^T x = 1, x >= 0, variables (x, t): same minimiser.
    assert _kind(solver) == "conic"
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
        return kb.solve_conic(A, b, c, cone, solver=solver).x[:n]

    _check(fun)


@pytest.mark.parametrize("name", list(_REGISTRY))
def test_every_registered_adapter_imports(name):
    # available_solvers() swallows ImportError: a broken adapter would silently leave the suite.
    # Import each one directly instead (hard dependencies must import; optional peers may skip).
    kind = _kind(name)
    assert kind in {"nlp", "qp", "conic"}, (name, kind)
    assert name in available_solvers() and name in available_solvers(kind)
    assert name in registered(kind)


def test_registry_is_exactly_the_known_adapters():
    # A new adapter must be classified here (hard dependency or optional peer), so that its
    # import failure is either an error or an explicit skip; and the registry covers all kinds.
    assert set(_REGISTRY) == set(HARD) | set(OPTIONAL)
    assert {get_adapter(n).kind for n in HARD} == {"nlp", "qp", "conic"}
    for name in HARD:
        assert name in available_solvers(), name
    # available_solvers() lists exactly the registered adapters that import, in registry order.
    importable = [n for n in _REGISTRY if n in HARD or _importable(OPTIONAL[n])]
    assert available_solvers() == importable


def _importable(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True
