"""Point Transformer V3 encoder with the parameter layout of the official Sonata release.

Built from the constructor config stored in Sonata checkpoints (``{"config", "state_dict"}``); the
module tree reproduces the release's parameter names and shapes, so a release ``state_dict`` loads
with a strict key check. Differences from the release, all about determinism and portability:

- Serialization orders are never shuffled at inference: block b of every stage uses order
  ``b % len(order)``. Shuffling (per level, as in pre-training) happens only when ``self.training``
  and ``shuffle_orders=True``.
- Patch attention runs with ``torch.nn.functional.scaled_dot_product_attention`` (flash-attn's varlen
  kernel on CUDA when it is installed and ``enable_flash=True``). Patches follow the release's rule:
  ``enable_flash=True`` -> per sample K = min(patch size, sample size); ``enable_flash=False`` ->
  K = min(patch size, smallest sample of the batch). A sample longer than K is cut into patches of K
  sorted points, the last patch being the last K points of the sample (the release pads with points
  of the previous patch, which is the same set).
- The CPE sparse convolution runs on the CPU (spconv's native algorithm, bias added after the conv).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from common.errors import ConfigError, InputError
from common.scatter import segment_reduce

from ._fx import quiet_fx_tracing_notice
from .serialization import ORDERS, serialize
from .structure import BlockLayout, PointBatch, PointEncoder, upcast

try:  # optional CUDA kernel
    import flash_attn  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - not installed on CPU machines
    flash_attn = None

# Keyword arguments of the release constructor and their defaults (``enc_mode`` defaults to True here:
# this is an encoder-only implementation).
PTV3_DEFAULTS: dict[str, Any] = {
    "in_channels": 6,
    "order": ["z", "z-trans"],
    "stride": [2, 2, 2, 2],
    "enc_depths": [3, 3, 3, 12, 3],
    "enc_channels": [48, 96, 192, 384, 512],
    "enc_num_head": [3, 6, 12, 24, 32],
    "enc_patch_size": [1024, 1024, 1024, 1024, 1024],
    "dec_depths": [3, 3, 3, 3],
    "dec_channels": [96, 96, 192, 384],
    "dec_num_head": [6, 6, 12, 32],
    "dec_patch_size": [1024, 1024, 1024, 1024],
    "mlp_ratio": 4,
    "qkv_bias": True,
    "qk_scale": None,
    "attn_drop": 0.0,
    "proj_drop": 0.0,
    "drop_path": 0.3,
    "layer_scale": None,
    "pre_norm": True,
    "shuffle_orders": True,
    "enable_rpe": False,
    "enable_flash": True,
    "upcast_attention": False,
    "upcast_softmax": False,
    "traceable": False,
    "mask_token": False,
    "enc_mode": True,
    "freeze_encoder": False,
    # residual decay (pre-training option): the identity shortcuts of encoder block l (of L) are scaled
    # by alpha_l = 1 - (1 - residual_decay) * l / (L - 1); 1.0 = plain residuals (the Sonata model)
    "residual_decay": 1.0,
}
# Keys accepted for compatibility that change nothing in this encoder-only model.
INERT_KEYS = ("dec_depths", "dec_channels", "dec_num_head", "dec_patch_size", "traceable")

SONATA_CONFIG: dict[str, Any] = {
    "in_channels": 9,
    "order": ["z", "z-trans", "hilbert", "hilbert-trans"],
    "stride": [2, 2, 2, 2],
    "enc_depths": [3, 3, 3, 12, 3],
    "enc_channels": [48, 96, 192, 384, 512],
    "enc_num_head": [3, 6, 12, 24, 32],
    "enc_patch_size": [1024, 1024, 1024, 1024, 1024],
    "mlp_ratio": 4,
    "qkv_bias": True,
    "qk_scale": None,
    "attn_drop": 0.0,
    "proj_drop": 0.0,
    "drop_path": 0.3,
    "shuffle_orders": True,
    "pre_norm": True,
    "enable_rpe": False,
    "enable_flash": True,
    "upcast_attention": False,
    "upcast_softmax": False,
    "traceable": True,
    "enc_mode": True,
    "mask_token": True,
}
SONATA_SMALL_CONFIG: dict[str, Any] = {
    **SONATA_CONFIG,
    "enc_depths": [2, 2, 2, 6, 2],
    "enc_channels": [32, 64, 128, 256, 512],
    "enc_num_head": [2, 4, 8, 16, 32],
}
# A 3-stage model small enough for unit tests (112 output channels with every level up-cast).
PTV3_TINY_CONFIG: dict[str, Any] = {
    **SONATA_CONFIG,
    "stride": [2, 2],
    "enc_depths": [1, 1, 1],
    "enc_channels": [16, 32, 64],
    "enc_num_head": [1, 2, 4],
    "enc_patch_size": [64, 64, 64],
    "mlp_ratio": 2,
    "drop_path": 0.0,
}

_SEQ_KEYS = ("order", "stride", "enc_depths", "enc_channels", "enc_num_head", "enc_patch_size",
             "dec_depths", "dec_channels", "dec_num_head", "dec_patch_size")
_BOOL_KEYS = ("qkv_bias", "pre_norm", "shuffle_orders", "enable_rpe", "enable_flash", "upcast_attention",
              "upcast_softmax", "traceable", "mask_token", "enc_mode", "freeze_encoder")


def resolve_ptv3_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults <- ``cfg``; unknown keys or inconsistent values raise ``ConfigError``."""
    unknown = sorted(set(cfg) - set(PTV3_DEFAULTS))
    if unknown:
        raise ConfigError(f"ptv3: unknown config key(s) {unknown}; known keys: {sorted(PTV3_DEFAULTS)}")
    out = {**PTV3_DEFAULTS, **cfg}
    for k in _SEQ_KEYS:
        v = out[k]
        out[k] = [v] if isinstance(v, str) else list(v)
    for k in _BOOL_KEYS:
        if not isinstance(out[k], bool):
            raise ConfigError(f"ptv3: {k} must be true/false, got {out[k]!r}")
    if not out["enc_mode"]:
        raise ConfigError("ptv3: enc_mode=False (PTv3 with a decoder) is not supported; this is the "
                          "encoder-only model of the Sonata release (enc_mode=True)")
    n = len(out["enc_depths"])
    for k in ("enc_channels", "enc_num_head", "enc_patch_size"):
        if len(out[k]) != n:
            raise ConfigError(f"ptv3: {k} has {len(out[k])} entries but enc_depths has {n}")
    if len(out["stride"]) != n - 1:
        raise ConfigError(f"ptv3: stride needs {n - 1} entries (one per pooling), got {len(out['stride'])}")
    for c, h in zip(out["enc_channels"], out["enc_num_head"]):
        if c % h:
            raise ConfigError(f"ptv3: channels {c} not divisible by {h} heads")
    bad = [o for o in out["order"] if o not in ORDERS]
    if bad or not out["order"]:
        raise ConfigError(f"ptv3: order must be a non-empty list of {ORDERS}, got {out['order']}")
    if out["layer_scale"] is not None and not isinstance(out["layer_scale"], int | float):
        raise ConfigError(f"ptv3: layer_scale must be a number or null, got {out['layer_scale']!r}")
    rd = out["residual_decay"]
    if isinstance(rd, bool) or not isinstance(rd, int | float) or not 0.0 <= rd <= 1.0:
        raise ConfigError(f"ptv3: residual_decay must be a number in [0, 1] (1 = off), got {rd!r}")
    out["residual_decay"] = float(rd)
    return out


