"""``pointprobe tune``: the points task of the tuning loop (``common.tuning.loop``).

Training scenes are augmented live with the Sonata / Pointcept ``lin`` recipe (the pre-training's
augmentations, ``pointprobe.pretrain.views``): grid sampling (random point per voxel), a sphere crop of
at most ``aug.max_points`` points, colour jitter + chromatic translation, centre shift, random scale,
z rotation, small x / y rotations, flips, jitter, then the voxel grid of the augmented points. Each
scene's randomness is keyed by (seed, epoch, scene index), never by rank. Evaluation encodes every
scene of a split at full resolution: grid sampling at the release's 0.02 m (canonical point per
voxel, as ``pointprobe extract``), features copied back to every input point, mIoU over all points.
The model runs on the voxels; the loop copies the voxel logits to the input points and scores them in
chunks of ``tune.eval_chunk`` points (``TuneBatch.expand``), so a large scene never holds full-resolution
features; a scene of more than ``eval_max_voxels`` voxels is encoded in overlapping spatial chunks (as
``pointprobe extract``: ``spatial_chunks``, ``eval_chunk_margin`` metres of context, each voxel scored by
the chunk whose core holds it).

``method=decoder`` (Pointcept ``dec``): the frozen encoder + a trainable decoder + a linear classifier
on the finest decoded level (``decoder.*`` keys). PTv3 encoders get
:class:`pointprobe.models.ptv3.PTv3Decoder` (the release's decoder stages: unpooling
``proj_skip(skip) + proj(coarse)[inverse]``, then PTv3 blocks; Pointcept's ``*-dec`` configs: depths
2,2,2,2, channels 64,96,192,384, heads 4,6,12,24). SparseUNet encoders get their architecture's own
MinkUNet decoder (:class:`SparseUNetSegDecoder`) at the encoder's own widths: its config's
``decoder_channels`` / ``decoder_depths``, else the mirror of its levels (:func:`decoder_lists`;
``decoder.channels`` / ``decoder.depths``, finest level first, override either). Other encoders
(or ``decoder.kind=level``) get :class:`LevelDecoder`, a light U-Net-style MLP decoder over the frozen
encoder's levels: from the deepest level up, ``h <- MLP(concat(level.feat, h[pooling_inverse]))``
(Linear, LayerNorm, GELU; ``decoder.level_channels`` wide).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from common import dist
from common.errors import ConfigError, InputError
from common.sampling import grid_sample, sphere_crop
from common.tuning.loop import TuneBatch, TuneSettings
from pointprobe.data.scannet import class_names, list_scenes, load_scene
from pointprobe.models.encode import _ALIGN, canonical_index, center_shift, spatial_chunks
from pointprobe.models.ptv3 import PTV3_DEC_DEFAULTS, PointTransformerV3, PTv3Decoder
from pointprobe.models.registry import PointEncoderConfig, build_encoder
from pointprobe.models.sparseunet import SparseUNet
from pointprobe.models.structure import PointBatch, block_index
from pointprobe.pretrain.views import ViewConfig, augment_geometry, color_jitter


@dataclass
class TuneDataSpec:
    root: str = "data/scannet"  # preprocessed layout: {split}/sceneXXXX_YY/*.npy
    train_split: str = "train"  # scenes the method trains on (augmented live)
    label_set: str = "segment20"  # segment20 | segment200
    limit: int = 0  # at most this many scenes per split (0 = all)


@dataclass
class TuneAugment:
    """The Pointcept lin recipe's training augmentation (see the module docstring)."""

    grid_size: float = 0.02
    max_points: int = 20000  # sphere crop of at most this many voxels per scene
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    rotate_z: float = 1.0  # max |angle| / pi
    flip_p: float = 0.5
    color_jitter_p: float = 0.8


