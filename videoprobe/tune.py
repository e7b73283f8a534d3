"""The video task of the tuning loop (issue 14): live augmented clips through the encoder.

:class:`VideoTuneTask` implements the ``TuneTask`` protocol of ``common.tuning.loop`` (see
``/work/briefs/tune_protocol.md``): training clips are decoded through ``ClipDataset`` with a random
temporal position, a random resized crop and a horizontal flip, reseeded every epoch and sharded by rank;
evaluation decodes every view (clips x crops) of every video of a split, one group per video (the loop
averages a video's views when scoring). ``features`` is the encoder's pooled output (source-class logits
for a prompt with a logit label map), ``decoder`` an attentive pooler over the token grid (V-JEPA 2 style,
``common.probes.attentive``'s cross-attention blocks).

Config: :class:`VideoTuneTaskConfig` (``configs/video/tune.yaml``): ``data`` and ``encoder`` as in
``videoprobe extract``, ``tune`` (the loop's :class:`common.tuning.loop.TuneSettings`), ``clips`` (recipe
and batch sizes), ``decoder``, ``prompt``, ``out``, ``device``. :func:`run_video_tune` runs it.
"""
from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common import dist
from common.errors import CheckpointError, ConfigError
from common.probes.attentive import AttentiveProbe, auto_heads
from common.tuning.loop import TuneBatch, TuneSettings
from common.tuning.prompt import LabelMap, flm_mapping, inject_prompt
from videoprobe.data.datasets import ClipDataset, VideoItem, build_video_dataset, collate_items
from videoprobe.data.transforms import ClipSpec
from videoprobe.extract import DataConfig, EncoderConfig, build_encoder
from videoprobe.models.base import EncoderOutput

log = logging.getLogger(__name__)

__all__ = ["ClipsConfig", "DecoderConfig", "PromptConfig", "TuneBatch", "VideoDecoder", "VideoTuneConfig",
           "VideoTuneTask", "VideoTuneTaskConfig", "load_task_config", "run_video_tune", "source_head"]


@dataclass
class ClipsConfig:
    """Clip recipe (0: the encoder's own) and batch sizes."""

    clip_len: int = 0  # frames per clip
    frame_step: int = 0  # frame stride inside a clip
    size: int = 0  # crop size in pixels
    short_side: int = 0  # evaluation: short side resized to before cropping
    flip: bool = True  # training: horizontal flip with probability 1/2
    eval_clips: int = 2  # evaluation: clips per video, evenly spaced
    eval_spatial: str = "three_crop"  # evaluation: center | three_crop
    batch_size: int = 8  # training clips per global step (split over torchrun ranks: a multiple of world)
    eval_batch_size: int = 4  # evaluation videos per batch (x views rows)
    num_workers: int = 0  # decoding processes


@dataclass
class DecoderConfig:
    """method=decoder: attentive pooler over the tokens (a learned query, ``depth`` cross-attention
    blocks)."""

    depth: int = 3
    num_heads: int = 0  # 0 = auto (largest of 16/12/8/6/4/3/2/1 dividing the token dim)
    mlp_ratio: float = 4.0


@dataclass
class PromptConfig:
    """method=prompt: the padding prompt and the output label map."""

    pad: int = 0  # border width in pixels; 0 = size // 8
    size: int = 0  # prompted input size; 0 = the clip size
    label_map: str = "features"  # features (linear head on pooled features) | linear | flm (source logits)
    flm_unique: bool = True  # flm: one-to-one mapping (greedy by count)


