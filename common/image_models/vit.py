"""A timm image ViT with the seed releases' representations: the linear-probe feature and patch tokens.

:class:`ImageViT` runs the timm model's own modules (patch embedding, blocks, norms) but adds the
position embedding the way the releases do at run time (DINO / iBOT / Mugs / DINOv2: bicubic
``scale_factor=(n + 0.1) / N``, no antialias, skipped at the native grid), which timm's
``dynamic_img_size`` does not reproduce away from the native size. BEiT v2 has no absolute position
embedding; its relative position bias is defined for the native grid only.

* :meth:`ImageViT.linear_features`: the release's linear-probe input (DINOv2 protocol: CLS of the last
  ``n`` blocks, optionally with the last block's mean patch token), ``(B, linear_dim)``.
* :meth:`ImageViT.patch_tokens`: the last block's patch tokens after the final norm, ``(B, h, w, D)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.image_models.releases import Release


def interpolate_pos_embed(pos_embed: torch.Tensor, h: int, w: int, offset: float = 0.1,
                          num_prefix: int = 1) -> torch.Tensor:
    """(1, num_prefix + N, D) class + square patch position embedding -> (1, num_prefix + h*w, D), as
    the releases do: bicubic with ``scale_factor = (h + offset) / sqrt(N)`` (rows) and
    ``(w + offset) / sqrt(N)`` (columns), no antialias; unchanged when the grid is the native one."""
    n = pos_embed.shape[1] - num_prefix
    m = int(math.isqrt(n))
    if m * m != n:
        raise ValueError(f"position embedding of {n} patches is not a square grid")
    if (h, w) == (m, m):
        return pos_embed
    dtype = pos_embed.dtype
    cls_pos, patch_pos = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    grid = patch_pos.float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + offset) / m, (w + offset) / m), mode="bicubic",
                         antialias=False)
    if tuple(grid.shape[-2:]) != (h, w):  # pragma: no cover - the offset guards against rounding
        raise ValueError(f"position embedding resampled to {tuple(grid.shape[-2:])}, wanted {(h, w)}")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class ImageViT(nn.Module):
    """A timm ViT / BEiT built for ``release``; ``forward(images) -> linear_features(images)``.

    ``images`` are normalised (``release.mean`` / ``release.std``), ``(B, 3, H, W)`` with H and W
    multiples of the patch size.
    """

    def __init__(self, name: str, release: Release, model: nn.Module):
        super().__init__()
        self.name, self.release, self.model = name, release, model
        patch = model.patch_embed.patch_size
        self.patch = int(patch[0] if isinstance(patch, tuple | list) else patch)
        self.embed_dim = int(model.embed_dim)
        self.depth = len(model.blocks)
        if not 1 <= release.n_last <= self.depth:
            raise ValueError(f"{name}: n_last={release.n_last} blocks but the model has {self.depth}")
        if release.avgpool == "interleave" and release.n_last != 1:
            raise ValueError(f"{name}: the interleaved CLS / mean-patch feature is defined for n_last=1")
        n_vec = release.n_last + (release.avgpool != "none")
        self.linear_dim = self.embed_dim * n_vec
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 1))  # class (+ register) tokens

    # ------------------------------------------------------------------------------------------ tokens
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Class (+ register) tokens and patch tokens with positions added: (B, num_prefix + h*w, D)."""
        m = self.model
        b, _, hh, ww = x.shape
        if hh % self.patch or ww % self.patch:
            raise ValueError(f"{self.name}: height and width must be multiples of {self.patch}, "
                             f"got {hh}x{ww}")
        h, w = hh // self.patch, ww // self.patch
        if self.release.is_beit and (h, w) != self.grid:
            raise ValueError(f"{self.name}: BEiT's relative position bias is for a {self.grid[0]}x"
                             f"{self.grid[1]} patch grid ({self.grid[0] * self.patch} px), got {h}x{w}")
        t = m.patch_embed.proj(x)  # (B, D, h, w): the conv alone, timm's size check is for timm's size
        t = m.patch_embed.norm(t.flatten(2).transpose(1, 2))
        cls = m.cls_token.expand(b, -1, -1)
        reg = getattr(m, "reg_token", None)
        if getattr(m, "no_embed_class", False):  # DINOv2 with registers: patch-only pos_embed (the class
            # position is folded into cls_token at load), registers take no position
            t = t + interpolate_pos_embed(m.pos_embed, h, w, num_prefix=0)
            t = torch.cat([cls, *([reg.expand(b, -1, -1)] if reg is not None else []), t], dim=1)
        elif getattr(m, "pos_embed", None) is not None:
            t = torch.cat([cls, t], dim=1) + interpolate_pos_embed(m.pos_embed, h, w)
        else:
            t = torch.cat([cls, t], dim=1)
        norm_pre = getattr(m, "norm_pre", None)
        if norm_pre is not None:
            t = norm_pre(t)
        return t, (int(h), int(w))

    def block_outputs(self, x: torch.Tensor, last: int | None = None
                      ) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Outputs (B, num_prefix + h*w, D) of the last ``last`` blocks (default all), before final norm."""
        m = self.model
        t, grid = self._embed(x)
        keep = self.depth if last is None else last
        outs = []
        rel = m.rel_pos_bias() if getattr(m, "rel_pos_bias", None) is not None else None
        for i, blk in enumerate(m.blocks):
            t = blk(t, shared_rel_pos_bias=rel) if self.release.is_beit else blk(t)
            if i >= self.depth - keep:
                outs.append(t)
        return outs, grid

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(linear features (B, linear_dim), patch tokens (B, h, w, D)) from one forward pass."""
        r = self.release
        outs, (h, w) = self.block_outputs(x, last=r.n_last)
        norm = self.model.norm
        normed_last = norm(outs[-1])
        layers = [norm(o) for o in outs] if r.final_norm else outs
        cls = [o[:, 0] for o in layers]
        if r.avgpool == "none":
            lin = torch.cat(cls, dim=-1)
        else:
            avg = layers[-1][:, self.num_prefix:].mean(dim=1)
            if r.avgpool == "concat":
                lin = torch.cat([*cls, avg], dim=-1)
            else:  # DINO ViT-B: per-channel interleave of the (single) CLS and the mean patch token
                lin = torch.stack([torch.cat(cls, dim=-1), avg], dim=-1).reshape(x.shape[0], -1)
        patches = normed_last[:, self.num_prefix:].reshape(x.shape[0], h, w, -1)
        return lin, patches

    def linear_features(self, x: torch.Tensor) -> torch.Tensor:
        """The release's linear-probe input (see the module text), (B, linear_dim)."""
        return self.features(x)[0]

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's patch tokens after the final norm, (B, h, w, D): lifting and featviz."""
        outs, (h, w) = self.block_outputs(x, last=1)
        return self.model.norm(outs[-1])[:, self.num_prefix:].reshape(x.shape[0], h, w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_features(x)
