"""Storage and time at real dataset sizes (issue 15), measured on this machine.

Video part: a Kinetics-sized list of generated clips (a pool of short synthetic videos, linked under
N distinct names, listed with ``data.kind=list``):

- ``videoprobe extract --dry-run`` over the whole list: scan rate (every video opened), estimates;
- the cache bytes per video of pooled vs token storage for a ViT-B-sized token grid (1568 tokens x 768
  dims in float16), computed and verified on a real extraction of two videos with a random-init
  ``videomae_vit_b`` (16 x 224 x 224, one view), then extrapolated to Kinetics-400's 240k training
  videos for one view and for the 5 x 3 test views;
- the extraction time per video with a cheap encoder (``frame_stats``, pooled) on the first
  ``--extract`` videos of the list, extrapolated to 240k videos on one such process.

The ScanNet-sized point run is its own script, ``tools/bench_scale_points.py`` (section
"bench_scale_points"): one stage per process, so that each stage's peak RSS is its own.

Writes the section "bench_scale" of docs/benchmarks.md.

    python tools/bench_scale.py [--videos 20000] [--extract 1000] [--no-doc]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

K400_TRAIN = 240_000  # Kinetics-400 training videos (order of magnitude used by the issue)
VIT_B_TOKENS, VIT_B_DIM = 1568, 768  # 8 x 14 x 14 tubelets of a 16 x 224 x 224 clip, ViT-B width
K400_VIEWS = 15  # 5 clips x 3 crops, the usual Kinetics test views


def make_list(tmp: Path, n: int, pool_per_class: int = 8) -> tuple[Path, int]:
    """A list file of ``n`` videos named k000000 ... (links to a pool of generated clips, 16 frames of
    32 px); returns (list file, pool size)."""
    from videoprobe.data.synth import SynthConfig, generate_dataset

    classes = ["RedDisc", "BlueSquare", "MoveLeft", "MoveRight"]
    data = generate_dataset(tmp / "pool", SynthConfig(classes=classes, videos_per_class=pool_per_class,
                                                      frames=16, size=32, clips_per_group=1), progress=False)
    pool = sorted((Path(data) / "videos").rglob("*.mp4"))
    links = tmp / "k400"
    links.mkdir()
    lines = []
    for i in range(n):
        src = pool[i % len(pool)]
        dst = links / f"k{i:06d}.mp4"
        os.symlink(src, dst)
        lines.append(f"{dst} {src.parent.name}\n")
    lst = tmp / "train.txt"
    lst.write_text("".join(lines))
    (tmp / "classInd.txt").write_text("".join(f"{c}\n" for c in classes))
    return lst, len(pool)


def _cfg(lst: Path, out: Path, **kw: Any) -> Any:
    from common.config import from_dict
    from videoprobe.extract import ExtractConfig

    d: dict[str, Any] = {"data": {"kind": "list", "list_file": str(lst),
                                  "class_index": str(lst.parent / "classInd.txt")},
                         "out": str(out), "progress": False, "fsync": False, "device": "cpu"}
    for k, v in kw.items():
        node = d
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return from_dict(ExtractConfig, d)


def video_part(tmp: Path, n_videos: int, n_extract: int) -> dict[str, Any]:
    from common.cache import FeatureCache
    from videoprobe.extract import dry_run, extract

    res: dict[str, Any] = {"videos": n_videos}
    t0 = time.perf_counter()
    lst, pool = make_list(tmp, n_videos)
    res["pool"], res["make_list_s"] = pool, time.perf_counter() - t0
    cheap = {"encoder.name": "frame_stats", "views.num_clips": 1, "views.clip_len": 8, "views.frame_step": 2,
             "views.size": 32, "views.short_side": 32}

    # dry run over the whole list: every video opened, three encoded, nothing written
    t0 = time.perf_counter()
    dr = dry_run(_cfg(lst, tmp / "never", **cheap))
    res["dry_run_s"] = time.perf_counter() - t0
    assert not (tmp / "never").exists()
    res["dry_run"] = {"items": dr.items, "unreadable": len(dr.unreadable), "est_bytes": dr.est_bytes,
                      "est_seconds": dr.est_seconds, "seconds_per_video": dr.seconds_per_video}

    # extraction time per video with a cheap encoder, pooled only
    cfg = _cfg(lst, tmp / "cheap", **cheap, **{"data.limit": n_extract})
    t0 = time.perf_counter()
    r = extract(cfg)
    wall = time.perf_counter() - t0
    meta = FeatureCache(tmp / "cheap").meta["bytes_per_video"]
    res["cheap"] = {"videos": r.written, "loop_s": r.seconds, "wall_s": wall,
                    "s_per_video": r.seconds / max(1, r.written), "bytes_per_video": meta}

    # ViT-B token grid: two videos, one 16 x 224 x 224 view each, tokens in float16, measured
    vit = _cfg(lst, tmp / "vitb", **{"encoder.name": "videomae_vit_b", "views.num_clips": 1,
                                     "views.clip_len": 16, "views.frame_step": 1, "views.size": 224,
                                     "views.short_side": 224, "save_tokens": True, "data.limit": 2,
                                     "batch_size": 1})
    t0 = time.perf_counter()
    rv = extract(vit)
    cache = FeatureCache(tmp / "vitb")
    tok = cache.load(cache.items()[0], ["tokens"])["tokens"]
    res["vit_b"] = {"videos": rv.written, "s_per_video": (time.perf_counter() - t0) / max(1, rv.written),
                    "token_shape": list(tok.shape), "token_dtype": str(tok.dtype),
                    "bytes_per_video": cache.meta["bytes_per_video"]}
    computed = VIT_B_TOKENS * VIT_B_DIM * 2
    measured = res["vit_b"]["bytes_per_video"]["tokens"]
    assert measured == computed, (measured, computed)
    res["vit_b"]["tokens_computed"] = computed
    return res


def _gb(b: float) -> str:
    if b < 1e9:
        return f"{b / 1e6:,.1f} MB"
    return f"{b / 1e9:,.2f} GB" if b < 1e12 else f"{b / 1e12:,.2f} TB"


def video_markdown(r: dict[str, Any], cmd: str) -> list[str]:
    vb = r["vit_b"]["bytes_per_video"]
    tok1 = r["vit_b"]["tokens_computed"]
    pooled1 = vb["pooled"]  # features (768 float32) + labels + frame indices + video info, one view
    per_view_pooled = VIT_B_DIM * 4 + 8  # a feature row and its label
    pooled15 = pooled1 + (K400_VIEWS - 1) * per_view_pooled + (K400_VIEWS // 3 - 1) * 16 * 8
    rows = [
        ("pooled, float32", 1, pooled1),
        ("pooled, float32", K400_VIEWS, pooled15),
        ("tokens 1568 x 768, float16 (+ pooled)", 1, pooled1 + tok1),
        ("tokens 1568 x 768, float16 (+ pooled)", K400_VIEWS, pooled15 + K400_VIEWS * tok1),
    ]
    ch, dr = r["cheap"], r["dry_run"]
    lines = [
        f"Command: `{cmd}`",
        "",
        "### Video: Kinetics-sized list",
        "",
        f"List: {r['videos']:,} videos (`data.kind=list`, links to a pool of {r['pool']} generated clips of "
        f"16 frames at 32 px; made in {r['make_list_s']:.1f} s).",
        "",
        "Cache bytes per video for a ViT-B-sized encoder (array data; each .npy file adds a 128-byte "
        "header). The 1-view rows are measured: a real extraction of 2 videos with a random-init "
        f"`videomae_vit_b` (16 x 224 x 224, tokens {r['vit_b']['token_shape']} "
        f"{r['vit_b']['token_dtype']}, {r['vit_b']['s_per_video']:.1f} s per video here) recorded "
        f"`bytes_per_video` = {vb} in the cache meta, and the token bytes equal "
        f"1568 x 768 x 2 = {tok1:,}. The 15-view rows (5 clips x 3 crops) add 14 feature rows and 4 clips' "
        "frame indices (pooled) and 14 more token grids.",
        "",
        f"| storage | views per video | bytes per video | {K400_TRAIN:,} videos (K400 train) |",
        "|---|---|---|---|",
        *[f"| {name} | {v} | {b:,} | {_gb(b * K400_TRAIN)} |" for name, v, b in rows],
        "",
        "Pooled storage (the default) fits any disk; tokens need `save_tokens=true` and are refused before "
        "anything is written when first video x videos exceeds `token_budget_gb` (default 20).",
        "",
        f"Extraction with a cheap encoder (`frame_stats`, 1 view of 8 frames at 32 px, pooled, one process, "
        f"one thread): {ch['videos']} videos in {ch['loop_s']:.1f} s = {ch['s_per_video'] * 1e3:.1f} ms per "
        f"video (decode + encode + cache write; wall {ch['wall_s']:.1f} s with start-up); "
        f"{ch['bytes_per_video']['total']:,} bytes per video. At that rate {K400_TRAIN:,} videos take "
        f"{ch['s_per_video'] * K400_TRAIN / 3600:.1f} h on one process; real clips at 224 px decode far "
        "slower, use `--dry-run` on the real data for the estimate.",
        "",
        f"`videoprobe extract --dry-run` over all {dr['items']:,} videos: {r['dry_run_s']:.1f} s "
        f"({r['dry_run_s'] / dr['items'] * 1e3:.2f} ms per video: every video opened, three decoded and "
        f"encoded), {dr['unreadable']} unreadable, estimated cache {_gb(dr['est_bytes'])} and "
        f"{dr['est_seconds'] / 3600:.2f} h ({dr['seconds_per_video'] * 1e3:.1f} ms per video).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    from common.benchdoc import machine_line, update_section

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=20_000, help="length of the Kinetics-sized list")
    p.add_argument("--extract", type=int, default=1000, help="videos extracted to time the cheap encoder")
    p.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = "python tools/bench_scale.py" + (f" --videos {args.videos}" if args.videos != 20_000 else "") + (
        f" --extract {args.extract}" if args.extract != 1000 else "")
    with tempfile.TemporaryDirectory() as tmp:
        res = video_part(Path(tmp), args.videos, args.extract)
    print(json.dumps(res, indent=1, default=str))
    md = "\n".join([
        f"Machine: {machine_line()}.",
        "",
        *video_markdown(res, cmd),
        "",
        "### Points: ScanNet-sized",
        "",
        "Measured by `tools/bench_scale_points.py`: section bench_scale_points below.",
    ])
    print(md)
    if not args.no_doc:
        print(f"updated {update_section('bench_scale', md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
