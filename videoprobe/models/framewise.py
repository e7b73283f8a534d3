"""Frame-wise image encoders: an image model applied to every frame, features averaged over time.

This is the appearance-only baseline of TWLV-I's comparison (image models do well on appearance
benchmarks and badly on motion ones): frame order is lost in the temporal mean. Tokens are the
per-frame pooled features ``(B, T, 1, 1, D)``.

* ``frame_resnet18`` / ``frame_resnet50`` / ``frame_vit_b_16``: torchvision architectures; weights
  only from a local file (a torchvision state dict; the classifier ``fc.*`` / ``heads.*`` is ignored).
* ``frame_timm:<model>``: any timm model when timm is installed (weights from a local file).
* ``<release>_frames`` (``dino_vits16_frames``, ``dinov2_vits14_frames``, ... one per row of
  ``common.image_models.RELEASES``): a seed image encoder loaded from its official checkpoint layout
  (a local file; no hub; without one, timm's random init as ``random:<seed>``); pooled = the
  release's linear-probe feature averaged over frames, tokens = the patch tokens of every frame
  ``(B, T, h, w, D)``.
* ``frame_stats``: hand-designed per-frame appearance descriptors, no learning and no weights:
  colour layout (mean/std of RGB on a 4x4 grid), a 4x4x4 RGB histogram, a hue histogram weighted by
  saturation x value (vivid colours) and gradient-orientation histograms on a 2x2 grid. A cheap,
  deterministic appearance baseline for the offline demo.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import sha256_file
from common.errors import CheckpointError, ConfigError
from common.image_models import RELEASES, SeedImageModel, build_image_vit, load_image_vit
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

TORCHVISION_MODELS = {"resnet18": 512, "resnet50": 2048, "vit_b_16": 768}


class FramewiseEncoder(VideoEncoder):
    """Apply ``backbone`` ((N, C, H, W) -> (N, D)) to every frame, average over time."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        embed_dim: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        crop_size: int = 224,
        clip_len: int = 8,
        frame_step: int = 8,
        frames_per_chunk: int = 64,
    ):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.embed_dim = self.token_dim = int(embed_dim)
        self.mean, self.std = mean, std
        self.crop_size, self.short_side = crop_size, max(256, crop_size)
        self.clip_len, self.frame_step = clip_len, frame_step
        self.frames_per_chunk = frames_per_chunk

    def block_layout(self) -> BlockLayout:
        """The image backbone's blocks, input side first (prefixes under ``backbone.``): torchvision
        ResNets: stem (conv1 + bn1), then ``layerS.B``; torchvision ViT: patch embedding (with the class
        token and positions), ``encoder_layer_i``, the final norm; other backbones (timm): top-level
        children in order, with ``blocks`` / ``stages`` / ``layers`` lists split into their members."""
        bb = self.backbone
        if next(bb.parameters(), None) is None:
            return []
        if all(hasattr(bb, a) for a in ("conv1", "bn1", "layer1")):  # torchvision ResNet
            layout: BlockLayout = [("stem", ["backbone.conv1.", "backbone.bn1."])]
            for s in range(1, 5):
                layer = getattr(bb, f"layer{s}", None)
                if layer is not None:
                    layout += [(f"layer{s}.{j}", [f"backbone.layer{s}.{j}."]) for j in range(len(layer))]
            return layout
        if all(hasattr(bb, a) for a in ("conv_proj", "class_token", "encoder")):  # torchvision ViT
            layers = bb.encoder.layers
            return ([("patch_embed", ["backbone.conv_proj.", "backbone.class_token",
                                      "backbone.encoder.pos_embedding"])]
                    + [(n, [f"backbone.encoder.layers.{n}."]) for n, _ in layers.named_children()]
                    + [("norm", ["backbone.encoder.ln."])])
        return _generic_layout(bb, "backbone.")

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        feats = torch.cat([self.backbone(chunk) for chunk in frames.split(self.frames_per_chunk)], dim=0)
        feats = feats.reshape(b, t, -1)
        return EncoderOutput(tokens=feats[:, :, None, None, :], pooled=feats.mean(dim=1))


def _generic_layout(module: nn.Module, prefix: str) -> BlockLayout:
    """Direct parameters first, then each child holding parameters in order; ``blocks`` / ``stages`` /
    ``layers`` containers are split into one block per member."""
    layout: BlockLayout = []
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if own:
        layout.append(("params", [prefix + n for n in own]))
    for name, child in module.named_children():
        if next(child.parameters(), None) is None:
            continue
        if name in ("blocks", "stages", "layers") and isinstance(child, nn.Sequential | nn.ModuleList):
            layout += [(f"{name}.{j}", [f"{prefix}{name}.{j}."]) for j, sub in child.named_children()
                       if next(sub.parameters(), None) is not None]
        else:
            layout.append((name, [f"{prefix}{name}."]))
    return layout


