"""Feature extraction: videos -> clips x crops views -> frozen video encoder -> feature cache.

One cache item per video (item id = video id) holding ``features`` (V, D) pooled embeddings of its V
views (clip-major: clip 0 crop 0, clip 0 crop 1, ...), ``labels`` (V,), ``frame_indices``
(num_clips, clip_len), ``video_info`` [num_frames, fps] and, with ``save_tokens``, ``tokens``
(V, T', H', W', token_dim) for the attentive probe. The run is resumable (finished items are
skipped), sharded over torchrun ranks (each rank its own journal, rank 0 merges) and tolerant of bad
videos (one line each, a summary at the end, exit status 1).

TWLV-I embedding folders are written from / read into a cache by ``videoprobe.twlv``.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cache import (
    CacheKey,
    FeatureCache,
    check_existing_cache,
    fill_cache,
)
from common.config import config_hash, save_config, to_dict
from common.errors import ConfigError, InputError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config
@dataclass
class DataConfig:
    """Which videos: a layout kind (``videoprobe.data.datasets.READERS``), its root and split; the file
    keys override what the kind's reader looks for under ``root`` (``DataSource``)."""

    kind: str = "ucf101"  # folder | list | ucf101 | synth | hmdb51 | kinetics | ssv2 | diving48
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
    # save_tokens only: refuse (before writing anything) when the token cache, estimated from the first
    # video x the number of videos, would exceed this many GB (1e9 bytes); 0 = no limit
    token_budget_gb: float = 20.0
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


# ------------------------------------------------------------------------------------ estimates
def _item_arrays(cfg: ExtractConfig, enc: Any, device: torch.device, rec: dict[str, Any]) -> dict[str, Any]:
    """The cache arrays of one decoded video record (``ClipDataset`` item); an ``InputError`` when it
    did not decode."""
    if rec["error"] is not None:
        raise InputError(None, rec["error"])  # the decoding worker's message, as it was
    video = rec["video"]
    pooled, tokens = encode_views(enc, video, cfg.batch_size, device, cfg.save_tokens, cfg.token_grid,
                                  cfg.precision)
    arrays: dict[str, Any] = {"features": pooled.numpy(),
                              "labels": np.full(pooled.shape[0], rec["label"], dtype=np.int64),
                              "frame_indices": rec["frame_indices"], "video_info": rec["info"]}
    if tokens is not None:
        arrays["tokens"] = tokens.numpy().astype(cfg.tokens_dtype)
    return arrays


def stored_bytes(arrays: dict[str, Any], dtype: str) -> dict[str, int]:
    """Bytes one video takes in the cache: ``pooled`` (features in the cache dtype plus labels, frame
    indices and video info), ``tokens`` and ``total`` (array data, without the .npy headers)."""
    tok = int(np.asarray(arrays["tokens"]).nbytes) if "tokens" in arrays else 0
    pooled = sum(int(np.asarray(a).nbytes) for k, a in arrays.items() if k not in ("features", "tokens"))
    pooled += int(np.asarray(arrays["features"]).size) * np.dtype(dtype).itemsize
    return {"pooled": pooled, "tokens": tok, "total": pooled + tok}


@dataclass
class Sample:
    """A few videos decoded and encoded outside the cache: their stored bytes and wall seconds."""

    ids: list[str]
    bytes: list[dict[str, int]]
    seconds: list[float]
    failures: dict[str, str]
    arrays: list[dict[str, Any]] = field(default_factory=list)  # kept only with keep_arrays


def sample_videos(cfg: ExtractConfig, enc: Any, spec: Any, device: torch.device, items: list[Any],
                  n: int, max_tries: int = 20, keep_arrays: bool = False) -> Sample:
    """Decode and encode the first ``n`` readable videos of ``items`` (at most ``max_tries`` tried),
    timing each (decode + encode); nothing is written. The decoding is the extraction's own (same
    clips, same seed), so kept arrays are what extraction would store."""
    import time

    from videoprobe.data.datasets import ClipDataset

    ds = ClipDataset(items[:max_tries], spec, cfg.encoder.seed)
    out = Sample([], [], [], {})
    for i in range(len(ds)):
        if len(out.ids) >= n:
            break
        t0 = time.perf_counter()
        rec = ds[i]
        try:
            arrays = _item_arrays(cfg, enc, device, rec)
        except InputError as e:
            out.failures[items[i].video_id] = str(e)
            continue
        out.seconds.append(time.perf_counter() - t0)
        out.ids.append(items[i].video_id)
        out.bytes.append(stored_bytes(arrays, cfg.dtype))
        if keep_arrays:
            out.arrays.append(arrays)
    return out


def cached_token_bytes(out: str | Path) -> int | None:
    """Token bytes of one video already in the cache at ``out`` (None when it holds none)."""
    if not FeatureCache.exists(out):
        return None
    cache = FeatureCache(out)
    for item in cache.items()[:1]:
        return cache.array_nbytes(item).get("tokens")
    return None