def residual_decay_factors(n_blocks: int, alpha_min: float) -> list[float]:
    """Shortcut weights ``alpha_l`` of ``n_blocks`` blocks: linear from 1 (first) to ``alpha_min`` (last)."""
    if n_blocks == 1:
        return [float(alpha_min)]
    return [1.0 - (1.0 - alpha_min) * i / (n_blocks - 1) for i in range(n_blocks)]


# ----------------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole rows (points) while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def _spconv():
    """spconv.pytorch, imported on first use (heavy import; silences its deprecated-amp warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import spconv.pytorch as spconv
    return spconv


@functools.cache
def _subm_conv3d_class() -> type:
    spconv = _spconv()
    from spconv.core import ConvAlgo

    class SubMConv3d(spconv.SubMConv3d):
        """spconv SubMConv3d that also runs on CPU tensors: native algorithm, and the bias added after
        the convolution (in eval mode spconv fuses it into the kernel, which fails on the CPU)."""

        def forward(self, x):
            on_cpu = x.features.device.type == "cpu"
            if not hasattr(self, "_device_algo"):
                self._device_algo = self.algo
            self.algo = ConvAlgo.Native if on_cpu else self._device_algo
            if on_cpu and x.features.dtype != self.weight.dtype:
                x = x.replace_feature(x.features.to(self.weight.dtype))
            return self._conv_forward(self.training or on_cpu, x, self.weight, self.bias, None,
                                      name=self.name, sparse_unique_name=self._sparse_unique_name,
                                      act_type=self.act_type, act_alpha=self.act_alpha,
                                      act_beta=self.act_beta)

    SubMConv3d.__qualname__ = SubMConv3d.__name__
    return SubMConv3d


def make_subm_conv3d(channels: int, indice_key: str) -> nn.Module:
    """``SubMConv3d(C, C, 3, bias=True)``, weight (C, 3, 3, 3, C) as in spconv 2.x, CPU and CUDA."""
    return _subm_conv3d_class()(channels, channels, kernel_size=3, bias=True, indice_key=indice_key)


class RPE(nn.Module):
    """Relative position bias table of the release (only with ``enable_rpe=True``)."""

    def __init__(self, patch_size: int, num_heads: int):
        super().__init__()
        self.pos_bnd = int((4 * patch_size) ** (1 / 3) * 2)
        self.rpe_num = 2 * self.pos_bnd + 1
        self.rpe_table = nn.Parameter(torch.zeros(3 * self.rpe_num, num_heads))
        trunc_normal_(self.rpe_table, std=0.02)

    def forward(self, rel: torch.Tensor) -> torch.Tensor:
        """(P, K, K, 3) integer offsets -> (P, H, K, K) additive bias."""
        idx = rel.clamp(-self.pos_bnd, self.pos_bnd) + self.pos_bnd
        idx = idx + torch.arange(3, device=rel.device) * self.rpe_num
        out = self.rpe_table.index_select(0, idx.reshape(-1)).view(idx.shape + (-1,)).sum(3)
        return out.permute(0, 3, 1, 2)


@dataclasses.dataclass
class PatchPlan:
    """How the rows of one level are cut into attention patches for one serialization order.

    ``gathers[g]`` (P_g, K_g): input rows of each patch of group g (all patches of a group have the
    same size); ``src`` (N,): for every row, its output row in the concatenation of the groups'
    flattened (P_g * K_g) outputs.
    """

    gathers: list[torch.Tensor]
    src: torch.Tensor


def patch_plan(point: PointBatch, order_index: int, patch_size: int, per_sample: bool) -> PatchPlan:
    """Patches of the release (see module docstring); cached on ``point`` per (order, size, rule)."""
    key = ("patch", order_index, patch_size, per_sample)
    if key in point.cache:
        return point.cache[key]
    device = point.coord.device
    order = point.serialization.order[order_index]
    counts = point.counts
    starts = point.offset - counts
    if per_sample:
        k_b = counts.clamp(max=patch_size)
    else:
        k_b = torch.full_like(counts, min(int(counts.min()), patch_size))
    m_b = torch.div(counts + k_b - 1, k_b, rounding_mode="floor")  # patches per sample
    # per sorted position p (sample rows are contiguous both in storage and in sorted order)
    pos_batch = point.batch
    local = torch.arange(len(point), device=device) - starts[pos_batch]
    k_p = k_b[pos_batch]
    j = torch.div(local, k_p, rounding_mode="floor")
    patch_start = torch.minimum(j * k_p, counts[pos_batch] - k_p)
    within = local - patch_start
    flat = torch.empty_like(local)
    gathers: list[torch.Tensor] = []
    base = 0
    for k in torch.unique(k_b).tolist():
        sel = torch.nonzero(k_b == k).flatten()
        m_sel = m_b[sel]
        first_patch = torch.zeros_like(m_b)
        first_patch[sel] = torch.cumsum(m_sel, 0) - m_sel
        n_patch = int(m_sel.sum())
        patch_sample = torch.repeat_interleave(sel, m_sel)
        patch_j = torch.arange(n_patch, device=device) - first_patch[patch_sample]
        pstart = starts[patch_sample] + torch.minimum(patch_j * k, counts[patch_sample] - k)
        gathers.append(order[pstart[:, None] + torch.arange(k, device=device)])
        rows = k_p == k
        flat[rows] = base + (first_patch[pos_batch[rows]] + j[rows]) * k + within[rows]
        base += n_patch * k
    src = torch.empty_like(flat)
    src[order] = flat
    plan = PatchPlan(gathers=gathers, src=src)
    point.cache[key] = plan
    return plan


def _sdpa_backends(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA, scaled-dot-product attention without the cuDNN backend. The number of patches changes
    with every scene, and cuDNN's attention re-plans for each new shape on the CPU: on an H200 (torch
    2.11, CUDA 13) a profile of 2 PTv3 (sonata_small) pre-training steps showed 12 ms of CPU per call
    against 20 us of GPU work; 3 steps took 12.4 s with it and 2.9 s without it."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside patches of serialized points (keys ``qkv``, ``proj``)."""

    # bytes of one (P, H, K, K) float32 score tensor above which patches are processed in chunks
    chunk_bytes = 1 << 28

    def __init__(self, channels: int, num_heads: int, patch_size: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 order_index: int = 0, enable_rpe: bool = False, enable_flash: bool = True,
                 upcast_attention: bool = False, upcast_softmax: bool = False):
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.scale = qk_scale or (channels // num_heads) ** -0.5
        self.order_index = order_index
        self.enable_flash = enable_flash
        self.upcast = upcast_attention or upcast_softmax
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpe = RPE(patch_size, num_heads) if enable_rpe else None

    def forward(self, feat: torch.Tensor, point: PointBatch) -> torch.Tensor:
        plan = patch_plan(point, self.order_index, self.patch_size, per_sample=self.enable_flash)
        qkv = self.qkv(feat)
        if (flash_attn is not None and self.enable_flash and qkv.is_cuda and self.rpe is None
                and not self.upcast):
            out = self._flash(qkv, plan)
        else:
            with _sdpa_backends(qkv.device):
                out = torch.cat([self._sdpa(qkv, g, point) for g in plan.gathers])
        out = out[plan.src]
        return self.proj_drop(self.proj(out))

    def _sdpa(self, qkv: torch.Tensor, gather: torch.Tensor, point: PointBatch) -> torch.Tensor:
        n_patch, k = gather.shape
        h, c = self.num_heads, self.channels
        per_chunk = max(1, self.chunk_bytes // max(1, h * k * k * 4))
        outs = []
        for lo in range(0, n_patch, per_chunk):
            g = gather[lo:lo + per_chunk]
            q, kk, v = qkv[g.reshape(-1)].view(g.shape[0], k, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
            bias = None
            if self.rpe is not None:
                gc = point.grid_coord[g]
                bias = self.rpe(gc[:, :, None, :] - gc[:, None, :, :])
            dropout = self.attn_drop if self.training else 0.0
            if self.upcast:
                with torch.autocast(device_type=qkv.device.type, enabled=False):
                    o = F.scaled_dot_product_attention(
                        q.float(), kk.float(), v.float(), attn_mask=None if bias is None else bias.float(),
                        dropout_p=dropout, scale=self.scale).to(qkv.dtype)
            else:
                if bias is not None:
                    bias = bias.to(q.dtype)
                o = F.scaled_dot_product_attention(q, kk, v, attn_mask=bias, dropout_p=dropout,
                                                   scale=self.scale)
            outs.append(o.transpose(1, 2).reshape(-1, c))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _flash(self, qkv: torch.Tensor, plan: PatchPlan) -> torch.Tensor:  # pragma: no cover - CUDA only
        h, c = self.num_heads, self.channels
        rows = torch.cat([g.reshape(-1) for g in plan.gathers])
        lens = torch.cat([torch.full((g.shape[0],), g.shape[1], device=qkv.device, dtype=torch.int32)
                          for g in plan.gathers])
        cu = F.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
        dtype = qkv.dtype if qkv.dtype in (torch.float16, torch.bfloat16) else torch.float16
        out = flash_attn.flash_attn_varlen_qkvpacked_func(
            qkv[rows].to(dtype).reshape(-1, 3, h, c // h), cu,
            max_seqlen=int(lens.max()), dropout_p=self.attn_drop if self.training else 0.0,
            softmax_scale=self.scale,
        )
        return out.reshape(-1, c).to(qkv.dtype)


class MLP(nn.Module):
    def __init__(self, channels: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _layer_scale(channels: int, init: float | None) -> nn.Module:
    return LayerScale(channels, init) if init is not None else nn.Identity()


class Block(nn.Module):
    """x += cpe(x); x += drop_path(attn(norm1(x))); x += drop_path(mlp(norm2(x))) (pre-norm)."""

    def __init__(self, channels: int, num_heads: int, patch_size: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None, attn_drop: float, proj_drop: float, drop_path: float,
                 layer_scale: float | None, pre_norm: bool, order_index: int, cpe_indice_key: str,
                 enable_rpe: bool, enable_flash: bool, upcast_attention: bool, upcast_softmax: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.cpe = nn.ModuleList([make_subm_conv3d(channels, cpe_indice_key), nn.Linear(channels, channels),
                                  nn.LayerNorm(channels)])
        self.norm1 = nn.Sequential(nn.LayerNorm(channels))
        self.ls1 = nn.Sequential(_layer_scale(channels, layer_scale))
        self.attn = SerializedAttention(channels, num_heads, patch_size, qkv_bias, qk_scale, attn_drop,
                                        proj_drop, order_index, enable_rpe, enable_flash, upcast_attention,
                                        upcast_softmax)
        self.norm2 = nn.Sequential(nn.LayerNorm(channels))
        self.ls2 = nn.Sequential(_layer_scale(channels, layer_scale))
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio), proj_drop))
        self.drop_path = DropPath(drop_path)
        self.shortcut_scale = 1.0  # residual decay: the weight of the identity shortcuts (1 = plain)

    def forward(self, point: PointBatch) -> None:
        """Update ``point.feat`` (and the features of ``point.sparse``) in place."""
        feat = point.feat
        point.sparse = self.cpe[0](point.sparse.replace_feature(feat))
        feat = feat + self.cpe[2](self.cpe[1](point.sparse.features))
        shortcut = feat if self.shortcut_scale == 1.0 else feat * self.shortcut_scale
        h = self.norm1(feat) if self.pre_norm else feat
        feat = shortcut + self.drop_path(self.ls1(self.attn(h, point)))
        if not self.pre_norm:
            feat = self.norm1(feat)
        shortcut = feat if self.shortcut_scale == 1.0 else feat * self.shortcut_scale
        h = self.norm2(feat) if self.pre_norm else feat
        feat = shortcut + self.drop_path(self.ls2(self.mlp(h)))
        if not self.pre_norm:
            feat = self.norm2(feat)
        point.feat = feat


class GridPooling(nn.Module):
    """Linear -> max over the children of each coarser voxel (grid_coord // stride) -> LayerNorm -> GELU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(nn.LayerNorm(out_channels))
        self.act = nn.Sequential(nn.GELU())

    def forward(self, point: PointBatch) -> PointBatch:
        gc = torch.div(point.grid_coord, self.stride, rounding_mode="floor")
        # grid coordinates are < 2**16 (serialization depth <= 16): pack (batch, x, y, z) in one key;
        # sorted unique keys order the coarse voxels like the release (batch, then x, y, z).
        key = (point.batch << 48) | (gc[:, 0] << 32) | (gc[:, 1] << 16) | gc[:, 2]
        uniq, cluster = torch.unique(key, sorted=True, return_inverse=True)
        m = uniq.shape[0]
        feat = segment_reduce(self.proj(point.feat), cluster, m, "max", validate=False)
        coord = segment_reduce(point.coord, cluster, m, "mean", validate=False)
        grid_coord = torch.stack([(uniq >> 32) & 0xFFFF, (uniq >> 16) & 0xFFFF, uniq & 0xFFFF], dim=1)
        batch = uniq >> 48
        offset = torch.cumsum(torch.bincount(batch, minlength=point.num_samples), 0)
        feat = self.act(self.norm(feat))
        return PointBatch(coord=coord, grid_coord=grid_coord, feat=feat, offset=offset, batch=batch,
                          grid_size=None if point.grid_size is None else point.grid_size * self.stride,
                          parent=point, pooling_inverse=cluster)


class Embedding(nn.Module):
    """Stem Linear -> LayerNorm -> GELU (keys ``stem.linear``, ``stem.norm``) and the mask token."""

    def __init__(self, in_channels: int, embed_channels: int, mask_token: bool = False):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            linear=nn.Linear(in_channels, embed_channels), norm=nn.LayerNorm(embed_channels), act=nn.GELU()))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_channels)) if mask_token else None

    def forward(self, feat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.stem(feat)
        if mask is not None:
            if self.mask_token is None:
                raise ConfigError("ptv3: a mask was given but the model has no mask token (mask_token=True)")
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        return x


class Stage(nn.Module):
    """One encoder stage: optional ``down`` pooling then ``block0`` ... ``block{d-1}``."""

    def __init__(self, down: GridPooling | None, blocks: Sequence[Block]):
        super().__init__()
        if down is not None:
            self.down = down
        self.depth = len(blocks)
        for i, b in enumerate(blocks):
            self.add_module(f"block{i}", b)

    def blocks(self) -> list[Block]:
        return [getattr(self, f"block{i}") for i in range(self.depth)]


# ----------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------


class PointTransformerV3(PointEncoder):
    """PTv3 encoder (``enc_mode=True``) with the Sonata release's parameter names."""

    arch = "ptv3"

    def __init__(self, **cfg: Any):
        super().__init__()
        cfg = resolve_ptv3_config(cfg)
        if cfg["residual_decay"] == 1.0:  # off: the config stays the Sonata one (key absent)
            cfg.pop("residual_decay")
        self.config = cfg
        self.in_channels = cfg["in_channels"]
        self.order = list(cfg["order"])
        self.shuffle_orders = cfg["shuffle_orders"]
        self.enc_channels = list(cfg["enc_channels"])
        self.num_stages = len(cfg["enc_depths"])
        self.embedding = Embedding(cfg["in_channels"], cfg["enc_channels"][0], cfg["mask_token"])
        depths = cfg["enc_depths"]
        n_blocks = sum(depths)
        dpr = [cfg["drop_path"] * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        stages = OrderedDict()
        for s in range(self.num_stages):
            down = None
            if s > 0:
                down = GridPooling(cfg["enc_channels"][s - 1], cfg["enc_channels"][s], cfg["stride"][s - 1])
            blocks = [
                Block(
                    channels=cfg["enc_channels"][s], num_heads=cfg["enc_num_head"][s],
                    patch_size=cfg["enc_patch_size"][s], mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"],
                    qk_scale=cfg["qk_scale"], attn_drop=cfg["attn_drop"], proj_drop=cfg["proj_drop"],
                    drop_path=dpr[sum(depths[:s]) + i], layer_scale=cfg["layer_scale"],
                    pre_norm=cfg["pre_norm"], order_index=i % len(self.order), cpe_indice_key=f"stage{s}",
                    enable_rpe=cfg["enable_rpe"], enable_flash=cfg["enable_flash"],
                    upcast_attention=cfg["upcast_attention"], upcast_softmax=cfg["upcast_softmax"],
                )
                for i in range(depths[s])
            ]
            stages[f"enc{s}"] = Stage(down, blocks)
        self.enc = nn.ModuleDict(stages)
        alphas = residual_decay_factors(n_blocks, cfg.get("residual_decay", 1.0))
        for block, alpha in zip((b for st in self.enc.values() for b in st.blocks()), alphas):
            block.shortcut_scale = alpha
        self.apply(self._init_weights)
        if cfg["freeze_encoder"]:
            for p in self.parameters():
                p.requires_grad = False

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) or (weight is not None and weight.dim() == 5):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- levels -------------------------------------------------------------------------------------

    def _prepare_level(self, point: PointBatch) -> None:
        shuffle = self.training and self.shuffle_orders
        try:
            point.serialization = serialize(point.grid_coord, point.batch, self.order, shuffle=shuffle)
        except ValueError as e:
            raise InputError(None, str(e)) from None
        spconv = _spconv()
        indices = torch.cat([point.batch[:, None], point.grid_coord], dim=1).int().contiguous()
        shape = (point.grid_coord.max(0).values + 96).tolist()
        with quiet_fx_tracing_notice():
            point.sparse = spconv.SparseConvTensor(point.feat, indices, shape, point.num_samples)

    def forward(self, point: PointBatch | Mapping[str, torch.Tensor]) -> PointBatch:
        """Encode a point batch; returns the deepest level, linked to the finer ones by ``parent``."""
        if isinstance(point, PointBatch):
            point = dataclasses.replace(point, serialization=None, sparse=None, parent=None,
                                        pooling_inverse=None, cache={})
        else:
            point = PointBatch.from_dict(point)
        if point.feat.shape[1] != self.in_channels:
            raise InputError(None, f"input feature has {point.feat.shape[1]} channels, the encoder expects "
                                   f"{self.in_channels} ({'+'.join(self.feat_keys)})")
        point.feat = self.embedding(point.feat, point.mask)
        for s, stage in enumerate(self.enc.values()):
            if s > 0:
                point = stage.down(point)
            self._prepare_level(point)
            for block in stage.blocks():
                block(point)
        return point

    # -- up-casting ---------------------------------------------------------------------------------

    def feature_dim(self, levels: int | None = None) -> int:
        """Width of :meth:`encode` features: the last ``levels + 1`` stage widths."""
        levels = self.num_stages - 1 if levels is None else levels
        if not 0 <= levels <= self.num_stages - 1:
            raise ConfigError(f"ptv3: levels must be in [0, {self.num_stages - 1}], got {levels}")
        return sum(self.enc_channels[self.num_stages - 1 - levels:])

    def encode(self, point: PointBatch, levels: int | None = None) -> torch.Tensor:
        """Features (N, feature_dim(levels)) of every row of ``point`` (see :func:`upcast`)."""
        self.feature_dim(levels)
        return upcast(self.forward(point), levels).feat

    def block_layout(self) -> BlockLayout:
        """The transformer blocks, stage by stage (pooling and embedding belong to no block)."""
        return ptv3_block_layout([stage.depth for stage in self.enc.values()])


# ----------------------------------------------------------------------------------------------------
# decoder (Pointcept ``dec`` probing: a trainable PTv3 decoder over a frozen encoder)
# ----------------------------------------------------------------------------------------------------

# The decoder of Pointcept's ``semseg-sonata-v1m1-*-dec`` configs (index 0 = the finest stage).
PTV3_DEC_DEFAULTS: dict[str, list[int]] = {
    "dec_depths": [2, 2, 2, 2],
    "dec_channels": [64, 96, 192, 384],
    "dec_num_head": [4, 6, 12, 24],
    "dec_patch_size": [1024, 1024, 1024, 1024],
}


class GridUnpooling(nn.Module):
    """Back to the finer level: ``proj_skip(parent.feat) + proj(feat)[pooling_inverse]``, each projection
    Linear -> LayerNorm -> GELU (keys ``proj.0``, ``proj_skip.0`` as the release)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_channels, out_channels), nn.LayerNorm(out_channels), nn.GELU())
        self.proj_skip = nn.Sequential(nn.Linear(skip_channels, out_channels), nn.LayerNorm(out_channels),
                                       nn.GELU())

    def forward(self, point: PointBatch, feat: torch.Tensor) -> tuple[PointBatch, torch.Tensor]:
        """(parent level, its decoded features) from a level and its decoded features ``feat``."""
        parent = point.parent
        if parent is None or point.pooling_inverse is None:
            raise InputError(None, "ptv3 decoder: the level has no parent to unpool to")
        skip = self.proj_skip(parent.feat.to(feat.dtype))
        return parent, skip + self.proj(feat)[point.pooling_inverse]


class DecoderStage(nn.Module):
    """``up`` (:class:`GridUnpooling`) then ``block0`` ... ``block{d-1}`` (encoder :class:`Block` s)."""

    def __init__(self, up: GridUnpooling, blocks: Sequence[Block]):
        super().__init__()
        self.up = up
        self.depth = len(blocks)
        for i, b in enumerate(blocks):
            self.add_module(f"block{i}", b)

    def blocks(self) -> list[Block]:
        return [getattr(self, f"block{i}") for i in range(self.depth)]


class PTv3Decoder(nn.Module):
    """The PTv3 decoder (``enc_mode=False`` part of the release, names ``dec.dec{s}.up`` /
    ``dec.dec{s}.block{i}``) run on the output of a :class:`PointTransformerV3` encoder.

    From the deepest level up, stage ``s`` (deepest first) unpools to encoder level ``s`` (skip: that
    level's encoder output, the ``parent`` of the level above) and runs ``dec_depths[s]`` transformer
    blocks at ``dec_channels[s]`` channels. The blocks reuse the encoder level's serialization orders and
    its sparse-conv indices (``cpe_indice_key=stage{s}``), as in the release. Trainable on its own: the
    encoder's output levels are read, never changed (a new feature tensor per level).
    """

    def __init__(self, enc_channels: Sequence[int], num_orders: int, dec_depths: Sequence[int] | None = None,
                 dec_channels: Sequence[int] | None = None, dec_num_head: Sequence[int] | None = None,
                 dec_patch_size: Sequence[int] | None = None, mlp_ratio: float = 4, qkv_bias: bool = True,
                 drop_path: float = 0.0, pre_norm: bool = True, enable_flash: bool = True):
        super().__init__()
        cfg = {k: list(PTV3_DEC_DEFAULTS[k] if v is None else v) for k, v in
               (("dec_depths", dec_depths), ("dec_channels", dec_channels), ("dec_num_head", dec_num_head),
                ("dec_patch_size", dec_patch_size))}
        n = len(enc_channels) - 1
        for k, v in cfg.items():
            if len(v) != n:
                raise ConfigError(f"ptv3 decoder: {k} needs {n} entries (one per encoder pooling), got {v}")
        for c, h in zip(cfg["dec_channels"], cfg["dec_num_head"]):
            if c % h:
                raise ConfigError(f"ptv3 decoder: channels {c} not divisible by {h} heads")
        self.config = cfg
        self.out_channels = cfg["dec_channels"][0]
        chans = cfg["dec_channels"] + [int(enc_channels[-1])]
        dpr = torch.linspace(0, drop_path, max(sum(cfg["dec_depths"]), 1)).tolist()
        stages = OrderedDict()
        for s in reversed(range(n)):
            d = cfg["dec_depths"][s]
            rates = dpr[sum(cfg["dec_depths"][:s]): sum(cfg["dec_depths"][:s + 1])][::-1]
            blocks = [Block(channels=chans[s], num_heads=cfg["dec_num_head"][s],
                            patch_size=cfg["dec_patch_size"][s], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                            qk_scale=None, attn_drop=0.0, proj_drop=0.0, drop_path=rates[i], layer_scale=None,
                            pre_norm=pre_norm, order_index=i % num_orders, cpe_indice_key=f"stage{s}",
                            enable_rpe=False, enable_flash=enable_flash, upcast_attention=False,
                            upcast_softmax=False) for i in range(d)]
            up = GridUnpooling(chans[s + 1], int(enc_channels[s]), chans[s])
            stages[f"dec{s}"] = DecoderStage(up, blocks)
        self.dec = nn.ModuleDict(stages)
        self.apply(PointTransformerV3._init_weights)

    @classmethod
    def for_encoder(cls, encoder: PointTransformerV3, drop_path: float = 0.0,
                    **dec: Sequence[int] | None) -> PTv3Decoder:
        """The decoder matching ``encoder``'s stages (``dec``: dec_depths / dec_channels / dec_num_head /
        dec_patch_size overrides of :data:`PTV3_DEC_DEFAULTS`, trimmed to the encoder's poolings when not
        given)."""
        unknown = sorted(set(dec) - set(PTV3_DEC_DEFAULTS))
        if unknown:
            raise ConfigError(f"ptv3 decoder: unknown key(s) {unknown}; known: {sorted(PTV3_DEC_DEFAULTS)}")
        n = encoder.num_stages - 1
        given = {k: (list(PTV3_DEC_DEFAULTS[k])[:n] if dec.get(k) is None else dec[k])
                 for k in PTV3_DEC_DEFAULTS}
        c = encoder.config
        return cls(encoder.enc_channels, len(encoder.order), mlp_ratio=c["mlp_ratio"], qkv_bias=c["qkv_bias"],
                   drop_path=drop_path, pre_norm=c["pre_norm"], enable_flash=c["enable_flash"], **given)

    def forward(self, point: PointBatch) -> PointBatch:
        """Decode an encoder output (its deepest level); returns the finest level with the decoded
        features (``dec_channels[0]`` wide) as ``feat``."""
        feat = point.feat
        for stage in self.dec.values():
            point, feat = stage.up(point, feat)
            level = dataclasses.replace(point, feat=feat)  # the encoder's level keeps its own features
            for block in stage.blocks():
                block(level)
            feat = level.feat
        return dataclasses.replace(point, feat=feat)


def ptv3_block_layout(enc_depths: Sequence[int]) -> BlockLayout:
    """``enc.enc{s}.block{b}`` for every stage ``s`` and block ``b`` (the release's parameter names)."""
    return [(f"enc.enc{s}.block{b}", [f"enc.enc{s}.block{b}."]) for s, d in enumerate(enc_depths)
            for b in range(int(d))]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(number of tensors, number of scalars) in ``model.state_dict()`` (parameters only)."""
    params = list(model.parameters())
    return len(params), sum(math.prod(p.shape) for p in params)
