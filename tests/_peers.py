"""Optional peers: packages the tests compare against that kktbridge itself does not need.

``make test`` installs them (the ``test`` and ``docs`` extras in ``pyproject.toml``), so there a
missing peer is a broken install and must fail, not skip. Set ``KKTBRIDGE_REQUIRE_PEERS=1`` to
require every peer of those extras (``tests/conftest.py`` then checks them all at session start and
turns any "could not import" skip of one of them into a failure); add more module names after a
comma (``KKTBRIDGE_REQUIRE_PEERS=1,torch``) for peers installed conditionally. Without the
variable, a test that needs a missing peer skips, naming it.

Hard dependencies (jax, numpy, scipy, cyipopt, scs, osqp, cvxpy) are imported plainly everywhere.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import tomllib

import pytest

#: Distribution name -> import name, where they differ.
IMPORT_NAME = {
    "scikit-learn": "sklearn",
    "mkdocs-material": "material",
    "mkdocstrings": "mkdocstrings",
    "mkdocs-jupyter": "mkdocs_jupyter",
}
#: The extras `make test` installs (Makefile): under KKTBRIDGE_REQUIRE_PEERS their modules must import.
EXTRAS = ("test", "docs", "solvers", "sparse", "ray")


def _extra_modules() -> list[str]:
    meta = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    names = []
    for extra in EXTRAS:
        for req in meta["project"]["optional-dependencies"].get(extra, []):
            dist = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].strip()
            names.append(IMPORT_NAME.get(dist, dist.replace("-", "_")))
    return names


def required() -> list[str]:
    """Module names that must import (empty unless ``KKTBRIDGE_REQUIRE_PEERS`` is set)."""
    value = os.environ.get("KKTBRIDGE_REQUIRE_PEERS", "").strip()
    if not value or value == "0":
        return []
    names: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if part == "1":
            names += _extra_modules()
        elif part:
            names.append(part)
    return list(dict.fromkeys(names))


def peer(module: str):
    """Import an optional peer: the module, or a skip naming it (a failure when it is required)."""
    top = module.split(".")[0]
    if top in required():
        return importlib.import_module(module)
    return pytest.importorskip(module)
