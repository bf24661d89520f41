"""The shared problem suite: every registered adapter runs it automatically, by problem kind.

Registering a new solver in ``kktbridge.adapters._REGISTRY`` adds it here with no test changes:
each problem below has a closed-form solution and Jacobian, checked in float64. Adapters defined
in tests (``Adapter`` subclasses passed as ``solver=``, never registered) join the suite by
setting the class attribute ``SHARED_SUITE = True``: the test modules that do so are imported
here and their adapters run every problem of their kind.
"""

import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import _AUTO, _REGISTRY, Adapter, available_solvers, get_adapter
from kktbridge.core._cones import CONES
from tests._peers import peer

#: Adapters whose solver library is a hard dependency of kktbridge (pyproject ``dependencies``):
#: they must import. The others wrap optional peers: they skip when the peer is missing (and
#: fail under ``KKTBRIDGE_REQUIRE_PEERS=1``, see tests/_peers.py).
HARD = {"ipopt": "cyipopt", "osqp": "osqp", "scs": "scs"}
OPTIONAL = {"clarabel": "clarabel", "daqp": "daqp", "proxsuite": "proxsuite", "piqp": "piqp", "auto": "osqp"}


def _kind(name):
    """The adapter's problem kind, without swallowing a broken import (unlike available_solvers)."""
    if isinstance(name, Adapter):  # an adapter defined in a test: its modules are optional peers
        for module in type(name).REQUIRED_MODULES:
            peer(module)
        return name.kind
    if name in OPTIONAL:
        peer(OPTIONAL[name])
    return get_adapter(name).kind


def _kinds(name) -> set:
    """Every problem kind the adapter serves: ``"auto"`` resolves per kind (QP and conic)."""
    kind = _kind(name)
    return set(_AUTO) if isinstance(name, str) and name == "auto" else {kind}


#: Known library bugs this suite reveals: (kind, solver) -> reason. Strict xfail: fixing the bug
#: makes the test XPASS, which fails until the entry is removed.
KNOWN_BUGS: dict = {}


def _params(kind):
    return [
        pytest.param(n, id=_name(n), marks=[pytest.mark.xfail(strict=True, raises=kb.SolverError, reason=KNOWN_BUGS[kind, n])] if (kind, n) in KNOWN_BUGS else [])
        for n in registered(kind)
    ]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _test_defined_adapters() -> list:
    """Instances of the adapters that test modules opt into this suite (``SHARED_SUITE = True``).

    The opting modules are found by their source text and imported, so the suite sees them
    whatever the collection order or selection; ``OPTIONAL`` peers they need may skip as usual.
    """
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("test_*.py")):
        if path.resolve() != Path(__file__).resolve() and "SHARED_SUITE = True" in path.read_text():
            importlib.import_module(".".join(path.relative_to(root.parent).with_suffix("").parts))
    found = {cls for cls in _subclasses(Adapter) if cls.__dict__.get("SHARED_SUITE") is True}
    return [cls() for cls in sorted(found, key=lambda c: c.name)]


def _name(solver) -> str:
    return solver if isinstance(solver, str) else solver.name


TEST_ADAPTERS = _test_defined_adapters()


def registered(kind):
    """Every registered adapter of ``kind`` (a broken adapter is collected and fails, not dropped),
    then the test-defined adapters of that kind (instances, see :func:`_test_defined_adapters`)."""
    out = []
    for name in _REGISTRY:
        try:
            if kind not in _kinds(name):
                continue
        except BaseException:  # noqa: BLE001 -- surfaced by test_every_registered_adapter_imports
            pass
        out.append(name)
    return out + [a for a in TEST_ADAPTERS if a.kind == kind]


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
    assert "qp" in _kinds(solver)
    n = len(Y)

    def fun(y):
        return kb.solve_qp(jnp.eye(n), -y, jnp.ones((1, n)), jnp.ones(1), -jnp.eye(n), jnp.zeros(n), solver=solver).x

    _check(fun)


@pytest.mark.parametrize("solver", _params("nlp"))
def test_nlp_adapters_simplex_projection(solver):
    assert "nlp" in _kinds(solver)
    f = lambda x, y: 0.5 * jnp.sum((x - y) ** 2)  # noqa: E731
    eq = lambda x, y: jnp.atleast_1d(jnp.sum(x) - 1.0)  # noqa: E731

    def fun(y):
        return kb.solve_nlp(f, jnp.full(len(Y), 0.2), y, eq=eq, lower=0.0, solver=solver, tol=1e-12).x

    _check(fun)


@pytest.mark.parametrize("solver", _params("conic"))
def test_conic_adapters_simplex_projection(solver):
    # min t  s.t. ||x - y||_2 <= t, 1^T x = 1, x >= 0, variables (x, t): same minimiser.
    assert "conic" in _kinds(solver)
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


# --------------------------------------------------------------------------- one problem per cone kind
# Each problem is ``min cᵀx s.t. b(y) - A x ∈ K`` with a scalar parameter ``y`` in ``b`` and a
# closed-form minimiser ``x*(y)``; the value and ``dx*/dy`` (jacrev and jacfwd) are checked.
# Tolerances: the conic solvers run at 1e-9 (SCS) / 1e-10 (Clarabel) on these tiny problems; 1e-6
# relative on values and derivatives is the project's bound for direct solves.
def _psd_problem(y):
    # min tr(C X) s.t. tr X = 1, X ⪰ 0 (2x2), C = [[1, y], [y, 3]]: X* = v vᵀ for the smallest
    # eigenvector v; variables (X11, X21, X22), SCS's scaled-triangle order (√2 on X21).
    r2 = np.sqrt(2.0)
    A = jnp.array([[1.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -r2, 0.0], [0.0, 0.0, -1.0]])
    b = jnp.stack([jnp.ones_like(y), 0 * y, 0 * y, 0 * y])
    c = jnp.stack([jnp.ones_like(y), 2 * y, 3 * jnp.ones_like(y)])
    return A, b, c, {"z": 1, "s": [2]}


