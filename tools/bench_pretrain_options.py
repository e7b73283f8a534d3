"""Ablation of the seed-paper pre-training options (issue 16 part 2) on the CPU bench configuration.

Every variant is ``configs/point/pretrain_bench_cpu.yaml`` plus the overrides in :data:`VARIANTS`, run on
the same generated rooms with the same pre-training seeds and the same number of steps; per
(variant, seed), one process per stage (peak RSS of each its own ``ru_maxrss`` through ``os.wait4``):

    pointprobe pretrain -> pointprobe extract (train: ``--train-points`` labelled points per scene)
    -> pointprobe probe (linear, configs/point/probe.yaml, streamed evaluation) on val and on test

The probe's head (lr x wd) is chosen on held-out training scenes; the options that "help" are chosen on
the val split (mean val mIoU above the baseline's), their combination is run, and the decision is made on
the held-out test split: the combination (or the single helping option) becomes the CPU bench default
only when its mean test mIoU beats the baseline's by more than the seed spread (sample sd over the
pre-training seeds). The tool only prints that decision; it changes no config.

Writes ``OUT/results.json`` (resumable: a (variant, seed) already there is skipped), ``OUT/results.md``
and the section ``bench_pretrain_options`` of ``docs/benchmarks.md``.

Cost: per run, pre-training (steps x s/step + about a minute of start-up) and the evaluation stage
(every scene encoded once). Default size (20 rooms, 150 steps, seeds 0 and 1: 10 runs, 12 with a
combination) measured on 2026-12-01: 43.0 min on 2 nearly idle cores, about 3.5-4.5 minutes a run
(1.1-1.6 s/step). The same VM ran about 3x slower on other days; the reduced run (10 rooms, 25 steps,
views.max_points=3000) took 101 min at load 6-14.

    python tools/bench_pretrain_options.py [--out runs/bench-pretrain-options] [--scenes 20] [--steps 150]
        [--seeds 0 1] [--set views.max_points=3000] [--note "..."]
    python tools/bench_pretrain_options.py --report-only --out OUT     # redraw the section from OUT
    python tools/bench_pretrain_options.py --quick    # 6 scenes, 3 steps, one seed: a smoke run, no docs
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import DOC, machine_line, update_section  # noqa: E402
from common.config import REPO_ROOT  # noqa: E402

SECTION = "bench_pretrain_options"
BASE_CONFIG = "configs/point/pretrain_bench_cpu.yaml"
# name -> config overrides of the single options (baseline: everything off, as the config is written)
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "residual_decay": ["model.residual_decay=0.5"],
    "ibot": ["loss.ibot_weight=1.0", "loss.ibot_shared_head=false"],
    "disjoint_masks": ["loss.disjoint_masks=2"],
    "mugs": ["loss.mugs_weight=1.0"],
}
COMBINATION = "combination"
DEFAULTS = {"scenes": 20, "steps": 150, "seeds": [0, 1], "train_points": 4000}


def _log(msg: str, t0: float) -> None:
    print(f"[bench_pretrain_options {time.time() - t0:7.1f}s] {msg}", flush=True)


def check_overrides(overrides: list[str], config: str = BASE_CONFIG) -> str | None:
    """None when the pre-training schema and its checks accept ``overrides``, else the reason (one line)."""
    from common.config import load_config
    from common.errors import ProbeSuiteError
    from pointprobe.pretrain.train import PretrainConfig, validate_config

    try:
        validate_config(load_config(PretrainConfig, str(REPO_ROOT / config), overrides))
    except ProbeSuiteError as e:
        return str(e).splitlines()[0]
    return None


def combination_overrides(names: list[str]) -> list[str]:
    """The union of the named single options' overrides (in table order)."""
    return [o for n in VARIANTS if n in names for o in VARIANTS[n]]


