"""Feature extraction: videos -> clips x crops views -> frozen video encoder -> feature cache.

One cache item per video (item id = video id) holding ``features`` (V, D) pooled embeddings of its V
views (clip-major: clip 0 crop 0, clip 0 crop 1, ...), ``labels`` (V,), ``frame_indices``
(num_clips, clip_len), ``video_info`` [num_frames, fps] and, with ``save_tokens``, ``tokens``
(V, T', H', W', token_dim) for the attentive probe. The run is resumable (finished items are
skipped), sharded over torchrun ranks (each rank its own journal, rank 0 merges) and tolerant of bad
videos (one line each, a summary at the end, exit status 1).

TWLV-I's embedding folders (``[id].json`` with "annotation", ``[id]_c.npy`` clips x D, ``[id]_v.npy``
mean of clips) can be written from a cache (``export_twlv``) and read into one (``import_twlv``).
"""
from __future__ import annotations

import json
import logging
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cache import CacheKey, CacheWriter, FeatureCache, merge_manifests
from common.config import config_hash, save_config, to_dict
from common.errors import CacheError, ConfigError, InputError
from common.progress import progress, progress_write

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config
@dataclass
class DataConfig:
    """Which videos: a ``build_video_dataset`` kind, its root and split."""

    kind: str = "ucf101"  # folder | list | ucf101 | synth | hmdb51 | kinetics | ssv2
    root: str = ""  # dataset folder (layout per kind: see the README)
    split: str = "train"  # train | test | val (names per kind)
    split_id: int = 1  # UCF101 / HMDB51 split number (1-3)
    list_file: str | None = None  # kind "list"
    class_index: str | None = None  # classInd.txt-style class names (kinds list, kinetics)
    annotations: str | None = None  # Kinetics CSV / SSv2 JSON when not found under root
    video_root: str | None = None  # folder of the videos when not the default under root
    backend: str = "auto"  # decoder: auto | decord | pyav
    limit: int = 0  # keep only the first N videos (sorted by id); 0 = all


@dataclass
class EncoderConfig:
    """Which encoder (``videoprobe.models.VIDEO_ENCODERS``) and weights."""

    name: str = "x3d_s"  # an encoder of `videoprobe encoders`
    checkpoint: str | None = None  # None: random init; a file; "hub" (pytorchvideo zoo, online only)
    seed: int = 0  # seed of the random initialisation when no checkpoint is given
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor overrides


@dataclass
class ViewsConfig:
    """Test-time views per video; 0 = the encoder's own recipe."""

    num_clips: int = 1  # clips per video, evenly spaced
    spatial: str = "center"  # center | three_crop
    clip_len: int = 0  # frames per clip (0: the encoder's)
    frame_step: int = 0  # frame stride inside a clip (0: the encoder's)
    size: int = 0  # crop size in pixels (0: the encoder's)
    short_side: int = 0  # short side the frames are resized to first (0: the encoder's)


@dataclass
class ExtractConfig:
    data: DataConfig = field(default_factory=DataConfig)  # which videos
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # which encoder and weights
    views: ViewsConfig = field(default_factory=ViewsConfig)  # test-time views (clips x crops) per video
    out: str = ""  # cache folder
    save_tokens: bool = False  # also store the token grid (needed by the attentive probe)
    token_grid: list[int] = field(default_factory=lambda: [0, 0, 0])  # pool tokens to (T, H, W); 0 = keep
    dtype: str = "float32"  # pooled features in the cache
    tokens_dtype: str = "float16"  # tokens in the cache: float16 | float32
    batch_size: int = 8  # views per encoder forward
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; bf16/fp16 mainly for CUDA)
    num_workers: int = 0  # decoding processes (DataLoader workers)
    device: str = "auto"  # auto | cpu | cuda
    fsync: bool = True  # fsync every cache file (off: faster, still safe against a killed process)
    progress: bool = True  # progress bar (terminal) / a line every PROBESUITE_PROGRESS_SECONDS (logs)


# ---------------------------------------------------------------------------------------- helpers
def resolve_views(cfg: ViewsConfig, enc: Any) -> dict[str, Any]:
    """The concrete clip recipe: config values, else the encoder's defaults."""
    size = cfg.size or int(enc.crop_size)
    short = cfg.short_side or max(size, int(getattr(enc, "short_side", size)))
    if cfg.spatial not in ("center", "three_crop"):
        raise ConfigError(f"views.spatial must be 'center' or 'three_crop', not {cfg.spatial!r}")
    if cfg.num_clips < 1:
        raise ConfigError("views.num_clips must be >= 1")
    return {
        "clip_len": cfg.clip_len or int(enc.clip_len),
        "frame_step": cfg.frame_step or int(enc.frame_step),
        "num_clips": cfg.num_clips,
        "mode": "uniform",
        "spatial": cfg.spatial,
        "size": size,
        "short_side": short,
    }


