"""``pointprobe extract``: encoder features of every scene into a feature cache per split."""
from __future__ import annotations

import argparse
import sys

from common.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="encoder features of ScanNet-layout scenes into a feature cache (resumable, torchrun-aware)",
        description="Examples:\n  pointprobe extract data.root=data/scannet encoder.checkpoint=sonata.pth "
        "out=runs/sonata\n  pointprobe extract data.root=data/scannet encoder.name=raw out=runs/raw\n"
        "  torchrun --nproc_per_node=4 -m pointprobe.cli extract --config configs/point/extract.yaml ...\n"
        "A checkpoint that pickles more than tensors and known harmless classes is refused;\n"
        "encoder.trust_checkpoint=true loads it anyway (full unpickling: only for files you trust).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "configs/point/extract.yaml")
    p.add_argument("--dry-run", action="store_true",
                   help="scan the data, encode three scenes, print scene counts, estimated cache size and "
                   "time and the scenes that would fail; write nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common import dist
    from common.cli import load_cli_config
    from pointprobe.extract import ExtractConfig, extract

    cfg = load_cli_config(ExtractConfig, args)
    if getattr(args, "dry_run", False):
        from pointprobe.extract import dry_run, format_dry_run

        rep = dry_run(cfg)
        if dist.is_main():
            print(format_dry_run(rep, cfg.out))
        return 1 if any(d["failed"] for d in rep["splits"].values()) else 0
    failures = extract(cfg)
    n_bad = sum(len(v) for v in failures.values())
    if dist.is_main():
        for split, errs in failures.items():
            for item, msg in sorted(errs.items()):
                print(f"failed [{split}] {item}: {msg}", file=sys.stderr)
        print(f"extract: features in {cfg.out}/<split>; {n_bad} scene(s) failed", file=sys.stderr)
    return 1 if n_bad else 0
