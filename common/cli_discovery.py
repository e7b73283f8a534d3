"""Build a sub-command CLI from every module of a ``commands`` package."""
from __future__ import annotations

import argparse
import importlib
import pkgutil


def build_parser(prog: str, description: str, commands_pkg: str) -> argparse.ArgumentParser:
    """A parser with one sub-command per module of ``commands_pkg`` (each has ``register(sub)``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    pkg = importlib.import_module(commands_pkg)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands_pkg}.{info.name}")
        mod.register(sub)
    for name, p in sub.choices.items():  # "pointprobe extract" for messages such as --show-config's
        p.set_defaults(command_prog=f"{prog} {name}")
    return parser
