"""Command line: ``python -m kktbridge demo`` and ``bench --quick`` (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from kktbridge.__main__ import main
from kktbridge._bench import SUITES


def test_demo_passes_and_covers_every_solver(capsys):
    # The demo itself compares each derivative with a central FD / closed form at a stated
    # tolerance and returns non-zero if any exceeds it.
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for solver in ("ipopt", "osqp", "scs", "core"):
        assert solver in out.lower()
    assert " FAIL" not in out and "SKIP" not in out
    assert "8 passed, 0 failed, 0 unavailable" in out


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


@pytest.mark.slow  # ~1-2 min on the 2-core CI: every benchmark suite at --quick size (KKTBRIDGE_SLOW=1)
def test_bench_quick_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    assert main(["bench", "--quick", "--json", str(js), "--plot", str(png)]) == 0
    data = json.loads(js.read_text())
    assert data["quick"] is True
    assert set(data["suites"]) == set(SUITES)
    for name, suite in data["suites"].items():
        assert isinstance(suite["wall_s"], float) and suite["wall_s"] >= 0
        if suite["status"] == "ok":
            assert suite["rows"], name
            for row in suite["rows"]:
                nums = list(_numbers(row))
                assert nums and all(math.isfinite(v) for v in nums), (name, row)
            for t in suite["targets"]:
                assert isinstance(t["met"], bool) and isinstance(t["threshold"], float)
        else:
            assert suite["status"] in ("skipped", "unavailable") and suite["reason"], (name, suite)
    # Only the GPU suite may be skipped on a CPU-only machine; the rest must have run.
    assert all(s["status"] == "ok" for n, s in data["suites"].items() if n != "gpu")
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "MET" in out or "MISSED" in out


def test_bench_rejects_unknown_suite():
    with pytest.raises(SystemExit):
        main(["bench", "--suite", "nope"])
