r"""``python -m kktbridge demo``: differentiate through IPOPT, OSQP and SCS and check the results.

Each check computes a derivative of a solver's solution with kktbridge (implicit function theorem
on the optimality conditions) and compares it with an independent reference:

* solvers: a five-point *central finite difference* of the solution (step ``ε = 1e-4``), each
  perturbed problem solved to a tight tolerance (the FD error is ``O(ε⁴) + O(solver tol / ε)``,
  hence the tolerances below);
* core: the closed form of the ridge-regression Jacobian
  ``∂w*/∂λ = -(XᵀX + λI)⁻¹ w*``, ``∂w*/∂y = (XᵀX + λI)⁻¹ Xᵀ``.

The relative error is ``max|J - J_ref| / max|J_ref|``. The exit code is non-zero if any check
exceeds its tolerance or fails to run.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

#: Tolerance for derivatives compared with a closed form (direct solves, float64).
TOL_EXACT = 1e-8
#: Tolerance for FD references (IPOPT tol = 1e-12, polished OSQP): the FD error is ``O(ε⁴) ≈ 1e-16``
#: times the fifth derivative plus ``solver error / ε ≈ 1e-12 / 1e-4 = 1e-8``.
TOL_FD = 1e-6
#: SCS is a first-order (ADMM) solver: at eps = 1e-12 its solutions still carry ~1e-10 noise,
#: which the FD quotient turns into ~1e-6 relative error, hence a 10x looser bound.
TOL_FD_SCS = 1e-5
FD_EPS = 1e-4


class Check(NamedTuple):
    """One demo line."""

    solver: str
    problem: str
    derivative: str
    value: float  # representative entry (largest |.|) of the kktbridge derivative
    reference: float  # the same entry of the reference
    reference_kind: str  # "central FD" or "closed form"
    rel_err: float
    tol: float
    seconds: float  # kktbridge solve + derivative, warm
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and np.isfinite(self.rel_err) and self.rel_err <= self.tol


def _fd(fun: Callable, x: np.ndarray, eps: float = FD_EPS) -> np.ndarray:
    """Five-point central-difference Jacobian, shape ``out.shape + x.shape``.

    ``(8[z(θ+ε) - z(θ-ε)] - [z(θ+2ε) - z(θ-2ε)]) / 12ε`` has truncation error ``O(ε⁴)``: the
    tutorial problem has large third derivatives in ``p₂ = 0.1``, for which the 3-point quotient's
    ``O(ε²)`` error alone is ~3e-6.
    """
    x = np.asarray(x, dtype=np.float64)
    out0 = np.asarray(fun(x))
    J = np.zeros(out0.shape + x.shape)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        d1 = np.asarray(fun(x + e)) - np.asarray(fun(x - e))
        d2 = np.asarray(fun(x + 2 * e)) - np.asarray(fun(x - 2 * e))
        J[(Ellipsis,) + idx] = (8 * d1 - d2) / (12 * eps)
    return J


def _compare(J, J_ref) -> tuple[float, float, float]:
    J, J_ref = np.asarray(J, dtype=float), np.asarray(J_ref, dtype=float)
    if J.shape != J_ref.shape:
        raise ValueError(f"derivative shape {J.shape} != reference shape {J_ref.shape}")
    k = np.unravel_index(int(np.argmax(np.abs(J_ref))), J_ref.shape) if J_ref.size else ()
    scale = max(float(np.max(np.abs(J_ref))), 1e-300)
    return float(J[k]), float(J_ref[k]), float(np.max(np.abs(J - J_ref)) / scale)


def _timed(fun: Callable) -> tuple[object, float]:
    """Run once to compile/warm caches, then time a second (warm) call."""
    import jax

    jax.block_until_ready(fun())
    t0 = time.perf_counter()
    out = jax.block_until_ready(fun())
    return out, time.perf_counter() - t0


def _check(solver, problem, derivative, tol, kind, compute: Callable, reference: Callable) -> Check:
    try:
        J, seconds = _timed(compute)
        v, r, err = _compare(J, reference())
        return Check(solver, problem, derivative, v, r, kind, err, tol, seconds)
    except Exception as e:  # a failing check is reported (and fails the exit code), not raised
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:120]
        return Check(solver, problem, derivative, np.nan, np.nan, kind, np.nan, tol, np.nan, msg)


def _unavailable(solver, problem, derivative, reason) -> Check:
    return Check(solver, problem, derivative, np.nan, np.nan, "-", np.nan, 0.0, np.nan, f"unavailable: {reason}")


# ------------------------------------------------------------------------------------- checks


def ipopt_checks() -> list[Check]:
    r"""The problem of the IPOPT/JAX tutorial (three variables, three parameters ``p``).

    .. math::
       \min_x \tfrac13\|a(p)\odot x - c\|^2 \ \text{s.t.}\
       \log(p)\odot(Mx) = d,\ \ p\odot x^2 \ge 0.

    The tutorial writes the inequality as ``h(x, p) ≥ 0``; ``solve_nlp`` takes ``ineq ≤ 0``, so
    it is passed as ``-p ⊙ x²``.
    """
    import jax
    import jax.numpy as jnp

    from kktbridge.adapters import available_solvers

    name, problem = "ipopt", "tutorial NLP (n=3)"
    if "ipopt" not in available_solvers():
        return [_unavailable(name, problem, "dx*/dp", "cyipopt not installed")]
    from kktbridge import solve_nlp

    M = jnp.array([1.0, 2, 3, 0, 1, 4, 5, 6, 0]).reshape(3, 3)
    d = jnp.array([0.6931472 * 10, -2.3025851 * 6, 1.609438 * 27])
    c = jnp.array([1.3, 1.2, 1.05])

    def f(x, p):
        a = jnp.array([p[1], p[0] * p[1], p[0] * p[1] ** 2 * p[2]])
        return jnp.mean((a * x - c) ** 2)

    def eq(x, p):
        return jnp.log(p) * (M @ x) - d

    def ineq(x, p):  # tutorial: p * x**2 >= 0
        return -p * x**2

    p0 = np.array([2.0, 0.1, 5.0])
    x0 = jnp.zeros(3)

    def x_star(p):
        return solve_nlp(f, x0, p, eq=eq, ineq=ineq, tol=1e-12).x

    def value(p):
        return f(x_star(p), p)

    jac = jax.jit(jax.jacobian(x_star))
    grad = jax.jit(jax.grad(value))
    to_np = lambda fun: lambda p: np.asarray(fun(jnp.asarray(p)))  # noqa: E731
    return [
        _check(name, problem, "dx*/dp (3x3)", TOL_FD, "central FD", lambda: jac(p0), lambda: _fd(to_np(x_star), p0)),
        _check(name, problem, "d f(x*(p),p)/dp", TOL_FD, "central FD", lambda: grad(p0), lambda: _fd(to_np(value), p0)),
    ]


def osqp_checks() -> list[Check]:
    r"""A 4-variable QP whose solution has two active inequalities and one equality.

    .. math:: \min_x \tfrac12 x^\top P x + q^\top x \ \text{s.t.}\ \mathbf 1^\top x = 1,\ Gx \le h.
    """
    import jax
    import jax.numpy as jnp

    from kktbridge.adapters import available_solvers

    name, problem = "osqp", "QP n=4, 2 active ineq + 1 eq"
    if "osqp" not in available_solvers():
        return [_unavailable(name, problem, "dx*/dq", "osqp not installed")]
    from kktbridge import solve_qp

    P = jnp.array([[4.0, 1, 0, 0], [1, 3, 0.5, 0], [0, 0.5, 2, 0.2], [0, 0, 0.2, 1.5]])
    A = jnp.ones((1, 4))
    b = jnp.array([1.0])
    G = -jnp.eye(4)  # x >= -h
    q0 = np.array([-1.0, 2.0, 3.0, -2.0])  # pushes x1, x2 onto their bounds
    h0 = np.array([0.5, 0.0, 0.1, 0.5])
    opts: dict[str, Any] = dict(solver="osqp", eps_abs=1e-12, eps_rel=1e-12, polishing=True, max_iter=100000)

    def x_of_q(q):
        return solve_qp(P, q, A, b, G, jnp.asarray(h0), **opts).x

    def x_of_h(h):
        return solve_qp(P, jnp.asarray(q0), A, b, G, h, **opts).x

    sol = solve_qp(P, jnp.asarray(q0), A, b, G, jnp.asarray(h0), **opts)
    n_active = int(np.sum(np.abs(np.asarray(G @ sol.x - h0)) < 1e-8))
    problem = f"QP n=4, {n_active} active ineq + 1 eq"
    jq, jh = jax.jit(jax.jacobian(x_of_q)), jax.jit(jax.jacobian(x_of_h))
    to_np = lambda fun: lambda v: np.asarray(fun(jnp.asarray(v)))  # noqa: E731
    return [
        _check(name, problem, "dx*/dq (4x4)", TOL_FD, "central FD", lambda: jq(q0), lambda: _fd(to_np(x_of_q), q0)),
        _check(name, problem, "dx*/dh (4x4)", TOL_FD, "central FD", lambda: jh(h0), lambda: _fd(to_np(x_of_h), h0)),
    ]


def scs_checks() -> list[Check]:
    r"""A small SOCP: a linear objective over a shifted ball intersected with a half-space.

    .. math:: \min_x c^\top x \ \text{s.t.}\ \|x - x_c\|_2 \le r,\ x_1 \le u.

    In SCS form ``Ax + s = b``: rows ``(0; -I)`` with ``b = (r; -x_c)`` give ``s = (r, x - x_c) ∈ Q``,
    plus one linear row.
    """
    import jax
    import jax.numpy as jnp

    from kktbridge.adapters import available_solvers

    name, problem = "scs", "SOCP n=3 (ball + halfspace)"
    if "scs" not in available_solvers():
        return [_unavailable(name, problem, "dx*/dc", "scs not installed")]
    try:
        from kktbridge.bridges._conic import solve_conic
    except ImportError as e:
        return [_unavailable(name, problem, "dx*/dc", f"solve_conic missing ({e})")]

    n = 3
    # SCS orders cone rows zero, linear, SOC: the linear row x_1 + s = u first, then s = (r, x - x_c).
    A = jnp.concatenate([jnp.eye(n)[:1], jnp.zeros((1, n)), -jnp.eye(n)])
    cone = {"l": 1, "q": [n + 1]}
    c0 = np.array([-1.0, -0.5, 2.0])
    b0 = np.array([0.1, 1.0, 0.2, -0.1, 0.4])  # x_1 <= 0.1 (active), r = 1, x_c = (-0.2, 0.1, -0.4)
    opts: dict[str, Any] = dict(eps_abs=1e-12, eps_rel=1e-12, max_iters=200000)

    def x_of_c(c):
        return solve_conic(A, b0, c, cone, **opts).x

    def x_of_b(b):
        return solve_conic(A, b, c0, cone, **opts).x

    jc, jb = jax.jit(jax.jacobian(x_of_c)), jax.jit(jax.jacobian(x_of_b))
    to_np = lambda fun: lambda v: np.asarray(fun(jnp.asarray(v)))  # noqa: E731
    return [
        _check(name, problem, "dx*/dc (3x3)", TOL_FD_SCS, "central FD", lambda: jc(c0), lambda: _fd(to_np(x_of_c), c0)),
        _check(name, problem, "dx*/db (3x5)", TOL_FD_SCS, "central FD", lambda: jb(b0), lambda: _fd(to_np(x_of_b), b0)),
    ]


def core_checks() -> list[Check]:
    r"""Ridge regression through :func:`~kktbridge.custom_root` vs its closed-form Jacobian.

    ``w*(λ, y) = argmin ½‖Xw - y‖² + ½λ‖w‖²``, optimality ``Xᵀ(Xw - y) + λw = 0``; so
    ``∂w*/∂λ = -H⁻¹w*`` and ``∂w*/∂y = H⁻¹Xᵀ`` with ``H = XᵀX + λI``.
    """
    import jax
    import jax.numpy as jnp

    from kktbridge import custom_root

    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((30, 8)))
    y0 = jnp.asarray(rng.standard_normal(30))
    lam0 = 0.7

    def optimality(w, lam, y):
        return X.T @ (X @ w - y) + lam * w

    @custom_root(optimality)
    def ridge(init, lam, y):
        del init
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)

    init = jnp.zeros(8)
    H = np.asarray(X.T @ X) + lam0 * np.eye(8)
    w = np.linalg.solve(H, np.asarray(X.T @ y0))
    jl = jax.jit(jax.jacobian(lambda lam: ridge(init, lam, y0)))
    jy = jax.jit(jax.jacobian(lambda y: ridge(init, lam0, y)))
    return [
        _check("core", "ridge (custom_root)", "dw*/dλ (8)", TOL_EXACT, "closed form",
               lambda: jl(lam0), lambda: -np.linalg.solve(H, w)),
        _check("core", "ridge (custom_root)", "dw*/dy (8x30)", TOL_EXACT, "closed form",
               lambda: jy(y0), lambda: np.linalg.solve(H, np.asarray(X.T))),
    ]


SECTIONS: tuple[Callable[[], list[Check]], ...] = (ipopt_checks, osqp_checks, scs_checks, core_checks)


def format_table(checks: list[Check]) -> str:
    """Render the checks as an aligned text table."""
    header = ["solver", "problem", "derivative", "kktbridge", "reference", "ref. kind", "rel err", "tol", "time", "ok"]
    rows = []
    for c in checks:
        if c.error is not None:
            rows.append([c.solver, c.problem, c.derivative, "-", "-", c.reference_kind, "-", f"{c.tol:.0e}", "-",
                         "SKIP" if c.error.startswith("unavailable") else "FAIL"])
            rows.append(["", "  " + c.error, "", "", "", "", "", "", "", ""])
            continue
        rows.append([c.solver, c.problem, c.derivative, f"{c.value:+.6e}", f"{c.reference:+.6e}", c.reference_kind,
                     f"{c.rel_err:.1e}", f"{c.tol:.0e}", f"{c.seconds * 1e3:.1f} ms", "ok" if c.ok else "FAIL"])
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "-" * len(line(header))
    return "\n".join([line(header), sep] + [line(r) for r in rows] + [sep])


def run_demo(print_fn: Callable[[str], None] = print) -> int:
    """Run every check, print the table and return the exit code (0 iff every check passed).

    A section whose solver is not installed is reported as ``unavailable`` and counts as a
    failure only if it raised for another reason.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    checks: list[Check] = []
    for section in SECTIONS:
        try:
            checks.extend(section())
        except Exception as e:  # keep going: report the broken section in the table
            traceback.print_exc()
            checks.append(Check(section.__name__.replace("_checks", ""), "-", "-", np.nan, np.nan, "-", np.nan, 0.0,
                                np.nan, f"{type(e).__name__}: {e}"[:120]))
    print_fn("kktbridge demo: implicit derivatives through external solvers (float64)")
    print_fn("rel err = max|J - J_ref| / max|J_ref|; time = warm solve + derivative")
    print_fn(format_table(checks))
    failed = [c for c in checks if not c.ok and not (c.error or "").startswith("unavailable")]
    skipped = [c for c in checks if (c.error or "").startswith("unavailable")]
    print_fn(f"{len(checks) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} unavailable "
             f"in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0
