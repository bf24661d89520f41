r"""Executors: where the host side of a batch solve runs (threads, worker processes, Ray).

Under ``vmap`` a whole batch reaches the host in one callback (:func:`~kktbridge.adapters._base.call_adapter`);
:meth:`Adapter.solve_batch <kktbridge.adapters._base.Adapter.solve_batch>` hands it to the current
executor, which splits it into *parts* (:meth:`Adapter.batch_parts`) and solves each part serially
in one worker (:meth:`Adapter.solve_part`):

* :class:`ThreadExecutor` (the default): the process-wide thread pool, one instance per task (one
  contiguous chunk per thread for adapters that reuse a setup, e.g. OSQP). Solvers whose callbacks
  need the GIL (IPOPT calls JAX-compiled oracles from Python) do not scale past one core here.
* :class:`ProcessExecutor`: a :class:`concurrent.futures.ProcessPoolExecutor` of *spawned* worker
  processes (forking a process that runs JAX's threads can deadlock).
* :class:`RayExecutor`: one Ray actor per CPU of the Ray cluster.

For the last two, the adapter -- prepared for the problem structure, so carrying its structure
record (:meth:`Adapter.prepare <kktbridge.adapters._base.Adapter.prepare>`) -- and its options
travel to the workers as one `cloudpickle <https://github.com/cloudpipe/cloudpickle>`_ *payload*
per problem structure: the NLP bridge's compiled oracles (in the
:class:`~kktbridge.core._types.NLPStructure` record) are ``jax.jit`` wrappers of Python functions, which cloudpickle
sends as those Python functions (the user's objective and constraints included, by reference
when their module is importable, by value otherwise), so each worker re-traces and compiles them
once and keeps the result in a per-worker cache keyed by the payload: the second call of the same
structure finds its oracles (and any setup cached on the adapter) warm. A payload that cannot be
pickled -- typically a user function closing over a lock, an open file or a C object -- raises
:class:`UnpicklableError` (a ``ValueError``) naming that function; kktbridge never falls back to
threads silently. A worker that dies (e.g. a solver segfault) fails the instances it held with
``Status.FAILED`` (NaN values and derivatives, as any failed instance) -- with a process pool, also
those of parts still in flight, which ``concurrent.futures`` cancels -- and the pool is replaced
on the next call; statuses, native statuses and the NaN policy are those of the threads executor, since the
workers return the same :class:`~kktbridge.adapters._base.HostSolution` records.

The setting is process-wide (the callback runs on a JAX runtime thread, not the caller's), and is
read when the callback runs: inside ``with use_executor(...)`` block on results (e.g. convert
them to NumPy) before leaving the block.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import functools
import os
import sys
import threading
import time
import types
import uuid
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

from kktbridge.core._checks import x64_enabled
from kktbridge.core._status import Status

__all__ = [
    "Executor",
    "ThreadExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "UnpicklableError",
    "get_executor",
    "use_executor",
]


class UnpicklableError(ValueError):
    """A problem (usually a user function) cannot be sent to worker processes."""


class Executor(abc.ABC):
    """Runs the host side of batch solves. Subclass it to bring another backend.

    Implementations receive the adapter, one data dict per instance, the names of the arrays every
    instance shares and the solver options, and return one
    :class:`~kktbridge.adapters._base.HostSolution` per instance, in order. They must never raise
    for a failed instance (map it to a failed status instead).
    """

    #: name accepted by :func:`use_executor`.
    name: ClassVar[str] = ""

    @abc.abstractmethod
    def solve_batch(self, adapter, batch: Sequence[dict], shared: frozenset, options: Mapping[str, Any]) -> list:
        """Solve ``batch`` with ``adapter``; one :class:`HostSolution` per instance, in order."""

    @property
    def workers(self) -> int:
        """Number of instances solved at the same time."""
        from kktbridge.adapters._base import num_workers

        return num_workers()

    def shutdown(self) -> None:
        """Release workers (a later batch starts them again)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


