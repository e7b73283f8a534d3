"""SparseUNet (MinkUNet-style) encoder on spconv, with the same multi-level interface as the PTv3 encoder.

Layout (default widths): a point-wise stem ``Linear(in, 32) -> LayerNorm -> GELU`` (so a learned mask
token can replace masked points before any neighbourhood mixing), then level 0 = residual SubMConv3d
blocks at the input grid, then 4 stages, each a strided ``SparseConv3d(k=2, s=2)`` followed by
residual SubMConv3d blocks. Widths ``(32, 64, 128, 256, 256)`` by default: up-casting all 4 pooling
steps gives 32+64+128+256+256 = 736 channels per input (grid-sampled) point. An optional MinkUNet
decoder (``SparseInverseConv3d`` + skip concatenation) exists for dense tasks; pre-training and
probing use the encoder levels only.

Interface (``pointprobe.models.structure.PointEncoder``): ``forward(PointBatch) -> PointBatch`` of the
deepest level, each level linked to its finer ``parent`` with ``pooling_inverse`` (fine row -> coarse
row, voxel c -> c // 2) and carrying the mean coordinate of its children (as PTv3's pooling);
``encode(point, levels)`` gives one feature row per input row (``levels`` = number of concatenating
up-cast steps, default all).

CPU notes: spconv modules use ``ConvAlgo.Native`` for CPU tensors (the default algorithm asks for a
CUDA stream; implicit GEMM is switched on for CUDA tensors) and no spconv conv has a bias (in eval mode
spconv fuses the bias into the kernel, which fails on the CPU); every conv is followed by a norm that
carries the affine shift instead. The default norm is LayerNorm (per point, no batch statistics), so
results do not depend on how a batch is split across processes.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from common.errors import CheckpointError, ConfigError, InputError
from common.scatter import segment_reduce
from pointprobe.models._fx import quiet_fx_tracing_notice
from pointprobe.models.ptv3 import residual_decay_factors
from pointprobe.models.structure import BlockLayout, PointBatch, PointEncoder, upcast

with warnings.catch_warnings():  # spconv 2.3 uses the deprecated torch.cuda.amp decorators
    warnings.simplefilter("ignore", FutureWarning)
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo


__all__ = [
    "SparseUNet",
    "create_sparseunet",
    "save_sparseunet",
    "load_sparseunet",
    "ARCH",
    "DEFAULT_CONFIG",
]

ARCH = "sparseunet"

DEFAULT_CONFIG: dict = {
    "in_channels": 9,
    "channels": [32, 64, 128, 256, 256],  # level 0 (input grid) + one per downsample
    "depths": [1, 2, 2, 2, 2],  # residual blocks per level
    "kernel_size": 3,
    "norm": "ln",  # "ln" (LayerNorm, batch independent) or "bn" (BatchNorm1d)
    "drop_path": 0.0,
    "mask_token": False,
    "decoder_channels": [],  # [] = encoder only; else one width per upsample (coarse -> fine)
    "decoder_depths": [],
    "residual_decay": 1.0,  # shortcut weight of the last encoder block (linear from 1); 1 = plain residuals
}


def _algo_for(device: torch.device) -> ConvAlgo:
    """Native on the CPU (the only one spconv runs there), implicit GEMM on CUDA."""
    return ConvAlgo.Native if device.type == "cpu" else ConvAlgo.MaskImplicitGemm


def _make_norm(kind: str, c: int) -> nn.Module:
    if kind == "ln":
        return nn.LayerNorm(c)
    if kind == "bn":
        return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)
    raise ValueError(f"unknown norm {kind!r} (expected 'ln' or 'bn')")


def _drop_keep(n_samples: int, p: float, seeds: torch.Tensor | None, layer: int,
               device: torch.device) -> torch.Tensor:
    """(B,) keep decisions of stochastic depth: from the global RNG, or a pure function of
    (sample seed, layer) when seeds are given."""
    if seeds is None:
        return torch.rand(n_samples, device=device) >= p
    u = []
    for s in seeds.tolist():
        g = torch.Generator().manual_seed((int(s) * 1_000_003 + layer) % (2**63 - 1))
        u.append(float(torch.rand(1, generator=g)))
    return torch.tensor(u, device=device) >= p


class ResBlock(nn.Module):
    """conv-norm-GELU-conv-norm + (projected) skip, GELU; all convs submanifold, bias-free."""

    def __init__(self, c_in: int, c_out: int, k: int, key: str, norm: str, drop_path: float, layer: int = 0):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(c_in, c_out, k, bias=False, indice_key=key, algo=ConvAlgo.Native)
        self.norm1 = _make_norm(norm, c_out)
        self.conv2 = spconv.SubMConv3d(c_out, c_out, k, bias=False, indice_key=key, algo=ConvAlgo.Native)
        self.norm2 = _make_norm(norm, c_out)
        self.proj = None if c_in == c_out else nn.Sequential(nn.Linear(c_in, c_out, bias=False),
                                                             _make_norm(norm, c_out))
        self.drop_path = drop_path
        self.layer = layer
        self.shortcut_scale = 1.0  # residual decay: the weight of the skip (1 = plain residual)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        skip = x.features if self.proj is None else self.proj(x.features)
        if self.shortcut_scale != 1.0:
            skip = skip * self.shortcut_scale
        h = self.conv1(x)
        h = h.replace_feature(F.gelu(self.norm1(h.features)))
        h = self.conv2(h)
        f = self.norm2(h.features)
        if self.training and self.drop_path > 0:
            keep = _drop_keep(x.batch_size, self.drop_path, getattr(x, "drop_path_seed", None), self.layer,
                              f.device)
            f = f * (keep.to(f.dtype) / (1.0 - self.drop_path))[x.indices[:, 0].long()].unsqueeze(1)
        out = h.replace_feature(F.gelu(skip + f))
        out.drop_path_seed = getattr(x, "drop_path_seed", None)
        return out


class DownBlock(nn.Module):
    """Strided SparseConv3d(k=2, s=2) -> norm -> GELU (voxel c goes to c // 2)."""

    def __init__(self, c_in: int, c_out: int, key: str, norm: str):
        super().__init__()
        self.conv = spconv.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key,
                                        algo=ConvAlgo.Native)
        self.norm = _make_norm(norm, c_out)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        h = self.conv(x)
        return h.replace_feature(F.gelu(self.norm(h.features)))


