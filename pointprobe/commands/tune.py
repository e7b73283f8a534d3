"""``pointprobe tune``: a point encoder in the training loop, one rung of the tuning ladder per run."""
from __future__ import annotations

import argparse

from common.cli import add_show_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="train a method of the tuning ladder (linear online, decoder, ssf, lora, last_k, progressive, "
             "full, mezo) with the encoder in the loop; mIoU + cost row in tune_results.md",
        description="Example:\n  pointprobe tune tune.method=ssf encoder.name=sparseunet "
        "encoder.checkpoint=runs/pretrain/encoder.pth data.root=data/scannet out=runs/tune\n"
        "  pointprobe tune tune.method=mezo tune.over=lora ...   (zeroth order over a trainable set)\n"
        "  torchrun --nproc_per_node=2 -m pointprobe.cli tune ...   (DDP: gloo on CPU, NCCL on CUDA)\n"
        "Short keys: method=, over= mean tune.method=, tune.over=.\n"
        "SIGTERM / SIGINT / SIGUSR1 (tune.stop_signals) finish the step, write a checkpoint and exit with\n"
        "status 3 (interrupted, resumable: rerun the same command).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/point/tune.yaml", help="YAML config (default: %(default)s)")
    add_show_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tune.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common.tuning.command import run_tune_command
    from pointprobe.tune import PointTuneConfig, run_point_tune

    return run_tune_command(args, PointTuneConfig, run_point_tune, "mIoU")
