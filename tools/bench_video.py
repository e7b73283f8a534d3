"""Benchmark the video pipeline; writes the ``bench_video`` section of docs/benchmarks.md.

Parts (each a function ``(ctx) -> markdown``, run in order by ``main``; add one to ``PARTS``):

* ``bench_decoding``: clip decoding throughput, decord (with and without the ``seek(0)`` after
  ``get_batch`` workaround) vs PyAV (our seek-by-pts path) vs PyAV decoding from the start, on
  the same clips (16 frames, frame step 2, random positions) of (a) the generated synthetic
  videos (32 frames, 64x64) and (b) a generated 300-frame 224x224 video (libx264 default keyframe
  interval 250, and again with a keyframe every 25 frames); clips/s, frames/s, ratios against
  decord, and the largest pixel difference between the backends' frames (they should be
  identical: both use FFmpeg's H.264 decoder and RGB conversion).

``ctx`` is a ``BenchContext``: a work folder with the generated videos (``synth_dir``, ``long_video``),
the parsed arguments and a seed.

    python tools/bench_video.py [--quick] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import machine_line, update_section  # noqa: E402


@dataclass
class BenchContext:
    """What the benchmark parts share."""

    workdir: Path
    args: argparse.Namespace
    seed: int = 0
    synth_dir: Path | None = None
    long_video: Path | None = None
    long_video_gop25: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)


def prepare_videos(ctx: BenchContext) -> None:
    """Generate the synthetic dataset and one long 224x224 video (once per run)."""
    from videoprobe.data.synth import SynthConfig, generate_dataset, render_video, write_video

    ctx.synth_dir = ctx.workdir / "synth"
    if not (ctx.synth_dir / "classes.json").exists():
        per_class = 2 if ctx.args.quick else 6
        cfg = SynthConfig(videos_per_class=per_class, seed=ctx.seed)
        generate_dataset(ctx.synth_dir, cfg, progress=False)
    ctx.long_video = ctx.workdir / "long_300x224.mp4"
    ctx.long_video_gop25 = ctx.workdir / "long_300x224_gop25.mp4"
    if not ctx.long_video.exists() or not ctx.long_video_gop25.exists():
        frames = render_video("MoveRight", 300, 224, np.random.default_rng(ctx.seed))
        # libx264 defaults (keyframe interval 250, B-frames), and a keyframe every second
        write_video(ctx.long_video, frames, fps=25, crf=23)
        write_video(ctx.long_video_gop25, frames, fps=25, crf=23, gop=25)


def _clip_plan(paths: list[Path], num_frames: dict[Path, int], n: int, clip_len: int, step: int,
               clips_per_open: int, rng: np.random.Generator) -> list[tuple[Path, np.ndarray]]:
    """``n`` decode calls: (file, frame indices of ``clips_per_open`` clips, random or uniform)."""
    from videoprobe.data.transforms import clip_indices

    plan = []
    for i in range(n):
        p = paths[i % len(paths)]
        mode = "random" if clips_per_open == 1 else "uniform"
        plan.append((p, clip_indices(num_frames[p], clip_len, step, clips_per_open, mode, rng).reshape(-1)))
    return plan


def _run(plan: list[tuple[Path, np.ndarray]], decode: Callable[[Path, np.ndarray], np.ndarray],
         keep: bool) -> tuple[float, list[np.ndarray]]:
    out = []
    t0 = time.perf_counter()
    for path, idx in plan:
        frames = decode(path, idx)
        if keep:
            out.append(frames)
    return time.perf_counter() - t0, out


def bench_decoding(ctx: BenchContext) -> str:
    """Clip decoding: decord vs PyAV (seek) vs PyAV (from the start), same clips, one thread each."""
    from videoprobe.data.decode import DecordReader, PyAVReader

    def dec_decord(path: Path, idx: np.ndarray) -> np.ndarray:
        with DecordReader(path, num_threads=1) as r:
            return r.get_frames(idx).numpy()

    def dec_decord_noseek(path: Path, idx: np.ndarray) -> np.ndarray:
        with DecordReader(path, num_threads=1, seek_after_batch=False) as r:
            return r.get_frames(idx).numpy()

    def dec_pyav(path: Path, idx: np.ndarray) -> np.ndarray:
        with PyAVReader(path, num_threads=1) as r:
            return r.get_frames(idx).numpy()

    def dec_pyav_seq(path: Path, idx: np.ndarray) -> np.ndarray:
        with PyAVReader(path, num_threads=1) as r:
            got = r._decode_sequential(np.unique(idx))
            return np.stack([got[int(i)] for i in idx])

    methods = [("decord", dec_decord), ("decord without the seek(0) workaround", dec_decord_noseek),
               ("PyAV, seek by pts (ours)", dec_pyav),
               ("PyAV, decode from the start", dec_pyav_seq)]
    clip_len, step = 16, 2
    repeats = 1 if ctx.args.quick else 3
    rng = np.random.default_rng(ctx.seed)
    synth = sorted((ctx.synth_dir / "videos").rglob("*.mp4"))
    n_long = 8 if ctx.args.quick else 30
    sets = [("synthetic 64x64, 32 frames", synth, 30 if ctx.args.quick else 120, 1),
            ("generated 224x224, 300 frames, keyframe interval 250", [ctx.long_video], n_long, 1),
            ("same, keyframe every 25 frames", [ctx.long_video_gop25], n_long, 1),
            ("same, 8 uniform clips per open (extraction style)", [ctx.long_video_gop25], n_long // 4, 8)]
    rows, checks = [], []
    for set_name, paths, n_calls, per_open in sets:
        n_clips = n_calls * per_open
        counts = {}
        for p in paths:
            with DecordReader(p) as r:
                counts[p] = r.num_frames
        plan = _clip_plan(paths, counts, n_calls, clip_len, step, per_open, rng)
        for _, fn in methods:  # warm-up (imports, file cache)
            fn(*plan[0])
        times: dict[str, list[float]] = {m: [] for m, _ in methods}
        frames: dict[str, list[np.ndarray]] = {}
        for rep in range(repeats):  # methods interleaved round by round (the machine is shared)
            for name, fn in methods:
                dt, out = _run(plan, fn, keep=rep == 0)
                times[name].append(dt)
                if rep == 0:
                    frames[name] = out
        base = statistics.median(times["decord"])
        for name, _ in methods:
            med = statistics.median(times[name])
            rows.append(f"| {set_name} | {name} | {n_clips / med:.1f} | {n_clips * clip_len / med:.0f} "
                        f"| {med / n_clips * 1000:.1f} | {med / base:.2f}x |")
        diff = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
                   for name, _ in methods[1:] for a, b in zip(frames["decord"], frames[name]))
        checks.append(f"{set_name}: {n_clips} clips, max abs pixel difference decord vs PyAV = {diff}")
    load = os.getloadavg()[0]
    return "\n".join([
        "### Clip decoding: decord vs PyAV",
        "",
        f"Each clip = open the file + decode {clip_len} frames every {step} frames at a random position "
        "(last rows: 8 evenly spread clips decoded in one call per open), the same clips for every "
        f"method; one decoding thread; median of {repeats} passes, methods "
        "interleaved pass by pass. Ratio = method time / decord time (higher: slower than decord). "
        f"The machine is shared (load average {load:.1f} at the end), so absolute figures are noisy.",
        "",
        "| videos | decoder | clips/s | frames/s | ms/clip | time vs decord |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Same frames: " + "; ".join(checks) + ".",
    ])


PARTS: list[tuple[str, Callable[[BenchContext], str]]] = [
    ("decoding", bench_decoding),
]


def main(argv: list[str] | None = None) -> int:
    """Generate the videos, run every part of ``PARTS`` and write the ``bench_video`` section."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer videos / clips / repeats (smoke run)")
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    p.add_argument("--parts", nargs="*", default=None,
                   help=f"parts to run (default: all of {[n for n, _ in PARTS]})")
    p.add_argument("--no-write", action="store_true", help="print the markdown instead of updating the doc")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = BenchContext(workdir=workdir, args=args)
        prepare_videos(ctx)
        sections = [f"Machine: {machine_line()}"]
        for name, fn in PARTS:
            if args.parts is None or name in args.parts:
                print(f"bench_video: {name} ...", file=sys.stderr, flush=True)
                sections.append(fn(ctx))
    md = "\n\n".join(sections)
    if args.no_write:
        print(md)
    else:
        print(f"wrote {update_section('bench_video', md)}")
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
