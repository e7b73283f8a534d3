"""``pointprobe cluster``: cosine k-means (+ optional STEGO head) on cached features, Hungarian mIoU."""
from __future__ import annotations

import argparse
import sys

from common.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster",
        help="unsupervised segmentation of cached point features (k-means, STEGO head), Hungarian mIoU",
        description="Examples:\n"
        "  pointprobe cluster features=[runs/lift/dinov2,runs/distill/dinov2/predicted]\n"
        "  pointprobe cluster features=[runs/features/sonata] stego.enabled=true out=runs/cluster/sonata",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "configs/point/cluster.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common.cli import load_cli_config
    from pointprobe.lift.cluster import ClusterConfig, run_cluster

    cfg = load_cli_config(ClusterConfig, args)
    result = run_cluster(cfg)
    for r in result["rows"]:
        print(f"cluster: {r['features']}: mIoU {r['mIoU']:.2f} (k={r['k']}, head {r['head']}, "
              f"coverage {100 * r['coverage']:.1f}%)", file=sys.stderr)
    print(f"cluster: tables in {result['out']}/results.md", file=sys.stderr)
    return 0
