"""Typed contracts: ``pyright`` (basic mode) reports no error on the package, and bridges hand
adapters the problem's static structure as a frozen record, apart from the solver options.

The configuration (mode, Python version, files) is ``[tool.pyright]`` in ``pyproject.toml``;
pyright resolves third-party imports in the interpreter running the tests, so the check sees the
same JAX, NumPy and solver packages the tests use. ``pyright[nodejs]`` brings Node as a wheel:
nothing is downloaded when the test runs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import Adapter, HostSolution, get_adapter
from kktbridge.adapters.ipopt import IpoptAdapter
from kktbridge.core._types import NLPStructure, QPStructure
from tests._peers import peer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pyright_reports_no_error_on_the_package():
    peer("pyright")  # a skip naming it, or a failure under KKTBRIDGE_REQUIRE_PEERS (make test)
    proc = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable, "--project", str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"pyright did not run (exit {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}") from None
    assert report["summary"]["filesAnalyzed"] > 0, report["summary"]
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    listing = "\n".join(
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']} ({d.get('rule', '')})" for d in errors
    )
    assert not errors, f"{len(errors)} pyright errors:\n{listing}"
    assert report["summary"]["errorCount"] == 0


# ------------------------------------------------------------------ typed adapter contract
# Bridges hand adapters the problem's static structure (a frozen record per problem kind) through
# Adapter.prepare, apart from the options, which hold only the solver's own settings.

#: (structure, options) each solve_one saw, per recording adapter class.
SEEN: dict[str, list] = {"nlp": [], "qp": []}


class RecordingIpopt(IpoptAdapter):
    """IPOPT as a user subclass would extend it, recording what reaches ``solve_one``."""

    name = "recording-ipopt"

    def solve_one(self, data, options):
        SEEN["nlp"].append((self.structure, dict(options)))
        return super().solve_one(data, options)


class RecordingQP(Adapter):
    """A user QP adapter written against the plain contract (no structure needed): delegates to DAQP."""

    name = "recording-qp"
    kind = "qp"

    def solve_one(self, data, options) -> HostSolution:
        SEEN["qp"].append((self.structure, dict(options)))
        return get_adapter("daqp").solve_one(data, options)


def _projection_onto_sum_one(p, solver):
    # min ‖x - p‖² s.t. Σx = 1: x = p - (Σp - 1)/n, dx/dp = I - 11ᵀ/n (closed forms).
    return kb.solve_nlp(lambda x, p: jnp.sum((x - p) ** 2), jnp.zeros(3), p,
                        eq=lambda x, p: jnp.sum(x)[None] - 1.0, solver=solver, tol=1e-12).x


def test_nlp_structure_reaches_the_adapter_apart_from_its_options():
    SEEN["nlp"].clear()
    user = RecordingIpopt()
    p = jnp.array([0.3, -1.2, 2.0])
    x = _projection_onto_sum_one(p, user)
    np.testing.assert_allclose(x, p - (jnp.sum(p) - 1.0) / 3, rtol=1e-6, atol=1e-9)
    J = jax.jacobian(lambda p: _projection_onto_sum_one(p, user))(p)
    np.testing.assert_allclose(J, np.eye(3) - np.ones((3, 3)) / 3, rtol=1e-6, atol=1e-9)
    structure, options = SEEN["nlp"][0]
    assert options == {"tol": 1e-12}  # only IPOPT's own settings
    assert isinstance(structure, NLPStructure)
    assert (structure.n, structure.m_eq, structure.m_ineq) == (3, 1, 0)
    assert structure.oracles.n == 3 and structure.oracles.m_eq == 1
    with pytest.raises(dataclasses.FrozenInstanceError):  # a record, not a settings bag
        setattr(structure, "n", 4)
    # prepare() works on a copy: the user's instance (and the registry's) stay unprepared
    assert user.structure is None and get_adapter("ipopt").structure is None


def test_ipopt_adapter_without_a_structure_names_the_missing_argument():
    data = {"x0": np.zeros(2), "p": np.zeros(0), "lower": np.full(2, -np.inf), "upper": np.full(2, np.inf)}
    with pytest.raises(ValueError, match="structure"):
        IpoptAdapter().solve_one(data, {})


def test_qp_structure_reaches_a_user_adapter_written_against_the_plain_contract():
    SEEN["qp"].clear()
    P = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    q = jnp.array([1.0, -1.0])
    G, h = -jnp.eye(2), jnp.zeros(2)
    A, b = jnp.ones((1, 2)), jnp.ones(1)
    sol = kb.solve_qp(P, q, A, b, G, h, solver=RecordingQP())
    ref = kb.solve_qp(P, q, A, b, G, h, solver="daqp")
    np.testing.assert_allclose(sol.x, ref.x, rtol=1e-12, atol=1e-12)
    structure, options = SEEN["qp"][0]
    assert structure == QPStructure(n=2, m_eq=1, m_ineq=2, sparse=False)
    assert options == {}
