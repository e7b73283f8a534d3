"""ScanNet-style segmentation probing on cached per-point features.

For each feature folder written by ``pointprobe extract`` (one cache per split): train the multi-head
linear probe (``common.probes.linear``, lr x wd grid in one pass, head chosen on held-out training
scenes) on the training split, evaluate the chosen head on every point of the evaluation split, and
write one table for all encoders side by side (markdown + JSON), per-class IoU (table + bar chart PNG)
and the trained probes.

With ``seeds=[0,1,2]`` every encoder is probed once per seed (the seed draws the scene / point subsets
of the data-efficiency settings, the held-out selection scenes and the data order; the linear heads
start at zero). The table reports the mean over seeds, the standard deviation (ddof=1, two or more
seeds) and a 95 % percentile-bootstrap interval over evaluation scenes (per-scene confusion matrices
resampled with replacement, ``n_boot`` times, ``bootstrap_seed``; each resample's metric is averaged
over seeds). One seed (the default, ``seed``) gives the single-run numbers.

Evaluation source (``eval_source``): ``cache`` reads the evaluation split's feature cache; ``stream``
runs the encoder recorded in the training cache on every evaluation scene and applies every trained
head (one per seed) to its features on the fly, accumulating one confusion matrix per head and scene,
so the evaluation split's features are never written (torchrun: scenes sharded over ranks, the
matrices summed over ranks, rank 0 writes the results); ``auto`` streams when there is no cache.
Streamed features are cast to the cache dtype first, so both sources give the same numbers.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common import dist
from common.cache import FeatureCache
from common.config import config_hash, save_config
from common.errors import ConfigError, InputError
from common.metrics import MIOU_RULE, class_presence, segmentation_metrics
from common.probes.data import ProbeData
from common.probes.linear import LinearProbeConfig
from common.probes.logreg import LogRegConfig
from common.probes.registry import PROBES, configure, get_probe
from common.progress import progress
from common.sampling import limit_labels, subset_items
from common.stats import STD_DDOF, bootstrap_sum_ci, format_spread, mean_std

log = logging.getLogger(__name__)


def _seg_linear_defaults() -> LinearProbeConfig:
    return LinearProbeConfig(task="segmentation", lrs=[1e-3, 3e-3, 1e-2, 3e-2], wds=[0.0, 1e-3],
                             epochs=5, batch_size=4096, normalize="standardize", val_fraction=0.15)


def _seg_logreg_defaults() -> LogRegConfig:
    return LogRegConfig(task="segmentation", val_fraction=0.15)


@dataclass
class SegProbeConfig:
    """Settings of ``pointprobe probe``."""

    features: list[str] = field(default_factory=list)  # folders from `pointprobe extract` (one per encoder)
    names: list[str] = field(default_factory=list)  # display names (default: recorded encoder label)
    train_split: str = "train"  # split of the caches the probe is trained on
    eval_split: str = "val"  # split it is evaluated on
    out: str = "runs/probe"  # output folder: results.md/.json, per_class_iou.md/.png, probe_*.pt
    scene_fraction: float = 1.0  # data efficiency: fraction of training scenes (1, 5, 10, 100 %)
    points_per_scene: int = 0  # limited annotations: labelled points kept per training scene (0 = all)
    max_train_points: int = 2_000_000  # cap on labelled training points (random subset; 0 = no cap)
    seed: int = 0  # seed of the scene / point subsets and the probe
    seeds: list[int] = field(default_factory=list)  # several seeds (mean ± std); empty = [seed]
    n_boot: int = 1000  # bootstrap resamples of the evaluation scenes (95 % interval)
    bootstrap_seed: int = 0  # seed of the bootstrap resampling
    allow_select_on_test: bool = False  # allow train_split == eval_split or train_split == test
    eval_source: str = "cache"  # cache | stream (encoder on the fly, no eval features written) | auto
    data_root: str = ""  # stream: the scenes' folder (default: data.root recorded by `pointprobe extract`)
    device: str = "auto"  # stream: device of the encoder (auto | cpu | cuda)
    probe_type: str = "linear"  # a segmentation probe of common.probes.PROBES: linear | logreg
    probe: LinearProbeConfig = field(default_factory=_seg_linear_defaults)  # linear probe (lr x wd sweep)
    logreg: LogRegConfig = field(default_factory=_seg_logreg_defaults)  # probe_type=logreg: L-BFGS, C sweep


def probe_settings(cfg: SegProbeConfig):
    """The settings of ``cfg.probe_type``: section ``probe`` for linear, else the section of its name
    (a table probe without one: its config class's defaults)."""
    spec = get_probe(cfg.probe_type, task="segmentation")
    if cfg.probe_type == "linear":
        return cfg.probe
    return getattr(cfg, cfg.probe_type, None) or spec.config_class()


def _cache(folder: str | Path, split: str) -> FeatureCache:
    path = Path(folder) / split
    if not FeatureCache.exists(path):
        raise InputError(path, f"no feature cache for split '{split}' (run `pointprobe extract` first)")
    return FeatureCache(path)


def _class_names(cache: FeatureCache) -> list[str]:
    label_set = cache.meta.get("label_set", "segment20")
    from pointprobe.data.scannet import CLASS_LABELS_20, CLASS_LABELS_200

    return list(CLASS_LABELS_20 if label_set == "segment20" else CLASS_LABELS_200)


def training_data(cache: FeatureCache, cfg: SegProbeConfig) -> tuple[ProbeData, list[str]]:
    """Training chunks after the data-efficiency settings (scene subset, labelled points, cap)."""
    items = subset_items(cache.items(), cfg.scene_fraction, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    labels = []
    for i, it in enumerate(items):
        y = np.asarray(cache[it]["labels"]).astype(np.int64)
        if cfg.points_per_scene > 0:
            y = limit_labels(y, cfg.points_per_scene, seed=cfg.seed + i)
        labels.append(y)
    total = sum(int((y >= 0).sum()) for y in labels)
    if cfg.max_train_points and total > cfg.max_train_points:
        keep = cfg.max_train_points / total
        labels = [np.where(rng.random(y.shape[0]) < keep, y, -1) for y in labels]
    chunks = [(cache[it]["features"], y) for it, y in zip(items, labels)]
    return ProbeData(chunks, groups=list(range(len(items))), names=items), items


def scene_confusions(result, cache: FeatureCache, num_classes: int, device: str = "cpu") -> np.ndarray:
    """(scenes, C, C) confusion matrices of the chosen head, one per evaluation scene (cache order)."""
    out = np.zeros((len(cache), num_classes, num_classes), dtype=np.int64)
    for g, it in enumerate(cache.items()):
        if not (np.asarray(cache[it]["labels"]) >= 0).any():
            continue  # no labelled point: an all-zero matrix
        ev = result.evaluate(ProbeData.from_cache(cache, items=[it]), device=device)
        out[g] = ev["confusion"]
    return out


def _check_same_encoder(folder: str | Path, a, b) -> None:
    for what, x, y in (("encoder", a.encoder, b.encoder),
                       ("checkpoint", a.checkpoint_sha256, b.checkpoint_sha256),
                       ("config", a.config_hash, b.config_hash)):
        if x != y:
            raise InputError(folder, f"train and eval caches come from different {what}s ({x} vs {y})")


def train_one(folder: str | Path, cfg: SegProbeConfig, name: str | None = None) -> dict:
    """Train the probe of ``cfg.seed`` on ``folder/train_split``: the trained result and what the record
    needs of the training side."""
    train_cache = _cache(folder, cfg.train_split)
    class_names = _class_names(train_cache)
    enc = train_cache.meta.get("encoder", {})
    label = name or enc.get("label") or train_cache.key.encoder
    train, items = training_data(train_cache, cfg)
    spec = PROBES[cfg.probe_type]
    pcfg = configure(probe_settings(cfg), task="segmentation", num_classes=len(class_names), seed=cfg.seed)
    log.info("probe %s (%s): %d training scenes, %d labelled points, dim %d", label, cfg.probe_type,
             len(items), train.num_rows, train_cache.feature_dim)
    result = spec.fit(train, None, pcfg, class_names)
    return {"folder": folder, "cfg": cfg, "cache": train_cache, "result": result, "label": label, "enc": enc,
            "class_names": class_names, "items": items, "train_rows": int(train.num_rows),
            "device": getattr(pcfg, "device", "cpu")}


def _record(t: dict, out: Path, seed_index: int, scores: dict, scene_conf: np.ndarray, eval_scenes: int,
            eval_source: str) -> dict:
    """The result record of one trained probe (saves the probe and its curves on rank 0)."""
    from common.report import slug

    cfg, result, train_cache, label = t["cfg"], t["result"], t["cache"], t["label"]
    seg = segmentation_metrics(np.asarray(scores["confusion"]))
    safe = slug(label, "encoder")
    result.meta.update({"encoder": t["enc"], "cache_key": train_cache.key.to_dict(),
                        "features": str(t["folder"])})
    suffix = "" if seed_index == 0 else f"_seed{cfg.seed}"
    probe_path = out / f"probe_{safe}{suffix}.pt"
    if dist.is_main():
        probe_path = result.save(probe_path)
        from common.curves import write_probe_curves

        write_probe_curves(result.meta.get("history") or [], out, f"curves_{safe}{suffix}",
                           title=f"{cfg.probe_type} probe {label} (seed {cfg.seed}), chosen head")
    return {
        "name": label,
        "encoder": train_cache.key.encoder,
        "checkpoint_sha256": train_cache.key.checkpoint_sha256,
        "config_hash": train_cache.key.config_hash,
        "dim": train_cache.feature_dim,
        "train_scenes": len(t["items"]),
        "train_points": t["train_rows"],
        "eval_scenes": eval_scenes,
        "eval_source": eval_source,
        "mIoU": 100 * float(scores["mIoU"]),
        "mAcc": 100 * float(scores["mAcc"]),
        "allAcc": 100 * float(scores["allAcc"]),
        "iou": [100 * float(v) for v in scores["iou"]],
        "support": seg["support"],
        "predicted": seg["predicted"],
        "mean_classes": seg["mean_classes"],
        "notes": list(result.meta.get("notes", [])),
        "best_lr": result.best.get("lr"),
        "best_wd": result.best.get("wd"),
        "probe_type": cfg.probe_type,
        "trainable_params": result.trainable_params,
        "heads": result.heads,
        "class_names": t["class_names"],
        "probe": str(probe_path),
        "features": str(t["folder"]),
        "seed": cfg.seed,
        "selected_on": result.meta.get("selected_on"),
        "scene_confusion": scene_conf,
    }


def probe_one(folder: str | Path, cfg: SegProbeConfig, out: Path, name: str | None = None,
              seed_index: int = 0) -> dict:
    """Train on ``folder/train_split``, evaluate on ``folder/eval_split`` with ``cfg.seed``; returns the
    result record (``scene_confusion``: the per-scene confusion matrices, for the bootstrap)."""
    train_cache = _cache(folder, cfg.train_split)
    eval_cache = _cache(folder, cfg.eval_split)
    _check_same_encoder(folder, train_cache.key, eval_cache.key)
    t = train_one(folder, cfg, name)
    scores = t["result"].evaluate(ProbeData.from_cache(eval_cache), device=t["device"])
    scene_conf = scene_confusions(t["result"], eval_cache, len(t["class_names"]), t["device"])
    return _record(t, out, seed_index, scores, scene_conf, len(eval_cache), "cache")


def stream_setup(folder: str | Path, cfg: SegProbeConfig, device=None):
    """(extract config, encoder model or None for raw, evaluation scene names) for streaming the
    evaluation split of ``folder``: the encoder recorded in the training cache, rebuilt and checked
    against that cache's key."""
    from common.config import from_dict
    from pointprobe.data.scannet import list_scenes
    from pointprobe.extract import ExtractConfig, cache_key
    from pointprobe.models.registry import build_encoder

    train_cache = _cache(folder, cfg.train_split)
    recorded = train_cache.meta.get("config")
    if not isinstance(recorded, dict):
        raise InputError(Path(folder) / cfg.train_split, "the cache records no extract config (written by an "
                         "older `pointprobe extract`?): streamed evaluation cannot rebuild its encoder")
    ecfg = from_dict(ExtractConfig, recorded)
    if cfg.data_root:
        ecfg.data.root = cfg.data_root
    device = dist.pick_device(cfg.device) if device is None else device
    model, rec = build_encoder(ecfg.encoder, device)
    key = cache_key(rec, ecfg, cfg.eval_split)
    _check_same_encoder(folder, train_cache.key, key)
    names = list_scenes(ecfg.data.root, cfg.eval_split)
    return ecfg, model, names[: ecfg.data.limit] if ecfg.data.limit else names, device


def stream_confusions(folder: str | Path, results: list, cfg: SegProbeConfig, num_classes: int,
                      probe_device: str = "cpu", rank_: int | None = None,
                      world_: int | None = None) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """(heads, scenes, C, C) confusion matrices of every trained head in ``results`` on every scene of
    the evaluation split, computed by running the encoder scene by scene (no features written); the
    scene names; {scene: error} of the scenes that could not be read (their matrices stay zero).

    Each rank takes its ``common.dist.shard`` of the scenes (``rank_`` / ``world_`` override it, for
    tests); under torchrun the matrices and failures are then summed / gathered over ranks."""
    import torch

    from pointprobe.data.scannet import load_scene
    from pointprobe.extract import scene_features

    ecfg, model, names, device = stream_setup(folder, cfg)
    conf = np.zeros((len(results), len(names), num_classes, num_classes), dtype=np.int64)
    failures: dict[str, str] = {}
    mine = dist.shard(list(range(len(names))), rank_, world_)
    desc = f"stream {cfg.eval_split}" + (f" (rank {dist.rank()})" if dist.is_distributed() else "")
    for g in progress(mine, desc=desc, unit="scene"):  # hundreds of scenes: a line every interval in a log
        scene_dir = Path(ecfg.data.root) / cfg.eval_split / names[g]
        try:
            scene = load_scene(scene_dir)
            labels = scene.labels(ecfg.data.label_set).astype(np.int64)
            feats = np.asarray(scene_features(model, scene, ecfg, device)).astype(ecfg.dtype, copy=False)
            if feats.shape[0] != labels.shape[0]:
                raise InputError(scene_dir, f"{feats.shape[0]} features for {labels.shape[0]} labels")
            if not np.isfinite(feats).all():
                raise InputError(scene_dir, "features contain NaN or inf (the cache would refuse them)")
        except InputError as e:
            failures[names[g]] = str(e)
            continue
        if not (labels >= 0).any():
            continue  # no labelled point: an all-zero matrix (as the cached path)
        data = ProbeData([(feats, labels)], groups=[0], names=[names[g]])
        for h, res in enumerate(results):
            conf[h, g] = res.evaluate(data, device=probe_device)["confusion"]
    if dist.is_distributed() and rank_ is None:
        conf = dist.all_reduce_tensor(torch.from_numpy(conf)).numpy()
        for part in dist.all_gather_object(failures):
            failures.update(part)
    return conf, names, failures


def scores_from_confusion(conf: np.ndarray) -> dict:
    """mIoU / mAcc / allAcc / iou / confusion of a summed (C, C) confusion matrix."""
    seg = segmentation_metrics(conf)
    return {"mIoU": seg["mIoU"], "mAcc": seg["mAcc"], "allAcc": seg["allAcc"], "iou": seg["iou"],
            "confusion": conf}


def probe_folder(folder: str | Path, cfg: SegProbeConfig, seeds: list[int], out: Path,
                 name: str | None = None) -> tuple[list[dict], dict[str, str]]:
    """Every seed's record of one feature folder; the evaluation split read from its cache or streamed
    (``cfg.eval_source``); returns (records, {scene: error} of streamed scenes that failed)."""
    source = cfg.eval_source
    if source not in ("cache", "stream", "auto"):
        raise ConfigError(f"config key 'eval_source': expected cache, stream or auto, got {source!r}")
    if source == "auto":
        source = "cache" if FeatureCache.exists(Path(folder) / cfg.eval_split) else "stream"
    if source == "cache":
        return [probe_one(folder, dataclasses.replace(cfg, seed=s), out, name, seed_index=j)
                for j, s in enumerate(seeds)], {}
    trained = [train_one(folder, dataclasses.replace(cfg, seed=s), name) for s in seeds]
    for t in trained:  # every rank applies rank 0's heads (training may differ in the last bits across ranks)
        t["result"] = dist.broadcast_object(t["result"])
    conf, names, failures = stream_confusions(folder, [t["result"] for t in trained], cfg,
                                              len(trained[0]["class_names"]), trained[0]["device"])
    keep = [g for g, n in enumerate(names) if n not in failures]
    if not keep:
        raise InputError(Path(folder), f"no '{cfg.eval_split}' scene could be evaluated: "
                         f"{next(iter(failures.values()), 'no scenes')}")
    records = []
    for j, t in enumerate(trained):
        scene_conf = conf[j][keep]
        records.append(_record(t, out, j, scores_from_confusion(scene_conf.sum(0)), scene_conf, len(keep),
                               "stream"))
    return records, failures


SPREAD_METRICS = ("mIoU", "mAcc", "allAcc")


def spread_note(n_seeds: int, n_boot: int, boot_seed: int, groups: str) -> str:
    """The footnote saying what ``mean ± std [low, high]`` means."""
    head = (f"mean ± standard deviation over {n_seeds} seeds (ddof=1)" if n_seeds > 1 else "one seed")
    return (f"metrics: {head} [95 % percentile-bootstrap interval over the evaluation {groups}, "
            f"{n_boot} resamples with replacement, bootstrap seed {boot_seed}]")


def check_selection_split(cfg: SegProbeConfig) -> dict:
    """Where the head is chosen, and whether that is the evaluation split (refused unless allowed)."""
    vf = probe_settings(cfg).val_fraction
    selected_on = (f"held-out {vf:g} of the '{cfg.train_split}' scenes" if vf > 0 else
                   f"the '{cfg.train_split}' training scenes themselves (val_fraction=0)")
    same = cfg.train_split == cfg.eval_split
    if same and not cfg.allow_select_on_test:
        raise ConfigError(f"train_split and eval_split are both '{cfg.eval_split}': the head would be chosen "
                          "on the evaluation split; set allow_select_on_test=true to do it anyway")
    if cfg.train_split == "test" and not cfg.allow_select_on_test:
        raise ConfigError("train_split is 'test': the head would be trained and chosen on the test split; "
                          "set allow_select_on_test=true to do it anyway")
    if same:
        log.warning("the evaluation split '%s' is also the selection split (allow_select_on_test=true): "
                    "its numbers are optimistic", cfg.eval_split)
    else:
        log.info("head selection on %s; evaluation on the '%s' split", selected_on, cfg.eval_split)
    return {"selected_on": selected_on, "eval_is_selection": same}


def aggregate_seeds(runs: list[dict], n_boot: int, boot_seed: int) -> dict:
    """One record from the per-seed records: metrics as means over seeds (one seed: its values), with
    ``spread[metric] = {mean, std, ci, per_seed}``, ``iou_std`` (per class, None for one seed) and
    ``per_seed`` (each seed's metrics)."""
    rec = {k: v for k, v in runs[0].items() if k != "scene_confusion"}
    conf = np.stack([r["scene_confusion"] for r in runs], axis=1)  # (scenes, seeds, C, C)
    rec["seeds"] = [r["seed"] for r in runs]
    rec["spread"] = {}

    def stat(summed: np.ndarray) -> list[float]:  # summed: (seeds, C, C) of one resample of scenes
        segs = [segmentation_metrics(c) for c in summed]
        return [float(np.mean([100 * sg[m] for sg in segs])) for m in SPREAD_METRICS]

    lo, hi = bootstrap_sum_ci(conf, stat, n_boot=n_boot, seed=boot_seed)
    for j, m in enumerate(SPREAD_METRICS):
        mean, std = mean_std([r[m] for r in runs])
        rec[m] = mean
        rec["spread"][m] = {"mean": mean, "std": std, "ci": [float(lo[j]), float(hi[j])],
                            "per_seed": [r[m] for r in runs]}
    iou = np.array([r["iou"] for r in runs], dtype=np.float64)  # (seeds, C), NaN where a class is absent
    with warnings.catch_warnings():  # a class absent for every seed stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        rec["iou"] = list(iou[0]) if len(runs) == 1 else [float(v) for v in np.nanmean(iou, 0)]
        rec["iou_std"] = ([None] * iou.shape[1] if len(runs) == 1 else
                          [float(v) for v in np.nanstd(iou, 0, ddof=STD_DDOF)])
    rec["per_seed"] = [{k: r[k] for k in ("seed", *SPREAD_METRICS, "iou", "best_lr", "best_wd",
                                          "train_scenes", "train_points", "probe")} for r in runs]
    return rec


def run_probe(cfg: SegProbeConfig) -> dict:
    """Probe every feature folder; write ``results.md/json``, ``per_class_iou.md/json/png``, probes."""
    from common.report import bar_chart_png, checkpoint_id, write_table

    if not cfg.features:
        raise ConfigError("config key 'features' is empty: give the folders written by `pointprobe extract`")
    get_probe(cfg.probe_type, task="segmentation")  # an unknown probe_type: one ConfigError naming the known
    if cfg.names and len(cfg.names) != len(cfg.features):
        raise ConfigError(f"config key 'names' has {len(cfg.names)} entries for {len(cfg.features)} features")
    if not 0 < cfg.scene_fraction <= 1:
        raise ConfigError(f"config key 'scene_fraction' must be in (0, 1], got {cfg.scene_fraction}")
    seeds = list(cfg.seeds) or [cfg.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config key 'seeds' repeats a seed: {seeds}")
    selection = check_selection_split(cfg)
    if cfg.eval_source != "cache":
        dist.init_from_env()  # streamed evaluation shards the scenes over torchrun ranks
    out = Path(cfg.out)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
    records = []
    confusions = {}
    stream_failures: list[str] = []
    for i, folder in enumerate(cfg.features):
        runs, failed = probe_folder(folder, cfg, seeds, out, cfg.names[i] if cfg.names else None)
        rec = aggregate_seeds(runs, cfg.n_boot, cfg.bootstrap_seed)
        stream_failures += [f"{rec['name']}: {cfg.eval_split} scene {k} not evaluated: {v}"
                            for k, v in sorted(failed.items())]
        for r in runs:
            confusions[f"{rec['name']}/seed{r['seed']}"] = r.pop("scene_confusion")
        records.append(rec)
    if not dist.is_main():
        return {"rows": [], "md_rows": [], "records": records, "out": str(out)}
    np.savez_compressed(out / "scene_confusion.npz", **confusions)
    multi = len(seeds) > 1
    class_names = records[0]["class_names"]
    k = len(class_names)
    rows = [{"encoder": r["name"], "checkpoint": checkpoint_id(r["checkpoint_sha256"]), "dim": r["dim"],
             "mIoU": r["mIoU"], "mIoU classes": f"{r['mean_classes']}/{k}", "mAcc": r["mAcc"],
             "allAcc": r["allAcc"],
             "train scenes": r["train_scenes"], "train points": r["train_points"], "best lr": r["best_lr"],
             "best wd": r["best_wd"]} for r in records]
    for row, r in zip(rows, records):  # spread columns (JSON); the markdown shows them in the metric cells
        for m in SPREAD_METRICS:
            row[f"{m} std"] = r["spread"][m]["std"]
            row[f"{m} ci_low"], row[f"{m} ci_high"] = r["spread"][m]["ci"]
        row["seeds"] = seeds
    md_rows = []
    for row, r in zip(rows, records):
        md = {k: v for k, v in row.items() if not k.endswith((" std", " ci_low", " ci_high"))}
        for m in SPREAD_METRICS:
            md[m] = format_spread(r[m], r["spread"][m]["std"], r["spread"][m]["ci"])
        md["seeds"] = ",".join(str(s) for s in seeds)
        md_rows.append(md)
    setting = (f"{cfg.scene_fraction:.0%} of training scenes" +
               (f", {cfg.points_per_scene} labelled points per scene" if cfg.points_per_scene else ""))
    notes = [f"{r['name']}: {n}" for r in records for n in r["notes"]] + stream_failures
    support = records[0]["support"]  # one evaluation split: the same for every encoder
    absent = [c for c, t in zip(class_names, support) if t == 0]
    footnotes = [MIOU_RULE + "; 'mIoU classes' says over how many of the classes each mIoU is averaged",
                 spread_note(len(seeds), cfg.n_boot, cfg.bootstrap_seed, "scenes"),
                 f"head selection: {selection['selected_on']}" + (
                     " -- the evaluation split is also the selection split (allow_select_on_test=true)"
                     if selection["eval_is_selection"] else ""),
                 "checkpoint: random:<seed> = random weights (a baseline, not a trained encoder), "
                 "none = no weights (input features), else the first 12 hex digits of the weights' sha256"]
    if multi:
        footnotes.append(f"train scenes, train points, best lr, best wd: of the first seed ({seeds[0]}); "
                         "every seed's in details.json (records[].per_seed)")
    if absent:
        footnotes.append(f"{len(absent)} of {k} classes are absent from the {cfg.eval_split} split: "
                         f"{', '.join(absent)}")
    meta = {"task": "semantic segmentation, linear probe on frozen features",
            "train split": cfg.train_split, "eval split": cfg.eval_split, "setting": setting,
            "config_hash": config_hash(cfg), "notes": notes, "config": asdict(cfg),
            "eval_source": [r["eval_source"] for r in records],
            "seeds": seeds, "std_ddof": STD_DDOF if multi else None,
            "bootstrap": {"n_boot": cfg.n_boot, "seed": cfg.bootstrap_seed, "level": 0.95,
                          "resampled": "evaluation scenes"},
            "selected_on": selection["selected_on"],
            "eval_is_selection_split": selection["eval_is_selection"],
            "num_classes": len(class_names), "eval_class_histogram": records[0]["support"],
            "encoders": [{k: r[k] for k in ("name", "encoder", "checkpoint_sha256", "config_hash",
                                            "features")} for r in records]}
    write_table(rows, out / "results", f"Linear probe, {cfg.eval_split} split ({setting})", meta=meta,
                float_format=".2f", footnotes=footnotes + notes, md_rows=md_rows)
    per_class = []
    for j, c in enumerate(class_names):
        row = {"class": c, f"{cfg.eval_split} points": support[j]}
        for r in records:
            status = class_presence([r["support"][j]], [r["predicted"][j]])[0]
            row[r["name"]] = r["iou"][j] if status == "present" else (
                "absent (predicted: 0)" if status == "absent, predicted" else "absent")
            if multi:
                row[f"{r['name']} std"] = r["iou_std"][j] if status == "present" else None
        per_class.append(row)
    per_class_notes = [
        "absent: the class does not occur in the evaluation split and is not predicted, it is left out of "
        "the mIoU; absent (predicted: 0): it does not occur but the probe predicts it on some points, it "
        "counts as IoU 0 (Pointcept's rule)",
        *(f"mIoU of {r['name']} is averaged over {r['mean_classes']} of {k} classes" for r in records),
        *([f"IoU: mean over seeds {seeds}; '<encoder> std': standard deviation over seeds (ddof=1)"]
          if multi else [])]
    write_table(per_class, out / "per_class_iou", "Per-class IoU (%)",
                meta={"eval split": cfg.eval_split, "absent classes": absent},
                float_format=".1f", footnotes=per_class_notes)
    bar_chart_png({r["name"]: r["iou"] for r in records}, out / "per_class_iou.png",
                  title=f"Per-class IoU, {cfg.eval_split} split", ylabel="IoU (%)", labels=class_names,
                  absent=[t == 0 for t in support])
    detail = {"records": records, "meta": meta}
    import json

    from common.report import jsonable

    (out / "details.json").write_text(json.dumps(jsonable(detail), indent=1) + "\n")
    return {"rows": rows, "md_rows": md_rows, "records": records, "out": str(out)}


def dry_run(cfg: SegProbeConfig, n_encode: int = 3) -> dict:
    """What ``run_probe(cfg)`` would read, without training or writing: per feature folder the training
    scenes and labelled rows (and their float32 bytes in memory), the evaluation source and, streamed,
    the evaluation scenes, points, estimated encoding time (``n_encode`` scenes encoded here) and the
    scenes that would fail."""
    from pointprobe.extract import scan_scene, time_encoding

    if not cfg.features:
        raise ConfigError("config key 'features' is empty: give the folders written by `pointprobe extract`")
    get_probe(cfg.probe_type, task="segmentation")
    if cfg.eval_source not in ("cache", "stream", "auto"):
        raise ConfigError(f"config key 'eval_source': expected cache, stream or auto, "
                          f"got {cfg.eval_source!r}")
    check_selection_split(cfg)
    folders = []
    for folder in cfg.features:
        train_cache = _cache(folder, cfg.train_split)
        train, items = training_data(train_cache, cfg)
        rec = {"folder": str(folder), "train_scenes": len(items), "train_rows": int(train.num_rows),
               "train_bytes_float32": int(train.nbytes_float32), "dim": train_cache.feature_dim,
               "storage": (train_cache.meta.get("storage") or {}).get("mode", "full")}
        source = cfg.eval_source
        if source == "auto":
            source = "cache" if FeatureCache.exists(Path(folder) / cfg.eval_split) else "stream"
        rec["eval_source"] = source
        if source == "cache":
            ev = _cache(folder, cfg.eval_split)
            rec.update(eval_scenes=len(ev), eval_points=int(ev.total_rows), failed={})
        else:
            ecfg, model, names, device = stream_setup(folder, cfg)
            ok, failed, points = [], {}, 0
            for n in names:
                try:
                    points += scan_scene(Path(ecfg.data.root) / cfg.eval_split / n, ecfg.data.label_set)
                    ok.append(Path(ecfg.data.root) / cfg.eval_split / n)
                except InputError as e:
                    failed[n] = str(e)
            step = max(1, len(ok) // max(1, n_encode))
            pick = ok[::step] + [f for f in ok if f not in ok[::step]]
            pts, secs, enc_failed = time_encoding(model, ecfg, device, pick, n_encode)
            failed.update(enc_failed)
            pps = pts / secs if secs > 0 else None
            rec.update(eval_scenes=len(names), eval_points=points, failed=failed, points_per_second=pps,
                       eval_seconds=points / pps / dist.world_size() if pps else None)
        folders.append(rec)
    return {"features": folders, "seeds": list(cfg.seeds) or [cfg.seed]}


def format_dry_run(rep: dict, out: str) -> str:
    """The probe dry run's report as lines of text."""
    from common.paths import human_bytes

    lines = [f"dry run: nothing trained, nothing written to {out}; seeds {rep['seeds']}"]
    for r in rep["features"]:
        lines.append(f"{r['folder']}: train {r['train_scenes']} scenes ({r['storage']} storage), "
                     f"{r['train_rows']:,} labelled rows of {r['dim']} dims = "
                     f"{human_bytes(r['train_bytes_float32'])} as float32")
        ev = f"eval ({r['eval_source']}): {r['eval_scenes']} scenes, {r['eval_points']:,} points"
        if r["eval_source"] == "stream":
            pps, t = r["points_per_second"], r["eval_seconds"]
            ev += (f", encoder {pps:,.0f} points/s here, about {t / 60:.1f} min per pass" if pps
                   else ", no scene could be encoded")
        lines.append(f"  {ev}, {len(r['failed'])} would fail")
        lines += [f"  would fail: {k}: {v}" for k, v in sorted(r["failed"].items())]
    return "\n".join(lines)
