from kktbridge.core._implicit import custom_fixed_point, custom_root, root_jvp, root_vjp, implicit_solution
from kktbridge.core._status import Status, SolverError
from kktbridge.bridges._nlp import solve_nlp, NLPSolution
from kktbridge.bridges._qp import solve_qp, QPSolution
