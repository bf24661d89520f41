r"""Implicit differentiation of roots and fixed points, in forward and reverse mode.

Let ``z*(θ)`` satisfy ``F(z*(θ), θ) = 0``. Differentiating that identity gives

.. math::  A\, \partial z^\star = B, \qquad A = -\partial_1 F(z^\star, θ), \quad B = \partial_2 F(z^\star, θ).

* JVP:  ``ż = A^{-1} (B θ̇)`` -- one linear solve with ``A``.
* VJP:  ``u = A^{-T} v``, then ``θ̄ = B^T u`` -- one linear solve with ``A^T``.

Design. The solver's output is passed through an *implicit identity*: a :func:`jax.custom_jvp`
function that returns the solution unchanged and whose JVP rule is the solve above, written with
:func:`jax.lax.custom_linear_solve`. Because that rule is linear in the tangents and made only of
transposable JAX operations, JAX derives reverse mode (``grad``, ``jacrev``, VJP) by transposition;
because the rule is ordinary differentiable JAX code that re-enters the implicit identity for the
solution it linearises at, higher-order derivatives (``hessian``, ``jacfwd(jacrev(.))``) are
implicit too and exact. The solver itself only ever sees ``stop_gradient``-ed inputs: it is a
black box (it may be a host callback) and is never differentiated.

Closures: ``F`` may capture traced values (for instance the data of an outer ``jit`` or ``grad``);
they are hoisted into explicit arguments with :func:`jax.closure_convert`, so derivatives with
respect to them are implicit derivatives too.
"""

from __future__ import annotations

import collections
import inspect
import functools
import threading
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import eval_jaxpr
from jax.flatten_util import ravel_pytree

from kktbridge.core import _jax_compat  # noqa: F401  (speeds up eager jax.jacrev; see the module)
from kktbridge.core._linear_solve import DENSE_MAX_SIZE, LinearSolver, resolve_solver, solve_auto
from kktbridge.core._structured import DENSE, DenseFormat, MatrixFormat
from kktbridge.core._types import LinearSolverArg, PyTree
from kktbridge.core._xla import stage_jit

__all__ = ["custom_root", "custom_fixed_point", "root_jvp", "root_vjp", "implicit_solution", "poison_failed"]


def _tree_neg(t: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.negative, t)


