r"""``solve_nlp``: differentiable nonlinear programs (IPOPT by default).

Problem:

.. math::  \min_x f(x, p) \quad \text{s.t.}\quad h(x, p) = 0,\; g(x, p) \le 0,\; l \le x \le u.

The solver returns a KKT point ``(x*, ν*, λ*, z_L*, z_U*)``. Its derivatives with respect to
``p``, ``l`` and ``u`` come from the implicit function theorem applied to the KKT residual of
:mod:`kktbridge.core._kkt`, with the bounds written as inequalities ``x - u ≤ 0`` and ``l - x ≤ 0``
(infinite bounds are inactive rows). They are valid where the solution is a strict local minimum
satisfying the second-order sufficient conditions (nonconvex problems included). At a weakly
active constraint the derivative returned is the one-sided derivative that keeps that constraint
inactive (see :func:`kktbridge.core._kkt.complementarity`); where the KKT system is singular
(redundant constraints, LICQ failure) it is the minimum-norm one.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from kktbridge.adapters import Adapter, get_adapter
from kktbridge.bridges._common import (
    BridgePlan,
    Diagnostics,
    LRUCache,
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
from kktbridge.core._kkt import KKTPoint, kkt_activity, kkt_residual
from kktbridge.core._types import LinearSolverArg, NLPStructure, OnFailure, PyTree


class NLPSolution(NamedTuple):
    """Primal-dual solution of :func:`solve_nlp` (a pytree; every float field is differentiable).

    Attributes:
      x: primal solution (same pytree structure as ``x0``).
      eq_dual: multipliers ``ν`` of ``eq(x, p) = 0`` (shape ``(m_eq,)``).
      ineq_dual: multipliers ``λ ≥ 0`` of ``ineq(x, p) ≤ 0`` (shape ``(m_ineq,)``).
      lower_dual: multipliers ``z_L ≥ 0`` of ``x ≥ lower`` (flat, shape ``(n,)``).
      upper_dual: multipliers ``z_U ≥ 0`` of ``x ≤ upper`` (flat, shape ``(n,)``).
      objective: ``f(x*, p)``.
      status: :class:`~kktbridge.Status` code (int32).
      iterations: solver iterations (int32).
      diagnostics: :class:`~kktbridge.Diagnostics` (KKT residual, complementarity margin and
        weakly active count over inequality and bound rows, optional condition number).
    """

    x: PyTree
    eq_dual: jax.Array
    ineq_dual: jax.Array
    lower_dual: jax.Array
    upper_dual: jax.Array
    objective: jax.Array
    status: jax.Array
    iterations: jax.Array
    diagnostics: Diagnostics


_ORACLE_CACHE: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
_ORACLE_LOCK = threading.Lock()
_ORACLE_CACHE_SIZE = 128


#: Output shapes of user functions per (function, argument structure): ``jax.eval_shape`` traces
#: the function on every call (measured: ~0.4 ms of an eager NLP ``jacrev`` for three functions).
_SHAPE_CACHE = LRUCache(512)


def clear_oracle_cache() -> None:
    """Forget the compiled IPOPT oracles and the output shapes of every problem structure."""
    with _ORACLE_LOCK:
        _ORACLE_CACHE.clear()
    _SHAPE_CACHE.clear()


def _out_shape(name: str, fun: Callable, x0, params) -> Any:
    """``jax.eval_shape(fun, x0, params)``, cached; a failing call raises ``ValueError`` naming ``name``."""
    def trace() -> Any:
        try:
            return jax.eval_shape(fun, x0, params)
        except Exception as e:
            raise ValueError(f"{name}: calling {name}(x0, params) failed: {e}") from e

    try:
        key = (fun, structure(x0, params))
        hash(key)
    except TypeError:  # an unhashable callable object: trace every time
        return trace()
    return _SHAPE_CACHE.get_or_build(key, trace)


def _oracles(objective, eq, ineq, x0, params, m_eq, m_ineq, sparse):
    """Compiled host oracles, cached per problem structure (functions + shapes + layout), not per call."""
    from kktbridge.core._oracles import NLPOracles

    x_flat, unravel_x = ravel_pytree(x0)
    p_flat, unravel_p = ravel_pytree(params)
    struct = lambda t: (jax.tree_util.tree_structure(t), tuple((jnp.shape(l), jnp.result_type(l)) for l in jax.tree_util.tree_leaves(t)))  # noqa: E731
    key = (objective, eq, ineq, struct(x0), struct(params), sparse)
    with _ORACLE_LOCK:
        if key in _ORACLE_CACHE:
            _ORACLE_CACHE.move_to_end(key)
            return _ORACLE_CACHE[key]
    # Pattern detection only reads shapes and dtypes; concrete zeros keep outer tracers out of it.
    # The host hands IPOPT's oracles p in x's dtype (see host_data).
    x_example = np.zeros(x_flat.shape, x_flat.dtype)
    p_example = np.zeros(p_flat.shape, x_flat.dtype)
    oracles = NLPOracles(objective, eq, ineq, unravel_x, unravel_p, m_eq, m_ineq, x_flat.shape[0], sparse=sparse,
                         x_example=x_example, p_example=p_example)
    oracles.warm_up(p_flat.shape[0])
    with _ORACLE_LOCK:
        _ORACLE_CACHE[key] = oracles
        if len(_ORACLE_CACHE) > _ORACLE_CACHE_SIZE:
            _ORACLE_CACHE.popitem(last=False)
    return oracles


def _kkt_pattern(oracles, has_upper: bool, has_lower: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Pattern of ``∂F/∂z`` for the KKT residual of :func:`solve_nlp` in flat ``z = (x, ν, λ)``.

    ``F = (∇ₓL, h, φ)`` with ``λ = (λ_ineq, λ_upper, λ_lower)`` gives the blocks
    ``[[∇²L, J_hᵀ, J_gᵀ, I, -I], [J_h, 0, 0, 0, 0], [J_g, 0, D, 0, 0], [I, 0, 0, D, 0], [-I, 0, 0, 0, D]]``
    (``D`` diagonal: the rows of inactive constraints); constraint ``i`` of ``c = (h, g)`` is row
    and column ``n + i``. Returns one triangle per off-diagonal block (the solver symmetrises
    and adds the diagonal), and the number of unknowns.
    """
    n, m = oracles.n, oracles.m
    rows = [oracles.hess_full_rows, n + oracles.jac_rows]
    cols = [oracles.hess_full_cols, oracles.jac_cols]
    idx = np.arange(n)
    offset = n + m
    for present in (has_upper, has_lower):
        if present:
            rows.append(offset + idx)
            cols.append(idx)
            offset += n
    return np.concatenate(rows), np.concatenate(cols), offset


