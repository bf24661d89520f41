"""Eager calls compile once per problem structure and keep memory flat.

After a warm-up, many eager calls with new values (plain solves and eager ``grad``/``jacfwd``)
must trigger no new XLA compilation and must not grow the resident set size. Speed itself is
measured by ``python -m kktbridge bench --suite eager``, never asserted here.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import monitoring

import kktbridge as kb

_COMPILES = [0]


def _on_event(event: str, duration: float, **kwargs) -> None:
    if "backend_compile" in event:
        _COMPILES[0] += 1


monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def count_compiles():
    start = _COMPILES[0]
    box = {}
    yield box
    box["n"] = _COMPILES[0] - start


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def _nlp_f(x, p):
    return jnp.sum((x - p["t"]) ** 2) + 0.1 * x[0] * x[1]


def _nlp_g(x, p):
    return jnp.atleast_1d(jnp.sum(x**2) - p["r"])


def _nlp_h(x, p):
    return jnp.atleast_1d(x[0] - x[1] - 0.1)


def qp_call(i):
    P = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q = jnp.array([1.0, -2.0, 0.5]) + 0.001 * i
    return kb.solve_qp(P, q, A=jnp.ones((1, 3)), b=jnp.array([1.0]), G=-jnp.eye(3), h=jnp.zeros(3)).x


# min x1 + 2 x2 s.t. x1 >= -0.3 - δ (the "l" row, first in SCS order), ‖x‖ <= 1 (SOC rows).
A_CONIC = jnp.array([[-1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])


def conic_call(i):
    b = jnp.array([0.3 + 0.001 * i, 1.0, 0.0, 0.0])
    return kb.solve_conic(A_CONIC, b, jnp.array([1.0, 2.0]), {"q": [3], "l": 1}).x


def nlp_call(i):
    p = {"t": jnp.array([1.0, 2.0]) + 0.001 * i, "r": jnp.array(1.0)}
    return kb.solve_nlp(_nlp_f, jnp.zeros(2), p, eq=_nlp_h, ineq=_nlp_g, lower=-5.0, upper=5.0).x


def _sparse_qp_data(scale):
    """A BCOO QP (tridiagonal P, box rows as G): new values per call, one pattern."""
    from jax.experimental import sparse

    n = 40
    P = sparse.BCOO.fromdense(2.0 * jnp.eye(n) - 0.5 * jnp.eye(n, k=1) - 0.5 * jnp.eye(n, k=-1) + 0.1 * scale * jnp.eye(n))
    G = sparse.BCOO.fromdense(jnp.concatenate([jnp.eye(n), -jnp.eye(n)]))
    q = jnp.sin(jnp.arange(n) * (1.0 + scale))
    return P, q, G, jnp.full(2 * n, 0.5)


def qp_sparse_call(i):
    P, q, G, h = _sparse_qp_data(0.001 * i)
    return kb.solve_qp(P, q, G=G, h=h).x


def _sparse_lp_data(scale):
    """A BCOO LP (box rows), which solver="auto" sends to Clarabel: new values per call, one pattern."""
    from jax.experimental import sparse

    n = 30
    A = sparse.BCOO.fromdense(jnp.concatenate([jnp.eye(n), -jnp.eye(n)]))
    b = jnp.concatenate([jnp.full(n, 0.5 + scale), jnp.full(n, 0.5)])  # -0.5 <= x <= 0.5 + scale
    return A, b, jnp.sin(jnp.arange(n) + 0.5), {"l": 2 * n}


def conic_sparse_auto_call(i):
    A, b, c, cone = _sparse_lp_data(0.001 * i)
    return kb.solve_conic(A, b, c, cone, solver="auto").x


_LAYERS: dict = {}


def _cvxpy_sparse_qp_layer():
    """A CvxpyLayer whose QP path keeps A and P sparse (n + m = 100, ~2 % full)."""
    if "qp" not in _LAYERS:
        import cvxpy as cp

        k = 20
        x, c, L = cp.Variable(k), cp.Parameter(k), cp.Parameter(k)
        D = np.diff(np.eye(k), axis=0)
        prob = cp.Problem(cp.Minimize(c @ x + 0.5 * cp.sum_squares(cp.multiply(L, x))), [D @ x <= 0.05, x >= -1, x <= 1])
        _LAYERS["qp"] = kb.CvxpyLayer(prob, [c, L], [x])
        assert _LAYERS["qp"]._canon.sparse_a is not None and _LAYERS["qp"]._canon.sparse_p is not None
    return _LAYERS["qp"]


def cvxpy_qp_sparse_call(i):
    c = jnp.sin(jnp.arange(20.0)) + 0.001 * i
    return _cvxpy_sparse_qp_layer()(c, jnp.ones(20))[0]


CALLS = {
    "qp": qp_call,
    "qp_sparse": qp_sparse_call,
    "conic": conic_call,
    "conic_sparse_auto": conic_sparse_auto_call,
    "cvxpy_qp_sparse": cvxpy_qp_sparse_call,
    "nlp": nlp_call,
}


@pytest.mark.parametrize("bridge", sorted(CALLS))
def test_eager_calls_compile_once_and_keep_memory_flat(bridge):
    call = CALLS[bridge]
    for i in range(3):  # warm-up: compile the structure once
        jax.block_until_ready(call(i))
    before = rss_mib()
    with count_compiles() as c:
        for i in range(500):
            jax.block_until_ready(call(i))
    grown = rss_mib() - before
    assert c["n"] == 0, f"{bridge}: {c['n']} compilations in 500 eager calls with new values"
    assert grown < 20.0, f"{bridge}: RSS grew by {grown:.1f} MiB over 500 eager calls"


@pytest.mark.parametrize("bridge", sorted(CALLS))
def test_eager_derivatives_compile_once(bridge):
    call = CALLS[bridge]

    def value(s):
        return jnp.sum(jnp.sin(call_theta(bridge, s)))

    grad = lambda s: jax.grad(value)(s)  # noqa: E731
    jac = lambda s: jax.jacfwd(lambda t: call_theta(bridge, t))(s)  # noqa: E731
    for s in (0.1, 0.2):
        jax.block_until_ready(grad(s))
        jax.block_until_ready(jac(s))
    before = rss_mib()
    with count_compiles() as c:
        for i in range(60):
            jax.block_until_ready(grad(0.1 + 0.001 * i))
            jax.block_until_ready(jac(0.1 + 0.001 * i))
    assert c["n"] == 0, f"{bridge}: {c['n']} compilations in 120 eager derivatives"
    assert rss_mib() - before < 20.0
    del call


def test_host_qp_kkt_solve_eager_compiles_once_and_keeps_memory_flat(host_kkt_solve):
    """The QP backward's host kernel (kktbridge.core._structured, from 300 unknowns on a CPU; forced
    here): eager gradients and Jacobians with new values compile nothing and keep RSS flat (its
    factor cache is bounded)."""
    grad = lambda s: jax.grad(lambda t: jnp.sum(jnp.sin(call_theta("qp", t))))(s)  # noqa: E731
    jac = lambda s: jax.jacfwd(lambda t: call_theta("qp", t))(s)  # noqa: E731
    for s in (0.1, 0.2):
        jax.block_until_ready((grad(s), jac(s)))
    before = rss_mib()
    with count_compiles() as c:
        for i in range(60):
            jax.block_until_ready((grad(0.1 + 0.001 * i), jac(0.1 + 0.001 * i)))
    assert c["n"] == 0, f"{c['n']} compilations in 120 eager derivatives"
    assert rss_mib() - before < 20.0
    assert host_kkt_solve


def call_theta(bridge, s):
    """The bridge's solution as a function of one scalar parameter entering its data."""
    if bridge == "qp":
        P = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
        q = jnp.array([1.0, -2.0, 0.5]) * s
        return kb.solve_qp(P, q, A=jnp.ones((1, 3)), b=jnp.array([1.0]), G=-jnp.eye(3), h=jnp.zeros(3)).x
    if bridge == "qp_sparse":
        P, q, G, h = _sparse_qp_data(0.0)
        return kb.solve_qp(P, q * s, G=G, h=h).x  # s reaches the BCOO solve through q
    if bridge == "conic":
        b = jnp.array([0.3, 1.0, 0.0, 0.0]) + s * jnp.array([1.0, 0.0, 0.0, 0.0])
        return kb.solve_conic(A_CONIC, b, jnp.array([1.0, 2.0]), {"q": [3], "l": 1}).x
    if bridge == "conic_sparse_auto":
        A, b, c, cone = _sparse_lp_data(0.0)
        return kb.solve_conic(A, b * (1 + s), c, cone, solver="auto").x
    if bridge == "cvxpy_qp_sparse":
        return _cvxpy_sparse_qp_layer()(jnp.sin(jnp.arange(20.0)) * (1 + s), jnp.ones(20))[0]
    p = {"t": jnp.array([1.0, 2.0]) * (1 + s), "r": jnp.array(1.0)}
    return kb.solve_nlp(_nlp_f, jnp.zeros(2), p, eq=_nlp_h, ineq=_nlp_g, lower=-5.0, upper=5.0).x