def _is_dynamic(leaf: Any) -> bool:
    """Leaves JAX can trace and differentiate; everything else (callables, strings) stays static."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int, complex)) and not isinstance(leaf, bool)


def _partition(tree: PyTree) -> tuple[list, list, Any]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dynamic = [leaf if _is_dynamic(leaf) else None for leaf in leaves]
    static = [None if _is_dynamic(leaf) else leaf for leaf in leaves]
    return dynamic, static, treedef


def _combine(dynamic: list, static: list, treedef: Any) -> PyTree:
    leaves = [d if s is None else s for d, s in zip(dynamic, static)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _no_transformation_active() -> bool:
    try:
        from jax._src import core as _core

        return bool(_core.trace_state_clean())
    except Exception:  # private API moved: fall back to always attaching derivatives
        return False


def _linear_solve(matvec: Callable, b: PyTree, solve: LinearSolver) -> PyTree:
    """``A^{-1} b`` as a transposable, differentiable JAX primitive.

    The system is posed on the flattened vector: JAX can only transpose ``custom_linear_solve``
    when every leaf of ``b`` is linear in the tangents, and blocks of ``b`` that do not depend on
    the differentiated inputs (e.g. the equality rows when only ``q`` varies) would be constants.
    """
    b_flat, unravel = ravel_pytree(b)

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    x = jax.lax.custom_linear_solve(
        flat_matvec,
        b_flat,
        solve=lambda mv, rhs: solve(mv, rhs),
        transpose_solve=lambda vm, rhs: solve(vm, rhs),
    )
    return unravel(x)


def _root_tangent(
    F: Callable,
    sol: PyTree,
    args: tuple,
    args_dot: tuple,
    solve: LinearSolver,
    valid: Optional[jax.Array] = None,
    jacobian: Optional[Callable] = None,
    jacobian_format: Optional[MatrixFormat] = None,
) -> PyTree:
    """Tangent of the root: solve ``(∂₁F) ż = -(∂₂F) θ̇``.

    With ``valid`` (a boolean scalar, batched under ``vmap``) an invalid instance gets the identity
    as its system matrix, so no NaN from its (failed) point can enter a shared factorisation or a
    shared parameter's cotangent, and its own tangent is poisoned by :func:`_poison`.

    With ``jacobian`` (``(sol, *args) -> ∂₁F`` in flat coordinates: a dense matrix, or the data of
    ``jacobian_format``), the matrix is taken from it instead of being materialised column by
    column from JVPs of ``F``.
    """
    if valid is not None:
        F = _depend_on_all_args(F, valid)
    _, rhs = jax.jvp(lambda *a: F(sol, *a), tuple(args), tuple(args_dot))
    if jacobian is not None:
        tangent = _matrix_solve(jacobian(sol, *args), jacobian_format or DENSE, _tree_neg(rhs), solve, valid)
        if tangent is not None:
            return tangent if valid is None else _poison(tangent, valid)
    _, matvec = jax.linearize(lambda s: F(s, *args), sol)
    if valid is not None:
        inner = matvec

        def matvec(v):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), inner(v), v)

    tangent = _linear_solve(matvec, _tree_neg(rhs), solve)
    return tangent if valid is None else _poison(tangent, valid)


def _matrix_solve(data: Any, fmt: MatrixFormat, b: PyTree, solve: LinearSolver, valid: Optional[jax.Array]) -> Optional[PyTree]:
    """``J^{-1} b`` with ``J`` given explicitly (``data`` in ``fmt``, flat coordinates of ``b``), or ``None``.

    The default solver uses the format's own solves (dense: robust LU with the minimum-norm
    fallback of :func:`solve_auto`, and an LU of ``Jᵀ`` for the transpose, so reverse mode never
    builds ``Jᵀ`` from transposed JVPs). A user-chosen solver gets the matvec ``v ↦ J v``. A
    dense matrix above the dense size limit is not used (``None``: the caller goes matrix-free).
    """
    b_flat, unravel = ravel_pytree(b)
    size = b_flat.shape[0]
    if isinstance(fmt, DenseFormat):
        if data.shape != (size, size):
            raise ValueError(f"jacobian: expected a ({size}, {size}) matrix in the flat coordinates of the solution, got {data.shape}")
        if size > DENSE_MAX_SIZE and solve is solve_auto:
            return None
    data = jax.tree_util.tree_map(lambda a: a.astype(b_flat.dtype) if jnp.issubdtype(a.dtype, jnp.inexact) else a, data)

    def keep(out, v):  # a failed instance's system is the identity (see _root_tangent)
        return out if valid is None else jnp.where(valid, out, v)

    matvec = lambda v: keep(fmt.matvec(data, v), v)  # noqa: E731
    if solve is solve_auto:
        x = jax.lax.custom_linear_solve(
            matvec,
            b_flat,
            solve=lambda _, r: keep(fmt.solve(data, r), r),
            transpose_solve=lambda _, r: keep(fmt.transpose_solve(data, r), r),
        )
    else:
        x = jax.lax.custom_linear_solve(
            matvec, b_flat, solve=lambda mv, r: solve(mv, r), transpose_solve=lambda vm, r: solve(vm, r)
        )
    return unravel(x)


def _depend_on_all_args(F: Callable, valid: jax.Array) -> Callable:
    """``F`` plus, for an invalid instance only, the sum of every floating argument.

    A failed instance's residual may not depend on some argument at its fallback point (a bound
    row the failed point never reached); this term makes every argument's cotangent pick up the
    NaN that :func:`_poison` puts on a failed instance. For valid instances the term is selected
    away by ``where``, whose transpose is an exact zero (no ``0 · NaN``).
    """

    def F_all(s, *args):
        r = F(s, *args)
        leaves = [a for a in jax.tree_util.tree_leaves(args) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
        if not leaves:
            return r
        total = sum(jnp.sum(a) for a in leaves)  # only its (linear) tangent is ever used
        extra = jnp.where(valid, jnp.zeros_like(total), total)
        return jax.tree_util.tree_map(lambda x: x + extra.astype(x.dtype), r)

    return F_all


def _poison(t: PyTree, valid: jax.Array) -> PyTree:
    """Mark the tangents of an invalid (failed) instance as unknown.

    Forward mode: every tangent of an invalid instance is NaN. Reverse mode: a cotangent into an
    invalid instance becomes NaN if any of its entries is non-zero and stays exactly zero
    otherwise, so a loss that masks a failed instance out of a batch keeps finite gradients for
    shared parameters. Written as a ``custom_linear_solve`` with the identity operator because
    that lets the forward map and its transpose be chosen independently.
    """
    t_flat, unravel = ravel_pytree(t)
    nan = jnp.asarray(jnp.nan, t_flat.dtype)

    def forward(_, b):
        return jnp.where(valid, b, nan)

    def backward(_, b):
        return jnp.where(valid | ~jnp.any(b != 0), b, nan)

    out = jax.lax.custom_linear_solve(lambda v: v, t_flat, solve=forward, transpose_solve=backward)
    return unravel(out)


def poison_failed(t: PyTree, valid: jax.Array) -> PyTree:
    """``t`` with a failed instance (``valid`` false) marked as :func:`implicit_solution` marks its
    solution: values and tangents NaN, and a zero cotangent (a loss that masks the instance out)
    stays exactly zero. For outputs a bridge derives from the solution by a nonlinear map (the
    conic ``y = Π_{K*}(v)``): evaluate the map at a finite point for failed instances, then apply
    this, so that the map's derivative is never taken at the failed point (``0 · NaN``)."""
    return _poison(t, jnp.asarray(valid, dtype=bool))