def check_token_budget(cfg: ExtractConfig, per_video: int, n_items: int) -> int:
    """The estimated token cache size in bytes (``per_video`` x ``n_items``); a ``ConfigError`` when it
    exceeds ``token_budget_gb``."""
    est = per_video * n_items
    if cfg.token_budget_gb > 0 and est > cfg.token_budget_gb * 1e9:
        raise ConfigError(
            f"{cfg.out}: save_tokens would store about {_human(est)} of tokens "
            f"({_human(per_video)} per video x {n_items} videos), over "
            f"token_budget_gb={cfg.token_budget_gb:g}; raise token_budget_gb, pool with token_grid, or keep "
            "pooled features only (save_tokens=false) and train the attentive probe online on live clips "
            "(videoprobe tune --config configs/video/attentive_online.yaml)")
    return est


def record_bytes_per_video(out: str | Path) -> dict[str, Any]:
    """Store the mean stored bytes per video (``pooled``, ``tokens``, ``total``, from the manifest) as
    ``bytes_per_video`` in the cache meta."""
    from common.cache import update_meta

    cache = FeatureCache(out)
    sums = {"pooled": 0, "tokens": 0}
    for item in cache.items():
        for name, nb in cache.array_nbytes(item).items():
            sums["tokens" if name == "tokens" else "pooled"] += nb
    n = max(1, len(cache))
    info = {k: int(round(v / n)) for k, v in sums.items()}
    info["total"] = info["pooled"] + info["tokens"]
    info["videos"] = len(cache)
    update_meta(out, bytes_per_video=info)
    return info


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
    from videoprobe.data.datasets import ClipDataset, collate_items

    def prefetch(todo: list[Any]) -> Any:
        loader = torch.utils.data.DataLoader(
            ClipDataset(todo, spec, cfg.encoder.seed), batch_size=1, shuffle=False,
            num_workers=cfg.num_workers, collate_fn=collate_items,
        )
        for batch in loader:
            yield from batch

    return prefetch


def feature_key(cfg: ExtractConfig, enc: Any, views: dict[str, Any]) -> CacheKey:
    """The cache key of ``cfg``'s split with encoder ``enc`` and the resolved ``views``: what a cache of
    these features is checked against (``videoprobe probe eval_source=stream`` checks a streamed split
    against the training cache with it)."""
    feature_cfg = {"encoder": to_dict(cfg.encoder), "views": views, "save_tokens": cfg.save_tokens,
                   "token_grid": list(cfg.token_grid), "tokens_dtype": cfg.tokens_dtype,
                   "precision": cfg.precision}
    return CacheKey(
        encoder=enc.name,
        checkpoint_sha256=enc.checkpoint_id,
        config_hash=config_hash(feature_cfg),
        preprocessing={**views, "mean": list(enc.mean), "std": list(enc.std)},
        dataset=dataset_name(cfg.data),
        split=cfg.data.split,
    )


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

    key = feature_key(cfg, enc, views)
    meta = {"class_names": class_names, "encoder": enc.describe(), "config": to_dict(cfg),
            "num_views": spec.num_views, "crops_per_clip": spec.crops_per_clip, "num_clips": spec.num_clips}
    out = Path(cfg.out)
    dim = int(enc.embed_dim)
    # the full key is checked before the config is written: a refused run writes nothing
    check_existing_cache(out, key.to_dict(), feature_dim=dim, dtype=cfg.dtype)
    # so is the token budget: from a video already cached, else from the first readable video, encoded
    # here (the same on every rank) and reused when this rank extracts it
    ready: dict[str, dict[str, Any]] = {}
    if cfg.save_tokens:
        per_video = cached_token_bytes(out)
        if per_video is None:
            sample = sample_videos(cfg, enc, spec, device, items, 1, keep_arrays=True)
            ready = dict(zip(sample.ids, sample.arrays, strict=True))
            per_video = sample.bytes[0]["tokens"] if sample.ids else 0
        check_token_budget(cfg, per_video, len(items))
    if rank == 0:
        save_config(cfg, out / "extract_config.yaml")
    n_clips = 0

    def compute(rec: dict[str, Any]) -> dict[str, Any]:
        nonlocal n_clips
        arrays = ready.pop(rec["video_id"], None) or _item_arrays(cfg, enc, device, rec)
        n_clips += rec["video"].shape[0]
        return arrays

    res = fill_cache(out, key, dim, cfg.dtype, items, compute, meta=meta, item_id=lambda it: it.video_id,
                     prefetch=_decoded(cfg, spec), fsync=cfg.fsync, progress=cfg.progress,
                     progress_desc=f"extract {enc.name}" + (f" [rank {rank}]" if world > 1 else ""),
                     progress_unit="video", print_failures=True)
    if rank == 0 and FeatureCache.exists(out):
        record_padding(out, (spec.clip_len - 1) * spec.frame_step + 1)
        record_bytes_per_video(out)
    dist.barrier()
    return ExtractResult(out, res.written, res.skipped, res.failures, res.seconds, n_clips)


