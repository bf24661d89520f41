"""``stage_jit``: ``jax.jit`` for kktbridge's own compiled stages, guarded against a known XLA:CPU bug.

In jaxlib 0.10.x, XLA:CPU hands reductions -- together with the pads and adds that produce their
input -- to an experimental YNNPACK fusion. When one tensor reaches that fusion through two pads
with different offsets (the transposes of ``x[1:]`` and ``x[:-1]``, i.e. any ``∇(νᵀh)`` of a
chain constraint ``h_i = x_{i+1} - x_i - ...``) the fused reduction reads misaligned elements, for
some sizes only: the jitted KKT residual of an exact KKT point of a 20,001-variable chain NLP came
out 0.51 instead of 1.7e-14 (eager: exact). Full arrays were right; only their reductions were
wrong. XLA's own reduction emitter is exact, and the compile option
``xla_cpu_experimental_ynn_fusion_type=""`` turns the YNNPACK fusion off for one compilation.

:func:`stage_jit` passes that option to every stage kktbridge compiles itself (the solve and
derivative stages of the bridges, the compiled implicit solve), which is what eager calls run.
When the caller wraps kktbridge in their *own* ``jax.jit``, XLA compiles the whole program with
the caller's options; to protect it, start Python with
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (kktbridge does not change global XLA flags
behind a user's back). The residual checks use select-based reductions that the fusion never takes
(:mod:`kktbridge.core._kkt`), so a corrupted check cannot accept a wrong point either way.

The option is used only on the CPU backend and only if this jaxlib accepts it (probed once, by
compiling a scalar function); ``KKTBRIDGE_NO_JAX_PATCHES=1`` disables it like the other
work-arounds of :mod:`kktbridge.core._jax_compat`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

__all__ = ["stage_jit", "cpu_compiler_options"]

_YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def cpu_compiler_options() -> Optional[dict[str, str]]:
    """The compile options of :func:`stage_jit`, or ``None`` where none are needed or accepted."""
    if os.environ.get("KKTBRIDGE_NO_JAX_PATCHES"):
        return None
    try:
        if jax.default_backend() != "cpu":
            return None
        jax.jit(lambda x: x + 1, compiler_options=_YNN_OFF).lower(jnp.zeros((), jnp.float32)).compile()
    except Exception:  # an older/newer jaxlib without this option: compile as usual
        return None
    return dict(_YNN_OFF)


def stage_jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` with :func:`cpu_compiler_options` (see the module docstring)."""
    options = cpu_compiler_options()
    if options is not None and "compiler_options" not in kwargs:
        kwargs["compiler_options"] = options
    return jax.jit(fun, **kwargs)