def implicit_solution(
    optimality_fun: Callable[..., PyTree],
    sol: PyTree,
    args: tuple,
    solve: LinearSolverArg = None,
    *,
    valid: Optional[jax.Array] = None,
    fallback: Optional[PyTree] = None,
    jacobian: Optional[Callable[..., PyTree]] = None,
    jacobian_format: Optional[MatrixFormat] = None,
) -> PyTree:
    """Return ``sol`` unchanged, but differentiable w.r.t. ``args`` through ``optimality_fun``.

    This is the building block under :func:`custom_root` and all bridges: ``sol`` must (approximately)
    satisfy ``optimality_fun(sol, *args) == 0``; its derivatives with respect to ``args`` (and to
    any traced value ``optimality_fun`` closes over) are those of the implicit function theorem.
    Any derivative information already carried by ``sol`` is discarded.

    Args:
      optimality_fun: ``F(sol, *args) -> residual`` with residual of the same structure as ``sol``.
      sol: a root of ``F`` (pytree).
      args: tuple of arguments of ``F`` after ``sol`` (pytrees; non-array leaves are static).
      solve: linear solver (callable ``solve(matvec, b)`` or a name); default :func:`solve_auto`.
      valid: optional boolean scalar (one per instance under ``vmap``): ``False`` marks ``sol`` as
        a failed solve. Its derivatives are then NaN (forward mode) or NaN exactly when a non-zero
        cotangent reaches it (reverse mode), and its point never enters a linear system.
      fallback: point at which ``F`` is linearised for invalid instances (default: zeros); it only
        has to keep ``F`` finite, e.g. the solver's initial point.
      jacobian: optional ``J(sol, *args) -> ∂₁F`` as a dense ``(N, N)`` matrix in the flat
        (``ravel_pytree``) coordinates of ``sol`` and of ``F``'s output, for problems whose
        Jacobian is known in closed form (a QP's KKT matrix): it replaces ``N`` JVPs of ``F``
        and, in reverse mode, ``N`` transposed JVPs. It must equal ``jax.jacobian(F)``; it is
        differentiated like ``F`` for higher-order derivatives.
      jacobian_format: how to read ``jacobian``'s output when it is not a dense matrix (a
        :class:`~kktbridge.core._structured.MatrixFormat`, e.g. a QP's KKT blocks with a Schur
        complement solve shared across a batch).
    """
    solve = resolve_solver(solve)
    if not isinstance(args, tuple):
        args = (args,)
    if _no_transformation_active():
        # Outside jit/grad/vmap nothing can ever differentiate this value (no tracer exists, not
        # even in closures), so skip tracing F: eager calls (e.g. finite-difference checks) stay cheap.
        return sol
    dynamic, static, treedef = _partition(args)
    sol = jax.lax.stop_gradient(sol)
    # Indices of dynamic leaves; only those cross the custom_jvp boundary.
    dyn_idx = [i for i, d in enumerate(dynamic) if d is not None]
    dyn_leaves = [dynamic[i] for i in dyn_idx]

    def with_args(fun):
        def fun_dyn(s, leaves):
            full = list(dynamic)
            for i, leaf in zip(dyn_idx, leaves):
                full[i] = leaf
            return fun(s, *_combine(full, static, treedef))

        return fun_dyn

    F_dyn = with_args(optimality_fun)
    J_dyn = None if jacobian is None else with_args(jacobian)
    if not getattr(_TRACING, "inside", False):
        return _compiled_implicit(F_dyn, sol, dyn_leaves, solve, valid, fallback, J_dyn, jacobian_format)
    # Closed-over arrays of F (and of its Jacobian) become explicit arguments: derivatives with
    # respect to them are implicit too.
    F_conv, f_consts = jax.closure_convert(F_dyn, sol, dyn_leaves)
    if J_dyn is None:
        J_conv, j_consts = None, []
    else:
        J_conv, j_consts = jax.closure_convert(J_dyn, sol, dyn_leaves)
    consts = (list(f_consts), list(j_consts))

    def F_flat(s, leaves, consts):
        return F_conv(s, leaves, *consts[0])

    J_flat = None if J_conv is None else (lambda s, leaves, consts: J_conv(s, leaves, *consts[1]))

    if valid is None:

        @jax.custom_jvp
        def ident(s, leaves, consts):
            return s

        @ident.defjvp
        def ident_jvp(primals, tangents):
            s, leaves, consts = primals
            _, leaves_dot, consts_dot = tangents
            # Re-enter the identity so that, when this rule is itself differentiated (second order),
            # the solution it linearises at carries implicit derivatives as well.
            s = ident(s, leaves, consts)
            return s, _root_tangent(
                F_flat, s, (leaves, consts), (leaves_dot, consts_dot), solve, jacobian=J_flat, jacobian_format=jacobian_format
            )

        return ident(sol, dyn_leaves, consts)

    valid = jax.lax.stop_gradient(jnp.asarray(valid, dtype=bool))
    if fallback is None:
        fallback = jax.tree_util.tree_map(jnp.zeros_like, sol)
    # Linearise invalid instances at the fallback point: a NaN point would put NaN into the
    # linear system (and, through 0 * NaN, into every cotangent of a shared parameter).
    sol_eval = jax.tree_util.tree_map(lambda a, f: jnp.where(valid, a, jnp.asarray(f, a.dtype)), sol, fallback)

    @jax.custom_jvp
    def ident_masked(s, s_eval, leaves, consts, ok):
        return s

    @ident_masked.defjvp
    def ident_masked_jvp(primals, tangents):
        s, s_eval, leaves, consts, ok = primals
        _, _, leaves_dot, consts_dot, _ = tangents
        s = ident_masked(s, s_eval, leaves, consts, ok)
        s_lin = ident_masked(s_eval, s_eval, leaves, consts, ok)
        # A failed instance's linearisation point (the fallback) must not move at second order:
        # its tangent is poisoned (NaN), and 0 · NaN would reach a shared parameter's Hessian
        # through the derivative of the Jacobian at that point, even when the loss masks it out.
        s_lin = jax.tree_util.tree_map(lambda a, e: jnp.where(ok, a, jax.lax.stop_gradient(e)), s_lin, s_eval)
        return s, _root_tangent(F_flat, s_lin, (leaves, consts), (leaves_dot, consts_dot), solve, ok, J_flat, jacobian_format)

    return ident_masked(sol, sol_eval, dyn_leaves, consts, valid)


