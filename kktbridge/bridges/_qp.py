r"""``solve_qp``: differentiable convex quadratic programs (OSQP by default).

.. math::  \min_x \tfrac12 x^\top P x + q^\top x \quad\text{s.t.}\quad Ax = b,\; Gx \le h.

Derivatives come from the same KKT residual as :func:`~kktbridge.solve_nlp`
(:mod:`kktbridge.core._kkt`) with ``f = ½xᵀPx + qᵀx``, ``eq = Ax - b``, ``ineq = Gx - h``: this
recovers OptNet's differentiation of QPs, in forward and reverse mode. ``P`` enters only through
its symmetric part ``(P + Pᵀ)/2`` (the solver is given that part too), so derivatives with respect
to ``P`` are those of a function of the symmetric part.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kktbridge.adapters import Adapter, get_adapter
from kktbridge.adapters import auto as _auto
from kktbridge.bridges._common import (
    BridgePlan,
    Diagnostics,
    as_array,
    cast,
    check_on_failure,
    Policy,
    is_concrete,
    options_key,
    run_pipeline,
    structure,
    warn_if_truncated,
)
from kktbridge.bridges._sparse import Coords as _Coords
from kktbridge.bridges._sparse import SparseData
from kktbridge.bridges._sparse import is_sparse as _is_sparse
from kktbridge.bridges._sparse import sparse_arg as _sparse_arg
from kktbridge.core._kkt import KKTPoint, kkt_activity, kkt_residual
from kktbridge.core._structured import QP_KKT, qp_kkt_dense
from kktbridge.core._types import LinearSolverArg, MatrixLike, OnFailure, QPStructure


class QPSolution(NamedTuple):
    """Primal-dual solution of :func:`solve_qp` (every float field differentiable).

    Attributes:
      x: primal solution ``(n,)``.
      eq_dual: multipliers ``ν`` of ``Ax = b`` ``(m_eq,)``.
      ineq_dual: multipliers ``λ ≥ 0`` of ``Gx ≤ h`` ``(m_ineq,)``.
      status: :class:`~kktbridge.Status` code (int32).
      iterations: solver iterations (int32).
      diagnostics: :class:`~kktbridge.Diagnostics` (residual, complementarity margin, weakly
        active count, optional condition number).
      solver: which solver produced the instance (int32): an index into :data:`~kktbridge.QP_SOLVERS`
        (``solver="auto"`` picks per batch), ``-1`` for an adapter not listed there or for an
        instance ``"auto"`` could not solve. :attr:`solver_name` gives the name.
    """

    x: jax.Array
    eq_dual: jax.Array
    ineq_dual: jax.Array
    status: jax.Array
    iterations: jax.Array
    diagnostics: Diagnostics
    solver: jax.Array

    @property
    def solver_name(self) -> "str | list":
        """Name of the solver that produced a concrete (eager) solution; nested lists for a batch."""
        names = np.vectorize(lambda i: QP_SOLVERS[i] if 0 <= i < len(QP_SOLVERS) else "unknown", otypes=[object])
        out = names(np.asarray(self.solver))
        return out.item() if out.ndim == 0 else out.tolist()


#: The QP solvers ``solver="auto"`` chooses from; :attr:`QPSolution.solver` indexes this tuple.
QP_SOLVERS: tuple[str, ...] = _auto.SOLVERS


def _qp_objective(x, data):
    P, q = data[0], data[1]
    return 0.5 * jnp.vdot(x, 0.5 * (P + P.T) @ x) + jnp.vdot(q, x)


def _qp_eq(x, data):
    return data[2] @ x - data[3]


def _qp_ineq(x, data):
    # h_i = +inf gives a -inf row, which the KKT residual treats as an absent constraint.
    return data[4] @ x - data[5]


#: One residual for every QP (P, q, A, b, G, h enter as arguments, so it is built once).
_QP_KKT = kkt_residual(_qp_objective, _qp_eq, _qp_ineq)
_QP_CHECK = kkt_activity(
    _qp_objective, _qp_eq, _qp_ineq, row_norms=lambda x, data: jnp.where(jnp.isfinite(data[5]), jnp.linalg.norm(data[4], axis=1), 0.0)
)


def _qp_kkt_blocks(z: KKTPoint, data, active: jax.Array) -> tuple:
    """``∂_z F`` of :data:`_QP_KKT` in closed form, as the blocks of
    :func:`kktbridge.core._structured.qp_kkt_dense`: ``(P_s, A, G, d, f)`` with ``P_s = (P + Pᵀ)/2``,
    ``d`` the active rows (``kkt_activity``) and ``f`` the rows with a finite ``h`` (an absent row,
    ``h_i = +inf``, is constant in the residual). The backward solves with them by a Schur complement
    (:class:`~kktbridge.core._structured.QPKKTFormat`) instead of ``n + m`` JVPs and a dense LU.
    ``G`` is passed unmasked: under ``vmap`` over instances with a shared ``G`` and batched ``h``,
    a masked copy would be batched and every factorisation would be repeated per instance.
    """
    P, _, A, _, G, h = data
    d = (active > 0.5).astype(P.dtype)
    return 0.5 * (P + P.T), A, G, d, jnp.isfinite(h).astype(P.dtype)


def _qp_kkt_matrix(z: KKTPoint, data, active: jax.Array) -> jax.Array:
    """The dense KKT matrix ``∂_z F`` (flat order ``x, ν, λ``) of :func:`_qp_kkt_blocks`."""
    return qp_kkt_dense(_qp_kkt_blocks(z, data, active))


def _validate_sparse(P, q, A, b, G, h):
    """Sparse inputs: ``(P_data, q, A_data, b, G_data, h)`` and the three static patterns."""
    warn_if_truncated("q", q)
    q = as_array("q", q, ndim=1)
    n = q.shape[0]
    if (A is None) != (b is None):
        raise ValueError("A, b: give both (equality constraints Ax = b) or neither")
    if (G is None) != (h is None):
        raise ValueError("G, h: give both (inequality constraints Gx <= h) or neither")
    dtype = jnp.result_type(q, jnp.asarray(P.data) if hasattr(P, "data") else P)
    P_data, P_c = _sparse_arg("P", P, (n, n), dtype)
    A_data, A_c = _sparse_arg("A", A, (None, n), dtype)
    G_data, G_c = _sparse_arg("G", G, (None, n), dtype)
    b = as_array("b", b, shape=(A_c.shape[0],)) if b is not None else jnp.zeros((0,), dtype)
    h = as_array("h", h, shape=(G_c.shape[0],), allow_inf=True) if h is not None else jnp.zeros((0,), dtype)
    if is_concrete(P_data):
        import scipy.sparse as sp

        Ps = sp.coo_matrix((np.asarray(P_data, np.float64), (P_c.rows, P_c.cols)), shape=P_c.shape).tocsr()
        asym = abs(Ps - Ps.T).max() if Ps.nnz else 0.0
        if asym > 1e-8 * max(1.0, abs(Ps).max() if Ps.nnz else 0.0):
            raise ValueError("P: expected a symmetric matrix (P == P.T); pass the symmetric part (P + P.T) / 2")
    args = tuple(t.astype(dtype) for t in (P_data, q, A_data, b, G_data, h))
    return args, (P_c, A_c, G_c)


def _sparse_functions(coords: tuple[_Coords, _Coords, _Coords]):
    """Objective, constraints and row norms of a sparse QP (data = ``P_data, q, A_data, b, G_data, h``)."""
    P_c, A_c, G_c = coords

    def objective(x, data):
        # ∇(½xᵀPx) = ½(P + Pᵀ)x: the symmetric part, as in the dense path.
        return 0.5 * jnp.vdot(x, P_c.matvec(data[0], x)) + jnp.vdot(data[1], x)

    def eq(x, data):
        return A_c.matvec(data[2], x) - data[3]

    def ineq(x, data):
        return G_c.matvec(data[4], x) - data[5]

    def row_norms(x_flat, data):
        return jnp.where(jnp.isfinite(data[5]), G_c.row_norms(data[4]), 0.0)

    return objective, eq, ineq, row_norms


def _sparse_kkt_solver(coords: tuple[_Coords, _Coords, _Coords]):
    """Sparse LU for the KKT system of a sparse QP (pattern of ``[[P, Aᵀ, Gᵀ], [A, 0, 0], [G, 0, I]]``)."""
    from kktbridge.core import _sparsity

    if not _sparsity.available():
        return None  # the dense default (GMRES above its size limit); `pip install kktbridge[sparse]`
    P_c, A_c, G_c = coords
    n, p, m = P_c.shape[0], A_c.shape[0], G_c.shape[0]
    rows = np.concatenate([P_c.rows, A_c.rows.astype(np.int64) + n, G_c.rows.astype(np.int64) + n + p])
    cols = np.concatenate([P_c.cols, A_c.cols, G_c.cols])
    return _sparsity.SparseLUSolver(rows, cols, n + p + m)


def _validate(P, q, A, b, G, h, dtype=None):
    warn_if_truncated("P", P)
    P = as_array("P", P, ndim=2)
    n = P.shape[0]
    if n == 0:
        raise ValueError("P: expected at least one variable, got a (0, 0) matrix")
    if P.shape != (n, n):
        raise ValueError(f"P: expected a square (n, n) matrix, got shape {tuple(P.shape)}")
    q = as_array("q", q, shape=(n,))
    if is_concrete(P):
        Pn = np.asarray(P)
        if not np.allclose(Pn, Pn.T, rtol=1e-8, atol=1e-10 * max(1.0, np.abs(Pn).max())):
            raise ValueError("P: expected a symmetric matrix (P == P.T); pass the symmetric part (P + P.T) / 2")
    if (A is None) != (b is None):
        raise ValueError("A, b: give both (equality constraints Ax = b) or neither")
    if (G is None) != (h is None):
        raise ValueError("G, h: give both (inequality constraints Gx <= h) or neither")
    dtype = jnp.result_type(P, q)
    # Absent constraint groups as NumPy: an empty jnp array is an eager op per call (and a compile).
    if A is None:
        A, b = np.zeros((0, n), dtype), np.zeros((0,), dtype)
    else:
        A = as_array("A", A, shape=(None, n))
        b = as_array("b", b, shape=(A.shape[0],))
    if G is None:
        G, h = np.zeros((0, n), dtype), np.zeros((0,), dtype)
    else:
        G = as_array("G", G, shape=(None, n))
        h = as_array("h", h, shape=(G.shape[0],), allow_inf=True)
    return tuple(cast(t, dtype) for t in (P, q, A, b, G, h))


def _qp_plan(adapter, n, m_eq, m_ineq, dtype, options, policy: Policy, warm: bool, coords=None) -> BridgePlan:
    out_spec = {
        "x": jax.ShapeDtypeStruct((n,), dtype),
        "eq_dual": jax.ShapeDtypeStruct((m_eq,), dtype),
        "ineq_dual": jax.ShapeDtypeStruct((m_ineq,), dtype),
    }
    fixed = QP_SOLVERS.index(adapter.name) if adapter.name in QP_SOLVERS else -1
    if isinstance(adapter, _auto.AutoQPAdapter):
        # The choice travels as a float so that a failed instance's NaN fill maps to -1.
        out_spec["solver"] = jax.ShapeDtypeStruct((), dtype)

    if coords is None:
        residual, check, jacobian = _QP_KKT, _QP_CHECK, _qp_kkt_blocks
    else:
        objective, eq, ineq, row_norms = _sparse_functions(coords)
        residual, check, jacobian = kkt_residual(objective, eq, ineq), kkt_activity(objective, eq, ineq, row_norms), None
        if policy.solve is None:
            policy = policy._replace(solve=_sparse_kkt_solver(coords))

    def host_data(args, extra):
        if coords is None:
            data: dict[str, jax.Array] = dict(zip("P q A b G h".split(), args))
        else:
            data = dict(zip("P_data q A_data b G_data h".split(), args))
            for name, c in zip("PAG", coords):
                data[name + "_rows"], data[name + "_cols"] = jnp.asarray(c.rows), jnp.asarray(c.cols)
        if warm:
            data["x0"], data["y0"] = extra
        return data

    def to_point(values):
        return KKTPoint(values["x"], values["eq_dual"], values["ineq_dual"])

    def fallback(args, extra):
        return KKTPoint(jnp.zeros((n,), dtype), jnp.zeros((m_eq,), dtype), jnp.zeros((m_ineq,), dtype))

    def finish(z, values, args, status, iters, diag):
        if "solver" in values:
            chosen = jnp.where(jnp.isnan(values["solver"]), -1, values["solver"]).astype(jnp.int32)
        else:
            chosen = jnp.full(jnp.shape(status), fixed, jnp.int32)
        return QPSolution(z.x, z.eq_dual, z.ineq_dual, status, iters, diag, chosen)

    return BridgePlan(
        adapter=adapter,
        out_spec=out_spec,
        options=options,
        host_data=host_data,
        to_point=to_point,
        check=lambda z, args: check(z, args),
        residual=lambda z, args, active: residual(z, args, active=active),
        jacobian=jacobian,
        jacobian_format=QP_KKT if jacobian is not None else None,
        fallback=fallback,
        finish=finish,
        policy=policy,
        structure=QPStructure(n, m_eq, m_ineq, sparse=coords is not None),
    )


def solve_qp(
    P: "MatrixLike | SparseData",
    q: ArrayLike,
    A: "MatrixLike | SparseData | None" = None,
    b: Optional[ArrayLike] = None,
    G: "MatrixLike | SparseData | None" = None,
    h: Optional[ArrayLike] = None,
    *,
    solver: "str | Adapter" = "auto",
    solve: LinearSolverArg = None,
    on_failure: OnFailure = "raise",
    warm_start: Optional[tuple[ArrayLike, ArrayLike]] = None,
    accept_inaccurate: bool = False,
    residual_tol: Optional[float] = None,
    diagnose: bool = False,
    **options: Any,
) -> QPSolution:
    """Solve ``min ½xᵀPx + qᵀx s.t. Ax = b, Gx ≤ h``, differentiably in every argument.

    ``x``, ``eq_dual`` and ``ineq_dual`` are differentiable with respect to ``P, q, A, b, G, h``
    in forward and reverse mode, to any order, under ``jit`` and ``vmap`` (a batch is solved in
    one host call; with ``P``, ``A``, ``G`` unbatched OSQP factorises once per thread and only
    updates vectors). Eager calls compile once per problem structure (shapes, dtypes, solver,
    options) and are then as fast as jitted ones.

    Args:
      P: ``(n, n)`` symmetric positive semidefinite matrix.
      q: ``(n,)`` linear cost.
      A, b: equality constraints ``(m_eq, n)``, ``(m_eq,)``, or ``None``.
      G, h: inequality constraints ``(m_ineq, n)``, ``(m_ineq,)``, or ``None``; ``h`` may hold ``+inf``.
      solver: ``"auto"`` (default: DAQP for dense or small problems, OSQP for large sparse ones,
        chosen per batch on the host; see ``docs/solvers.md``), an adapter name (``"osqp"``,
        ``"daqp"``, ``"proxsuite"``, ``"piqp"``) or an :class:`~kktbridge.adapters.Adapter`
        instance. ``QPSolution.solver`` says which solver ran.
      solve: linear solver for the KKT system; default dense LU with an SVD minimum-norm
        fallback when singular (redundant constraints), GMRES above 2048 unknowns.
      on_failure: ``"raise"`` (:class:`~kktbridge.SolverError`) or ``"nan"`` (NaN values and NaN
        derivatives for failed instances; ``status`` says why).
      warm_start: optional ``(x0, y0)`` with ``y0 = (ν, λ)`` stacked.
      accept_inaccurate: also accept solutions the solver flags ``SOLVED_INACCURATE``.
      residual_tol: largest relative KKT residual accepted (default ``100·sqrt(eps)`` of the dtype);
        above it the status is ``RESIDUAL_TOO_LARGE``.
      diagnose: also compute the condition number of the KKT matrix into ``diagnostics``.
      **options: settings of the named solver (OSQP: ``eps_abs``, ``eps_rel``, ``max_iter``,
        ``polishing``...; ``"auto"`` takes none); unknown names raise ``ValueError`` before any solve.

    Returns:
      :class:`QPSolution`.

    Example::

        sol = kb.solve_qp(P, q, G=G, h=h)
        dx_dq = jax.jacobian(lambda q: kb.solve_qp(P, q, G=G, h=h).x)(q)
    """
    check_on_failure(on_failure)
    adapter = get_adapter(solver, kind="qp")
    coords = None
    if any(_is_sparse(M) for M in (P, A, G)):
        args, coords = _validate_sparse(P, q, A, b, G, h)
        n, m_eq, m_ineq = coords[0].shape[0], coords[1].shape[0], coords[2].shape[0]
    else:
        args = _validate(P, q, A, b, G, h)
        n, m_eq, m_ineq = args[0].shape[0], args[2].shape[0], args[4].shape[0]
    P, q, A, b, G, h = args
    extra: tuple = ()
    if warm_start is not None:
        if not isinstance(warm_start, (tuple, list)) or len(warm_start) != 2:
            raise ValueError("warm_start: expected a tuple (x0, y0)")
        extra = (
            as_array("warm_start[0]", warm_start[0], shape=(n,)).astype(q.dtype),
            as_array("warm_start[1]", warm_start[1], shape=(m_eq + m_ineq,)).astype(q.dtype),
        )
    policy = Policy.make(q.dtype, solve, accept_inaccurate, residual_tol, diagnose)
    pattern = None if coords is None else tuple(c.key() for c in coords)
    key = ("qp", solver, structure(args, extra), pattern, options_key(options), policy.key())

    def build() -> BridgePlan:
        adapter.validate_options(options)
        return _qp_plan(adapter, n, m_eq, m_ineq, q.dtype, dict(options), policy, bool(extra), coords)

    return run_pipeline(key, build, args, extra, on_failure)