class ThreadExecutor(Executor):
    """Solve on the process-wide thread pool (``KKTBRIDGE_NUM_THREADS`` threads; the default).

    Plain adapters get one task per instance (dynamic load balancing); adapters that reuse a
    setup across instances (:class:`~kktbridge.adapters._base.ChunkedAdapter`) one contiguous
    chunk per thread.
    """

    name: ClassVar[str] = "threads"

    def solve_batch(self, adapter, batch, shared, options):
        from kktbridge.adapters._base import thread_pool

        parts = adapter.batch_parts(len(batch), shared, self.workers, per_instance=True)
        results = thread_pool().map(lambda r: adapter.solve_part([batch[i] for i in r], shared, options), parts)
        return [sol for part in results for sol in part]


# ------------------------------------------------------------------------------ remote executors


class _Payload:
    """The pickled ``(adapter, options)`` of one problem structure, sent to every worker.

    The adapter is the one a bridge prepared for the structure, so the structure record (sizes,
    cone, compiled oracles) is pickled with it.
    """

    __slots__ = ("key", "data", "adapter", "options", "refs")

    def __init__(self, adapter, options):
        self.adapter, self.options = adapter, options  # strong refs: ids stay unique while cached
        self.key = uuid.uuid4().hex
        self.data = _dumps_or_explain((adapter, dict(options)))
        self.refs: dict = {}  # backend-specific handles (e.g. a Ray object ref), per executor


_PAYLOADS: "collections.OrderedDict[tuple, _Payload]" = collections.OrderedDict()
_PAYLOAD_LOCK = threading.Lock()
_PAYLOAD_CACHE_SIZE = 64


def _payload(adapter, options) -> _Payload:
    """The payload of ``(adapter, options)``, pickled once per pair of objects.

    A bridge passes the same options object for every call of one problem structure (it lives in
    the bridge's plan cache), so identity is the right key and pickling happens once per structure.
    """
    key = (id(adapter), id(options))
    with _PAYLOAD_LOCK:
        entry = _PAYLOADS.get(key)
        if entry is not None and entry.adapter is adapter and entry.options is options:
            _PAYLOADS.move_to_end(key)
            return entry
    entry = _Payload(adapter, options)
    with _PAYLOAD_LOCK:
        _PAYLOADS[key] = entry
        while len(_PAYLOADS) > _PAYLOAD_CACHE_SIZE:
            _PAYLOADS.popitem(last=False)
    return entry


def _dumps_or_explain(obj) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(obj)
    except Exception as e:  # noqa: BLE001 - pickling raises TypeError, PicklingError, AttributeError, ...
        path, culprit, fn, err = _find_unpicklable(obj, "problem", None)
        where = f"the function {_describe(fn)}" if fn is not None else f"{path}"
        raise UnpicklableError(
            f"executor: {where} cannot be sent to worker processes ({type(err or e).__name__}: {err or e}; "
            f"found at {path}: {type(culprit).__name__}). Define it at module level without locks, open files or "
            "C objects in its closure, or solve with use_executor('threads')"
        ) from e


