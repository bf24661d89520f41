"""``solve_conic(..., solver="auto")``: the rule, the recorded choice, the retry, and derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import HostSolution, auto, get_adapter
from kktbridge.core._status import Status
from kktbridge.core._types import ConicStructure
from tests._fd import fd4_jacobian
from tests._peers import peer

pytestmark = pytest.mark.usefixtures("_clarabel")


@pytest.fixture
def _clarabel():
    peer("clarabel")


def lp(b):
    """min -x1 - x2 s.t. x1 + 2 x2 <= b0, 3 x1 + x2 <= b1, x >= 0: a nondegenerate vertex."""
    A = jnp.array([[1.0, 2.0], [3.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    return A, jnp.concatenate([b, jnp.zeros(2)]), jnp.array([-1.0, -1.0]), {"l": 4}


def lp_solution(b):
    # Both rows active: [[1, 2], [3, 1]] x = b.
    return np.linalg.solve(np.array([[1.0, 2.0], [3.0, 1.0]]), np.asarray(b))


def socp(r):
    """min x1 + x2 s.t. ||x|| <= r: x = -r (1, 1)/sqrt(2)."""
    A = -jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    return A, jnp.array([r, 0.0, 0.0]), jnp.array([1.0, 1.0]), {"q": [3]}


def test_rule():
    assert auto.choose_conic({"l": 4}) == "clarabel"
    assert auto.choose_conic({"z": 1, "l": 3}) == "clarabel"
    assert auto.choose_conic({"f": 2}) == "clarabel"
    assert auto.choose_conic({"l": 2, "q": [3]}) == "scs"
    assert auto.choose_conic({"s": [2]}) == "scs"
    assert auto.choose_conic({"ep": 1}) == "scs"


def _host(cone, data):
    m, n = data["A"].shape
    adapter = get_adapter("auto", kind="conic").prepare(ConicStructure(n=n, m=m, cone=cone))
    return adapter.solve_batch([data], frozenset(), {})[0]


def test_recorded_choice_per_cone():
    A, b, c, cone = lp(jnp.array([4.0, 6.0]))
    r = _host(cone, {"A": np.asarray(A), "b": np.asarray(b), "c": np.asarray(c)})
    assert r.status is Status.SOLVED and r.native_status.startswith("clarabel: ")
    assert auto.CONIC_SOLVERS[int(r.values["solver"])] == "clarabel"
    A, b, c, cone = socp(1.0)
    r = _host(cone, {"A": np.asarray(A), "b": np.asarray(b), "c": np.asarray(c)})
    assert r.status is Status.SOLVED and r.native_status.startswith("scs: ")
    np.testing.assert_allclose(r.values["x"], -np.ones(2) / np.sqrt(2), atol=1e-8)


def test_solver_side_failure_is_retried_by_the_other_solver(monkeypatch):
    scs = type(get_adapter("scs"))

    def stalls(self, batch, shared, options):
        return [HostSolution({}, Status.MAX_ITER, 100000, "solved (inaccurate - reached max_iters)") for _ in batch]

    monkeypatch.setattr(scs, "solve_batch", stalls)
    A, b, c, cone = socp(1.0)
    r = _host(cone, {"A": np.asarray(A), "b": np.asarray(b), "c": np.asarray(c)})
    assert r.status is Status.SOLVED
    assert r.native_status.startswith("clarabel: ") and "(after scs: " in r.native_status
    np.testing.assert_allclose(r.values["x"], -np.ones(2) / np.sqrt(2), atol=1e-8)


def test_problem_verdicts_are_not_retried():
    # Infeasible: x >= 1 and x <= -1. Clarabel's verdict stands (no SCS attempt).
    A = jnp.array([[-1.0], [1.0]])
    r = _host({"l": 2}, {"A": np.asarray(A), "b": np.array([-1.0, -1.0]), "c": np.array([1.0])})
    assert r.status is Status.INFEASIBLE and "(after" not in r.native_status


def test_values_and_derivatives_match_the_chosen_solver_and_closed_forms():
    b = jnp.array([4.0, 6.0])
    x = lambda b: kb.solve_conic(*lp(b), solver="auto").x  # noqa: E731
    np.testing.assert_allclose(x(b), lp_solution(b), rtol=1e-9)
    J = np.linalg.inv(np.array([[1.0, 2.0], [3.0, 1.0]]))  # dx/db of the active system
    np.testing.assert_allclose(jax.jacrev(x)(b), J, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(jax.jacfwd(x)(b), J, rtol=1e-7, atol=1e-10)
    xs = jax.jit(jax.vmap(x))(jnp.stack([b, b + 0.5]))
    np.testing.assert_allclose(xs[1], lp_solution(b + 0.5), rtol=1e-9)

    y = lambda r: kb.solve_conic(*socp(r), solver="auto").x  # noqa: E731
    r0 = jnp.asarray(1.3)
    np.testing.assert_allclose(y(r0), -1.3 * np.ones(2) / np.sqrt(2), rtol=1e-7)
    np.testing.assert_allclose(jax.jacfwd(y)(r0), -np.ones(2) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(jax.jacrev(y)(r0), np.asarray(fd4_jacobian(y, r0)), rtol=1e-6)


def test_auto_takes_no_solver_options():
    with pytest.raises(ValueError, match="eps_abs.*solver='auto' takes no solver options"):
        kb.solve_conic(*lp(jnp.array([4.0, 6.0])), solver="auto", eps_abs=1e-6)


def test_auto_resolves_by_kind_and_lists_for_both():
    assert get_adapter("auto").kind == "qp"  # the QP default, as before
    assert get_adapter("auto", kind="conic").kind == "conic"
    assert "auto" in kb.available_solvers("conic") and "auto" in kb.available_solvers("qp")
    with pytest.raises(ValueError, match="not nlp"):
        get_adapter("auto", kind="nlp")
