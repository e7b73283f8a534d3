"""Benchmark the tuning ladder (issue 14), video part: ``python tools/bench_tuning.py --modality video``.

On the generated appearance / motion dataset (``videoprobe synth``), for two encoders whose weights are
written to disk first, as a user would get them (no downloads):

- a ViT in the VideoMAE release layout (``videomae_vit_tiny``, random init, ``{"model": state_dict}``);
- a zoo CNN (``x3d_s``, random init with a 400-class Kinetics head, pytorchvideo's ``{"model_state":
  {"model.<name>": ...}}`` ``.pyth`` layout),

every method is one ``videoprobe tune`` process (training peak: the row's peak of the training steps;
process peak RSS: read from ``wait4``): linear
online, ssf, lora, prompt (padding prompt + linear head), mezo over ssf; and the cached linear probe of the
same encoder (``videoprobe extract`` of train and test + ``videoprobe probe probes=[linear]``) as the
baseline row. Every row: trainable parameters (count and % of the encoder), training peak, process peak
RSS, s / step, total s,
top-1 on every video of the test split, the encoder checkpoint hash.

A rerun into the same ``OUT`` runs only the rows not finished yet (``OUT/video/rows.json``).
Writes ``OUT/video/bench_tuning_video.{md,json}`` and the subsection ``### video rows`` of the section
``bench_tuning`` in docs/benchmarks.md (between its own markers, just before ``<!-- end bench_tuning -->``,
so the points part can rewrite the rest of the section).

    python tools/bench_tuning.py --modality video [--out runs/bench-tuning] [--steps 30] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import DOC, machine_line  # noqa: E402
from common.config import REPO_ROOT  # noqa: E402

CLASSES = ["RedDisc", "BlueSquare", "MoveLeft", "MoveRight"]  # two appearance, two motion classes
# method -> (tag in tune_results, extra overrides)
VIDEO_LADDER: list[tuple[str, str, list[str]]] = [
    ("linear", "linear", []),
    ("ssf", "ssf", []),
    ("lora", "lora", []),
    ("prompt", "prompt", []),
    ("mezo", "mezo-ssf", ["tune.over=ssf", "tune.mezo_eps=1e-3"]),  # lr: the encoder's mezo_lr
]
# encoder label -> (videoprobe name, kwargs, lora targets, clip overrides)
ENCODERS: dict[str, dict[str, Any]] = {
    "videomae_vit_tiny": {"kwargs": "{num_frames: 8, img_size: 32}", "lora": "[qkv]", "batch": 8,
                          "mezo_lr": 1e-3,
                          "clips": ["clips.clip_len=8", "clips.frame_step=2", "clips.size=32"]},
    # a CNN step costs ~20x a tiny ViT's on this CPU: shorter clips, smaller batches, --cnn-steps
    # x3d_s: MeZO over SSF at lr 1e-3 gave a NaN loss at step 2 (this bench, 2026-11-30): 1e-5
    "x3d_s": {"kwargs": "{}", "lora": "[conv_a, conv_c]", "batch": 4, "cnn": True, "mezo_lr": 1e-5,
              "clips": ["clips.clip_len=4", "clips.frame_step=4", "clips.size=32"]},
}
MARK_BEGIN, MARK_END = "<!-- begin bench_tuning_video -->", "<!-- end bench_tuning_video -->"


def _log(msg: str, t0: float) -> None:
    print(f"[bench_tuning video {time.time() - t0:7.1f}s] {msg}", flush=True)


def run_measured(args: list[str], log_file: Path) -> tuple[float, float]:
    """Run ``args`` (cwd: the repository, this tree on PYTHONPATH); (wall s, peak RSS MB of that process
    tree, from ``os.wait4``). A failure stops the bench with the tail of its log."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t = time.time()
    with open(log_file, "w") as fh:
        p = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"bench_tuning video: {' '.join(args[2:6])} failed:\n"
                         f"{log_file.read_text()[-3000:]}")
    rss_mb = usage.ru_maxrss / 1024  # Linux: kB
    return time.time() - t, rss_mb