class UpBlock(nn.Module):
    """SparseInverseConv3d back to the finer level, concat the skip, residual blocks."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, key: str, depth: int, k: int, norm: str,
                 sub_key: str):
        super().__init__()
        self.up = spconv.SparseInverseConv3d(c_in, c_out, 2, indice_key=key, bias=False, algo=ConvAlgo.Native)
        self.norm = _make_norm(norm, c_out)
        self.blocks = nn.ModuleList(
            [ResBlock(c_out + c_skip if i == 0 else c_out, c_out, k, sub_key, norm, 0.0)
             for i in range(depth)]
        )

    def forward(self, x: spconv.SparseConvTensor, skip: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        h = self.up(x)
        h = h.replace_feature(torch.cat([F.gelu(self.norm(h.features)), skip.features], 1))
        for b in self.blocks:
            h = b(h)
        return h


def _voxel_keys(idx: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys of spconv indices (b, x, y, z) for a spatial shape."""
    idx = idx.long()
    return ((idx[:, 0] * shape[0] + idx[:, 1]) * shape[1] + idx[:, 2]) * shape[2] + idx[:, 3]


def _parent_index(fine: torch.Tensor, coarse: torch.Tensor, coarse_shape: list[int]) -> torch.Tensor:
    """For every fine voxel (b, c) the row of the coarse voxel (b, c // 2) in ``coarse``."""
    shape = torch.tensor(coarse_shape, device=fine.device, dtype=torch.long)
    parent = fine.long().clone()
    parent[:, 1:] = torch.div(parent[:, 1:], 2, rounding_mode="floor")
    ck = _voxel_keys(coarse, shape)
    order = torch.argsort(ck)
    fk = _voxel_keys(parent, shape)
    pos = torch.searchsorted(ck[order], fk)
    pos = pos.clamp_max(len(ck) - 1)
    if not torch.equal(ck[order][pos], fk):
        raise RuntimeError("strided conv output misses a parent voxel (spconv convention changed?)")
    return order[pos]


