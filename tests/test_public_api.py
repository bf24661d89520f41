"""Pins the public API: adding or removing a public name must be a deliberate change here."""

import importlib

import kktbridge

EXPECTED = {
    "ConicSolution",
    "CvxpyLayer",
    "Diagnostics",
    "Executor",
    "FailurePolicy",
    "KKTPoint",
    "NLPSolution",
    "ProcessExecutor",
    "QPSolution",
    "QP_SOLVERS",
    "RayExecutor",
    "SolverError",
    "Status",
    "ThreadExecutor",
    "available_solvers",
    "clear_caches",
    "custom_fixed_point",
    "custom_root",
    "get_executor",
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
    "use_executor",
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


# JAXopt's public names that kktbridge keeps (issue 15): a JAXopt user's imports must keep working.
JAXOPT_NAMES = {
    "linear_solve": {
        "solve_lu", "solve_cholesky", "solve_inv", "solve_qr", "solve_cg", "solve_normal_cg", "solve_gmres",
        "solve_bicgstab", "solve_iterative_refinement",
    },
    "projection": {
        "projection_non_negative", "projection_box", "projection_hypercube", "projection_simplex",
        "projection_sparse_simplex", "projection_l1_sphere", "projection_l1_ball", "projection_l2_sphere",
        "projection_l2_ball", "projection_linf_ball", "projection_hyperplane", "projection_halfspace",
        "projection_affine_set", "projection_polyhedron", "projection_box_section", "projection_transport",
        "projection_birkhoff", "kl_projection_transport", "kl_projection_birkhoff", "isotonic_l2_pav",
    },
    "prox": {
        "prox_none", "prox_lasso", "prox_non_negative_lasso", "prox_elastic_net", "prox_group_lasso", "prox_ridge",
        "prox_non_negative_ridge", "make_prox_from_projection",
    },
}


def test_jaxopt_names_are_exported():
    for mod, names in JAXOPT_NAMES.items():
        m = importlib.import_module(f"kktbridge.{mod}")
        assert names <= set(m.__all__), (mod, sorted(names - set(m.__all__)))
    for name in ("custom_root", "custom_fixed_point", "root_jvp", "root_vjp"):
        assert name in kktbridge.__all__
    from kktbridge.core import _linear_solve

    for helper in ("_materialize_array", "_make_rmatvec", "_normal_matvec"):  # reached by JAXopt's tests
        assert callable(getattr(_linear_solve, helper))