def test_eager_equals_jit_and_cache_is_bounded_and_clearable(monkeypatch):
    from kktbridge.bridges._common import PIPELINE_CACHE

    x_eager = call_theta("qp", 0.3)
    x_jit = jax.jit(lambda s: call_theta("qp", s))(0.3)
    np.testing.assert_array_equal(x_eager, x_jit)
    g_eager = jax.grad(lambda s: jnp.sum(call_theta("nlp", s)))(0.3)
    g_jit = jax.jit(jax.grad(lambda s: jnp.sum(call_theta("nlp", s))))(0.3)
    np.testing.assert_allclose(g_eager, g_jit, rtol=1e-12)
    # A new structure per call (fresh shapes) fills the LRU up to its bound, never beyond.
    kb.clear_caches()
    monkeypatch.setattr(PIPELINE_CACHE, "maxsize", 3)
    for n in range(2, 8):
        kb.solve_qp(jnp.eye(n), jnp.ones(n))
    assert len(PIPELINE_CACHE) == 3
    kb.clear_caches()
    assert len(PIPELINE_CACHE) == 0
    np.testing.assert_array_equal(call_theta("qp", 0.3), x_eager)


def test_custom_root_eager_grad_compiles_once_and_sees_new_data():
    rng = np.random.default_rng(0)
    data = {"X": jnp.asarray(rng.standard_normal((20, 5))), "y": jnp.ones(20)}

    def F(w, lam):
        X, y = data["X"], data["y"]
        return X.T @ (X @ w - y) + lam * w

    @kb.custom_root(F)
    def ridge(init, lam):
        X, y = data["X"], data["y"]
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(5), X.T @ y)

    def closed_form_dw(lam):
        X, y = np.asarray(data["X"]), np.asarray(data["y"])
        M = X.T @ X + lam * np.eye(5)
        return -np.linalg.solve(M, np.linalg.solve(M, X.T @ y))  # d/dλ M⁻¹Xᵀy = -M⁻¹ M⁻¹ Xᵀy

    jac = lambda lam: jax.jacfwd(lambda l: ridge(jnp.zeros(5), l))(lam)  # noqa: E731
    grad = lambda lam: jax.grad(lambda l: jnp.sum(ridge(jnp.zeros(5), l)))(lam)  # noqa: E731
    jac(1.0), grad(1.0)
    with count_compiles() as c:
        for i in range(30):
            np.testing.assert_allclose(jac(1.0 + 0.01 * i), closed_form_dw(1.0 + 0.01 * i), rtol=1e-9)
            grad(1.0 + 0.01 * i)
    assert c["n"] == 0
    # New data closed over by the same functions is used, never a stale compiled constant.
    data["X"] = 2.0 * data["X"]
    np.testing.assert_allclose(jac(1.0), closed_form_dw(1.0), rtol=1e-9)