@dataclass
class TuneDecoder:
    """``method=decoder``: the decoder trained over the frozen encoder (see the module docstring)."""

    kind: str = "auto"  # auto (the encoder's own: ptv3 | sparseunet; else level) | ptv3 | sparseunet | level
    # finest stage first; None = the encoder's own (see decoder_lists): PTv3 the Pointcept dec lists,
    # SparseUNet its config's decoder_channels / decoder_depths, else the mirror of its levels
    depths: list[int] | None = None
    channels: list[int] | None = None
    num_head: list[int] = field(default_factory=lambda: list(PTV3_DEC_DEFAULTS["dec_num_head"]))
    patch_size: list[int] = field(default_factory=lambda: list(PTV3_DEC_DEFAULTS["dec_patch_size"]))
    drop_path: float = 0.0  # stochastic depth of the decoder blocks (linspace 0..drop_path, as the release)
    level_channels: int = 64  # kind=level: width of the MLP level decoder


@dataclass
class PointTuneConfig:
    """Settings of ``pointprobe tune``."""

    data: TuneDataSpec = field(default_factory=TuneDataSpec)
    encoder: PointEncoderConfig = field(default_factory=PointEncoderConfig)  # which encoder and weights
    tune: TuneSettings = field(default_factory=TuneSettings)  # method, steps, lrs, ...
    aug: TuneAugment = field(default_factory=TuneAugment)
    batch_size: int = 2  # scenes per global batch (split over torchrun ranks; a multiple of the world size)
    levels: int | None = None  # up-cast levels of the features (None = all)
    decoder: TuneDecoder = field(default_factory=TuneDecoder)  # method=decoder
    eval_grid_size: float = 0.02  # voxel size of the full-resolution evaluation
    # evaluation of large scenes: more voxels than this -> overlapping spatial chunks (as pointprobe
    # extract's max_points), each scoring its core voxels with eval_chunk_margin metres of context
    eval_max_voxels: int = 400_000
    eval_chunk_margin: float = 1.0
    out: str = "runs/tune"  # tune_results.{md,json}, ladder.png, runs/<method>-<hash>/
    device: str = "auto"  # auto | cpu | cuda


# -------------------------------------------------------------------------------------------- decoder
class LevelDecoder(nn.Module):
    """Trainable MLP decoder over a frozen point encoder's levels (deepest first, up to the input rows).

    The encoder is held in a list (not a submodule): its parameters stay out of this module's.
    """

    def __init__(self, encoder: nn.Module, level_dims: list[int], num_classes: int, channels: int):
        super().__init__()
        self._enc = [encoder]
        self.deep = nn.Sequential(nn.Linear(level_dims[-1], channels), nn.LayerNorm(channels), nn.GELU())
        self.up = nn.ModuleList(nn.Sequential(nn.Linear(d + channels, channels), nn.LayerNorm(channels),
                                              nn.GELU()) for d in level_dims[:-1][::-1])
        self.cls = nn.Linear(channels, num_classes)

    def forward(self, inputs: dict) -> torch.Tensor:
        enc = self._enc[0]
        with torch.no_grad():
            top = enc(_point(inputs))
        levels = top.levels()  # finest first
        h = self.deep(levels[-1].feat.float())
        for i, lvl in enumerate(levels[-2::-1]):
            child = levels[len(levels) - 1 - i]
            h = self.up[i](torch.cat([lvl.feat.float(), h[child.pooling_inverse]], 1))
        inv = inputs.get("inverse")
        return self.cls(h if inv is None else h[inv])


