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
import os
import re
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cache import (
    CacheKey,
    CacheWriter,
    FeatureCache,
    check_existing_cache,
    fill_cache,
    is_cache_entry,
)
from common.config import config_hash, save_config, to_dict
from common.errors import CacheError, ConfigError, InputError
from common.paths import check_item_name
from common.progress import progress

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
    # load a checkpoint that pickles classes beyond the harmless list (full unpickling: it can run code)
    trust_checkpoint: bool = False


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


def build_encoder(spec: EncoderConfig) -> Any:
    """The encoder of ``spec`` (``trust_checkpoint`` lets its file be fully unpickled, with a warning)."""
    from common.checkpoint import trusted
    from videoprobe.models import create_video_encoder

    with trusted([spec.checkpoint] if spec.checkpoint and Path(spec.checkpoint).is_file() else [],
                 enabled=spec.trust_checkpoint):
        return create_video_encoder(spec.name, spec.checkpoint, seed=spec.seed, **spec.kwargs)


def _known_key_fields(cfg: ExtractConfig) -> dict[str, Any]:
    """Cache key fields known without building the encoder: dataset, split and, for a checkpoint file,
    its hash (random init may be "random:<seed>" or "none" for parameter-free encoders: left to the
    full check, which still comes before any write)."""
    from common.checkpoint import sha256_file

    fields: dict[str, Any] = {"dataset": dataset_name(cfg.data), "split": cfg.data.split}
    ck = cfg.encoder.checkpoint
    if ck is not None and Path(ck).is_file():
        fields["checkpoint_sha256"] = sha256_file(ck)
    return fields


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
                video, idx = sample_clips(reader, self.spec, rng, segment=getattr(it, "segment", None))
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


def _decoded(cfg: ExtractConfig, spec: Any) -> Any:
    """``prefetch`` for ``fill_cache``: the decoded views of each video still to do, in order, decoded by
    ``cfg.num_workers`` DataLoader workers."""
    def prefetch(todo: list[Any]) -> Any:
        loader = torch.utils.data.DataLoader(
            _ViewsDataset(todo, spec, cfg.encoder.seed), batch_size=1, shuffle=False,
            num_workers=cfg.num_workers, collate_fn=_collate,
        )
        for batch in loader:
            yield from batch

    return prefetch


def extract(cfg: ExtractConfig, encoder: Any | None = None) -> ExtractResult:
    """Run the extraction described by ``cfg`` (``encoder``: an already built one, else from the config)."""
    from common import dist
    from videoprobe.data.transforms import ClipSpec

    if not cfg.out:
        raise ConfigError("out is not set (the cache folder to write)")
    dist.init_from_env()
    rank, world = dist.rank(), dist.world_size()
    # the data and what the cache key holds before the encoder exists are checked first: a refused or
    # failed-at-start run builds nothing and writes nothing
    items, class_names = load_items(cfg.data)
    if encoder is None:
        check_existing_cache(Path(cfg.out), _known_key_fields(cfg), dtype=cfg.dtype)
    device = dist.pick_device(cfg.device)
    enc = encoder if encoder is not None else build_encoder(cfg.encoder)
    enc = enc.freeze().to(device)
    views = resolve_views(cfg.views, enc)
    spec = ClipSpec(backend=cfg.data.backend, **views)

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
    # the full key is checked before the config is written: a refused run writes nothing
    check_existing_cache(out, key.to_dict(), feature_dim=dim, dtype=cfg.dtype)
    if rank == 0:
        save_config(cfg, out / "extract_config.yaml")
    n_clips = 0

    def compute(rec: dict[str, Any]) -> dict[str, Any]:
        nonlocal n_clips
        if rec["error"] is not None:
            raise InputError(None, rec["error"])  # the decoding worker's message, as it was
        video = rec["video"]
        pooled, tokens = encode_views(enc, video, cfg.batch_size, device, cfg.save_tokens, cfg.token_grid,
                                      cfg.precision)
        n_clips += video.shape[0]
        arrays: dict[str, Any] = {"features": pooled.numpy(),
                                  "labels": np.full(pooled.shape[0], rec["item"].label, dtype=np.int64),
                                  "frame_indices": rec["frame_indices"], "video_info": rec["info"]}
        if tokens is not None:
            arrays["tokens"] = tokens.numpy().astype(cfg.tokens_dtype)
        return arrays

    res = fill_cache(out, key, dim, cfg.dtype, items, compute, meta=meta, item_id=lambda it: it.video_id,
                     prefetch=_decoded(cfg, spec), fsync=cfg.fsync, progress=cfg.progress,
                     progress_desc=f"extract {enc.name}" + (f" [rank {rank}]" if world > 1 else ""),
                     progress_unit="video", print_failures=True)
    if rank == 0 and FeatureCache.exists(out):
        record_padding(out, (spec.clip_len - 1) * spec.frame_step + 1)
    dist.barrier()
    return ExtractResult(out, res.written, res.skipped, res.failures, res.seconds, n_clips)


