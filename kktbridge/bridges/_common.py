"""Helpers shared by all bridges: input validation and the ``on_failure`` policy."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._checks import is_concrete  # noqa: F401  (re-exported for the bridges)
from kktbridge.core._status import SolverError, Status

ON_FAILURE = ("raise", "nan")




def check_on_failure(on_failure: str) -> None:
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure: expected one of {ON_FAILURE}, got {on_failure!r}")


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
        arr = jnp.asarray(value)
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


def run_adapter(
    adapter: Any,
    data: Mapping[str, jax.Array],
    spec: Mapping[str, jax.ShapeDtypeStruct],
    options: Mapping[str, Any],
    on_failure: str,
) -> tuple[dict, jax.Array, jax.Array]:
    """Call ``adapter`` on ``data`` (already ``stop_gradient``-ed) and apply the failure policy.

    Eager calls (concrete data, which includes eager ``grad``/``jacfwd``, whose ``stop_gradient``-ed
    inputs are concrete) raise :class:`SolverError` here with the solver's native status; inside
    ``jit``/``vmap`` the host callback raises instead.
    """
    from kktbridge.adapters import call_adapter

    eager = is_concrete(data)
    sink: Optional[list] = [] if eager else None
    values, status, iters = call_adapter(adapter, data, spec, options, on_failure == "raise" and not eager, sink)
    return finalize(adapter.name, values, status, on_failure, sink), status, iters


def finalize(
    solver: str, values: Mapping[str, Any], status: jax.Array, on_failure: str, native: Optional[list] = None
) -> dict:
    """Apply the failure policy to a solve's outputs.

    ``"raise"``: if the status is concrete and any instance failed, raise :class:`SolverError`
    (under ``jit``/``vmap`` the host callback has already raised). ``"nan"``: replace the outputs
    of failed instances by NaN, keeping ``status`` for the caller to inspect.
    """
    if on_failure == "raise" and is_concrete(status):
        codes = np.atleast_1d(np.asarray(status))
        failed = [Status(int(c)) for c in codes if not Status(int(c)).ok]
        if failed:
            raise SolverError(solver, failed[0], native[0] if native else None)
    if on_failure == "nan":
        ok = (status == int(Status.SOLVED)) | (status == int(Status.SOLVED_INACCURATE))

        def mask(v):
            okb = jnp.reshape(ok, ok.shape + (1,) * (jnp.ndim(v) - jnp.ndim(ok)))
            return jnp.where(okb, v, jnp.nan)

        return {k: jax.tree_util.tree_map(mask, v) for k, v in values.items()}
    return dict(values)
