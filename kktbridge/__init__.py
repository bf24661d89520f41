"""kktbridge: differentiable solutions of external optimization solvers in JAX.

Derivatives of a solver's primal-dual solution come from the implicit function theorem applied to
the problem's optimality conditions; the solver itself is never differentiated.
"""

from kktbridge import linear_solve, optimality, projection, prox
from kktbridge.adapters import available_solvers
from kktbridge.adapters._executor import Executor, ProcessExecutor, RayExecutor, ThreadExecutor, get_executor, use_executor
from kktbridge.bridges._common import Diagnostics, clear_caches
from kktbridge.bridges._conic import ConicSolution, solve_conic
from kktbridge.bridges._cvxpy import CvxpyLayer
from kktbridge.bridges._nlp import NLPSolution, solve_nlp
from kktbridge.bridges._qp import QP_SOLVERS, QPSolution, solve_qp
from kktbridge.core._implicit import custom_fixed_point, custom_root, implicit_solution, root_jvp, root_vjp
from kktbridge.core._kkt import KKTPoint, kkt_residual
from kktbridge.core._status import SolverError, Status
from kktbridge.core._types import FailurePolicy

__version__ = "0.1.0"

__all__ = [
    "ConicSolution",
    "CvxpyLayer",
    "Diagnostics",
    "Executor",
    "KKTPoint",
    "NLPSolution",
    "ProcessExecutor",
    "QPSolution",
    "QP_SOLVERS",
    "RayExecutor",
    "SolverError",
    "Status",
    "FailurePolicy",
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
]