def _describe(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{name!r} (module {module})" if module else repr(name)


def _children(obj, path):
    """Components cloudpickle pickles ``obj`` through, with a readable path each."""
    if isinstance(obj, Mapping):
        return [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, functools.partial):
        return [(f"{path}.func", obj.func)] + [(f"{path}.args[{i}]", a) for i, a in enumerate(obj.args)] + [
            (f"{path}.keywords[{k!r}]", v) for k, v in obj.keywords.items()
        ]
    if isinstance(obj, types.FunctionType):
        cells = zip(obj.__code__.co_freevars, obj.__closure__ or ())
        out = []
        for name, cell in cells:
            try:
                out.append((f"{path}.<closure {name}>", cell.cell_contents))
            except ValueError:  # empty cell
                pass
        out += [(f"{path}.<global {n}>", obj.__globals__[n]) for n in obj.__code__.co_names if n in obj.__globals__]
        return out
    if callable(obj) and hasattr(obj, "__wrapped__"):  # jax.jit and functools.wraps wrappers
        return [(f"{path}.__wrapped__", obj.__wrapped__)]
    if hasattr(obj, "__dict__"):
        return [(f"{path}.{k}", v) for k, v in vars(obj).items()]
    return []


def _find_unpicklable(obj, path, fn, depth: int = 0):
    """The deepest component of ``obj`` that fails to pickle: ``(path, object, function, error)``.

    ``function`` is the innermost Python function on the way down (the user's function whose
    closure holds the culprit), so that the error can name it.
    """
    import cloudpickle

    if isinstance(obj, types.FunctionType):
        fn = obj
    if depth < 12:
        for child_path, child in _children(obj, path):
            try:
                cloudpickle.dumps(child)
            except Exception:  # noqa: BLE001
                return _find_unpicklable(child, child_path, fn, depth + 1)
    try:
        cloudpickle.dumps(obj)
        err = None
    except Exception as e:  # noqa: BLE001
        err = e
    return path, obj, fn, err


def _pack_part(part: Sequence[dict], shared: frozenset) -> dict:
    """One part's data as one array per name: stacked when batched, a single copy when shared."""
    names = list(part[0]) if part else []
    return {k: (np.asarray(part[0][k]) if k in shared else np.stack([d[k] for d in part])) for k in names} | {
        "__size__": len(part)
    }


def _unpack_part(packed: dict, shared: frozenset) -> list[dict]:
    size = packed["__size__"]
    names = [k for k in packed if k != "__size__"]
    return [{k: (packed[k] if k in shared else packed[k][i]) for k in names} for i in range(size)]


#: Worker side: payload key -> (adapter, options), so a structure is unpickled and compiled once per worker.
_WORKER_CACHE: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
_WORKER_CACHE_SIZE = 32
_WORKER_LOCK = threading.Lock()


class _LoadError(Exception):
    pass


def _init_worker(sys_path: Sequence[str]) -> None:
    """Worker set-up: the driver's import path (user modules) and CPU-only JAX (host solves)."""
    for p in reversed(list(sys_path)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import jax

    # A worker only evaluates oracles on the host: it must not claim an accelerator of its own.
    jax.config.update("jax_platforms", "cpu")
    # Inside a worker batches are solved serially (KKTBRIDGE_EXECUTOR may be inherited: ignore it).
    _STATE["current"] = ThreadExecutor()


def _solve_in_worker(key: str, data: bytes, packed: dict, shared: frozenset, x64: bool):
    """Solve one part inside a worker; ``("ok", solutions)`` or ``("load-error", message)``."""
    import jax

    if x64_enabled() != x64:  # float64 in -> float64 computed, in workers too
        jax.config.update("jax_enable_x64", x64)
    with _WORKER_LOCK:
        entry = _WORKER_CACHE.get(key)
        if entry is not None:
            _WORKER_CACHE.move_to_end(key)
    if entry is None:
        import cloudpickle

        try:
            entry = cloudpickle.loads(data)
        except Exception as e:  # noqa: BLE001 - e.g. a user module not importable in the worker
            return ("load-error", f"{type(e).__name__}: {e}")
        with _WORKER_LOCK:
            _WORKER_CACHE[key] = entry
            while len(_WORKER_CACHE) > _WORKER_CACHE_SIZE:
                _WORKER_CACHE.popitem(last=False)
    adapter, options = entry
    cpu = time.process_time()
    solutions = adapter.solve_part(_unpack_part(packed, shared), shared, options)
    return ("ok", solutions, time.process_time() - cpu)


def _failed_part(size: int, why: str) -> list:
    from kktbridge.adapters._base import HostSolution

    return [HostSolution({}, Status.FAILED, 0, why) for _ in range(size)]


class _RemoteExecutor(Executor):
    """Shared logic of executors whose workers are other processes."""

    #: parts per worker for adapters without setup reuse (load balancing vs per-task overhead).
    PARTS_PER_WORKER: ClassVar[int] = 4

    def solve_batch(self, adapter, batch, shared, options):
        payload = _payload(adapter, options)
        workers = self.workers
        parts = adapter.batch_parts(len(batch), shared, workers, per_instance=False, parts_per_worker=self.PARTS_PER_WORKER)
        packed = [_pack_part([batch[i] for i in r], shared) for r in parts]
        outcomes = self._map(payload, packed, shared, x64_enabled())
        out, cpu = [], 0.0
        for r, (kind, value, *rest) in zip(parts, outcomes):
            if kind == "load-error":
                raise UnpicklableError(f"executor {self.name!r}: a worker could not load the problem: {value}")
            out.extend(value if kind == "ok" else _failed_part(len(r), value))
            cpu += rest[0] if rest else 0.0
        self.last_worker_cpu_s = cpu
        return out

    #: CPU seconds the workers spent solving the last batch (diagnostics, e.g. the bench).
    last_worker_cpu_s: float = 0.0

    @abc.abstractmethod
    def _map(self, payload: _Payload, packed: list, shared: frozenset, x64: bool) -> list:
        """Run :func:`_solve_in_worker` on every part; ``(kind, value)`` per part, in order,
        with kind ``"died"`` and a message for parts whose worker died."""


class ProcessExecutor(_RemoteExecutor):
    """Solve in a pool of spawned worker processes on this machine.

    Args:
      max_workers: worker processes (default: ``KKTBRIDGE_NUM_THREADS`` or the number of cores).

    Workers start on the first batch (each imports JAX: about a second) and stay up; compiled
    oracles and adapter setups stay cached in them across calls.
    """

    name: ClassVar[str] = "processes"

    def __init__(self, max_workers: Optional[int] = None):
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers: expected a positive int or None, got {max_workers!r}")
        self._max_workers = max_workers
        self._pool: Optional[concurrent.futures.ProcessPoolExecutor] = None
        self._lock = threading.Lock()
        self._atexit = False

    @property
    def workers(self) -> int:
        return self._max_workers or super().workers

    def _get_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        import multiprocessing

        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(list(sys.path),),
                )
                if not self._atexit:
                    import atexit

                    # Stop the workers before the interpreter tears down what the pool needs.
                    atexit.register(self.shutdown)
                    self._atexit = True
            return self._pool

    def _map(self, payload, packed, shared, x64):
        pool = self._get_pool()
        futures = [pool.submit(_solve_in_worker, payload.key, payload.data, p, shared, x64) for p in packed]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except concurrent.futures.process.BrokenProcessPool as e:
                outcomes.append(("died", f"worker process died: {e}"))
        if any(o[0] == "died" for o in outcomes):
            self._discard(pool)
        return outcomes

    def _discard(self, pool) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _RayWorker:
    """Ray actor body: a long-lived worker whose cache keeps problem setups warm across calls."""

    def __init__(self, sys_path: Sequence[str]):
        _init_worker(sys_path)

    def solve(self, key, data, packed, shared, x64):
        return _solve_in_worker(key, data, packed, shared, x64)


class RayExecutor(_RemoteExecutor):
    """Solve on Ray actors (one per CPU of the cluster unless ``num_actors`` says otherwise).

    Args:
      num_actors: actors to start (default: the cluster's CPU count).
      address: Ray cluster address passed to ``ray.init`` when Ray is not initialised yet
        (``None``: a local Ray instance, or the cluster named by ``RAY_ADDRESS``).
      **init_kwargs: further ``ray.init`` arguments (e.g. ``num_cpus=2``, ``runtime_env``).

    Each problem structure's payload is put in Ray's object store once; actors unpickle and
    compile it on first use and keep it. The driver's ``sys.path`` is prepended on actors so that
    user modules importable in the driver are importable there (on a remote cluster ship them
    with ``runtime_env={"py_modules": [...]}`` instead).
    """

    name: ClassVar[str] = "ray"

    def __init__(self, num_actors: Optional[int] = None, address: Optional[str] = None, **init_kwargs: Any):
        if num_actors is not None and (not isinstance(num_actors, int) or num_actors < 1):
            raise ValueError(f"num_actors: expected a positive int or None, got {num_actors!r}")
        self._num_actors, self._address, self._init_kwargs = num_actors, address, init_kwargs
        self._actors: Optional[list] = None
        self._refs: dict = {}
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        if self._actors is not None:
            return len(self._actors)
        return self._num_actors or super().workers

    def _ray(self):
        try:
            import ray
        except ImportError as e:
            raise ImportError("executor 'ray' needs Ray: pip install 'kktbridge[ray]'") from e
        return ray

    def _get_actors(self) -> list:
        ray = self._ray()
        with self._lock:
            if self._actors is None:
                if not ray.is_initialized():
                    ray.init(address=self._address, **{"include_dashboard": False, **self._init_kwargs})
                n = self._num_actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
                actor = ray.remote(num_cpus=1)(_RayWorker)
                self._actors = [actor.remote(list(sys.path)) for _ in range(n)]
                self._refs = {}
            return self._actors

    def _map(self, payload, packed, shared, x64):
        ray = self._ray()
        from ray.exceptions import RayActorError

        actors = self._get_actors()
        with self._lock:
            ref = self._refs.get(payload.key)
            if ref is None:
                ref = self._refs[payload.key] = ray.put(payload.data)
                while len(self._refs) > _PAYLOAD_CACHE_SIZE:
                    self._refs.pop(next(iter(self._refs)))
        futures = [actors[i % len(actors)].solve.remote(payload.key, ref, p, shared, x64) for i, p in enumerate(packed)]
        outcomes, died = [], False
        for f in futures:
            try:
                outcomes.append(ray.get(f))
            except RayActorError as e:
                died = True
                outcomes.append(("died", f"Ray actor died: {type(e).__name__}"))
        if died:
            with self._lock:
                if self._actors is actors:
                    self._actors = None
            for a in actors:
                ray.kill(a)
        return outcomes

    def shutdown(self) -> None:
        with self._lock:
            actors, self._actors = self._actors, None
            self._refs = {}
        if actors:
            ray = self._ray()
            for a in actors:
                ray.kill(a)


# ------------------------------------------------------------------------------ selection

_KINDS: dict[str, type] = {"threads": ThreadExecutor, "processes": ProcessExecutor, "ray": RayExecutor}
_NAMED: dict[tuple, Executor] = {}
_STATE: dict[str, Optional[Executor]] = {"current": None}
_STATE_LOCK = threading.Lock()


def _resolve(executor: Any, kwargs: Mapping[str, Any]) -> Executor:
    if isinstance(executor, Executor):
        if kwargs:
            raise ValueError(f"executor: keyword arguments {sorted(kwargs)} apply only to an executor given by name")
        return executor
    if executor is None:
        executor = "threads"
    if not isinstance(executor, str) or executor not in _KINDS:
        raise ValueError(f"executor: expected one of {sorted(_KINDS)} or an Executor instance, got {executor!r}")
    # Named executors are reused, so that their workers (and the setups cached there) stay warm.
    key = (executor, repr(sorted(kwargs.items())))
    with _STATE_LOCK:
        if key not in _NAMED:
            _NAMED[key] = _KINDS[executor](**kwargs)
        return _NAMED[key]


def get_executor() -> Executor:
    """The executor batch solves run on now (default: threads, or ``KKTBRIDGE_EXECUTOR``)."""
    current = _STATE["current"]
    if current is None:
        current = _resolve(os.environ.get("KKTBRIDGE_EXECUTOR") or "threads", {})
        with _STATE_LOCK:
            if _STATE["current"] is None:
                _STATE["current"] = current
            current = _STATE["current"]
    return current


class use_executor:  # noqa: N801 - used like a function (and a context manager)
    """Select where batch solves run: ``"threads"`` (default), ``"processes"`` or ``"ray"``.

    Called plainly it sets the process-wide executor; used with ``with`` it restores the previous
    one at the end of the block::

        kb.use_executor("processes")            # from now on
        with kb.use_executor("ray", num_cpus=2):  # for this block only
            x = np.asarray(jax.vmap(solve)(P))    # block on results inside the block

    Args:
      executor: a name, an :class:`Executor` instance, or ``None`` for the threads default.
      **kwargs: constructor arguments of the named executor (:class:`ProcessExecutor`:
        ``max_workers``; :class:`RayExecutor`: ``num_actors``, ``address`` and ``ray.init``
        arguments). Equal arguments give the same (warm) executor object.

    Raises:
      ValueError: unknown name, or keyword arguments given with an instance.
    """

    def __init__(self, executor: Any = None, **kwargs: Any):
        resolved = _resolve(executor, kwargs)
        self.executor = resolved
        self._previous = get_executor()
        with _STATE_LOCK:
            _STATE["current"] = resolved

    def __enter__(self) -> Executor:
        return self.executor

    def __exit__(self, *exc) -> None:
        with _STATE_LOCK:
            _STATE["current"] = self._previous
