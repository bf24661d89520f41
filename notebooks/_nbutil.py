"""Small helpers shared by the example notebooks (not part of the library), and their runner.

In a notebook:

* :func:`setup` makes ``import kktbridge`` work from a source checkout (the repository root is put
  on ``sys.path`` when the package is not installed) and returns the size switch read from
  ``KKTBRIDGE_NOTEBOOK_SIZE`` (``"ci"``, the default, or ``"full"``). It does **not** choose a
  matplotlib backend: inside Jupyter the figures are shown inline (and stored in the notebook's
  outputs); only outside IPython (a notebook exported to a script) without a display is the
  non-interactive ``Agg`` backend selected.
* :func:`savefig` additionally writes a figure as ``<name>.png`` into ``KKTBRIDGE_NOTEBOOK_FIGDIR``
  **only when that variable is set**; otherwise it does nothing (the figure is already inline).

From the shell (what ``make notebooks`` and the notebook test use)::

    python notebooks/_nbutil.py [--size full|ci] [--out DIR] [NOTEBOOK ...]

executes the notebooks top to bottom in a fresh ``python3`` kernel of the current interpreter and
writes them back with their outputs (in place, or into ``DIR``), printing each one's wall time.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent
REPO = NOTEBOOK_DIR.parent
SIZES = ("ci", "full")
CELL_TIMEOUT_S = 3600


def setup() -> str:
    """Prepare the notebook environment and return the validated size (``"ci"`` or ``"full"``)."""
    if importlib.util.find_spec("kktbridge") is None:
        sys.path.insert(0, str(REPO))
    if "IPython" not in sys.modules and not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        import matplotlib

        matplotlib.use("Agg")  # plain script without a display: no window to open
    size = os.environ.get("KKTBRIDGE_NOTEBOOK_SIZE", "ci")
    if size not in SIZES:
        raise ValueError(f"KKTBRIDGE_NOTEBOOK_SIZE: expected one of {SIZES}, got {size!r}")
    return size


def savefig(fig, name: str) -> Path | None:
    """Save ``fig`` as ``<name>.png`` in ``KKTBRIDGE_NOTEBOOK_FIGDIR`` if it is set; else do nothing."""
    folder = os.environ.get("KKTBRIDGE_NOTEBOOK_FIGDIR")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def kernel_env(size: str, figdir: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment of the kernel: the size, optional figure folder, this checkout importable first."""
    env = dict(os.environ)
    env["KKTBRIDGE_NOTEBOOK_SIZE"] = size
    env.pop("KKTBRIDGE_NOTEBOOK_FIGDIR", None)
    env.pop("MPLBACKEND", None)  # let the kernel use the inline backend
    if figdir is not None:
        env["KKTBRIDGE_NOTEBOOK_FIGDIR"] = str(figdir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def execute(nb, size: str, figdir=None, timeout: int = CELL_TIMEOUT_S):
    """Run the notebook object ``nb`` in place (in memory) in a ``python3`` kernel in ``notebooks/``.

    jupyter_client launches the ``python3`` kernelspec with ``sys.executable``, i.e. the interpreter
    running this function (the project's virtualenv). Per-cell timing metadata is not recorded, so
    re-executing a notebook changes only its outputs.
    """
    import nbclient

    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute(env=kernel_env(size, figdir))
    return nb


def main(argv: list[str] | None = None) -> int:
    import argparse

    import nbformat

    parser = argparse.ArgumentParser(description="Execute the example notebooks and store their outputs.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--out", type=Path, help="write executed copies here instead of in place")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    total, failed = time.perf_counter(), []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        try:
            execute(nb, args.size)
        except Exception as e:  # noqa: BLE001 - report, keep the committed file, go on with the others
            failed.append(path.name)
            print(f"{path.name}: FAILED after {time.perf_counter() - t0:.0f} s (file left unchanged)\n{e}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        target = path if args.out is None else args.out / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        print(f"{path.name}: executed at size {args.size} in {seconds:.0f} s -> {target}", flush=True)
    print(f"{len(paths) - len(failed)}/{len(paths)} notebook(s) executed in {time.perf_counter() - total:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
