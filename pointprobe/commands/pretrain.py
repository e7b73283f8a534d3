"""``pointprobe pretrain``: Sonata-style self-distillation pre-training of a point encoder."""
from __future__ import annotations

import argparse
import sys

from common.cli import add_show_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-distillation pre-training (student / EMA teacher, masked and local views) -> encoder.pth",
        description="Example:\n  pointprobe pretrain --config configs/point/pretrain_demo.yaml "
        "data.root=data/synth/pre out=runs/pretrain\n"
        "  torchrun --nproc_per_node=4 -m pointprobe.cli pretrain --config configs/point/sonata_base.yaml "
        "data.root=... out=...\n"
        "Running it again with the same out= folder resumes from the last checkpoint there.\n"
        "SIGTERM / SIGINT / SIGUSR1 (train.stop_signals) finish the step, write a checkpoint and exit with\n"
        "status 3 (interrupted, resumable); train.save_every_minutes=M also saves every M minutes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/point/pretrain_demo.yaml",
                   help="YAML config (default: %(default)s)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="training checkpoint to resume from (default: OUT/last.pth when it exists)")
    add_show_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common import dist
    from common.cli import load_cli_config
    from common.errors import ConfigError
    from pointprobe.pretrain.train import PretrainConfig, run_pretrain

    cfg = load_cli_config(PretrainConfig, args)
    if not cfg.out:
        raise ConfigError("config key 'out' is empty: give out=DIR")
    dist.init_from_env()
    main = dist.is_main()
    try:
        res = run_pretrain(cfg, cfg.out, resume=args.resume)
    finally:
        dist.cleanup()
    if res.get("interrupted"):
        if main:
            print(f"interrupted at step {res['step']} ({res['interrupted']}), resumable: rerun the same "
                  "command", file=sys.stderr)
        return dist.INTERRUPTED_EXIT
    if main:
        last = res.get("last") or {}
        loss = f", last loss {last['loss']:.4f}" if "loss" in last else ""
        print(f"pre-training done at step {res['step']}{loss}; encoder: {res['encoder']}")
    return 0
