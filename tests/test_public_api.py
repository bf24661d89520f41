"""Pins the public API: adding or removing a public name must be a deliberate change here."""

import importlib

import kktbridge

EXPECTED = {
    "ConicSolution",
    "CvxpyLayer",
    "Diagnostics",
    "KKTPoint",
    "NLPSolution",
    "QPSolution",
    "SolverError",
    "Status",
    "available_solvers",
    "clear_caches",
    "custom_fixed_point",
    "custom_root",
    "implicit_solution",
    "kkt_residual",
    "linear_solve",
    "optimality",
    "projection",
    "prox",
    "root_jvp",
    "root_vjp",
    "solve_conic",
    "solve_nlp",
    "solve_qp",
}


def test_public_names_are_pinned():
    assert set(kktbridge.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(kktbridge, name), name


def test_submodule_namespaces_define_all():
    for mod in ("linear_solve", "optimality", "projection", "prox"):
        m = importlib.import_module(f"kktbridge.{mod}")
        assert m.__all__, mod
        for name in m.__all__:
            assert hasattr(m, name), f"kktbridge.{mod}.{name}"
        assert not any(n.startswith("_") for n in m.__all__)


def test_importing_kktbridge_does_not_import_solver_libraries():
    import subprocess
    import sys

    code = (
        "import sys, kktbridge; "
        "bad = [m for m in ('cyipopt', 'osqp', 'scs', 'torch', 'clarabel') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
