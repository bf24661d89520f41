"""Work-arounds for performance bugs of the JAX versions kktbridge supports (no behaviour change).

``jax.jacrev`` (JAX 0.10) calls ``jax.vmap`` on the pullback returned by ``jax.vjp``. ``vmap``
records the function's source for debug messages (``api_util.fun_sourceinfo``); the pullback is a
``VJP`` dataclass, so that falls back to ``str(pullback)``, whose dataclass ``repr`` pretty-prints
the whole linearised jaxpr -- only for ``fun_sourceinfo`` to discard the string (it keeps
nothing but ``"<built-in function NAME>"`` patterns, else ``"<unknown>"``). For a function that
calls a solver that printing was ~70 % of an eager ``jacrev`` call. A constant ``repr`` gives
``fun_sourceinfo`` the very same result ("<unknown>") without the printing.

Set ``KKTBRIDGE_NO_JAX_PATCHES=1`` to leave JAX untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Optional


def _patch_vjp_repr() -> bool:
    try:
        from jax._src import api
    except ImportError:  # private layout changed: nothing to patch
        return False
    vjp_cls = getattr(api, "VJP", None)
    if vjp_cls is None or not dataclasses.is_dataclass(vjp_cls):
        return False
    if getattr(vjp_cls.__repr__, "__kktbridge__", False):
        return True

    def __repr__(self) -> str:  # noqa: N807
        return f"<jax VJP {id(self):#x}>"

    __repr__.__kktbridge__ = True  # type: ignore[attr-defined]
    setattr(vjp_cls, "__repr__", __repr__)  # patching a JAX class; its stub types __repr__ as bound
    return True


PATCHED = False if os.environ.get("KKTBRIDGE_NO_JAX_PATCHES") else _patch_vjp_repr()


def eval_context() -> "contextlib.AbstractContextManager[object]":
    """A context that evaluates eagerly, out of the caller's current trace (JAX's own
    ``core.eval_context``; a no-op context where that is unavailable or patches are disabled).

    For a compiled function called with *concrete* inputs while a transformation's trace is current
    (kktbridge's stages inside an eager ``grad``/``jacrev``): the result is the same either way --
    no input belongs to that trace -- but under the trace JAX's C++ dispatch declines and every call
    goes through the Python fallback (measured: ~1 ms per call of a 20-variable QP's solve stage).
    """
    if not os.environ.get("KKTBRIDGE_NO_JAX_PATCHES"):
        try:
            from jax._src import core
        except ImportError:  # private layout changed
            return contextlib.nullcontext()
        ctx = getattr(core, "eval_context", None)
        if ctx is not None:
            return ctx()
    return contextlib.nullcontext()


def is_linearize_tracer(kind: type) -> bool:
    """Whether ``kind`` is JAX's reverse-mode (``linearize``) tracer type, matched by name: the class
    is private (``jax._src.interpreters.ad.LinearizeTracer`` in JAX 0.10), and a JAX without it
    simply never matches, which leaves every caller on its general path."""
    return kind.__name__ == "LinearizeTracer"


def is_jvp_tracer(kind: type) -> bool:
    """Whether ``kind`` is JAX's forward-mode (``jvp``) tracer type, matched by name like
    :func:`is_linearize_tracer` (``jax._src.interpreters.ad.JVPTracer`` in JAX 0.10)."""
    return kind.__name__ == "JVPTracer"


def concrete_batch(leaves: list) -> "Optional[tuple[list, tuple[Optional[int], ...], Callable[[Any], Any]]]":
    """Split the leaves of one eager ``vmap`` (``jacrev``'s over the pullback) into concrete values.

    ``jax.jacrev`` calls ``vmap(pullback)(basis)``: a ``custom_vjp`` pullback then receives its
    cotangents as batch tracers that wrap *concrete* arrays, and a compiled function called with
    them goes through JAX's batching rule for ``jit`` -- rebatching and re-dispatching the
    program from Python on every call (measured: 0.85 ms against 0.41 ms for one unbatched call of
    a 3-variable NLP's pullback). When every tracer among ``leaves`` belongs to one ``vmap`` trace
    directly above eager evaluation, this returns ``(values, batch_axes, wrap)``: the concrete
    arrays (non-tracers as they are), each one's batch axis (``None`` for unbatched leaves), and
    ``wrap(array)``, which turns an array whose axis 0 is the batch axis back into a tracer of that
    trace. The caller can then run a ``vmap``-ed compiled function on the values in
    :func:`eval_context` -- the result JAX's batching rule would give, by one C++ dispatch.

    ``None`` (the caller keeps JAX's general path) for anything else: no tracers, other
    transformations, nested ``vmap`` s, one with an ``spmd_axis_name`` (sharding), or patches
    disabled. A plain ``axis_name`` is fine: the pullback runs no collective over the caller's axis.
    """
    if os.environ.get("KKTBRIDGE_NO_JAX_PATCHES"):
        return None
    try:
        from jax._src import core
        from jax._src.interpreters.batching import BatchTracer
    except ImportError:  # private layout changed
        return None
    trace = None
    values: list = []
    axes: list = []
    for leaf in leaves:
        if not isinstance(leaf, core.Tracer):
            values.append(leaf)
            axes.append(None)
            continue
        if type(leaf) is not BatchTracer or isinstance(leaf.val, core.Tracer) or type(leaf.batch_dim) is not int:
            return None
        owner = leaf._trace
        if trace is None:
            trace = owner
            data = getattr(owner, "axis_data", None)
            if data is None or getattr(data, "spmd_name", None) is not None or not isinstance(owner.parent_trace, core.EvalTrace):
                return None
        elif owner is not trace:
            return None
        values.append(leaf.val)
        axes.append(leaf.batch_dim)
    if trace is None:
        return None
    return values, tuple(axes), lambda arr: BatchTracer(trace, arr, 0)
