"""SparseUNet (MinkUNet-style) encoder on spconv, with the same multi-level interface as the PTv3 encoder.

Layout (default widths): a point-wise stem ``Linear(in, 32) -> LayerNorm -> GELU`` (so a learned mask
token can replace masked points before any neighbourhood mixing), then level 0 = residual SubMConv3d
blocks at the input grid, then 4 stages, each a strided ``SparseConv3d(k=2, s=2)`` followed by
residual SubMConv3d blocks. Widths ``(32, 64, 128, 256, 256)`` by default: up-casting all 5 levels
gives 736 channels per grid-sampled point. An optional MinkUNet decoder (``SparseInverseConv3d`` +
skip concatenation) exists for dense tasks; pre-training and probing use the encoder levels only.

CPU notes: every spconv module uses ``ConvAlgo.Native`` for CPU tensors (the default algorithm asks
for a CUDA stream) and no spconv conv has a bias (in eval mode spconv fuses the bias into the kernel,
which fails on the CPU); every conv is followed by a norm that carries the affine shift instead.
The default norm is LayerNorm (per point, no batch statistics), so results do not depend on how a
batch is split across processes.

Input batch (a dict, Pointcept naming): ``coord`` (N,3) float, ``grid_coord`` (N,3) int (per-sample,
non-negative), ``feat`` (N,C_in), ``offset`` (B,) cumulative point counts (or ``batch`` (N,) sample
ids), optionally ``mask`` (N,) bool (points to replace with the mask token).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import CheckpointError, InputError

with warnings.catch_warnings():  # spconv 2.3 uses the deprecated torch.cuda.amp decorators
    warnings.simplefilter("ignore", FutureWarning)
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo

__all__ = [
    "SparseUNetConfig",
    "SparseUNet",
    "EncoderLevels",
    "upcast",
    "offset_to_batch",
    "batch_to_offset",
    "create_sparseunet",
    "save_sparseunet",
    "load_sparseunet",
    "ARCH",
]

ARCH = "sparseunet"


@dataclass
class SparseUNetConfig:
    """Constructor arguments of :class:`SparseUNet` (stored as ``config`` in checkpoints)."""

    in_channels: int = 9
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)  # level 0 (input grid) + one per downsample
    depths: tuple[int, ...] = (1, 2, 2, 2, 2)  # residual blocks per level
    kernel_size: int = 3
    norm: str = "ln"  # "ln" (LayerNorm, batch independent) or "bn" (BatchNorm1d)
    drop_path: float = 0.0
    mask_token: bool = False
    decoder_channels: tuple[int, ...] = ()  # () = encoder only; else one width per upsample (coarse->fine)
    decoder_depths: tuple[int, ...] = ()


def _algo_for(device: torch.device) -> ConvAlgo:
    """Native on the CPU (the only one spconv runs there), implicit GEMM on CUDA."""
    return ConvAlgo.Native if device.type == "cpu" else ConvAlgo.MaskImplicitGemm


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """Cumulative counts ``[n0, n0+n1, ...]`` -> per-point sample ids (N,) int64."""
    offset = offset.long()
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)


def batch_to_offset(batch: torch.Tensor) -> torch.Tensor:
    """Sorted per-point sample ids (N,) -> cumulative counts (B,)."""
    return torch.cumsum(torch.bincount(batch.long()), 0)


def _make_norm(kind: str, c: int) -> nn.Module:
    if kind == "ln":
        return nn.LayerNorm(c)
    if kind == "bn":
        return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)
    raise ValueError(f"unknown norm {kind!r} (expected 'ln' or 'bn')")


def _drop_path(x: torch.Tensor, batch: torch.Tensor, n_samples: int, p: float,
               training: bool) -> torch.Tensor:
    """Per-sample stochastic depth on a residual branch (samples = scenes of the batch)."""
    if p <= 0.0 or not training:
        return x
    keep = (torch.rand(n_samples, device=x.device) >= p).to(x.dtype) / (1.0 - p)
    return x * keep[batch].unsqueeze(1)


class ResBlock(nn.Module):
    """conv-norm-GELU-conv-norm + (projected) skip, GELU; all convs submanifold, bias-free."""

    def __init__(self, c_in: int, c_out: int, k: int, key: str, norm: str, drop_path: float):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(c_in, c_out, k, bias=False, indice_key=key, algo=ConvAlgo.Native)
        self.norm1 = _make_norm(norm, c_out)
        self.conv2 = spconv.SubMConv3d(c_out, c_out, k, bias=False, indice_key=key, algo=ConvAlgo.Native)
        self.norm2 = _make_norm(norm, c_out)
        self.proj = None if c_in == c_out else nn.Sequential(nn.Linear(c_in, c_out, bias=False),
                                                             _make_norm(norm, c_out))
        self.drop_path = drop_path

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        skip = x.features if self.proj is None else self.proj(x.features)
        h = self.conv1(x)
        h = h.replace_feature(F.gelu(self.norm1(h.features)))
        h = self.conv2(h)
        f = self.norm2(h.features)
        batch = x.indices[:, 0].long()
        f = _drop_path(f, batch, x.batch_size, self.drop_path, self.training)
        return h.replace_feature(F.gelu(skip + f))


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


@dataclass
class EncoderLevels:
    """Multi-level encoder output.

    ``feats[l]`` (M_l, C_l) features of level l (level 0 = the input, grid-sampled points, in input
    order); ``inverses[l]`` for l >= 1: (M_{l-1},) index into level l of every point of level l-1
    (``inverses[0]`` is None); ``batch[l]`` (M_l,) sample ids; ``decoded`` optional decoder output
    at level 0.
    """

    feats: list[torch.Tensor]
    inverses: list[torch.Tensor | None]
    batch: list[torch.Tensor]
    decoded: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_levels(self) -> int:
        return len(self.feats)


def upcast(levels: EncoderLevels, n_levels: int | None = None,
           concat_levels: int | None = None) -> torch.Tensor:
    """Per level-0 point features: walk back from level ``n_levels - 1`` to 0 concatenating.

    ``n_levels`` (default all) is how many levels take part; ``concat_levels`` (default all of them)
    is how many of the coarse-to-fine steps concatenate; the remaining steps only copy features down
    (the Sonata PCA-demo style). ``upcast(levels)`` on the default SparseUNet gives 736 channels.
    """
    L = levels.num_levels if n_levels is None else n_levels
    if not 1 <= L <= levels.num_levels:
        raise ValueError(f"n_levels must be in [1, {levels.num_levels}], got {L}")
    n_concat = L - 1 if concat_levels is None else concat_levels
    x = levels.feats[L - 1]
    for step, lvl in enumerate(range(L - 1, 0, -1)):
        parent = x[levels.inverses[lvl]]
        x = torch.cat([levels.feats[lvl - 1], parent], 1) if step < n_concat else parent
    return x


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


class SparseUNet(nn.Module):
    """MinkUNet-style sparse residual encoder (+ optional decoder); see the module docstring."""

    def __init__(self, in_channels: int = 9, channels: tuple[int, ...] = (32, 64, 128, 256, 256),
                 depths: tuple[int, ...] = (1, 2, 2, 2, 2), kernel_size: int = 3, norm: str = "ln",
                 drop_path: float = 0.0, mask_token: bool = False, decoder_channels: tuple[int, ...] = (),
                 decoder_depths: tuple[int, ...] = ()):
        super().__init__()
        channels, depths = tuple(channels), tuple(depths)
        decoder_channels, decoder_depths = tuple(decoder_channels), tuple(decoder_depths)
        if len(channels) != len(depths) or len(channels) < 1:
            raise ValueError(f"channels {channels} and depths {depths} must have the same non-zero length")
        if len(decoder_channels) != len(decoder_depths) or len(decoder_channels) > len(channels) - 1:
            raise ValueError("decoder_channels/decoder_depths: same length, at most one per downsample")
        self.config = SparseUNetConfig(in_channels, channels, depths, kernel_size, norm, drop_path,
                                       mask_token, decoder_channels, decoder_depths)
        self.in_channels = in_channels
        self.channels = channels
        self.stem = nn.Sequential(nn.Linear(in_channels, channels[0]), nn.LayerNorm(channels[0]), nn.GELU())
        self.mask_token = nn.Parameter(torch.zeros(1, channels[0])) if mask_token else None
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        total = sum(depths)
        dpr = [drop_path * i / max(total - 1, 1) for i in range(total)]
        self.downs = nn.ModuleList()
        self.levels = nn.ModuleList()
        bi = 0
        for lvl, (c, d) in enumerate(zip(channels, depths)):
            if lvl > 0:
                self.downs.append(DownBlock(channels[lvl - 1], c, f"down{lvl}", norm))
            blocks = nn.ModuleList(
                [ResBlock(c, c, kernel_size, f"subm{lvl}", norm, dpr[bi + i]) for i in range(d)]
            )
            bi += d
            self.levels.append(blocks)
        self.ups = nn.ModuleList()
        c_prev = channels[-1]
        for j, (c, d) in enumerate(zip(decoder_channels, decoder_depths)):
            lvl = len(channels) - 1 - j  # upsample level lvl -> lvl - 1
            self.ups.append(UpBlock(c_prev, channels[lvl - 1], c, f"down{lvl}", d, kernel_size, norm,
                                    f"subm{lvl - 1}"))
            c_prev = c
        self.out_channels = sum(channels)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, spconv.conv.SparseConvolution):
            # kaiming-style fan-in init for the kernel (layout [C_out, k, k, k, C_in])
            fan_in = m.weight.shape[-1] * math.prod(m.weight.shape[1:-1])
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_in))

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    def upcast_channels(self, n_levels: int | None = None) -> int:
        """Width of :func:`upcast` with ``n_levels`` levels (all concatenated)."""
        return sum(self.channels[: n_levels or len(self.channels)])

    def _sparse_input(self, batch: dict) -> tuple[spconv.SparseConvTensor, torch.Tensor, int]:
        feat = batch["feat"]
        grid = batch["grid_coord"]
        if "batch" in batch and batch["batch"] is not None:
            bidx = batch["batch"].long()
        elif "offset" in batch:
            bidx = offset_to_batch(batch["offset"].to(grid.device))
        else:
            raise InputError(None, "batch has neither 'offset' nor 'batch'")
        if feat.shape[0] != grid.shape[0] or feat.shape[1] != self.in_channels:
            raise InputError(None, f"feat {tuple(feat.shape)} does not match grid_coord {tuple(grid.shape)} "
                                   f"/ in_channels {self.in_channels}")
        if grid.shape[0] == 0:
            raise InputError(None, "empty point batch")
        if (grid < 0).any():
            raise InputError(None, "grid_coord must be non-negative")
        x = self.stem(feat)
        mask = batch.get("mask")
        if mask is not None and self.mask_token is not None:
            m = mask.to(x.dtype).unsqueeze(1)
            x = x * (1 - m) + self.mask_token.to(x.dtype) * m
        n_down = len(self.channels) - 1
        # spatial shape: a multiple of 2**n_down so every strided level keeps exact c // 2 parents
        mult = 2 ** n_down
        extent = (grid.max(0).values.long() + 1)
        shape = (((extent + mult - 1) // mult) * mult).clamp_min(mult).tolist()
        indices = torch.cat([bidx.int().unsqueeze(1), grid.int()], 1).contiguous()
        n_samples = int(bidx.max().item()) + 1
        st = spconv.SparseConvTensor(x, indices, shape, n_samples)
        return st, bidx, n_samples

    def _sync_algo(self, device: torch.device) -> None:
        algo = _algo_for(device)
        if getattr(self, "_algo_device", None) == device.type:
            return
        for m in self.modules():
            if isinstance(m, spconv.conv.SparseConvolution):
                m.algo = algo  # weights are KRSC for every algorithm in spconv 2.3
        self._algo_device = device.type

    def forward(self, batch: dict) -> EncoderLevels:
        """Encode a batch; returns :class:`EncoderLevels` (use :func:`upcast` for per-point features)."""
        self._sync_algo(batch["feat"].device)
        x, bidx, _ = self._sparse_input(batch)
        feats: list[torch.Tensor] = []
        invs: list[torch.Tensor | None] = []
        bats: list[torch.Tensor] = []
        tensors: list[spconv.SparseConvTensor] = []
        for lvl, blocks in enumerate(self.levels):
            if lvl > 0:
                prev = x
                x = self.downs[lvl - 1](x)
                invs.append(_parent_index(prev.indices, x.indices, x.spatial_shape))
            else:
                invs.append(None)
            for b in blocks:
                x = b(x)
            tensors.append(x)
            feats.append(x.features)
            bats.append(x.indices[:, 0].long())
        decoded = None
        if len(self.ups):
            h = tensors[-1]
            for j, up in enumerate(self.ups):
                h = up(h, tensors[len(tensors) - 2 - j])
            decoded = h.features
        return EncoderLevels(feats, invs, bats, decoded)

    def encode(self, batch: dict, n_levels: int | None = None) -> torch.Tensor:
        """Per input (grid-sampled) point features: forward + :func:`upcast`."""
        return upcast(self.forward(batch), n_levels)


def create_sparseunet(**cfg) -> SparseUNet:
    """Factory for ``pointprobe.models.ENCODERS["sparseunet"]`` (keyword arguments of SparseUNetConfig)."""
    known = {f.name for f in dataclasses.fields(SparseUNetConfig)}
    bad = sorted(set(cfg) - known)
    if bad:
        raise ValueError(f"unknown SparseUNet argument(s) {bad}; known: {sorted(known)}")
    return SparseUNet(**cfg)


def _config_dict(model: SparseUNet) -> dict:
    d = dataclasses.asdict(model.config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def save_sparseunet(model: SparseUNet, path: str | Path) -> Path:
    """Write the release format ``{"config", "state_dict", "arch": "sparseunet"}`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": _config_dict(model), "state_dict": sd, "arch": ARCH}, tmp)
    tmp.replace(path)
    return path


def load_sparseunet(path_or_ckpt: str | Path | dict, strict: bool = True) -> SparseUNet:
    """Build a SparseUNet from a release-format file (or the already-loaded dict)."""
    if isinstance(path_or_ckpt, dict):
        ckpt, name = path_or_ckpt, "<checkpoint>"
    else:
        name = str(path_or_ckpt)
        if not Path(name).is_file():
            raise CheckpointError(f"{name}: checkpoint not found")
        try:
            ckpt = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
            raise CheckpointError(f"{name}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{name}: not a release-format checkpoint (needs 'config' and 'state_dict')")
    if ckpt.get("arch", ARCH) != ARCH:
        raise CheckpointError(f"{name}: arch is {ckpt.get('arch')!r}, not {ARCH!r}")
    try:
        model = create_sparseunet(**ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: bad SparseUNet config ({e})") from None
    sd = ckpt["state_dict"]
    if not strict and model.mask_token is not None and "mask_token" not in sd:
        sd = dict(sd, mask_token=model.mask_token.detach())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{name}: state_dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{name}: tensor {k} has NaN/inf")
    return model
