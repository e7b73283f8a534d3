"""``pointprobe demo``: generated scenes -> pre-training -> features -> linear probes -> table + picture."""
from __future__ import annotations

import argparse

from common.cli import add_show_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on generated scenes: pre-train, extract, probe, table, PCA picture",
    )
    p.add_argument("--out", default="runs/point-demo", help="output folder (default: %(default)s)")
    add_show_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="demo settings, e.g. scenes=16 pretrain_overrides=[train.steps=100]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common.cli import load_cli_config
    from common.report import markdown_table
    from pointprobe.demo import PointDemoConfig, run_demo

    cfg = load_cli_config(PointDemoConfig, args, None, [f"out={args.out}", *args.overrides])
    res = run_demo(cfg)
    print()
    print(markdown_table(res["md_rows"], float_format=".2f"))
    print(f"\ntables: {res['probe']}/results.md, per_class_iou.png")
    if res["picture"]:
        print(f"picture: {res['picture']}")
    return 0