def run_key(variant: str, seed: int) -> str:
    return f"{variant}/seed{seed}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def stage(cmd: list[str], log: Path) -> dict:
    """One stage in a child process: wall seconds and that child's own peak RSS (``os.wait4``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PROBESUITE_PROGRESS_SECONDS": "60"}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"bench_pretrain_options: {' '.join(cmd[2:5])}... exit {code} (log {log}):\n{tail}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": usage.ru_maxrss / 1024}  # KiB on Linux


def prepare_data(out: Path, scenes: int, seed: int, t0: float) -> Path:
    """``scenes`` generated rooms (60/20/20 % train/val/test, all labelled), preprocessed; reused."""
    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.synth import generate_dataset

    raw, data = out / "raw", out / "scannet"
    if not (raw / "scannetv2_test.txt").exists():
        _log(f"generating {scenes} scenes (seed {seed}) -> {raw}", t0)
        generate_dataset(raw, scenes, seed, frames_per_scene=0, workers=1, progress=False)
    if not (data / "test").is_dir():
        _log(f"preprocessing -> {data}", t0)
        failed = [r for r in preprocess_dataset(raw, data, splits=("train", "val", "test"), workers=1)
                  if r.status == "failed"]
        if failed:
            raise SystemExit(f"bench_pretrain_options: preprocessing failed: {failed[0].name}: "
                             f"{failed[0].message}")
    return data


def _step_times(log_jsonl: Path) -> tuple[float, float]:
    """Median wall and CPU seconds per step from the pre-training's ``log.jsonl``."""
    rows = [json.loads(line) for line in log_jsonl.read_text().splitlines() if line.strip()]
    wall = [r["step_time"] for r in rows if "step_time" in r]
    cpu = [r["cpu_time"] for r in rows if "cpu_time" in r]
    nan = float("nan")
    return (statistics.median(wall) if wall else nan, statistics.median(cpu) if cpu else nan)


