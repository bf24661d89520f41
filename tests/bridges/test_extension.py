"""Solvers are pluggable from outside the package: an ``Adapter`` subclass passed as ``solver=``."""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import Adapter, HostSolution, available_solvers, get_adapter

from tests._fd import fd_jacobian


class ClarabelQP(Adapter):
    """A QP adapter written the way a user would: Clarabel's quadratic objective, no registry entry.

    ``Ax + s = b, s ∈ {0}`` and ``Gx + s = h, s ≥ 0`` give duals ``z = (ν, λ)`` with
    ``Px + q + [A; G]ᵀ z = 0``: exactly kktbridge's convention.
    """

    name = "user-clarabel-qp"
    kind = "qp"
    REQUIRED_MODULES = ("clarabel", "scipy")
    SHARED_SUITE = True  # tests/bridges/test_shared_suite.py runs its QP problems with it too

    def solve_one(self, data: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> HostSolution:
        import clarabel
        import scipy.sparse as sp

        P, q, A, b, G, h = (np.asarray(data[k], dtype=np.float64) for k in "P q A b G h".split())
        m_eq = A.shape[0]
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-12
        cones = [clarabel.ZeroConeT(m_eq), clarabel.NonnegativeConeT(G.shape[0])]
        solver = clarabel.DefaultSolver(
            sp.csc_matrix(np.triu(P)), q, sp.csc_matrix(np.vstack([A, G])), np.concatenate([b, h]), cones, settings
        )
        sol = solver.solve()
        z = np.asarray(sol.z)
        ok = str(sol.status) == "Solved"
        status = kb.Status.SOLVED if ok else kb.Status.FAILED
        return HostSolution({"x": np.asarray(sol.x), "eq_dual": z[:m_eq], "ineq_dual": z[m_eq:]}, status, int(sol.iterations), str(sol.status))


P = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
A = jnp.array([[1.0, 1.0, 1.0]])
B = jnp.array([1.0])
G = -jnp.eye(3)
H = jnp.zeros(3)


def test_user_adapter_gives_the_builtin_values_and_gradients():
    user = ClarabelQP()

    def outs(q, solver):
        s = kb.solve_qp(P, q, A, B, G, H, solver=solver)
        return jnp.concatenate([s.x, s.eq_dual, s.ineq_dual])

    q = jnp.array([1.0, -2.0, 0.5])
    ref = outs(q, "osqp")
    np.testing.assert_allclose(outs(q, user), ref, atol=1e-7)
    J_user = jax.jacrev(lambda q: outs(q, user))(q)
    J_ref = jax.jacrev(lambda q: outs(q, "osqp"))(q)
    np.testing.assert_allclose(J_user, J_ref, atol=1e-7)
    fd = fd_jacobian(lambda qn: np.asarray(outs(jnp.asarray(qn), user)), np.asarray(q))
    np.testing.assert_allclose(J_user, fd, rtol=1e-6, atol=1e-6)
    # and it batches through the same pipeline
    Q = jnp.stack([q, q + 0.1])
    np.testing.assert_allclose(jax.vmap(lambda q: outs(q, user))(Q)[1], outs(q + 0.1, "osqp"), atol=1e-7)


def test_user_adapter_of_the_wrong_kind_is_rejected():
    with pytest.raises(ValueError, match="qp problems, not conic"):
        kb.solve_conic(jnp.eye(2), jnp.ones(2), jnp.ones(2), {"l": 2}, solver=ClarabelQP())
    assert get_adapter(ClarabelQP()).kind == "qp"


def test_available_solvers_omits_uninstalled_libraries(monkeypatch):
    from kktbridge.adapters.scs import SCSAdapter

    assert "scs" in available_solvers("conic")
    monkeypatch.setattr(SCSAdapter, "REQUIRED_MODULES", ("a_module_that_is_not_installed",))
    assert "scs" not in available_solvers()
    assert set(available_solvers()) == {"auto", "clarabel", "daqp", "ipopt", "osqp", "piqp", "proxsuite"}