# ---------------------------------------------------------------------------------------- dry run
@dataclass
class DryRun:
    """What ``extract`` would do: videos found, already cached, unreadable, and the estimates."""

    items: int  # videos in the split (after data.limit)
    cached: int  # of those, already in the cache at ``out``
    unreadable: dict[str, str]  # video id -> one-line problem (opening failed, or decoding a sampled one)
    sampled: list[str]  # the videos decoded and encoded for the estimates
    bytes_per_video: dict[str, int]  # mean stored bytes of the sampled videos: pooled, tokens, total
    seconds_per_video: float  # decode + encode on this machine (first sample left out when there are more)
    world_size: int

    @property
    def to_do(self) -> int:
        return max(0, self.items - self.cached - len(self.unreadable))

    @property
    def est_bytes(self) -> int:
        """Cache size once complete (array data of every readable video)."""
        return self.bytes_per_video.get("total", 0) * (self.items - len(self.unreadable))

    @property
    def est_seconds(self) -> float:
        """Time for the videos still to do, split over the ranks."""
        return self.seconds_per_video * self.to_do / max(1, self.world_size)

    def lines(self, cfg: ExtractConfig) -> list[str]:
        b = self.bytes_per_video
        out = [f"dry run of {cfg.out or '(out not set)'}: {self.items} videos, {self.cached} already cached, "
               f"{len(self.unreadable)} unreadable, {self.to_do} to extract",
               f"sampled {len(self.sampled)} video(s): {b.get('pooled', 0) / 1e3:.1f} kB pooled + "
               f"{b.get('tokens', 0) / 1e6:.2f} MB tokens per video, "
               f"{self.seconds_per_video:.2f} s per video",
               f"estimated cache size {_human(self.est_bytes)}; estimated time "
               f"{self.est_seconds / 3600:.2f} h ({self.est_seconds:.0f} s) on {self.world_size} rank(s) "
               "like this one"]
        budget = cfg.token_budget_gb * 1e9
        if cfg.save_tokens and budget > 0 and b.get("tokens", 0) * self.items > budget:
            out.append(f"the token cache is over token_budget_gb={cfg.token_budget_gb:g}: "
                       "extract would refuse")
        if self.unreadable:
            out.append(f"{len(self.unreadable)} video(s) would fail:")
            out += [f"  {vid}: {msg}" for vid, msg in sorted(self.unreadable.items())]
        return out


class _OpenCheck(torch.utils.data.Dataset):
    """``(video id, None or the one-line problem)`` of opening each video (dry-run scan)."""

    def __init__(self, items: list[Any], backend: str):
        self.items, self.backend = items, backend

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, str | None]:
        from videoprobe.data.decode import open_video

        it = self.items[i]
        try:
            with open_video(it.path, self.backend):
                pass
        except InputError as e:
            return it.video_id, str(e)
        return it.video_id, None


def scan_videos(items: list[Any], backend: str, num_workers: int = 0,
                progress: bool = False) -> dict[str, str]:
    """``{video id: problem}`` of the videos that do not open (``num_workers`` processes)."""
    from common.progress import progress as progress_bar

    loader = torch.utils.data.DataLoader(_OpenCheck(items, backend), batch_size=64, shuffle=False,
                                         num_workers=num_workers, collate_fn=list)
    bad: dict[str, str] = {}
    with progress_bar(total=len(items), desc="scan", unit="video", disable=not progress) as bar:
        for batch in loader:
            bar.update(len(batch))
            bad.update({vid: msg for vid, msg in batch if msg is not None})
    return bad


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def dry_run(cfg: ExtractConfig, encoder: Any | None = None, n_encode: int = 3) -> DryRun:
    """Scan the split (open every video, in ``num_workers`` processes), decode and encode ``n_encode``
    readable ones, and estimate the cache size and extraction time; writes nothing (``out`` is not
    created)."""
    from common import dist
    from videoprobe.data.transforms import ClipSpec

    items, _ = load_items(cfg.data)
    device = dist.pick_device(cfg.device)
    enc = (encoder if encoder is not None else build_encoder(cfg.encoder)).freeze().to(device)
    spec = ClipSpec(backend=cfg.data.backend, **resolve_views(cfg.views, enc))
    unreadable = scan_videos(items, cfg.data.backend, cfg.num_workers, cfg.progress)
    readable = [it for it in items if it.video_id not in unreadable]
    sample = sample_videos(cfg, enc, spec, device, readable, n_encode)
    unreadable.update(sample.failures)  # opened but did not decode
    cached = 0
    if cfg.out and FeatureCache.exists(cfg.out):
        have = set(FeatureCache(cfg.out).items())
        cached = sum(it.video_id in have for it in items)
    n = len(sample.ids)
    bpv = ({k: int(round(sum(b[k] for b in sample.bytes) / n)) for k in ("pooled", "tokens", "total")}
           if n else {})
    secs = sample.seconds[1:] if n > 1 else sample.seconds
    return DryRun(len(items), cached, unreadable, sample.ids, bpv, sum(secs) / len(secs) if secs else 0.0,
                  dist.env_world_size())


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
