"""The adapter extension point and the host-callback machinery every adapter shares.

An adapter is host code: it receives NumPy arrays, calls an external solver, maps the solver's
status onto :class:`~kktbridge.core._status.Status` and returns NumPy arrays. It never sees JAX
tracers and does no autodiff. :func:`call_adapter` is the single bridge between JAX and an adapter:
one :func:`jax.pure_callback` with ``vmap_method="expand_dims"``, so that under ``vmap`` (nested or
not) the whole batch reaches the host in one call, where :meth:`Adapter.solve_batch` hands it to
the current executor (:mod:`kktbridge.adapters._executor`: a thread pool by default, or worker
processes, or Ray actors), which solves it in parts (:meth:`Adapter.batch_parts`,
:meth:`Adapter.solve_part`) and may reuse setups across the instances of a part.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import copy
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Self, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._status import SolverError, Status
from kktbridge.core._types import ConicStructure, Structure

__all__ = ["Adapter", "ChunkedAdapter", "HostSolution", "call_adapter", "new_token", "pop_native", "quiet_stdout", "thread_pool", "num_workers"]


@dataclass
class HostSolution:
    """One instance's result on the host.

    Attributes:
      values: named output arrays (e.g. ``x``, ``eq_dual``); shapes fixed by the bridge's spec.
      status: mapped :class:`Status`.
      iterations: iteration count reported by the solver.
      native_status: the solver's own status, for error messages.
    """

    values: dict[str, np.ndarray]
    status: Status
    iterations: int = 0
    native_status: Any = None


def num_workers() -> int:
    """Threads used to solve a batch: the machine's cores (``KKTBRIDGE_NUM_THREADS`` overrides)."""
    env = os.environ.get("KKTBRIDGE_NUM_THREADS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


_POOL: Optional[concurrent.futures.ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def thread_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Process-wide pool shared by all adapters (created lazily)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=num_workers(), thread_name_prefix="kktbridge")
        return _POOL


def chunks(n: int, k: int) -> list[range]:
    """Split ``range(n)`` into at most ``k`` contiguous, nearly equal chunks."""
    k = max(1, min(k, n))
    bounds = np.linspace(0, n, k + 1).astype(int)
    return [range(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i] < bounds[i + 1]]


class Adapter(abc.ABC):
    """Base class of solver adapters (one module per solver in ``kktbridge/adapters``).

    Subclasses set :attr:`name` and :attr:`kind` and implement :meth:`solve_one`; they may override
    :meth:`solve_batch` to reuse work across a batch (as the OSQP adapter does). Solver libraries
    must be imported inside methods, never at module import.

    Three things reach an adapter, kept apart: per-instance *data* (NumPy arrays, the ``data``
    dicts), the solver *options* (the user's settings, only the solver's own) and the problem's
    static *structure* (sizes, cone, sparsity, compiled oracles: a frozen record of
    :mod:`kktbridge.core._types`), which the bridge hands over once per problem structure through
    :meth:`prepare`; the prepared adapter reads it as :attr:`structure`.
    """

    #: The structure record of the problem this adapter was prepared for (:meth:`prepare`);
    #: ``None`` on an adapter that has not been prepared.
    structure: Optional[Structure] = None

    name: ClassVar[str]
    #: problem class served: ``"nlp"``, ``"qp"`` or ``"conic"``.
    kind: ClassVar[str]
    #: native status -> Status; every status the solver documents must be listed.
    status_map: ClassVar[Mapping[Any, Status]] = {}
    #: Python modules the solver needs (imported lazily by the adapter; checked by
    #: :func:`~kktbridge.available_solvers`), like cvxpy's ``REQUIRED_MODULES``.
    REQUIRED_MODULES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def is_installed(cls) -> bool:
        """Whether every module in :attr:`REQUIRED_MODULES` can be imported."""
        import importlib

        for module in cls.REQUIRED_MODULES:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - ImportError, or a broken install raising anything
                return False
        return True

    def prepare(self, structure: Structure) -> Self:
        """The adapter that solves the instances of one problem structure.

        Bridges call it once per compiled structure (not per solve) and run that adapter, so the
        structure travels with it -- to worker processes too (:mod:`kktbridge.adapters._executor`).
        The default returns a shallow copy whose :attr:`structure` is ``structure``, leaving this
        (possibly shared, registry-cached) instance untouched. Adapters that need no structure
        work unchanged; override to check the record or to precompute a per-structure setup.

        Args:
          structure: the problem's :data:`~kktbridge.core._types.Structure` record.
        """
        prepared = copy.copy(self)
        prepared.structure = structure
        return prepared

    def map_status(self, native: Any) -> Status:
        """Map a native status; anything unlisted is a failure, never a silent success."""
        return self.status_map.get(native, Status.FAILED)

    def map_exception(self, error: Exception) -> Status:
        """Status of an instance whose solve raised ``error`` (default: the problem was rejected)."""
        return Status.INVALID_PROBLEM

    def validate_options(self, options: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming any option the solver does not accept (before any solve).

        The default accepts everything; adapters whose solver reports bad options only during a
        solve (or only on stdout) override this.
        """

    def guarded_solve_one(self, data: dict[str, np.ndarray], options: Mapping[str, Any]) -> HostSolution:
        """:meth:`solve_one`, with any exception mapped to a failed instance (never a crashed batch)."""
        try:
            return self.solve_one(data, options)
        except Exception as e:  # noqa: BLE001 - solver libraries raise anything; the status says why
            return HostSolution({}, self.map_exception(e), 0, f"{type(e).__name__}: {e}")

    @abc.abstractmethod
    def solve_one(self, data: dict[str, np.ndarray], options: Mapping[str, Any]) -> HostSolution:
        """Solve one instance from NumPy data."""

    def solve_batch(
        self, batch: Sequence[dict[str, np.ndarray]], shared: frozenset, options: Mapping[str, Any]
    ) -> list[HostSolution]:
        """Solve many instances on the current executor (:func:`kktbridge.use_executor`).

        A single instance is solved in the calling thread. Subclasses may override this to take
        over the whole batch (they then bypass the executor).

        Args:
          batch: one data dict per instance.
          shared: names of the arrays that are identical for every instance (not batched).
          options: solver options.
        """
        if len(batch) == 1:
            return [self.guarded_solve_one(batch[0], options)]
        from kktbridge.adapters._executor import get_executor

        return get_executor().solve_batch(self, batch, shared, options)

    def batch_parts(
        self, n: int, shared: frozenset, workers: int, per_instance: bool, parts_per_worker: int = 4
    ) -> list[range]:
        """How an executor splits a batch of ``n`` into parts, each solved by :meth:`solve_part`.

        Args:
          n: batch size.
          shared: names of the arrays every instance shares.
          workers: instances the executor solves at the same time.
          per_instance: one part per instance (cheap tasks, e.g. threads) rather than
            ``parts_per_worker`` contiguous parts per worker (tasks that cost a message).
          parts_per_worker: parts per worker when not ``per_instance`` (load balancing).
        """
        if per_instance:
            return [range(i, i + 1) for i in range(n)]
        return chunks(n, workers * parts_per_worker)

    def solve_part(
        self, part: Sequence[dict[str, np.ndarray]], shared: frozenset, options: Mapping[str, Any]
    ) -> list[HostSolution]:
        """Solve consecutive instances in the calling thread (never raises for one instance)."""
        return [self.guarded_solve_one(d, options) for d in part]


def cone_and_settings(adapter: Adapter, options: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """A conic adapter's cone (an SCS cone dictionary) and its solver settings.

    The cone is static structure: it comes from the :class:`~kktbridge.core._types.ConicStructure`
    the adapter was prepared with (as ``solve_conic`` does). An adapter called directly, without
    :meth:`Adapter.prepare`, may still receive it as ``options["cone"]`` (the earlier contract).

    Returns:
      ``(cone, settings)`` with ``settings`` the options without any ``"cone"`` entry.

    Raises:
      ValueError: naming ``cone`` when neither gives one.
    """
    settings = dict(options)
    legacy = settings.pop("cone", None)
    if isinstance(adapter.structure, ConicStructure):
        return adapter.structure.cone, settings
    if legacy is None:
        raise ValueError(
            f"cone: the {adapter.name} adapter solves a prepared conic problem (adapter.prepare(ConicStructure(...)), "
            "as solve_conic does), or takes options['cone'] (an SCS cone dictionary) when called directly"
        )
    return legacy, settings


class ChunkedAdapter(Adapter):
    """An adapter that reuses one solver setup across consecutive instances of a batch.

    A batch is cut into one contiguous chunk per worker (thread, process or Ray actor);
    :meth:`solve_chunk` solves a chunk with a single setup/factorisation, updating only what
    differs between instances.
    """

    @abc.abstractmethod
    def solve_chunk(
        self, batch: Sequence[dict[str, np.ndarray]], shared: frozenset, options: Mapping[str, Any]
    ) -> list[HostSolution]:
        """Solve consecutive instances, reusing the setup; ``shared`` as in :meth:`solve_batch`."""

    def reuses_setup(self, shared: frozenset) -> bool:
        """Whether a chunk can share one setup given which arrays are shared by the batch."""
        return True

    def solve_one(self, data: dict[str, np.ndarray], options: Mapping[str, Any]) -> HostSolution:
        return self.solve_chunk([data], frozenset(), options)[0]

    def batch_parts(self, n, shared, workers, per_instance, parts_per_worker=4):
        # One contiguous chunk per worker: a setup (factorisation) per chunk, reused along it.
        if not self.reuses_setup(shared):
            return super().batch_parts(n, shared, workers, per_instance, parts_per_worker)
        return chunks(n, workers)

    def solve_part(self, part, shared, options):
        if len(part) == 1 or not self.reuses_setup(shared):
            return super().solve_part(part, shared, options)
        return self._guarded_chunk(part, shared, options)

    def _guarded_chunk(self, batch, shared, options) -> list[HostSolution]:
        try:
            return self.solve_chunk(batch, shared, options)
        except Exception:  # noqa: BLE001 - isolate the offending instance: solve the chunk one by one
            return [self.guarded_solve_one(d, options) for d in batch]


class _ThreadFilteredStream:
    """``sys.stdout`` stand-in that drops writes from threads inside :func:`quiet_stdout`."""

    def __init__(self, target: Any):
        self._target = target

    def write(self, text: str) -> int:
        return len(text) if getattr(_QUIET, "depth", 0) else self._target.write(text)

    def flush(self) -> None:
        if not getattr(_QUIET, "depth", 0):
            self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


_QUIET = threading.local()
_QUIET_LOCK = threading.Lock()
_QUIET_USERS = [0, None]  # active users, installed proxy


@contextlib.contextmanager
def quiet_stdout(enabled: bool = True):
    """Silence what a solver prints through Python's ``sys.stdout`` in *this* thread.

    Some solvers (OSQP's "Polishing not needed…") print through the interpreter even with
    ``verbose=False``. A file-descriptor redirect misses that, and swapping ``sys.stdout`` for
    everyone would also swallow the user's own output from other threads, so a proxy drops only
    the writes of threads currently inside this context.
    """
    if not enabled:
        yield
        return
    with _QUIET_LOCK:
        if _QUIET_USERS[0] == 0:
            _QUIET_USERS[1] = _ThreadFilteredStream(sys.stdout)
            sys.stdout = _QUIET_USERS[1]
        _QUIET_USERS[0] += 1
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1
        with _QUIET_LOCK:
            _QUIET_USERS[0] -= 1
            if _QUIET_USERS[0] == 0:
                if sys.stdout is _QUIET_USERS[1]:
                    sys.stdout = _QUIET_USERS[1]._target
                _QUIET_USERS[1] = None


_NATIVE_LOCK = threading.Lock()
_NATIVE_LOG: dict[int, list] = {}
_NATIVE_NEXT = [0]


def new_token() -> int:
    """A fresh positive id under which an eager call's host callback records native statuses."""
    with _NATIVE_LOCK:
        _NATIVE_NEXT[0] = _NATIVE_NEXT[0] % 2_000_000_000 + 1
        return _NATIVE_NEXT[0]


def pop_native(token: int) -> list:
    """Native statuses of the failed instances recorded under ``token`` (and forget them)."""
    with _NATIVE_LOCK:
        return _NATIVE_LOG.pop(int(token), [])


def call_adapter(
    adapter: Adapter,
    data: Mapping[str, jax.Array],
    out_spec: Mapping[str, jax.ShapeDtypeStruct],
    options: Mapping[str, Any],
    *,
    raise_on_failure: bool = False,
    accept_inaccurate: bool = False,
    token: Optional[jax.Array] = None,
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """Run ``adapter`` on the host from JAX, batching over any leading ``vmap`` axes.

    Args:
      adapter: the adapter instance.
      data: named input arrays (unbatched shapes as the bridge built them).
      out_spec: named output shapes/dtypes for one instance.
      options: solver options (static).
      raise_on_failure: raise :class:`SolverError` from the host when an instance is not accepted
        (see :meth:`Status.accepted`). Used only where the bridge cannot inspect the status itself
        (inside ``jit``/``vmap``), in which case JAX reports it wrapped in its runtime error.
      accept_inaccurate: whether ``SOLVED_INACCURATE`` counts as accepted for ``raise_on_failure``.
      token: an ``int32`` scalar; when positive, the native statuses of failed instances are
        recorded under it for :func:`pop_native` (eager calls, which then raise with them).

    Returns:
      ``(values, status, iterations)``; ``status`` and ``iterations`` are ``int32`` scalars per
      instance. Values of instances that returned nothing (e.g. the solver raised) are NaN.
    """
    names = list(data)
    arrays = [jnp.asarray(data[k]) for k in names]
    if token is None:
        token = jnp.zeros((), jnp.int32)
    base_ndim = [a.ndim for a in arrays]
    out_names = list(out_spec)

    def host(tok, *host_arrays):
        host_arrays = [np.asarray(a) for a in host_arrays]
        lead = [a.shape[: a.ndim - nd] for a, nd in zip(host_arrays, base_ndim)]
        batch_shape = np.broadcast_shapes(*lead) if lead else ()
        size = int(np.prod(batch_shape, dtype=int))
        flat = []
        for a, nd, ld in zip(host_arrays, base_ndim, lead):
            a = np.broadcast_to(a, batch_shape + a.shape[a.ndim - nd :])
            flat.append(a.reshape((size,) + a.shape[len(batch_shape) :]))
        shared = frozenset(k for k, ld in zip(names, lead) if int(np.prod(ld, dtype=int)) == 1)
        batch = [{k: flat[j][i] for j, k in enumerate(names)} for i in range(size)]
        results = adapter.solve_batch(batch, shared, options)
        failed = [r for r in results if not r.status.accepted(accept_inaccurate)]
        tok = int(np.asarray(tok).ravel()[0]) if np.size(tok) else 0
        if failed and tok > 0:
            with _NATIVE_LOCK:
                _NATIVE_LOG.setdefault(tok, []).extend((r.status, r.native_status) for r in failed)
                while len(_NATIVE_LOG) > 64:  # bounded: entries of calls that never collected them
                    _NATIVE_LOG.pop(next(iter(_NATIVE_LOG)))
        if raise_on_failure and failed:
            raise SolverError(adapter.name, failed[0].status, failed[0].native_status)
        outs = []
        for k in out_names:
            spec = out_spec[k]

            def value(r):
                v = r.values.get(k)
                if v is None or not r.status.ok:
                    return np.full(spec.shape, np.nan, dtype=spec.dtype)
                return np.asarray(v, dtype=spec.dtype).reshape(spec.shape)

            stacked = np.stack([value(r) for r in results]) if results else np.zeros((0,) + tuple(spec.shape), spec.dtype)
            outs.append(stacked.reshape(batch_shape + tuple(spec.shape)))
        status = np.array([int(r.status) for r in results], dtype=np.int32).reshape(batch_shape)
        iters = np.array([int(r.iterations) for r in results], dtype=np.int32).reshape(batch_shape)
        return (*outs, status, iters)

    specs = [out_spec[k] for k in out_names] + [
        jax.ShapeDtypeStruct((), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32),
    ]
    token = jnp.asarray(token, jnp.int32)
    axes = varying_axes(token, *arrays)
    if axes:
        raise ValueError(
            f"kktbridge under jax.shard_map needs check_vma=False (the data varies over mesh axes {sorted(axes)}): "
            "with check_vma=True JAX types a host callback's results as identical on every device, and "
            "derivatives taken at them would be summed over the devices. Use "
            "jax.shard_map(f, mesh=..., in_specs=..., out_specs=..., check_vma=False)"
        )
    res = jax.pure_callback(host, tuple(specs), token, *arrays, vmap_method="expand_dims")
    values = dict(zip(out_names, res[: len(out_names)]))
    return values, res[-2], res[-1]


def varying_axes(*arrays: Any) -> frozenset:
    """Manual mesh axes (``jax.shard_map`` with ``check_vma=True``) over which ``arrays`` vary.

    Inside such a ``shard_map`` JAX types a ``pure_callback``'s results as *invariant* across
    devices (the same on every device) whatever its inputs. They are not: each device solves its
    own instances. A gradient taken *at* such a point -- the stationarity term of every KKT
    residual -- is then summed over the devices (``psum_invariant``), so residuals and
    derivatives would come out wrong; :func:`call_adapter` refuses instead. With
    ``check_vma=False`` there is no such typing (empty result) and per-device solves are exact.
    """
    axes: frozenset = frozenset()
    typeof = getattr(jax, "typeof", None)  # older JAX: no varying-axes typing, nothing to check
    if typeof is None:
        return axes
    for a in arrays:
        mat = getattr(typeof(a), "mat", None)
        axes = axes | frozenset(getattr(mat, "varying", None) or ())
    return axes