def decoder_lists(encoder: nn.Module, d: TuneDecoder) -> tuple[list[int], list[int]]:
    """(channels, depths) of ``method=decoder``'s decoder stages, finest first, one per pooling step of
    ``encoder``; a list left None is the encoder's own:

    - PTv3: the Pointcept ``*-dec`` lists (``PTV3_DEC_DEFAULTS``: channels 64, 96, 192, 384, depths 2);
    - SparseUNet: its config's ``decoder_channels`` / ``decoder_depths`` (stored coarse -> fine) when they
      cover every up-sampling step, else the mirror of the encoder: each up-block as wide and as deep as
      the level it returns to (``channels[l - 1]``, ``depths[l - 1]``; a light U-Net decoder);
    - other encoders (LevelDecoder): unused.
    Explicit lists are trimmed to the encoder's pooling steps."""
    if isinstance(encoder, SparseUNet):
        n = encoder.num_levels - 1
        cfg = encoder.config
        has_own = len(cfg.get("decoder_channels") or []) == n and len(cfg.get("decoder_depths") or []) == n
        own_c = list(cfg["decoder_channels"])[::-1] if has_own else list(cfg["channels"][:n])
        own_d = list(cfg["decoder_depths"])[::-1] if has_own else list(cfg["depths"][:n])
        channels = own_c if d.channels is None else list(d.channels)
        depths = own_d if d.depths is None else list(d.depths)
    else:
        n = getattr(encoder, "num_stages", 1) - 1
        channels = list(PTV3_DEC_DEFAULTS["dec_channels"]) if d.channels is None else list(d.channels)
        depths = list(PTV3_DEC_DEFAULTS["dec_depths"]) if d.depths is None else list(d.depths)
    if len(channels) < n or len(depths) < n:
        raise ConfigError(f"tune: decoder.channels / decoder.depths need {n} entries (one per pooling step "
                          f"of the encoder), got {channels} / {depths}")
    return channels[:n], depths[:n]


class SparseUNetSegDecoder(nn.Module):
    """Frozen SparseUNet encoder + the architecture's own MinkUNet decoder (``ups``: SparseInverseConv3d
    back to the finer level, skip concatenation, residual SubMConv blocks; trainable) + linear classifier.

    The decoder is built by the SparseUNet class itself (a twin with ``decoder_channels`` /
    ``decoder_depths``; only its ``ups`` are kept) and lent to the encoder for each forward pass (the
    encoder runs it after its levels, reusing their conv indices); the encoder's own ``ups`` are restored
    afterwards, so no decoder parameter ever appears under ``encoder.``.
    """

    def __init__(self, encoder: nn.Module, channels: list[int], depths: list[int], num_classes: int):
        super().__init__()
        self._enc = [encoder]
        twin = type(encoder)(**{**encoder.config, "decoder_channels": channels, "decoder_depths": depths})
        self.ups = twin.ups
        self.cls = nn.Linear(channels[-1], num_classes)

    def forward(self, inputs: dict) -> torch.Tensor:
        enc = self._enc[0]
        own = enc._modules["ups"]
        enc._modules["ups"] = self.ups
        enc._algo_device = None  # re-sync the conv algorithms (the lent decoder's too) to the device
        try:
            out = enc(_point(inputs))  # encoder weights frozen: autograd records the decoder only
        finally:
            enc._modules["ups"] = own
        h = out.cache["decoded"]
        inv = inputs.get("inverse")
        return self.cls(h if inv is None else h[inv])


class PTv3SegDecoder(nn.Module):
    """Frozen PTv3 encoder (held in a list, not a submodule) -> trainable :class:`PTv3Decoder` ->
    linear classifier, logits for every row of ``inputs`` (the input points through ``inverse``)."""

    def __init__(self, encoder: PointTransformerV3, decoder: PTv3Decoder, num_classes: int):
        super().__init__()
        self._enc = [encoder]
        self.dec = decoder
        self.cls = nn.Linear(decoder.out_channels, num_classes)

    def forward(self, inputs: dict) -> torch.Tensor:
        with torch.no_grad():
            top = self._enc[0](_point(inputs))
        h = self.dec(top).feat
        inv = inputs.get("inverse")
        return self.cls(h if inv is None else h[inv])


