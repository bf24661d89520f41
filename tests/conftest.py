"""Shared test configuration: float64 everywhere (gradients are checked in double precision)."""

import os

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("KKTBRIDGE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; set KKTBRIDGE_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
