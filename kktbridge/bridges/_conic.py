r"""``solve_conic``: differentiable cone programs in SCS standard form (SCS by default).

.. math::

   \min_x\ c^\top x \quad\text{s.t.}\quad Ax + s = b,\ s \in K,
   \qquad \text{dual:}\quad \max_y\ -b^\top y \quad\text{s.t.}\quad A^\top y + c = 0,\ y \in K^*.

Derivatives come from the implicit function theorem applied to the reduced conic residual of
:mod:`kktbridge.core._conic`,

.. math::  F(x, v) = \big(A^\top \Pi_{K^*}(v) + c,\ \ Ax + \Pi_{K^*}(v) - v - b\big), \qquad v = y - s,

which is the ``τ = 1`` slice of the homogeneous self-dual embedding residual differentiated by
diffcp (Agrawal et al., 2019); ``y = Π_{K*}(v)`` and ``s = y - v`` are recovered by Moreau's
decomposition, so all of ``x, y, s`` are differentiable.

The backward factors the Jacobian

.. math::  \frac{\partial F}{\partial (x, v)} = \begin{bmatrix} 0 & A^\top D\Pi \\ A & D\Pi - I \end{bmatrix}

(``DΠ`` block diagonal by cone), assembled in closed form for a dense ``A``
(:func:`~kktbridge.core._conic.conic_jacobian`: no ``n + m`` JVPs of ``F``) and LU-factored
once for every tangent/cotangent. Sparse ``A`` (BCOO, differentiable in its values; SciPy
sparse, constant) stays sparse end to end: the residual applies it by ``segment_sum`` over its
coordinates, the solvers receive CSC built from the coordinates, and the backward uses a sparse
LU on the Jacobian's known pattern (:func:`~kktbridge.core._conic.conic_jacobian_pattern`,
:class:`~kktbridge.core._sparsity.SparseLUSolver`) -- unless that pattern is itself dense
(a sparse ``A`` with large cone blocks, see :func:`_ift_jacobian`), when the dense closed form is
faster; never a dense ``(n + m)²`` matrix above
:data:`~kktbridge.core._sparsity.SPARSE_DENSE_FALLBACK_MAX` unknowns.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kktbridge.adapters import Adapter, get_adapter
from kktbridge.bridges._common import (
    BridgePlan,
    Diagnostics,
    as_array,
    cast,
    check_on_failure,
    Policy,
    accepted,
    options_key,
    run_pipeline,
    structure,
    warn_if_truncated,
)
from kktbridge.bridges._sparse import Coords, is_sparse, sparse_arg
from kktbridge.core._cones import ConeSpec, parse_cone
from kktbridge.core._conic import (
    DENSE,
    ConicPoint,
    LinearOperator,
    conic_check,
    conic_jacobian,
    conic_jacobian_pattern,
    conic_residual_map,
    from_embedding,
)
from kktbridge.core._implicit import poison_failed
from kktbridge.core._linear_solve import DENSE_MAX_SIZE
from kktbridge.core._types import ConicStructure, LinearSolverArg, OnFailure


class ConicSolution(NamedTuple):
    """Primal-dual solution of :func:`solve_conic` (``x``, ``y``, ``s`` differentiable).

    Attributes:
      x: primal solution ``(n,)``.
      y: dual solution ``(m,)``, ``y ∈ K*``.
      s: primal slack ``(m,)``, ``s = b - Ax ∈ K``.
      status: :class:`~kktbridge.Status` code (int32).
      iterations: solver iterations (int32).
      diagnostics: :class:`~kktbridge.Diagnostics` (residual; margin and weakly active count of
        the nonnegative-orthant rows; optional condition number).
    """

    x: jax.Array
    y: jax.Array
    s: jax.Array
    status: jax.Array
    iterations: jax.Array
    diagnostics: Diagnostics


def _validate(A: Any, b: Any, c: Any, cone: Any):
    warn_if_truncated("A", A)
    A = as_array("A", A, ndim=2)
    m, n = A.shape
    b = as_array("b", b, shape=(m,))
    c = as_array("c", c, shape=(n,))
    spec = parse_cone(cone, m=m)
    dtype = jnp.result_type(A, b, c)
    return cast(A, dtype), cast(b, dtype), cast(c, dtype), spec


def _validate_sparse(A: Any, b: Any, c: Any, cone: Any) -> tuple[jax.Array, jax.Array, jax.Array, ConeSpec, Coords]:
    """Sparse ``A``: ``(A_data, b, c, spec, coords)`` with the static pattern ``coords``."""
    warn_if_truncated("c", c)
    c = as_array("c", c, ndim=1)
    b = as_array("b", b, ndim=1)
    dtype = jnp.result_type(c, b, jnp.asarray(A.data))
    A_data, coords = sparse_arg("A", A, (None, c.shape[0]), dtype)
    if b.shape != (coords.shape[0],):
        raise ValueError(f"b: expected shape ({coords.shape[0]},), got {tuple(b.shape)}")
    spec = parse_cone(cone, m=coords.shape[0])
    return A_data, b.astype(dtype), c.astype(dtype), spec, coords


def sparse_operator(coords: Coords) -> LinearOperator:
    """:class:`~kktbridge.core._conic.LinearOperator` of a sparse ``A`` (its argument: the values)."""
    return LinearOperator(coords.matvec, coords.rmatvec, coords.row_norms)


def _ift_jacobian(spec: ConeSpec, coords: Optional[Coords], n: int, m: int) -> tuple[Optional[Callable], Any]:
    """How the backward gets the IFT matrix ``∂F/∂(x, v)``: ``(jacobian, solve)``.

    ``jacobian(z, A, b, c)``: the dense matrix in closed form (:func:`~kktbridge.core._conic.conic_jacobian`),
    for a dense ``A`` and for a sparse ``A`` whose *Jacobian* pattern is more than
    :data:`~kktbridge.core._sparsity.SPARSE_MAX_DENSITY` full -- a sparse ``A`` can give a dense
    Jacobian, since ``AᵀDΠ`` spreads each entry over its whole cone block (cvxpy's portfolio with a
    100-asset risk cone: ``A`` 6 % full, the Jacobian 36 %; its backward, batch of 8, took ~40 ms
    with SciPy's sparse LU and ~18 ms with the dense closed form, profiled). Both up to :data:`~kktbridge.core._linear_solve.DENSE_MAX_SIZE` unknowns: the
    sparse LU fills such a pattern in and was no faster at the top of that range either (the same
    portfolio, backward per instance: 300 assets, ``N ≈ 900``: dense 55 ms, sparse 60 ms;
    600 assets, ``N ≈ 1,800``: 395 vs 447 ms).
    ``solve``: the default linear solver for a sparse ``A`` otherwise, a sparse LU on the pattern
    (:class:`~kktbridge.core._sparsity.SparseLUSolver`; ``None`` without ``asdex``: the dense
    default, GMRES above its size limit -- ``pip install kktbridge[sparse]``).
    """
    from kktbridge.core import _sparsity

    N = n + m
    if coords is None:
        return (conic_jacobian(spec) if N <= DENSE_MAX_SIZE else None), None
    rows, cols = conic_jacobian_pattern(spec, coords.rows, coords.cols, n)
    nnz = np.unique(np.concatenate([rows * N + cols, cols * N + rows])).size  # the LU's pattern: P ∪ Pᵀ
    if N <= DENSE_MAX_SIZE and nnz > _sparsity.SPARSE_MAX_DENSITY * N * N:
        J = conic_jacobian(spec)
        return (lambda z, A_data, b, c: J(z, coords.todense(A_data), b, c)), None
    return None, (_sparsity.SparseLUSolver(rows, cols, N) if _sparsity.available() else None)


#: Largest ``n + m`` refined (a dense LU of the residual map's Jacobian per Newton step).
REFINE_MAX_SIZE = 2000


def _refines(adapter: Any, size: int) -> bool:
    """Newton refinement for interior-point solvers (Clarabel), ``n + m`` up to
    :data:`REFINE_MAX_SIZE` (dense or sparse data alike, so that both give the same point). An interior-point solution is not exactly complementary: rebuilding
    ``y = Π_{K*}(y - s)`` moves it by ~√μ (measured: relative residual 4.5e-6 > the 1.5e-6 accepted
    on a 6-variable least squares over an SOC, where Clarabel reported 7e-11), so such solutions were
    refused. SCS's iterates come from projections and are complementary by construction."""
    return getattr(adapter, "name", None) == "clarabel" and size <= REFINE_MAX_SIZE


def _newton_refine(F: Callable, spec: Any, jacobian: Optional[Callable] = None, steps: int = 1) -> Callable:
    """``refine(z, args)``: ``steps`` semismooth Newton steps on the residual map ``F(z) = 0``
    (Busseti, Moursi & Boyd, *Solution refinement at regular points of conic problems*, 2019):
    ``z ← z - J(z)⁻¹ F(z)`` with ``J = ∂F/∂z``, the matrix of the IFT system; quadratic convergence
    from a point within ~√μ of a regular solution, so one step takes Clarabel's ~1e-6 to ~1e-11
    (a second reached 4e-16 but doubled the cost, which under ``vmap`` every instance pays).
    ``jacobian(z, *args)``: ``J`` in closed form (dense ``A``), else JVPs of ``F``.
    Returns the point and its ``(x, y, s)``."""
    from jax.flatten_util import ravel_pytree

    def refine(z: ConicPoint, args: tuple):
        z_flat, unravel = ravel_pytree(z)
        G = lambda v: ravel_pytree(F(unravel(v), *args))[0]  # noqa: E731
        for _ in range(steps):
            J = jax.jacfwd(G)(z_flat) if jacobian is None else jacobian(unravel(z_flat), *args)
            step = jnp.linalg.solve(J, G(z_flat))
            z_flat = jnp.where(jnp.all(jnp.isfinite(step)), z_flat - step, z_flat)
        z_new = unravel(z_flat)
        x, y, s = from_embedding(z_new, spec)
        return z_new, {"x": x, "y": y, "s": s}

    return refine


def solve_conic(
    A: Any,
    b: Any,
    c: Any,
    cone: Any,
    *,
    solver: "str | Adapter" = "scs",
    solve: LinearSolverArg = None,
    on_failure: OnFailure = "raise",
    warm_start: Optional[tuple[ArrayLike, ArrayLike, ArrayLike]] = None,
    accept_inaccurate: bool = False,
    residual_tol: Optional[float] = None,
    diagnose: bool = False,
    **options: Any,
) -> ConicSolution:
    """Solve ``min cᵀx s.t. Ax + s = b, s ∈ K``, differentiably in ``A``, ``b`` and ``c``.

    ``x``, ``y`` and ``s`` are differentiable with respect to ``A, b, c`` in forward and reverse
    mode, to any order, under ``jit`` and ``vmap`` (a batch is solved in one host call; with ``A``
    unbatched SCS factorises once per thread and only updates ``b, c``). Derivatives assume a
    unique, strictly complementary solution (otherwise the IFT system is singular and the default
    linear solver returns the minimum-norm derivative).

    Args:
      A: ``(m, n)`` constraint matrix: dense, a ``jax.experimental.sparse.BCOO`` (concrete
        indices; derivatives w.r.t. its ``data``) or a SciPy sparse matrix (a constant). A sparse
        ``A`` is never densified (see the module docstring); its pattern is static (one
        compilation per pattern), and without ``asdex`` the backward uses the dense default.
      b: ``(m,)`` right-hand side.
      c: ``(n,)`` cost.
      cone: SCS cone dictionary, e.g. ``{"z": 1, "l": 3, "q": [3], "s": [2], "ep": 1, "p": [0.3]}``
        (keys ``z``/``f``, ``l``, ``q``, ``s``, ``ep``, ``ed``, ``p``; block sizes must add up to
        ``m``; see :mod:`kktbridge.core._cones`). Static: it fixes the shapes.
      solver: adapter name (``"scs"``, ``"clarabel"``, or ``"auto"``: Clarabel when every cone
        block is a zero/orthant block, SCS otherwise, each retrying the other's solver-side
        failures -- see :func:`kktbridge.adapters.auto.choose_conic`) or an ``Adapter`` instance.
      solve: linear solver for the ``(n + m)``-dimensional IFT system; default dense LU with an
        SVD minimum-norm fallback when singular, GMRES above 2048 unknowns (sparse ``A``: a sparse
        LU on the Jacobian's pattern).
      on_failure: ``"raise"`` (:class:`~kktbridge.SolverError`) or ``"nan"`` (NaN outputs, status
        kept).
      warm_start: optional ``(x0, y0, s0)``.
      accept_inaccurate: also accept solutions the solver flags ``SOLVED_INACCURATE``.
      residual_tol: largest relative conic residual accepted (default ``100·sqrt(eps)``); above it
        the status is ``RESIDUAL_TOO_LARGE``.
      diagnose: also compute the condition number of the IFT matrix into ``diagnostics``.
      **options: solver settings (SCS: ``eps_abs``, ``eps_rel``, ``max_iters``, ``acceleration_lookback``,
        ``normalize``, ``time_limit_secs``...). Defaults: ``eps_abs = eps_rel = 1e-9``.

    Returns:
      :class:`ConicSolution`.

    Example::

        # min x1 + x2  s.t.  ‖(x1, x2)‖ ≤ 1  (second-order cone (1, x) with s = b - Ax)
        A = -jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        b, c = jnp.array([1.0, 0.0, 0.0]), jnp.array([1.0, 1.0])
        sol = solve_conic(A, b, c, {"q": [3]})  # x = -(1, 1)/√2
        dx_db = jax.jacobian(lambda b: solve_conic(A, b, c, {"q": [3]}).x)(b)
    """
    check_on_failure(on_failure)
    adapter = get_adapter(solver, kind="conic")
    coords: Optional[Coords] = None
    if is_sparse(A):
        A, b, c, spec, coords = _validate_sparse(A, b, c, cone)
        m, n = coords.shape
    else:
        A, b, c, spec = _validate(A, b, c, cone)
        m, n = A.shape
    dtype = c.dtype
    args = (A, b, c)
    extra: tuple = ()
    if warm_start is not None:
        if not isinstance(warm_start, (tuple, list)) or len(warm_start) != 3:
            raise ValueError("warm_start: expected a tuple (x0, y0, s0)")
        extra = tuple(
            as_array(f"warm_start[{i}]", w, shape=(d,)).astype(dtype) for i, (w, d) in enumerate(zip(warm_start, (n, m, m)))
        )
    policy = Policy.make(dtype, solve, accept_inaccurate, residual_tol, diagnose)
    cone_dict = spec.as_dict()
    pattern = None if coords is None else coords.key()
    key = ("conic", solver, structure(args, extra), pattern, options_key({**options, "cone": cone_dict}), policy.key())

    def build() -> BridgePlan:
        adapter.validate_options(options)
        operator = DENSE if coords is None else sparse_operator(coords)
        F = conic_residual_map(spec, operator)
        J, sparse_solve = _ift_jacobian(spec, coords, n, m)
        check = conic_check(spec, operator)
        plan_policy = policy
        if coords is not None and policy.solve is None:
            plan_policy = policy._replace(solve=sparse_solve)

        def host_data(args, extra):
            data = dict(zip("A b c".split(), args))
            if coords is not None:
                # Coordinates, never a dense A: the adapters build CSC with this fixed structure.
                data["A_data"] = data.pop("A")
                data["A_rows"], data["A_cols"] = jnp.asarray(coords.rows), jnp.asarray(coords.cols)
            if extra:
                data["x0"], data["y0"], data["s0"] = extra
            return data

        def finish(z, values, args, status, iters, diag):
            # y = Π_{K*}(v) at a finite point for a failed instance (its v is NaN): the projection's
            # derivative there would turn a masked loss's zero cotangent into NaN.
            ok = accepted(status, plan_policy.accept_inaccurate)
            x, y, s = from_embedding(ConicPoint(z.x, jnp.where(ok, z.v, jnp.zeros_like(z.v))), spec)
            y, s = poison_failed((y, s), ok)
            return ConicSolution(x, y, s, status, iters, diag)

        return BridgePlan(
            adapter=adapter,
            out_spec={k: jax.ShapeDtypeStruct((d,), dtype) for k, d in (("x", n), ("y", m), ("s", m))},
            options=dict(options),
            structure=ConicStructure(n, m, cone_dict, sparse=coords is not None),
            host_data=host_data,
            to_point=lambda v: ConicPoint(v["x"], v["y"] - v["s"]),
            check=lambda z, args: check(z, *args),
            residual=lambda z, args, activity: F(z, *args),
            fallback=lambda args, extra: ConicPoint(jnp.zeros((n,), dtype), jnp.zeros((m,), dtype)),
            finish=finish,
            policy=plan_policy,
            jacobian=None if J is None else (lambda z, args, activity: J(z, *args)),
            refine=_newton_refine(F, spec, J) if _refines(adapter, n + m) else None,
        )

    return run_pipeline(key, build, args, extra, on_failure)
