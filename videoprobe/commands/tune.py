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
    from common.cli import load_cli_config
    from common.report import markdown_table
    from pointprobe.commands.tune import expand_short_keys
    from videoprobe.tune import VideoTuneConfig, run_video_tune

    cfg = load_cli_config(VideoTuneConfig, args, overrides=expand_short_keys(list(args.overrides or [])))
    row = run_video_tune(cfg)
    show = {k: row.get(k) for k in ("method", "encoder", "top1", "trainable_params", "trainable_pct",
                                    "peak_memory_mb", "step_time_s", "total_time_s")}
    print(markdown_table([show], float_format=".4g"))
    print(f"\nresults: {cfg.out}/tune_results.md (+ .json, ladder.png)")
    return 0
