"""Per-point features of ScanNet-layout scenes into a feature cache (one cache per split).

dataset (preprocessed layout) -> encoder (checkpoint, random init, or ``raw`` input features) ->
``common.cache`` with, per scene, ``features`` (N, D) and ``labels`` (N,). Resumable (scenes already
cached are skipped), sharded over torchrun ranks, bad scenes reported one line each and skipped.

Storage per split (``storage: {split: mode}``): ``full`` (every input point, the default), ``subsample``
(a labelled subsample of ``points_per_scene`` points per scene, drawn with a seed derived from
``subsample_seed`` and the scene name, optionally class-balanced; the cache item also holds ``index``,
the kept rows of the scene) or ``none`` (nothing written: ``pointprobe probe eval_source=stream``
evaluates such a split by running the encoder). The mode is part of the cache key and the manifest's
``meta.storage`` records it with the bytes of every scene.

GPU path: ``device_preprocess`` (auto: on CUDA) preprocesses each scene on the encoder's device
(``encode_points``); ``num_workers`` > 0 reads the next scenes in DataLoader worker processes while the
encoder runs (same order, same cache as 0, which reads each scene in the main process).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import dist
from common.cache import CacheKey, FeatureCache, fill_cache, update_meta
from common.config import config_hash, save_config
from common.errors import ConfigError, InputError
from pointprobe.models.encode import DEVICE_PREPROCESS, Preprocessing, center_shift
from pointprobe.models.registry import (
    RAW,
    EncoderRecord,
    PointEncoderConfig,
    build_encoder,
    encoder_identity,
)

log = logging.getLogger(__name__)


@dataclass
class PointDataConfig:
    root: str = "data/scannet"  # preprocessed layout: {split}/sceneXXXX_YY/*.npy
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  # one cache each: OUT/<split>
    label_set: str = "segment20"  # segment20 | segment200 (labels stored with the features)
    limit: int = 0  # at most this many scenes per split (0 = all)


@dataclass
class ExtractConfig:
    data: PointDataConfig = field(default_factory=PointDataConfig)  # which scenes
    encoder: PointEncoderConfig = field(default_factory=PointEncoderConfig)  # which encoder and weights
    out: str = "runs/features"  # output folder: one feature cache per split in OUT/<split>
    grid_size: float = 0.02  # voxel size in metres (Sonata: 0.02)
    sampling: str = "canonical"  # canonical | first | test (Pointcept test mode, k passes)
    grid_align: str = "world"  # voxel borders: world (multiples of g: the release) | min (floor((c-min)/g))
    dtype: str = "float16"  # features in the cache: float16 | float32
    device: str = "auto"  # auto | cpu | cuda
    max_points: int = 400_000  # larger scenes are encoded in spatial chunks
    tta: int = 1  # test-time augmentation: mean of features over this many views (see tta_views)
    # per split: full (every point) | subsample (labelled points_per_scene) | none (no cache: streamed eval)
    storage: dict = field(default_factory=dict)  # e.g. {train: subsample, val: none}; unlisted splits: full
    points_per_scene: int = 0  # subsample: labelled points kept per scene (0 = max_train_points / scenes)
    max_train_points: int = 2_000_000  # the probe's cap on training points the default above is sized from
    class_balanced: bool = False  # subsample: the same number of points of every class present (if it can)
    subsample_seed: int = 0  # subsample: seed (with the scene name) of the points kept
    num_workers: int = 0  # DataLoader processes reading the next scenes while one is encoded (0: in turn)
    device_preprocess: str = "auto"  # grid sampling etc. on the encoder device: auto (CUDA) | cpu | device

    @property
    def preprocessing(self) -> Preprocessing:
        """The recipe these keys name (passed to ``encode_points`` and hashed into the cache key)."""
        return Preprocessing(grid_size=self.grid_size, sampling=self.sampling, align=self.grid_align)


STORAGE_MODES = ("full", "subsample", "none")


def storage_mode(cfg: ExtractConfig, split: str) -> str:
    """The storage mode of ``split`` (``full`` when ``storage`` does not list it)."""
    for k in cfg.storage:
        if k not in cfg.data.splits:
            raise ConfigError(f"config key 'storage.{k}': '{k}' is not one of data.splits {cfg.data.splits}")
    mode = str(cfg.storage.get(split, "full"))
    if mode not in STORAGE_MODES:
        raise ConfigError(f"config key 'storage.{split}': expected one of {list(STORAGE_MODES)}, "
                          f"got {mode!r}")
    return mode


def points_per_scene(cfg: ExtractConfig, num_scenes: int) -> int:
    """Labelled points a subsampled split keeps per scene: ``points_per_scene`` or, when 0, the probe's
    ``max_train_points`` spread evenly over the scenes (at least 1)."""
    if cfg.points_per_scene < 0:
        raise ConfigError(f"config key 'points_per_scene': expected >= 0, got {cfg.points_per_scene}")
    if cfg.points_per_scene:
        return int(cfg.points_per_scene)
    if cfg.max_train_points <= 0:
        raise ConfigError("config keys 'points_per_scene' and 'max_train_points' are both 0: "
                          "a subsample needs a size")
    return max(1, -(-int(cfg.max_train_points) // max(1, num_scenes)))


def scene_seed(seed: int, name: str) -> int:
    """Seed of one scene's subsample: fixed by ``seed`` and the scene name (not by the rank or order)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def subsample_rows(labels: np.ndarray, k: int, seed: int, class_balanced: bool = False,
                   ignore_index: int = -1) -> np.ndarray:
    """Sorted indices of at most ``k`` labelled rows (label != ``ignore_index``) drawn with ``seed``.

    ``class_balanced``: each class present gets an equal share of ``k``; a class with fewer points gives
    its unused share to the others (water-filling), so ``min(k, labelled)`` rows are always kept."""
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(labels != ignore_index)
    if labelled.size <= k:
        return labelled.astype(np.int64)
    if not class_balanced:
        return np.sort(rng.choice(labelled, size=k, replace=False)).astype(np.int64)
    classes, counts = np.unique(labels[labelled], return_counts=True)
    quota = {}
    left, todo = k, len(classes)
    for c, n in sorted(zip(classes.tolist(), counts.tolist()), key=lambda t: (t[1], t[0])):
        q = min(n, left // todo)
        quota[c] = q
        left -= q
        todo -= 1
    for c in sorted(quota, key=lambda c: -int((labels[labelled] == c).sum())):  # rounding remainder
        n = int((labels[labelled] == c).sum())
        extra = min(left, n - quota[c])
        quota[c] += extra
        left -= extra
    picked = [rng.choice(labelled[labels[labelled] == c], size=quota[c], replace=False)
              for c in sorted(quota) if quota[c]]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def raw_features(coord: np.ndarray, color: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The input features themselves (the Sonata preprocessing without an encoder): 9 channels."""
    xyz = center_shift(coord.astype(np.float64)).astype(np.float32)
    return np.concatenate([xyz, color.astype(np.float32) / 255.0, normal.astype(np.float32)], 1)


def tta_views(n: int) -> list[tuple[float, bool]]:
    """(z-rotation in degrees, x-flip) of each test-time view: the identity first, then rotations by
    90 degree steps, then the same with the x axis mirrored (at most 8 views)."""
    if not 1 <= n <= 8:
        raise ConfigError(f"config key 'tta': expected 1..8 views, got {n}")
    views = [(90.0 * k, flip) for flip in (False, True) for k in range(4)]
    return views[:n]


def _augment(points: np.ndarray, angle_deg: float, flip: bool) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    out = points.astype(np.float64) @ rot.T
    if flip:
        out[:, 0] = -out[:, 0]
    return out.astype(np.float32)


def scene_features(model: Any, scene: Any, cfg: ExtractConfig, device: torch.device,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """(N, D) features of one scene (float16 for a float16 cache with one view, else float32); with
    ``cfg.tta`` > 1 the mean over augmented views. ``rows``: only those points' features (len(rows), D),
    equal to those rows of the full result (the encoder still sees the whole scene).

    A linear probe is affine, so its logits averaged over views (Sonata's test-time augmentation)
    equal its logits of the view-averaged features: averaging here gives exactly that protocol."""
    if model is None:
        raw = raw_features(scene.coord, scene.color, scene.normal)
        return raw if rows is None else raw[rows]
    from pointprobe.models import encode_points

    acc = None
    prep = cfg.preprocessing
    views = tta_views(cfg.tta)
    # a float16 cache with one view: encode straight to float16 (half the copy back from a GPU)
    out_dtype = torch.float16 if cfg.dtype == "float16" and len(views) == 1 else torch.float32
    for angle, flip in views:
        coord, normal = scene.coord, scene.normal
        if angle or flip:
            coord, normal = _augment(coord, angle, flip), _augment(normal, angle, flip)
        f = encode_points(model, coord, scene.color, normal, levels=cfg.encoder.levels, prep=prep,
                          device=device, max_points=cfg.max_points, source=scene.name,
                          out_dtype=out_dtype, device_preprocess=cfg.device_preprocess,
                          rows=rows).numpy()
        if len(views) == 1:
            return f  # as encoded (a float16 division by 1 is a slow emulated pass over N x D)
        acc = f if acc is None else acc + f
    return acc / len(views)


@dataclass
class LoadedScene:
    """A scene read ahead by a DataLoader worker: its arrays and labels, or the ``InputError`` that
    reading it raised (path, problem), raised again in the main process so the scene is reported."""

    name: str
    scene: Any = None
    labels: np.ndarray | None = None
    error: tuple[str | None, str] | None = None


class SceneReader(torch.utils.data.Dataset):
    """The scenes ``names`` of ``root/split`` as :class:`LoadedScene` items (for DataLoader workers)."""

    def __init__(self, root: str, split: str, names: list[str], label_set: str) -> None:
        self.root, self.split, self.names, self.label_set = root, split, list(names), label_set

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> LoadedScene:
        from pointprobe.data.scannet import load_scene

        name = self.names[i]
        try:
            scene = load_scene(Path(self.root) / self.split / name)
            return LoadedScene(name, scene, scene.labels(self.label_set))
        except InputError as e:
            return LoadedScene(name, error=(e.path, e.problem))


def _one(batch: list[Any]) -> Any:
    return batch[0]


def read_ahead(cfg: ExtractConfig, split: str) -> Any:
    """``prefetch`` for ``fill_cache``: the scenes still to do, in order, read by ``cfg.num_workers``
    DataLoader workers while the main process encodes (None with 0 workers: compute reads each scene)."""
    if cfg.num_workers < 0:
        raise ConfigError(f"config key 'num_workers': expected >= 0, got {cfg.num_workers}")
    if cfg.num_workers == 0:
        return None

    def prefetch(todo: list[str]) -> Any:
        if not todo:
            return
        loader = torch.utils.data.DataLoader(
            SceneReader(cfg.data.root, split, todo, cfg.data.label_set), batch_size=1, shuffle=False,
            num_workers=min(cfg.num_workers, len(todo)), collate_fn=_one)
        yield from loader

    return prefetch


def feature_dim(model: Any, levels: int | None) -> int:
    return 9 if model is None else int(model.feature_dim(levels))


def storage_key(cfg: ExtractConfig, split: str, num_scenes: int) -> dict | None:
    """What the cache key records of a split's storage (None for ``full``: the keys of full caches are
    those written before storage modes existed)."""
    mode = storage_mode(cfg, split)
    if mode != "subsample":
        return None
    return {"mode": mode, "points_per_scene": points_per_scene(cfg, num_scenes),
            "class_balanced": bool(cfg.class_balanced), "seed": int(cfg.subsample_seed)}


def cache_key(rec: EncoderRecord, cfg: ExtractConfig, split: str, num_scenes: int = 0) -> CacheKey:
    """The key of a split's cache: encoder identity, the preprocessing recipe (``Preprocessing.key``),
    up-cast levels and test-time views, the storage mode when not full, dataset and split."""
    raw = rec.name == RAW
    prep = {**cfg.preprocessing.key(raw=raw), "levels": rec.levels,
            "tta": [] if raw else [list(v) for v in tta_views(cfg.tta)]}
    st = storage_key(cfg, split, num_scenes)
    if st is not None:
        prep["storage"] = st
    return CacheKey(encoder=rec.name, checkpoint_sha256=rec.checkpoint_sha256,
                    config_hash=config_hash({"encoder": rec.config, "levels": rec.levels}),
                    preprocessing=prep, dataset=str(Path(cfg.data.root).resolve()), split=split)


def scene_rows(root: str, split: str, name: str) -> int | None:
    """Points of a scene from its ``coord.npy`` header (None when unreadable)."""
    try:
        return int(np.load(Path(root) / split / name / "coord.npy", mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return None


def bytes_per_row(dim: int, dtype: str, mode: str) -> int:
    """Cache bytes of one stored point: its features, its int64 label and, subsampled, its int64 index."""
    return dim * np.dtype(dtype).itemsize + 8 + (8 if mode == "subsample" else 0)


def estimate_split_bytes(cfg: ExtractConfig, split: str, rows: list[int | None], dim: int) -> int:
    """Upper estimate of a split's cache bytes from the scenes' point counts and its storage mode."""
    mode = storage_mode(cfg, split)
    if mode == "none":
        return 0
    k = points_per_scene(cfg, len(rows)) if mode == "subsample" else None
    kept = sum(min(r, k) if k is not None else r for r in rows if r is not None)
    return kept * bytes_per_row(dim, cfg.dtype, mode)


def _free_space_check(out: Path, cfg: ExtractConfig, names: dict[str, list[str]], dim: int) -> None:
    """Warn before starting when the features of every listed scene will not fit on the disk of ``out``
    (rows read from the .npy headers; scenes already cached are counted too, so it errs on the safe side)."""
    from common.paths import free_bytes, human_bytes

    need = sum(estimate_split_bytes(cfg, split, [scene_rows(cfg.data.root, split, n) for n in scenes], dim)
               for split, scenes in names.items())
    free = free_bytes(out)
    if free is not None and need > free:
        log.warning("%s: the features need about %s but only %s are free; the run will stop "
                    "when the disk is full (finished scenes are kept)", out, human_bytes(need),
                    human_bytes(free))


def record_storage(path: Path, cfg: ExtractConfig, split: str, num_scenes: int) -> dict:
    """Write ``meta.storage`` of a finished cache: mode, subsample settings, bytes of every scene (its
    files on disk) and their mean; returns it."""
    cache = FeatureCache(path)
    per_scene = {it: cache.item_bytes(it) for it in cache.items()}
    rec = {"mode": storage_mode(cfg, split), **(storage_key(cfg, split, num_scenes) or {}),
           "bytes_per_scene": per_scene,
           "mean_bytes_per_scene": float(np.mean(list(per_scene.values()))) if per_scene else 0.0,
           "total_bytes": int(sum(per_scene.values()))}
    update_meta(path, storage=rec)
    return rec


def extract(cfg: ExtractConfig, progress: bool = True) -> dict[str, dict[str, str]]:
    """Run extraction for every split; returns {split: {scene: error}} of the scenes that failed.

    Order: the data (a missing root fails here), then the cache keys against any existing cache (as far
    as they are known before the encoder is built: checkpoint hash, preprocessing, dataset), then the
    encoder and the full keys; only then is anything written (config.yaml, caches). A refused or
    failed-at-start run leaves the output folder as it was."""
    from common.cache import check_existing_cache
    from pointprobe.data.scannet import list_scenes, load_scene

    if cfg.dtype not in ("float16", "float32"):
        raise ConfigError(f"config key 'dtype': expected float16 or float32, got {cfg.dtype!r}")
    if cfg.grid_align not in ("min", "world"):
        raise ConfigError(f"config key 'grid_align': expected min or world, got {cfg.grid_align!r}")
    if cfg.device_preprocess not in DEVICE_PREPROCESS:
        raise ConfigError(f"config key 'device_preprocess': expected one of {list(DEVICE_PREPROCESS)}, "
                          f"got {cfg.device_preprocess!r}")
    if cfg.num_workers < 0:
        raise ConfigError(f"config key 'num_workers': expected >= 0, got {cfg.num_workers}")
    dist.init_from_env()
    out = Path(cfg.out)
    names_of: dict[str, list[str]] = {}
    for split in cfg.data.splits:
        names = list_scenes(cfg.data.root, split)
        names_of[split] = names[: cfg.data.limit] if cfg.data.limit else names
    # what the key holds before the encoder exists
    enc_name, sha = encoder_identity(cfg.encoder)
    levels = None if cfg.encoder.name == RAW else cfg.encoder.levels
    pre = EncoderRecord(enc_name or cfg.encoder.name, "", cfg.encoder.checkpoint, sha, {}, levels)
    for split in cfg.data.splits:
        storage_mode(cfg, split)  # an unknown mode fails before anything is built
    stored = [split for split in cfg.data.splits if storage_mode(cfg, split) != "none"]
    for split in stored:
        k = cache_key(pre, cfg, split, len(names_of[split]))
        fields = {"checkpoint_sha256": sha, "preprocessing": k.preprocessing, "dataset": k.dataset,
                  "split": split, **({"encoder": enc_name} if enc_name else {})}
        check_existing_cache(out / split, fields, dtype=cfg.dtype)
    device = dist.pick_device(cfg.device)
    model, rec = build_encoder(cfg.encoder, device)
    dim = feature_dim(model, cfg.encoder.levels)
    for split in stored:
        check_existing_cache(out / split, cache_key(rec, cfg, split, len(names_of[split])).to_dict(),
                             feature_dim=dim, dtype=cfg.dtype)
    if dist.is_main():
        _free_space_check(out, cfg, {s: names_of[s] for s in stored}, dim)
        save_config(cfg, out)
    failures: dict[str, dict[str, str]] = {}
    for split in stored:
        names = names_of[split]
        mode = storage_mode(cfg, split)
        k_keep = points_per_scene(cfg, len(names)) if mode == "subsample" else 0
        meta = {"encoder": asdict(rec), "config": asdict(cfg), "label_set": cfg.data.label_set,
                "num_scenes": len(names)}

        def compute(item: str | LoadedScene, split: str = split, mode: str = mode,
                    k_keep: int = k_keep) -> dict:
            if isinstance(item, LoadedScene):  # read ahead by a DataLoader worker (num_workers > 0)
                name, folder = item.name, Path(cfg.data.root) / split / item.name
                if item.error is not None:
                    raise InputError(*item.error)
                scene, labels = item.scene, item.labels
            else:
                name, folder = item, Path(cfg.data.root) / split / item
                scene = load_scene(folder)
                labels = scene.labels(cfg.data.label_set)
            if len(scene) != labels.shape[0]:
                raise InputError(folder, f"{len(scene)} points for {labels.shape[0]} labels")
            if mode == "subsample":  # only the kept rows are gathered from the encoder's output
                idx = subsample_rows(labels, k_keep, scene_seed(cfg.subsample_seed, name),
                                     cfg.class_balanced)
                feats = scene_features(model, scene, cfg, device, rows=idx)
                return {"features": feats, "labels": labels[idx], "index": idx}
            feats = scene_features(model, scene, cfg, device)
            if feats.shape[0] != labels.shape[0]:
                raise InputError(folder, f"{feats.shape[0]} features for {labels.shape[0]} labels")
            return {"features": feats, "labels": labels}

        key = cache_key(rec, cfg, split, len(names))
        res = fill_cache(out / split, key, dim, cfg.dtype, names, compute, meta=meta, progress=progress,
                         prefetch=read_ahead(cfg, split))
        if dist.is_main():
            record_storage(out / split, cfg, split, len(names))
        dist.barrier()
        failures[split] = res.failures
    return failures


# ------------------------------------------------------------------------------------------ dry run
def scan_scene(folder: Path, label_set: str = "segment20") -> int:
    """Points of a scene from its ``.npy`` headers (nothing loaded); ``InputError`` naming the first file
    that is missing, unreadable or of the wrong shape (the scenes extraction would fail on)."""
    def header(name: str):
        p = folder / f"{name}.npy"
        if not p.is_file():
            raise InputError(p, "file not found")
        try:
            return np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(p, f"unreadable .npy ({type(e).__name__}: {e})") from None

    coord = header("coord")
    n = int(coord.shape[0]) if coord.ndim == 2 and coord.shape[1] == 3 else -1
    if n <= 0:
        raise InputError(folder / "coord.npy", f"shape {coord.shape}, expected (N, 3) with N > 0")
    for name in ("color", "normal"):
        if header(name).shape != (n, 3):
            raise InputError(folder / f"{name}.npy", f"shape {header(name).shape}, expected ({n}, 3)")
    if (folder / f"{label_set}.npy").is_file() and header(label_set).shape != (n,):
        raise InputError(folder / f"{label_set}.npy", f"shape {header(label_set).shape}, expected ({n},)")
    return n


def time_encoding(model: Any, cfg: ExtractConfig, device: torch.device, folders: list[Path],
                  n_encode: int) -> tuple[int, float, dict[str, str]]:
    """Encode up to ``n_encode`` of ``folders``: (points timed, seconds, {scene: error}). With two or
    more scenes encoded the first is a warm-up (first-call costs) and is not timed."""
    import time

    from pointprobe.data.scannet import load_scene

    timed: list[tuple[int, float]] = []
    failed: dict[str, str] = {}
    for folder in folders:
        if len(timed) >= n_encode:
            break
        try:
            scene = load_scene(folder)
            t0 = time.perf_counter()
            feats = scene_features(model, scene, cfg, device)
            dt = time.perf_counter() - t0
            if not np.isfinite(np.asarray(feats, dtype=np.float32)).all():
                raise InputError(folder, "features contain NaN or inf")
            timed.append((len(scene), dt))
        except InputError as e:
            failed[folder.name] = str(e)
    if len(timed) >= 2:
        timed = timed[1:]
    return sum(n for n, _ in timed), sum(t for _, t in timed), failed


def dry_run(cfg: ExtractConfig, n_encode: int = 3) -> dict:
    """What ``extract(cfg)`` would do, without writing anything: per split the scene and point counts,
    the estimated cache bytes (its storage mode) and time (from encoding ``n_encode`` scenes here), and
    the scenes that would fail."""
    from common.paths import free_bytes
    from pointprobe.data.scannet import list_scenes

    if cfg.dtype not in ("float16", "float32"):
        raise ConfigError(f"config key 'dtype': expected float16 or float32, got {cfg.dtype!r}")
    for split in cfg.data.splits:
        storage_mode(cfg, split)
    device = dist.pick_device(cfg.device)
    model, rec = build_encoder(cfg.encoder, device)
    dim = feature_dim(model, cfg.encoder.levels)
    splits: dict[str, dict] = {}
    ok_folders: list[Path] = []
    for split in cfg.data.splits:
        names = list_scenes(cfg.data.root, split)
        names = names[: cfg.data.limit] if cfg.data.limit else names
        rows: list[int | None] = []
        failed: dict[str, str] = {}
        for name in names:
            folder = Path(cfg.data.root) / split / name
            try:
                rows.append(scan_scene(folder, cfg.data.label_set))
                ok_folders.append(folder)
            except InputError as e:
                rows.append(None)
                failed[name] = str(e)
        splits[split] = {"mode": storage_mode(cfg, split), "scenes": len(names),
                         "points": int(sum(r for r in rows if r is not None)),
                         "cache_bytes": estimate_split_bytes(cfg, split, rows, dim), "failed": failed}
    step = max(1, len(ok_folders) // max(1, n_encode))
    spread = set(ok_folders[::step])
    pick = ok_folders[::step] + [f for f in ok_folders if f not in spread]  # an even spread, then the rest
    pts, secs, enc_failed = time_encoding(model, cfg, device, pick, n_encode)
    pps = pts / secs if secs > 0 else None
    for split, d in splits.items():
        for k, v in enc_failed.items():
            if (Path(cfg.data.root) / split / k).is_dir():
                d["failed"][k] = v
        d["seconds"] = (0.0 if d["mode"] == "none" else
                        (d["points"] / pps / dist.world_size()) if pps else None)
    return {"encoder": rec.label, "feature_dim": dim, "dtype": cfg.dtype, "device": str(device),
            "encoded_points": pts, "encode_seconds": secs, "points_per_second": pps,
            "world_size": dist.world_size(), "free_bytes": free_bytes(Path(cfg.out)), "splits": splits}


def format_dry_run(rep: dict, out: str) -> str:
    """The dry run's report as lines of text."""
    from common.paths import human_bytes

    pps = rep["points_per_second"]
    lines = [f"dry run: encoder {rep['encoder']} ({rep['feature_dim']} dims, {rep['dtype']}) on "
             f"{rep['device']}, {rep['world_size']} rank(s); nothing written to {out}",
             f"timed {rep['encoded_points']} encoded points in {rep['encode_seconds']:.2f} s"
             + (f" ({pps:,.0f} points/s on this machine)" if pps else " (no scene could be encoded)")]
    total = 0
    for split, d in rep["splits"].items():
        total += d["cache_bytes"]
        t = f"{d['seconds'] / 60:.1f} min" if d["seconds"] is not None else "unknown"
        t = "none (streamed by `pointprobe probe`)" if d["mode"] == "none" else f"about {t}"
        lines.append(f"[{split}] storage {d['mode']}: {d['scenes']} scenes, {d['points']:,} points, "
                     f"cache about {human_bytes(d['cache_bytes'])}, encoding {t}, "
                     f"{len(d['failed'])} would fail")
        lines += [f"  would fail: {k}: {v}" for k, v in sorted(d["failed"].items())]
    free = rep["free_bytes"]
    lines.append(f"total cache about {human_bytes(total)}" +
                 (f"; {human_bytes(free)} free at {out}" + (" (NOT ENOUGH)" if total > free else "")
                  if free is not None else ""))
    return "\n".join(lines)