def level_dims(encoder: nn.Module, probe: dict) -> list[int]:
    """Feature width of each level of ``encoder``'s hierarchy (finest first), from one forward pass."""
    with torch.no_grad():
        return [int(lvl.feat.shape[1]) for lvl in encoder(_point(probe)).levels()]


# ---------------------------------------------------------------------------------------------- task
def _point(inputs: dict) -> PointBatch:
    return PointBatch.create(inputs["coord"], inputs["grid_coord"], inputs["feat"], offset=inputs["offset"])


def _feat(keys: tuple[str, ...], coord: np.ndarray, color01: np.ndarray, normal: np.ndarray) -> np.ndarray:
    parts = {"coord": coord, "color": color01, "normal": normal}
    return np.concatenate([parts[k].astype(np.float32) for k in keys], 1)


class PointTuneTask:
    """The points task of :class:`common.tuning.loop.TuneTask` (see the module docstring)."""

    modality = "points"
    metric = "miou"

    def __init__(self, cfg: PointTuneConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.class_names = list(class_names(cfg.data.label_set))
        self._scenes: dict[str, list] = {}
        self.feat_keys: tuple[str, ...] = ("coord", "color", "normal")
        self.view = ViewConfig(grid_size=cfg.aug.grid_size, scale=tuple(cfg.aug.scale),
                               rotate_z=cfg.aug.rotate_z, flip_p=cfg.aug.flip_p,
                               color_jitter_p=cfg.aug.color_jitter_p)
        if cfg.batch_size < 1:
            raise ConfigError(f"tune: batch_size must be >= 1, got {cfg.batch_size}")

    # -- data ----------------------------------------------------------------------------------
    def scenes(self, split: str) -> list:
        if split not in self._scenes:
            names = list_scenes(self.cfg.data.root, split)
            if self.cfg.data.limit:
                names = names[: self.cfg.data.limit]
            if not names:
                raise InputError(f"{self.cfg.data.root}/{split}", "no scenes in this split")
            self._scenes[split] = [load_scene(f"{self.cfg.data.root}/{split}/{n}") for n in names]
        return self._scenes[split]

    def _labels(self, scene) -> np.ndarray:
        return np.asarray(scene.labels(self.cfg.data.label_set), dtype=np.int64)

    def _augment(self, scene, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """(coord, grid_coord, feat, labels) of one augmented training view of ``scene``."""
        v = self.view
        gs = grid_sample(scene.coord, v.grid_size, mode="train", seed=rng, source=scene.name)
        idx = np.sort(gs.index)
        origin = scene.coord[idx].astype(np.float64)
        crop = sphere_crop(origin, min(self.cfg.aug.max_points, len(origin)),
                           center=origin[rng.integers(len(origin))], rng=rng)
        idx = idx[crop]
        col = color_jitter(scene.color[idx], v, rng) / 255.0
        c, n = augment_geometry(scene.coord[idx], scene.normal[idx], v, rng)
        g2 = grid_sample(c, v.grid_size, mode="train", seed=rng)
        k = np.sort(g2.index)
        grid = g2.grid_coord[np.argsort(g2.index)]
        c32 = c[k].astype(np.float32)
        feat = _feat(self.feat_keys, c32, col[k], n[k])
        return c32, grid.astype(np.int64), feat, self._labels(scene)[idx][k]

    @staticmethod
    def _collate(parts: list[tuple[np.ndarray, ...]], device: torch.device, shift: bool = True) -> dict:
        coord = np.concatenate([p[0] for p in parts])
        grid = np.concatenate([p[1] - p[1].min(0) if shift else p[1] for p in parts])
        feat = np.concatenate([p[2] for p in parts])
        offset = np.cumsum([len(p[0]) for p in parts])
        return {"coord": torch.from_numpy(coord).to(device), "grid_coord": torch.from_numpy(grid).to(device),
                "feat": torch.from_numpy(feat).to(device), "offset": torch.from_numpy(offset).to(device),
                "inverse": None}

    def train_batches(self, epoch: int, rank: int, world: int) -> Iterator[TuneBatch]:
        """Global batches of ``batch_size`` scenes in an order drawn from (seed, epoch); rank r takes
        scenes r, r + world, ... of each; each scene augmented with an rng keyed by (seed, epoch, index)."""
        bs = self.cfg.batch_size
        if bs % world:
            raise ConfigError(f"tune: batch_size {bs} is not a multiple of the world size {world}")
        scenes = self.scenes(self.cfg.data.train_split)
        seed = self.cfg.tune.seed
        order = np.random.default_rng([seed, epoch, 7]).permutation(len(scenes))
        for s in range(0, len(order) - bs + 1, bs):  # full global batches only: same count on every rank
            mine = order[s: s + bs][rank::world]
            parts = [self._augment(scenes[i], np.random.default_rng([seed, epoch, int(i)])) for i in mine]
            inputs = self._collate(parts, self.device)
            labels = torch.from_numpy(np.concatenate([p[3] for p in parts]))
            groups = np.concatenate([np.full(len(p[0]), int(i), np.int64) for p, i in zip(parts, mine)])
            yield TuneBatch(inputs, labels, groups)

    def eval_batches(self, split: str, rank: int, world: int) -> Iterator[TuneBatch]:
        """Every input point of every scene scored (scenes sharded over ranks): one batch per scene, or
        per spatial chunk of a scene with more than ``eval_max_voxels`` voxels (the chunk's core voxels
        and their points; the cores partition the scene)."""
        scenes = self.scenes(split)
        for gi in dist.shard(range(len(scenes)), rank, world):
            sc = scenes[gi]
            xyz = center_shift(sc.coord)
            feat = _feat(self.feat_keys, xyz.astype(np.float32), sc.color.astype(np.float32) / 255.0,
                         sc.normal)
            gs = grid_sample(xyz, self.cfg.eval_grid_size, mode="first", source=sc.name, align="world")
            index = canonical_index(gs.inverse, len(gs), feat)
            vc, vg, vf = xyz[index], gs.grid_coord.astype(np.int64), feat[index]
            labels = self._labels(sc)
            m, mx = len(gs), self.cfg.eval_max_voxels
            if mx <= 0 or m <= mx:
                part = (vc.astype(np.float32), vg, vf, None)
                inputs = self._collate([part], self.device)  # the model scores voxels (inverse None) ...
                y = torch.from_numpy(labels)  # ... the loop copies them to the points, chunk by chunk
                yield TuneBatch(inputs, y, np.full(len(y), gi, np.int64),
                                expand=torch.from_numpy(gs.inverse.astype(np.int64)))
                continue
            local = np.full(m, -1, dtype=np.int64)
            for rows, core in spatial_chunks(vc, mx, self.cfg.eval_chunk_margin):
                local[:] = -1
                local[rows[core]] = np.flatnonzero(core)
                src = local[gs.inverse]
                pts = np.flatnonzero(src >= 0)  # the points whose voxel is a core voxel of this chunk
                gc = vg[rows]
                gc = gc - (gc.min(axis=0) // _ALIGN) * _ALIGN  # pooling cells as in the whole scene
                inputs = self._collate([(vc[rows].astype(np.float32), gc, vf[rows], None)], self.device,
                                       shift=False)
                yield TuneBatch(inputs, torch.from_numpy(labels[pts]), np.full(len(pts), gi, np.int64),
                                expand=torch.from_numpy(src[pts]))

    # -- encoder -------------------------------------------------------------------------------
    def build_encoder(self, device: torch.device) -> tuple[nn.Module, dict]:
        model, rec = build_encoder(self.cfg.encoder, device)
        if model is None:
            raise ConfigError("tune: encoder.name=raw has no encoder to tune")
        self.feat_keys = tuple(model.feat_keys)
        return model, {"encoder": rec.label, "name": rec.name, "checkpoint": rec.checkpoint,
                       "checkpoint_sha256": rec.checkpoint_sha256}

    def blocks(self, encoder: nn.Module) -> list[tuple[str, list[str]]]:
        """The encoder's declared blocks, covering every parameter: one of no block (stem, pooling)
        joins the next block in parameter order (the last block at the end)."""
        layout = encoder.block_layout()
        names = [n for n, _ in encoder.named_parameters() if n not in self.fixed(encoder)]
        owner = [block_index(n, layout) for n in names]
        out: list[list[str]] = [[] for _ in layout]
        pending: list[str] = []
        for n, b in zip(names, owner):
            if b is None:
                pending.append(n)
                continue
            out[b] += pending + [n]
            pending = []
        out[-1] += pending
        return [(name, ps) for (name, _), ps in zip(layout, out) if ps]

    def fixed(self, encoder: nn.Module) -> list[str]:
        """The mask token (pre-training only) never trains."""
        return [n for n, _ in encoder.named_parameters() if "mask_token" in n]

    def feature_dim(self, encoder: nn.Module) -> int:
        return int(encoder.feature_dim(self.cfg.levels))

    def features(self, encoder: nn.Module, inputs: dict) -> torch.Tensor:
        f = encoder.encode(_point(inputs), self.cfg.levels)
        inv = inputs.get("inverse")
        return f if inv is None else f[inv]

    def decoder(self, encoder: nn.Module, num_classes: int) -> nn.Module | None:
        d = self.cfg.decoder
        if d.kind not in ("auto", "ptv3", "sparseunet", "level"):
            raise ConfigError(f"tune: decoder.kind must be auto, ptv3, sparseunet or level, got {d.kind!r}")
        is_ptv3 = isinstance(encoder, PointTransformerV3)
        is_unet = isinstance(encoder, SparseUNet)
        if (d.kind == "ptv3" and not is_ptv3) or (d.kind == "sparseunet" and not is_unet):
            raise ConfigError(f"tune: decoder.kind={d.kind} does not fit a {type(encoder).__name__} encoder")
        if is_unet and d.kind != "level":
            channels, depths = decoder_lists(encoder, d)  # up-sampling runs coarse to fine: reversed
            return SparseUNetSegDecoder(encoder, channels[::-1], depths[::-1], num_classes).to(self.device)
        if is_ptv3 and d.kind != "level":
            n = encoder.num_stages - 1  # the defaults (Pointcept's 4 poolings) trimmed to shallower encoders
            channels, depths = decoder_lists(encoder, d)
            dec = PTv3Decoder.for_encoder(encoder, d.drop_path, dec_depths=depths, dec_channels=channels,
                                          dec_num_head=d.num_head[:n], dec_patch_size=d.patch_size[:n])
            return PTv3SegDecoder(encoder, dec, num_classes).to(self.device)
        probe = next(self.eval_batches(self.cfg.tune.eval_split, 0, 1)).inputs
        dims = level_dims(encoder, probe)
        return LevelDecoder(encoder, dims, num_classes, d.level_channels).to(self.device)


def run_point_tune(cfg: PointTuneConfig, max_steps: int | None = None) -> dict:
    """``pointprobe tune``: train / resume ``cfg.tune.method``, evaluate, write the result row."""
    from common.tuning.loop import run_tuning

    dist.init_from_env()
    device = dist.pick_device(cfg.device)
    task = PointTuneTask(cfg, device)
    return run_tuning(task, cfg.tune, cfg.out, cfg=cfg, device=device, max_steps=max_steps)


__all__ = ["PointTuneConfig", "PointTuneTask", "LevelDecoder", "decoder_lists", "PTv3SegDecoder",
           "SparseUNetSegDecoder", "run_point_tune",
           "TuneDataSpec", "TuneAugment", "TuneDecoder"]
