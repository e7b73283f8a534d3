"""Thin helpers shared by the command-line front ends (``pointprobe``, ``videoprobe``, ``featviz``)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common.errors import ProbeSuiteError

Handler = Callable[[argparse.Namespace], int | None]
T = TypeVar("T")

SHOW_CONFIG_HELP = ("print every config key with its resolved value (defaults <- --config file <- "
                    "overrides) and its help as YAML, then exit without running anything")


class ConfigShown(Exception):  # noqa: N818 - not an error: the end of a --show-config run
    """Raised after ``--show-config`` printed the config; ``run_cli`` turns it into exit status 0."""


def add_show_config(p: argparse.ArgumentParser) -> None:
    """``--show-config``: print the resolved config with help and exit 0 (see :func:`load_cli_config`)."""
    p.add_argument("--show-config", action="store_true", help=SHOW_CONFIG_HELP)


def add_config_args(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """``--config FILE``, ``--show-config`` and positional ``key=value`` overrides."""
    p.add_argument("--config", default=default_config, help="YAML config file (default: %(default)s)")
    add_show_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. probe.epochs=5")


def load_cli_config(schema: type[T], args: argparse.Namespace, path: str | Path | None = None,
                    overrides: list[str] | None = None) -> T:
    """The command's config: ``schema`` defaults <- ``path`` (default ``args.config``; its ``_base_`` files
    first) <- ``overrides``
    (default ``args.overrides``). With ``--show-config`` it prints that config as commented YAML and
    raises :class:`ConfigShown` (exit 0) before anything is run or written."""
    from common.config import config_files, load_config, show_config

    path = getattr(args, "config", None) if path is None else path
    overrides = list(getattr(args, "overrides", None) or []) if overrides is None else overrides
    cfg = load_config(schema, path, overrides)
    if getattr(args, "show_config", False):
        prog = getattr(args, "command_prog", None) or schema.__name__
        source = " <- ".join(["defaults", *(str(f) for f in (config_files(path) if path else []))])
        if overrides:
            source += " <- " + " ".join(overrides)
        print(show_config(cfg, f"{prog}: resolved config ({source})\nkey: value  # help"), end="")
        sys.stdout.flush()
        raise ConfigShown
    return cfg


def build_parser(prog: str, description: str, commands: Sequence[str]) -> argparse.ArgumentParser:
    """A parser with the sub-commands of ``commands``, in that order (the order ``--help`` lists them).

    Each entry names a module (``"pointprobe.commands.extract"``) whose ``register(subparsers)`` adds
    its sub-command(s); modules are imported here, so keep their heavy imports inside the handlers."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in commands:
        importlib.import_module(name).register(sub)
    for name, p in sub.choices.items():  # "pointprobe extract" for messages such as --show-config's
        p.set_defaults(command_prog=f"{prog} {name}")
    return parser


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
    except ConfigShown:
        return 0
    except ProbeSuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished items are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


def build_without_weights(factory: Callable[[str], Any], name: str) -> tuple[Any, Any]:
    """``factory(name)`` on torch's meta device (no memory for its weights) for listing commands;
    built on the CPU when one of its layers cannot be made there. Returns (model, device)."""
    import torch

    try:
        with torch.device("meta"):
            return factory(name), torch.device("meta")
    except (RuntimeError, NotImplementedError):
        return factory(name), torch.device("cpu")


def print_rows(rows: list[dict[str, Any]], as_json: bool, footer: str = "") -> int:
    """A listing command's output: JSON, or a markdown table followed by ``footer``; returns 0."""
    import json

    from common.report import markdown_table

    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    print(markdown_table(rows))
    if footer:
        print("\n" + footer)
    return 0