def _psd_reference(y):
    def x_of(y):
        w, V = np.linalg.eigh(np.array([[1.0, y], [y, 3.0]]))
        v = V[:, 0]
        return np.array([v[0] ** 2, v[0] * v[1], v[1] ** 2])

    h = 1e-6  # central difference of the closed-form eigenvector: error O(h²) ~ 1e-12
    return x_of(y), (x_of(y + h) - x_of(y - h)) / (2 * h)


CONE_PROBLEMS = {
    # kind: (problem(y) -> (A, b, c, cone), y, reference(y) -> (x*, dx*/dy))
    "zero": (lambda y: (jnp.eye(2), jnp.stack([y, 2 * y]), jnp.ones(2), {"z": 2}), 0.7,
             lambda y: (np.array([y, 2 * y]), np.array([1.0, 2.0]))),
    "nonnegative": (lambda y: (-jnp.eye(2), -jnp.stack([y, y**2]), jnp.ones(2), {"l": 2}), 0.7,
                    lambda y: (np.array([y, y**2]), np.array([1.0, 2 * y]))),  # x ≥ (y, y²), min 1ᵀx
    "soc": (lambda y: (jnp.vstack([jnp.zeros((1, 2)), -jnp.eye(2)]), jnp.stack([y, 0 * y, 0 * y]), jnp.array([1.0, 2.0]), {"q": [3]}), 0.7,
            lambda y: (-y * np.array([1.0, 2.0]) / np.sqrt(5.0), -np.array([1.0, 2.0]) / np.sqrt(5.0))),  # ‖x‖ ≤ y
    "psd": (_psd_problem, 0.4, _psd_reference),
    # (y, 1, z) ∈ K_exp ⟺ e^y ≤ z: min z gives z* = e^y.
    "exp": (lambda y: (jnp.array([[0.0], [0.0], [-1.0]]), jnp.stack([y, jnp.ones_like(y), 0 * y]), jnp.ones(1), {"ep": 1}), 0.3,
            lambda y: (np.array([np.exp(y)]), np.array([np.exp(y)]))),
    # (-1, y, w) ∈ K_exp* ⟺ e^{-y} ≤ e·w: min w gives w* = e^{-y-1}.
    "exp_dual": (lambda y: (jnp.array([[0.0], [0.0], [-1.0]]), jnp.stack([-jnp.ones_like(y), y, 0 * y]), jnp.ones(1), {"ed": 1}), 0.3,
                 lambda y: (np.array([np.exp(-y - 1)]), np.array([-np.exp(-y - 1)]))),
    # (y, 1, z) ∈ K_pow(0.3) ⟺ y^0.3 ≥ |z|: max z gives z* = y^0.3.
    "power": (lambda y: (jnp.array([[0.0], [0.0], [-1.0]]), jnp.stack([y, jnp.ones_like(y), 0 * y]), -jnp.ones(1), {"p": [0.3]}), 1.7,
              lambda y: (np.array([y**0.3]), np.array([0.3 * y ** (-0.7)]))),
    # (y, 1, z) ∈ K_pow(0.3)* ⟺ (y/0.3)^0.3 (1/0.7)^0.7 ≥ |z|.
    "power_dual": (lambda y: (jnp.array([[0.0], [0.0], [-1.0]]), jnp.stack([y, jnp.ones_like(y), 0 * y]), -jnp.ones(1), {"p": [-0.3]}), 1.7,
                   lambda y: (np.array([(y / 0.3) ** 0.3 * (1 / 0.7) ** 0.7]), np.array([(y / 0.3) ** -0.7 * (1 / 0.7) ** 0.7]))),
}


#: The cone kind each problem needs (the dual power cone is a power-cone block with α < 0).
NEEDS = {name: ("power" if name == "power_dual" else name) for name in CONE_PROBLEMS}


def test_every_cone_kind_has_a_problem():
    # Adding a cone record to kktbridge.core._cones.CONES must add a problem here.
    assert {c.kind for c in CONES} == set(NEEDS.values())


def _cone_params():
    return [pytest.param(solver, name, id=f"{_name(solver)}-{name}") for solver in registered("conic") for name in CONE_PROBLEMS]


@pytest.mark.parametrize("solver, name", _cone_params())
def test_conic_adapters_one_problem_per_cone_kind(solver, name):
    assert "conic" in _kinds(solver)
    adapter = get_adapter(solver, "conic")
    supported = getattr(adapter, "CONES", None)
    assert supported is not None, f"{solver}: a conic adapter declares the cone kinds it supports (CONES)"
    assert supported <= {c.kind for c in CONES}, sorted(set(supported) - {c.kind for c in CONES})
    if NEEDS[name] not in supported:
        pytest.skip(f"{solver} does not support the {NEEDS[name]} cone (not in its CONES)")
    problem, y0, reference = CONE_PROBLEMS[name]

    def fun(y):
        A, b, c, cone = problem(y)
        return kb.solve_conic(A, b, c, cone, solver=solver).x

    x_ref, dx_ref = reference(y0)
    y = jnp.asarray(y0, dtype=jnp.float64)
    np.testing.assert_allclose(fun(y), x_ref, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(fun)(y), dx_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.jacfwd(fun)(y), dx_ref, rtol=1e-6, atol=1e-7)
