"""``pointprobe``: ScanNet-style segmentation probing, pre-training, lifting, synthetic data."""
from __future__ import annotations

import sys

from common.cli import run_cli
from common.cli_discovery import build_parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "pointprobe",
        "Point-cloud feature probing: synth/preprocess data, pretrain, extract features, probe, lift.",
        "pointprobe.commands",
    )
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
