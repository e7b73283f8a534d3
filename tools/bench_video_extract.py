"""Extraction throughput (views per second) of ``videoprobe.extract`` on generated videos.

Baseline measured in the same run: decoding alone (``load_clips`` in a loop, the floor every
extraction pays). Each row runs the whole extraction (decode, encode, cache write) for one encoder
and number of decoding workers, and reports views/s and the ratio to the decode-only rate.
Writes the section "bench_video_extract" of docs/benchmarks.md.

    python tools/bench_video_extract.py [--videos-per-class 6] [--size 64]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def measure_decode(root: Path, clip_len: int, frame_step: int, num_clips: int, size: int) -> dict[str, float]:
    """Decode-only baseline: views/s of ``load_clips`` over every training video."""
    from videoprobe.data.datasets import build_video_dataset
    from videoprobe.data.decode import load_clips

    items, _ = build_video_dataset("synth", root, "train")
    t0 = time.perf_counter()
    views = 0
    for it in items:
        views += load_clips(it.path, clip_len, frame_step, num_clips, "uniform", "center", size).shape[0]
    sec = time.perf_counter() - t0
    return {"views": views, "seconds": sec, "views_per_s": views / sec}


def measure_extraction(root: Path, out: Path, encoder: str, clip_len: int, frame_step: int, num_clips: int,
                       size: int, num_workers: int = 0, save_tokens: bool = False,
                       encoder_kwargs: dict[str, Any] | None = None, fsync: bool = True) -> dict[str, float]:
    """Extraction clips/s: one full ``videoprobe.extract.extract`` run into a fresh cache folder."""
    from common.config import from_dict
    from videoprobe.extract import ExtractConfig, extract

    cfg = from_dict(ExtractConfig, {
        "data": {"kind": "synth", "root": str(root), "split": "train"},
        "encoder": {"name": encoder, "kwargs": encoder_kwargs or {}},
        "views": {"num_clips": num_clips, "clip_len": clip_len, "frame_step": frame_step, "size": size,
                  "short_side": size},
        "out": str(out), "num_workers": num_workers, "save_tokens": save_tokens, "progress": False,
        "device": "auto", "fsync": fsync,
    })
    res = extract(cfg)
    return {"views": res.clips, "seconds": res.seconds, "views_per_s": res.clips_per_s}


def main(argv: list[str] | None = None) -> int:
    from common.benchdoc import machine_line, update_section
    from videoprobe.data.synth import SynthConfig, generate_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos-per-class", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one thread: stable on a shared machine, same for baseline and runs
    clip_len, step, clips = 8, 2, 2
    runs = [  # encoder, workers, tokens, fsync, kwargs
        ("frame_stats", 0, False, True, {}),
        ("motion_energy", 0, False, True, {}),
        ("motion_energy", 0, False, False, {}),
        ("motion_energy", 2, False, False, {}),
        ("motion_energy", 0, True, True, {}),
        ("x3d_s", 0, False, True, {"input_clip_length": clip_len, "input_crop_size": args.size}),
        ("videomae_vit_s", 0, False, True, {"num_frames": clip_len, "img_size": args.size}),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        scfg = SynthConfig(videos_per_class=args.videos_per_class, size=args.size)
        generate_dataset(root, scfg, progress=False)
        base = measure_decode(root, clip_len, step, clips, args.size)
        rows = [f"| decode only (baseline) | - | - | - | {base['views_per_s']:.1f} | 1.00 |"]
        for i, (enc, workers, tokens, fsync, kw) in enumerate(runs):
            r = measure_extraction(root, Path(tmp) / f"cache{i}", enc, clip_len, step, clips, args.size,
                                   workers, tokens, kw, fsync)
            label = f"{enc} (random init, {args.size} px)" if kw else enc
            yes = {True: "yes", False: "no"}
            rows.append(f"| {label} | {workers} | {yes[tokens]} | {yes[fsync]} | {r['views_per_s']:.1f} | "
                        f"{r['views_per_s'] / base['views_per_s']:.2f} |")
            print(rows[-1])
    md = "\n".join([
        f"Machine: {machine_line()}.",
        f"Data: generated videos ({args.videos_per_class} per class, 11 classes, {args.size} px, train "
        "split); "
        f"{clips} clips x {clip_len} frames (step {step}) per video, centre crop {args.size} px.",
        "Ratio = extraction views/s divided by the decode-only views/s measured in the same run "
        "(> 1 is possible with decoding workers).",
        "",
        "| encoder | decode workers | tokens cached | fsync | views/s | ratio to decode only |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(md)
    if not args.no_doc:
        print(f"updated {update_section('bench_video_extract', md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
