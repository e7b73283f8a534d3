"""``videoprobe``: action-recognition probing of video encoders."""
from __future__ import annotations

import sys

from common.cli import run_cli
from common.cli_discovery import build_parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "videoprobe",
        "Video feature probing: synth data, extract clip features, linear/attentive/kNN probes, benchmarks.",
        "videoprobe.commands",
    )
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
