"""``pointprobe``: ScanNet-style segmentation probing, pre-training, lifting, synthetic data."""
from __future__ import annotations

import argparse
import sys

from common.cli import build_parser as _build_parser
from common.cli import run_cli

# Sub-commands in pipeline order (``--help`` lists them so): data -> encoders -> features -> probes -> demo.
# A new command = one module in pointprobe/commands with ``register(subparsers)`` + one line here.
COMMANDS = (
    "pointprobe.commands.synth",  # synthetic scenes
    "pointprobe.commands.preprocess",  # raw ScanNet -> preprocessed scenes
    "pointprobe.commands.encoders",  # list the point encoders
    "pointprobe.commands.pretrain",  # self-supervised pre-training
    "pointprobe.commands.lift",  # 2D image features lifted onto the points
    "pointprobe.commands.distill",  # a 3D student of the lifted features
    "pointprobe.commands.extract",  # frozen encoder -> feature cache
    "pointprobe.commands.cluster",  # unsupervised: k-means / STEGO on cached features
    "pointprobe.commands.probe",  # supervised probes on cached features
    "pointprobe.commands.tune",  # the encoder in the loop: the tuning ladder
    "pointprobe.commands.label",  # a trained probe labels new scenes
    "pointprobe.commands.ablate",  # input ablations of a trained probe
    "pointprobe.commands.demo",  # the whole chain on synthetic scenes
)


def build_parser() -> argparse.ArgumentParser:
    """The ``pointprobe`` parser with :data:`COMMANDS` in order."""
    return _build_parser(
        "pointprobe",
        "Point-cloud feature probing: synth/preprocess data, pretrain, extract features, probe, lift.",
        COMMANDS,
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