def _sparse_row_norms(oracles, ineq_all, unravel_x, dtype, n_bounds: int) -> Callable:
    """``‖∇gᵢ‖`` of every inequality row (user rows, then bound rows) from the colored Jacobian.

    The activity rule needs these norms; the dense ``jacfwd`` of ``(m_ineq + bounds) × n`` rows is
    what the sparse path must avoid. Bound rows ``±(x - b)`` have norm 1; absent (``-inf``) rows 0.
    """
    m_eq, m_ineq = oracles.m_eq, oracles.m_ineq
    sel = np.flatnonzero(oracles.jac_rows >= m_eq)
    seg = jnp.asarray(oracles.jac_rows[sel] - m_eq)

    def row_norms(x_flat, theta):
        parts = []
        if m_ineq:
            _, values = oracles.c_jac(x_flat, ravel_pytree(theta[0])[0].astype(dtype))
            parts.append(jnp.sqrt(jax.ops.segment_sum(values[sel] ** 2, seg, num_segments=m_ineq)))
        parts.append(jnp.ones((n_bounds,), dtype))
        g = ineq_all(unravel_x(x_flat), theta)
        return jnp.where(g == -jnp.inf, 0.0, jnp.concatenate(parts))

    return row_norms


def _constraint_size(name: str, fun: Optional[Callable], x0, params) -> int:
    if fun is None:
        return 0
    if not callable(fun):
        raise ValueError(f"{name}: expected a callable {name}(x, params) or None, got {type(fun).__name__}")
    out = _out_shape(name, fun, x0, params)
    if not hasattr(out, "shape") or len(out.shape) > 1:
        raise ValueError(f"{name}: must return a scalar or 1-D array, got {out}")
    return int(np.prod(out.shape, dtype=int))


