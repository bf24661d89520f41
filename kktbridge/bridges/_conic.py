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
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from kktbridge.adapters import get_adapter
from kktbridge.bridges._common import (
    BridgePlan,
    Diagnostics,
    as_array,
    check_on_failure,
    Policy,
    options_key,
    run_pipeline,
    structure,
    warn_if_truncated,
)
from kktbridge.core._cones import parse_cone
from kktbridge.core._conic import ConicPoint, conic_check, conic_residual_map, from_embedding


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
    return A.astype(dtype), b.astype(dtype), c.astype(dtype), spec


def solve_conic(
    A: Any,
    b: Any,
    c: Any,
    cone: Any,
    *,
    solver: str = "scs",
    solve: Any = None,
    on_failure: str = "raise",
    warm_start: Optional[tuple[Any, Any, Any]] = None,
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
      A: ``(m, n)`` constraint matrix (dense).
      b: ``(m,)`` right-hand side.
      c: ``(n,)`` cost.
      cone: SCS cone dictionary, e.g. ``{"z": 1, "l": 3, "q": [3], "s": [2], "ep": 1, "p": [0.3]}``
        (keys ``z``/``f``, ``l``, ``q``, ``s``, ``ep``, ``ed``, ``p``; block sizes must add up to
        ``m``; see :mod:`kktbridge.core._cones`). Static: it fixes the shapes.
      solver: adapter name (``"scs"``).
      solve: linear solver for the ``(n + m)``-dimensional IFT system; default dense LU with an
        SVD minimum-norm fallback when singular, GMRES above 2048 unknowns.
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
    A, b, c, spec = _validate(A, b, c, cone)
    m, n = A.shape
    dtype = A.dtype
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
    key = ("conic", solver, structure(args, extra), options_key({**options, "cone": cone_dict}), policy.key())

    def build() -> BridgePlan:
        adapter.validate_options(options)
        F = conic_residual_map(spec)
        check = conic_check(spec)

        def host_data(args, extra):
            data = dict(zip("A b c".split(), args))
            if extra:
                data["x0"], data["y0"], data["s0"] = extra
            return data

        def finish(z, values, args, status, iters, diag):
            x, y, s = from_embedding(z, spec)
            return ConicSolution(x, y, s, status, iters, diag)

        return BridgePlan(
            adapter=adapter,
            out_spec={k: jax.ShapeDtypeStruct((d,), dtype) for k, d in (("x", n), ("y", m), ("s", m))},
            options={**options, "cone": cone_dict},
            host_data=host_data,
            to_point=lambda v: ConicPoint(v["x"], v["y"] - v["s"]),
            check=lambda z, args: check(z, *args),
            residual=lambda z, args, activity: F(z, *args),
            fallback=lambda args, extra: ConicPoint(jnp.zeros((n,), dtype), jnp.zeros((m,), dtype)),
            finish=finish,
            policy=policy,
        )

    return run_pipeline(key, build, args, extra, on_failure)
