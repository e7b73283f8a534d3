"""Action-recognition probes on cached video features: linear, kNN and attentive.

Inputs are two caches written by ``videoprobe extract`` (train and test split of one dataset, same
encoder). Every probe scores a test video by combining its views: the linear and attentive probes
average softmax probabilities over views, kNN sums neighbour votes over views (TWLV-I's recipe).
Reported: top-1, top-5 and mean-class accuracy, in percent.

* linear: ``common.probes.linear``: an (lr x wd) grid of linear heads trained in one pass, the best
  head chosen on a held-out part of the training videos (by video).
* knn: cosine similarity on L2-normalised features, ``k`` neighbours weighted exp(sim / T)
  (TWLV-I: k = 200, T = 0.1); the bank holds one vector per training video (mean of its views) or
  every view.
* attentive: V-JEPA's frozen-evaluation probe on the cached tokens: one learned query, one
  cross-attention block (q += xattn(q, LN(tokens)); q += mlp(LN(q))) and a linear classifier; the
  tokens of a video's temporal clips are concatenated (one sequence per spatial crop); AdamW with a
  cosine schedule.

``classes`` restricts both splits to a subset of classes (relabelled 0..K'-1): a list of names, or
"appearance" / "motion" from a ``classes.json`` (the generated dataset writes one).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.cache import FeatureCache
from common.config import config_hash, save_config, to_dict
from common.errors import CacheError, ConfigError, InputError
from common.metrics import mean_class_accuracy, topk_accuracy
from common.probes.linear import LinearProbeConfig, ProbeData, evaluate_linear_probe, train_linear_probe

log = logging.getLogger(__name__)

PROBES = ("linear", "knn", "attentive")


# ------------------------------------------------------------------------------------------ config
@dataclass
class KnnConfig:
    k: int = 200
    temperature: float = 0.1
    bank: str = "video"  # "video": one mean vector per training video | "view": every view
    query: str = "view"  # "view": votes summed over a test video's views | "video": its mean vector
    standardize: bool = False  # z-score with the bank statistics before L2 (mixed scales)


@dataclass
class AttentiveConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    num_heads: int = 0  # 0: the largest of 16, 12, 8, 6, 4, 3, 2, 1 dividing the token dim
    mlp_ratio: float = 4.0


@dataclass
class ProbeConfig:
    train_cache: str = ""
    test_cache: str = ""
    out: str = ""
    probes: list[str] = field(default_factory=lambda: ["linear", "knn"])
    classes: str = "all"  # all | appearance | motion | comma-separated class names
    classes_file: str | None = None  # classes.json; default: <dataset root>/classes.json
    benchmark: str = ""  # a name for the records (default: the train cache's dataset)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    attentive: AttentiveConfig = field(default_factory=AttentiveConfig)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


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
    """Open a cache and keep the videos whose class is in ``keep`` (None: all), relabelled."""
    cache = FeatureCache(path)
    names = class_names or list(cache.meta.get("class_names") or [])
    if not names:
        raise CacheError(f"{cache.path}: no class_names in the cache meta")
    keep = keep or names
    remap = {names.index(c): i for i, c in enumerate(keep)}
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


def _scores(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    acc = topk_accuracy(torch.from_numpy(scores), torch.from_numpy(labels), ks=(1, 5))
    return {
        "top1": 100.0 * acc["top1"],
        "top5": 100.0 * acc["top5"],
        "mean_class": 100.0 * mean_class_accuracy(scores.argmax(1), labels, num_classes),
    }


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
    }


# --------------------------------------------------------------------------------------------- kNN
# TODO(lead): switch to common.probes.knn when it lands (same recipe: cosine, top-k, exp(sim / T)).
def knn_scores(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
               k: int, temperature: float, chunk: int = 4096) -> torch.Tensor:
    """(M, K) class scores: sum over the top-``k`` cosine neighbours of exp(sim / T)."""
    q = F.normalize(query.float(), dim=1)
    b = F.normalize(bank.float(), dim=1)
    k = min(k, b.shape[0])
    out = torch.zeros(q.shape[0], num_classes)
    for s in range(0, q.shape[0], chunk):
        sim = q[s: s + chunk] @ b.T
        w, idx = sim.topk(k, dim=1)
        w = (w / temperature).exp()
        out[s: s + chunk].scatter_add_(1, bank_labels[idx], w)
    return out


def run_knn(train: VideoSplit, test: VideoSplit, cfg: KnnConfig) -> dict[str, Any]:
    """TWLV-I kNN: cosine on L2-normalised features, exp(sim / T) weights, votes summed over views."""
    if cfg.bank not in ("video", "view") or cfg.query not in ("video", "view"):
        raise ConfigError("knn.bank and knn.query must be 'video' or 'view'")
    bank, bank_y = [], []
    for i, y in zip(train.ids, train.labels):
        f = train.features(i)
        rows = f.mean(0, keepdims=True) if cfg.bank == "video" else f
        bank.append(rows)
        bank_y.append(np.full(rows.shape[0], y))
    bank_t = torch.from_numpy(np.concatenate(bank))
    bank_yt = torch.from_numpy(np.concatenate(bank_y)).long()
    mean, std = bank_t.mean(0), bank_t.std(0).clamp_min(1e-6)
    if cfg.standardize:
        bank_t = (bank_t - mean) / std
    k_cls = len(train.class_names)
    scores = np.zeros((len(test.ids), k_cls), dtype=np.float64)
    for n, item in enumerate(test.ids):
        f = test.features(item)
        q = torch.from_numpy(f.mean(0, keepdims=True) if cfg.query == "video" else f)
        if cfg.standardize:
            q = (q - mean) / std
        scores[n] = knn_scores(q, bank_t, bank_yt, k_cls, cfg.k, cfg.temperature).sum(0).double().numpy()
    out = _scores(scores, test.labels, k_cls)
    out["k"] = min(cfg.k, bank_t.shape[0])
    return out


# --------------------------------------------------------------------------------------- attentive
# TODO(lead): switch to common.probes.attentive when it lands (same V-JEPA design).
class AttentivePooler(nn.Module):
    """One learned query, one cross-attention block, a linear classifier (V-JEPA frozen evaluation)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.norm_kv(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1)
        q = q + self.attn(q, kv, kv, key_padding_mask=pad_mask, need_weights=False)[0]
        q = q + self.mlp(self.norm_q(q))
        return self.head(q[:, 0])


