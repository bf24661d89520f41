"""Input checks shared by the core operators and the bridges (value checks only when concrete)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.core import Tracer


def is_concrete(*trees: Any) -> bool:
    """True when no leaf is a JAX tracer, i.e. when values can be inspected in Python."""
    return not any(isinstance(leaf, Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def x64_enabled() -> bool:
    """Whether JAX computes in float64 here (the global ``jax_enable_x64`` flag or a thread's
    ``jax.enable_x64`` context), read through the public dtype canonicalisation."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def check_nonnegative(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if a concrete ``value`` (any pytree) has a negative entry."""
    if is_concrete(value):
        for leaf in jax.tree_util.tree_leaves(value):
            if np.any(np.asarray(leaf) < 0):
                raise ValueError(f"{name}: expected a non-negative value, got {np.asarray(leaf)}")
