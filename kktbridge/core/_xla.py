"""``stage_jit``: ``jax.jit`` for kktbridge's own compiled stages, guarded against a known XLA:CPU bug
and compiled faster.

In jaxlib 0.10.x, XLA:CPU hands reductions -- together with the pads and adds that produce their
input -- to an experimental YNNPACK fusion. When one tensor reaches that fusion through two pads
with different offsets (the transposes of ``x[1:]`` and ``x[:-1]``, i.e. any ``∇(νᵀh)`` of a
chain constraint ``h_i = x_{i+1} - x_i - ...``) the fused reduction reads misaligned elements, for
some sizes only: the jitted KKT residual of an exact KKT point of a 20,001-variable chain NLP came
out 0.51 instead of 1.7e-14 (eager: exact). Full arrays were right; only their reductions were
wrong. XLA's own reduction emitter is exact, and the compile option
``xla_cpu_experimental_ynn_fusion_type=""`` turns the YNNPACK fusion off for one compilation.

:func:`stage_jit` passes that option (and the one below) to every stage kktbridge compiles itself (the solve and
derivative stages of the bridges, the compiled implicit solve), which is what eager calls run.
When the caller wraps kktbridge in their *own* ``jax.jit``, XLA compiles the whole program with
the caller's options; to protect it, start Python with
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (kktbridge does not change global XLA flags
behind a user's back). The residual checks use select-based reductions that the fusion never takes
(:mod:`kktbridge.core._kkt`), so a corrupted check cannot accept a wrong point either way.

A second option only buys time: ``xla_cpu_use_fusion_emitters=False`` compiles fusions with XLA's
long-standing elemental emitter instead of the newer MLIR fusion emitters. kktbridge's stages are
many small fusions, and the newer emitters spent ~40 % of their compile time (measured on 2 cores:
an eager QP pullback 1.03 -> 0.61 s; first eager derivatives QP 2.65 -> 2.23 s, NLP 2.29 -> 1.91 s,
conic 2.92 -> 1.86 s), while the compiled stages and IPOPT oracles ran at the same speed within the
machine's noise (a 200,001-variable chain NLP's oracles, a pendulum OCP's solve stage, conic and
QP derivative stages).

The options are used only on the CPU backend and only those this jaxlib accepts (each probed once,
by compiling a scalar function); ``KKTBRIDGE_NO_JAX_PATCHES=1`` disables them like the other
work-arounds of :mod:`kktbridge.core._jax_compat`.
"""

from __future__ import annotations

import atexit
import functools
import os
import threading
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from kktbridge.core._jax_compat import is_linearize_tracer

__all__ = ["stage_jit", "cpu_compiler_options", "in_background", "top_level"]

#: Correctness first (the YNNPACK reduction bug), then compile time (module docstring).
_CPU_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_fusion_emitters": False}


@functools.cache
def cpu_compiler_options() -> Optional[dict[str, Any]]:
    """The compile options of :func:`stage_jit` this jaxlib accepts, or ``None`` where none are
    needed or accepted."""
    if os.environ.get("KKTBRIDGE_NO_JAX_PATCHES"):
        return None
    try:
        if jax.default_backend() != "cpu":
            return None
    except Exception:
        return None
    accepted: dict[str, Any] = {}
    for key, value in _CPU_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={key: value}).lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
        except Exception:  # an older/newer jaxlib without this option: compile without it
            continue
        accepted[key] = value
    return accepted or None


class _StageJit:
    """Two compilations of one function: with the compile options at top level, plain when nested.

    JAX accepts ``compiler_options`` only on a top-level ``jax.jit``: a call staged into another
    trace (the caller's ``jit``, or the tangent part of a reverse-mode derivative) raises a
    ``ValueError`` at trace time, before anything runs. Such calls get the plain ``jit``, which is
    inlined into the enclosing computation anyway (and compiled with the caller's options).
    """

    #: Argument kinds (the leaves' types: arrays, or the tracers of a transformation) whose call
    #: was refused once: they go straight to the plain jit, without re-tracing to fail. Shared by
    #: every stage, since the refusal depends on the kinds only.
    _nested: set[tuple[type, ...]] = set()

    def __init__(self, fun: Callable[..., Any], options: dict[str, Any], kwargs: dict[str, Any]):
        self._top = jax.jit(fun, compiler_options=options, **kwargs)
        self._plain = jax.jit(fun, **kwargs)
        functools.update_wrapper(self, fun)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kinds = tuple(type(leaf) for leaf in jax.tree_util.tree_leaves((args, kwargs)))
        # Reverse mode (linearize) is refused only after JAX has compiled and run the primal half:
        # trying it would compile that half twice (measured: +0.33 s on a first eager QP jacrev).
        if kinds not in self._nested and not any(is_linearize_tracer(k) for k in kinds):
            try:
                return self._top(*args, **kwargs)
            except ValueError as e:
                if "compiler_options" not in str(e):
                    raise
                self._nested.add(kinds)
        return self._plain(*args, **kwargs)


#: Background work not yet waited for; joined at exit, so that no XLA compilation is still running
#: while the interpreter tears down (a first call can raise before it waits, e.g. on a failed solve).
_PENDING: set[threading.Thread] = set()


@atexit.register
def _join_pending() -> None:
    for thread in list(_PENDING):
        thread.join(timeout=60)


def in_background(work: Callable[[], None]) -> Callable[[], None]:
    """Run ``work()`` in a daemon thread; returns ``wait()``. An exception in ``work`` is dropped:
    background work here only compiles, and the real call compiles again and raises it.

    Worth it where the compilation overlaps Python work (tracing) on another core: XLA compiles
    without holding the GIL, but already spreads one compilation over the cores, so compiling two
    stages at once gained nothing measurable (a first eager QP ``jacrev``: 2.56 vs 2.59 s, medians
    of six processes on 2 cores), while IPOPT's oracles compiling during the NLP bridge's tracing
    did (2.62 -> 2.34 s)."""

    def run() -> None:
        try:
            work()
        except Exception:
            pass
        finally:
            _PENDING.discard(thread)

    thread = threading.Thread(target=run, name="kktbridge-compile", daemon=True)
    _PENDING.add(thread)
    thread.start()
    return thread.join


def top_level(fun: Any) -> Any:
    """The top-level ``jax.jit`` of a :func:`stage_jit` function (``fun`` itself for a plain one),
    for host code that calls it with concrete arrays only -- such as IPOPT's oracles, hundreds of
    times per solve: it skips :class:`_StageJit`'s per-call choice (~10 µs of a ~35 µs call)."""
    return fun._top if isinstance(fun, _StageJit) else fun


def stage_jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` with :func:`cpu_compiler_options` at top level (module docstring)."""
    options = cpu_compiler_options()
    if options is None or "compiler_options" in kwargs:
        return jax.jit(fun, **kwargs)
    return _StageJit(fun, options, kwargs)