class FrameStats(nn.Module):
    """Hand-designed per-frame appearance descriptor (see the module docstring); no parameters."""

    def __init__(self, work_size: int = 32, grid: int = 4, color_bins: int = 4, orient_bins: int = 8,
                 hue_bins: int = 12):
        super().__init__()
        self.work_size, self.grid = work_size, grid
        self.color_bins, self.orient_bins, self.hue_bins = color_bins, orient_bins, hue_bins
        self.out_dim = 6 * grid * grid + color_bins**3 + hue_bins + orient_bins * 4

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        n = img.shape[0]
        x = F.interpolate(img.clamp(0, 1), size=(self.work_size, self.work_size), mode="area")
        cell_mean = F.adaptive_avg_pool2d(x, self.grid)
        cell_sq = F.adaptive_avg_pool2d(x * x, self.grid)
        cell_std = (cell_sq - cell_mean**2).clamp_min(0).sqrt()
        q = (x * self.color_bins).long().clamp(0, self.color_bins - 1)
        code = (q[:, 0] * self.color_bins + q[:, 1]) * self.color_bins + q[:, 2]
        codes = code.flatten(1)
        hist = torch.zeros(n, self.color_bins**3, dtype=x.dtype, device=x.device)
        hist.scatter_add_(1, codes, torch.ones_like(codes, dtype=x.dtype)).div_(codes.shape[1])
        hue = self._hue_hist(x)
        gray = x.mean(dim=1, keepdim=True)
        gx = F.pad(gray[..., :, 2:] - gray[..., :, :-2], (1, 1, 0, 0)) / 2
        gy = F.pad(gray[..., 2:, :] - gray[..., :-2, :], (0, 0, 1, 1)) / 2
        mag = (gx * gx + gy * gy).sqrt()
        ang = torch.atan2(gy, gx)  # (-pi, pi]
        b = ((ang + math.pi) / (2 * math.pi) * self.orient_bins).long().clamp(0, self.orient_bins - 1)
        oh = F.one_hot(b[:, 0], self.orient_bins).permute(0, 3, 1, 2).float() * mag
        orient = F.adaptive_avg_pool2d(oh, 2) * 10.0  # gradients of [0,1] images are small
        return torch.cat(
            [cell_mean.flatten(1), cell_std.flatten(1), hist * 4.0, hue * 10.0, orient.reshape(n, -1)], dim=1
        )

    def _hue_hist(self, x: torch.Tensor) -> torch.Tensor:
        """(N, hue_bins) histogram of hue, each pixel weighted by (saturation x value)^2, per pixel."""
        mx, _ = x.max(dim=1)
        mn, _ = x.min(dim=1)
        chroma = mx - mn
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        safe = chroma.clamp_min(1e-6)
        h = torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)
        h = torch.where(mx == r, ((g - b) / safe) % 6, h)
        sat = chroma / mx.clamp_min(1e-6)
        weight = (sat * mx) ** 2
        bins = (h / 6 * self.hue_bins).long().clamp(0, self.hue_bins - 1)
        hist = torch.zeros(x.shape[0], self.hue_bins, dtype=x.dtype, device=x.device)
        hist.scatter_add_(1, bins.flatten(1), weight.flatten(1))
        return hist / (x.shape[2] * x.shape[3])


def _torchvision_backbone(arch: str, crop_size: int) -> nn.Module:
    import torchvision

    if arch == "vit_b_16":
        m = torchvision.models.vit_b_16(weights=None, image_size=crop_size)
        m.heads = nn.Identity()
    else:
        m = getattr(torchvision.models, arch)(weights=None)
        m.fc = nn.Identity()
    return m


def create_framewise_encoder(
    name: str, checkpoint: str | None = None, seed: int = 0, crop_size: int = 224, **kw: Any
) -> FramewiseEncoder:
    """``frame_<torchvision arch>``, ``frame_timm:<model>`` or ``frame_stats``; weights from a file only."""
    if name == "frame_stats":
        if checkpoint is not None:
            raise ConfigError("frame_stats is hand-designed and takes no checkpoint")
        stats = FrameStats()
        enc = FramewiseEncoder(name, stats, stats.out_dim, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), crop_size, **kw)
        enc.checkpoint_id = "none"
        return enc
    if checkpoint == "hub":
        raise CheckpointError(f"{name}: frame-wise encoders load weights from local files only")
    with seeded_init(seed):
        if name.startswith("frame_timm:"):
            try:
                import timm
            except ImportError:
                raise ConfigError(f"{name}: timm is not installed (pip install timm)") from None
            backbone = timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=0)
            dim = int(backbone.num_features)
            cfg = getattr(backbone, "pretrained_cfg", {}) or {}
            mean = tuple(cfg.get("mean", IMAGENET_MEAN))
            std = tuple(cfg.get("std", IMAGENET_STD))
        else:
            arch = name.removeprefix("frame_")
            if arch not in TORCHVISION_MODELS:
                raise ConfigError(f"unknown frame-wise model '{name}'")
            backbone = _torchvision_backbone(arch, crop_size)
            dim, mean, std = TORCHVISION_MODELS[arch], IMAGENET_MEAN, IMAGENET_STD
    enc = FramewiseEncoder(name, backbone, dim, mean, std, crop_size, **kw)  # type: ignore[arg-type]
    if arch_is_vit(name):
        enc.size_multiple = 16
    if checkpoint is None:
        enc.checkpoint_id = f"random:{seed}"
        return enc
    path = Path(checkpoint)
    sd = unwrap_state_dict(read_checkpoint(path), path, ["state_dict", "model", "model_state", "module"])
    sd = strip_prefixes(sd, ["module.", "backbone."])
    sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "heads.", "head.", "classifier."))}
    load_strict(backbone, sd, path)
    enc.checkpoint_path, enc.checkpoint_id = str(path), sha256_file(path)
    return enc


