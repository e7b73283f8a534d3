"""``pointprobe ablate``: a trained probe on live features with colour / normals removed or estimated."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from pointprobe.ablate import ABLATIONS, ORIENTS

    p = sub.add_parser(
        "ablate",
        help="input ablations of a trained point probe (colour / normals removed or estimated): one table",
        description="Example:\n  pointprobe ablate --probe runs/probe/probe_sonata.pt --data data/scannet "
        "--split val --out runs/ablate\nWrites OUT/ablation.md and OUT/ablation.json: mIoU / mAcc / allAcc "
        "per ablation and the drop against the full inputs (features extracted live, no cache).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--probe", required=True, help="probe_*.pt written by `pointprobe probe`")
    p.add_argument("--data", required=True, help="preprocessed dataset root (<data>/<split>/<scene>/)")
    p.add_argument("--split", default="val", help="evaluation split (default: val)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=ABLATIONS,
                   help="which rows (default: all)")
    p.add_argument("--normal-radius", type=float, default=0.1,
                   help="open3d normal estimation: neighbours within this radius in metres (default 0.1)")
    p.add_argument("--normal-knn", type=int, default=30, help="... at most this many neighbours (default 30)")
    p.add_argument("--orient", default="centre", choices=ORIENTS,
                   help="estimated normals point towards the scene's bounding-box centre (default), +z, "
                   "or keep open3d's signs")
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "float32"),
                   help="feature precision (auto: as the probe's training cache)")
    p.add_argument("--limit", type=int, default=0, help="at most this many scenes (0 = all)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pointprobe.ablate import AblateConfig, run_ablation

    cfg = AblateConfig(probe=args.probe, data=args.data, split=args.split, out=args.out,
                       ablations=list(args.ablations), normal_radius=args.normal_radius,
                       normal_knn=args.normal_knn, orient=args.orient, dtype=args.dtype, limit=args.limit,
                       device=args.device)
    res = run_ablation(cfg)
    print(open(res["md"]).read())
    print(f"wrote {res['md']} and {res['json']}")
    return 0
