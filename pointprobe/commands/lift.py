"""``pointprobe lift``: 2D image features lifted onto the 3D points, one feature cache per split."""
from __future__ import annotations

import argparse
import sys

from common.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lift",
        help="lift 2D image features (DINO/DINOv2 or built in) onto 3D points via posed RGB-D frames",
        description="Examples:\n  pointprobe lift data.raw=data/scannet_raw data.root=data/scannet "
        "image_encoder.name=dinov2_vitb14 out=runs/lift/dinov2\n"
        "  pointprobe lift data.raw=data/synth/raw data.root=data/synth/pre fusion.frame_stride=1\n"
        "  pointprobe probe features=[runs/lift/dinov2]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "configs/point/lift.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common import dist
    from common.cli import load_cli_config
    from pointprobe.lift.lift import LiftConfig, run_lift

    cfg = load_cli_config(LiftConfig, args)
    result = run_lift(cfg)
    failures = result["failures"]
    n_bad = sum(len(v) for v in failures.values())
    if dist.is_main():
        for split, errs in failures.items():
            for item, msg in sorted(errs.items()):
                print(f"failed [{split}] {item}: {msg}", file=sys.stderr)
        for split, c in result["coverage"].items():
            print(f"lift [{split}]: {c['scenes']} scenes, {100 * c['seen_fraction']:.1f}% of points seen "
                  f"({100 * c['labelled_seen_fraction']:.1f}% of labelled points)", file=sys.stderr)
        print(f"lift: features in {cfg.out}/<split>; {n_bad} scene(s) failed", file=sys.stderr)
    return 1 if n_bad else 0