def finished_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Rows finished by an earlier run into the same ``OUT`` (``rows.json``): a rerun runs only the rest."""
    path = out / "rows.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_row(out: Path, key: str, row: dict[str, Any]) -> dict[str, Any]:
    done = finished_rows(out)
    done[key] = row
    (out / "rows.json").write_text(json.dumps(done, indent=1))
    return row


def write_encoders(folder: Path, names: tuple[str, ...] = ("videomae_vit_tiny", "x3d_s")) -> dict[str, Path]:
    """Random-init weights in the release file layouts: VideoMAE ``{"model": sd}``, zoo X3D ``.pyth``
    (``names``: which of the two; each written once, kept when already there)."""
    import torch

    from videoprobe.models import create_video_encoder
    from videoprobe.models.zoo import ZOO_SPECS, ZooEncoder

    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: p for n, p in (("videomae_vit_tiny", folder / "videomae_vit_tiny_random.pth"),
                               ("x3d_s", folder / "X3D_S_random.pyth")) if n in names}
    if "videomae_vit_tiny" in paths and not paths["videomae_vit_tiny"].is_file():
        torch.manual_seed(0)
        vit = create_video_encoder("videomae_vit_tiny", num_frames=8, img_size=32, seed=0)
        sd = {k: v for k, v in vit.state_dict().items()}
        sd["head.weight"], sd["head.bias"] = torch.zeros(400, vit.embed_dim), torch.zeros(400)
        torch.save({"model": sd}, paths["videomae_vit_tiny"])
    if "x3d_s" in paths and not paths["x3d_s"].is_file():
        torch.manual_seed(1)
        net = ZooEncoder("x3d_s", ZOO_SPECS["x3d_s"])
        sd = {f"model.{k}": v for k, v in net.net.state_dict().items()}
        sd[f"model.{net._proj_prefix}weight"] = torch.randn(400, net.embed_dim) * 0.05
        sd[f"model.{net._proj_prefix}bias"] = torch.zeros(400)
        torch.save({"model_state": sd}, paths["x3d_s"])
    return paths


def make_data(out: Path, videos_per_class: int, seed: int) -> Path:
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = out / "synth"
    if not (root / "classes.json").is_file():
        generate_dataset(root, SynthConfig(classes=CLASSES, videos_per_class=videos_per_class, seed=seed,
                                           frames=24, size=40, clips_per_group=2), progress=False)
    return root


def cached_linear(out: Path, data: Path, name: str, ckpt: Path, spec: dict[str, Any], logs: Path,
                  t0: float) -> dict[str, Any]:
    """``videoprobe extract`` (train, test) + ``videoprobe probe probes=[linear]``: the baseline row."""
    feats = out / "cached" / name
    clip = dict(c.removeprefix("clips.").split("=", 1) for c in spec["clips"])
    common = ["data.kind=synth", f"data.root={data}", f"encoder.name={name}", f"encoder.checkpoint={ckpt}",
              f"encoder.kwargs={spec['kwargs']}", "views.num_clips=1", "views.spatial=center",
              f"views.clip_len={clip['clip_len']}", f"views.frame_step={clip['frame_step']}",
              f"views.size={clip['size']}", "device=cpu", "progress=false", "fsync=false"]
    wall, rss = 0.0, 0.0
    for split in ("train", "test"):
        w, r = run_measured([sys.executable, "-m", "videoprobe.cli", "extract", *common,
                             f"data.split={split}", f"out={feats / split}"],
                            logs / f"extract_{name}_{split}.log")
        wall, rss = wall + w, max(rss, r)
    w, r = run_measured([sys.executable, "-m", "videoprobe.cli", "probe", f"train_cache={feats / 'train'}",
                         f"test_cache={feats / 'test'}", "probes=[linear]", f"out={feats / 'probe'}",
                         "n_boot=100", "progress=false"], logs / f"probe_{name}.log")
    wall, rss = wall + w, max(rss, r)
    rec = json.loads((feats / "probe" / "probe.json").read_text())
    row = rec["rows"][0]
    meta = rec["meta"]
    lin = meta["details"]["linear"]
    _log(f"{name}: cached linear top-1 {row['top1']:.2f}, {rss:.0f} MB, {wall:.0f} s", t0)
    return {"method": "cached linear (extract + probe)", "encoder": name, "top1": float(row["top1"]),
            "trainable_params": int(lin.get("trainable_params") or 0), "trainable_pct": 0.0,
            "train_peak_mb": None, "peak_rss_mb": rss, "step_s": None, "total_s": wall,
            "checkpoint_sha256": meta["checkpoint_sha256"]}


def tune_row(out: Path, data: Path, name: str, ckpt: Path, spec: dict[str, Any], method: str, tag: str,
             extra: list[str], steps: int, logs: Path, t0: float) -> dict[str, Any]:
    """One ``videoprobe tune`` process; its row of ``OUT/tune_results.json`` plus the process's peak RSS."""
    tout = out / "tune" / name
    args = [sys.executable, "-m", "videoprobe.cli", "tune", "data.kind=synth", f"data.root={data}",
            f"out={tout}", f"encoder.name={name}", f"encoder.checkpoint={ckpt}",
            f"encoder.kwargs={spec['kwargs']}", *spec["clips"], f"clips.batch_size={spec['batch']}",
            "clips.eval_batch_size=4", "clips.eval_clips=1", "clips.eval_spatial=center",
            f"tune.method={method}", f"tune.steps={steps}",
            f"tune.warmup={max(1, steps // 10)}", f"tune.save_every={steps}", "tune.norm_batches=2",
            "tune.select_split=test", "tune.eval_split=test", "tune.progress=false", "device=cpu",
            f"tune.lora_targets={spec['lora']}", "prompt.pad=4", *extra,
            *([f"tune.mezo_lr={spec['mezo_lr']}"] if method == "mezo" else [])]
    wall, rss = run_measured(args, logs / f"tune_{name}_{tag}.log")
    rows = json.loads((tout / "tune_results.json").read_text())["rows"]
    r = [x for x in rows if x["method"] == tag][-1]
    _log(f"{name} {tag}: top-1 {r['top1']:.2f}, {r['trainable_params']} trainable, {rss:.0f} MB, "
         f"{wall:.0f} s", t0)
    return {"method": tag, "encoder": name, "top1": float(r["top1"]),
            "trainable_params": int(r["trainable_params"]), "trainable_pct": float(r["trainable_pct"]),
            "train_peak_mb": r.get("peak_memory_mb"), "memory_kind": r.get("memory_kind", ""),
            "peak_rss_mb": rss, "step_s": r.get("step_time_s"), "total_s": wall,
            "checkpoint_sha256": r.get("checkpoint_sha256", ""), "config_hash": r.get("config_hash")}


