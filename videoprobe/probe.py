"""Action-recognition probes on cached video features: any probe of the table ``common.probes.PROBES``
(linear, kNN, attentive, logreg), each with its settings in the config section of its name.

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
* logreg: ``common.probes.logreg``: L-BFGS logistic regression, C chosen on held-out training videos.

A probe's rows are per-view features (``ProbeSpec.rows == "features"``) or per-crop token sequences
(``"tokens"``), grouped by video; an unknown probe name is a ``ConfigError`` naming the known ones.

``classes`` restricts both splits to a subset of classes (relabelled 0..K'-1): a list of names, or
"appearance" / "motion" from a ``classes.json`` (the generated dataset writes one).

``seeds=[0,1,2]`` runs the linear and attentive probes once per seed (held-out selection videos, data
order, the attentive probe's initialisation; kNN has no randomness and runs once). Every metric is
reported as the mean over seeds, the standard deviation (ddof=1, two or more seeds) and a 95 %
percentile-bootstrap interval over test videos (``n_boot`` resamples with replacement, seed
``bootstrap_seed``; each resample's metric is averaged over seeds).

Evaluation source (``eval_source``): ``cache`` reads ``test_cache``; ``stream`` rebuilds the extraction
recorded in the training cache (encoder, weights, views; checked against its cache key), points it at
``eval_split`` and decodes and encodes each test video on the fly, applying every trained probe (each
seed's) to its views and summing their class scores per video, so the test features are never written
(torchrun: videos sharded over ranks, scores summed, rank 0 writes the report); ``auto`` streams when
``test_cache`` holds no cache. Streamed features are cast to the cache dtype first (tokens to the token
dtype), so both sources give the same numbers. The attentive probe can also skip the token cache for
training: ``videoprobe tune --config configs/video/attentive_online.yaml`` trains it on live clips.
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
import torch

from common.cache import FeatureCache
from common.config import config_hash, save_config, to_dict
from common.errors import CacheError, ConfigError, InputError
from common.probes.attentive import AttentiveConfig
from common.probes.data import ProbeData
from common.probes.knn import KnnConfig
from common.probes.linear import LinearProbeConfig
from common.probes.logreg import LogRegConfig
from common.probes.registry import PROBES, configure, get_probe
from common.progress import progress
from common.stats import STD_DDOF, bootstrap_ci, format_spread, mean_std

log = logging.getLogger(__name__)

METRICS = ("top1", "top5", "mean_class")
# where the attentive probe goes when the cache holds no tokens (or the token budget refuses them)
ONLINE_HINT = ("extract with save_tokens=true for the attentive probe, or train it online on live clips "
               "with no token cache: videoprobe tune --config configs/video/attentive_online.yaml "
               "(method=decoder decoder.depth=1)")


def _per_video(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[int]]:
    """Predicted class and top-5 hit of every video from its (videos, K) summed probabilities / votes."""
    pred, top5 = [], []
    for p, y in zip(scores, labels):
        v = torch.from_numpy(np.asarray(p, dtype=np.float64))
        pred.append(int(v.argmax()))
        top5.append(int(int(y) in v.topk(min(5, v.numel())).indices.tolist()))
    return {"pred": pred, "top5": top5}


def video_metrics(labels: np.ndarray, pred: np.ndarray, top5: np.ndarray, num_classes: int) -> dict:
    """top1 / top5 / mean_class (percent) from per-video labels, predictions and top-5 hits."""
    from common.metrics import confusion_matrix, segmentation_metrics

    conf = confusion_matrix(np.asarray(pred), np.asarray(labels), num_classes)
    return {"top1": 100.0 * float(np.mean(np.asarray(pred) == np.asarray(labels))),
            "top5": 100.0 * float(np.mean(top5)),
            "mean_class": 100.0 * segmentation_metrics(conf)["mAcc"]}


# ------------------------------------------------------------------------------------------ config
def knn_defaults(**kw: Any) -> KnnConfig:
    """TWLV-I's kNN: k = 200, T = 0.1, one mean vector per training video, votes summed over a test
    video's views (``kw`` overrides)."""
    return dataclasses.replace(KnnConfig(ks=[200], temperature=0.1, bank="group", query="row"), **kw)


def attentive_defaults(**kw: Any) -> AttentiveConfig:
    """V-JEPA's frozen evaluation with num_heads = 0 (auto: the largest of 16/12/8/... dividing the
    token dim) (``kw`` overrides)."""
    return dataclasses.replace(AttentiveConfig(num_heads=0), **kw)


