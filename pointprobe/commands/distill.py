"""``pointprobe distill``: train a 3D encoder to predict lifted 2D features (every point gets one)."""
from __future__ import annotations

import argparse
import sys

from common.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil lifted 2D features into a 3D encoder (SparseUNet / PTv3), resumable",
        description="Examples:\n  pointprobe distill data.lifted=runs/lift/dinov2 data.root=data/scannet "
        "out=runs/distill/dinov2\n  pointprobe extract encoder.checkpoint=runs/distill/dinov2/encoder.pth "
        "out=runs/features/distilled\n"
        "  pointprobe probe features=[runs/lift/dinov2,runs/distill/dinov2/predicted]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "configs/point/distill.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common.cli import load_cli_config
    from pointprobe.lift.distill import DistillConfig, run_distill

    cfg = load_cli_config(DistillConfig, args)
    result = run_distill(cfg)
    if result.get("interrupted"):
        from common.dist import INTERRUPTED_EXIT

        print(f"interrupted at step {result['step']} ({result['interrupted']}), resumable: rerun the same "
              "command", file=sys.stderr)
        return INTERRUPTED_EXIT
    last = result["history"][-1] if result["history"] else {}
    loss = last.get("loss", float("nan"))
    print(f"distill: encoder {result['encoder']} (epoch {last.get('epoch')}, loss {loss:.4f}"
          + (f", val cosine {last['val_cosine']:.4f}" if "val_cosine" in last else "") + ")", file=sys.stderr)
    n_bad = 0
    for split, errs in result.get("predicted", {}).items():
        for item, msg in sorted(errs.items()):
            print(f"failed [{split}] {item}: {msg}", file=sys.stderr)
            n_bad += 1
    if "predicted" in result:
        print(f"distill: predicted features in {cfg.out}/predicted/<split>", file=sys.stderr)
    return 1 if n_bad else 0