_TRACING = threading.local()  # .inside: tracing the body of a cached rule (build it inline)
#: structure key -> (compiled rule, solve, fmt); ``solve`` and ``fmt`` kept alive: their ids are in the key.
_EAGER_CACHE: "collections.OrderedDict[Any, tuple[Callable, Any, Optional[MatrixFormat]]]" = collections.OrderedDict()
_EAGER_CACHE_SIZE = 128
_EAGER_LOCK = threading.Lock()


def _compiled_implicit(
    F_dyn: Callable,
    sol: PyTree,
    leaves: list,
    solve: LinearSolver,
    valid: Any,
    fallback: Any,
    J_dyn: Optional[Callable] = None,
    fmt: Optional[MatrixFormat] = None,
) -> PyTree:
    """Route the implicit identity through one ``jax.jit`` per *structure* of ``F``.

    Built per call, the identity's ``custom_jvp`` and ``custom_linear_solve`` are new objects, so
    an eager ``grad`` would compile them again on every call (and keep every executable). Here
    ``F`` is traced to a jaxpr whose *text* (which includes Python-scalar literals) plus the
    shapes and dtypes of the inputs is the cache key; every array ``F`` closes over -- concrete
    data or an outer transformation's tracer -- is passed as an argument, never baked in, so
    new data reuses the compiled function and derivatives with respect to closed-over values
    stay implicit.
    """
    closed, out_shape = jax.make_jaxpr(F_dyn, return_shape=True)(sol, leaves)
    out_tree = jax.tree_util.tree_structure(out_shape)
    closed_J, J_shape = (None, None) if J_dyn is None else jax.make_jaxpr(J_dyn, return_shape=True)(sol, leaves)
    J_tree = None if J_shape is None else jax.tree_util.tree_structure(J_shape)
    consts = (list(closed.consts), [] if closed_J is None else list(closed_J.consts))
    in_tree = jax.tree_util.tree_structure((sol, leaves))

    def aval(x):
        return (tuple(jnp.shape(x)), str(jnp.result_type(x)))

    key = (
        str(closed.jaxpr),
        None if closed_J is None else str(closed_J.jaxpr),
        J_tree,
        id(fmt),
        in_tree,
        out_tree,
        tuple(aval(x) for x in jax.tree_util.tree_leaves((sol, leaves, consts))),
        id(solve),
        valid is None,
        None if fallback is None else jax.tree_util.tree_structure(fallback),
    )
    with _EAGER_LOCK:
        entry = _EAGER_CACHE.get(key)
        if entry is not None:
            _EAGER_CACHE.move_to_end(key)
    if entry is None:
        jaxpr = closed.jaxpr

        def F_args(s, lv, cs):
            flat = jax.tree_util.tree_leaves((s, lv))
            return jax.tree_util.tree_unflatten(out_tree, eval_jaxpr(jaxpr, cs[0], *flat))

        J_args: Optional[Callable] = None
        if closed_J is not None:
            jaxpr_J = closed_J.jaxpr

            def J_eval(s, lv, cs):
                return jax.tree_util.tree_unflatten(J_tree, eval_jaxpr(jaxpr_J, cs[1], *jax.tree_util.tree_leaves((s, lv))))

            J_args = J_eval

        def run(s, lv, cs, ok, fb):
            _TRACING.inside = True
            try:
                return implicit_solution(
                    F_args,
                    s,
                    (lv, cs),
                    solve,
                    valid=ok,
                    fallback=fb,
                    jacobian=J_args,
                    jacobian_format=fmt,
                )
            finally:
                _TRACING.inside = False

        fn = stage_jit(run)
        with _EAGER_LOCK:
            _EAGER_CACHE[key] = (fn, solve, fmt)  # keep `solve`, `fmt` alive: their ids are in the key
            while len(_EAGER_CACHE) > _EAGER_CACHE_SIZE:
                _EAGER_CACHE.popitem(last=False)
    else:
        fn = entry[0]
    return fn(sol, leaves, consts, valid, fallback)


