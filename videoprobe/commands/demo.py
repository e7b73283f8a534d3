"""``videoprobe demo --out DIR``: offline end-to-end demo on generated videos (timing in the README)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="generate videos, extract two hand-designed encoders, probe, print the table",
        description="Generates a small appearance-vs-motion video dataset, extracts features with the "
                    "parameter-free motion_energy and frame_stats encoders (no weights needed), runs "
                    "linear and kNN probes on the appearance and motion classes and writes DIR/table.md.",
    )
    p.add_argument("--out", default="runs/video-demo", help="output folder (default: %(default)s)")
    p.add_argument("--videos-per-class", type=int, default=16, help="generated videos per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attentive", action="store_true", help="also run the attentive probe on tokens")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from videoprobe.demo import run_demo

    torch.set_num_threads(1)  # the demo encoders are light; one thread avoids OpenMP spin-waits on busy cores
    result = run_demo(args.out, args.videos_per_class, args.seed, args.attentive)
    return 1 if result["failures"] else 0