def arch_is_vit(name: str) -> bool:
    return "vit" in name.split(":")[-1]


class FramewiseViTEncoder(FramewiseEncoder):
    """A seed image ViT per frame: pooled = mean over frames of its linear-probe feature, tokens = the
    per-frame patch tokens (B, T, h, w, D), both from one forward pass."""

    def __init__(self, name: str, vit: SeedImageModel, crop_size: int = 224, **kw: Any):
        super().__init__(name, vit, vit.linear_dim, vit.release.mean, vit.release.std, crop_size, **kw)
        self.token_dim = vit.embed_dim
        self.size_multiple = vit.patch

    def block_layout(self) -> list[tuple[str, list[str]]]:
        """(name, parameter-name prefixes) in depth order: the stem (patch embedding, class / register
        tokens, positions, BEiT's shared relative position bias; MAGE's token embeddings), each ViT
        block, the final norm. Parts fixed by design (:meth:`fixed`) are in no block."""
        pre = "backbone.model."
        stem: list[str] = []
        skip = ("blocks.", "norm.", *getattr(self.backbone, "fixed_prefixes", ()))
        for n, _ in self.backbone.model.named_parameters():
            if n.startswith(skip):
                continue
            key = n.split(".")[0] + ("." if "." in n else "")
            if pre + key not in stem:
                stem.append(pre + key)
        layout = [("stem", stem)] if stem else []
        layout += [(f"blocks.{i}", [f"{pre}blocks.{i}."]) for i in range(len(self.backbone.model.blocks))]
        return layout + [("norm", [f"{pre}norm."])]

    def fixed(self) -> list[str]:
        """MAGE's VQGAN tokenizer (frozen in the release, and its code ids are not differentiable)."""
        return [f"backbone.model.{p}" for p in getattr(self.backbone, "fixed_prefixes", ())]

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        lins, toks = [], []
        for chunk in frames.split(self.frames_per_chunk):
            lin, tok = self.backbone.features(chunk)
            lins.append(lin)
            toks.append(tok)
        pooled = torch.cat(lins).reshape(b, t, -1).mean(dim=1)
        tokens = torch.cat(toks)
        return EncoderOutput(tokens=tokens.reshape(b, t, *tokens.shape[1:]), pooled=pooled)


SEED_FRAME_ENCODERS = tuple(f"{r}_frames" for r in RELEASES)


def create_seed_frames_encoder(name: str, checkpoint: str | None = None, seed: int = 0,
                               crop_size: int | None = None, arch: dict[str, Any] | None = None,
                               **kw: Any) -> FramewiseViTEncoder:
    """``<release>_frames``: the release's image ViT per frame, weights from a local file only.

    ``checkpoint=None`` builds timm's random initialisation (``random:<seed>``, warned about by
    ``create_video_encoder`` as for every learned encoder; used by ``videoprobe encoders``); there is no
    hub download. ``arch``: timm overrides (tests build tiny models). ``crop_size`` defaults to the
    release's evaluation crop (224; MAGE 256).
    """
    release = name.removesuffix("_frames")
    if release not in RELEASES:
        raise ConfigError(f"unknown frame-wise seed encoder '{name}' "
                          f"(known: {', '.join(SEED_FRAME_ENCODERS)})")
    crop_size = crop_size or RELEASES[release].input_size
    if checkpoint == "hub":
        raise CheckpointError(f"{name}: no hub download for the seed image encoders (offline, nothing is "
                              f"downloaded); pass encoder.checkpoint=FILE.pth of the {release} release")
    if checkpoint is None:
        enc = FramewiseViTEncoder(name, build_image_vit(release, seed=seed, **(arch or {})), crop_size, **kw)
        enc.checkpoint_id = f"random:{seed}"
        return enc
    path = Path(checkpoint)
    vit = load_image_vit(release, path, **(arch or {}))
    enc = FramewiseViTEncoder(name, vit, crop_size, **kw)
    enc.checkpoint_path, enc.checkpoint_id = str(path), sha256_file(path)
    return enc
