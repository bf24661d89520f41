r"""The one differentiable-solve pipeline every bridge runs, plus shared input validation.

A bridge call is split into two compiled stages, each cached per problem *structure* (bridge,
solver, options, shapes, dtypes, user functions, failure policy) in a bounded LRU cache:

1. **solve** (on ``stop_gradient``-ed data): one host callback runs the adapter over the whole
   (possibly ``vmap``-ed) batch; then, in JAX, the optimality residual of the returned point is
   measured, the bridge's diagnostics are computed, and the status becomes
   ``RESIDUAL_TOO_LARGE`` where the residual exceeds ``residual_tol``;
2. **differentiate**: the accepted point goes through
   :func:`~kktbridge.core._implicit.implicit_solution` (failed instances get NaN values and NaN
   derivatives, without touching other instances' derivatives).

Eager calls therefore compile once per structure and then only dispatch (no re-tracing, no new
callback closures, flat memory); an eager reverse-mode derivative runs stage 2 as a ``custom_vjp``
with a compiled pullback (:func:`_reverse_stage`); inside a user's ``jit``/``vmap`` the same
stages are traced inline. An eager failure raises :class:`~kktbridge.SolverError` from Python with the
solver's native status; inside ``jit`` the host callback raises it (wrapped by JAX).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, NamedTuple, Optional, Sequence, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.typing import DTypeLike

from kktbridge.core._checks import is_concrete  # noqa: F401  (re-exported for the bridges)
from kktbridge.core._checks import x64_enabled
from kktbridge.core._jax_compat import concrete_batch, eval_context, is_jvp_tracer, is_linearize_tracer
from kktbridge.core._status import SolverError, Status
from kktbridge.core._types import FailurePolicy, LinearSolverArg, OnFailure, PyTree, Structure
from kktbridge.core._xla import stage_jit

if TYPE_CHECKING:  # adapters import this package's siblings lazily; types only
    from kktbridge.adapters import Adapter
    from kktbridge.core._structured import MatrixFormat

ON_FAILURE = tuple(p.value for p in FailurePolicy)


class Diagnostics(NamedTuple):
    """Cheap per-solution diagnostics (one value per instance; a pytree leaf group).

    Attributes:
      residual: relative infinity norm of the optimality residual at the returned point
        (KKT residual, or the conic residual map); above ``residual_tol`` the status is
        ``RESIDUAL_TOO_LARGE``.
      complementarity_margin: ``min_i max(λ̂_i, ŝ_i)`` over inequality rows, with the scale-free
        multiplier ``λ̂`` and slack ``ŝ`` of :func:`kktbridge.core._kkt.kkt_activity` (``inf`` without
        inequalities). Small means a constraint is nearly weakly active: the solution map has a kink
        nearby and derivatives are one-sided.
      weakly_active: number of inequality rows with both ``λ̂`` and ``ŝ`` below the activity
        tolerance (treated as inactive: the one-sided derivative that keeps them inactive).
      kkt_condition: 2-norm condition number of the IFT matrix ``∂₁F`` when requested with
        ``diagnose=True``; NaN otherwise (materialising it costs as much as a derivative).
    """

    residual: jax.Array
    complementarity_margin: jax.Array
    weakly_active: jax.Array
    kkt_condition: jax.Array




def check_on_failure(on_failure: str) -> None:
    """Raise ``ValueError`` unless ``on_failure`` is one of :data:`ON_FAILURE` (typed :data:`OnFailure`)."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure: expected one of {ON_FAILURE}, got {on_failure!r}")


@overload
def cast(a: jax.Array, dtype: DTypeLike) -> jax.Array: ...


@overload
def cast(a: np.ndarray, dtype: DTypeLike) -> np.ndarray: ...