def test_warm_eager_nlp_calls_never_retrace_user_functions():
    """After warm-up, eager solves and eager jacrev with new values call none of the user's Python
    functions again: every trace (shape probes, oracles, stages) is reused per structure."""
    calls = {"f": 0, "g": 0, "h": 0}

    def f(x, p):
        calls["f"] += 1
        return _nlp_f(x, p)

    def g(x, p):
        calls["g"] += 1
        return _nlp_g(x, p)

    def h(x, p):
        calls["h"] += 1
        return _nlp_h(x, p)

    def x_of(t):
        p = {"t": t, "r": jnp.array(1.0)}
        return kb.solve_nlp(f, jnp.zeros(2), p, eq=h, ineq=g, lower=-5.0, upper=5.0).x

    t0 = jnp.array([1.0, 2.0])
    for _ in range(2):
        jax.block_until_ready(x_of(t0))
        jax.block_until_ready(jax.jacrev(x_of)(t0))
    before = dict(calls)
    for i in range(5):
        jax.block_until_ready(x_of(t0 * (1 + 0.01 * i)))
        jax.block_until_ready(jax.jacrev(x_of)(t0 * (1 + 0.01 * i)))
    assert calls == before, (before, calls)


@pytest.mark.parametrize("mode", ["solve", "jacrev"])
def test_first_nlp_call_background_compilation_compiles_nothing_twice(mode, monkeypatch):
    """A structure's first NLP call compiles IPOPT's oracles in a background thread, to be found in
    ``jax.jit``'s cache by IPOPT's callbacks. Each must be compiled once: as many compilations as
    without the background work -- a key mismatch (e.g. the default device a ``pure_callback``
    sets) would compile them twice -- and the values equal."""
    import kktbridge.core._oracles as oracles_mod

    def first_call():
        kb.clear_caches()
        with count_compiles() as c:
            if mode == "solve":
                out = call_theta("nlp", 0.3)
            else:
                out = jax.jacrev(lambda s: call_theta("nlp", s))(0.3)
        return c["n"], out

    first_call()  # JAX's own eager helpers, compiled once per process
    n_background, out_background = first_call()
    monkeypatch.setattr(oracles_mod, "in_background", lambda work: (lambda: None))
    n_plain, out_plain = first_call()
    assert n_background == n_plain, (n_background, n_plain)
    assert n_background > 0
    np.testing.assert_array_equal(out_background, out_plain)