def _bound(name: str, value, n: int, fill: float, dtype) -> "jax.Array | np.ndarray":
    # NumPy where the value is concrete: an eager jnp op per bound costs a dispatch on every call
    # and an XLA compilation on the first (tens of ms).
    if value is None:
        return np.full((n,), fill, dtype)
    if isinstance(value, jax.Array):  # arrays and tracers
        arr = cast(value, dtype)
    elif any(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(value)):
        arr = jnp.asarray(value, dtype=dtype)  # e.g. a list holding a traced scalar
    else:
        try:
            arr = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: expected a scalar or an array of numbers, got {type(value).__name__} ({e})") from None
    if arr.ndim == 0:
        arr = np.full((n,), arr, dtype) if is_concrete(arr) else jnp.full((n,), arr, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or an array with {n} entries (one per variable), got shape {arr.shape}")
    if is_concrete(arr):
        a = np.asarray(arr)
        if np.isnan(a).any():
            raise ValueError(f"{name}: contains NaN at index {int(np.argwhere(np.isnan(a))[0, 0])}")
        # A lower bound of +inf (or an upper bound of -inf) admits no point: reject, never "solve".
        wrong = np.inf if fill < 0 else -np.inf
        if (a == wrong).any():
            raise ValueError(f"{name}: contains {wrong} at index {int(np.argwhere(a == wrong)[0, 0])}, which no x satisfies")
    return arr


def solve_nlp(
    objective: Callable[[PyTree, PyTree], jax.Array],
    x0: PyTree,
    params: PyTree,
    *,
    eq: Optional[Callable[[PyTree, PyTree], jax.Array]] = None,
    ineq: Optional[Callable[[PyTree, PyTree], jax.Array]] = None,
    lower: Optional[ArrayLike] = None,
    upper: Optional[ArrayLike] = None,
    solver: "str | Adapter" = "ipopt",
    solve: LinearSolverArg = None,
    on_failure: OnFailure = "raise",
    accept_inaccurate: bool = False,
    residual_tol: Optional[float] = None,
    diagnose: bool = False,
    sparse: Optional[bool] = None,
    **options: Any,
) -> NLPSolution:
    """Solve ``min f(x, p) s.t. eq(x, p) = 0, ineq(x, p) ≤ 0, lower ≤ x ≤ upper``, differentiably.

    Every float field of the result is differentiable with respect to ``params``, ``lower`` and
    ``upper`` in forward and reverse mode, to any order, under ``jit`` and ``vmap`` (a ``vmap``-ed
    batch is solved in one host call on a thread pool). ``x0`` only initialises the solver
    (its derivative is zero).

    Args:
      objective: ``f(x, params) -> scalar``, a JAX function (twice differentiable in ``x``).
      x0: initial point; any pytree of float arrays. ``x`` in the solution has its structure.
      params: any pytree of arrays passed to every function.
      eq: ``eq(x, params) -> (m_eq,)`` equality constraints, or ``None``.
      ineq: ``ineq(x, params) -> (m_ineq,)`` inequality constraints ``≤ 0``, or ``None``.
      lower, upper: bounds on the flattened ``x`` (scalar or ``(n,)``; ``±inf`` for none).
      solver: adapter name (``"ipopt"``).
      solve: linear solver for the KKT system (name or callable); default dense LU with an SVD
        minimum-norm fallback for singular systems, GMRES above 2048 unknowns.
      on_failure: ``"raise"`` (default) raises :class:`~kktbridge.SolverError` when the solver
        does not report success; ``"nan"`` returns NaNs and the status instead (use it under
        ``jit``/``vmap`` to handle failures in-graph).
      accept_inaccurate: also accept solutions the solver flags ``SOLVED_INACCURATE`` (IPOPT's
        "solved to acceptable level").
      residual_tol: largest relative KKT residual accepted (default ``100·sqrt(eps)`` of the dtype);
        above it the status is ``RESIDUAL_TOO_LARGE``.
      diagnose: also compute the condition number of the KKT matrix into ``diagnostics`` (dense: not
        available on the sparse path above 2048 KKT unknowns).
      sparse: ``True`` detects the sparsity patterns of the constraint Jacobian and Lagrangian
        Hessian once per problem structure, gives IPOPT sparse oracles evaluated by colored
        JVPs/HVPs, and differentiates through a sparse LU of the KKT matrix (``O(nnz)`` memory; see
        :mod:`kktbridge.core._sparsity`). ``False`` keeps everything dense. ``None`` (default)
        chooses sparse from 64 variables (``_sparsity.SPARSE_MIN_SIZE``) when the detected KKT pattern
        fills at most 5% of the dense matrix. An explicit ``solve`` is still used for the derivative on either path.
      **options: passed to the solver (for IPOPT: ``tol``, ``max_iter``, ``print_level``,
        ``hessian_approximation``, ...). Defaults: ``tol=1e-10`` (``1e-5`` for float32 data),
        ``print_level=0``. Unknown or ill-typed options raise ``ValueError`` before any solve.

    Returns:
      :class:`NLPSolution`.

    Functions are compiled once per problem structure (the function objects, shapes, dtypes,
    bounds given, solver and options) and cached: pass the same function objects across calls
    (not fresh lambdas) so that eager calls reuse the compiled oracles and derivative.
    """
    if not callable(objective):
        raise ValueError(f"objective: expected a callable objective(x, params), got {type(objective).__name__}")
    check_on_failure(on_failure)
    adapter = get_adapter(solver, kind="nlp")
    x0_flat, unravel_x = ravel_pytree(x0)
    if x0_flat.size == 0:
        raise ValueError("x0: expected at least one variable, got an empty pytree")
    warn_if_truncated("x0", x0_flat)
    if not jnp.issubdtype(x0_flat.dtype, jnp.floating):
        x0_flat = x0_flat.astype(jnp.result_type(float))
        x0 = unravel_x(x0_flat)
    as_array("x0", x0_flat)
    p_flat, _ = ravel_pytree(params)
    if p_flat.size:
        as_array("params", p_flat)
    n, dtype = x0_flat.shape[0], x0_flat.dtype
    out = _out_shape("objective", objective, x0, params)
    if getattr(out, "shape", None) != ():
        raise ValueError(f"objective: must return a scalar, got shape {getattr(out, 'shape', out)}")
    m_eq = _constraint_size("eq", eq, x0, params)
    m_ineq = _constraint_size("ineq", ineq, x0, params)
    # Bound rows enter the KKT system only for the bounds actually given (a static choice), so an
    # unbounded problem keeps its n + m_eq + m_ineq unknowns rather than n more per side.
    has_lower, has_upper = lower is not None, upper is not None
    lower = _bound("lower", lower, n, -jnp.inf, dtype)
    upper = _bound("upper", upper, n, jnp.inf, dtype)
    if is_concrete(lower, upper) and np.any(np.asarray(lower) > np.asarray(upper)):
        raise ValueError("lower, upper: lower must be <= upper everywhere")
    if sparse is not None and not isinstance(sparse, bool):
        raise ValueError(f"sparse: expected True, False or None, got {sparse!r}")
    if np.dtype(dtype) == np.float32 and "tol" not in options:
        # IPOPT's default 1e-10 is below what float32 oracles can resolve (a feasible problem
        # would end as "infeasible"); 1e-5 is what float32 arithmetic supports.
        options = {**options, "tol": 1e-5}
    policy = Policy.make(dtype, solve, accept_inaccurate, residual_tol, diagnose)
    args = (params, lower, upper)
    extra = (x0_flat,)
    key = ("nlp", solver, objective, eq, ineq, structure(x0, params, lower), has_lower, has_upper,
           options_key(options), policy.key(), sparse)

    def build() -> BridgePlan:
        adapter.validate_options(options)
        oracles = _oracles(objective, eq, ineq, x0, params, m_eq, m_ineq, sparse)
        plan_policy = policy
        if oracles.sparse:
            from kktbridge.core._sparsity import SPARSE_DENSE_FALLBACK_MAX, SparseLUSolver

            rows, cols, size = _kkt_pattern(oracles, has_upper, has_lower)
            if diagnose and size > SPARSE_DENSE_FALLBACK_MAX:
                raise ValueError(f"diagnose: the KKT condition number needs the dense {size}×{size} matrix; "
                                 f"on the sparse path it is available up to {SPARSE_DENSE_FALLBACK_MAX} unknowns")
            if solve is None:
                plan_policy = policy._replace(solve=SparseLUSolver(rows, cols, size))

        # Bounds as inequalities so one KKT residual covers them: rows (x - u) then (l - x).
        def ineq_all(x, theta):
            p, lo, up = theta
            xf = ravel_pytree(x)[0]
            parts = [jnp.ravel(ineq(x, p))] if ineq is not None else []
            # Infinite bounds give -inf rows, which the KKT residual treats as absent constraints.
            if has_upper:
                parts.append(xf - up)
            if has_lower:
                parts.append(lo - xf)
            return jnp.concatenate(parts) if parts else jnp.zeros((0,), xf.dtype)

        obj = lambda x, theta: objective(x, theta[0])  # noqa: E731
        eq_fn = eq  # narrowed to a callable, also inside the lambda
        eq_all = (lambda x, theta: jnp.ravel(eq_fn(x, theta[0]))) if eq_fn is not None else None
        F = kkt_residual(obj, eq_all, ineq_all)
        check = kkt_activity(obj, eq_all, ineq_all, row_norms=_sparse_row_norms(oracles, ineq_all, unravel_x, dtype, n_bounds=n * (has_upper + has_lower)) if oracles.sparse else None)
        m_all = m_ineq + n * (has_upper + has_lower)

        def host_data(args, extra):
            p, lo, up = args
            return {"x0": extra[0], "p": ravel_pytree(p)[0].astype(dtype), "lower": lo, "upper": up}

        def to_point(values):
            duals = [values["ineq_dual"]] + [values["upper_dual"]] * has_upper + [values["lower_dual"]] * has_lower
            return KKTPoint(unravel_x(values["x"]), values["eq_dual"], jnp.concatenate(duals))

        def fallback(args, extra):
            return KKTPoint(unravel_x(extra[0]), jnp.zeros((m_eq,), dtype), jnp.zeros((m_all,), dtype))

        def finish(z, values, args, status, iters, diag):
            lam = z.ineq_dual
            # Absent bounds: IPOPT reports 0 (NaN after a failure), a constant.
            upper_dual = lam[m_ineq : m_ineq + n] if has_upper else values["upper_dual"]
            lower_dual = lam[m_ineq + n * has_upper :] if has_lower else values["lower_dual"]
            return NLPSolution(
                x=z.x,
                eq_dual=z.eq_dual,
                ineq_dual=lam[:m_ineq],
                lower_dual=lower_dual,
                upper_dual=upper_dual,
                objective=objective(z.x, args[0]),
                status=status,
                iterations=iters,
                diagnostics=diag,
            )

        return BridgePlan(
            adapter=adapter,
            out_spec={
                "x": jax.ShapeDtypeStruct((n,), dtype),
                "eq_dual": jax.ShapeDtypeStruct((m_eq,), dtype),
                "ineq_dual": jax.ShapeDtypeStruct((m_ineq,), dtype),
                "lower_dual": jax.ShapeDtypeStruct((n,), dtype),
                "upper_dual": jax.ShapeDtypeStruct((n,), dtype),
            },
            options=dict(options),
            structure=NLPStructure(n, m_eq, m_ineq, oracles),
            host_data=host_data,
            to_point=to_point,
            check=lambda z, args: check(z, args),
            residual=lambda z, args, active: F(z, args, active=active),
            fallback=fallback,
            finish=finish,
            policy=plan_policy,
        )

    return run_pipeline(key, build, args, extra, on_failure)