def pick_device(name: str) -> torch.device:
    """"auto" -> this rank's CUDA device when available, else the CPU."""
    from common import dist

    if name == "auto":
        return dist.device_for_rank()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    return torch.device(name)


def dataset_name(data: DataConfig) -> str:
    return f"{data.kind}:{Path(data.root).resolve() if data.root else ''}"


def load_items(data: DataConfig) -> tuple[list[Any], list[str]]:
    """``build_video_dataset`` with the config's paths, sorted by video id, optionally limited."""
    from videoprobe.data.datasets import build_video_dataset

    if not data.root and data.kind != "list":
        raise ConfigError("data.root is not set (the dataset folder)")
    try:
        items, names = build_video_dataset(
            data.kind, data.root, data.split, split_id=data.split_id, video_root=data.video_root,
            list_file=data.list_file, class_index=data.class_index, annotations=data.annotations,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    items = sorted(items, key=lambda it: it.video_id)
    if data.limit:
        items = items[: data.limit]
    if not items:
        raise InputError(data.root, f"no videos in split {data.split!r}")
    return items, list(names)


class _ViewsDataset(torch.utils.data.Dataset):
    """Decodes one video's views; a bad file gives an ``error`` string instead of raising."""

    def __init__(self, items: list[Any], spec: Any, seed: int):
        self.items, self.spec, self.seed = items, spec, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from videoprobe.data.decode import open_video, sample_clips

        it = self.items[i]
        out: dict[str, Any] = {"item": it, "video": None, "error": None}
        try:
            with open_video(it.path, self.spec.backend) as reader:
                rng = np.random.default_rng([self.seed, zlib.crc32(it.video_id.encode())])
                video, idx = sample_clips(reader, self.spec, rng)
                out.update(video=video, frame_indices=np.asarray(idx, dtype=np.int64),
                           info=np.array([reader.num_frames, reader.fps], dtype=np.float64))
        except InputError as e:
            out["error"] = str(e)
        return out


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _pool_tokens(tokens: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """Adaptive average pooling of (B, T, H, W, D) tokens to ``grid`` (0 keeps that axis)."""
    if not any(grid):
        return tokens
    b, t, h, w, d = tokens.shape
    size = tuple(g or s for g, s in zip(grid, (t, h, w)))
    x = torch.nn.functional.adaptive_avg_pool3d(tokens.permute(0, 4, 1, 2, 3), size)
    return x.permute(0, 2, 3, 4, 1)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@torch.no_grad()
def encode_views(enc: Any, views: torch.Tensor, batch_size: int, device: torch.device,
                 want_tokens: bool, token_grid: list[int],
                 precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled (V, D) and optionally tokens (V, ...) of a (V, C, T, H, W) stack, in chunks (float32 out)."""
    from videoprobe.models import assert_frozen

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    assert_frozen(enc)
    pooled, toks = [], []
    dtype = PRECISIONS[precision]
    for chunk in views.split(batch_size):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = enc(chunk.to(device, non_blocking=True))
        pooled.append(out.pooled.float().cpu())
        if want_tokens:
            if out.tokens is None:
                raise ConfigError(f"{enc.name} gives no tokens; set save_tokens=false")
            toks.append(_pool_tokens(out.tokens, token_grid).float().cpu())
    return torch.cat(pooled), (torch.cat(toks) if want_tokens else None)


# ------------------------------------------------------------------------------------------- main
@dataclass
class ExtractResult:
    out: Path
    written: int
    skipped: int
    failures: dict[str, str]
    seconds: float
    clips: int

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else float("nan")


def _run(cfg: ExtractConfig, enc: Any, spec: Any, todo: list[Any], writer: CacheWriter, device: torch.device,
         rank: int, world: int) -> tuple[dict[str, str], int]:
    """Decode, encode and write every item of ``todo``; returns (failures, number of views encoded)."""
    failures: dict[str, str] = {}
    n_clips = 0
    loader = torch.utils.data.DataLoader(
        _ViewsDataset(todo, spec, cfg.encoder.seed), batch_size=1, shuffle=False,
        num_workers=cfg.num_workers, collate_fn=_collate,
    )
    desc = f"extract {enc.name}" + (f" [rank {rank}]" if world > 1 else "")
    with progress(total=len(todo), desc=desc, unit="video", disable=not cfg.progress) as bar:
        for batch in loader:
            for rec in batch:
                bar.update(1)
                it = rec["item"]
                if rec["error"] is not None:
                    failures[it.video_id] = rec["error"]
                    progress_write(f"skipped {it.video_id}: {rec['error']}")
                    continue
                video = rec["video"]
                pooled, tokens = encode_views(enc, video, cfg.batch_size, device, cfg.save_tokens,
                                              cfg.token_grid, cfg.precision)
                n_clips += video.shape[0]
                extra: dict[str, Any] = {"frame_indices": rec["frame_indices"], "video_info": rec["info"]}
                if tokens is not None:
                    extra["tokens"] = tokens.numpy().astype(cfg.tokens_dtype)
                labels = np.full(pooled.shape[0], it.label, dtype=np.int64)
                try:
                    writer.write(it.video_id, pooled.numpy(), labels, **extra)
                except CacheError as e:  # e.g. NaN features from a broken clip: report, go on
                    failures[it.video_id] = str(e)
                    progress_write(f"skipped {it.video_id}: {e}")
    return failures, n_clips


def extract(cfg: ExtractConfig, encoder: Any | None = None) -> ExtractResult:
    """Run the extraction described by ``cfg`` (``encoder``: an already built one, else from the config)."""
    from common import dist
    from videoprobe.data.transforms import ClipSpec
    from videoprobe.models import create_video_encoder

    if not cfg.out:
        raise ConfigError("out is not set (the cache folder to write)")
    dist.init_from_env()
    rank, world = dist.rank(), dist.world_size()
    device = pick_device(cfg.device)
    enc = encoder if encoder is not None else create_video_encoder(
        cfg.encoder.name, cfg.encoder.checkpoint, seed=cfg.encoder.seed, **cfg.encoder.kwargs)
    enc = enc.freeze().to(device)
    views = resolve_views(cfg.views, enc)
    spec = ClipSpec(backend=cfg.data.backend, **views)
    items, class_names = load_items(cfg.data)

    feature_cfg = {"encoder": to_dict(cfg.encoder), "views": views, "save_tokens": cfg.save_tokens,
                   "token_grid": list(cfg.token_grid), "tokens_dtype": cfg.tokens_dtype,
                   "precision": cfg.precision}
    key = CacheKey(
        encoder=enc.name,
        checkpoint_sha256=enc.checkpoint_id,
        config_hash=config_hash(feature_cfg),
        preprocessing={**views, "mean": list(enc.mean), "std": list(enc.std)},
        dataset=dataset_name(cfg.data),
        split=cfg.data.split,
    )
    meta = {"class_names": class_names, "encoder": enc.describe(), "config": to_dict(cfg),
            "num_views": spec.num_views, "crops_per_clip": spec.crops_per_clip, "num_clips": spec.num_clips}
    out = Path(cfg.out)
    dim = int(enc.embed_dim)
    with CacheWriter(out, key, dim, cfg.dtype, rank=rank, world_size=world, meta=meta,
                     fsync=cfg.fsync) as writer:
        if rank == 0:
            save_config(cfg, out / "extract_config.yaml")
        mine = dist.shard(items)
        todo = [it for it in mine if not writer.has(it.video_id)]
        skipped = len(mine) - len(todo)
        if skipped:
            log.info("%s: %d of %d videos already in the cache, skipping them", out, skipped, len(mine))
        t0 = time.perf_counter()
        failures, n_clips = _run(cfg, enc, spec, todo, writer, device, rank, world)
        seconds = time.perf_counter() - t0
        written = writer.n_written
        # leaving the block closes the journal (a single process also merges); on an exception or
        # Ctrl-C it only releases it: every finished item stays recorded and the next run resumes
    dist.barrier()
    all_failures: dict[str, str] = {}
    for part in dist.all_gather_object(failures):
        all_failures.update(part)
    if rank == 0 and world > 1:
        merge_manifests(out)
    dist.barrier()
    return ExtractResult(out, written, skipped, all_failures, seconds, n_clips)


def report_failures(failures: dict[str, str], total: int) -> None:
    """The list of failed videos printed (to stderr) at the end of a batch command."""
    if not failures:
        return
    print(f"{len(failures)} of {total} videos failed and were skipped:", file=sys.stderr)
    for vid, msg in sorted(failures.items()):
        print(f"  {vid}: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------- TWLV-I files
def _clip_embeddings(feats: np.ndarray, crops: int) -> np.ndarray:
    """(V, D) clip-major views -> (V / crops, D), averaging the crops of each clip."""
    v, d = feats.shape
    if crops < 1 or v % crops:
        raise CacheError(f"{v} views cannot be split into clips of {crops} crops")
    return feats.reshape(v // crops, crops, d).mean(axis=1)


def export_twlv(cache_path: str | Path, out: str | Path, split: str | None = None) -> int:
    """Write TWLV-I embedding files for every item of a cache into ``out/<split>/``; returns the count.

    ``[id]_c.npy`` (num_clips, D) float32 (crops averaged), ``[id]_v.npy`` (D,) mean of clips,
    ``[id].json``: annotation (class index), label_name, duration (s), frames, clip_times [[start, end]].
    """
    cache = FeatureCache(cache_path)
    crops = int(cache.meta.get("crops_per_clip", 1))
    names = cache.meta.get("class_names") or []
    dest = Path(out) / (split or cache.key.split or "train")
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for item in progress(cache.items(), desc="export-twlv", unit="video"):
        arrays = cache[item]
        clips = _clip_embeddings(np.asarray(arrays["features"], dtype=np.float32), crops)
        label = int(np.asarray(arrays["labels"]).reshape(-1)[0]) if "labels" in arrays else -1
        rec: dict[str, Any] = {"annotation": label}
        if 0 <= label < len(names):
            rec["label_name"] = names[label]
        if "video_info" in arrays:
            frames, fps = (float(v) for v in np.asarray(arrays["video_info"]).reshape(-1)[:2])
            rec["frames"] = int(frames)
            rec["duration"] = frames / fps if fps > 0 else None
            if "frame_indices" in arrays and fps > 0:
                fi = np.asarray(arrays["frame_indices"])
                rec["clip_times"] = [[float(r.min()) / fps, float(r.max() + 1) / fps] for r in fi]
        stem = item.replace("/", "_")
        np.save(dest / f"{stem}_c.npy", clips)
        np.save(dest / f"{stem}_v.npy", clips.mean(axis=0))
        (dest / f"{stem}.json").write_text(json.dumps(rec) + "\n")
        n += 1
    return n


def import_twlv(src: str | Path, out: str | Path, encoder: str = "twlv-import", split: str | None = None,
                class_names: list[str] | None = None, dtype: str = "float32") -> int:
    """Read a TWLV-I embedding folder (``[id].json`` + ``[id]_c.npy``) into a feature cache.

    Each clip embedding becomes one view (``features`` (num_clips, D)); the label is the json's
    "annotation" (an integer class index, or a class name looked up in ``class_names``).
    Bad files are reported and skipped (``InputError``); returns the number of items written.
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "TWLV-I embedding folder not found")
    jsons = sorted(src.glob("*.json"))
    if not jsons:
        raise InputError(src, "no [id].json files (is this the folder of one split?)")
    first = src / f"{jsons[0].stem}_c.npy"
    if not first.is_file():
        raise InputError(first, "clip embedding file missing")
    dim = int(np.load(first, mmap_mode="r").shape[-1])
    key = CacheKey(encoder=encoder, checkpoint_sha256="none", config_hash="twlv-import",
                   preprocessing={"source": "twlv"}, dataset=f"twlv:{src.resolve()}", split=split or src.name)
    meta = {"class_names": class_names or [], "crops_per_clip": 1, "source": str(src)}
    failures: dict[str, str] = {}
    with CacheWriter(out, key, dim, dtype, meta=meta) as writer:
        for j in progress(jsons, desc="import-twlv", unit="video"):
            vid = j.stem
            if writer.has(vid):
                continue
            try:
                rec = json.loads(j.read_text())
                ann = rec.get("annotation")
                if isinstance(ann, str) and not ann.lstrip("-").isdigit():
                    if not class_names or ann not in class_names:
                        raise InputError(j, f"annotation {ann!r} is not an integer nor a known class name")
                    label = class_names.index(ann)
                elif ann is None:
                    label = -1
                else:
                    label = int(ann)
                cpath = src / f"{vid}_c.npy"
                if not cpath.is_file():
                    raise InputError(cpath, "clip embedding file missing")
                feats = np.atleast_2d(np.load(cpath))
                writer.write(vid, feats, np.full(feats.shape[0], label, dtype=np.int64))
            except (InputError, CacheError, ValueError, json.JSONDecodeError) as e:
                failures[vid] = str(e)
    report_failures(failures, len(jsons))
    return len(jsons) - len(failures)
