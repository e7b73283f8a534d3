"""``probesuite``: commands over several runs of the suite (``probesuite compare RUN_DIR... --out DIR``)."""
from __future__ import annotations

import argparse

# Sub-commands in order (``--help`` lists them so); a new one = a module with ``register(sub)`` + a line.
COMMANDS = (
    "common.compare_cli",  # compare: several result folders side by side
)


def build_parser() -> argparse.ArgumentParser:
    """The ``probesuite`` parser with :data:`COMMANDS` in order."""
    from common.cli import build_parser as _build_parser

    return _build_parser("probesuite", "Commands over several runs of the suite.", COMMANDS)


def register(sub: argparse._SubParsersAction) -> None:
    """``probesuite compare RUN_DIR... --out DIR``."""
    p = sub.add_parser(
        "compare", help="one table (md, csv, json) and one HTML page of several result folders side by side",
        description="Reads result folders (pointprobe probe: results.json; videoprobe probe: probe.json; "
                    "videoprobe bench: table.json; each with its config.yaml) and writes OUT/compare.md, "
                    ".csv, .json and .html: encoder, checkpoint, protocol, split and fraction, seeds, the "
                    "metric with its spread, chance and majority-class baselines, and the config keys that "
                    "differ between the runs.\n\nExample:\n  probesuite compare runs/probe-* --out "
                    "runs/compare",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="result folders")
    p.add_argument("--out", required=True, help="report folder")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from common.compare import compare_runs, display_row
    from common.report import markdown_table

    res = compare_runs(args.runs, args.out)
    print(markdown_table([display_row(r) for r in res["rows"]], float_format=".2f"))
    print(f"\ncomparison: {res['out']}/compare.md (+ .csv, .json, .html)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from common.cli import run_cli

    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
