"""Benchmark the tuning ladder (issue 14), points part: every method of ``pointprobe tune`` on one encoder.

Runs the repository's own pipeline on generated ScanNet-format rooms and nothing else:

    generate + preprocess (tools/bench_pretrain.prepare_data) -> run_pretrain (a short Sonata-style
    pre-training, configs/point/pretrain_bench_cpu.yaml with --steps) -> for every method one
    ``pointprobe tune`` process (memory: the peak of its training steps) on the pre-trained encoder,
    plus ``full`` on the same architecture with random weights -> the cached linear probe of the same
    pre-trained encoder (``pointprobe extract`` + ``probe``) as the baseline row.

All methods train on the same train scenes; the online linear head is chosen on the val split; every
row is scored on all points of ``--eval-split``. Writes ``OUT/tune_results.{md,json}``, ``OUT/ladder.png``
and the section ``bench_tuning`` of ``docs/benchmarks.md`` (the picture copied to ``docs/img/``).
Video rows (``videoprobe tune``) are not part of this script yet.

    python tools/bench_tuning.py [--out runs/bench-tuning] [--scenes 12] [--pretrain-steps 100] [--steps 30]
    python tools/bench_tuning.py --quick     # tiny: a smoke run of the whole chain (< 10 min on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import DOC, machine_line, update_section  # noqa: E402
from common.config import REPO_ROOT  # noqa: E402

# method -> extra overrides (a method's own settings; the shared ones are in main)
# (the decoder, the most expensive row, runs last: a run cut short still has the others)
LADDER: list[tuple[str, str, list[str]]] = [
    ("linear", "pre", []),
    ("ssf", "pre", []),
    ("lora", "pre", []),
    ("last_k", "pre", ["tune.k=2"]),
    ("progressive", "pre", ["tune.progressive_at=[0.2, 0.5]"]),
    ("full", "pre", []),
    ("full", "random", []),
    ("mezo", "pre", ["tune.over=ssf", "tune.mezo_lr=1e-3", "tune.mezo_eps=1e-3"]),
    ("decoder", "pre", []),
]
# LP-FT (--lp-ft): these methods of the pre-trained encoder start their head from the cached linear probe
# (tune.head_init); `full` also runs without it, for the pre-trained vs random comparison at one budget
LP_FT = ("ssf", "lora", "last_k", "progressive", "full", "mezo")


def base_method(tag: str) -> str:
    """``last_k+lp-ft`` -> ``last_k``, ``mezo-ssf`` -> ``mezo``."""
    return tag.replace("+lp-ft", "").split("-")[0]


def ladder(lp_ft: bool, probe: Path | None) -> list[tuple[str, str, list[str]]]:
    """The runs: LADDER, with ``tune.head_init=<probe>`` on the LP_FT methods of the pre-trained encoder
    when ``lp_ft`` (plus the plain ``full`` of the pre-trained encoder)."""
    if not lp_ft:
        return list(LADDER)
    out = []
    for method, which, extra in LADDER:
        if which == "pre" and method in LP_FT:
            out.append((method, which, [*extra, f"tune.head_init={probe}"]))
            if method == "full":
                out.append((method, which, list(extra)))
        else:
            out.append((method, which, extra))
    return out


def _log(msg: str, t0: float) -> None:
    print(f"[bench_tuning {time.time() - t0:7.1f}s] {msg}", flush=True)


def tune_process(out: Path, data: Path, method: str, encoder: list[str], extra: list[str],
                 common: list[str], t0: float) -> dict:
    """One ``pointprobe tune`` process; returns its row (from the run's tuned.pth record)."""
    args = [sys.executable, "-m", "pointprobe.cli", "tune", "--config", "configs/point/tune_bench_cpu.yaml",
            f"data.root={data}", f"out={out}",
            f"tune.method={method}", *encoder, *common, *extra]
    tag = method if method != "mezo" else f"mezo-{next(e.split('=')[1] for e in extra if 'over=' in e)}"
    if any(e.startswith("tune.head_init=") for e in extra):
        tag += "+lp-ft"
    label = next(e.split("=", 1)[1] for e in encoder if e.startswith("encoder.label="))
    done = out / "tune_results.json"
    if done.is_file():  # resumable: a method finished earlier with this config is not run again
        from common.config import config_hash, load_config
        from pointprobe.tune import PointTuneConfig

        h = config_hash(load_config(PointTuneConfig, str(REPO_ROOT / args[5]), args[6:]))
        for r in json.loads(done.read_text())["rows"]:
            if r["method"] == tag and r["encoder"] == label and r.get("config_hash") == h:
                _log(f"{tag} ({label}): done earlier, mIoU {r['mIoU']:.2f}", t0)
                return r
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    start = time.time()
    p = subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    if p.returncode != 0:
        raise SystemExit(f"bench_tuning: {method} failed:\n{p.stderr[-3000:]}")
    rows = json.loads(done.read_text())["rows"]
    row = [r for r in rows if r["method"] == tag and r["encoder"] == label][-1]
    _log(f"{tag} ({' '.join(encoder)}): mIoU {row['mIoU']:.2f} in {time.time() - start:.0f} s", t0)
    return row


def main(argv: list[str] | None = None) -> int:
    from common.report import write_table
    from common.tuning.cost import peak_ratio_note
    from common.tuning.loop import ladder_plot

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-tuning")
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pretrain-config", default="configs/point/pretrain_bench_cpu.yaml")
    # defaults sized for <= 30 min on 2 idle cores from measured CPU costs (docs/benchmarks.md, bench_tuning)
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of every method")
    ap.add_argument("--max-points", type=int, default=3000, help="sphere crop of a training scene")
    ap.add_argument("--eval-split", default="test", choices=["val", "test"])
    ap.add_argument("--methods", nargs="*", default=None, help="a subset of the ladder (method names)")
    ap.add_argument("--lp-ft", action=argparse.BooleanOptionalAction, default=True,
                    help="LP-FT: the tuned methods of the pre-trained encoder start their head from the "
                         "cached linear probe (tune.head_init); --no-lp-ft: random heads")
    ap.add_argument("--quick", action="store_true", help="8 scenes, 20 pre-training steps, 8 tuning steps")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing more: write the table and section from the rows finished so far")
    ap.add_argument("--note", action="append", default=[], help="a line added to the section (repeatable)")
    args = ap.parse_args(argv)
    if args.quick:
        args.scenes, args.pretrain_steps, args.steps, args.max_points = 8, 20, 8, 2000
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tools.bench_pretrain import prepare_data, pretrain, probe_encoder

    data = prepare_data(out, args.scenes, args.seed, t0)
    pre = pretrain(out, data, args.pretrain_config, args.pretrain_steps,
                   [f"train.steps={args.pretrain_steps}", "views.max_points=2000"], t0)
    cfg = pre["cfg"]
    ckpt = pre["encoders"][-1] if pre["encoders"] else None
    if ckpt is None or int(ckpt.stem.split("_")[1]) != args.pretrain_steps:  # e.g. stopped by a signal
        raise SystemExit(f"bench_tuning: the pre-training in {out / 'pretrain'} did not reach "
                         f"{args.pretrain_steps} steps (last encoder: {ckpt}); give a new --out")
    arch, bcfg = cfg.model.backbone, dict(cfg.model.backbone_config)
    pre_enc = [f"encoder.name={arch}", f"encoder.checkpoint={ckpt}", f"encoder.label={arch} pre-trained"]
    rnd_enc = [f"encoder.name={arch}", "encoder.config=" + json.dumps(bcfg),
               f"encoder.seed={cfg.train.seed}", f"encoder.label={arch} random init"]
    common = [f"tune.steps={args.steps}", f"tune.warmup={max(1, args.steps // 10)}",
              f"tune.save_every={args.steps}", f"tune.eval_split={args.eval_split}",
              f"aug.max_points={args.max_points}"]  # the rest: configs/point/tune_bench_cpu.yaml
    # the cached linear probe of the same pre-trained encoder: the baseline row, and the head of LP-FT
    from pointprobe.extract import PointEncoderConfig

    spec = PointEncoderConfig(name=arch, checkpoint=str(ckpt), label=f"{arch} pre-trained")
    base = probe_encoder(out, data, "cached_pre", spec, "configs/point/probe.yaml",
                         ["max_train_points=500000"], args.eval_split, False, t0)
    _log(f"cached linear probe: mIoU {base['mIoU']:.2f}", t0)
    probe_file = next(iter(sorted((out / "probe" / "cached_pre").glob("probe_*.pt"))), None)
    if args.lp_ft and probe_file is None:
        raise SystemExit(f"bench_tuning: no probe_*.pt in {out / 'probe' / 'cached_pre'} for --lp-ft")
    runs = ladder(args.lp_ft, probe_file)
    tout = out / "tune"
    rows = []
    tuning_start = time.time()
    for method, which, extra in runs:
        if args.methods and method not in args.methods:
            continue
        if args.report_only:
            continue
        rows.append((which, tune_process(tout, data, method, pre_enc if which == "pre" else rnd_enc, extra,
                                         common, t0)))
    tuning_s = time.time() - tuning_start
    if args.report_only and (tout / "tune_results.json").is_file():
        done = json.loads((tout / "tune_results.json").read_text())["rows"]
        rows = [("random" if "random" in r["encoder"] else "pre", r) for r in done]
        tuning_s = sum(r["wall_s"] for r in done)
    lp = "+lp-ft"
    missing = [f"{m}{lp if any(e.startswith('tune.head_init=') for e in x) else ''} ({w})" for m, w, x in runs
               if (not args.methods or m in args.methods)
               and not any(base_method(r["method"]) == m and ww == w
                           and r["method"].endswith(lp) == any(e.startswith("tune.head_init=") for e in x)
                           for ww, r in rows)]
    lin0 = next((r for _, r in rows if r["method"] == "linear"), None)
    cached = {"method": "cached linear (extract + probe)", "encoder": f"{arch} pre-trained",
              "mIoU": base["mIoU"], "trainable_params": lin0["trainable_params"] if lin0 else 0,
              "trainable_pct": 0.0, "total_time_s": base.get("seconds"),
              "checkpoint_sha256": lin0["checkpoint_sha256"] if lin0 else ""}
    table = []
    for _, r in rows:
        table.append({"method": r["method"], "encoder": r["encoder"], "mIoU": r["mIoU"],
                      "vs cached linear": r["mIoU"] - base["mIoU"], "trainable_params": r["trainable_params"],
                      "trainable_pct": r["trainable_pct"], "train_peak_mb": r["peak_memory_mb"],
                      "process_peak_mb": r.get("process_peak_memory_mb"),
                      "step_s": r["step_time_s"], "total_s": r["total_time_s"]})
    table.append({"method": cached["method"], "encoder": cached["encoder"], "mIoU": base["mIoU"],
                  "vs cached linear": 0.0, "trainable_params": cached["trainable_params"],
                  "trainable_pct": 0.0,
                  "train_peak_mb": None, "process_peak_mb": None, "step_s": None,
                  "total_s": base.get("seconds")})
    write_table(table, out / "bench_tuning", f"Tuning ladder, {args.eval_split} mIoU", float_format=".3g")
    png = ladder_plot([r for _, r in rows] + [cached], out / "ladder.png")
    by = {(r["method"], w): r for w, r in rows}
    lin = by.get(("linear", "pre"))
    mezo = next((r for (m, w), r in by.items() if m.startswith("mezo")), None)
    lp_rows = [(m, r) for (m, w), r in by.items() if m.endswith(lp)]
    notes = []
    for m in ("decoder", "ssf", "lora", "last_k", "progressive", "full", "mezo-ssf"):
        for tag in (m, m + lp):
            if (tag, "pre") in by:
                d = by[(tag, "pre")]["mIoU"] - base["mIoU"]
                verdict = "beats" if d > 0 else "does NOT beat"
                notes.append(f"{tag} {verdict} the cached linear probe ({d:+.2f} mIoU)")
    if ("full", "pre") in by and ("full", "random") in by:
        d = by[("full", "pre")]["mIoU"] - by[("full", "random")]["mIoU"]
        notes.append(f"full from pre-trained minus full from random weights: {d:+.2f} mIoU")
    if mezo and lin:
        notes.append(peak_ratio_note(mezo, lin))
    if lp_rows:
        beat = [m for m, r in lp_rows if r["mIoU"] > base["mIoU"]]
        notes.append(f"LP-FT rows (head started from the cached probe, `tune.head_init`): {len(beat)} of "
                     f"{len(lp_rows)} above the cached linear probe")
    if missing:
        notes.append(f"not run (out of time in this run): {', '.join(missing)}")
    if lin:
        notes.append(f"online linear (live augmented features) minus cached linear: "
                     f"{lin['mIoU'] - base['mIoU']:+.2f} mIoU")
    (out / "bench_notes.json").write_text(json.dumps(notes, indent=1))
    for n in notes:
        _log(n, t0)
    if args.no_doc:
        return 0
    img = DOC.parent / "img" / "bench_tuning_ladder.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, img)
    splits = {s: len([p for p in (data / s).iterdir() if p.is_dir()]) for s in ("train", "val", "test")}
    reduced = args.quick or any(getattr(args, k) < ap.get_default(k)
                                for k in ("steps", "pretrain_steps", "max_points", "scenes"))
    lines = [f"Machine: {machine_line()}.", ""]
    if reduced:
        lines += [f"**Reduced run** ({args.pretrain_steps} pre-training steps, {args.steps} tuning steps per "
                  "method, tiny crops) on a shared, loaded 2-core machine: the numbers show that every rung "
                  "runs and what it costs, not how the methods rank at a realistic budget. Step times "
                  "depend on what else ran on the machine at the time and are not comparable between "
                  "methods in such a run.", ""]
    lines += [
        f"Data: {args.scenes} generated ScanNet-format rooms (seed {args.seed}): "
        + ", ".join(f"{n} {s}" for s, n in splits.items())
        + f". Encoder: `{args.pretrain_config}` ({arch}) pre-trained {args.pretrain_steps} steps by "
        f"`pointprobe pretrain` on the train split, and the same architecture with random weights. Every "
        f"method: {args.steps} steps, 2 scenes per step, live Pointcept-lin augmentation (crops of at most "
        f"{args.max_points} voxels), one process each; scored on every point of the "
        f"{args.eval_split} split. Baseline: `pointprobe extract` + `pointprobe probe` of the same "
        "pre-trained encoder (cached linear probe). `decoder`: the SparseUNet's own MinkUNet decoder "
        "(up-sampling blocks at the encoder's own widths: `decoder.channels` / `decoder.depths` null) "
        "trained over the frozen encoder."
        + (" `+lp-ft` rows: LP-FT (Kumar et al. 2022), the head starts as the cached linear probe's head "
           "(`tune.head_init=<probe .pt>`: its standardisation and weights), then the method trains as "
           "usual; `full` of the pre-trained encoder also runs without it (the comparison with random "
           "weights at one budget)." if args.lp_ft else ""),
        " Training peak MB: the peak RSS during the training steps (read before evaluation; absolute: the "
        "frozen weights and the data resident at its start count), what the methods' memory compares; "
        "process peak MB: the whole process's (data loading and full-resolution evaluation included).",
        "", *[f"{n}" for n in args.note], *([""] if args.note else []),
        "| method | encoder | mIoU | vs cached linear | trainable params | % of encoder | training peak MB | "
        "process peak MB | s / step | total s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in table:
        lines.append(f"| {r['method']} | {r['encoder']} | {r['mIoU']:.2f} | {r['vs cached linear']:+.2f} | "
                     f"{r['trainable_params']} | {f(r['trainable_pct'], '.2f')} | "
                     f"{f(r['train_peak_mb'], '.0f')} | {f(r['process_peak_mb'], '.0f')} | "
                     f"{f(r['step_s'], '.2f')} | {f(r['total_s'], '.0f')} |")
    lines += ["", *[f"- {n}" for n in notes], "",
              f"![the tuning ladder](img/{img.name})", "",
              f"- wall time: {(time.time() - t0) / 60:.1f} min in all, tuning {tuning_s / 60:.1f} min",
              f"- command: `python tools/bench_tuning.py {' '.join(command_args(argv))}`"]
    video = kept_video_rows(DOC)
    if video:
        lines += ["", video]
    update_section("bench_tuning", "\n".join(lines), DOC)
    return 0


def command_args(argv: list[str] | None) -> list[str]:
    """The command's arguments for the section, without the ``--note`` texts (they are in the section)."""
    args = list(sys.argv[1:] if argv is None else argv)
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def kept_video_rows(doc: Path) -> str:
    """The ``bench_tuning_video`` subsection already in ``doc`` (written by ``--modality video``), so a
    points run that rewrites section ``bench_tuning`` keeps it; "" when there is none."""
    text = Path(doc).read_text() if Path(doc).exists() else ""
    begin, end = "<!-- begin bench_tuning_video -->", "<!-- end bench_tuning_video -->"
    i, j = text.find(begin), text.find(end)
    return text[i:j + len(end)] if i >= 0 and j > i else ""


if __name__ == "__main__":
    # the video rows: their own script part (tools/bench_tuning_video.py), its own arguments
    if "--modality=video" in " ".join(sys.argv[1:]).replace("--modality video", "--modality=video"):
        from tools.bench_tuning_video import main as video_main

        sys.exit(video_main())
    sys.exit(main())
