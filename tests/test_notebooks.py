"""Execute every example notebook in ``notebooks/`` top to bottom at CI size.

Each ``notebooks/*.ipynb`` (including notebooks added later) is run in a fresh ``python3`` kernel
started from the interpreter running pytest, with ``KKTBRIDGE_NOTEBOOK_SIZE=ci``; a failing cell
(including a failing ``assert`` on the notebook's central result) fails the test. The notebooks are
executed from an in-memory copy, so no outputs are written back into the repository, and figures
saved through ``notebooks/_nbutil.savefig`` go to a temporary folder
(``KKTBRIDGE_NOTEBOOK_FIGDIR``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600

pytestmark = pytest.mark.notebook


def _kernel_env(figdir: Path) -> dict[str, str]:
    """Environment of the kernel: CI size, figures to ``figdir``, the checkout importable."""
    env = dict(os.environ)
    env["KKTBRIDGE_NOTEBOOK_SIZE"] = "ci"
    env["KKTBRIDGE_NOTEBOOK_FIGDIR"] = str(figdir)
    # The checkout first, so the kernel imports this working tree even if another copy is installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _execute(nb, figdir: Path):
    """Run ``nb`` in place (in memory) with a ``python3`` kernel in the notebooks folder."""
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    # jupyter_client launches kernelspecs whose argv[0] is "python"/"python3" with sys.executable,
    # i.e. the interpreter (venv) running pytest; test_kernel_uses_current_interpreter checks it.
    client.execute(env=_kernel_env(figdir))
    return nb


def test_kernel_uses_current_interpreter(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.environ['KKTBRIDGE_NOTEBOOK_SIZE'])")]
    )
    _execute(nb, tmp_path)
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    kernel_python, size = text.split()
    print("kernel interpreter:", kernel_python)
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable)
    # A venv's python is a symlink to the base interpreter, so realpaths alone cannot tell the venv
    # from the system python: the un-resolved folder (the venv's bin/) must match too.
    assert Path(kernel_python).parent == Path(sys.executable).parent
    assert size == "ci"


def test_notebooks_are_discovered():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    before = path.read_bytes()
    try:
        _execute(nb, tmp_path)
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    assert path.read_bytes() == before, f"{path.name} was modified by the run"
