"""``videoprobe bench --suite FILE``: encoders x benchmarks x probes in one table."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from common.cli import add_show_config

    p = sub.add_parser(
        "bench", help="run a benchmark suite (encoders x benchmarks x probes) into one table",
        description="Extract (resumable), probe and tabulate every encoder on every benchmark of a suite; "
                    "writes OUT/table.md, OUT/table.json and OUT/table_<probe>.png with appearance and "
                    "motion averages. Suites: configs/video/*.yaml.",
    )
    p.add_argument("--suite", required=True, help="suite YAML, e.g. configs/video/synth.yaml")
    add_show_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="suite overrides, e.g. out=runs/x")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from common.cli import load_cli_config
    from videoprobe.bench import BenchSuiteConfig, format_table, run_suite
    from videoprobe.extract import report_failures

    suite = load_cli_config(BenchSuiteConfig, args, args.suite)
    result = run_suite(suite)
    print(format_table(result["rows"]))
    print(f"table: {suite.out}/table.md")
    report_failures(result["failures"], len(result["failures"]))
    return 1 if result["failures"] else 0
