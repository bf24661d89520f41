"""The wheel: builds from the checkout, ships ``py.typed``, and works outside the source tree.

The wheel is built with pip's PEP 517 front end (``pip wheel --no-deps --no-build-isolation``, the
same setuptools backend ``python -m build`` uses, without network access) and installed with
``--no-deps`` into a fresh virtualenv. That virtualenv borrows the *dependencies* (jax, the solvers)
from the test interpreter's site-packages through a ``.pth`` line (``.pth`` files there, such as the
editable install of this checkout, are not processed), so ``import kktbridge`` can only find the
installed wheel; the script runs from a temporary folder, not the checkout.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import kktbridge as kb
    where = Path(kb.__file__).resolve()
    assert Path(sys.prefix).resolve() in where.parents, where  # the wheel, not the checkout
    assert (where.parent / "py.typed").is_file()
    P, q = jnp.eye(3), jnp.array([1.0, -2.0, 0.5])
    sol = kb.solve_qp(P, q, G=-jnp.eye(3), h=jnp.zeros(3))
    dx_dq = jax.jacfwd(lambda q: kb.solve_qp(P, q, G=-jnp.eye(3), h=jnp.zeros(3)).x)(q)
    assert jnp.allclose(sol.x, jnp.array([0.0, 2.0, 0.0]), atol=1e-8), sol.x
    assert jnp.allclose(dx_dq, jnp.diag(jnp.array([0.0, -1.0, 0.0])), atol=1e-8), dx_dq
    print("wheel ok", where)
    """
)


def _run(*cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_installs_and_solves_in_a_clean_venv(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO))
    (wheel,) = dist.glob("kktbridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kktbridge/py.typed" in names
    assert all(n.startswith(("kktbridge/", "kktbridge-")) for n in names), "files outside the package in the wheel"

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    venv_site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (venv_site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel))
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = _run(str(python), "-c", SCRIPT, cwd=work).stdout
    assert "wheel ok" in out