def cast(a: "jax.Array | np.ndarray", dtype: DTypeLike) -> "jax.Array | np.ndarray":
    """``a`` as ``dtype``, with no conversion op when it already is: on a concrete array that op
    would be an eager dispatch on every call and an XLA compilation on a structure's first."""
    return a if a.dtype == dtype else a.astype(dtype)


def as_array(
    name: str,
    value: Any,
    ndim: Optional[int] = None,
    shape: Optional[Sequence[Optional[int]]] = None,
    allow_inf: bool = False,
) -> jax.Array:
    """Convert to a floating JAX array and check rank/shape, naming ``name`` in errors.

    ``shape`` entries may be ``None`` (any size). NaN (and inf unless ``allow_inf``) are rejected
    when the value is concrete.
    """
    if value is None:
        raise ValueError(f"{name}: expected an array, got None")
    try:
        # Already an array (or a tracer): no jnp.asarray, which binds a conversion that costs
        # ~0.4 ms per argument under an eager jax.jacrev/grad (linearize traces every bind).
        arr = value if isinstance(value, jax.Array) else jnp.asarray(value)
    except TypeError as e:
        raise ValueError(f"{name}: expected an array, got {type(value).__name__} ({e})") from None
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(arr.shape)}")
    if shape is not None:
        if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")
    check_finite(name, arr, allow_inf=allow_inf)
    return arr


def check_finite(name: str, arr: Any, allow_inf: bool = False) -> None:
    """Reject NaN (and inf unless allowed) in concrete data before any solver runs."""
    if not is_concrete(arr):
        return
    a = np.asarray(arr)
    bad = np.isnan(a) if allow_inf else ~np.isfinite(a)
    if bad.any():
        what = "NaN" if allow_inf or np.isnan(a).any() else "inf"
        raise ValueError(f"{name}: contains {what} at index {tuple(int(i) for i in np.argwhere(bad)[0])}")


def hashable(value: Any) -> Hashable:
    """A hashable stand-in for an option value (lists, dicts, arrays included), for cache keys."""
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        a = np.asarray(value)
        return ("array", a.shape, str(a.dtype), a.tobytes())
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))  # unhashable and unknown: identity (worst case a cache miss)
    return value


def structure(*trees: PyTree) -> Hashable:
    """Tree structure plus shape and dtype of every leaf: what a compiled stage depends on."""
    leaves, treedef = jax.tree_util.tree_flatten(trees)
    return (treedef, tuple((tuple(jnp.shape(x)), str(jnp.result_type(x))) for x in leaves))