def clear_implicit_cache() -> None:
    """Forget the compiled implicit-differentiation rules of every structure."""
    with _EAGER_LOCK:
        _EAGER_CACHE.clear()


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def root_jvp(
    optimality_fun: Callable[..., PyTree],
    sol: PyTree,
    args: PyTree,
    tangents: PyTree,
    solve: LinearSolverArg = None,
) -> PyTree:
    """Jacobian-vector product of a root: ``∂z*(θ) θ̇`` with ``F(z*(θ), θ) = 0``.

    Args:
      optimality_fun: ``F(sol, *args)``.
      sol: the root.
      args: tuple of arguments of ``F`` (a single non-tuple value is treated as a 1-tuple).
      tangents: tuple of tangents, one per element of ``args`` (same convention).
      solve: linear solver; default :func:`solve_auto`.

    Returns:
      The tangent of ``sol`` (same pytree structure as ``sol``).
    """
    args, tangents = _as_tuple(args), _as_tuple(tangents)
    if len(args) != len(tangents):
        raise ValueError(f"tangents: expected {len(args)} tangents (one per element of args), got {len(tangents)}")
    tangents = tuple(
        jax.tree_util.tree_map(lambda a, t: jnp.asarray(t, dtype=jnp.result_type(a)), a, t) for a, t in zip(args, tangents)
    )
    return _root_tangent(optimality_fun, sol, args, tangents, resolve_solver(solve))


