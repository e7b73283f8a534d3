"""Benchmark extended pre-training under a domain shift (ExPLoRA) and keeping old features usable (BFP).

Domains: A = the generator's default ``rgbd`` rooms, B = its ``lidar`` domain (other room types, no
colour, range noise and density falling off with distance). The chain, with the repository's own
functions (``pointprobe synth / preprocess / pretrain / extract / probe`` and ``pointprobe.recover``):

1. pre-train a SparseUNet on A from random init (``configs/point/pretrain_bench_cpu.yaml``) -> enc_A;
2. from enc_A, continue on B's unlabelled training scenes for the same number of steps:
   ``explora`` (``configs/point/pretrain_explora.yaml``: LoRA rank 8 on the residual convs, last block
   and norms train), ``full`` (every parameter trains), ``full + BFP`` and ``explora + BFP``
   (``loss.bfp_alpha``);
3. linear probe (``configs/point/probe.yaml``) of every encoder on B (gain) and on A (retention:
   directly, and the OLD probe of enc_A through a least-squares map from new to old features,
   ``pointprobe.recover``, on A's test scenes).

Writes ``OUT/results.{md,json}`` and the section ``bench_explora`` of ``docs/benchmarks.md``. Every stage
is resumable (run the same command again). The B gain and the A change come with a paired 95 % bootstrap
interval over the test scenes (``paired_gain``): the test scenes, not the steps, decide whether a
difference is more than noise, so the default split keeps 40 % of the scenes for the test.

Default size (20 scenes per domain: 10 train / 2 val / 8 test; 120 steps on A, 40 per variant on B,
crops of 6000 points; 10000 labelled points per training scene), for the <= 30 minutes on 2 CPU cores
of issue 16. Measured on 2 idle cores (2026-12-01): 32.9 minutes (pre-training on A at 4.5 s/step, 9.0
min; the four variants 3.4-3.7 min each; 10 extractions + probes 9.5 min). The machine's speed varied by
~30 % within the hour (the same steps ran at 3.5 s/step in the run before). The earlier default, 200 +
60 steps, took 45.8 minutes on shared cores (docs/benchmarks.md keeps its numbers).

    python tools/bench_explora.py [--out runs/bench-explora] [--scenes 20] [--steps-a 120] [--steps-b 40]
    python tools/bench_explora.py --quick      # 6 scenes per domain, a few steps: a smoke run, no docs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import DOC, machine_line, update_section  # noqa: E402
from common.config import REPO_ROOT, config_hash, load_config, save_config  # noqa: E402
from common.report import write_table  # noqa: E402


def _log(msg: str, t0: float) -> None:
    print(f"[bench_explora {time.time() - t0:7.1f}s] {msg}", flush=True)


def prepare_data(out: Path, scenes: int, seed: int, domain: str, t0: float,
                 split: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Path:
    """``scenes`` generated rooms of ``domain`` (``split``: train/val/test fractions), preprocessed. A folder
    written with another split (or count, seed, domain) is refused: give a new --out."""
    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.synth import generate_dataset

    raw, data = out / "raw", out / "scannet"
    want = {"scenes": scenes, "seed": seed, "domain": domain, "split": list(split)}
    record = out / "bench_data.json"
    if (raw / "scannetv2_test.txt").exists():
        have = json.loads(record.read_text()) if record.exists() else None
        if have != want:
            raise SystemExit(f"bench_explora: {raw} holds other data ({have}, not {want}); give a new --out")
    else:
        _log(f"generating {scenes} {domain} scenes (seed {seed}, split {split}) -> {raw}", t0)
        generate_dataset(raw, scenes, seed, frames_per_scene=0, workers=2, domain=domain, progress=False,
                         split_fractions=split)
        record.write_text(json.dumps(want))
    if not (data / "test").is_dir():
        _log(f"preprocessing -> {data}", t0)
        failed = [r for r in preprocess_dataset(raw, data, splits=("train", "val", "test"), workers=2)
                  if r.status == "failed"]
        if failed:
            raise SystemExit(f"bench_explora: preprocessing failed: {failed[0].name}: {failed[0].message}")
    return data


def pretrain(run: Path, config: str, overrides: list[str], t0: float) -> dict:
    """Run (or resume, or skip when finished) one pre-training; returns seconds, trainable counts."""
    from pointprobe.pretrain.train import PretrainConfig, run_pretrain

    cfg = load_config(PretrainConfig, config, ["train.save_every=0", *overrides])
    timing = run / "bench_timing.json"
    done = json.loads(timing.read_text()) if timing.exists() else {"seconds": 0.0}
    if done.get("config_hash", config_hash(cfg)) != config_hash(cfg):
        raise SystemExit(f"bench_explora: {run} holds a run of another configuration; give a new --out")
    if done.get("step") != cfg.train.steps:
        _log(f"pre-training {cfg.train.steps} steps ({config} {' '.join(overrides[1:])}) -> {run}", t0)
        start = time.time()
        res = run_pretrain(cfg, run)
        done = {"seconds": done["seconds"] + time.time() - start, "step": cfg.train.steps,
                "config_hash": config_hash(cfg), "trainable": res["trainable"]}
        timing.write_text(json.dumps(done))
    save_config(cfg, run / "bench_config.yaml")
    return {**done, "encoder": run / "encoder.pth"}


def probe(out: Path, data: Path, key: str, encoder: Path, args, t0: float) -> dict:
    """Extract (train: a labelled subsample of ``--train-points`` per scene, the same points for every
    encoder; test: every point) and linear-probe (train split -> test split) one encoder on one domain;
    resumable; the features are kept (recoverability reads them)."""
    from pointprobe.extract import ExtractConfig, PointDataConfig, PointEncoderConfig, extract
    from pointprobe.probe import SegProbeConfig, run_probe

    feats, pdir = out / "features" / key, out / "probe" / key
    pcfg = load_config(SegProbeConfig, args.probe_config,
                       [f"features=[{feats}]", f"out={pdir}", "eval_split=test", *args.probe_set])
    res_path = pdir / "results.json"
    done = res_path.exists() and json.loads(res_path.read_text())["meta"].get("config_hash") == \
        config_hash(pcfg)
    if not done:
        _log(f"extracting + probing {key} on {out.name}", t0)
        spec = PointEncoderConfig(name="sparseunet", checkpoint=str(encoder), label=key)
        ecfg = ExtractConfig(data=PointDataConfig(root=str(data), splits=["train", "test"]), encoder=spec,
                             out=str(feats), storage={"train": "subsample"},
                             points_per_scene=args.train_points)
        failures = extract(ecfg, progress=False)
        bad = {k: v for split in failures.values() for k, v in split.items()}
        if bad:
            raise SystemExit(f"bench_explora: feature extraction failed: {next(iter(bad.items()))}")
        run_probe(pcfg)
    row = json.loads(res_path.read_text())["rows"][0]
    (probe_file,) = pdir.glob("probe_*.pt")
    from common.cache import FeatureCache

    with np.load(pdir / "scene_confusion.npz") as z:
        (conf,) = [z[k] for k in z.files]  # one encoder, one seed: (test scenes, C, C)
    scenes = FeatureCache(feats / "test").items()  # the order of the matrices
    return {**row, "probe": probe_file, "features": feats, "confusion": conf, "scenes": scenes}


def paired_gain(new: dict, base: dict, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """mIoU(new) - mIoU(base) on the same test scenes (summed per-scene confusion matrices of the two
    probes) and its 95 % bootstrap interval over those scenes, paired: each resample draws the same
    scenes for both encoders, so the scene-to-scene spread that both share cancels."""
    from common.metrics import segmentation_metrics
    from common.stats import bootstrap_sum_ci

    if new["scenes"] != base["scenes"]:
        raise SystemExit("bench_explora: two probes were scored on different test scenes")
    arr = np.stack([new["confusion"], base["confusion"]], 1)  # (scenes, 2, C, C)

    def diff(summed: np.ndarray) -> list[float]:
        return [100 * (segmentation_metrics(summed[0])["mIoU"] - segmentation_metrics(summed[1])["mIoU"])]

    lo, hi = bootstrap_sum_ci(arr, diff, n_boot=n_boot, seed=seed)
    return diff(arr.sum(0))[0], float(lo[0]), float(hi[0])


def _ci(g: tuple[float, float, float]) -> str:
    return f"{g[0]:+.2f} [{g[1]:+.2f}, {g[2]:+.2f}]"


def report(out: Path, rows: list[dict], info: dict, doc: Path | None) -> None:
    table = [{"encoder": r["name"], "trainable params": r["trainable"], "pre-training min": r["minutes"],
              "B mIoU": r["B"], "B gain [95% CI]": _ci(r["B_gain"]), "A mIoU (own probe)": r["A"],
              "A change [95% CI]": _ci(r["A_change"]), "A through map": r["A_rec"],
              "A recoverability": r["ratio"], "R2": r["r2"]} for r in rows]
    write_table(table, out / "results", "ExPLoRA / BFP on the lidar domain (B) from an rgbd encoder (A)",
                meta=info, float_format=".2f")
    if doc is None:
        return
    n_a, n_b = rows[0]["test_scenes"]
    split = "/".join(f"{100 * f:.0f}" for f in info["split"])
    lines = [
        f"Machine: {machine_line()}.",
        "",
        f"Data: domain A = {info['scenes']} `rgbd` rooms (`pointprobe synth`, seed {info['seed_a']}), "
        f"domain B = {info['scenes']} `lidar` rooms (`pointprobe synth domain=lidar`, seed "
        f"{info['seed_b']}: "
        "offices / conference rooms / kitchens, no colour, range noise and density falling off with "
        f"distance); {split} % train/val/test ({n_a} test scenes in A, {n_b} in B). enc_A: "
        f"`configs/point/pretrain_bench_cpu.yaml`, "
        f"{info['steps_a']} steps on A's train split ({' '.join(info['set']) or 'as written'}). From enc_A, "
        f"{info['steps_b']} steps on B's train split (unlabelled): ExPLoRA "
        "(`configs/point/pretrain_explora.yaml`: LoRA rank 8 on the residual convs, last block and norms), "
        f"full continued pre-training (every parameter), with and without BFP (alpha {info['alpha']}; "
        f"variants run: {', '.join(info['variants'])}). "
        f"Probe `{info['probe_config']}` ({' '.join(info['probe_set']) or 'as written'}): trained on "
        f"{info['train_points']} labelled points per training scene of a domain, scored on every point of "
        "its test split. *B gain* / *A change*: mIoU minus enc_A's on the same test scenes, with a paired "
        "95 % bootstrap interval over those scenes (an interval holding 0: no difference this data can "
        "show). *A through map*: enc_A's own A probe applied to A f_new with A "
        "fitted by least squares on A's training scenes (`pointprobe.recover`); *A recoverability* = that "
        "/ enc_A's own A score; R2: variance of f_old explained by the map on A's test scenes.",
        "",
        "| encoder | trainable encoder params | pre-training min | B mIoU | B gain [95% CI] | "
        "A mIoU (own probe) | A change [95% CI] | A through map | A recoverability | R2 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(f"| {r['encoder']} | {r['trainable params']} | {r['pre-training min']:.1f} | "
                     f"{r['B mIoU']:.2f} | {r['B gain [95% CI]']} | {r['A mIoU (own probe)']:.2f} | "
                     f"{r['A change [95% CI]']} | {r['A through map']:.2f} | {r['A recoverability']:.3f} | "
                     f"{r['R2']:.3f} |")
    argv = [a for a in info["argv"] if a not in info.get("notes", []) and a != "--note"]
    lines += ["", *[f"{n}\n" for n in info.get("notes", [])],
              f"- wall time: {info['wall_seconds'] / 60:.1f} min in all ({info['invocations']} "
              "invocation(s) of the resumable tool)",
              f"- command: `python tools/bench_explora.py {' '.join(argv)}`"
              + (" (with the --note lines above)" if info.get("notes") else "")]
    update_section("bench_explora", "\n".join(lines), doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-explora")
    ap.add_argument("--scenes", type=int, default=20, help="scenes per domain")
    ap.add_argument("--seed-a", type=int, default=1)
    ap.add_argument("--seed-b", type=int, default=2)
    ap.add_argument("--steps-a", type=int, default=120)
    ap.add_argument("--steps-b", type=int, default=40)
    ap.add_argument("--alpha", type=float, default=1.0, help="BFP weight loss.bfp_alpha")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="pre-training overrides")
    ap.add_argument("--probe-config", default="configs/point/probe.yaml")
    ap.add_argument("--probe-set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--train-points", type=int, default=10000, help="labelled points kept per training scene")
    ap.add_argument("--variants", nargs="*", default=["explora", "explora_bfp", "full", "full_bfp"],
                    help="continued pre-trainings on B (default: all four)")
    ap.add_argument("--split", nargs=3, type=float, default=[0.5, 0.1, 0.4],
                    metavar=("TRAIN", "VAL", "TEST"),
                    help="scene fractions of each domain (default: %(default)s; the test scenes decide the "
                    "noise of every probe difference; val is not used)")
    ap.add_argument("--quick", action="store_true", help="6 scenes, 6 + 4 steps; does not touch docs/")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--note", nargs="*", default=[], help="lines added under the table")
    args = ap.parse_args(argv)
    if args.quick:
        args.scenes, args.steps_a, args.steps_b, args.train_points = 6, 6, 4, 2000
        args.set = ["views.max_points=2000", *args.set]
        args.no_doc = True
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = tuple(args.split)
    data_a = prepare_data(out / "A", args.scenes, args.seed_a, "rgbd", t0, split)
    data_b = prepare_data(out / "B", args.scenes, args.seed_b, "lidar", t0, split)
    base_cfg = "configs/point/pretrain_bench_cpu.yaml"
    enc_a = pretrain(out / "pretrain_A", base_cfg,
                     [f"data.root={data_a}", f"train.steps={args.steps_a}", *args.set], t0)
    start_b = [f"data.root={data_b}", f"train.steps={args.steps_b}", f"init.checkpoint={enc_a['encoder']}",
               *args.set]
    bfp = [f"loss.bfp_alpha={args.alpha}"]
    variants = [
        ("explora", "configs/point/pretrain_explora.yaml", []),
        ("explora_bfp", "configs/point/pretrain_explora.yaml", bfp),
        ("full", base_cfg, []),
        ("full_bfp", base_cfg, bfp),
    ]
    runs = {"enc_A": enc_a}
    for key, config, extra in [v for v in variants if v[0] in args.variants]:
        runs[key] = pretrain(out / f"pretrain_{key}", config, [*start_b, *extra], t0)
    from pointprobe.recover import recoverability

    rows = []
    old = base_a = base_b = None
    for key, run in runs.items():
        b = probe(out / "B", data_b, key, run["encoder"], args, t0)
        a = probe(out / "A", data_a, key, run["encoder"], args, t0)
        if old is None:
            old = a
        rec = recoverability(a["features"], old["features"], old["probe"], "train", "test")
        tr = run.get("trainable") or {}
        name = {"enc_A": "enc_A (pre-trained on A)", "explora": "ExPLoRA on B",
                "explora_bfp": "ExPLoRA + BFP on B", "full": "full continued on B",
                "full_bfp": "full continued + BFP on B"}[key]
        if key == "enc_A":
            base_a, base_b = a, b
        b_gain, a_change = paired_gain(b, base_b), paired_gain(a, base_a)
        rows.append({"key": key, "name": name, "trainable": tr.get("trainable_backbone"),
                     "minutes": run["seconds"] / 60, "B": b["mIoU"], "B_gain": b_gain, "A": a["mIoU"],
                     "A_change": a_change, "A_rec": rec["mIoU"], "ratio": rec["ratio"], "r2": rec["r2"],
                     "test_scenes": [len(base_a["scenes"]), len(base_b["scenes"])]})
        _log(f"{name}: B {b['mIoU']:.2f}, A {a['mIoU']:.2f}, A through map {rec['mIoU']:.2f} "
             f"(ratio {rec['ratio']:.3f}, R2 {rec['r2']:.3f})", t0)
    info = {"scenes": args.scenes, "seed_a": args.seed_a, "seed_b": args.seed_b, "steps_a": args.steps_a,
            "steps_b": args.steps_b, "alpha": args.alpha, "set": args.set, "probe_config": args.probe_config,
            "probe_set": args.probe_set, "train_points": args.train_points, "variants": args.variants,
            "split": list(split), "wall_seconds": time.time() - t0,
            "notes": args.note,
            "argv": sys.argv[1:] if argv is None else argv, "repo": str(REPO_ROOT)}
    wall = out / "bench_wall.json"  # wall time summed over the invocations (a rerun reuses finished stages)
    prev = json.loads(wall.read_text()) if wall.exists() else {"seconds": 0.0, "invocations": 0}
    info["wall_seconds"] += prev["seconds"]
    info["invocations"] = prev["invocations"] + 1
    wall.write_text(json.dumps({"seconds": info["wall_seconds"], "invocations": info["invocations"]}))
    report(out, rows, info, None if args.no_doc else DOC)
    _log(f"results in {out}/results.md", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
