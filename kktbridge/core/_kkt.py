r"""The KKT residual map shared by every KKT-based bridge (NLP, QP, cvxpy-QP).

For ``min_x f(x, θ)  s.t.  h(x, θ) = 0,  g(x, θ) ≤ 0`` with multipliers ``ν`` (equalities) and
``λ ≥ 0`` (inequalities), the root ``z = (x, ν, λ)`` of

.. math::

   F(z, θ) = \begin{pmatrix}
       ∇_x f(x, θ) + ∂_x h(x, θ)^\top ν + ∂_x g(x, θ)^\top λ \\
       h(x, θ) \\
       φ(λ, -g(x, θ))
   \end{pmatrix}

characterises a KKT point. The complementarity function ``φ`` is selectable:

* ``"min"`` (default): ``φ(a, b) = min(a, b)`` -- the min-map NCP function. Its Jacobian row is
  ``dλ_i = 0`` for a constraint judged inactive (``λ_i ≤ -g_i``) and ``-∂g_i = 0`` (the linearised
  constraint stays active) otherwise. This is the exact active-set derivative, unaffected by how
  far an interior-point solver's ``λ_i g_i ≈ -μ`` is from zero. At an exact tie (weakly active:
  ``λ_i = g_i = 0``) the constraint is treated as inactive, which yields the one-sided derivative
  for perturbations that move the constraint into its interior.
* ``"product"``: ``φ(a, b) = -a·b`` -- the paper's ``λ ∘ g = 0``. Its row for a weakly active
  constraint is identically zero, so the system is singular and the minimum-norm (``lstsq``)
  derivative is returned by the default solver.

Nonsingularity of ``∂_z F`` holds under LICQ, strict complementarity and second-order sufficiency;
without them the default linear solver returns the minimum-norm solution.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._types import PyTree

__all__ = ["KKTPoint", "kkt_residual", "kkt_activity", "complementarity", "activity_tol"]


class KKTPoint(NamedTuple):
    """A primal-dual point ``(x, eq_dual, ineq_dual)``; ``x`` may be any pytree."""

    x: PyTree
    eq_dual: jax.Array
    ineq_dual: jax.Array


def complementarity(lam: jax.Array, slack: jax.Array, kind: str = "min") -> jax.Array:
    """Complementarity residual for ``λ ≥ 0, slack ≥ 0, λ·slack = 0`` (``slack = -g``)."""
    if kind == "min":
        # Explicit select so ties (weakly active) take the "inactive" branch deterministically.
        return jnp.where(slack < lam, slack, lam)
    if kind == "product":
        return lam * slack
    raise ValueError(f"complementarity: expected 'min' or 'product', got {kind!r}")


def _vdot(a: Optional[jax.Array], b: Optional[jax.Array]) -> jax.Array:
    if a is None or b is None or jnp.size(b) == 0:
        return jnp.zeros((), dtype=jnp.result_type(float))
    return jnp.vdot(a, b)


def _reducer_max(a: jax.Array, b: jax.Array) -> jax.Array:
    # NaN-propagating like jnp.max (a NaN residual must refuse the solve, never pass as small).
    return jnp.where((a >= b) | jnp.isnan(a), a, b)


def _reducer_min(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where((a <= b) | jnp.isnan(a), a, b)


def _reducer_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(a), a, a + b)


def _reduce(v: jax.Array, kind: str) -> jax.Array:
    """Full ``max`` / ``min`` / ``sum`` of ``v`` for the (non-differentiated) residual check.

    The reducer is a select, not a bare ``max``/``add``, so that XLA:CPU never hands the reduction
    (with the pads and adds that produce its input) to its YNNPACK fusion: in jaxlib 0.10.x that
    fusion returns wrong reductions when one tensor reaches it through two pads with different
    offsets (the transposes of ``x[1:]`` and ``x[:-1]`` in any ``∇(νᵀh)``), for some sizes only --
    the equality-constrained chain NLP at 20,001 variables measured a residual of 3e-4 at a point
    whose true residual is 5e-16. XLA's own reduction emitter computes the same result exactly.
    Empty ``v`` gives the identity (``-inf`` / ``inf`` / ``0``).
    """
    v = jnp.ravel(v)
    if kind == "max":
        init, op = -jnp.inf, _reducer_max
    elif kind == "min":
        init, op = jnp.inf, _reducer_min
    else:
        init, op = 0, _reducer_sum
    return jax.lax.reduce(v, jnp.asarray(init, v.dtype), op, (0,))


def _norm(v: jax.Array) -> jax.Array:
    return jnp.sqrt(_reduce(v * v, "sum"))


def _inactive_if_minus_inf(g: jax.Array) -> jax.Array:
    """Map ``g_i = -inf`` (an absent constraint, e.g. ``x - u`` with ``u = +inf``) to the finite,
    inactive value ``-1``: it keeps ``0 · inf = NaN`` out of the Lagrangian and its derivatives,
    while NaN entries stay NaN (never silently treated as satisfied)."""
    return jnp.where(g == -jnp.inf, -1.0, g)


def kkt_residual(
    objective: Callable[..., jax.Array],
    eq: Optional[Callable[..., jax.Array]] = None,
    ineq: Optional[Callable[..., jax.Array]] = None,
    kind: str = "min",
) -> Callable[..., KKTPoint]:
    """Build the KKT residual ``F(z, *args)`` for ``min f s.t. eq = 0, ineq ≤ 0``.

    Args:
      objective: ``f(x, *args) -> scalar``.
      eq: ``h(x, *args) -> (q,)`` equality constraints, or ``None``.
      ineq: ``g(x, *args) -> (r,)`` inequality constraints (``≤ 0``), or ``None``. An entry equal to
        ``-inf`` (e.g. ``x - u`` with ``u = +inf``) is an absent, always inactive constraint.
      kind: complementarity function, ``"min"`` (default) or ``"product"`` (see module doc).

    Returns:
      ``F(z, *args) -> KKTPoint`` with ``z = KKTPoint(x, eq_dual, ineq_dual)``; use it with
      :func:`~kktbridge.custom_root` or :func:`~kktbridge.implicit_solution`. Absent constraint
      groups use empty (shape ``(0,)``) duals.
    """
    if kind not in ("min", "product"):  # validated up front (as complementarity would), without an eager op
        raise ValueError(f"complementarity: expected 'min' or 'product', got {kind!r}")

    def F(z: KKTPoint, *args, active: Optional[jax.Array] = None) -> KKTPoint:
        x, nu, lam = z

        def lagrangian(x):
            val = objective(x, *args)
            if eq is not None:
                val = val + _vdot(nu, eq(x, *args))
            if ineq is not None:
                val = val + _vdot(lam, _inactive_if_minus_inf(ineq(x, *args)))
            return val

        stationarity = jax.grad(lagrangian)(x)
        r_eq = eq(x, *args) if eq is not None else jnp.zeros_like(nu)
        if ineq is None:
            r_ineq = jnp.zeros_like(lam)
        elif active is not None:
            # Activity decided once, by kkt_activity's scale-free rule: the same rows as the
            # min-map on either side of the kink, without the min-map's dependence on scaling.
            r_ineq = jnp.where(active > 0.5, -_inactive_if_minus_inf(ineq(x, *args)), lam)
        else:
            r_ineq = complementarity(lam, -_inactive_if_minus_inf(ineq(x, *args)), kind)
        return KKTPoint(stationarity, r_eq, r_ineq)

    return F


#: Factor by which the scale-free multiplier must exceed the scale-free slack for "active".
ACTIVITY_RATIO = 10.0


def activity_tol(dtype: Any) -> float:
    """Scale-free size below which a multiplier and slack both count as negligible (diagnostics).

    ``eps^(1/4)`` of the dtype (1.2e-4 in float64, 1.8e-2 in float32): above the ``√μ`` an
    interior-point solution leaves at a weakly active constraint (measured up to 1e-4 in scale-free
    units at IPOPT's ``tol = 1e-10``). It only counts rows in ``Diagnostics.weakly_active``; the
    branch a row takes is decided by the ratio rule of :func:`kkt_activity`, never by this floor.
    """
    return float(np.finfo(np.dtype(dtype)).eps ** 0.25)


def kkt_activity(
    objective: Callable[..., jax.Array],
    eq: Optional[Callable[..., jax.Array]] = None,
    ineq: Optional[Callable[..., jax.Array]] = None,
    row_norms: Optional[Callable[..., jax.Array]] = None,
) -> Callable[..., tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    r"""Residual and the scale-free activity rule at a primal-dual point.

    ``row_norms(x_flat, *args) -> r`` (optional) supplies the constraint gradient norms ``r_i``
    (``0`` for an absent, ``-inf`` row) without the dense ``jacfwd`` of ``ineq`` -- for large sparse
    problems, whose ``m × n`` Jacobian must never be formed.

    For inequality row ``i`` with slack ``s_i = -g_i(x)``, multiplier ``λ_i`` and constraint
    gradient norm ``r_i = ‖∇_x g_i(x)‖``, define the scale-free quantities

    .. math::

       \hat λ_i = \frac{λ_i r_i}{S}, \qquad \hat s_i = \frac{s_i}{r_i (1 + \|x\|_\infty)},
       \qquad S = \|∇f\|_\infty + \max_j λ_j r_j + \|J_h^\top ν\|_\infty + \|∇^2_{xx} L\|_2 (1 + \|x\|_\infty),

    (the last term is a curvature scale, so ``S > 0`` even where ``∇f = 0``).
    Both are invariant under scaling the objective (``f → a f``: ``λ, S → aλ, aS``), under
    scaling any constraint (``g_i → d g_i``: ``λ_i → λ_i/d``, ``r_i → d r_i``) and under the size
    of the problem: ``S`` takes maxima, not sums or 2-norms, so stacking ``k`` copies of a problem
    leaves every row's ``λ̂_i, ŝ_i`` unchanged. (A sum over rows made ``S`` grow with the number of
    active constraints: on the 20,001-variable chain NLP it reached 6e5, and bounds with multipliers
    2.5e-4 -- strongly active, ``λ_i / s_i ≈ 2000`` -- were taken as inactive, a wrong derivative.)

    **Rule.** Row ``i`` is *active* iff ``λ̂_i > 10 ŝ_i``. On an interior-point solver's central
    path ``λ_i s_i ≈ μ`` and ``λ_i / s_i`` is set by the curvature along the constraint normal, so a
    weakly active row (``λ_i = g_i = 0`` in the limit) ends with ``λ̂_i ≈ ŝ_i`` or ``λ̂_i ≪ ŝ_i``
    (measured: ratio 1.000 across objective and constraint scalings of 1e-3…1e3) and takes the
    *inactive* branch -- the one-sided derivative for perturbations that keep it inactive -- while
    a strongly active row has ``λ̂_i / ŝ_i ≈ λ̂_i² / μ̂ ≫ 10`` even when its multiplier is tiny.
    Rows with ``max(λ̂_i, ŝ_i) ≤ τ = activity_tol(dtype)`` are counted as (nearly) weakly active in
    the diagnostics: the solution map has a kink within a relative perturbation of about ``τ``.

    Returns:
      ``check(z, *args) -> (residual, active, margin, n_weak)``: the relative infinity norm of
      the min-map KKT residual, the activity mask (float 0/1, one per inequality row), the strict
      complementarity margin ``min_i max(λ̂_i, ŝ_i)`` (``inf`` without rows) and the number of
      weakly active rows.
    """
    F = kkt_residual(objective, eq, ineq)

    def check(z: KKTPoint, *args):
        from jax.flatten_util import ravel_pytree

        x, nu, lam = z
        x_flat, unravel = ravel_pytree(x)
        dtype = x_flat.dtype
        tau = activity_tol(dtype)
        xs = 1.0 + jnp.maximum(_reduce(jnp.abs(x_flat), "max"), 0.0)
        f_of = lambda v: objective(unravel(v), *args)  # noqa: E731
        grad_f = jax.grad(f_of)(x_flat)
        r = F(z, *args)
        eq_term = jnp.zeros((), dtype)
        if eq is not None and jnp.size(nu):
            eq_fn = eq  # narrowed to a callable, also inside the lambda
            _, vjp_h = jax.vjp(lambda v: jnp.ravel(eq_fn(unravel(v), *args)), x_flat)
            eq_term = _reduce(jnp.abs(vjp_h(nu)[0]), "max")

        def lagr(v):
            val = f_of(v)
            if eq is not None and jnp.size(nu):
                val = val + jnp.vdot(nu, jnp.ravel(eq(unravel(v), *args)))
            if ineq is not None and jnp.size(lam):
                val = val + jnp.vdot(lam, _inactive_if_minus_inf(jnp.ravel(ineq(unravel(v), *args))))
            return val

        # Curvature scale ‖∇²L‖₂ by a few power iterations (Hessian-vector products): it bounds
        # the curvature along every constraint normal, which sets λ/s on the central path, so a
        # weakly active row ends with λ̂ ≲ ŝ however anisotropic the problem.
        # A fori_loop, not a Python loop: one traced HVP instead of eight keeps the compiled check
        # (and so the first eager call) small.
        hvp = lambda v: jax.jvp(jax.grad(lagr), (x_flat,), (v,))[1]  # noqa: E731

        def power_step(_, carry):
            u, curv = carry
            w = hvp(u)
            w_norm = _norm(w)
            return w / jnp.where(w_norm > 0, w_norm, 1.0), jnp.maximum(curv, w_norm)

        u = 1.0 + 0.1 * jnp.cos(jnp.arange(x_flat.size, dtype=dtype))
        _, curv = jax.lax.fori_loop(0, 8, power_step, (u / _norm(u), jnp.zeros((), dtype)))
        # Every reduction below goes through _reduce (see there: a miscompiled fused reduction).
        grad_inf = jnp.maximum(_reduce(jnp.abs(grad_f), "max"), 0.0)
        scale_stat = 1.0 + grad_inf
        res_stat = jnp.maximum(_reduce(jnp.abs(ravel_pytree(r.x)[0]), "max"), 0.0) / scale_stat
        res_eq = jnp.maximum(_reduce(jnp.abs(r.eq_dual), "max"), 0.0) / xs
        if ineq is None or lam.size == 0:
            empty = jnp.zeros(lam.shape, dtype)
            residual = jnp.maximum(res_stat, res_eq)
            return residual, empty, jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32)
        ineq_fn = ineq  # narrowed to a callable, also inside the lambda
        g = jnp.ravel(ineq_fn(x, *args))
        absent = g == -jnp.inf
        s = -_inactive_if_minus_inf(g)
        if row_norms is None:
            Jg = jax.jacfwd(lambda v: _inactive_if_minus_inf(jnp.ravel(ineq_fn(unravel(v), *args))))(x_flat)
            rn = jax.vmap(_norm)(Jg)
        else:
            rn = row_norms(x_flat, *args)
        rn_safe = jnp.where(rn > 0, rn, 1.0)
        S = grad_inf + jnp.maximum(_reduce(jnp.abs(lam) * rn, "max"), 0.0) + eq_term + curv * xs
        lam_hat = jnp.where(S > 0, lam * rn / jnp.where(S > 0, S, 1.0), 0.0)
        s_hat = s / (rn_safe * xs)
        # Active iff the multiplier dominates the slack by the factor ACTIVITY_RATIO; no absolute
        # floor on λ̂ (a strongly active constraint may carry a tiny multiplier: λ̂ ≫ ŝ still).
        # Clip the slack at 0 (a solver may leave g = +1e-50) and require a multiplier above
        # round-off: an exact tie (λ = g = 0, e.g. after OSQP's polish) stays inactive.
        floor = 100 * float(np.finfo(np.dtype(dtype)).eps)
        active = (lam_hat > jnp.maximum(ACTIVITY_RATIO * jnp.maximum(s_hat, 0.0), floor)) & ~absent
        weak = (jnp.maximum(lam_hat, s_hat) <= tau) & ~absent
        margin = _reduce(jnp.where(absent, jnp.inf, jnp.maximum(lam_hat, s_hat)), "min")
        # Complementarity residual in the same scale-free units: the product (an interior point
        # leaves λ̂ŝ ≈ μ, while min(λ̂, ŝ) ≈ √μ would flag weakly active rows) plus infeasibility.
        comp = jnp.maximum(jnp.abs(lam_hat * s_hat), jnp.maximum(-jnp.minimum(lam_hat, s_hat), 0.0))
        res_comp = jnp.maximum(_reduce(jnp.where(absent, 0.0, comp), "max"), 0.0)
        residual = jnp.maximum(jnp.maximum(res_stat, res_eq), res_comp)
        return residual, active.astype(dtype), margin, jnp.sum(weak).astype(jnp.int32)

    return check
