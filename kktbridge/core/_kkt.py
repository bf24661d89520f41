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

PyTree = Any

__all__ = ["KKTPoint", "kkt_residual", "complementarity"]


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
    complementarity(jnp.zeros(1), jnp.zeros(1), kind)  # validate `kind` eagerly

    def F(z: KKTPoint, *args) -> KKTPoint:
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
        r_ineq = (
            complementarity(lam, -_inactive_if_minus_inf(ineq(x, *args)), kind) if ineq is not None else jnp.zeros_like(lam)
        )
        return KKTPoint(stationarity, r_eq, r_ineq)

    return F
