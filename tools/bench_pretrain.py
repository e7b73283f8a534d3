"""Benchmark Sonata-style pre-training by what it is for: linear-probe mIoU on held-out scenes.

Runs the repository's own pipeline on generated ScanNet-format scenes and nothing else:

    generate_dataset -> preprocess_dataset -> run_pretrain (configs/point/pretrain_bench_cpu.yaml,
    an encoder kept every ``--every`` steps) -> extract (per kept encoder, the same architecture with
    random weights, the raw input features) -> run_probe (configs/point/probe.yaml: multi-head linear
    probe trained on the train split, head chosen on held-out training scenes, scored on ``--eval-split``)

These are the functions behind ``pointprobe synth / preprocess / pretrain / extract / probe``. The
baselines are (a) the same SparseUNet with random weights (step 0 of the curve) and (b) the raw input
features (xyz, rgb, normal). Target of the pre-training issue: pre-trained >= random + 10 mIoU.

Writes ``OUT/results.{md,json}``, ``OUT/miou_vs_steps.png`` and the section ``bench_pretrain`` of
``docs/benchmarks.md`` (with the picture copied to ``docs/img/``). Every stage is resumable: run the
same command again after an interruption and finished stages are skipped.

    python tools/bench_pretrain.py [--out runs/bench-pretrain] [--scenes 40] [--every 100]
    python tools/bench_pretrain.py --quick      # 8 scenes, 20 steps: a smoke run of the whole chain
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import DOC, machine_line, update_section  # noqa: E402
from common.config import REPO_ROOT, config_hash, load_config, save_config  # noqa: E402
from common.report import line_plot_png, write_table  # noqa: E402


def _log(msg: str, t0: float) -> None:
    print(f"[bench_pretrain {time.time() - t0:7.1f}s] {msg}", flush=True)


def prepare_data(out: Path, scenes: int, seed: int, t0: float) -> Path:
    """Generated raw ScanNet scenes (60/20/20 % train/val/test, test keeps labels), preprocessed."""
    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.synth import generate_dataset

    raw, data = out / "raw", out / "scannet"
    if not (raw / "scannetv2_test.txt").exists():
        _log(f"generating {scenes} scenes (seed {seed}) -> {raw}", t0)
        generate_dataset(raw, scenes, seed, frames_per_scene=0, workers=2)
    _log(f"preprocessing -> {data}", t0)
    failed = [r for r in preprocess_dataset(raw, data, splits=("train", "val", "test"), workers=2)
              if r.status == "failed"]
    if failed:
        raise SystemExit(f"bench_pretrain: preprocessing failed: {failed[0].name}: {failed[0].message}")
    return data


def pretrain(out: Path, data: Path, config: str, every: int, overrides: list[str], t0: float) -> dict:
    """Run (or resume, or skip when finished) the pre-training; returns steps, wall time, encoders."""
    from pointprobe.pretrain.train import PretrainConfig, run_pretrain

    cfg = load_config(PretrainConfig, config, [f"data.root={data}", f"train.save_every={every}",
                                               "train.keep_encoders=true", *overrides])
    run = out / "pretrain"
    timing = run / "bench_timing.json"
    done = json.loads(timing.read_text()) if timing.exists() else {"seconds": 0.0}
    if done.get("config_hash", config_hash(cfg)) != config_hash(cfg):
        raise SystemExit(f"bench_pretrain: {run} holds a pre-training run of another configuration; "
                         "give a new --out")
    if done.get("step") != cfg.train.steps:
        _log(f"pre-training {cfg.train.steps} steps ({config}) -> {run}", t0)
        start = time.time()
        run_pretrain(cfg, run)
        done = {"seconds": done["seconds"] + time.time() - start, "step": cfg.train.steps,
                "config_hash": config_hash(cfg)}
        timing.write_text(json.dumps(done))
    encoders = sorted((run / "encoders").glob("step_*.pth"))
    return {"cfg": cfg, "seconds": done["seconds"], "encoders": encoders}


def encoder_specs(cfg, encoders: list[Path]) -> dict:
    """key -> (steps, PointEncoderConfig): random init (step 0), every kept encoder, raw features."""
    from pointprobe.extract import PointEncoderConfig

    arch = cfg.model.backbone
    random = PointEncoderConfig(name=arch, seed=cfg.train.seed, config=dict(cfg.model.backbone_config),
                              label=f"{arch} random init")
    specs = {"random": (0, random)}
    for path in encoders:
        step = int(path.stem.split("_")[1])
        specs[f"step{step}"] = (step, PointEncoderConfig(name=arch, checkpoint=str(path),
                                                       label=f"{arch} pre-trained {step} steps"))
    specs["raw"] = (None, PointEncoderConfig(name="raw", label="raw input features"))
    return specs


def probe_encoder(out: Path, data: Path, key: str, spec, probe_config: str, probe_overrides: list[str],
                  eval_split: str, keep_features: bool, t0: float) -> dict:
    """Extract train + eval features for one encoder and probe them; resumable per encoder."""
    from pointprobe.extract import ExtractConfig, PointDataConfig, extract
    from pointprobe.probe import SegProbeConfig, run_probe

    feats = out / "features" / key
    pcfg = load_config(SegProbeConfig, probe_config,
                       [f"features=[{feats}]", f"out={out / 'probe' / key}", f"eval_split={eval_split}",
                        *probe_overrides])
    res_path = out / "probe" / key / "results.json"
    if res_path.exists():  # finished earlier: reuse it when it was made with these probe settings
        done = json.loads(res_path.read_text())
        if done["meta"].get("config_hash") == config_hash(pcfg):
            timing = out / "probe" / key / "bench_seconds.json"
            return {**done["rows"][0], "seconds": json.loads(timing.read_text()) if timing.exists() else None}
        _log(f"{res_path} was made with other probe settings: probing again", t0)
    start = time.time()
    _log(f"extracting {spec.label}", t0)
    ecfg = ExtractConfig(data=PointDataConfig(root=str(data), splits=["train", eval_split]), encoder=spec,
                         out=str(feats))
    failures = extract(ecfg)
    bad = {k: v for split in failures.values() for k, v in split.items()}
    if bad:
        raise SystemExit(f"bench_pretrain: feature extraction failed: {next(iter(bad.items()))}")
    _log(f"probing {spec.label}", t0)
    row = run_probe(pcfg)["rows"][0]
    seconds = time.time() - start
    (out / "probe" / key / "bench_seconds.json").write_text(json.dumps(seconds))
    row = {**row, "seconds": seconds}
    if not keep_features and key not in ("random", "raw"):
        shutil.rmtree(feats, ignore_errors=True)  # ~50 MB per scene at 480 channels; results are kept
    return row


def report(out: Path, rows: list[dict], info: dict, doc: Path | None) -> dict:
    """Table + plot in OUT; the benchmarks section when ``doc`` is given."""
    curve = [r for r in rows if r["steps"] is not None]
    raw = next(r for r in rows if r["key"] == "raw")
    rand = next(r for r in rows if r["key"] == "random")
    final = curve[-1]
    table = [{"encoder": r["encoder"], "pre-training steps": r["steps"], "dim": r["dim"], "mIoU": r["mIoU"],
              "mAcc": r["mAcc"], "allAcc": r["allAcc"], "vs random": r["mIoU"] - rand["mIoU"]} for r in rows]
    summary = {"final_mIoU": final["mIoU"], "random_mIoU": rand["mIoU"], "raw_mIoU": raw["mIoU"],
               "gain_over_random": final["mIoU"] - rand["mIoU"], "gain_over_raw": final["mIoU"] - raw["mIoU"],
               "target_gain_over_random": 10.0, "target_met": final["mIoU"] - rand["mIoU"] >= 10.0}
    write_table(table, out / "results", f"Linear probe mIoU on the {info['eval_split']} split",
                meta={**info, **summary}, float_format=".2f")
    xs = [r["steps"] for r in curve]
    png = line_plot_png(xs, {"pre-trained (step 0 = random init)": [r["mIoU"] for r in curve],
                             "raw input features": [raw["mIoU"]] * len(xs)},
                        out / "miou_vs_steps.png", title="Linear probe mIoU vs pre-training steps",
                        xlabel="pre-training steps", ylabel=f"{info['eval_split']} mIoU (%)")
    if doc is None:
        return summary
    img = doc.parent / "img" / "bench_pretrain_miou_vs_steps.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, img)
    lines = [
        f"Machine: {machine_line()}.",
        "",
        f"Data: {info['scenes']} generated ScanNet-format rooms (`pointprobe synth`, seed {info['seed']}): "
        f"{info['split_sizes']}. Pre-training `{info['config']}` on the train split: "
        f"{info['steps']} steps in {info['pretrain_seconds'] / 60:.1f} min. Probe `{info['probe_config']}` "
        f"({' '.join(info['probe_overrides']) or 'as written'}): trained on the train split, head chosen on "
        f"held-out training scenes, scored on every point of the {info['eval_split']} split. Baselines: "
        "the same SparseUNet with random weights (step 0) and the raw input features (xyz, rgb, normal).",
        "",
        "| encoder | steps | dim | mIoU | mAcc | allAcc | vs random |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        steps = "" if r["pre-training steps"] is None else r["pre-training steps"]
        lines.append(f"| {r['encoder']} | {steps} | {r['dim']} | {r['mIoU']:.2f} | {r['mAcc']:.2f} | "
                     f"{r['allAcc']:.2f} | {r['vs random']:+.2f} |")
    verdict = "met" if summary["target_met"] else "NOT met"
    lines += [
        "",
        f"Pre-trained ({final['steps']} steps) minus random init: "
        f"**{summary['gain_over_random']:+.2f} mIoU** (target +10: {verdict}); minus raw features: "
        f"{summary['gain_over_raw']:+.2f} mIoU.",
        "",
        f"![mIoU vs pre-training steps](img/{img.name})",
        "",
        f"- wall time: pre-training {info['pretrain_seconds'] / 60:.1f} min, feature extraction (train + "
        f"{info['eval_split']} scenes) and probing {info['probe_seconds'] / 60:.1f} min for {len(rows)} "
        "encoders",
        f"- command: `python tools/bench_pretrain.py {' '.join(info['argv'])}`",
    ]
    update_section("bench_pretrain", "\n".join(lines), doc)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-pretrain")
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1, help="data seed (the config was tuned on seed 0)")
    ap.add_argument("--config", default="configs/point/pretrain_bench_cpu.yaml")
    ap.add_argument("--every", type=int, default=100, help="probe an encoder kept every N steps")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="pre-training overrides")
    ap.add_argument("--probe-config", default="configs/point/probe.yaml")
    ap.add_argument("--probe-set", nargs="*", default=["max_train_points=500000"], metavar="KEY=VALUE")
    ap.add_argument("--eval-split", default="test", choices=["val", "test"])
    ap.add_argument("--keep-features", action="store_true", help="keep the features of intermediate steps")
    ap.add_argument("--quick", action="store_true", help="8 scenes, 20 steps; does not touch docs/")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.scenes, args.every = 8, 10
        args.set = ["train.steps=20", "views.max_points=2000", *args.set]
        args.no_doc = True
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args.scenes, args.seed, t0)
    pre = pretrain(out, data, args.config, args.every, args.set, t0)
    cfg = pre["cfg"]
    save_config(cfg, out / "pretrain_config.yaml")
    rows = []
    for key, (steps, spec) in encoder_specs(cfg, pre["encoders"]).items():
        row = probe_encoder(out, data, key, spec, args.probe_config, args.probe_set, args.eval_split,
                            args.keep_features, t0)
        rows.append({"key": key, "steps": steps, **row})
        _log(f"{spec.label}: {args.eval_split} mIoU {row['mIoU']:.2f}", t0)
    splits = {s: len([p for p in (data / s).iterdir() if p.is_dir()]) for s in ("train", "val", "test")}
    info = {"scenes": args.scenes, "seed": args.seed, "config": args.config, "steps": cfg.train.steps,
            "pretrain_seconds": pre["seconds"], "probe_config": args.probe_config,
            "probe_overrides": args.probe_set, "eval_split": args.eval_split,
            "split_sizes": ", ".join(f"{n} {s}" for s, n in splits.items()),
            "wall_seconds": time.time() - t0,
            "probe_seconds": sum(r["seconds"] or 0.0 for r in rows),
            "argv": sys.argv[1:] if argv is None else argv,
            "repo": str(REPO_ROOT)}
    summary = report(out, rows, info, None if args.no_doc else DOC)
    _log(f"random {summary['random_mIoU']:.2f}, raw {summary['raw_mIoU']:.2f}, pre-trained "
         f"{summary['final_mIoU']:.2f} mIoU: {summary['gain_over_random']:+.2f} over random "
         f"(target +10 {'met' if summary['target_met'] else 'NOT met'}); results in {out}", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
