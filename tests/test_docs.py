"""The documentation site builds with ``mkdocs build --strict`` (what ``make docs`` runs), and the
code on its pages runs.

Strict mode turns every warning into a failure: a broken link or nav entry, a docstring that
mkdocstrings cannot parse (e.g. an ``Args:`` entry for a parameter that does not exist), a missing
snippet. The build goes to a temporary folder, so ``site/`` is left alone. Skipped only when the
``docs`` extra (which ``make test`` installs) is absent.

Every ```` ```python ```` block of a page is executed, in order, in one namespace per page (signature
summaries are marked ```` ```py ```` and not run), so the examples cannot drift from the code.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted((REPO / "docs").rglob("*.md"))
PAGES_WITH_CODE = [p for p in PAGES if "```python" in p.read_text()]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[str(p.relative_to(REPO / "docs")) for p in PAGES_WITH_CODE])
def test_page_code_runs(page):
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    assert blocks
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.relative_to(REPO)}[block {i}]", "exec"), namespace)  # noqa: S102


def _public_names() -> list[str]:
    """``kktbridge.__all__``, read from the source (the docs are built from the source too)."""
    tree = ast.parse((REPO / "kktbridge" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("kktbridge/__init__.py defines no __all__")


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    # The API reference is generated from the docstrings and the notebooks are rendered with outputs.
    api = "".join(page.read_text() for page in (site / "api").rglob("index.html"))
    missing = [name for name in _public_names() if f"kktbridge.{name}" not in api]
    assert not missing, f"public names without an API reference entry: {missing}"
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        page = (site / "notebooks" / nb.stem / "index.html").read_text()
        assert re.search(r'<img[^>]+src="data:image/png;base64', page), f"{nb.name}: no figure in the rendered page"
