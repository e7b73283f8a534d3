"""Action-recognition probes on cached video features: linear, kNN and attentive.

Inputs are two caches written by ``videoprobe extract`` (train and test split of one dataset, same
encoder). Every probe scores a test video by combining its views: the linear and attentive probes
average softmax probabilities over views, kNN sums neighbour votes over views (TWLV-I's recipe).
Reported: top-1, top-5 and mean-class accuracy, in percent.

* linear: ``common.probes.linear``: an (lr x wd) grid of linear heads trained in one pass, the best
  head chosen on a held-out part of the training videos (by video).
* knn: ``common.probes.knn``: cosine similarity on L2-normalised features, ``k`` neighbours weighted
  exp(sim / T) (TWLV-I: k = 200, T = 0.1); the bank holds one vector per training video (mean of its
  views) or every view.
* attentive: ``common.probes.attentive``: V-JEPA's frozen-evaluation probe on the cached tokens (one
  learned query, one cross-attention block, a linear classifier); the tokens of a video's temporal
  clips are concatenated (one sequence per spatial crop); AdamW with a cosine schedule.

``classes`` restricts both splits to a subset of classes (relabelled 0..K'-1): a list of names, or
"appearance" / "motion" from a ``classes.json`` (the generated dataset writes one).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cache import FeatureCache
from common.config import config_hash, save_config, to_dict
from common.errors import CacheError, ConfigError, InputError
from common.probes.linear import LinearProbeConfig, ProbeData, evaluate_linear_probe, train_linear_probe

log = logging.getLogger(__name__)

PROBES = ("linear", "knn", "attentive")


# ------------------------------------------------------------------------------------------ config
@dataclass
class KnnConfig:
    k: int = 200  # neighbours
    temperature: float = 0.1  # vote weight exp(cos / temperature)
    bank: str = "video"  # "video": one mean vector per training video | "view": every view
    query: str = "view"  # "view": votes summed over a test video's views | "video": its mean vector
    standardize: bool = False  # z-score with the bank statistics before L2 (mixed scales)


@dataclass
class AttentiveConfig:
    epochs: int = 20  # training epochs
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    batch_size: int = 256  # videos per step
    num_heads: int = 0  # 0: the largest of 16, 12, 8, 6, 4, 3, 2, 1 dividing the token dim
    mlp_ratio: float = 4.0  # hidden size of the block's MLP / token dim
    val_fraction: float = 0.1  # training videos held out to report a validation score


@dataclass
class ProbeConfig:
    train_cache: str = ""  # cache folder of the training split (`videoprobe extract`)
    test_cache: str = ""  # cache folder of the test split
    out: str = ""  # output folder: probe.md, probe.json, config.yaml
    probes: list[str] = field(default_factory=lambda: ["linear", "knn"])  # any of linear, knn, attentive
    classes: str = "all"  # all | appearance | motion | comma-separated class names
    classes_file: str | None = None  # classes.json; default: <dataset root>/classes.json
    benchmark: str = ""  # a name for the records (default: the train cache's dataset)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)  # linear probe (lr x wd sweep)
    knn: KnnConfig = field(default_factory=KnnConfig)  # kNN settings (TWLV-I recipe)
    attentive: AttentiveConfig = field(default_factory=AttentiveConfig)  # attentive probe (V-JEPA style)
    seed: int = 0  # seed of the probes
    device: str = "cpu"  # cpu | cuda
    progress: bool = True  # progress bar (terminal) / a line every PROBESUITE_PROGRESS_SECONDS (logs)


# -------------------------------------------------------------------------------------------- data
@dataclass
class VideoSplit:
    """One split's videos after the class filter: per-video view features and labels."""

    cache: FeatureCache
    ids: list[str]
    labels: np.ndarray  # (N,) remapped
    class_names: list[str]

    def features(self, item: str) -> np.ndarray:
        return np.asarray(self.cache.load(item, ["features"])["features"], dtype=np.float32)

    def tokens(self, item: str) -> np.ndarray:
        try:
            return np.asarray(self.cache.load(item, ["tokens"])["tokens"], dtype=np.float32)
        except CacheError:
            raise CacheError(
                f"{self.cache.path}: item {item!r} has no tokens; extract with save_tokens=true "
                "for the attentive probe"
            ) from None


def _kinds_file(cfg: ProbeConfig, cache: FeatureCache) -> Path:
    if cfg.classes_file:
        return Path(cfg.classes_file)
    root = ((cache.meta.get("config") or {}).get("data") or {}).get("root")
    if not root:
        raise ConfigError(f"classes={cfg.classes!r} needs classes_file (no dataset root in {cache.path})")
    return Path(root) / "classes.json"