class LRUCache:
    """A small thread-safe LRU map (compiled stages per problem structure)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = build()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


#: Compiled stages of every bridge, keyed by problem structure; bounded so memory stays flat.
PIPELINE_CACHE = LRUCache(128)


def clear_caches() -> None:
    """Drop every compiled bridge stage (and JAX's own caches) and the QP backward's cached
    factorisations; the next call recompiles."""
    PIPELINE_CACHE.clear()
    from kktbridge.bridges import _nlp
    from kktbridge.core._implicit import clear_implicit_cache
    from kktbridge.core._structured import clear_factor_cache

    _nlp.clear_oracle_cache()
    clear_implicit_cache()
    clear_factor_cache()
    jax.clear_caches()


class Policy(NamedTuple):
    """How a bridge call treats its solution: linear solver, acceptance and diagnostics.

    Attributes:
      solve: linear solver of the IFT system (name, callable or ``None`` for the default).
      accept_inaccurate: accept ``SOLVED_INACCURATE`` solutions.
      residual_tol: largest relative optimality residual accepted.
      diagnose: compute the KKT condition number into the diagnostics.
    """

    solve: LinearSolverArg
    accept_inaccurate: bool
    residual_tol: float
    diagnose: bool

    @classmethod
    def make(cls, dtype: DTypeLike, solve: LinearSolverArg, accept_inaccurate: bool, residual_tol: Optional[float],
             diagnose: bool) -> "Policy":
        tol = default_residual_tol(dtype) if residual_tol is None else float(residual_tol)
        return cls(solve, bool(accept_inaccurate), tol, bool(diagnose))

    def key(self) -> Hashable:
        return (solve_key(self.solve), self.accept_inaccurate, self.residual_tol, self.diagnose)


@dataclass(frozen=True)
class BridgePlan:
    """The static description of one problem structure, built once and cached.

    A bridge supplies pure functions of its (differentiable) arguments ``args`` and of
    non-differentiable ``extra`` data (initial points, warm starts):

    * ``host_data(args, extra) -> dict`` — arrays the adapter receives;
    * ``to_point(values) -> z`` — the unknowns of the optimality conditions, from solver outputs;
    * ``check(z, args) -> (residual, activity, margin, n_weak)`` — relative residual and the
      (non-differentiable) activity data the residual map needs;
    * ``residual(z, args, activity) -> F`` — the optimality conditions whose root is ``z``;
    * ``fallback(args, extra) -> z`` — a point where ``residual`` is finite, used to linearise
      failed instances;
    * ``finish(z, values, args, status, iterations, diagnostics) -> solution``;
    * optionally ``jacobian(z, args, activity) -> ∂₁F`` in flat coordinates, when the bridge knows
      it in closed form (QPs): a dense matrix, or the data of ``jacobian_format`` (a
      :class:`~kktbridge.core._structured.MatrixFormat`); the backward then uses it instead of one
      JVP of ``residual`` per unknown.

    ``options`` are the solver's own settings only; what is static about the problem (sizes, cone,
    sparsity, compiled oracles) is the ``structure`` record, given to the adapter once through
    :meth:`Adapter.prepare <kktbridge.adapters.Adapter.prepare>`: the pipeline runs
    :attr:`solver`, the adapter so prepared.
    """

    adapter: "Adapter"
    out_spec: Mapping[str, jax.ShapeDtypeStruct]
    options: Mapping[str, Any]
    host_data: Callable
    to_point: Callable
    check: Callable
    residual: Callable
    fallback: Callable
    finish: Callable
    policy: Policy
    jacobian: Optional[Callable] = None
    jacobian_format: "MatrixFormat | None" = None
    structure: Optional[Structure] = None
    #: optional ``refine(z, args) -> (z, values_update)``: a polished point (e.g. Newton steps on
    #: ``residual``) and the solver outputs it implies; kept per instance only where its residual
    #: is smaller (``check`` judges both, so a refinement can never pass a worse point).
    refine: Optional[Callable] = None
    stages: dict = field(default_factory=dict, compare=False, hash=False)
    #: the adapter prepared for ``structure`` (``adapter`` itself without one); set on creation.
    solver: "Adapter" = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        # Once per plan: executors pickle one payload per (solver, options) object pair.
        solver = self.adapter if self.structure is None else self.adapter.prepare(self.structure)
        object.__setattr__(self, "solver", solver)


def default_residual_tol(dtype: DTypeLike) -> float:
    """Residual above which a returned point is not trusted for derivatives.

    ``sqrt(eps)`` of the dtype (1.5e-8 in float64) times 100: well above what the solvers'
    default tolerances leave (1e-9 and tighter) and far below the residual of a truncated solve.
    """
    return float(100 * np.sqrt(np.finfo(np.dtype(dtype)).eps))


def _solve_stage(plan: BridgePlan, raise_in_callback: bool) -> Callable:
    from kktbridge.adapters import call_adapter

    def stage(args, extra, token):
        data = plan.host_data(args, extra)
        values, status, iters = call_adapter(
            plan.solver,
            data,
            plan.out_spec,
            plan.options,
            raise_on_failure=raise_in_callback,
            accept_inaccurate=plan.policy.accept_inaccurate,
            token=token,
        )
        ok = accepted(status, plan.policy.accept_inaccurate)
        z = plan.to_point(values)
        z_safe = jax.tree_util.tree_map(lambda a, f: jnp.where(ok, a, f), z, plan.fallback(args, extra))
        residual, activity, margin, n_weak = plan.check(z_safe, args)
        if plan.refine is not None:
            values, z_safe, (residual, activity, margin, n_weak) = _refined(
                plan, args, ok, values, z_safe, (residual, activity, margin, n_weak))
        residual = jnp.where(ok, residual, jnp.nan)
        too_large = ok & ~(residual <= plan.policy.residual_tol)
        status = jnp.where(too_large, jnp.int32(Status.RESIDUAL_TOO_LARGE), status)
        if raise_in_callback:
            values = _raise_if_residual_too_large(plan.adapter.name, values, status, residual, plan.policy.residual_tol)
        cond = _kkt_condition(plan, z_safe, args, activity) if plan.policy.diagnose else jnp.full_like(residual, jnp.nan)
        diag = Diagnostics(residual, jnp.where(ok, margin, jnp.nan), jnp.where(ok, n_weak, -1).astype(jnp.int32), cond)
        return values, status, iters, diag, activity

    return stage_jit(stage)


def _refined(plan: BridgePlan, args: PyTree, ok: jax.Array, values: dict, z: PyTree, checked: tuple) -> tuple:
    """Apply ``plan.refine`` where a solved point's residual is above round-off, keep it only where
    it lowers the residual. A ``cond``: eager unbatched calls pay for it only when needed."""
    refine = plan.refine
    assert refine is not None
    residual = checked[0]
    need = ok & (residual > 100 * jnp.finfo(residual.dtype).eps)

    def polish():
        z_new, update = refine(z, args)
        checked_new = plan.check(z_new, args)
        better = need & (checked_new[0] < residual)
        pick = lambda a, b: jnp.where(better, a, b)  # noqa: E731
        vals = {k: pick(update[k], v) if k in update else v for k, v in values.items()}
        return vals, jax.tree_util.tree_map(pick, z_new, z), jax.tree_util.tree_map(pick, checked_new, checked)

    return jax.lax.cond(jnp.any(need), polish, lambda: (values, z, checked))


def _kkt_condition(plan: BridgePlan, z: PyTree, args: PyTree, activity: PyTree) -> jax.Array:
    from jax.flatten_util import ravel_pytree

    z_flat, unravel = ravel_pytree(z)
    if plan.jacobian is not None:
        from kktbridge.core._structured import DENSE

        J = (plan.jacobian_format or DENSE).dense(plan.jacobian(z, args, activity))
    else:
        J = jax.jacfwd(lambda v: ravel_pytree(plan.residual(unravel(v), args, activity))[0])(z_flat)
    return jnp.linalg.cond(J) if J.size else jnp.ones((), J.dtype)


def _raise_if_residual_too_large(solver: str, values: dict, status: jax.Array, residual: jax.Array, tol: float) -> dict:
    """``values``, made to depend on a host check that raises when a residual check failed (inside ``jit``).

    Only the status and residual go to the host; it returns a flag per instance that the values
    are selected by (``NaN`` where it is false, which the raise pre-empts). Passing the values
    themselves through the callback cost ~0.3 ms of copies per call for a 32-instance QP batch of
    n = 100 (about 10 % of DAQP's solve), and a flag nobody reads would be removed by XLA.
    """

    def host(st, res):
        st = np.asarray(st)
        bad = st == int(Status.RESIDUAL_TOO_LARGE)
        if bad.any():
            r = float(np.asarray(res)[bad].max())
            raise SolverError(solver, Status.RESIDUAL_TOO_LARGE, f"relative residual {r:.2e} > residual_tol {tol:.1e}")
        return ~bad

    fine = jax.pure_callback(host, jax.ShapeDtypeStruct(status.shape, jnp.bool_), status, residual, vmap_method="expand_dims")

    def tie(v: jax.Array) -> jax.Array:
        flag = fine.reshape(fine.shape + (1,) * (v.ndim - fine.ndim))
        return jnp.where(flag, v, jnp.asarray(jnp.nan if jnp.issubdtype(v.dtype, jnp.inexact) else 0, v.dtype))

    return {k: tie(v) for k, v in values.items()}


def _diff_fn(plan: BridgePlan) -> Callable:
    from kktbridge.core._implicit import implicit_solution

    def stage(values, status, iters, diag, activity, args, extra):
        ok = accepted(status, plan.policy.accept_inaccurate)
        z = plan.to_point(values)
        z = jax.tree_util.tree_map(lambda a: jnp.where(ok, a, jnp.nan), z)
        z = implicit_solution(
            lambda zz, a, act: plan.residual(zz, a, act),
            z,
            (args, activity),
            plan.policy.solve,
            valid=ok,
            fallback=plan.fallback(args, extra),
            jacobian=plan.jacobian,
            jacobian_format=plan.jacobian_format,
        )
        return plan.finish(z, values, args, status, iters, diag)

    return stage


def _diff_stage(plan: BridgePlan) -> Callable:
    return stage_jit(_diff_fn(plan))


def _reverse_stage(plan: BridgePlan, diff: Callable) -> Callable:
    """The differentiate stage for an eager reverse-mode call (``grad``/``jacrev``/``vjp`` outside
    ``jit``), as a ``custom_vjp`` whose forward and pullback are each one compiled program.

    The same derivative as linearizing ``diff``: the pullback is ``jax.vjp`` of the stage's own
    function with respect to the arguments the caller perturbs, compiled once per set of nonzero
    output cotangents and perturbed arguments. Under ``jacrev``'s ``vmap`` over a basis the
    pullback runs as one ``vmap``-ed program on the cotangents' concrete values (compiled once per
    set of batch axes; see :func:`~kktbridge.core._jax_compat.concrete_batch`). Linearizing the
    compiled stage instead makes JAX partially evaluate, transpose and re-dispatch it from Python on
    every call (measured: 3.3 ms of a 4.3 ms eager QP ``jacrev`` whose jitted twin takes 1.0 ms).
    Forward mode never reaches this stage
    (:func:`_reverse_primals`), so ``jacfwd``/``hessian`` keep the ``custom_jvp`` path.
    """
    from jax.custom_derivatives import SymbolicZero

    fn = _diff_fn(plan)
    pulls: dict = {}

    def pull_for(treedef, zero: tuple[bool, ...], perturbed: tuple[bool, ...],
                 axes: Optional[tuple[Optional[int], ...]] = None) -> Callable:
        # Only the arguments the caller differentiates get cotangents: under jacrev's vmap a
        # cotangent of an unperturbed P or G is one (n, n) matrix per basis vector (measured on an
        # n = 300 QP: 179 ms, against 74 ms for linearizing the stage, which prunes them).
        # Zero output cotangents (outputs the caller does not use: duals, status, diagnostics...)
        # are made inside the program: as inputs they were one eager broadcast each, per call.
        def pullback(rest, args, extra, live):
            flat, args_def = jax.tree_util.tree_flatten(args)

            def of(diff_leaves):
                it = iter(diff_leaves)
                merged = [next(it) if p else leaf for leaf, p in zip(flat, perturbed)]
                return fn(*rest, jax.tree_util.tree_unflatten(args_def, merged), extra)

            out, vjp = jax.vjp(of, [leaf for leaf, p in zip(flat, perturbed) if p])
            it = iter(live)
            cts = [_zero_cotangent(o) if z else next(it) for o, z in zip(jax.tree_util.tree_leaves(out), zero)]
            return vjp(jax.tree_util.tree_unflatten(treedef, cts))[0]

        key = (treedef, zero, perturbed, axes)
        if key not in pulls:
            # Under jacrev's vmap: the batched pullback as one program (see concrete_batch).
            pulls[key] = stage_jit(pullback if axes is None else jax.vmap(pullback, in_axes=(None, None, None, list(axes))))
        return pulls[key]

    def call(args, rest, extra):
        # The solver's outputs are closed over, not inputs: a custom_vjp input needs a cotangent.
        perturbed: list = []

        @jax.custom_vjp
        def solution(a):
            return diff(*rest, a, extra)

        def fwd(a):
            perturbed[:] = [p.perturbed for p in jax.tree_util.tree_leaves(a)]
            a = jax.tree_util.tree_map(lambda p: p.value, a)
            with eval_context():  # concrete inputs: plain eager dispatch (see run_pipeline)
                return diff(*rest, a, extra), a

        def bwd(a, ct):
            leaves, treedef = jax.tree_util.tree_flatten(ct, is_leaf=lambda c: isinstance(c, SymbolicZero))
            zero = tuple(isinstance(c, SymbolicZero) for c in leaves)
            live = [c for c, z in zip(leaves, zero) if not z]
            mask = tuple(perturbed)
            batch = concrete_batch(live)
            if batch is None:
                grads = iter(pull_for(treedef, zero, mask)(rest, a, extra, live))
            else:
                values, axes, wrap = batch
                with eval_context():
                    batched = pull_for(treedef, zero, mask, axes)(rest, a, extra, values)
                grads = iter([wrap(g) for g in batched])
            # An unperturbed argument's cotangent is a symbolic zero (None), never materialised.
            args_def = jax.tree_util.tree_structure(a)
            return (jax.tree_util.tree_unflatten(args_def, [next(grads) if p else None for p in mask]),)

        solution.defvjp(fwd, bwd, symbolic_zeros=True)
        return solution(args)

    return call


def _zero_cotangent(out: jax.Array) -> Any:
    if jnp.issubdtype(out.dtype, jnp.inexact):
        return jnp.zeros(out.shape, out.dtype)
    return np.zeros(out.shape, jax.dtypes.float0)


def _eager_primals(tree: PyTree, is_kind: Callable[[type], bool]) -> Optional[PyTree]:
    """``tree`` with its tracers replaced by their values when every tracer is of one autodiff
    trace of the kind ``is_kind`` accepts and holds a concrete value (an eager ``grad``/``jacrev``,
    or an eager ``jvp``/``jacfwd``). ``None`` otherwise (no tracers, ``jit``, a ``vmap`` of the
    primals, other kinds, or nested derivatives), where the pipeline traces as usual."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out, trace = [], None
    for leaf in leaves:
        if isinstance(leaf, Tracer):
            primal = getattr(leaf, "primal", None)
            owner = getattr(leaf, "_trace", None)
            if not is_kind(type(leaf)) or primal is None or isinstance(primal, Tracer):
                return None
            if trace is not None and owner is not trace:
                return None
            trace = owner
            leaf = primal
        out.append(leaf)
    return None if trace is None else jax.tree_util.tree_unflatten(treedef, out)


