r"""Shared type aliases and the typed *structure records* bridges hand to adapters.

Type aliases
------------
:data:`PyTree` names a JAX pytree (nested tuples, lists, dicts, NamedTuples and registered
dataclasses whose leaves are arrays). Python's type system cannot express "a pytree of arrays",
so it stays ``Any`` -- defined here once, so that every signature that takes one says so.

Structure records
-----------------
A bridge call has *data* (arrays that change between calls: they travel to the adapter as one
NumPy dict per instance), *solver settings* (the user's ``**options``: tolerances, iteration
limits) and *structure*: what is fixed for a compiled problem structure and decides shapes --
sizes, the cone, sparsity, and the NLP bridge's compiled oracles. Structure is one frozen record
per problem kind, carried by :class:`~kktbridge.bridges._common.BridgePlan` and handed to the
adapter once per structure through :meth:`Adapter.prepare <kktbridge.adapters.Adapter.prepare>`,
apart from the solver settings (which then hold only the solver's own options).

For the NLP ``min f(x, p) s.t. c_E(x, p) = 0, c_I(x, p) ≤ 0, l ≤ x ≤ u``: ``n = dim x``,
``m_eq = dim c_E``, ``m_ineq = dim c_I``. For the QP ``min ½xᵀPx + qᵀx s.t. Ax = b, Gx ≤ h``:
``n = dim x``, ``m_eq`` rows of ``A``, ``m_ineq`` rows of ``G``. For the conic program
``min cᵀx s.t. Ax + s = b, s ∈ K``: ``n = dim x``, ``m = dim s`` and ``K`` the cone (an SCS cone
dictionary).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, TypeAlias, Union

if TYPE_CHECKING:  # types only: importing these at run time would load JAX, SciPy and the solvers eagerly
    import scipy.sparse
    from jax.experimental.sparse import BCOO
    from jax.typing import ArrayLike

    from kktbridge.core._linear_solve import LinearSolver
    from kktbridge.core._oracles import NLPOracles

__all__ = [
    "PyTree", "ProblemKind", "FailurePolicy", "OnFailure", "LinearSolverArg", "MatrixLike",
    "NLPStructure", "QPStructure", "ConicStructure", "Structure",
]

#: A JAX pytree of arrays (``Any``: the type system cannot say more; see the module docstring).
PyTree: TypeAlias = Any

#: The problem classes adapters serve (``Adapter.kind``).
ProblemKind: TypeAlias = Literal["nlp", "qp", "conic"]

class FailurePolicy(str, enum.Enum):
    """What a bridge does with a failed instance (the ``on_failure=`` argument).

    A ``str`` enum: ``FailurePolicy.NAN == "nan"``, so the plain strings stay accepted everywhere.

    Attributes:
      RAISE: raise :class:`~kktbridge.SolverError` (eager calls; under ``jit``/``vmap`` a runtime
        error carrying it).
      NAN: return NaN values *and* NaN derivatives for the failed instances, status kept.
    """

    RAISE = "raise"
    NAN = "nan"


#: The ``on_failure=`` argument: a :class:`FailurePolicy` or its string value.
OnFailure: TypeAlias = Union[FailurePolicy, Literal["raise", "nan"]]

#: The ``solve=`` argument: a linear solver ``solve(matvec, b) -> x``, a registered name
#: (``"lu"``, ``"cg"``, ... see :mod:`kktbridge.linear_solve`), or ``None`` for the default.
LinearSolverArg: TypeAlias = "LinearSolver | str | None"

#: A matrix argument of the QP and conic bridges: dense (anything ``jnp.asarray`` takes), a
#: ``jax.experimental.sparse.BCOO``, or a SciPy sparse matrix/array.
MatrixLike: TypeAlias = "ArrayLike | BCOO | scipy.sparse.spmatrix | scipy.sparse.sparray"


@dataclass(frozen=True)
class NLPStructure:
    """Static structure of one NLP: sizes and the compiled host oracles.

    Attributes:
      n: number of variables (flat ``x``).
      m_eq: number of equality constraints ``c_E``.
      m_ineq: number of inequality constraints ``c_I`` (bounds ``l ≤ x ≤ u`` excluded: they are data).
      oracles: objective, gradient, constraints, Jacobian and Lagrangian Hessian, compiled once
        per structure (:class:`~kktbridge.core._oracles.NLPOracles`); IPOPT calls them.
    """

    kind: ClassVar[ProblemKind] = "nlp"
    n: int
    m_eq: int
    m_ineq: int
    oracles: "NLPOracles" = field(repr=False)


@dataclass(frozen=True)
class QPStructure:
    """Static structure of one QP: sizes, and whether the matrices arrive in sparse triplets.

    Attributes:
      n: number of variables.
      m_eq: rows of ``A``.
      m_ineq: rows of ``G``.
      sparse: ``True`` when ``P, A, G`` reach the adapter as COO triplets (``P_data``,
        ``P_rows``, ``P_cols``...), ``False`` for dense matrices.
    """

    kind: ClassVar[ProblemKind] = "qp"
    n: int
    m_eq: int
    m_ineq: int
    sparse: bool = False


@dataclass(frozen=True)
class ConicStructure:
    """Static structure of one conic program: sizes and the cone.

    Attributes:
      n: number of variables.
      m: dimension of the slack ``s`` (rows of ``A``).
      cone: the cone ``K`` as an SCS cone dictionary (``{"z": 1, "l": 2, "q": [3]}``); read-only.
      sparse: ``True`` when ``A`` reaches the adapter as COO triplets (``A_data, A_rows, A_cols``).
    """

    kind: ClassVar[ProblemKind] = "conic"
    n: int
    m: int
    cone: Mapping[str, Any]
    sparse: bool = False


#: The structure record of any problem kind.
Structure = Union[NLPStructure, QPStructure, ConicStructure]