def select_classes(spec: str, class_names: list[str], kinds_file: Path | None) -> list[str]:
    """The class names kept by ``spec`` ("all", "appearance", "motion" or "A,B,C")."""
    if spec == "all":
        return list(class_names)
    if spec in ("appearance", "motion"):
        if kinds_file is None or not kinds_file.is_file():
            raise InputError(kinds_file, f"classes file not found (needed for classes={spec})")
        try:
            meta = json.loads(kinds_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(kinds_file, f"cannot read classes file ({e})") from None
        if isinstance(meta.get(spec), list):
            wanted = set(meta[spec])
        else:
            wanted = {c["name"] for c in meta.get("classes", []) if c.get("kind") == spec}
        keep = [c for c in class_names if c in wanted]
    else:
        keep = [c.strip() for c in spec.split(",") if c.strip()]
        unknown = [c for c in keep if c not in class_names]
        if unknown:
            raise ConfigError(f"classes: unknown class name(s) {', '.join(unknown)}")
    if len(keep) < 2:
        raise ConfigError(f"classes={spec!r} leaves {len(keep)} class(es); a probe needs at least 2")
    return keep


def load_split(path: str | Path, keep: list[str] | None, class_names: list[str] | None = None) -> VideoSplit:
    """Open a cache and keep the videos whose class is in ``keep`` (None: all), relabelled by class
    name: a split whose class list lacks some of ``keep`` (a test list without the top class) is
    aligned by name, never by position."""
    cache = FeatureCache(path)
    names = class_names or list(cache.meta.get("class_names") or [])
    if not names:
        raise CacheError(f"{cache.path}: no class_names in the cache meta")
    keep = keep or names
    index = {c: k for k, c in enumerate(names)}
    remap = {index[c]: i for i, c in enumerate(keep) if c in index}
    ids, labels = [], []
    for item in cache.items():
        lab = cache.load(item, ["labels"])["labels"]
        y = int(np.asarray(lab).reshape(-1)[0])
        if y in remap:
            ids.append(item)
            labels.append(remap[y])
    if not ids:
        raise InputError(cache.path, f"no videos of the selected classes ({', '.join(keep[:5])}...)")
    return VideoSplit(cache, ids, np.asarray(labels, dtype=np.int64), list(keep))


def _probe_data(split: VideoSplit) -> ProbeData:
    chunks = [(split.features(i), np.full(split.cache.n(i), y)) for i, y in zip(split.ids, split.labels)]
    return ProbeData(chunks, groups=list(range(len(split.ids))), names=split.ids)


# ------------------------------------------------------------------------------------------ linear
def run_linear(train: VideoSplit, test: VideoSplit, cfg: LinearProbeConfig) -> dict[str, Any]:
    """Multi-head linear probe; softmax averaged over each test video's views."""
    k = len(train.class_names)
    lcfg = dataclasses.replace(cfg, num_classes=k, task="classification", view_average=True)
    result = train_linear_probe(_probe_data(train), None, lcfg, class_names=train.class_names)
    ev = evaluate_linear_probe(result, _probe_data(test), view_average=True)
    return {
        "top1": 100.0 * ev["top1"], "top5": 100.0 * ev["top5"], "mean_class": 100.0 * ev["mean_class"],
        "best": {kk: result.best[kk] for kk in ("lr", "wd") if kk in result.best},
        "selected_on": result.meta.get("selected_on"), "heads": len(result.heads),
        "notes": list(result.meta.get("notes", [])),
    }


# --------------------------------------------------------------------------------------------- kNN
def run_knn(train: VideoSplit, test: VideoSplit, cfg: KnnConfig, progress: bool = False) -> dict[str, Any]:
    """TWLV-I kNN (``common.probes.knn``): cosine, exp(sim / T) weights, votes summed over a video's views."""
    from common.probes.knn import KnnConfig as CommonKnn
    from common.probes.knn import evaluate_knn

    if cfg.bank not in ("video", "view") or cfg.query not in ("video", "view"):
        raise ConfigError("knn.bank and knn.query must be 'video' or 'view'")

    def rows(split: VideoSplit, mode: str) -> list[np.ndarray]:
        feats = [split.features(i) for i in split.ids]
        return [f.mean(0, keepdims=True) for f in feats] if mode == "video" else feats

    bank, queries = rows(train, cfg.bank), rows(test, cfg.query)
    if cfg.standardize:
        stacked = np.concatenate(bank).astype(np.float64)
        mean, std = stacked.mean(0), np.maximum(stacked.std(0), 1e-6)
        bank = [((f - mean) / std).astype(np.float32) for f in bank]
        queries = [((f - mean) / std).astype(np.float32) for f in queries]

    def data(feats: list[np.ndarray], labels: np.ndarray, names: list[str]) -> ProbeData:
        return ProbeData([(f, np.full(f.shape[0], y)) for f, y in zip(feats, labels)],
                         groups=list(range(len(feats))), names=names)

    k_cls = len(train.class_names)
    ccfg = CommonKnn(ks=[cfg.k], temperature=cfg.temperature, weighting="exp", group_vote=True,
                     progress=progress)
    row = evaluate_knn(data(bank, train.labels, train.ids), data(queries, test.labels, test.ids), ccfg,
                       num_classes=k_cls)[0]
    n_bank = sum(f.shape[0] for f in bank)
    return {"top1": 100.0 * row["top1"], "top5": 100.0 * row["top5"], "mean_class": 100.0 * row["mean_class"],
            "k": min(cfg.k, n_bank), "notes": list(row.get("notes", []))}


# --------------------------------------------------------------------------------------- attentive
def _auto_heads(dim: int) -> int:
    return next(h for h in (16, 12, 8, 6, 4, 3, 2, 1) if dim % h == 0)


def _sequences(split: VideoSplit, item: str) -> np.ndarray:
    """(crops, num_clips * N, D) token sequences of one video (the clips of one crop concatenated)."""
    tok = split.tokens(item)  # (V, T', H', W', D)
    v, d = tok.shape[0], tok.shape[-1]
    crops = int(split.cache.meta.get("crops_per_clip", 1) or 1)
    if v % crops:
        crops = 1
    tok = tok.reshape(v // crops, crops, -1, d).transpose(1, 0, 2, 3)  # (crops, clips, N, D)
    return np.ascontiguousarray(tok.reshape(crops, -1, d))


def run_attentive(train: VideoSplit, test: VideoSplit, cfg: AttentiveConfig, seed: int = 0,
                  device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """V-JEPA attentive probe (``common.probes.attentive``) on token sequences; softmax averaged over a
    test video's crops. The training videos' ``val_fraction`` is held out for the reported validation."""
    from common.probes.attentive import AttentiveConfig as CommonAttentive
    from common.probes.attentive import evaluate_attentive_probe, train_attentive_probe

    def data(split: VideoSplit) -> ProbeData:
        seqs = [_sequences(split, i) for i in split.ids]
        lengths = {s.shape[1] for s in seqs}
        if len(lengths) != 1:
            raise InputError(split.cache.path, f"token sequences differ in length ({sorted(lengths)[:4]})")
        return ProbeData([(s, np.full(s.shape[0], y)) for s, y in zip(seqs, split.labels)],
                         groups=list(range(len(seqs))), names=split.ids)

    tr, te = data(train), data(test)
    dim = tr.feature_shape[-1]
    heads = cfg.num_heads or _auto_heads(dim)
    if dim % heads:
        raise ConfigError(f"attentive.num_heads={heads} does not divide the token dim {dim}")
    ccfg = CommonAttentive(num_heads=heads, mlp_ratio=cfg.mlp_ratio, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           epochs=cfg.epochs, batch_size=cfg.batch_size, val_fraction=cfg.val_fraction,
                           num_classes=len(train.class_names), seed=seed, device=device, progress=progress)
    result = train_attentive_probe(tr, None, ccfg, class_names=train.class_names)
    ev = evaluate_attentive_probe(result, te, view_average=True, device=device)
    return {"top1": 100.0 * ev["top1"], "top5": 100.0 * ev["top5"], "mean_class": 100.0 * ev["mean_class"],
            "heads": heads, "val_top1": 100.0 * result.val["top1"],
            "notes": list(result.meta.get("notes", []))}


# --------------------------------------------------------------------------------------------- run
def _record(cache: FeatureCache) -> dict[str, Any]:
    return {"encoder": cache.key.encoder, "checkpoint_sha256": cache.key.checkpoint_sha256,
            "feature_config_hash": cache.key.config_hash, "dataset": cache.key.dataset,
            "split": cache.key.split, "items": len(cache)}


def run_probes(cfg: ProbeConfig) -> dict[str, Any]:
    """Train and evaluate every probe in ``cfg.probes``; returns {probe: scores} plus records."""
    bad = [p for p in cfg.probes if p not in PROBES]
    if bad or not cfg.probes:
        raise ConfigError(f"probes must be a non-empty list of {', '.join(PROBES)}; got {cfg.probes}")
    if not cfg.train_cache or not cfg.test_cache:
        raise ConfigError("train_cache and test_cache must both be set")
    train_cache = FeatureCache(cfg.train_cache)
    test_cache = FeatureCache(cfg.test_cache)
    for f in ("encoder", "checkpoint_sha256", "config_hash"):
        if getattr(train_cache.key, f) != getattr(test_cache.key, f):
            raise CacheError(f"{cfg.test_cache}: {f} differs from the train cache {cfg.train_cache} "
                             "(features of different encoders / settings)")
    names = list(train_cache.meta.get("class_names") or [])
    kinds = _kinds_file(cfg, train_cache) if cfg.classes in ("appearance", "motion") else None
    keep = select_classes(cfg.classes, names, kinds)
    train = load_split(cfg.train_cache, keep, names)
    test = load_split(cfg.test_cache, keep, list(test_cache.meta.get("class_names") or names))
    from common.probes.notes import top5_notes

    results: dict[str, Any] = {}
    notes = top5_notes(len(keep))
    for probe in cfg.probes:
        t0 = time.perf_counter()
        if probe == "linear":
            lcfg = dataclasses.replace(cfg.linear, seed=cfg.seed, device=cfg.device, progress=cfg.progress)
            res = run_linear(train, test, lcfg)
        elif probe == "knn":
            res = run_knn(train, test, cfg.knn, cfg.progress)
        else:
            res = run_attentive(train, test, cfg.attentive, cfg.seed, cfg.device, cfg.progress)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        results[probe] = res
        notes += [f"{probe}: {n}" for n in res.get("notes", [])]
        log.info("%s: top1 %.2f  top5 %.2f  mean-class %.2f", probe, res["top1"], res["top5"],
                 res["mean_class"])
    return {
        "results": results,
        "train": _record(train_cache),
        "test": _record(test_cache),
        "classes": keep,
        "num_train_videos": len(train.ids),
        "num_test_videos": len(test.ids),
        "benchmark": cfg.benchmark or train_cache.key.dataset,
        "probe_config_hash": config_hash(cfg),
        "padding": {"train": train_cache.meta.get("padding"), "test": test_cache.meta.get("padding")},
        "notes": notes,
    }


def write_probe_report(cfg: ProbeConfig, outcome: dict[str, Any]) -> tuple[Path, Path]:
    """``probe.md`` / ``probe.json`` (one row per probe) and the resolved ``config.yaml`` in ``cfg.out``."""
    from common.report import checkpoint_id, write_table

    if not cfg.out:
        raise ConfigError("out is not set (the report folder)")
    out = Path(cfg.out)
    save_config(cfg, out)
    rows = []
    ckpt = checkpoint_id(outcome["train"]["checkpoint_sha256"])
    for probe, r in outcome["results"].items():
        row = {"probe": probe, "checkpoint": ckpt, "top1": round(r["top1"], 2), "top5": round(r["top5"], 2),
               "mean_class": round(r["mean_class"], 2)}
        if probe == "linear":
            row["setting"] = f"lr {r['best'].get('lr')}, wd {r['best'].get('wd')}"
        elif probe == "knn":
            row["setting"] = f"k {r['k']}, T {cfg.knn.temperature}"
        else:
            row["setting"] = f"{r['heads']} heads, {cfg.attentive.epochs} epochs"
        rows.append(row)
    tr, te = outcome["train"], outcome["test"]
    meta = {
        "benchmark": outcome["benchmark"],
        "encoder": tr["encoder"],
        "checkpoint_sha256": tr["checkpoint_sha256"],
        "feature_config_hash": tr["feature_config_hash"],
        "probe_config_hash": outcome["probe_config_hash"],
        "train": f"{tr['dataset']} [{tr['split']}], {outcome['num_train_videos']} videos",
        "test": f"{te['dataset']} [{te['split']}], {outcome['num_test_videos']} videos",
        "classes": outcome["classes"],
        "padded_videos": {k: (v or {}).get("count") for k, v in (outcome.get("padding") or {}).items()},
        "padding": outcome.get("padding"),
        "metrics": "percent; views combined per video (softmax mean / kNN votes summed)",
        "chance level (%)": round(100.0 / len(outcome["classes"]), 2),
        "notes": list(outcome.get("notes", [])),
        "details": outcome["results"],
        "config": to_dict(cfg),
    }
    footnotes = ["checkpoint: random:<seed> = random weights (a baseline, not a trained encoder), none = no "
                 "weights (a hand-designed encoder), else the first 12 hex digits of the weights' sha256",
                 *meta["notes"]]
    return write_table(rows, out / "probe", f"Probes: {tr['encoder']} on {outcome['benchmark']}", meta=meta,
                       footnotes=footnotes)