@dataclass
class ProbeConfig:
    train_cache: str = ""  # cache folder of the training split (`videoprobe extract`)
    test_cache: str = ""  # cache folder of the test split
    out: str = ""  # output folder: probe.md, probe.json, config.yaml
    probes: list[str] = field(default_factory=lambda: ["linear", "knn"])  # linear, knn, attentive, logreg
    classes: str = "all"  # all | appearance | motion | comma-separated class names
    classes_file: str | None = None  # classes.json; default: <dataset root>/classes.json
    benchmark: str = ""  # a name for the records (default: the train cache's dataset)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)  # linear probe (lr x wd sweep)
    knn: KnnConfig = field(default_factory=knn_defaults)  # kNN settings (TWLV-I recipe)
    attentive: AttentiveConfig = field(default_factory=attentive_defaults)  # attentive probe (V-JEPA style)
    logreg: LogRegConfig = field(default_factory=LogRegConfig)  # L-BFGS logistic regression (C sweep)
    seed: int = 0  # seed of the probes
    seeds: list[int] = field(default_factory=list)  # several seeds (mean ± std); empty = [seed]
    n_boot: int = 1000  # bootstrap resamples of the test videos (95 % interval)
    bootstrap_seed: int = 0  # seed of the bootstrap resampling
    allow_select_on_test: bool = False  # allow the same cache / split for training (selection) and test
    # cache: read test_cache; stream: run the encoder recorded in train_cache on every video of eval_split and
    # apply every trained probe on the fly (no test features written; torchrun: videos sharded over ranks);
    # auto: stream when test_cache is unset or holds no cache
    eval_source: str = "cache"
    eval_split: str = "test"  # stream: the split of the dataset recorded in the training cache
    data_root: str = ""  # stream: the dataset folder (default: data.root recorded by `videoprobe extract`)
    encoder_device: str = "auto"  # stream: device of the encoder (auto | cpu | cuda)
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
            raise CacheError(f"{self.cache.path}: item {item!r} has no tokens; {ONLINE_HINT}") from None


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
    """One row per view (features), grouped by video."""
    chunks = [(split.features(i), np.full(split.cache.n(i), y)) for i, y in zip(split.ids, split.labels)]
    return ProbeData(chunks, groups=list(range(len(split.ids))), names=split.ids)


def _sequences(split: VideoSplit, item: str) -> np.ndarray:
    """(crops, num_clips * N, D) token sequences of one video (the clips of one crop concatenated)."""
    return crop_sequences(split.tokens(item), int(split.cache.meta.get("crops_per_clip", 1) or 1))


