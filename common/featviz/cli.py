"""``featviz``: zero-shot feature visualisation (PCA colours, similarity maps) for point clouds and videos."""
from __future__ import annotations

import argparse
import sys

from common.cli import build_parser as _build_parser
from common.cli import run_cli

# Sub-commands in order (``--help`` lists them so): the two modality pictures, then the page over them.
# Modules named by string and imported when the parser is built: ``common`` imports no modality.
COMMANDS = (
    "pointprobe.featviz",  # featviz points: PCA / similarity / k-means / label colours of point features
    "videoprobe.featviz",  # featviz video: PCA and similarity of a video encoder's patch tokens
    "common.featviz.report",  # featviz report: one offline HTML page of a results folder
)


def build_parser() -> argparse.ArgumentParser:
    """The ``featviz`` parser with :data:`COMMANDS` in order."""
    return _build_parser(
        "featviz",
        "Zero-shot feature visualisation: PCA colours and similarity maps for points and videos; "
        "HTML report.",
        COMMANDS,
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
