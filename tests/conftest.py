"""Shared test configuration: float64 everywhere (gradients are checked in double precision), the
``slow`` tier (skipped unless ``KKTBRIDGE_SLOW=1``) and, with ``KKTBRIDGE_REQUIRE_PEERS=1``, a
hard requirement on every optional peer ``make test`` installs (see ``tests/_peers.py``)."""

import importlib
import os
import re
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests import _peers  # noqa: E402
from tests._host_kkt import count_host_kkt_calls  # noqa: E402


@pytest.fixture
def host_kkt_solve(monkeypatch):
    """Every QP KKT solve on the host kernel (normally from 300 unknowns on a CPU) for this test;
    yields the list of its calls. Bridge caches are cleared before and after, so no stage traced
    under this setting serves another test."""
    import kktbridge as kb
    from kktbridge.core import _structured

    calls = count_host_kkt_calls(monkeypatch)
    monkeypatch.setattr(_structured, "HOST_MIN_SIZE", 0)
    kb.clear_caches()
    yield calls
    kb.clear_caches()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_sessionstart(session):
    missing = []
    for name in _peers.required():
        try:
            with warnings.catch_warnings():  # e.g. jaxopt's deprecation notice: not ours to report
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except Exception as e:  # ImportError, or a peer that is installed but broken
            missing.append(f"{name} ({type(e).__name__}: {e})")
    if missing:
        raise pytest.UsageError(
            "KKTBRIDGE_REQUIRE_PEERS is set and these optional peers do not import: " + "; ".join(missing)
        )


_COULD_NOT_IMPORT = re.compile(r"could not import '([\w.]+)'")


def _required_peer_skip(report) -> str | None:
    """The required peer a skip report blames (``pytest.importorskip``'s message), if any."""
    if not report.skipped or not _peers.required():
        return None
    m = _COULD_NOT_IMPORT.search(str(report.longrepr))
    if m and m.group(1).split(".")[0] in _peers.required():
        return m.group(1)
    return None


def _fail_required_skip(report) -> None:
    """Turn a skip that blames a required optional peer into a failure (test or collection)."""
    name = _required_peer_skip(report)
    if name:
        report.outcome = "failed"
        report.longrepr = f"required optional peer {name!r} is missing (KKTBRIDGE_REQUIRE_PEERS): {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_required_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_required_skip(outcome.get_result())


def pytest_collection_modifyitems(config, items):
    if os.environ.get("KKTBRIDGE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; set KKTBRIDGE_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
