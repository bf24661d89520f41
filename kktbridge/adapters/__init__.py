"""Solver adapters: host-side wrappers of external solvers, looked up by name.

Adding a solver = one module defining an :class:`~kktbridge.adapters._base.Adapter` subclass plus
one line in ``_REGISTRY``. Modules are imported lazily, so a missing optional solver only matters
when it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Optional

from kktbridge.adapters._base import Adapter, HostSolution, call_adapter, new_token, pop_native

# name -> (module, class). One line per solver.
_REGISTRY: dict[str, tuple[str, str]] = {
    "auto": ("kktbridge.adapters.auto", "AutoQPAdapter"),
    "clarabel": ("kktbridge.adapters.clarabel", "ClarabelAdapter"),
    "daqp": ("kktbridge.adapters.daqp", "DAQPAdapter"),
    "ipopt": ("kktbridge.adapters.ipopt", "IpoptAdapter"),
    "osqp": ("kktbridge.adapters.osqp", "OSQPAdapter"),
    "piqp": ("kktbridge.adapters.piqp", "PIQPAdapter"),
    "proxsuite": ("kktbridge.adapters.proxsuite", "ProxSuiteAdapter"),
    "scs": ("kktbridge.adapters.scs", "SCSAdapter"),
}

#: ``solver="auto"`` resolves by problem kind (``_REGISTRY["auto"]`` is the QP one, the default
#: when no kind is given).
_AUTO: dict[str, tuple[str, str]] = {
    "qp": ("kktbridge.adapters.auto", "AutoQPAdapter"),
    "conic": ("kktbridge.adapters.auto", "AutoConicAdapter"),
}

_INSTANCES: dict[str, Adapter] = {}


def available_solvers(kind: Optional[str] = None) -> list[str]:
    """Names of registered adapters whose solver libraries import, optionally of one problem kind.

    A solver whose library is missing (or broken) is omitted; an adapter *module* that fails to
    import is a kktbridge bug and raises.
    """
    names = []
    for name in _REGISTRY:
        adapter = get_adapter(name, kind if name == "auto" and kind is not None and kind in _AUTO else None)
        if not type(adapter).is_installed():
            continue
        if kind is None or adapter.kind == kind:
            names.append(name)
    return names


def get_adapter(name: "str | Adapter", kind: Optional[str] = None) -> Adapter:
    """Return the adapter called ``name`` (cached), or ``name`` itself if it is an :class:`Adapter`.

    Users bring their own solver by passing an instance of an :class:`Adapter` subclass as
    ``solver=``; it must declare the problem ``kind`` it serves.

    Raises:
      ValueError: unknown name, or an adapter of another problem kind than ``kind``.
    """
    if isinstance(name, Adapter):
        if kind is not None and name.kind != kind:
            raise ValueError(f"solver: {type(name).__name__} solves {name.kind} problems, not {kind}")
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"solver: unknown solver {name!r}; expected one of {sorted(_REGISTRY)}")
    if name == "auto" and kind is not None and kind in _AUTO:
        key, (module, cls) = f"auto:{kind}", _AUTO[kind]
    else:
        key, (module, cls) = name, _REGISTRY[name]
    if key not in _INSTANCES:
        _INSTANCES[key] = getattr(importlib.import_module(module), cls)()
    adapter = _INSTANCES[key]
    if kind is not None and adapter.kind != kind:
        valid = sorted(n for n in _REGISTRY if _kind_of(n) == kind or (n == "auto" and kind in _AUTO))
        raise ValueError(f"solver: {name!r} solves {adapter.kind} problems, not {kind}; use one of {valid}")
    return adapter


def _kind_of(name: str) -> Optional[str]:
    try:
        return get_adapter(name).kind
    except Exception:
        return None


__all__ = ["Adapter", "HostSolution", "call_adapter", "get_adapter", "available_solvers", "new_token", "pop_native"]
