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


# ------------------------------------------------------------------ attentive probe: online vs cached
ATT_CLASSES = ["RedDisc", "BlueSquare", "MoveLeft", "MoveRight"]  # two appearance, two motion classes
ATT_ENCODER = {"name": "videomae_vit_tiny", "kwargs": {"num_frames": 8, "img_size": 32}}


def attentive_part(tmp: Path, seeds: list[int], epochs: int, videos_per_class: int = 12) -> dict[str, Any]:
    """The V-JEPA attentive probe (one learned query, one cross-attention block, AdamW lr 1e-3, wd 0.01,
    cosine, batch 8, ``epochs`` passes over the training videos) trained two ways on the same generated
    train / test split and encoder: cached (``videoprobe extract save_tokens=true`` of both splits +
    ``videoprobe probe probes=[attentive]``: fixed centre clips) and online (``videoprobe tune --config
    configs/video/attentive_online.yaml``: live random resized crops + flips, no token cache); both score
    the centre clip of every test video. Per seed top-1, and the wall time and token bytes of each."""
    from common.cache import FeatureCache
    from common.config import from_dict, load_config
    from videoprobe.data.synth import SynthConfig, generate_dataset
    from videoprobe.extract import ExtractConfig, extract
    from videoprobe.probe import ProbeConfig, run_probes
    from videoprobe.tune import VideoTuneTaskConfig, run_video_tune

    synth = SynthConfig(ATT_CLASSES, videos_per_class=videos_per_class, seed=5, frames=24, size=40,
                        clips_per_group=2)
    data = Path(generate_dataset(tmp / "att_synth", synth, progress=False))
    res: dict[str, Any] = {"seeds": seeds, "epochs": epochs}
    t0 = time.perf_counter()
    for split in ("train", "test"):
        extract(from_dict(ExtractConfig, {
            "data": {"kind": "synth", "root": str(data), "split": split}, "encoder": ATT_ENCODER,
            "views": {"num_clips": 1, "spatial": "center", "clip_len": 8, "frame_step": 2, "size": 32,
                      "short_side": 32},
            "save_tokens": True, "out": str(tmp / "att_cache" / split), "progress": False, "fsync": False,
            "device": "cpu"}))
    res["extract_s"] = time.perf_counter() - t0
    train_cache = FeatureCache(tmp / "att_cache" / "train")
    n_train = len(train_cache)
    res["train_videos"], res["test_videos"] = n_train, len(FeatureCache(tmp / "att_cache" / "test"))
    res["token_bytes_per_video"] = train_cache.meta["bytes_per_video"]["tokens"]
    res["token_shape"] = list(train_cache.load(train_cache.items()[0], ["tokens"])["tokens"].shape)
    t0 = time.perf_counter()
    pcfg = from_dict(ProbeConfig, {
        "train_cache": str(tmp / "att_cache" / "train"), "test_cache": str(tmp / "att_cache" / "test"),
        "probes": ["attentive"], "seeds": seeds, "n_boot": 200, "progress": False,
        "attentive": {"num_heads": 0, "depth": 1, "lr": 1e-3, "weight_decay": 0.01, "epochs": epochs,
                      "batch_size": 8, "val_fraction": 0.0}})
    cached = run_probes(pcfg)["results"]["attentive"]
    res["cached_probe_s"] = time.perf_counter() - t0
    res["cached"] = {"top1": cached["top1"], "std": cached["spread"]["top1"]["std"],
                     "per_seed": cached["spread"]["top1"]["per_seed"]}
    steps = max(1, round(epochs * n_train / 8))
    online = []
    t0 = time.perf_counter()
    for sd in seeds:
        cfg = load_config(VideoTuneTaskConfig, "configs/video/attentive_online.yaml", [
            f"data.root={data}", f"encoder.name={ATT_ENCODER['name']}",
            "encoder.kwargs={num_frames: 8, img_size: 32}", "clips.clip_len=8", "clips.frame_step=2",
            "clips.size=32",
            "clips.short_side=32", "clips.eval_clips=1", "clips.eval_spatial=center", "clips.batch_size=8",
            f"tune.steps={steps}", "tune.warmup=0", f"tune.save_every={steps}", f"tune.seed={sd}",
            f"seed={sd}", "tune.progress=false", "device=cpu", f"out={tmp / 'att_online'}"])
        online.append(run_video_tune(cfg)["top1"])
    res["online_s"] = time.perf_counter() - t0
    from common.stats import mean_std

    mean, std = mean_std(online)
    res["online"] = {"top1": mean, "std": std, "per_seed": online, "steps": steps}
    return res