def record_padding(out: str | Path, span: int) -> dict[str, Any]:
    """Find the cached videos whose clips repeat their last frame (shorter than the encoder's ``span``),
    store ``{"span", "count", "videos"}`` as ``padding`` in the cache meta and warn once."""
    from common.cache import update_meta
    from videoprobe.data.decode import is_padded

    cache = FeatureCache(out)
    padded = sorted(i for i in cache.items() if "frame_indices" in cache.arrays(i)
                    and is_padded(cache.load(i, ["frame_indices"])["frame_indices"]))
    info = {"span": int(span), "count": len(padded), "videos": padded}
    update_meta(out, padding=info)
    if padded:
        log.warning("%s: %d of %d videos are shorter than the encoder's span of %d frames; their clips "
                    "repeat the last frame (listed under 'padding' in the cache meta)%s", out, len(padded),
                    len(cache), span, f": {', '.join(padded[:5])}{' ...' if len(padded) > 5 else ''}")
    return info


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


TWLV_SPLITS = ("train", "val")  # the only folder names the TWLV-I framework reads (hard-coded there)
TWLV_CLASS_COUNTS = {"Diving48": 48, "sthsth-v2": 174, "MomentsInTime": 305, "Kinetics400": 400}
LABEL_BASE = 0  # TWLV-I "annotation" values and our cache labels are 0-based class indices


def twlv_split_name(cache_split: str) -> str:
    """The TWLV-I folder a cache split goes to by default: ``train`` stays, any other split is ``val``."""
    return "train" if cache_split == "train" else "val"


def export_twlv(cache_path: str | Path, out: str | Path, split: str | None = None) -> int:
    """Write TWLV-I embedding files for every item of a cache into ``out/<split>/``; returns the count.

    ``split`` defaults to ``train`` for a train cache and ``val`` for any other, the two folder names
    the framework reads. ``[id]_c.npy`` (num_clips, D) float32 (crops averaged), ``[id]_v.npy`` (D,)
    mean of clips (the framework needs it 1-D), ``[id].json``: annotation (0-based class index),
    label_base (0), label_name, duration (s), frames, clip_times [[start, end]].
    """
    cache = FeatureCache(cache_path)
    crops = int(cache.meta.get("crops_per_clip", 1))
    names = cache.meta.get("class_names") or []
    folder = split or twlv_split_name(cache.key.split)
    if folder not in TWLV_SPLITS:
        log.warning("export-twlv: the TWLV-I framework reads only %s/train and %s/val, not %s/%s",
                    out, out, out, folder)
    dest = Path(out) / folder
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for item in progress(cache.items(), desc="export-twlv", unit="video"):
        arrays = cache[item]
        clips = _clip_embeddings(np.asarray(arrays["features"], dtype=np.float32), crops)
        label = int(np.asarray(arrays["labels"]).reshape(-1)[0]) if "labels" in arrays else -1
        rec: dict[str, Any] = {"annotation": label, "label_base": LABEL_BASE}
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


def _numbered(i: int) -> str:
    return f"class_{i}"


# (annotation, or None when it is a class name; label_name; clip embedding file)
_Rec = tuple[int | None, str | None, Path]


