"""``featviz``: zero-shot feature visualisation (PCA colours, similarity maps) for point clouds and videos."""
from __future__ import annotations

import sys

from common.cli import run_cli
from common.cli_discovery import build_parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "featviz",
        "Zero-shot feature visualisation: PCA colours and similarity maps for points and videos; "
        "HTML report.",
        "tools.featviz_commands",
    )
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