def root_vjp(
    optimality_fun: Callable[..., PyTree],
    sol: PyTree,
    args: PyTree,
    cotangent: PyTree,
    solve: LinearSolverArg = None,
) -> tuple:
    """Vector-Jacobian product of a root: ``vᵀ ∂z*(θ)`` for every argument in ``args``.

    Solves ``(∂₁F)ᵀ u = v`` and returns ``-(∂₂F)ᵀ u``.

    Args:
      optimality_fun: ``F(sol, *args)``.
      sol: the root.
      args: tuple of arguments of ``F`` (a single non-tuple value is treated as a 1-tuple).
      cotangent: ``v``, same structure as ``sol``.
      solve: linear solver; default :func:`solve_auto`.

    Returns:
      Tuple of cotangents, one per element of ``args``.
    """
    args = _as_tuple(args)
    solve = resolve_solver(solve)
    _, vjp_sol = jax.vjp(lambda s: optimality_fun(s, *args), sol)
    # u = A^{-T} v, as a differentiable linear solve with the transposed operator.
    u = _linear_solve(lambda w: vjp_sol(w)[0], cotangent, solve)
    _, vjp_args = jax.vjp(lambda *a: optimality_fun(sol, *a), *args)
    return vjp_args(_tree_neg(u))


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Map the solver's ``(*args, **kwargs)`` onto the optimality function's parameters."""
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError as e:
        raise TypeError(f"arguments do not match the optimality function's signature {signature}: {e}") from None
    return tuple(bound.args[1:]), dict(bound.kwargs)


def custom_root(
    optimality_fun: Callable[..., PyTree],
    has_aux: bool = False,
    solve: LinearSolverArg = None,
    reference_signature: Optional[Callable] = None,
) -> Callable[[Callable], Callable]:
    """Decorator adding implicit differentiation to a root solver (JAXopt-compatible).

    ``solver(init_params, *args, **kwargs)`` must return ``sol`` (or ``(sol, aux)`` if ``has_aux``)
    with ``optimality_fun(sol, *args, **kwargs) ≈ 0``. The decorated solver is differentiable with
    respect to ``args`` and ``kwargs`` in forward and reverse mode, to any order, under ``jit`` and
    ``vmap``; ``init_params`` gets zero derivative and ``aux`` is not differentiated.

    Args:
      optimality_fun: ``F(sol, *args, **kwargs)``, residual with the structure of ``sol``.
      has_aux: whether the solver returns ``(sol, aux)``.
      solve: linear solver for the IFT system (callable ``solve(matvec, b)`` or a name such as
        ``"lu"``, ``"cg"``); default :func:`~kktbridge.linear_solve.solve_auto`.
      reference_signature: function whose signature is used to bind keyword arguments; defaults to
        ``optimality_fun``'s.

    Example::

        @custom_root(lambda w, lam: jax.grad(f)(w, lam))
        def ridge_solver(init, lam):
            ...
    """
    signature = inspect.signature(reference_signature if reference_signature is not None else optimality_fun)

    def decorator(solver: Callable) -> Callable:
        def wrapped(init_params, *args, **kwargs):
            stopped = jax.lax.stop_gradient
            args_s = jax.tree_util.tree_map(lambda x: stopped(x) if _is_dynamic(x) else x, (args, kwargs))
            out = solver(stopped(init_params), *args_s[0], **args_s[1])
            sol, aux = out if has_aux else (out, None)
            pos, kw = _bind(signature, args, kwargs)
            sol = implicit_solution(lambda s, p, k: optimality_fun(s, *p, **k), sol, (pos, kw), solve)
            return (sol, aux) if has_aux else sol

        # __wrapped__, and the solver's __doc__ and __name__ where it has them (a callable object may not).
        return functools.update_wrapper(wrapped, solver, assigned=("__doc__", "__name__"), updated=())

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable[..., PyTree],
    has_aux: bool = False,
    solve: LinearSolverArg = None,
    reference_signature: Optional[Callable] = None,
) -> Callable[[Callable], Callable]:
    """Decorator adding implicit differentiation to a fixed-point solver (JAXopt-compatible).

    The solution satisfies ``x = T(x, *args)``; this is :func:`custom_root` with
    ``F(x, *args) = T(x, *args) - x``.

    Args:
      fixed_point_fun: ``T(x, *args, **kwargs)``.
      has_aux: whether the solver returns ``(sol, aux)``.
      solve: linear solver; default :func:`~kktbridge.linear_solve.solve_auto`.
      reference_signature: function whose signature binds keyword arguments (default ``T``'s).
    """

    def optimality_fun(x, *args, **kwargs):
        return jax.tree_util.tree_map(jnp.subtract, fixed_point_fun(x, *args, **kwargs), x)

    ref = reference_signature if reference_signature is not None else fixed_point_fun
    return custom_root(optimality_fun, has_aux=has_aux, solve=solve, reference_signature=ref)