def _read_twlv_records(src: Path, jsons: list[Path]) -> tuple[dict[str, _Rec], dict[str, str]]:
    """{video id: (annotation, label_name or None, clip file)} of every readable json, and the failures."""
    recs: dict[str, _Rec] = {}
    failures: dict[str, str] = {}
    for j in jsons:
        vid = j.stem
        try:
            check_item_name(vid, "video id", j)
            rec = json.loads(j.read_text())
            if not isinstance(rec, dict):
                raise InputError(j, "not a JSON object")
            ann = rec.get("annotation")
            name = rec.get("label_name")
            label: int | None
            if ann is None:
                label = -1  # unlabelled
            elif isinstance(ann, bool) or not isinstance(ann, int | str):
                raise InputError(j, f"annotation {ann!r} is not an integer")
            elif isinstance(ann, str) and not re.fullmatch(r"-?\d+", ann.strip()):
                label, name = None, ann  # a class name: resolved against the class list later
            else:
                label = int(ann)
                if label < -1:
                    raise InputError(j, f"annotation {ann!r} is negative (-1 = unlabelled)")
            if name is not None and not isinstance(name, str):
                raise InputError(j, f"label_name {name!r} is not a string")
            base = rec.get("label_base", LABEL_BASE)
            if label != -1 and base != LABEL_BASE:
                raise InputError(j, f"label_base {base!r}: TWLV-I annotations are {LABEL_BASE}-based")
            clip = src / f"{vid}_c.npy"
            if not clip.is_file():
                clip = src / f"{vid}_v.npy"  # a single video embedding is one view
                if not clip.is_file():
                    raise InputError(src / f"{vid}_c.npy", "clip embedding file missing")
            recs[vid] = (label, name, clip)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            failures[vid] = str(InputError(j, f"unreadable json ({e})"))
        except InputError as e:
            failures[vid] = str(e)
    return recs, failures


def _twlv_class_names(src: Path, recs: dict[str, _Rec], failures: dict[str, str],
                      class_names: list[str] | None, num_classes: int | None) -> tuple[list[str], str]:
    """Class names of an import and where they come from; bad labels move from ``recs`` to ``failures``."""
    by_label: dict[int, str] = {}
    for vid, (label, name, _) in sorted(recs.items()):
        if label is not None and label >= 0 and name is not None:
            other = by_label.setdefault(label, name)
            if other != name:
                raise InputError(src / f"{vid}.json", f"label_name {name!r} for annotation {label}, other "
                                                      f"files name it {other!r}")
    if class_names:
        names, origin = list(class_names), "--classes"
        if num_classes and num_classes != len(names):
            raise InputError(src, f"{num_classes} classes asked for but the class file has {len(names)}")
        for label, name in by_label.items():
            if label < len(names) and names[label] != name:
                raise InputError(src, f"files name class {label} {name!r} but --classes has "
                                      f"{names[label]!r} (annotations are {LABEL_BASE}-based; is the class "
                                      "file in this order?)")
    else:
        labels = [lab for lab, _, _ in recs.values() if lab is not None and lab >= 0]
        k = num_classes or (max(labels) + 1 if labels else 0)
        names = [by_label.get(i, _numbered(i)) for i in range(k)]
        origin = ("label_name" if by_label and len(by_label) == k else
                  "label_name and numbers" if by_label else "numbers")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InputError(src, f"label_name {dup!r} names two different annotations")
    for vid, (label, name, clip) in list(recs.items()):
        if label is None:  # a class name as the annotation
            if name not in names:
                failures[vid] = str(InputError(src / f"{vid}.json", f"annotation {name!r} is not an integer "
                                                                    "nor a known class name"))
                del recs[vid]
            else:
                recs[vid] = (names.index(name), name, clip)
        elif label >= len(names):
            failures[vid] = str(InputError(src / f"{vid}.json", f"annotation {label} is outside the "
                                                                f"{len(names)} classes ({origin})"))
            del recs[vid]
    return names, origin


