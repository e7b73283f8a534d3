"""``pointprobe probe``: linear segmentation probes on cached features, encoders side by side."""
from __future__ import annotations

import argparse

from common.cli import add_show_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="linear probe (mIoU, per-class IoU, mAcc, allAcc) on cached features of one or more encoders",
        description="Example:\n  pointprobe probe features=[runs/sonata,runs/raw] out=runs/probe\n"
        "  pointprobe probe features=[runs/sonata] scene_fraction=0.05 out=runs/probe-5pct\n"
        "  pointprobe probe features=[runs/sonata] seeds=[0,1,2] out=runs/probe-3seeds  "
        "(mean ± std [95 % bootstrap CI over scenes])",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/point/probe.yaml", help="YAML config (default: %(default)s)")
    add_show_config(p)
    p.add_argument("--dry-run", action="store_true",
                   help="read the caches, encode two evaluation scenes when streaming, print rows, scenes, "
                   "estimated time and the scenes that would fail; train and write nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. probe.epochs=10")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common.cli import load_cli_config
    from common.report import markdown_table
    from pointprobe.probe import SegProbeConfig, run_probe

    cfg = load_cli_config(SegProbeConfig, args)
    if getattr(args, "dry_run", False):
        from pointprobe.probe import dry_run, format_dry_run

        rep = dry_run(cfg)
        print(format_dry_run(rep, cfg.out))
        return 1 if any(r["failed"] for r in rep["features"]) else 0
    res = run_probe(cfg)
    print(markdown_table(res["md_rows"], float_format=".2f"))
    print(f"\nresults: {res['out']}/results.md (+ .json, per_class_iou.png, probe_*.pt)")
    return 0
