"""A video ViT that loads VideoMAE / VideoMAEv2 and V-JEPA checkpoints.

Architecture (shared by both families): Conv3d tubelet patch embedding (tubelet 2 x patch 16, stride =
kernel), position table added to the token sequence, pre-norm transformer blocks
(``norm1 -> attn -> [gamma_1] -> + ; norm2 -> mlp -> [gamma_2] -> +``), no CLS token.

Differences, chosen by the family and (for optional parts) by the checkpoint's keys:

* VideoMAE: fixed 1-D sinusoid table (not stored; a stored ``pos_embed`` is used when present),
  ``qkv`` without bias plus ``q_bias`` / ``v_bias`` (bias = cat(q_bias, 0, v_bias)), optional layer
  scale ``gamma_1/2``; fine-tuned files end with ``fc_norm`` applied to the token mean, pre-training
  files (``encoder.`` prefix) with ``norm``.
* V-JEPA: ``pos_embed [1, N, D]`` stored in the file, plain ``qkv`` bias, final ``norm``; the file holds
  ``encoder`` / ``target_encoder`` / ``predictor`` and ``target_encoder`` is used.

Output: tokens ``(B, T/2, H/16, W/16, D)``; pooled = mean of tokens (then ``fc_norm`` when present).
Both use ImageNet mean/std. Position tables are resampled (trilinear) for other frame counts / sizes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import select_prefix, sha256_file
from common.errors import CheckpointError, ConfigError
from videoprobe.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BlockLayout,
    EncoderOutput,
    VideoEncoder,
    load_strict,
    read_checkpoint,
    seeded_init,
    strip_prefixes,
    unwrap_state_dict,
)

log = logging.getLogger(__name__)

Family = Literal["videomae", "vjepa"]


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int


VIT_SIZES: dict[str, ViTSize] = {
    "tiny": ViTSize(48, 2, 3, 192),  # tests only
    "s": ViTSize(384, 12, 6, 1536),
    "b": ViTSize(768, 12, 12, 3072),
    "l": ViTSize(1024, 24, 16, 4096),
    "h": ViTSize(1280, 32, 16, 5120),
    "g": ViTSize(1408, 40, 16, 6144),  # VideoMAEv2 giant
}


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """The fixed 1-D sinusoid position table of VideoMAE: (n_position, dim)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    table = torch.empty(n_position, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def resample_pos(
    table: torch.Tensor, grid: tuple[int, int, int], new_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Trilinear resampling of a (N, D) position table laid out on ``grid`` (T, H, W) to ``new_grid``."""
    if tuple(grid) == tuple(new_grid):
        return table
    d = table.shape[-1]
    vol = table.reshape(1, *grid, d).permute(0, 4, 1, 2, 3)
    vol = F.interpolate(vol, size=new_grid, mode="trilinear", align_corners=False)
    return vol.permute(0, 2, 3, 4, 1).reshape(-1, d)


class Attention(nn.Module):
    """Multi-head self-attention; bias mode "split" (q_bias, v_bias), "plain" (qkv.bias) or "none"."""

    def __init__(self, dim: int, num_heads: int, bias: str):
        super().__init__()
        self.num_heads = num_heads
        self.bias_mode = bias
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias == "plain")
        if bias == "split":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        if self.bias_mode == "split":
            # the bias added after the module call (not F.linear on its weight) so that adapters wrapping
            # qkv (LoRA, SSF) take part in the forward
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
            qkv = self.qkv(x) + bias
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, bias: str, layer_scale: float | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + (m if self.gamma_2 is None else self.gamma_2 * m)


class PatchEmbed3D(nn.Module):
    def __init__(self, dim: int, patch: int, tubelet: int):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, D, T', H', W')


class VideoViT(VideoEncoder):
    """VideoMAE / V-JEPA style video ViT (see the module docstring)."""

    def __init__(
        self,
        name: str,
        family: Family,
        size: str,
        num_frames: int = 16,
        img_size: int = 224,
        patch: int = 16,
        tubelet: int = 2,
        layer_scale: float | None = None,
        final_norm: Literal["fc_norm", "norm"] | None = None,
        qkv_bias: Literal["split", "plain", "none"] | None = None,
        stored_pos: bool | None = None,
    ):
        super().__init__()
        if size not in VIT_SIZES:
            raise ConfigError(f"unknown ViT size '{size}' (known: {', '.join(VIT_SIZES)})")
        if family not in ("videomae", "vjepa"):
            raise ConfigError(f"unknown video ViT family '{family}' (videomae or vjepa)")
        s = VIT_SIZES[size]
        self.name, self.family, self.size = name, family, size
        self.embed_dim = self.token_dim = s.embed_dim
        self.num_heads = s.num_heads
        self.patch, self.tubelet = patch, tubelet
        self.clip_len, self.crop_size, self.short_side = num_frames, img_size, max(256, img_size)
        self.frame_step = 4
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.size_multiple, self.frames_multiple = patch, tubelet
        self.grid = (num_frames // tubelet, img_size // patch, img_size // patch)
        n = self.grid[0] * self.grid[1] * self.grid[2]
        qkv_bias = qkv_bias or ("split" if family == "videomae" else "plain")
        final_norm = final_norm or ("fc_norm" if family == "videomae" else "norm")
        self.final_norm = final_norm
        self.patch_embed = PatchEmbed3D(s.embed_dim, patch, tubelet)
        table = sinusoid_table(n, s.embed_dim)[None]
        self.stored_pos = family == "vjepa" if stored_pos is None else stored_pos
        if self.stored_pos:  # V-JEPA files (and VideoMAE ones with learnable positions) store pos_embed
            self.pos_embed = nn.Parameter(table.clone(), requires_grad=False)
        else:
            self.register_buffer("pos_table", table, persistent=False)  # VideoMAE: fixed, not stored
        self.blocks = nn.ModuleList(
            Block(s.embed_dim, s.num_heads, s.mlp_hidden, qkv_bias, layer_scale) for _ in range(s.depth)
        )
        if final_norm == "fc_norm":
            self.fc_norm = nn.LayerNorm(s.embed_dim, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(s.embed_dim, eps=1e-6)
        self.apply(_init_weights)

    def block_layout(self) -> BlockLayout:
        """``patch_embed`` (with a learnable stored ``pos_embed``), ``blocks.i``, then the final norm."""
        first = ["patch_embed."] + (["pos_embed"] if self.stored_pos and self.family != "vjepa" else [])
        last = "fc_norm." if self.final_norm == "fc_norm" else "norm."
        blocks = [(f"blocks.{i}", [f"blocks.{i}."]) for i in range(len(self.blocks))]
        return [("patch_embed", first), *blocks, ("norm", [last])]

    def fixed(self) -> list[str]:
        """V-JEPA's stored ``pos_embed`` is a fixed sinusoid table (never trained)."""
        return ["pos_embed"] if self.stored_pos and self.family == "vjepa" else []

    def _pos(self, grid: tuple[int, int, int]) -> torch.Tensor:
        table = self.pos_embed[0] if self.stored_pos else self.pos_table[0]
        return resample_pos(table, self.grid, grid)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        h = self.patch_embed(x)
        b, d, t, hh, ww = h.shape
        h = h.flatten(2).transpose(1, 2) + self._pos((t, hh, ww)).to(h.dtype)
        for blk in self.blocks:
            h = blk(h)
        if self.final_norm == "norm":
            h = self.norm(h)
            pooled = h.mean(dim=1)
        else:
            pooled = self.fc_norm(h.mean(dim=1))
        return EncoderOutput(tokens=h.reshape(b, t, hh, ww, d), pooled=pooled)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------ checkpoints
def extract_vit_state_dict(obj: Any, path: str | Path, family: Family) -> dict[str, torch.Tensor]:
    """The encoder's state dict from a VideoMAE / V-JEPA file, prefixes stripped, heads dropped."""
    if family == "vjepa" and isinstance(obj, dict):
        for k in ("target_encoder", "encoder"):
            if k in obj and isinstance(obj[k], dict):
                if k == "encoder":
                    log.warning("%s: no 'target_encoder' in the file, using 'encoder'", path)
                obj = obj[k]
                break
    sd = unwrap_state_dict(obj, path, ["model", "module", "state_dict", "model_state"])
    sd = strip_prefixes(sd, ["module.", "backbone."])
    sd = select_prefix(sd, ["encoder."])  # VideoMAE pre-training file: encoder + decoder
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def vit_options_from_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Optional parts implied by the keys: layer scale, fc_norm vs norm, qkv bias mode, stored positions."""
    opts: dict[str, Any] = {}
    opts["layer_scale"] = 0.0 if any(k.endswith(".gamma_1") for k in sd) else None
    opts["stored_pos"] = "pos_embed" in sd
    if any(k.startswith("fc_norm.") for k in sd):
        opts["final_norm"] = "fc_norm"
    elif any(k.startswith("norm.") for k in sd):
        opts["final_norm"] = "norm"
    if any(k.endswith("attn.q_bias") for k in sd):
        opts["qkv_bias"] = "split"
    elif any(k.endswith("attn.qkv.bias") for k in sd):
        opts["qkv_bias"] = "plain"
    elif any(k.endswith("attn.qkv.weight") for k in sd):
        opts["qkv_bias"] = "none"
    return opts


def create_video_vit(
    name: str,
    family: Family,
    size: str,
    checkpoint: str | None = None,
    seed: int = 0,
    **kw: Any,
) -> VideoViT:
    """Build a VideoMAE / V-JEPA ViT; with ``checkpoint`` the file is loaded strictly."""
    if checkpoint is None:
        with seeded_init(seed):
            enc = VideoViT(name, family, size, **kw)
        enc.checkpoint_id = f"random:{seed}"
        return enc
    if checkpoint == "hub":
        raise CheckpointError(f"{name}: no hub download for video ViTs; pass encoder.checkpoint=FILE.pth")
    path = Path(checkpoint)
    sd = extract_vit_state_dict(read_checkpoint(path), path, family)
    opts = {**vit_options_from_state_dict(sd), **kw}
    with seeded_init(seed):
        enc = VideoViT(name, family, size, **opts)
    load_strict(enc, sd, path)
    enc.checkpoint_path = str(path)
    enc.checkpoint_id = sha256_file(path)
    return enc


def vit_factory(family: Family, size: str):
    """A factory ``(name, checkpoint=None, seed=0, **kw)`` for the registry table."""

    def make(name: str, checkpoint: str | None = None, seed: int = 0, **kw: Any) -> VideoViT:
        return create_video_vit(name, family, size, checkpoint, seed, **kw)

    make.__doc__ = f"{family} ViT-{size.upper()} (tubelet 2, patch 16)"
    return make

