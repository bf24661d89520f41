"""Small helpers shared by the example notebooks (not part of the library).

* :func:`setup` makes ``import kktbridge`` work from a source checkout (the repository root is put
  on ``sys.path`` when the package is not installed), selects matplotlib's non-interactive ``Agg``
  backend, and returns the size switch read from ``KKTBRIDGE_NOTEBOOK_SIZE``.
* :func:`savefig` writes a figure as ``<name>.png`` next to the notebooks, or into
  ``KKTBRIDGE_NOTEBOOK_FIGDIR`` when that is set (the notebook test sets it to a temporary folder so
  that running the tests does not rewrite the figures in the repository).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent
SIZES = ("ci", "full")


def setup() -> str:
    """Prepare the notebook environment and return the validated size (``"ci"`` or ``"full"``)."""
    if importlib.util.find_spec("kktbridge") is None:
        sys.path.insert(0, str(NOTEBOOK_DIR.parent))
    import matplotlib

    matplotlib.use("Agg")
    size = os.environ.get("KKTBRIDGE_NOTEBOOK_SIZE", "ci")
    if size not in SIZES:
        raise ValueError(f"KKTBRIDGE_NOTEBOOK_SIZE: expected one of {SIZES}, got {size!r}")
    return size


def savefig(fig, name: str) -> Path:
    """Save ``fig`` as ``<name>.png`` (next to the notebooks unless ``KKTBRIDGE_NOTEBOOK_FIGDIR`` is set)."""
    folder = Path(os.environ.get("KKTBRIDGE_NOTEBOOK_FIGDIR", NOTEBOOK_DIR))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
