"""Command line: ``python -m kktbridge demo`` and ``python -m kktbridge bench``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _parser() -> argparse.ArgumentParser:
    from kktbridge._bench import SUITES

    parser = argparse.ArgumentParser(prog="python -m kktbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="differentiate through IPOPT, OSQP and SCS and check against finite differences")
    bench = sub.add_parser("bench", help="run the benchmark suites (JSON + PNG + table)")
    bench.add_argument("--suite", action="append", choices=list(SUITES), metavar="NAME",
                       help=f"suite to run (repeatable; default all): {', '.join(SUITES)}")
    bench.add_argument("--quick", action="store_true", help="smallest size of every suite, few repeats (< 1 min)")
    bench.add_argument("--json", default="bench-results/bench.json", metavar="FILE", help="JSON output path")
    bench.add_argument("--plot", default="bench-results/bench.png", metavar="FILE", help="PNG plot path")
    bench.add_argument("--repeats", type=int, default=None, help="timing repeats per measurement (median reported)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from kktbridge._demo import run_demo

        return run_demo()
    from kktbridge._bench import run_bench

    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats: expected a positive integer")
    return run_bench(args.suite, quick=args.quick, json_path=args.json, plot_path=args.plot, repeats=args.repeats)


if __name__ == "__main__":
    sys.exit(main())