def run_variant(work: Path, data: Path, variant: str, overrides: list[str], seed: int, args,
                t0: float) -> dict:
    """pretrain -> extract -> probe (val, test) of one (variant, seed), each stage its own process."""
    run = work / "runs" / variant / f"seed{seed}"
    shutil.rmtree(run, ignore_errors=True)  # a run not in results.json is redone whole (clean timings)
    run.mkdir(parents=True)
    py = [sys.executable, "-m", "pointprobe.cli"]
    what = " ".join(overrides) or "all off"
    _log(f"{run_key(variant, seed)}: pre-training {args.steps} steps ({what})", t0)
    pre = stage(py + ["pretrain", "--config", BASE_CONFIG, f"data.root={data}", f"out={run / 'pretrain'}",
                      f"train.steps={args.steps}", f"train.seed={seed}", "train.save_every=0",
                      *args.set, *overrides], run / "pretrain.log")
    enc = run / "pretrain" / "encoder.pth"
    step_s, cpu_s = _step_times(run / "pretrain" / "log.jsonl")
    trainable = json.loads((run / "pretrain" / "trainable.json").read_text())
    feats = run / "features"
    _log(f"{run_key(variant, seed)}: extracting + probing (val, test)", t0)
    spec = {"data": str(data), "encoder": str(enc), "label": f"{variant} seed {seed}", "features": str(feats),
            "train_points": args.train_points, "probe_config": args.probe_config,
            "probe_set": args.probe_set, "out": str(run)}
    (run / "eval.json").write_text(json.dumps(spec))
    ev = stage([sys.executable, "-m", "tools.bench_pretrain_options", "--stage-eval", str(run / "eval.json")],
               run / "eval.log")
    scores = json.loads((run / "scores.json").read_text())
    shutil.rmtree(feats, ignore_errors=True)
    return {"variant": variant, "seed": seed, "overrides": overrides, "steps": args.steps,
            "val_mIoU": scores["val"], "test_mIoU": scores["test"],
            "s_per_step": step_s, "cpu_s_per_step": cpu_s, "pretrain_s": pre["seconds"],
            "eval_s": ev["seconds"], "peak_rss_mib": pre["peak_rss_mib"],
            "trainable_backbone": trainable.get("trainable_backbone"),
            "trainable_heads": trainable.get("trainable_heads"),
            "encoder_sha256": sha256_file(enc),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def stage_eval(spec_file: str) -> int:
    """The evaluation stage in its own process: extract the training subsample, then the linear probe
    scored on val and on test (streamed: val / test features are not written); writes ``scores.json``."""
    from common.config import load_config
    from pointprobe.extract import ExtractConfig, PointDataConfig, PointEncoderConfig, extract
    from pointprobe.probe import SegProbeConfig, run_probe

    spec = json.loads(Path(spec_file).read_text())
    ecfg = ExtractConfig(data=PointDataConfig(root=spec["data"], splits=["train"]),
                         encoder=PointEncoderConfig(name="sparseunet", checkpoint=spec["encoder"],
                                                    label=spec["label"]),
                         out=spec["features"], storage={"train": "subsample"},
                         points_per_scene=spec["train_points"], device="cpu")
    bad = {k: v for split in extract(ecfg, progress=False).values() for k, v in split.items()}
    if bad:
        raise SystemExit(f"bench_pretrain_options: feature extraction failed: {next(iter(bad.items()))}")
    scores = {}
    for split in ("val", "test"):
        pdir = Path(spec["out"]) / f"probe_{split}"
        pcfg = load_config(SegProbeConfig, str(REPO_ROOT / spec["probe_config"]),
                           [f"features=[{spec['features']}]", f"out={pdir}", f"eval_split={split}",
                            "eval_source=stream", "device=cpu", *spec["probe_set"]])
        scores[split] = run_probe(pcfg)["rows"][0]["mIoU"]
    (Path(spec["out"]) / "scores.json").write_text(json.dumps(scores))
    return 0


def _stats(vals: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def summarize(results: dict) -> list[dict]:
    """One row per variant (table order, the combination last): means and sample sd over seeds."""
    order = [*VARIANTS, COMBINATION]
    by: dict[str, list[dict]] = {}
    for r in results["runs"].values():
        by.setdefault(r["variant"], []).append(r)
    rows = []
    for name in [n for n in order if n in by]:
        rs = sorted(by[name], key=lambda r: r["seed"])
        val, val_sd = _stats([r["val_mIoU"] for r in rs])
        test, test_sd = _stats([r["test_mIoU"] for r in rs])
        rows.append({"variant": name, "overrides": rs[0]["overrides"], "seeds": [r["seed"] for r in rs],
                     "val": val, "val_sd": val_sd, "test": test, "test_sd": test_sd,
                     "val_by_seed": {r["seed"]: r["val_mIoU"] for r in rs},
                     "test_by_seed": {r["seed"]: r["test_mIoU"] for r in rs},
                     "s_per_step": statistics.fmean(r["s_per_step"] for r in rs),
                     "cpu_s_per_step": statistics.fmean(r["cpu_s_per_step"] for r in rs),
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                     "trainable_backbone": rs[0]["trainable_backbone"],
                     "trainable_heads": rs[0]["trainable_heads"],
                     "hashes": [r["encoder_sha256"][:12] for r in rs]})
    return rows


def _paired(row: dict, base: dict, key: str) -> tuple[list[float], list[float]]:
    """``key`` ('val' / 'test') of ``row`` and of the baseline on the seeds both have (in seed order)."""
    common = [s for s in row["seeds"] if s in base["seeds"]]
    return ([row[f"{key}_by_seed"][s] for s in common], [base[f"{key}_by_seed"][s] for s in common])


def helping(rows: list[dict]) -> list[str]:
    """Single options whose mean val mIoU is above the baseline's on the seeds both have."""
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    if base is None:
        return []
    out = []
    for r in rows:
        if r["variant"] in ("baseline", COMBINATION):
            continue
        mine, theirs = _paired(r, base, "val")
        if mine and statistics.fmean(mine) > statistics.fmean(theirs):
            out.append(r["variant"])
    return out


def decision(rows: list[dict]) -> str:
    """The decision line: does the candidate beat the baseline on test (on the seeds both have) by more
    than the seed spread (the larger sample sd of the two over those seeds)?"""
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    helps = helping(rows)
    if base is None:
        return "Decision: no baseline measured yet; the CPU bench default stays."
    if not helps:
        return ("Decision: no option raises the mean val mIoU above the baseline's, so there is no "
                "combination to try; the CPU bench default (all options off) stays.")
    if len(helps) > 1:
        cand = next((r for r in rows if r["variant"] == COMBINATION
                     and r["overrides"] == combination_overrides(helps)), None)
    else:
        cand = next(r for r in rows if r["variant"] == helps[0])
    if cand is None:
        return (f"Decision: options helping on val: {', '.join(helps)}; their combination is not measured, "
                "so the CPU bench default stays.")
    what = f"the combination ({' + '.join(helps)})" if len(helps) > 1 else f"{helps[0]} (the only option " \
        "helping on val)"
    mine, theirs = _paired(cand, base, "test")
    gain = statistics.fmean(mine) - statistics.fmean(theirs)
    if len(mine) < 2:
        return (f"Decision: {what} vs baseline on test: {gain:+.2f} mIoU on one pre-training seed, so no "
                "seed spread to beat: the CPU bench default stays.")
    spread = max(statistics.stdev(mine), statistics.stdev(theirs))
    on = f"(seeds {', '.join(str(s) for s in cand['seeds'] if s in base['seeds'])})"
    if gain > spread:
        return (f"Decision: {what} beats the baseline on the held-out test split by {gain:+.2f} mIoU {on}, "
                f"more than the seed spread ({spread:.2f}): it becomes the CPU bench default.")
    return (f"Decision: {what} vs baseline on the held-out test split: {gain:+.2f} mIoU {on}, not more than "
            f"the seed spread ({spread:.2f}): the CPU bench default (all options off) stays.")


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"


def render_section(results: dict) -> str:
    """Markdown of the section from a results.json (runs, skipped, info)."""
    info = results.get("info", {})
    rows = summarize(results)
    seeds = sorted({r["seed"] for r in results["runs"].values()})  # measured (info["seeds"]: asked for)
    asked = [x for x in info.get("seeds", []) if x not in seeds]
    reduced = any(info.get(k) is not None and info.get(k) != v for k, v in DEFAULTS.items()) \
        or bool(info.get("set"))
    size = (f"{info.get('scenes')} generated rooms (`pointprobe synth`, seed {info.get('data_seed')}; "
            f"60/20/20 % train/val/test), {info.get('steps')} pre-training steps per run, "
            f"pre-training seeds {seeds} "
            f"({'one seed: no spread' if len(seeds) < 2 else 'mean ± sample sd'}"
            + (f"; seed(s) {asked} asked for, not run" if asked else "") + "), "
            f"probe trained on {info.get('train_points')} labelled points per training scene"
            + (f", pre-training overrides for every variant: `{' '.join(info['set'])}`"
               if info.get("set") else "")
            + (" -- REDUCED (tool default: "
               f"{DEFAULTS['scenes']} rooms, {DEFAULTS['steps']} steps, seeds {DEFAULTS['seeds']}, "
               f"{DEFAULTS['train_points']} points, no overrides)" if reduced else ""))
    lines = [
        f"Machine: {info.get('machine', machine_line())}.",
        "",
        f"Every variant is `{BASE_CONFIG}` plus its overrides, on the same rooms with the same seeds and "
        f"budget. Size: {size}. Per run, one process per stage: `pointprobe pretrain` -> `extract` -> "
        f"`probe` (`{info.get('probe_config', 'configs/point/probe.yaml')}`, linear, lr x wd head chosen on "
        "held-out training scenes, streamed evaluation on val and on test). Options that raise the mean val "
        "mIoU over the baseline's make the combination; the decision is made on test.",
        "",
        "| variant | overrides | seeds | val mIoU | test mIoU | s / step | CPU s / step | "
        "peak RSS MiB (pretrain) | trainable params (encoder + heads) | encoder sha256 (per seed) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | `{' '.join(r['overrides']) or 'all off'}` | "
            f"{', '.join(map(str, r['seeds']))} | {_pm(r['val'], r['val_sd'])} | "
            f"{_pm(r['test'], r['test_sd'])} | {r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['trainable_backbone']} + {r['trainable_heads']} | "
            f"{', '.join(r['hashes'])} |")
    notes = [f"- {k}: skipped, the config refuses it: {v}" for k, v in results.get("skipped", {}).items()]
    helps = helping(rows)
    notes.append(f"- helping on val: {', '.join(helps) if helps else 'none'}")
    notes += [f"- {n}" for n in info.get("notes", [])]
    notes.append("- s / step: median wall seconds of the logged steps (log.jsonl, every train.log_every-th) "
                 "(depends on what else the machine runs); "
                 "CPU s / step: the process's CPU time per step (all threads), less sensitive to the load; "
                 "peak RSS: the pre-training process's ru_maxrss (`os.wait4`), max over seeds")
    if info.get("wall_seconds") is not None:
        notes.append(f"- wall time: {info['wall_seconds'] / 60:.1f} min in all ({info.get('invocations', 1)} "
                     "invocation(s) of the resumable tool)")
    argv = [a for a in info.get("argv", []) if a not in info.get("notes", []) and a != "--note"]
    notes.append(f"- command: `python tools/bench_pretrain_options.py {' '.join(argv)}`"
                 + (" (with the --note lines above)" if info.get("notes") else ""))
    return "\n".join([*lines, "", decision(rows), "", *notes])


def write_outputs(work: Path, results: dict, doc: Path | None) -> str:
    md = render_section(results)
    (work / "results.md").write_text(f"## {SECTION}\n\n{md}\n")
    if doc is not None:
        update_section(SECTION, md, doc)
    return md


def load_results(work: Path) -> dict:
    path = work / "results.json"
    return json.loads(path.read_text()) if path.exists() else {"runs": {}, "skipped": {}, "info": {}}


def save_results(work: Path, results: dict) -> None:
    tmp = work / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(work / "results.json")


def plan(results: dict, seeds: list[int], names: list[str]) -> list[tuple[str, list[str], int]]:
    """(variant, overrides, seed) of the single options still to run: refused ones and finished ones left out
    (a refusal is recorded in results['skipped'] and printed)."""
    todo = []
    for name in names:
        reason = check_overrides(VARIANTS[name])
        if reason is not None:
            results.setdefault("skipped", {})[name] = reason
            print(f"bench_pretrain_options: {name} skipped: the config refuses it: {reason}", flush=True)
            continue
        results.setdefault("skipped", {}).pop(name, None)
        todo += [(name, VARIANTS[name], s) for s in seeds if run_key(name, s) not in results["runs"]]
    return todo


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--stage-eval"]:
        return stage_eval(argv[1])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-pretrain-options")
    ap.add_argument("--scenes", type=int, default=DEFAULTS["scenes"])
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="pre-training steps of every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=DEFAULTS["seeds"], help="pre-training seeds")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help="single options to run")
    ap.add_argument("--no-combination", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every variant")
    ap.add_argument("--probe-config", default="configs/point/probe.yaml")
    ap.add_argument("--probe-set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--train-points", type=int, default=DEFAULTS["train_points"])
    ap.add_argument("--report-only", action="store_true", help="redraw the section from OUT/results.json")
    ap.add_argument("--quick", action="store_true", help="6 scenes, 3 steps, seed 0: a smoke run, no docs")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--note", nargs="*", default=[], help="lines added under the table")
    args = ap.parse_args(argv)
    if args.quick:
        args.scenes, args.steps, args.seeds, args.train_points = 6, 3, [0], 1000
        args.set = ["views.max_points=2000", *args.set]
        args.no_doc = True
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    work = Path(args.out)
    doc = None if args.no_doc else DOC
    if args.report_only:
        results = load_results(work)
        if not results["runs"]:
            raise SystemExit(f"bench_pretrain_options: {work / 'results.json'}: no runs to report")
        if args.note:
            results["info"]["notes"] = args.note
            save_results(work, results)
        print(write_outputs(work, results, doc))
        return 0
    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    results = load_results(work)
    same = {"scenes": args.scenes, "data_seed": args.data_seed, "steps": args.steps, "set": args.set,
            "train_points": args.train_points, "probe_config": args.probe_config, "probe_set": args.probe_set}
    old = {k: results["info"].get(k) for k in same}
    if results["runs"] and old != same:
        raise SystemExit(f"bench_pretrain_options: {work} holds runs of other settings {old}; "
                         "give a new --out")
    data = prepare_data(work / "data", args.scenes, args.data_seed, t0)
    argv_used = list(argv)
    wall0 = results["info"].get("wall_seconds", 0.0)
    inv = results["info"].get("invocations", 0) + 1

    def checkpoint_results() -> None:
        done_seeds = {r["seed"] for r in results["runs"].values()}
        results["info"] = {**same, "seeds": sorted({*args.seeds, *done_seeds}),
                           "machine": machine_line(), "notes": args.note, "argv": argv_used,
                           "wall_seconds": wall0 + time.time() - t0, "invocations": inv}
        save_results(work, results)

    def one(name: str, overrides: list[str], seed: int) -> None:
        results["runs"][run_key(name, seed)] = run_variant(work, data, name, overrides, seed, args, t0)
        checkpoint_results()
        r = results["runs"][run_key(name, seed)]
        _log(f"{run_key(name, seed)}: val {r['val_mIoU']:.2f} test {r['test_mIoU']:.2f} "
             f"{r['s_per_step']:.2f} s/step {r['peak_rss_mib']:.0f} MiB", t0)

    def combination(seeds: list[int]) -> None:
        """The combination of the options helping on val so far, for ``seeds``; a combination run of
        another set of options (the helping set changed) is dropped and redone."""
        helps = helping(summarize(results))
        combo = combination_overrides(helps) if len(helps) > 1 and not args.no_combination else None
        for key in [k for k, r in results["runs"].items()
                    if r["variant"] == COMBINATION and r["overrides"] != combo]:
            del results["runs"][key]
        if combo is None:
            _log(f"options helping on val: {helps or 'none'}: no combination to run", t0)
            return
        reason = check_overrides(combo)
        if reason is not None:
            results["skipped"][COMBINATION] = reason
            print(f"bench_pretrain_options: combination skipped: the config refuses it: {reason}", flush=True)
            return
        results["skipped"].pop(COMBINATION, None)
        for seed in seeds:
            if run_key(COMBINATION, seed) not in results["runs"]:
                one(COMBINATION, combo, seed)

    # seed by seed, so a run cut short has whole seeds; from the second seed on, the baseline and the
    # combination (of the options helping on val in the earlier seeds) come first: the pair the decision
    # compares gets its seeds before the single options do; after them the combination is checked again
    todo = plan(results, args.seeds, args.variants)
    for i, seed in enumerate(args.seeds):
        mine = [(n, o) for n, o, s in todo if s == seed]
        for name, overrides in mine:
            if name == "baseline":
                one(name, overrides, seed)
        if i > 0:
            combination(args.seeds[: i + 1])
        for name, overrides in mine:
            if name != "baseline":
                one(name, overrides, seed)
        combination(args.seeds[: i + 1])
    checkpoint_results()
    print(write_outputs(work, results, doc))
    _log(f"results in {work}/results.md", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
