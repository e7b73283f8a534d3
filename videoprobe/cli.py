"""``videoprobe``: action-recognition probing of video encoders."""
from __future__ import annotations

import argparse
import sys

from common.cli import build_parser as _build_parser
from common.cli import run_cli

# Sub-commands in pipeline order (``--help`` lists them so): data -> encoders -> features -> probes -> demo.
# A new command = one module in videoprobe/commands with ``register(subparsers)`` + one line here.
COMMANDS = (
    "videoprobe.commands.synth",  # synthetic action videos
    "videoprobe.commands.encoders",  # list the video encoders
    "videoprobe.commands.extract",  # frozen encoder -> feature cache (+ export-twlv, import-twlv)
    "videoprobe.commands.probe",  # linear / attentive / kNN probes on cached features
    "videoprobe.commands.tune",  # the encoder in the loop: the tuning ladder (linear .. full, mezo, prompt)
    "videoprobe.commands.bench",  # encoders x probes benchmark table
    "videoprobe.commands.demo",  # the whole chain on synthetic videos
)


def build_parser() -> argparse.ArgumentParser:
    """The ``videoprobe`` parser with :data:`COMMANDS` in order."""
    return _build_parser(
        "videoprobe",
        "Video feature probing: synth data, extract clip features, linear/attentive/kNN probes, benchmarks.",
        COMMANDS,
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
