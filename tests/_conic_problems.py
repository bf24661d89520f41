"""Shared conic test problems: a known-solution generator and an independent cvxpy reference."""

from __future__ import annotations

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._cones import cone_projection, parse_cone
from kktbridge.core._conic import ConicPoint, conic_residual_map


def make_problem(cone, seed, n=3):
    """Random conic program with a known, unique, strictly complementary solution.

    Draw ``x*``, ``v``; set ``y* = Π_{K*}(v)``, ``s* = y* - v`` (complementary by Moreau),
    ``b = Ax* + s*``, ``c = -Aᵀy*``. Problems whose IFT Jacobian is ill-conditioned (where
    derivatives are not well defined) are redrawn.
    """
    rng = np.random.default_rng(seed)
    m = parse_cone(cone).dim
    F = conic_residual_map(cone)
    proj_dual = jax.jit(cone_projection(cone, dual=True))
    jac = jax.jit(jax.jacfwd(lambda z, A, b, c: jnp.concatenate(F(ConicPoint(z[:n], z[n:]), A, b, c))))
    for _ in range(100):
        A = rng.standard_normal((m, n))
        v = rng.standard_normal(m)
        x = rng.standard_normal(n)
        y = np.asarray(proj_dual(v))
        s = y - v
        b, c = A @ x + s, -A.T @ y
        if np.linalg.cond(jac(np.concatenate([x, v]), A, b, c)) < 1e3:
            return A, b, c, (x, y, s)
    raise RuntimeError("could not draw a well-conditioned problem")


def cvxpy_reference(A, b, c, cone, solver="CLARABEL", **solver_opts):
    """The same program through cvxpy, with SCS's cone semantics spelled out (independent of
    kktbridge's cones). Returns ``(x, s, optimal value)``."""
    m, n = A.shape
    x = cp.Variable(n)
    s = b - A @ x
    spec = parse_cone(cone)
    cons, i = [], 0
    if spec.z:
        cons.append(s[i : i + spec.z] == 0)
        i += spec.z
    if spec.l:
        cons.append(s[i : i + spec.l] >= 0)
        i += spec.l
    for k in spec.q:
        cons.append(cp.SOC(s[i], s[i + 1 : i + k]))
        i += k
    for k in spec.s:
        # SCS vectorisation: lower triangle column-wise, off-diagonals scaled by sqrt(2).
        X = cp.Variable((k, k), symmetric=True)
        rows, cols = np.triu_indices(k)  # (col, row) pairs of the lower triangle, column by column
        for t, (jj, ii) in enumerate(zip(rows, cols)):
            cons.append(s[i + t] == (1.0 if ii == jj else np.sqrt(2.0)) * X[ii, jj])
        cons.append(X >> 0)
        i += k * (k + 1) // 2
    for _ in range(spec.ep):
        cons.append(cp.constraints.ExpCone(s[i], s[i + 1], s[i + 2]))
        i += 3
    for _ in range(spec.ed):  # (u, v, w) in K_exp^*  <=>  (u - v, -u, w) in K_exp (substitution)
        u, v_, w = s[i], s[i + 1], s[i + 2]
        cons.append(cp.constraints.ExpCone(u - v_, -u, w))
        i += 3
    for a in spec.p:
        if a > 0:
            cons.append(cp.constraints.PowCone3D(s[i], s[i + 1], s[i + 2], a))
        else:  # dual power cone: (u/a, v/(1-a), w) in the primal power cone
            a = -a
            cons.append(cp.constraints.PowCone3D(s[i] / a, s[i + 1] / (1 - a), s[i + 2], a))
        i += 3
    prob = cp.Problem(cp.Minimize(c @ x), cons)
    prob.solve(solver=solver, **solver_opts)
    return x.value, np.asarray(s.value), prob.value
