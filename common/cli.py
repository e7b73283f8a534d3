"""Thin helpers shared by the command-line front ends (``pointprobe``, ``videoprobe``, ``featviz``)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from common.errors import ProbeSuiteError

Handler = Callable[[argparse.Namespace], int | None]


def add_config_args(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """``--config FILE`` plus positional ``key=value`` overrides."""
    p.add_argument("--config", default=default_config, help="YAML config file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. probe.epochs=5")


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, dispatch to ``args.func`` and turn ``ProbeSuiteError`` into one line + exit 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        rc = func(args)
    except ProbeSuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished items are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return int(rc or 0)