def crop_sequences(tok: np.ndarray, crops: int) -> np.ndarray:
    """(crops, num_clips * N, D) token sequences from a video's (V, T', H', W', D) tokens (views
    clip-major; the clips of one crop concatenated)."""
    v, d = tok.shape[0], tok.shape[-1]
    if v % crops:
        crops = 1
    tok = tok.reshape(v // crops, crops, -1, d).transpose(1, 0, 2, 3)  # (crops, clips, N, D)
    return np.ascontiguousarray(tok.reshape(crops, -1, d))


def _token_data(split: VideoSplit) -> ProbeData:
    """One row per spatial crop: the tokens of a video's temporal clips concatenated, grouped by video."""
    seqs = [_sequences(split, i) for i in split.ids]
    lengths = {s.shape[1] for s in seqs}
    if len(lengths) != 1:
        raise InputError(split.cache.path, f"token sequences differ in length ({sorted(lengths)[:4]})")
    return ProbeData([(s, np.full(s.shape[0], y)) for s, y in zip(seqs, split.labels)],
                     groups=list(range(len(seqs))), names=split.ids)


ROWS = {"features": _probe_data, "tokens": _token_data}  # ProbeSpec.rows -> the rows of a split


def fit_probe(name: str, train: VideoSplit, probe_cfg: Any, seed: int = 0, device: str = "cpu",
              progress: bool = True) -> Any:
    """The table probe ``name`` trained on ``train`` (its result object)."""
    spec = get_probe(name, task="classification")
    pcfg = configure(probe_cfg, num_classes=len(train.class_names), task="classification", view_average=True,
                     seed=seed, device=device, progress=progress)
    return spec.fit(ROWS[spec.rows](train), None, pcfg, train.class_names)


def scores_record(result: Any, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What :func:`run_probe` returns, from per-video class scores (videos, K) (summed softmax / votes over
    a video's views): the streamed path's scores of one trained probe."""
    per_video = _per_video(scores, labels)
    m = video_metrics(labels, np.asarray(per_video["pred"]), np.asarray(per_video["top5"]), scores.shape[1])
    return {**m, **result.summary(), "trainable_params": result.trainable_params,
            "notes": list(result.meta.get("notes", [])), "per_video": per_video}


def run_probe(name: str, train: VideoSplit, test: VideoSplit, probe_cfg: Any, seed: int = 0,
              device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Fit the table probe ``name`` (``common.probes.PROBES``) on ``train``, score ``test``: percentages,
    the probe's summary (``setting`` ...), notes, and per-video predictions (views combined: softmax
    probabilities averaged, kNN votes summed)."""
    result = fit_probe(name, train, probe_cfg, seed, device, progress)
    te = ROWS[get_probe(name, task="classification").rows](test)
    ev = result.evaluate(te, view_average=True, device=device)
    notes = list(ev.get("notes") or result.meta.get("notes", []))
    return {"top1": 100.0 * ev["top1"], "top5": 100.0 * ev["top5"], "mean_class": 100.0 * ev["mean_class"],
            **result.summary(), "trainable_params": result.trainable_params, "notes": notes,
            "per_video": _per_video(result.group_scores(te), test.labels)}


# --------------------------------------------------------------------------------------------- run
def _record(cache: FeatureCache) -> dict[str, Any]:
    return {"encoder": cache.key.encoder, "checkpoint_sha256": cache.key.checkpoint_sha256,
            "feature_config_hash": cache.key.config_hash, "dataset": cache.key.dataset,
            "split": cache.key.split, "items": len(cache)}


def eval_source(cfg: ProbeConfig) -> str:
    """``cache`` or ``stream``: ``cfg.eval_source`` with ``auto`` resolved (stream without a test cache)."""
    if cfg.eval_source not in ("cache", "stream", "auto"):
        raise ConfigError(f"config key 'eval_source': expected cache, stream or auto, "
                          f"got {cfg.eval_source!r}")
    if cfg.eval_source == "auto":
        return "cache" if cfg.test_cache and FeatureCache.exists(cfg.test_cache) else "stream"
    return cfg.eval_source


def _check_tokens(probes: list[str], train: VideoSplit) -> None:
    """A token probe (attentive) on a cache without tokens stops before anything trains, with the hint."""
    if any(PROBES[p].rows == "tokens" for p in probes):
        train.tokens(train.ids[0])


def run_probes(cfg: ProbeConfig) -> dict[str, Any]:
    """Train and evaluate every probe in ``cfg.probes``; returns {probe: scores} plus records. The test
    split is read from ``test_cache`` or streamed (``eval_source``, see :func:`stream_scores`)."""
    if not cfg.probes:
        raise ConfigError(f"probes must be a non-empty list of {', '.join(PROBES)}; got {cfg.probes}")
    for p in cfg.probes:
        get_probe(p, task="classification")  # an unknown name: one ConfigError naming the known ones
    source = eval_source(cfg)
    if not cfg.train_cache or (source == "cache" and not cfg.test_cache):
        raise ConfigError("train_cache and test_cache must both be set (or eval_source=stream: the test "
                          "split is read live, no test cache)")
    train_cache = FeatureCache(cfg.train_cache)
    test_cache = FeatureCache(cfg.test_cache) if source == "cache" else None
    if test_cache is not None:
        _check_same_features(train_cache.key, test_cache.key, cfg.test_cache, cfg.train_cache)
    seeds = list(cfg.seeds) or [cfg.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config key 'seeds' repeats a seed: {seeds}")
    names = list(train_cache.meta.get("class_names") or [])
    kinds = _kinds_file(cfg, train_cache) if cfg.classes in ("appearance", "motion") else None
    keep = select_classes(cfg.classes, names, kinds)
    if test_cache is None:
        return _run_streamed(cfg, train_cache, keep, seeds)
    selection = check_selection_split(cfg, train_cache, test_cache)
    train = load_split(cfg.train_cache, keep, names)
    _check_tokens(cfg.probes, train)
    test = load_split(cfg.test_cache, keep, list(test_cache.meta.get("class_names") or names))
    from common.probes.notes import top5_notes

    results: dict[str, Any] = {}
    notes = top5_notes(len(keep))
    per_video: dict[str, Any] = {}
    for probe in cfg.probes:
        t0 = time.perf_counter()
        run_seeds = seeds if PROBES[probe].seeded else seeds[:1]  # kNN has no randomness: one run
        section = getattr(cfg, probe, None) or PROBES[probe].config_class()  # a new table probe: defaults
        runs = [run_probe(probe, train, test, section, seed, cfg.device, cfg.progress)
                for seed in run_seeds]
        res, per_video[probe] = aggregate_seeds(runs, run_seeds, test.labels, len(keep), cfg.n_boot,
                                                cfg.bootstrap_seed)
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
        "seeds": seeds,
        "selection": selection,
        "test_class_histogram": [int(v) for v in np.bincount(test.labels, minlength=len(keep))],
        "per_video": per_video,
        "eval_source": "cache",
    }


def _check_same_features(train: Any, test: Any, test_path: Any, train_path: Any) -> None:
    for f in ("encoder", "checkpoint_sha256", "config_hash"):
        if getattr(train, f) != getattr(test, f):
            raise CacheError(f"{test_path}: {f} differs from the train cache {train_path} "
                             "(features of different encoders / settings)")


# ------------------------------------------------------------------------------ streamed evaluation
@dataclass
class StreamSplit:
    """The evaluation split read live: the extraction recorded in the training cache, pointed at
    ``eval_split``; its videos of the kept classes, their labels (relabelled into ``class_names``), the
    rebuilt encoder and the clip recipe."""

    ecfg: Any  # videoprobe.extract.ExtractConfig
    items: list[Any]  # VideoItem, sorted by id
    labels: np.ndarray
    class_names: list[str]
    key: Any  # the CacheKey these features would have in a cache
    encoder: Any
    spec: Any  # ClipSpec
    device: Any

    @property
    def ids(self) -> list[str]:
        return [it.video_id for it in self.items]


def open_stream(cfg: ProbeConfig, train_cache: FeatureCache, keep: list[str]) -> StreamSplit:
    """Rebuild the training cache's encoder and views for ``cfg.eval_split`` and check that they give the
    training cache's features (same encoder, weights and feature config), before anything is encoded."""
    from common import dist
    from common.config import from_dict
    from videoprobe.data.transforms import ClipSpec
    from videoprobe.extract import ExtractConfig, build_encoder, feature_key, load_items, resolve_views

    recorded = train_cache.meta.get("config")
    if not isinstance(recorded, dict):
        raise InputError(train_cache.path, "the cache records no extract config (written by an older "
                         "`videoprobe extract`?): streamed evaluation cannot rebuild its encoder")
    ecfg = from_dict(ExtractConfig, recorded)
    ecfg.data.split = cfg.eval_split
    if cfg.data_root:
        ecfg.data.root = cfg.data_root
    items, names = load_items(ecfg.data)
    index = {c: k for k, c in enumerate(keep)}
    chosen = [(it, index[names[it.label]]) for it in items if 0 <= it.label < len(names)
              and names[it.label] in index]
    if not chosen:
        raise InputError(ecfg.data.root, f"no '{cfg.eval_split}' videos of the selected classes "
                         f"({', '.join(keep[:5])}...)")
    device = dist.pick_device(cfg.encoder_device)
    enc = build_encoder(ecfg.encoder).freeze().to(device)
    views = resolve_views(ecfg.views, enc)
    key = feature_key(ecfg, enc, views)
    _check_same_features(train_cache.key, key, f"{ecfg.data.root} [{cfg.eval_split}] (streamed)",
                         cfg.train_cache)
    return StreamSplit(ecfg, [it for it, _ in chosen], np.array([y for _, y in chosen], dtype=np.int64),
                       list(keep), key, enc, ClipSpec(backend=ecfg.data.backend, **views), device)


def stream_scores(stream: StreamSplit, fits: list[tuple[str, Any]], rank_: int | None = None,
                  world_: int | None = None) -> tuple[np.ndarray, dict[str, str]]:
    """(fits, videos, K) class scores of every trained probe in ``fits`` ((probe name, result) pairs) on
    every video of the streamed split, and {video id: error} of the videos that failed to decode (their
    scores stay zero). Each video is decoded and encoded as ``videoprobe extract`` would (same clips,
    features cast to the cache dtype, tokens to the token dtype), its rows go through every probe at
    once, and nothing is written. Each rank takes its ``common.dist.shard`` of the videos (``rank_`` /
    ``world_`` override it, for tests); under torchrun the scores are summed and the failures gathered
    over ranks."""
    from common import dist
    from videoprobe.data.datasets import ClipDataset, collate_items
    from videoprobe.extract import encode_views

    ecfg, spec = stream.ecfg, stream.spec
    k = len(stream.class_names)
    scores = np.zeros((len(fits), len(stream.items), k), dtype=np.float64)
    failures: dict[str, str] = {}
    rows = [PROBES[name].rows for name, _ in fits]
    want_tokens = "tokens" in rows
    mine = dist.shard(list(range(len(stream.items))), rank_, world_)
    ds = ClipDataset([stream.items[g] for g in mine], spec, ecfg.encoder.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, num_workers=ecfg.num_workers,
                                         collate_fn=collate_items)
    desc = f"stream {ecfg.data.split}" + (f" (rank {dist.rank()})" if dist.is_distributed() else "")
    for g, (rec,) in progress(zip(mine, loader), total=len(mine), desc=desc, unit="video"):
        if rec["error"] is not None:
            failures[rec["video_id"]] = str(rec["error"])
            continue
        pooled, tokens = encode_views(stream.encoder, rec["video"], ecfg.batch_size, stream.device,
                                      want_tokens, ecfg.token_grid, ecfg.precision)
        y = int(stream.labels[g])
        feats = pooled.numpy().astype(ecfg.dtype).astype(np.float32)  # what the cache would hand back
        data = {"features": ProbeData([(feats, np.full(len(feats), y))], groups=[0], names=[rec["video_id"]])}
        if want_tokens:
            assert tokens is not None
            seq = crop_sequences(tokens.numpy().astype(ecfg.tokens_dtype).astype(np.float32),
                                 spec.crops_per_clip)
            data["tokens"] = ProbeData([(seq, np.full(len(seq), y))], groups=[0], names=[rec["video_id"]])
        for f, (_, result) in enumerate(fits):
            scores[f, g] = result.group_scores(data[rows[f]])[0]
    if dist.is_distributed() and rank_ is None:
        scores = dist.all_reduce_tensor(torch.from_numpy(scores)).numpy()
        for part in dist.all_gather_object(failures):
            failures.update(part)
    return scores, failures


def _run_streamed(cfg: ProbeConfig, train_cache: FeatureCache, keep: list[str],
                  seeds: list[int]) -> dict[str, Any]:
    """:func:`run_probes` with the test split streamed: every probe (and seed) is trained first, then one
    pass over the evaluation videos scores them all."""
    from types import SimpleNamespace

    from common import dist
    from common.probes.notes import top5_notes

    dist.init_from_env()  # the evaluation videos are sharded over torchrun ranks
    names = list(train_cache.meta.get("class_names") or [])
    train = load_split(cfg.train_cache, keep, names)
    _check_tokens(cfg.probes, train)
    stream = open_stream(cfg, train_cache, keep)
    selection = check_selection_split(cfg, train_cache, SimpleNamespace(key=stream.key))
    fits: list[tuple[str, int, Any]] = []
    seconds: dict[str, float] = {}
    for probe in cfg.probes:
        t0 = time.perf_counter()
        section = getattr(cfg, probe, None) or PROBES[probe].config_class()
        for seed in (seeds if PROBES[probe].seeded else seeds[:1]):
            result = fit_probe(probe, train, section, seed, cfg.device, cfg.progress)
            fits.append((probe, seed, dist.broadcast_object(result)))  # every rank applies rank 0's probes
        seconds[probe] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, failures = stream_scores(stream, [(p, r) for p, _, r in fits])
    stream_s = time.perf_counter() - t0
    ok = [g for g, v in enumerate(stream.ids) if v not in failures]
    if not ok:
        raise InputError(stream.ecfg.data.root, f"no '{cfg.eval_split}' video could be evaluated: "
                         f"{next(iter(failures.values()), 'no videos')}")
    labels = stream.labels[ok]
    results: dict[str, Any] = {}
    notes = top5_notes(len(keep))
    notes += [f"{cfg.eval_split} video {v} not evaluated: {e}" for v, e in sorted(failures.items())]
    per_video: dict[str, Any] = {}
    for probe in cfg.probes:
        idx = [f for f, (p, _, _) in enumerate(fits) if p == probe]
        runs = [scores_record(fits[f][2], scores[f][ok], labels) for f in idx]
        res, per_video[probe] = aggregate_seeds(runs, [fits[f][1] for f in idx], labels, len(keep),
                                                cfg.n_boot, cfg.bootstrap_seed)
        res["seconds"] = round(seconds[probe], 3)
        results[probe] = res
        notes += [f"{probe}: {n}" for n in res.get("notes", [])]
        log.info("%s: top1 %.2f  top5 %.2f  mean-class %.2f (streamed)", probe, res["top1"], res["top5"],
                 res["mean_class"])
    key = stream.key
    return {
        "results": results,
        "train": _record(train_cache),
        "test": {"encoder": key.encoder, "checkpoint_sha256": key.checkpoint_sha256,
                 "feature_config_hash": key.config_hash, "dataset": key.dataset, "split": key.split,
                 "items": len(ok)},
        "classes": keep,
        "num_train_videos": len(train.ids),
        "num_test_videos": len(ok),
        "benchmark": cfg.benchmark or train_cache.key.dataset,
        "probe_config_hash": config_hash(cfg),
        "padding": {"train": train_cache.meta.get("padding"), "test": None},
        "notes": notes,
        "seeds": seeds,
        "selection": selection,
        "test_class_histogram": [int(v) for v in np.bincount(labels, minlength=len(keep))],
        "per_video": per_video,
        "eval_source": "stream",
        "stream": {"videos": len(stream.items), "failed": failures, "seconds": round(stream_s, 3),
                   "world_size": dist.world_size()},
    }


def check_selection_split(cfg: ProbeConfig, train: FeatureCache, test: FeatureCache) -> dict[str, Any]:
    """Where the linear head is chosen (held-out training videos), and whether that is the test split:
    the same cache folder, or the same dataset and split name. Refused unless allow_select_on_test."""
    vf = cfg.linear.val_fraction
    where = f"{train.key.dataset} [{train.key.split}]"
    selected_on = (f"held-out {vf:g} of the training videos ({where})" if vf > 0
                   else f"the training videos themselves ({where})")
    same = ((bool(cfg.test_cache) and Path(cfg.train_cache).resolve() == Path(cfg.test_cache).resolve())
            or (bool(test.key.split) and (train.key.dataset, train.key.split)
                == (test.key.dataset, test.key.split)))
    if same and not cfg.allow_select_on_test:
        raise ConfigError(f"train_cache and test_cache hold the same split ({test.key.dataset} "
                          f"[{test.key.split}]): probes would be chosen on the test split; set "
                          "allow_select_on_test=true to do it anyway")
    if train.key.split == "test" and not cfg.allow_select_on_test:
        raise ConfigError(f"{cfg.train_cache}: the training cache is a 'test' split: probes would be trained "
                          "and chosen on it; set allow_select_on_test=true to do it anyway")
    if same:
        log.warning("the test split %s [%s] is also the selection split (allow_select_on_test=true): "
                    "its numbers are optimistic", test.key.dataset, test.key.split)
    else:
        log.info("linear head selection on %s; kNN and attentive settings are fixed (no selection); "
                 "test on %s [%s]", selected_on, test.key.dataset, test.key.split)
    return {"selected_on": selected_on, "eval_is_selection_split": same}


def aggregate_seeds(runs: list[dict[str, Any]], seeds: list[int], labels: np.ndarray, num_classes: int,
                    n_boot: int, boot_seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One result from the per-seed results (metrics: means over seeds; one seed: its values) with
    ``spread[metric] = {mean, std, ci, per_seed}``; and the per-video predictions of every seed."""
    res = {k: v for k, v in runs[0].items() if k != "per_video"}
    pred = np.array([r["per_video"]["pred"] for r in runs], dtype=np.int64).T  # (videos, seeds)
    top5 = np.array([r["per_video"]["top5"] for r in runs], dtype=np.int64).T
    stacked = np.concatenate([np.asarray(labels, dtype=np.int64)[:, None], pred, top5], axis=1)
    s = len(runs)
    res["seeds"] = list(seeds)
    res["spread"] = {}
    for m in METRICS:
        mean, std = mean_std([r[m] for r in runs])

        def stat(sample: np.ndarray, m: str = m) -> float:
            return float(np.mean([video_metrics(sample[:, 0], sample[:, 1 + j], sample[:, 1 + s + j],
                                                num_classes)[m] for j in range(s)]))

        ci = bootstrap_ci(stacked, stat, n_boot=n_boot, seed=boot_seed)
        res[m] = mean
        res["spread"][m] = {"mean": mean, "std": std, "ci": list(ci), "per_seed": [r[m] for r in runs]}
    if s > 1:
        res["per_seed"] = [{"seed": sd, **{k: v for k, v in r.items() if k != "per_video"}}
                           for sd, r in zip(seeds, runs)]
    videos = {"labels": [int(v) for v in labels], "seeds": list(seeds),
              "pred": pred.T.tolist(), "top5": top5.T.tolist()}
    return res, videos


def write_probe_report(cfg: ProbeConfig, outcome: dict[str, Any]) -> tuple[Path, Path]:
    """``probe.md`` / ``probe.json`` (one row per probe) and the resolved ``config.yaml`` in ``cfg.out``."""
    from common.report import checkpoint_id, write_table

    if not cfg.out:
        raise ConfigError("out is not set (the report folder)")
    out = Path(cfg.out)
    save_config(cfg, out)
    rows, md_rows = [], []
    ckpt = checkpoint_id(outcome["train"]["checkpoint_sha256"])
    for probe, r in outcome["results"].items():
        row = {"probe": probe, "checkpoint": ckpt, "top1": round(r["top1"], 2), "top5": round(r["top5"], 2),
               "mean_class": round(r["mean_class"], 2), "setting": r["setting"]}
        md = dict(row)
        for m in METRICS:
            sp = (r.get("spread") or {}).get(m)
            if sp:
                row[f"{m} std"] = sp["std"]
                row[f"{m} ci_low"], row[f"{m} ci_high"] = sp["ci"]
                md[m] = format_spread(r[m], sp["std"], sp["ci"])
        row["seeds"] = md["seeds"] = r.get("seeds", [cfg.seed])
        rows.append(row)
        md_rows.append(md)
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
        "num_classes": len(outcome["classes"]),
        "test_class_histogram": outcome.get("test_class_histogram"),
        "seeds": outcome.get("seeds", [cfg.seed]),
        "std_ddof": STD_DDOF if len(outcome.get("seeds", [cfg.seed])) > 1 else None,
        "bootstrap": {"n_boot": cfg.n_boot, "seed": cfg.bootstrap_seed, "level": 0.95,
                      "resampled": "test videos"},
        "selected_on": (outcome.get("selection") or {}).get("selected_on"),
        "eval_is_selection_split": (outcome.get("selection") or {}).get("eval_is_selection_split"),
        "eval_source": outcome.get("eval_source", "cache"),
        "stream": outcome.get("stream"),
        "notes": list(outcome.get("notes", [])),
        "details": outcome["results"],
        "config": to_dict(cfg),
    }
    n_seeds = len(meta["seeds"])
    footnotes = ["checkpoint: random:<seed> = random weights (a baseline, not a trained encoder), none = no "
                 "weights (a hand-designed encoder), else the first 12 hex digits of the weights' sha256",
                 ("metrics: " + (f"mean ± standard deviation over {n_seeds} seeds (ddof=1; kNN: one run, "
                                 "it has no randomness)" if n_seeds > 1 else "one seed") +
                  f" [95 % percentile-bootstrap interval over the test videos, {cfg.n_boot} resamples, "
                  f"bootstrap seed {cfg.bootstrap_seed}]"),
                 *meta["notes"]]
    lin = outcome["results"].get("linear") or {}
    if lin.get("history"):  # the first seed's chosen head, per epoch
        from common.curves import write_probe_curves

        sd = (lin.get("seeds") or [cfg.seed])[0]
        write_probe_curves(lin["history"], out, "curves_linear",
                           title=f"linear probe (seed {sd}), chosen head")
    if outcome.get("per_video"):
        import json as _json

        from common.report import jsonable

        (out / "per_video.json").write_text(_json.dumps(jsonable(outcome["per_video"])) + "\n")
    return write_table(rows, out / "probe", f"Probes: {tr['encoder']} on {outcome['benchmark']}", meta=meta,
                       footnotes=footnotes, md_rows=md_rows)