@contextlib.contextmanager
def compiled_names():
    """Names of the programs XLA compiles inside the block (JAX's compile log)."""
    import logging
    import re

    names: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            m = re.search(r"Finished XLA compilation of (.*?) in ", record.getMessage())
            if m:
                names.append(m.group(1))

    logger, handler = logging.getLogger("jax"), Grab()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles():
            yield names
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("bridge", ["nlp", "qp", "conic"])
def test_first_eager_call_compiles_only_kktbridge_programs(bridge):
    """A structure's first eager call compiles its own stages (and IPOPT's oracles) and nothing
    else: no op-by-op JAX work in the bridge's Python (each such op is an XLA compilation of tens of
    milliseconds on a first call, and a dispatch on every call). Sizes no other test uses, so JAX's
    own caches cannot hide such an op."""
    n = 17
    p = jnp.linspace(0.0, 1.0, n)
    x0, ones_row, one = jnp.zeros(n), jnp.ones((1, n)), jnp.ones(1)
    eye = jnp.eye(n)
    A = jnp.concatenate([-eye, ones_row])
    b = jnp.concatenate([jnp.zeros(n), one])
    c = -p
    calls = {
        "nlp": lambda: kb.solve_nlp(lambda x, q: jnp.sum((x - q) ** 2), x0, p,
                                    ineq=lambda x, q: jnp.sum(x, keepdims=True) - 1.0, lower=-2.0),
        "qp": lambda: kb.solve_qp(eye, c, G=ones_row, h=one),
        "conic": lambda: kb.solve_conic(A, b, c, {"l": n + 1}),
    }
    from kktbridge.core._xla import cpu_compiler_options

    cpu_compiler_options()  # probed once per process (it compiles a scalar function per option)
    kb.clear_caches()
    with compiled_names() as names:
        out = calls[bridge]()
        jax.block_until_ready(out.x)
    assert names, "nothing compiled: the caches were not cleared"
    allowed = {"jit(stage)"} | ({"jit(<lambda>)", "jit(hess)"} if bridge == "nlp" else set())
    assert set(names) <= allowed, names
    np.testing.assert_allclose(float(jnp.sum(out.x)), 1.0, rtol=1e-6)  # the constraint sum(x) <= 1 binds