@dataclass
class VideoTuneTaskConfig:
    """Settings of ``videoprobe tune`` (``data.split`` is unused: training reads ``train_split``, the loop
    selects the linear grid's head on ``tune.select_split`` and reports ``tune.eval_split``)."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tune: TuneSettings = field(default_factory=TuneSettings)  # method, steps, lrs, eval / select split, ...
    train_split: str = "train"
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    seed: int = 0  # augmentation and shuffling
    out: str = "runs/tune_video"  # tune_results.{md,json}, ladder.png, runs/<method>-<hash>/
    device: str = "auto"  # auto | cpu | cuda


class VideoDecoder(nn.Module):
    """method=decoder: a frozen encoder's token grid -> attentive pooler (a learned query and ``depth``
    cross-attention blocks, ``common.probes.attentive``) -> (B, D) -> ``Linear(D, num_classes)``.

    ``forward(clips)`` runs the encoder itself (without gradients; held in a list, not a submodule, so
    its parameters stay out of this module's) and returns logits; :meth:`pooled` maps an encoder output
    (or its tokens) to the (B, D) vector.
    """

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int, depth: int = 3, num_heads: int = 0,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self._enc = [encoder]
        probe = AttentiveProbe(dim, num_heads or auto_heads(dim), num_classes=num_classes,
                               mlp_ratio=mlp_ratio, depth=depth)
        self.cls = probe.head
        probe.head = nn.Identity()
        self.pool = probe
        self.out_dim = int(dim)

    def pooled(self, x: torch.Tensor | EncoderOutput) -> torch.Tensor:
        """(B, D) from an ``EncoderOutput`` or its tokens (B, T', H', W', D) / (B, L, D)."""
        tokens = x.tokens if isinstance(x, EncoderOutput) else x
        if tokens is None:
            raise ConfigError("decoder: the encoder returns no tokens")
        tokens = tokens.float()
        return self.pool(tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (B, C, T, H, W) -> logits (B, num_classes)."""
        with torch.no_grad():
            out = self._enc[0](_on(self._enc[0], clips))
        return self.cls(self.pooled(out))


def source_head(encoder: nn.Module) -> nn.Linear:
    """The source-class classifier of a classifier-pretrained encoder (zoo models: the Kinetics ``proj``
    that the encoder drops, read back from its checkpoint file), frozen."""
    from videoprobe.models.base import read_checkpoint, unwrap_state_dict
    from videoprobe.models.zoo import ZooEncoder

    path = getattr(encoder, "checkpoint_path", None)
    if not isinstance(encoder, ZooEncoder) or not path:
        raise ConfigError(f"prompt: label_map linear/flm needs a classifier-pretrained encoder with its "
                          f"checkpoint (a pytorchvideo zoo model from a file); "
                          f"{getattr(encoder, 'name', '?')} has none (use label_map=features)")
    sd = unwrap_state_dict(read_checkpoint(path), path, ["model_state", "state_dict", "model", "module"])
    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in sd.items()}
    w, b = sd.get(encoder._proj_prefix + "weight"), sd.get(encoder._proj_prefix + "bias")
    if w is None:
        raise CheckpointError(f"{path}: no classifier weights '{encoder._proj_prefix}weight' for the "
                              f"label map")
    head = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        head.weight.copy_(w)
        if b is not None:
            head.bias.copy_(b)
    head.requires_grad_(False)
    return head.to(next(encoder.parameters()).device)


def _on(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``module``'s device (batches are built on the CPU; the loop moves only the labels)."""
    ref = next(module.parameters(), None)
    return x if ref is None else x.to(ref.device, non_blocking=True)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class VideoTuneTask:
    """``TuneTask`` for video classification (top-1 per video, views averaged)."""

    modality = "video"
    metric = "top1"

    def __init__(self, cfg: VideoTuneTaskConfig):
        self.cfg = cfg
        c = cfg.clips
        if c.eval_spatial not in ("center", "three_crop"):
            raise ConfigError(f"clips.eval_spatial must be center or three_crop, not {c.eval_spatial!r}")
        if c.batch_size < 1 or c.eval_batch_size < 1 or c.eval_clips < 1:
            raise ConfigError("clips.batch_size, clips.eval_batch_size and clips.eval_clips must be >= 1")
        if cfg.prompt.label_map not in ("features", "linear", "flm"):
            raise ConfigError(f"prompt.label_map must be features, linear or flm, not "
                              f"{cfg.prompt.label_map!r}")
        self._items: dict[str, list[VideoItem]] = {}
        self.class_names: list[str] = self.items(cfg.train_split)[1]
        self._recipe: dict[str, int] | None = None
        self._source: nn.Linear | None = None
        self.failures: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------ data
    def items(self, split: str) -> tuple[list[VideoItem], list[str]]:
        d = self.cfg.data
        items, names = build_video_dataset(d.kind, d.root, split, split_id=d.split_id,
                                           video_root=d.video_root, list_file=d.list_file,
                                           class_index=d.class_index,
                                           annotations=d.annotations, missing="skip")
        items = sorted(items, key=lambda it: it.video_id)
        if d.limit:
            items = items[:d.limit]
        if not items:
            raise ConfigError(f"{d.root}: no videos in split '{split}'")
        self._items[split] = items
        return items, names

    def _split(self, split: str) -> list[VideoItem]:
        return self._items[split] if split in self._items else self.items(split)[0]

    def recipe(self) -> dict[str, int]:
        """clip_len, frame_step, size, short_side: the config's, else the encoder's (build_encoder first,
        or a CPU copy is built here to read them)."""
        if self._recipe is None:
            self._set_recipe(build_encoder(self.cfg.encoder))
        assert self._recipe is not None
        return self._recipe

    def _set_recipe(self, enc: Any) -> None:
        c = self.cfg.clips
        size = c.size or int(enc.crop_size)
        self._recipe = {"clip_len": c.clip_len or int(enc.clip_len), "frame_step": c.frame_step or
                        int(enc.frame_step), "size": size,
                        "short_side": c.short_side or max(size, int(getattr(enc, "short_side", size)))}

    def _loader(self, items: list[VideoItem], spec: ClipSpec, seed: int, batch: int,
                strict: bool = False) -> Iterator[list[dict]]:
        """Decoded items in batches; a failed decode raises (``strict``) or is skipped with a warning
        and recorded in ``self.failures``."""
        ds = ClipDataset(items, spec, seed=seed, strict=strict)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False,
                                             num_workers=self.cfg.clips.num_workers, collate_fn=collate_items)
        for group in loader:
            ok = []
            for it in group:
                if it["error"] is not None:
                    if it["video_id"] not in self.failures:
                        log.warning("%s", it["error"])
                    self.failures[it["video_id"]] = it["error"]
                else:
                    ok.append(it)
            if ok:
                yield ok

    def train_batches(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[TuneBatch]:
        """Augmented training clips of ``epoch``: global batches of ``clips.batch_size`` videos in an
        order drawn from (seed, epoch), full batches only; rank r takes videos r, r + world, ... of each
        (the same number of batches on every rank; the ranks' step i together is one process's step i).
        Temporal position, crop and flip are drawn per (seed, epoch, video)."""
        items = self._split(self.cfg.train_split)
        bs = self.cfg.clips.batch_size
        if not 0 <= rank < world or bs % world:
            raise ConfigError(f"tune: clips.batch_size {bs} is not a multiple of the world size {world} "
                              f"(rank {rank})")
        if len(items) < bs:
            raise ConfigError(f"tune: {len(items)} training videos, fewer than clips.batch_size {bs}")
        es = _epoch_seed(self.cfg.seed, epoch)
        order = np.random.default_rng(es).permutation(len(items))
        full = len(order) // bs * bs
        mine = [int(i) for s in range(0, full, bs) for i in order[s:s + bs][rank::world]]
        index = {it.video_id: int(i) for i, it in enumerate(items)}
        r = self.recipe()
        spec = ClipSpec(r["clip_len"], r["frame_step"], 1, "random", "random_resized", r["size"],
                        backend=self.cfg.data.backend)
        # strict: a video that fails to decode stops training (naming the file) rather than leaving
        # one rank with fewer batches than the others
        for group in self._loader([items[i] for i in mine], spec, es, bs // world, strict=True):
            clips = []
            for it in group:
                clip = it["video"][0]
                if self.cfg.clips.flip:
                    g = np.random.default_rng([es, zlib.crc32(it["video_id"].encode()), 1])
                    if g.random() < 0.5:
                        clip = clip.flip(-1)
                clips.append(clip)
            yield TuneBatch(inputs=torch.stack(clips),
                            labels=torch.tensor([it["label"] for it in group], dtype=torch.int64),
                            groups=np.array([index[it["video_id"]] for it in group], dtype=np.int64))

    def eval_batches(self, split: str, rank: int = 0, world: int = 1) -> Iterator[TuneBatch]:
        """Every view (``eval_clips`` evenly spaced clips x center / three crops) of every video of
        ``split`` (rank r takes videos r, r + world, ...); rows of one video share its group id (its index
        in the split), and its label. A video that fails to decode is skipped with a warning (it is in
        ``self.failures``)."""
        items = self._split(split)
        r = self.recipe()
        c = self.cfg.clips
        spec = ClipSpec(r["clip_len"], r["frame_step"], c.eval_clips, "uniform", c.eval_spatial, r["size"],
                        r["short_side"], backend=self.cfg.data.backend)
        mine = list(range(rank, len(items), world))
        index = {it.video_id: i for i, it in enumerate(items)}
        for group in self._loader([items[i] for i in mine], spec, self.cfg.seed, c.eval_batch_size):
            views = [it["video"] for it in group]
            n = [v.shape[0] for v in views]
            labels = np.repeat([it["label"] for it in group], n)
            yield TuneBatch(inputs=torch.cat(views), labels=torch.tensor(labels, dtype=torch.int64),
                            groups=np.repeat([index[it["video_id"]] for it in group], n).astype(np.int64))

    # --------------------------------------------------------------------------------------- encoder
    def build_encoder(self, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        enc = build_encoder(self.cfg.encoder).to(device)
        self._set_recipe(enc)
        record = {"encoder": self.cfg.encoder.name, "checkpoint": enc.checkpoint_path,
                  "checkpoint_sha256": enc.checkpoint_id}
        return enc, record

    def blocks(self, encoder: nn.Module) -> list[tuple[str, list[str]]]:
        return encoder.block_layout()

    def fixed(self, encoder: nn.Module) -> list[str]:
        return encoder.fixed()

    def feature_dim(self, encoder: nn.Module) -> int:
        return int(self._source.out_features) if self._source is not None else int(encoder.embed_dim)

    def features(self, encoder: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """(B, D) pooled features (or (B, S) source-class logits after ``prepare_prompt`` with a logit
        label map)."""
        pooled = encoder(_on(encoder, inputs)).pooled
        return self._source(pooled.float()) if self._source is not None else pooled

    def decoder(self, encoder: nn.Module, num_classes: int) -> nn.Module | None:
        """A :class:`VideoDecoder`: clips -> logits (B, num_classes) through the frozen encoder's tokens
        and an attentive pooler. None for an encoder without a token dimension."""
        dim = int(getattr(encoder, "token_dim", 0))
        if dim <= 0:
            return None
        d = self.cfg.decoder
        dec = VideoDecoder(encoder, dim, num_classes, d.depth, d.num_heads, d.mlp_ratio)
        ref = next(encoder.parameters(), None)
        return dec if ref is None else dec.to(ref.device)

    # ---------------------------------------------------------------------------------------- prompt
    def prepare_prompt(self, encoder: nn.Module) -> LabelMap | None:
        """method=prompt: inject the padding prompt into ``encoder``; with label_map linear / flm
        ``features`` then returns the encoder's source-class logits and the label map returned here is the
        head (flm: computed on the training split's centre clips through the prompted encoder); with
        label_map=features None (the loop's linear head on the features is the map)."""
        r = self.recipe()
        p = self.cfg.prompt
        size = p.size or r["size"]
        inject_prompt(encoder, size, p.pad or max(1, size // 8))
        if p.label_map == "features":
            return None
        self._source = source_head(encoder)
        n_src, k = self._source.out_features, len(self.class_names)
        if p.label_map == "linear":
            return LabelMap("linear", n_src, k).to(self._source.weight.device)
        preds, labels = [], []
        with torch.no_grad():
            for b in self.eval_batches(self.cfg.train_split):
                dev = self._source.weight.device
                preds.append(self.features(encoder, b.inputs.to(dev)).argmax(1).cpu())
                labels.append(b.labels)
        mapping = flm_mapping(torch.cat(preds), torch.cat(labels), k, n_src, unique=p.flm_unique)
        return LabelMap("flm", n_src, k, mapping).to(self._source.weight.device)


VideoTuneConfig = VideoTuneTaskConfig  # the ``videoprobe tune`` schema (the task's config is the whole)


def run_video_tune(cfg: VideoTuneTaskConfig, max_steps: int | None = None) -> dict:
    """``videoprobe tune``: train / resume ``cfg.tune.method`` on live clips, evaluate, write the row."""
    from common.tuning.loop import run_tuning

    dist.init_from_env()
    device = dist.pick_device(cfg.device)
    task = VideoTuneTask(cfg)
    return run_tuning(task, cfg.tune, cfg.out, cfg=cfg, device=device, max_steps=max_steps)


def load_task_config(path: str | Path | None = None,
                     overrides: list[str] | None = None) -> VideoTuneTaskConfig:
    """The task's config from ``configs/video/tune.yaml``-style files plus ``key=value`` overrides."""
    from common.config import load_config

    return load_config(VideoTuneTaskConfig, path, overrides)