class SparseUNet(PointEncoder):
    """MinkUNet-style sparse residual encoder (+ optional decoder); see the module docstring."""

    arch = ARCH

    def __init__(self, in_channels: int = 9, channels: tuple[int, ...] | list[int] = (32, 64, 128, 256, 256),
                 depths: tuple[int, ...] | list[int] = (1, 2, 2, 2, 2), kernel_size: int = 3,
                 norm: str = "ln", drop_path: float = 0.0, mask_token: bool = False,
                 decoder_channels: tuple[int, ...] | list[int] = (),
                 decoder_depths: tuple[int, ...] | list[int] = (), residual_decay: float = 1.0):
        super().__init__()
        channels, depths = [int(c) for c in channels], [int(d) for d in depths]
        decoder_channels = [int(c) for c in decoder_channels]
        decoder_depths = [int(d) for d in decoder_depths]
        if len(channels) != len(depths) or len(channels) < 1:
            raise ValueError(f"channels {channels} and depths {depths} must have the same non-zero length")
        if len(decoder_channels) != len(decoder_depths) or len(decoder_channels) > len(channels) - 1:
            raise ValueError("decoder_channels/decoder_depths: same length, at most one per downsample")
        _make_norm(norm, 1)  # validates the name
        if isinstance(residual_decay, bool) or not isinstance(residual_decay, int | float) \
                or not 0.0 <= residual_decay <= 1.0:
            raise ValueError(f"residual_decay must be a number in [0, 1] (1 = off), got {residual_decay!r}")
        self.config = {
            "in_channels": int(in_channels), "channels": channels, "depths": depths,
            "kernel_size": int(kernel_size), "norm": norm, "drop_path": float(drop_path),
            "mask_token": bool(mask_token), "decoder_channels": decoder_channels,
            "decoder_depths": decoder_depths,
        }
        if residual_decay != 1.0:  # off: the key stays absent (configs of earlier files unchanged)
            self.config["residual_decay"] = float(residual_decay)
        self.in_channels = int(in_channels)
        self.channels = tuple(channels)
        self.stem = nn.Sequential(nn.Linear(in_channels, channels[0]), nn.LayerNorm(channels[0]), nn.GELU())
        self.mask_token = nn.Parameter(torch.zeros(1, channels[0])) if mask_token else None
        total = sum(depths)
        dpr = [drop_path * i / max(total - 1, 1) for i in range(total)]
        self.downs = nn.ModuleList()
        self.levels = nn.ModuleList()
        bi = 0
        for lvl, (c, d) in enumerate(zip(channels, depths)):
            if lvl > 0:
                self.downs.append(DownBlock(channels[lvl - 1], c, f"down{lvl}", norm))
            self.levels.append(nn.ModuleList(
                [ResBlock(c, c, kernel_size, f"subm{lvl}", norm, dpr[bi + i], bi + i) for i in range(d)]
            ))
            bi += d
        # residual decay: encoder block l of L scales its skip by 1 - (1 - residual_decay) * l / (L - 1)
        alphas = residual_decay_factors(total, float(residual_decay))
        for block, alpha in zip((b for lvl in self.levels for b in lvl), alphas):
            block.shortcut_scale = alpha
        self.ups = nn.ModuleList()
        c_prev = channels[-1]
        for j, (c, d) in enumerate(zip(decoder_channels, decoder_depths)):
            lvl = len(channels) - 1 - j  # upsample level lvl -> lvl - 1
            self.ups.append(UpBlock(c_prev, channels[lvl - 1], c, f"down{lvl}", d, kernel_size, norm,
                                    f"subm{lvl - 1}"))
            c_prev = c
        self.apply(self._init)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, spconv.conv.SparseConvolution):
            # He fan-in init of the kernel (layout [C_out, k, k, k, C_in])
            fan_in = m.weight.shape[-1] * math.prod(m.weight.shape[1:-1])
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_in))

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    def feature_dim(self, levels: int | None = None) -> int:
        """Width of :meth:`encode` with ``levels`` concatenating up-cast steps (default all): the last
        ``levels + 1`` level widths (as for PTv3)."""
        steps = self.num_levels - 1 if levels is None else levels
        if not 0 <= steps <= self.num_levels - 1:
            raise ValueError(f"levels must be in [0, {self.num_levels - 1}], got {levels}")
        return sum(self.channels[self.num_levels - 1 - steps:])

    def _sync_algo(self, device: torch.device) -> None:
        if getattr(self, "_algo_device", None) == device.type:
            return
        algo = _algo_for(device)
        for m in self.modules():
            if isinstance(m, spconv.conv.SparseConvolution):
                m.algo = algo  # weights are KRSC for every algorithm in spconv 2.3
        self._algo_device = device.type

    def _as_batch(self, point: PointBatch | Mapping) -> PointBatch:
        if not isinstance(point, PointBatch):
            point = PointBatch.from_dict(point)
        if point.feat.shape[1] != self.in_channels:
            raise InputError(None, f"feat has {point.feat.shape[1]} channels, the encoder expects "
                                   f"{self.in_channels} ({'+'.join(self.feat_keys)})")
        return point

    def forward(self, point: PointBatch | Mapping) -> PointBatch:
        """Encode; returns the deepest level (``parent`` links down to a copy of the input level).

        ``point.mask`` (bool rows) is replaced by the mask token when the model has one;
        ``point.cache["drop_path_seed"]`` (B,) int64, when present, makes stochastic depth a function
        of the sample (the same sample gets the same drops whatever batch it is in).
        """
        point = self._as_batch(point)
        self._sync_algo(point.feat.device)
        x = self.stem(point.feat)
        if point.mask is not None and self.mask_token is not None:
            m = point.mask.to(x.dtype).unsqueeze(1)
            x = x * (1 - m) + self.mask_token.to(x.dtype) * m
        n_down = self.num_levels - 1
        mult = 2 ** n_down  # padded so every strided level keeps exact c // 2 parents
        extent = point.grid_coord.max(0).values.long() + 1
        shape = (((extent + mult - 1) // mult) * mult).clamp_min(mult).tolist()
        indices = torch.cat([point.batch.int().unsqueeze(1), point.grid_coord.int()], 1).contiguous()
        with quiet_fx_tracing_notice():
            st = spconv.SparseConvTensor(x, indices, shape, point.num_samples)
        seeds = point.cache.get("drop_path_seed")
        if seeds is not None:
            st.drop_path_seed = seeds  # read by the residual blocks
        node = dataclasses.replace(point, feat=x, cache={}, parent=None, pooling_inverse=None)
        tensors = []
        # spconv orders the voxels of a strided output as it likes (not by sample): each coarse level is
        # exposed in (sample, x, y, z) order; ``perm`` maps those rows to spconv's rows.
        perm: torch.Tensor | None = None  # None: level 0, rows = input rows = spconv rows
        for lvl, blocks in enumerate(self.levels):
            if lvl > 0:
                prev = st
                st = self.downs[lvl - 1](st)
                st.drop_path_seed = seeds
                inv_sp = _parent_index(prev.indices, st.indices, st.spatial_shape)  # spconv row -> spconv row
                shape = torch.tensor(st.spatial_shape, device=st.indices.device, dtype=torch.long)
                new_perm = torch.argsort(_voxel_keys(st.indices, shape))
                rank = torch.empty_like(new_perm)
                rank[new_perm] = torch.arange(new_perm.numel(), device=new_perm.device)
                inv = rank[inv_sp if perm is None else inv_sp[perm]]  # parent row -> row (node orders)
                perm = new_perm
                idx = st.indices[perm].long()
                m = idx.shape[0]
                coord = segment_reduce(node.coord, inv, m, "mean")
                bidx = idx[:, 0]
                node = PointBatch(coord=coord, grid_coord=idx[:, 1:], feat=st.features[perm],
                                  offset=torch.cumsum(torch.bincount(bidx, minlength=point.num_samples), 0),
                                  batch=bidx, grid_size=None if point.grid_size is None
                                  else point.grid_size * 2 ** lvl, parent=node, pooling_inverse=inv)
            for b in blocks:
                st = b(st)
            node.feat = st.features if perm is None else st.features[perm]
            if perm is None:
                node.sparse = st  # level 0 only: spconv rows are this level's rows
            tensors.append(st)
        if len(self.ups):
            h = tensors[-1]
            for j, up in enumerate(self.ups):
                h = up(h, tensors[len(tensors) - 2 - j])
            node.cache["decoded"] = h.features  # rows of the input level
        return node

    def encode(self, point: PointBatch | Mapping, levels: int | None = None) -> torch.Tensor:
        """One feature row per input row: forward + :func:`upcast` with ``levels`` concatenating steps
        (default all; the remaining steps copy the features down)."""
        out = self.forward(point)
        steps = self.num_levels - 1
        concat = steps if levels is None else levels
        if not 0 <= concat <= steps:
            raise ValueError(f"levels must be in [0, {steps}], got {levels}")
        return upcast(out, concat, steps).feat

    def block_layout(self) -> BlockLayout:
        """The residual blocks, level by level (stem, down-sampling, decoder and mask token: no block)."""
        return [(f"levels.{lvl}.{b}", [f"levels.{lvl}.{b}."]) for lvl, blocks in enumerate(self.levels)
                for b in range(len(blocks))]


def create_sparseunet(**cfg) -> SparseUNet:
    """Factory for ``pointprobe.models.ENCODERS["sparseunet"]`` (keyword arguments of ``DEFAULT_CONFIG``)."""
    bad = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if bad:
        raise ConfigError(f"sparseunet: unknown config key(s) {bad}; known keys: {sorted(DEFAULT_CONFIG)}")
    try:
        return SparseUNet(**cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sparseunet: bad config ({e})") from None


def save_sparseunet(model: SparseUNet, path: str | Path) -> Path:
    """Write the release format ``{"config", "state_dict", "arch": "sparseunet"}`` (atomically, through
    ``common.checkpoint``; ``pointprobe.models.save_encoder`` writes the same plus ``meta``)."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return save_checkpoint({"config": dict(model.config), "state_dict": sd, "arch": ARCH}, path)


def load_sparseunet(path_or_ckpt: str | Path | dict, strict: bool = True) -> SparseUNet:
    """Build a SparseUNet from a release-format file (or the already-loaded dict); ``strict=False``
    lets the file lack the mask token."""
    if isinstance(path_or_ckpt, dict):
        ckpt, name = path_or_ckpt, "<checkpoint>"
    else:
        name = str(path_or_ckpt)
        ckpt = load_checkpoint(name)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{name}: not a release-format checkpoint (needs 'config' and 'state_dict')")
    if ckpt.get("arch", ARCH) != ARCH:
        raise CheckpointError(f"{name}: arch is {ckpt.get('arch')!r}, not {ARCH!r}")
    try:
        model = create_sparseunet(**ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{name}: bad SparseUNet config ({e})") from None
    sd = ckpt["state_dict"]
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{name}: tensor {k} has NaN/inf")
    load_state_dict_strict(model, sd, name, what="state_dict mismatch", sep="; ", style="counted",
                           allow_missing=() if strict else ("mask_token",))
    return model