def _auto_heads(dim: int) -> int:
    return next(h for h in (16, 12, 8, 6, 4, 3, 2, 1) if dim % h == 0)


def _sequences(split: VideoSplit, item: str) -> torch.Tensor:
    """(crops, num_clips * N, D) token sequences of one video (clips of one crop concatenated)."""
    tok = split.tokens(item)  # (V, T', H', W', D)
    v, d = tok.shape[0], tok.shape[-1]
    crops = int(split.cache.meta.get("crops_per_clip", 1) or 1)
    if v % crops:
        crops = 1
    tok = tok.reshape(v // crops, crops, -1, d).transpose(1, 0, 2, 3)  # (crops, clips, N, D)
    return torch.from_numpy(np.ascontiguousarray(tok.reshape(crops, -1, d)))


def run_attentive(train: VideoSplit, test: VideoSplit, cfg: AttentiveConfig, seed: int = 0,
                  device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train the attentive probe on every training sequence; softmax averaged over a test video's crops."""
    xs, ys = [], []
    for item, y in zip(train.ids, train.labels):
        seqs = _sequences(train, item)
        xs.extend(seqs)
        ys.extend([int(y)] * seqs.shape[0])
    lengths = {x.shape[0] for x in xs}
    if len(lengths) != 1:
        raise InputError(train.cache.path, f"token sequences differ in length ({sorted(lengths)[:4]})")
    x_all = torch.stack(xs)
    y_all = torch.tensor(ys)
    dim, k_cls = x_all.shape[-1], len(train.class_names)
    heads = cfg.num_heads or _auto_heads(dim)
    if dim % heads:
        raise ConfigError(f"attentive.num_heads={heads} does not divide the token dim {dim}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AttentivePooler(dim, k_cls, heads, cfg.mlp_ratio).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x_all.shape[0]
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    model.train()
    for _ in tqdm(range(cfg.epochs), desc="attentive probe", disable=not progress or None, leave=False):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s: s + cfg.batch_size]
            loss = F.cross_entropy(model(x_all[idx].to(device)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    scores = np.zeros((len(test.ids), k_cls))
    with torch.no_grad():
        for i, item in enumerate(test.ids):
            seqs = _sequences(test, item).to(device)
            scores[i] = torch.softmax(model(seqs), dim=1).mean(0).cpu().numpy()
    out = _scores(scores, test.labels, k_cls)
    out["heads"] = heads
    return out


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
    results: dict[str, Any] = {}
    for probe in cfg.probes:
        t0 = time.perf_counter()
        if probe == "linear":
            lcfg = dataclasses.replace(cfg.linear, seed=cfg.seed, device=cfg.device, progress=cfg.progress)
            res = run_linear(train, test, lcfg)
        elif probe == "knn":
            res = run_knn(train, test, cfg.knn)
        else:
            res = run_attentive(train, test, cfg.attentive, cfg.seed, cfg.device, cfg.progress)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        results[probe] = res
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
    }


def write_probe_report(cfg: ProbeConfig, outcome: dict[str, Any]) -> tuple[Path, Path]:
    """``probe.md`` / ``probe.json`` (one row per probe) and the resolved ``config.yaml`` in ``cfg.out``."""
    from common.report import write_table

    if not cfg.out:
        raise ConfigError("out is not set (the report folder)")
    out = Path(cfg.out)
    save_config(cfg, out)
    rows = []
    for probe, r in outcome["results"].items():
        row = {"probe": probe, "top1": round(r["top1"], 2), "top5": round(r["top5"], 2),
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
        "metrics": "percent; views combined per video (softmax mean / kNN votes summed)",
        "details": outcome["results"],
        "config": to_dict(cfg),
    }
    return write_table(rows, out / "probe", f"Probes: {tr['encoder']} on {outcome['benchmark']}", meta=meta)
