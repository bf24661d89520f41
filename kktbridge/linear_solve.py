"""Linear solvers for the implicit-differentiation systems ``A x = b``.

Each is called as ``solve(matvec, b, **options) -> x`` on pytrees and can be passed (or named) as
the ``solve=`` argument of :func:`kktbridge.custom_root`, :func:`kktbridge.custom_fixed_point` and
the bridges. Direct: :func:`solve_lu`, :func:`solve_cholesky`, :func:`solve_qr`, :func:`solve_inv`,
:func:`solve_lstsq` (minimum-norm); matrix-free: :func:`solve_cg`, :func:`solve_normal_cg`,
:func:`solve_gmres`, :func:`solve_bicgstab`; :func:`solve_iterative_refinement` around any of them;
default: :func:`solve_auto` (dense LU with SVD fallback up to ``DENSE_MAX_SIZE`` unknowns, GMRES
beyond). :func:`resolve_solver` turns a name into a solver.
"""

from kktbridge.core._linear_solve import (
    DENSE_MAX_SIZE,
    LinearSolver,
    resolve_solver,
    solve_auto,
    solve_bicgstab,
    solve_cg,
    solve_cholesky,
    solve_gmres,
    solve_inv,
    solve_iterative_refinement,
    solve_lstsq,
    solve_lu,
    solve_normal_cg,
    solve_qr,
)

__all__ = [
    "solve_auto",
    "solve_lu",
    "solve_cholesky",
    "solve_qr",
    "solve_inv",
    "solve_lstsq",
    "solve_cg",
    "solve_normal_cg",
    "solve_gmres",
    "solve_bicgstab",
    "solve_iterative_refinement",
    "LinearSolver",
    "DENSE_MAX_SIZE",
    "resolve_solver",
]