def video_markdown(table: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The ``### video rows`` subsection (between its own markers)."""
    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = [MARK_BEGIN, "### video rows", "",
             f"Machine: {machine_line()}.", "",
             f"Command: `{info['command']}`", "",
             f"Data: the generated appearance / motion dataset ({', '.join(CLASSES)}; {info['train']} train "
             f"and {info['test']} test videos, 24 frames at 40 px). Encoders written to disk first, random "
             "init (no video pre-training exists in the repository; no downloads): `videomae_vit_tiny` "
             "(8 x 32 x 32 clips) in the VideoMAE release layout, `x3d_s` in the pytorchvideo zoo `.pyth` "
             f"layout with a 400-class head (4 x 32 x 32 clips). Every tuned method: {info['steps']} steps "
             f"of 8 live augmented clips for the ViT, {info['cnn_steps']} steps of 4 for x3d_s (random "
             "resized crop + flip), one `videoprobe tune` process each (training peak: the peak RSS "
             "during its training steps, read before evaluation, absolute: the frozen weights and data "
             "resident at its start count; process peak RSS: the whole process), top-1 on the centre "
             "clip of every test video. Baseline: `videoprobe extract` "
             "(train + test, centre clip) + `videoprobe probe probes=[linear]` of the same weights "
             "(process peak RSS: the largest of the three processes; total s: their sum).", "",
             "| method | encoder | top-1 | vs cached linear | trainable params | % of encoder | "
             "training peak MB | process peak RSS MB | s / step | total s | checkpoint |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    base = {r["encoder"]: r["top1"] for r in table if r["method"].startswith("cached")}
    for r in table:
        d = r["top1"] - base[r["encoder"]] if r["encoder"] in base and r["top1"] is not None else None
        lines.append(f"| {r['method']} | {r['encoder']} | {f(r['top1'], '.2f')} | {f(d, '+.2f')} | "
                     f"{f(r['trainable_params'], 'd')} | {f(r['trainable_pct'], '.2f')} | "
                     f"{f(r.get('train_peak_mb'), '.0f')} | {f(r['peak_rss_mb'], '.0f')} | "
                     f"{f(r['step_s'], '.2f')} | {f(r['total_s'], '.0f')} | {r['checkpoint_sha256'][:12]} |")
    lines += ["", *[f"- {n}" for n in info["notes"]], MARK_END]
    return "\n".join(lines)


def insert_video_rows(md: str, doc: Path = DOC) -> Path:
    """Put (or replace) the video subsection inside section ``bench_tuning``, before its end marker; an
    absent section is created with only this subsection."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    old = r"\n?" + re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END) + r"\n?"
    text = re.sub(old, "", text, flags=re.S)
    end = "<!-- end bench_tuning -->"
    if end in text:
        text = text.replace(end, "\n" + md.strip() + "\n" + end, 1)
    else:
        text = text.rstrip() + f"\n\n<!-- begin bench_tuning -->\n## bench_tuning\n\n{md.strip()}\n{end}\n"
    doc.write_text(text)
    return doc


def main(argv: list[str] | None = None) -> int:
    from common.report import write_table
    from common.tuning.cost import peak_ratio_note

    ap = argparse.ArgumentParser(description="tuning ladder, video rows")
    ap.add_argument("--modality", default="video", choices=["video"])
    ap.add_argument("--out", default="runs/bench-tuning")
    ap.add_argument("--videos-per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of every tuned method (ViT)")
    ap.add_argument("--cnn-steps", type=int, default=5, help="optimizer steps of every tuned method (x3d_s)")
    ap.add_argument("--encoders", nargs="*", default=list(ENCODERS))
    ap.add_argument("--methods", nargs="*", default=None, help="a subset of the ladder (method names)")
    ap.add_argument("--quick", action="store_true", help="4 videos per class, 3 steps: a smoke run")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.videos_per_class, args.steps, args.cnn_steps = 4, 3, 2
    t0 = time.time()
    out = Path(args.out).resolve() / "video"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = make_data(out, args.videos_per_class, args.seed)
    weights = write_encoders(out / "weights")
    _log(f"data {data}, weights {sorted(str(p) for p in weights.values())}", t0)
    table: list[dict[str, Any]] = []
    for name in args.encoders:
        spec = ENCODERS[name]
        done = finished_rows(out)
        key = f"{name}|cached"
        table.append(done[key] if key in done else
                     save_row(out, key, cached_linear(out, data, name, weights[name], spec, logs, t0)))
        for method, tag, extra in VIDEO_LADDER:
            if args.methods and method not in args.methods:
                continue
            steps = args.cnn_steps if spec.get("cnn") else args.steps
            key = f"{name}|{tag}|{steps}"
            if key in done:
                _log(f"{name} {tag}: finished earlier into {out}, top-1 {done[key]['top1']:.2f}", t0)
                table.append(done[key])
                continue
            try:
                table.append(save_row(out, key, tune_row(out, data, name, weights[name], spec, method, tag,
                                                          extra, steps, logs, t0)))
            except SystemExit as e:  # a method that fails on an encoder is a row saying so, not the end
                err = str(e).strip().splitlines()[-1]
                _log(f"{name} {tag}: FAILED: {err}", t0)
                table.append({"method": f"{tag} (failed)", "encoder": name, "top1": None,
                              "trainable_params": None, "trainable_pct": None, "peak_rss_mb": None,
                              "step_s": None, "total_s": None, "checkpoint_sha256": "", "error": err})
    write_table(table, out / "bench_tuning_video", "Tuning ladder, video rows (test top-1)",
                float_format=".3g")
    from videoprobe.data.datasets import build_video_dataset

    n = {s: len(build_video_dataset("synth", str(data), s)[0]) for s in ("train", "test")}
    notes = []
    for name in args.encoders:
        rows = {r["method"]: r for r in table if r["encoder"] == name}
        base, lin = rows.get("cached linear (extract + probe)"), rows.get("linear")
        mezo = rows.get("mezo-ssf")
        if base and lin:
            notes.append(f"{name}: online linear (live augmented clips) minus cached linear: "
                         f"{lin['top1'] - base['top1']:+.2f} top-1")
        failed = [r for r in table if r["encoder"] == name and r.get("error")]
        notes += [f"{name}: {r['method']}: {r['error']}" for r in failed]
        if mezo and lin:
            notes.append(f"{name} (over ssf): {peak_ratio_note(mezo, lin, key='train_peak_mb')}")
    notes.append("random-init encoders on a tiny generated set with a short budget: the rows show that every "
                 "rung runs on both encoder kinds and what it costs, not how the methods rank on pre-trained "
                 "weights; step times depend on the load of the shared machine at the time")
    notes.append(f"wall time: {(time.time() - t0) / 60:.1f} min in all")
    cmd = "python tools/bench_tuning.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = {"command": cmd.strip(), "train": n["train"], "test": n["test"], "steps": args.steps,
            "cnn_steps": args.cnn_steps, "notes": notes}
    md = video_markdown(table, info)
    (out / "bench_tuning_video_section.md").write_text(md + "\n")
    print(md)
    if not args.no_doc:
        print(f"updated {insert_video_rows(md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