def import_twlv(src: str | Path, out: str | Path, encoder: str = "twlv-import", split: str | None = None,
                class_names: list[str] | None = None, dtype: str = "float32", num_classes: int | None = None,
                stats: dict | None = None) -> int:
    """Read a TWLV-I embedding folder (``[id].json`` + ``[id]_c.npy``) into a feature cache.

    Each clip embedding becomes one view (``features`` (num_clips, D)); the label is the json's
    "annotation" (a 0-based class index, or a class name looked up in ``class_names``). Class names:
    ``class_names``, else the files' "label_name" (written by ``export_twlv``), else ``class_<i>`` for
    i in 0..``num_classes`` - 1 (default: the largest annotation + 1). A folder whose cache
    ``videoprobe probe`` could not use (no labelled video, conflicting names) raises ``InputError``
    before anything is written. Into an existing cache of the same source and encoder, a re-run
    writes what differs (new, changed or removed videos, other class names) and keeps the rest; a
    cache of another key is refused. Bad files are reported and skipped; returns the number of
    videos of ``src`` now in the cache. ``stats`` (if given) receives the counts.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(src, "TWLV-I embedding folder not found")
    jsons = sorted(src.glob("*.json"))
    if not jsons:
        raise InputError(src, "no [id].json files (is this the folder of one split?)")
    recs, failures = _read_twlv_records(src, jsons)
    if not recs:
        raise InputError(src, f"no readable video ({next(iter(failures.values()))})")
    names, origin = _twlv_class_names(src, recs, failures, class_names, num_classes)
    if not any(lab is not None and lab >= 0 for lab, _, _ in recs.values()):
        raise InputError(src, "no video has a class annotation: `videoprobe probe` could not use the cache")
    if len(names) < 2:
        raise InputError(src, f"{len(names)} class(es) ({origin}): a probe needs at least 2 "
                              "(give --classes or --num-classes)")
    first = next(iter(recs.values()))[2]
    try:
        dim = int(np.load(first, mmap_mode="r").shape[-1])
    except (OSError, ValueError, EOFError) as e:
        raise InputError(first, f"cannot read embeddings ({e})") from None
    key = CacheKey(encoder=encoder, checkpoint_sha256="none", config_hash="twlv-import",
                   preprocessing={"source": "twlv"}, dataset=f"twlv:{src.resolve()}", split=split or src.name)
    meta = {"class_names": names, "class_names_from": origin, "label_base": LABEL_BASE, "crops_per_clip": 1,
            "source": str(src)}

    old: FeatureCache | None = None
    if out.is_dir() and any(out.iterdir()):
        try:
            old = FeatureCache(out)
        except CacheError as e:
            if FeatureCache.exists(out):
                raise
            raise CacheError(f"{out}: exists and is not a feature cache; choose another folder") from e
        parts = old.key.describe_diff(key)
        if old.feature_dim != dim:
            parts.append(f"feature_dim={old.feature_dim} but this run has {dim}")
        if old.dtype != dtype:
            parts.append(f"dtype={old.dtype} but this run has {dtype}")
        if parts:
            raise CacheError(f"cache {out} was built with {'; '.join(parts)}; use a new folder or delete it")
    rebuild = old is not None and (any(old.meta.get(k) != v for k, v in meta.items())
                                   or bool(set(old.items()) - set(recs)))
    if rebuild:
        extra = [p.name for p in out.iterdir() if not is_cache_entry(p.name)]
        if extra:
            raise CacheError(f"{out}: the class names or videos differ from the cache's and the folder also "
                             f"holds {extra[0]!r}; import into a new folder")
    dest = out.parent / f".{out.name}.import-{os.getpid()}" if rebuild else out
    counts = {"written": 0, "updated": 0, "unchanged": 0}
    try:
        with CacheWriter(dest, key, dim, dtype, meta=meta) as writer:
            for vid, (label, _, clip) in progress(sorted(recs.items()), desc="import-twlv", unit="video"):
                try:
                    feats = np.atleast_2d(np.load(clip, allow_pickle=False))
                    if feats.ndim != 2:
                        raise InputError(clip, f"embeddings have shape {feats.shape}, expected (clips, D)")
                    labels = np.full(feats.shape[0], label, dtype=np.int64)
                    cur = old.load(vid, ("features", "labels")) if old is not None and vid in old else None
                    same = (cur is not None and np.array_equal(cur["labels"], labels)
                            and np.array_equal(cur["features"], feats.astype(dtype)))
                    if not (same and writer.has(vid)):
                        writer.write(vid, feats, labels, overwrite=writer.has(vid))
                    counts["written" if cur is None else "unchanged" if same else "updated"] += 1
                except (InputError, CacheError, ValueError, OSError) as e:
                    failures[vid] = str(e)
        if rebuild:  # the new cache is complete: put it in place of the old one
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(dest, out)
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if rebuild and dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
    n = len(recs) - sum(v in recs for v in failures)
    if stats is not None:
        stats.update(counts, imported=n, failed=len(failures), classes=len(names), class_names_from=origin,
                     rebuilt=rebuild)
    log.info("import-twlv %s: %d videos (%d written, %d updated, %d unchanged), %d classes from %s", out, n,
             counts["written"], counts["updated"], counts["unchanged"], len(names), origin)
    report_failures(failures, len(jsons))
    return n
