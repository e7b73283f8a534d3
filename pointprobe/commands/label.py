"""``pointprobe label``: a trained probe labels new scenes (PLY coloured by class, labels as .npy)."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="label scenes with a trained probe (PLY coloured by class + predicted labels .npy)",
        description="Example:\n  pointprobe label --probe runs/probe/probe_sonata.pt "
        "--scene data/scannet/val/scene0011_00 --out runs/labels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--probe", required=True, help="probe_*.pt written by `pointprobe probe`")
    p.add_argument("--scene", required=True, nargs="+",
                   help="scene folders (preprocessed layout) or .ply files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pointprobe.label import label_scenes

    failures = label_scenes(args.probe, args.scene, args.out, args.device)
    for scene, msg in failures.items():
        print(f"failed {scene}: {msg}", file=sys.stderr)
    return 1 if failures else 0