def attentive_markdown(r: dict[str, Any], cmd: str) -> list[str]:
    c, o = r["cached"], r["online"]
    fmt = ", ".join
    return [
        "### Video: attentive probe online vs cached",
        "",
        f"Command: `{cmd}`",
        "",
        f"Generated appearance / motion set ({', '.join(ATT_CLASSES)}): {r['train_videos']} train and "
        f"{r['test_videos']} test videos; encoder `videomae_vit_tiny` (random init, 8 x 32 x 32 clips, "
        f"tokens {r['token_shape']} per video, float16 in the cache). "
        "The same V-JEPA probe (one query, one cross-attention block; "
        f"AdamW lr 1e-3, wd 0.01, cosine, batch 8, {r['epochs']} epochs = {o['steps']} steps), seeds "
        f"{r['seeds']}, top-1 on the centre clip of every test video:",
        "",
        "| route | command | top-1 mean ± std | per seed | wall s | token bytes written |",
        "| --- | --- | ---: | --- | ---: | ---: |",
        f"| cached tokens | `videoprobe extract save_tokens=true` (train + test) + `videoprobe probe "
        f"probes=[attentive]` | {c['top1']:.2f} ± {c['std'] or 0:.2f} | "
        f"{fmt(f'{v:.1f}' for v in c['per_seed'])} | {r['extract_s'] + r['cached_probe_s']:.0f} | "
        f"{r['token_bytes_per_video'] * (r['train_videos'] + r['test_videos']):,} |",
        f"| online, live clips | `videoprobe tune --config configs/video/attentive_online.yaml` | "
        f"{o['top1']:.2f} ± {o['std'] or 0:.2f} | {fmt(f'{v:.1f}' for v in o['per_seed'])} | "
        f"{r['online_s']:.0f} | 0 |",
        "",
        f"Difference online - cached: {o['top1'] - c['top1']:+.2f} top-1 points (std over seeds: cached "
        f"{c['std'] or 0:.2f}, online {o['std'] or 0:.2f}). The cached route trains on one fixed centre clip "
        "per video; the online route sees a new random resized crop / flip every epoch (the V-JEPA protocol) "
        "and stores nothing; at Kinetics size the cached route needs the token cache of the table above "
        "(terabytes for a ViT-B at 15 views), the online one needs none.",
    ]


def main(argv: list[str] | None = None) -> int:
    from common.benchdoc import machine_line, update_section

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=20_000, help="length of the Kinetics-sized list")
    p.add_argument("--extract", type=int, default=1000, help="videos extracted to time the cheap encoder")
    p.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    p.add_argument("--attentive-only", action="store_true",
                   help="run only the attentive online-vs-cached part and replace its subsection")
    p.add_argument("--attentive-seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--attentive-epochs", type=int, default=10)
    args = p.parse_args(argv)
    if args.attentive_only:
        return attentive_main(args)
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
        import re

        from common.benchdoc import DOC

        # the attentive online-vs-cached subsection (--attentive-only) is kept as it is
        kept = re.search(r"<!-- begin bench_scale_attentive -->.*?<!-- end bench_scale_attentive -->",
                         DOC.read_text() if DOC.exists() else "", re.S)
        print(f"updated {update_section('bench_scale', md + (chr(10) * 2 + kept.group(0) if kept else ''))}")
    return 0


def attentive_main(args: argparse.Namespace) -> int:
    """``--attentive-only``: the online-vs-cached attentive part, written between its own markers inside
    section bench_scale (the rest of the section is left as it is)."""
    import re

    from common.benchdoc import DOC, machine_line

    torch.set_num_threads(1)
    cmd = "python tools/bench_scale.py --attentive-only" + (
        f" --attentive-seeds {' '.join(map(str, args.attentive_seeds))}" if args.attentive_seeds != [0, 1, 2]
        else "") + (f" --attentive-epochs {args.attentive_epochs}" if args.attentive_epochs != 10 else "")
    with tempfile.TemporaryDirectory() as tmp:
        res = attentive_part(Path(tmp), list(args.attentive_seeds), args.attentive_epochs)
    print(json.dumps(res, indent=1, default=str))
    begin, end = "<!-- begin bench_scale_attentive -->", "<!-- end bench_scale_attentive -->"
    md = "\n".join([begin, *attentive_markdown(res, cmd), "",
                    f"Machine: {machine_line()}.", end])
    print(md)
    if args.no_doc:
        return 0
    text = DOC.read_text()
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", "", text, flags=re.S)
    marker = "<!-- end bench_scale -->"
    text = (text.replace(marker, md + "\n" + marker, 1) if marker in text
            else text.rstrip() + "\n\n" + md + "\n")
    DOC.write_text(text)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
