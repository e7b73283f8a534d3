"""``videoprobe tune``: a video encoder in the training loop, one rung of the tuning ladder per run."""
from __future__ import annotations

import argparse

from common.cli import add_show_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="train a method of the tuning ladder (linear online, decoder, ssf, lora, last_k, progressive, "
             "full, mezo, prompt) with the encoder in the loop on live clips; top-1 + cost row in "
             "tune_results.md",
        description="Example:\n  videoprobe tune method=ssf encoder.name=videomae_vit_s "
        "data.kind=synth data.root=data/synth out=runs/tune_video\n"
        "  videoprobe tune method=mezo over=lora ...   (zeroth order over a trainable set)\n"
        "  videoprobe tune method=prompt prompt.label_map=flm encoder.name=x3d_s "
        "encoder.checkpoint=X3D_S.pyth ...\n"
        "  torchrun --nproc_per_node=2 -m videoprobe.cli tune ...   (DDP: gloo on CPU, NCCL on CUDA)\n"
        "Short keys: method=, over=, steps= mean tune.method=, tune.over=, tune.steps=.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/video/tune.yaml", help="YAML config (default: %(default)s)")
    add_show_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tune.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common.tuning.command import run_tune_command
    from videoprobe.tune import VideoTuneConfig, run_video_tune

    return run_tune_command(args, VideoTuneConfig, run_video_tune, "top1")