def _reverse_primals(tree: PyTree) -> Optional[PyTree]:
    """:func:`_eager_primals` of an eager reverse-mode call (linearize tracers)."""
    return _eager_primals(tree, is_linearize_tracer)


def _forward_primals(tree: PyTree) -> Optional[PyTree]:
    """:func:`_eager_primals` of an eager forward-mode call (JVP tracers, also under ``jacfwd``'s
    ``vmap`` over tangents, which batches the tangents only)."""
    return _eager_primals(tree, is_jvp_tracer)


def accepted(status: jax.Array, accept_inaccurate: bool) -> jax.Array:
    """In-graph :meth:`Status.accepted`."""
    ok = status == int(Status.SOLVED)
    if accept_inaccurate:
        ok = ok | (status == int(Status.SOLVED_INACCURATE))
    return ok


def run_pipeline(key: Hashable, build: Callable[[], BridgePlan], args: PyTree, extra: PyTree, on_failure: OnFailure) -> Any:
    """Solve and differentiate one bridge call (see the module docstring).

    Args:
      key: hashable problem structure; calls with equal keys share compiled stages.
      build: builds the :class:`BridgePlan` on a cache miss.
      args: differentiable problem data (pytree of arrays).
      extra: non-differentiable data (pytree of arrays), e.g. initial points.
      on_failure: ``"raise"`` or ``"nan"``.
    """
    from kktbridge.adapters import new_token, pop_native

    plan: BridgePlan = PIPELINE_CACHE.get_or_build(key, build)
    reverse = _reverse_primals((args, extra))
    # An eager jvp/jacfwd: the solve needs only the primal values (the solver's outputs are not
    # differentiated), so it runs as a plain eager call; only the differentiate stage sees the
    # tangents.
    forward = None if reverse is not None else _forward_primals((args, extra))
    if reverse is not None:
        args_s, extra_s = reverse
    elif forward is not None:
        args_s, extra_s = forward
    else:
        stop = jax.lax.stop_gradient
        args_s, extra_s = jax.tree_util.tree_map(stop, (args, extra))
    eager = is_concrete(args_s, extra_s)
    raise_in_callback = on_failure == "raise" and not eager
    stage = plan.stages.get(("solve", raise_in_callback))
    if stage is None:
        stage = plan.stages[("solve", raise_in_callback)] = _solve_stage(plan, raise_in_callback)
    token = new_token() if eager else 0
    # Under an eager grad/jacrev (jvp/jacfwd) the caller's linearize (JVP) trace is current: with every input concrete,
    # run the stage in the eval context, so that it dispatches like any eager call (JAX's C++ path),
    # not through the trace's Python fallback (measured: ~1 ms per call on a 20-variable QP).
    with eval_context() if reverse is not None or forward is not None else contextlib.nullcontext():
        values, status, iters, diag, activity = stage(args_s, extra_s, np.int32(token))
    if eager:
        natives = pop_native(token)
        if on_failure == "raise":
            codes = np.atleast_1d(np.asarray(status))
            bad = [Status(int(c)) for c in codes if not Status(int(c)).accepted(plan.policy.accept_inaccurate)]
            if bad:
                native = next((n for st, n in natives if st == bad[0]), None)
                if bad[0] is Status.RESIDUAL_TOO_LARGE:
                    res = np.nanmax(np.atleast_1d(np.asarray(diag.residual)))
                    native = f"relative residual {res:.2e} > residual_tol {plan.policy.residual_tol:.1e}"
                raise SolverError(plan.adapter.name, bad[0], native)
    diff = plan.stages.get("diff")
    if diff is None:
        diff = plan.stages["diff"] = _diff_stage(plan)
    if reverse is not None:
        rev = plan.stages.get("reverse")
        if rev is None:
            rev = plan.stages["reverse"] = _reverse_stage(plan, diff)
        return rev(args, (values, status, iters, diag, activity), extra_s)
    return diff(values, status, iters, diag, activity, args, extra_s)


_WARNED_X64 = [False]


def warn_if_truncated(name: str, value: Any) -> None:
    """Warn once per process when float64 input is silently computed in float32 (x64 disabled)."""
    if _WARNED_X64[0] or x64_enabled():
        return
    dt = getattr(value, "dtype", None)
    if dt is not None and np.dtype(dt) == np.float64:
        _WARNED_X64[0] = True
        warnings.warn(
            f"{name}: float64 input is computed in float32 because JAX's x64 mode is off; enable it with "
            "jax.config.update('jax_enable_x64', True) for float64 results",
            stacklevel=3,
        )


def options_key(options: Mapping[str, Any]) -> Hashable:
    return tuple(sorted((k, hashable(v)) for k, v in options.items()))


def solve_key(solve: LinearSolverArg) -> Hashable:
    return hashable(solve) if isinstance(solve, str) or solve is None else ("fn", id(solve), solve)
