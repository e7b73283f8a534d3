"""2D image encoders for lifting: dense feature maps (B, D, h, w) of RGB frames.

Every encoder maps images (B, 3, H, W) float in [0, 1] to a feature map covering the whole image
(cell (i, j) covers rows [i H/h, (i+1) H/h) and columns [j W/w, (j+1) W/w)); the lifting code
upsamples it bilinearly to pixels.

- ``patchstats`` (built in, offline, no weights): per 8x8 patch, mean and standard deviation of the
  colour, a magnitude-weighted histogram of gradient orientations (8 bins) and the mean gradient
  magnitude, plus the same 15 statistics averaged over the 3x3 neighbouring patches (30 channels).
  Low-level colour/texture statistics: NOT semantic. It exists so that the whole pipeline runs and is
  tested offline; numbers obtained with it say nothing about DINO features.
- ``rgb`` (built in): the pixel colour itself (3 channels, stride 1): lifting it reproduces the mesh
  colours (a sanity check and the "colour only" baseline).
- DINO / DINOv2 ViTs through ``torch.hub`` (``dino_vits16``, ``dino_vits8``, ``dino_vitb16``,
  ``dino_vitb8``, ``dinov2_vits14``, ``dinov2_vitb14``, ``dinov2_vitl14``, ``dinov2_vitg14`` and the
  ``*_reg`` DINOv2 variants): the hub code (``<hub>/facebookresearch_dino(v2)_main``) and weights
  (``<hub>/checkpoints/<file>``) must already be on disk (``torch.hub.get_dir()`` or ``hub_dir``); the
  weights file can also be given as ``checkpoint``. Nothing is downloaded: a missing file is a
  ``CheckpointError`` saying what to fetch. Output: the last layer's normalised patch tokens.
- ``timm:<model name>`` (needs the optional ``timm`` package and a local ``checkpoint`` file): any timm
  ViT, patch tokens of ``forward_features``.
- ``seed:<release>`` (``common.image_models``: DINO, iBOT, Mugs, DINOv2 (+ registers), BEiT v2): the
  release's own checkpoint file (``checkpoint``, every layout that module reads), loaded strictly; the
  last block's patch tokens after the final norm. ``image_encoder.config`` holds timm architecture
  overrides (tests use tiny models). BEiT v2 runs only at its native 14x14 grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import load_checkpoint, sha256_file, strip_prefixes
from common.errors import CheckpointError, ConfigError
from common.freeze import freeze

__all__ = [
    "ImageEncoder",
    "PatchStatsEncoder",
    "RGBEncoder",
    "HubViTEncoder",
    "TimmViTEncoder",
    "ImageEncoderRecord",
    "HUB_MODELS",
    "BUILTIN_ENCODERS",
    "create_image_encoder",
    "file_sha256",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoder(nn.Module):
    """Interface: ``forward(images (B,3,H,W) in [0,1]) -> (B, dim, h, w)``; ``stride`` is nominal."""

    name: str = ""
    dim: int = 0
    stride: int = 1

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(w, h) of the feature map for an image of (W, H)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- built in
class RGBEncoder(ImageEncoder):
    """The pixel colour (3 channels in [0, 1]) at stride 1."""

    name, dim, stride = "rgb", 3, 1

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()


class PatchStatsEncoder(ImageEncoder):
    """Colour / gradient statistics per ``stride`` x ``stride`` patch and its 3x3 neighbourhood (30 ch).

    Deterministic, weight-free and not semantic (see the module docstring).
    """

    name = "patchstats"
    N_BINS = 8

    def __init__(self, stride: int = 8):
        super().__init__()
        if stride < 1:
            raise ConfigError(f"patchstats stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.dim = 2 * (3 + 3 + self.N_BINS + 1)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        self.register_buffer("kernels", torch.stack([sobel, sobel.T])[:, None], persistent=False)
        self.register_buffer("centres", torch.arange(self.N_BINS) * math.pi / self.N_BINS, persistent=False)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        W, H = size
        return max(1, math.ceil(W / self.stride)), max(1, math.ceil(H / self.stride))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        B, _, H, W = x.shape
        s = self.stride
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.kernels)  # (B, 2, H, W)
        mag = g.norm(dim=1, keepdim=True)
        theta = torch.atan2(g[:, 1:2], g[:, 0:1]) % math.pi  # unsigned orientation in [0, pi)
        # soft assignment to the two nearest of N_BINS circular bins
        diff = (theta - self.centres.view(1, -1, 1, 1)).abs()
        diff = torch.minimum(diff, math.pi - diff)
        weight = (1 - diff / (math.pi / self.N_BINS)).clamp(min=0) * mag
        per_pixel = torch.cat([x, x * x, weight, mag], dim=1)
        ph, pw = math.ceil(H / s), math.ceil(W / s)
        per_pixel = F.pad(per_pixel, (0, pw * s - W, 0, ph * s - H), mode="replicate")
        pooled = F.avg_pool2d(per_pixel, s)
        mean, sq = pooled[:, :3], pooled[:, 3:6]
        std = (sq - mean * mean).clamp(min=0).sqrt()
        hist = pooled[:, 6 : 6 + self.N_BINS]
        mmag = pooled[:, 6 + self.N_BINS :]
        hist = hist / (mmag + 1e-3)
        local = torch.cat([mean, std, hist, 4 * mmag], dim=1)
        context = F.avg_pool2d(F.pad(local, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return torch.cat([local, context], dim=1)


# ------------------------------------------------------------------------------------------------ ViTs
@dataclass(frozen=True)
class HubModel:
    repo: str  # owner/name on GitHub, as torch.hub names its cache folder
    weights: str  # file name torch.hub stores in <hub>/checkpoints/
    patch: int
    dim: int


HUB_MODELS: dict[str, HubModel] = {
    "dino_vits16": HubModel("facebookresearch/dino", "dino_deitsmall16_pretrain.pth", 16, 384),
    "dino_vits8": HubModel("facebookresearch/dino", "dino_deitsmall8_pretrain.pth", 8, 384),
    "dino_vitb16": HubModel("facebookresearch/dino", "dino_vitbase16_pretrain.pth", 16, 768),
    "dino_vitb8": HubModel("facebookresearch/dino", "dino_vitbase8_pretrain.pth", 8, 768),
    "dinov2_vits14": HubModel("facebookresearch/dinov2", "dinov2_vits14_pretrain.pth", 14, 384),
    "dinov2_vitb14": HubModel("facebookresearch/dinov2", "dinov2_vitb14_pretrain.pth", 14, 768),
    "dinov2_vitl14": HubModel("facebookresearch/dinov2", "dinov2_vitl14_pretrain.pth", 14, 1024),
    "dinov2_vitg14": HubModel("facebookresearch/dinov2", "dinov2_vitg14_pretrain.pth", 14, 1536),
    "dinov2_vits14_reg": HubModel("facebookresearch/dinov2", "dinov2_vits14_reg4_pretrain.pth", 14, 384),
    "dinov2_vitb14_reg": HubModel("facebookresearch/dinov2", "dinov2_vitb14_reg4_pretrain.pth", 14, 768),
    "dinov2_vitl14_reg": HubModel("facebookresearch/dinov2", "dinov2_vitl14_reg4_pretrain.pth", 14, 1024),
}


def _vit_input_size(size: tuple[int, int], patch: int, input_height: int) -> tuple[int, int]:
    """(w, h) of the ViT input: height ``input_height`` (0 = the image's), width keeping the aspect,
    both rounded to multiples of the patch size."""
    W, H = size
    h = input_height or H
    w = W * h / H
    return max(patch, round(w / patch) * patch), max(patch, round(h / patch) * patch)


class _ViTBase(ImageEncoder):
    """Resize to multiples of the patch, ImageNet-normalise, run the ViT, reshape patch tokens."""

    def __init__(self, model: nn.Module, name: str, patch: int, dim: int, input_height: int = 0):
        super().__init__()
        self.model = freeze(model)
        self.name, self.stride, self.dim = name, int(patch), int(dim)
        self.input_height = int(input_height)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        w, h = _vit_input_size(size, self.stride, self.input_height)
        return w // self.stride, h // self.stride

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        w, h = _vit_input_size((W, H), self.stride, self.input_height)
        x = images.float()
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        tokens = self.patch_tokens(x)  # (B, n, D)
        gh, gw = h // self.stride, w // self.stride
        if tokens.shape[1] != gh * gw:
            raise CheckpointError(f"{self.name}: {tokens.shape[1]} patch tokens for a {gw}x{gh} grid")
        return tokens.transpose(1, 2).reshape(B, tokens.shape[2], gh, gw).float()


class HubViTEncoder(_ViTBase):
    """DINO / DINOv2 from the torch.hub code on disk; last-layer normalised patch tokens."""

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if hasattr(m, "forward_features"):
            out = m.forward_features(x)
            if isinstance(out, dict) and "x_norm_patchtokens" in out:  # DINOv2
                return out["x_norm_patchtokens"]
        if hasattr(m, "get_intermediate_layers"):  # DINO v1: normalised output of the last block
            return m.get_intermediate_layers(x, n=1)[0][:, 1:]
        raise CheckpointError(f"{self.name}: the hub model has neither DINOv2 forward_features nor "
                              "DINO get_intermediate_layers")


class SeedViTEncoder(_ViTBase):
    """A seed release (``common.image_models``): the last block's patch tokens after the final norm,
    on images normalised as the release does (ImageNet mean / std; MAGE: plain [0, 1] pixels)."""

    def __init__(self, model: nn.Module, name: str, patch: int, dim: int, input_height: int = 0):
        super().__init__(model, name, patch, dim, input_height)
        release = model.release
        self.mean.copy_(torch.tensor(release.mean).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(release.std).view(1, 3, 1, 1))

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.patch_tokens(x).flatten(1, 2)


class TimmViTEncoder(_ViTBase):
    """A timm ViT; patch tokens of ``forward_features`` (prefix tokens dropped)."""

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_features(x)
        return out[:, int(getattr(self.model, "num_prefix_tokens", 1)) :]


# ---------------------------------------------------------------------------------------------- factory
@dataclass
class ImageEncoderRecord:
    """What lifted-feature caches record about the image encoder."""

    name: str
    checkpoint: str | None
    checkpoint_sha256: str  # sha256 of the weights file, or "none" for weight-free encoders
    dim: int
    stride: int
    config: dict


file_sha256 = sha256_file  # hex sha256 of a weights file (common.checkpoint)


def _hub_dir(hub_dir: str | None) -> Path:
    return Path(hub_dir) if hub_dir else Path(torch.hub.get_dir())


def _hub_repo_dir(hub: Path, repo: str) -> Path | None:
    owner, name = repo.split("/")
    for ref in ("main", "master"):
        d = hub / f"{owner}_{name}_{ref}"
        if (d / "hubconf.py").is_file():
            return d
    return None


def _load_state_dict(path: Path) -> dict:
    sd = load_checkpoint(path, hint=None, kind="weights")  # weights_only: a pickled object is refused
    if isinstance(sd, dict):
        for key in ("teacher", "model", "state_dict"):
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path}: not a state dict")
    return strip_prefixes(sd, ("module.", "backbone."))


def _create_hub(name: str, checkpoint: str | None, hub_dir: str | None, input_height: int) -> tuple[
        ImageEncoder, str]:
    spec = HUB_MODELS[name]
    hub = _hub_dir(hub_dir)
    repo_dir = _hub_repo_dir(hub, spec.repo)
    weights = Path(checkpoint) if checkpoint else hub / "checkpoints" / spec.weights
    missing = []
    if repo_dir is None:
        missing.append(f"hub code {hub / (spec.repo.replace('/', '_') + '_main')}")
    if not weights.is_file():
        missing.append(f"weights {weights}")
    if missing:
        raise CheckpointError(
            f"{name}: not available offline ({' and '.join(missing)} missing); nothing is downloaded at run "
            f"time. On a machine with network run: python -c \"import torch; torch.hub.load('{spec.repo}', "
            f"'{name}')\" and copy its torch hub folder ({hub}) here, or pass image_encoder.hub_dir / "
            "image_encoder.checkpoint"
        )
    try:
        model = torch.hub.load(str(repo_dir), name, source="local", pretrained=False, trust_repo=True)
    except Exception as e:  # noqa: BLE001 - hub code errors are reported as one line
        raise CheckpointError(f"{repo_dir}: cannot build {name} from the hub code ({type(e).__name__}: {e})"
                              ) from None
    sd = _load_state_dict(weights)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{weights}: weights do not fit {name} ({' '.join(first[:2])[:300]})") from None
    return HubViTEncoder(model, name, spec.patch, spec.dim, input_height), str(weights)


def _create_timm(name: str, checkpoint: str | None, input_height: int) -> tuple[ImageEncoder, str]:
    model_name = name.split(":", 1)[1]
    try:
        import timm
    except ImportError:
        raise CheckpointError(f"{name}: the optional package timm is not installed (pip install timm)"
                              ) from None
    if not checkpoint:
        raise CheckpointError(f"{name}: give the weights file as image_encoder.checkpoint (no downloads)")
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                  dynamic_img_size=True, num_classes=0)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot build timm model {model_name} ({type(e).__name__}: {e})"
                              ) from None
    patch = model.patch_embed.patch_size
    patch = int(patch[0] if isinstance(patch, tuple | list) else patch)
    return TimmViTEncoder(model, name, patch, int(model.num_features), input_height), str(path)


BUILTIN_ENCODERS: dict[str, Callable[..., ImageEncoder]] = {
    "patchstats": PatchStatsEncoder,
    "rgb": RGBEncoder,
}


def create_image_encoder(name: str, checkpoint: str | None = None, hub_dir: str | None = None,
                         input_height: int = 0, **config: Any) -> tuple[ImageEncoder, ImageEncoderRecord]:
    """Build image encoder ``name`` (see the module docstring) and its record (weights hashed)."""
    if name in BUILTIN_ENCODERS:
        try:
            enc = BUILTIN_ENCODERS[name](**config)
        except TypeError as e:
            raise ConfigError(f"config key 'image_encoder.config' for {name}: {e}") from None
        rec = ImageEncoderRecord(name, None, "none", enc.dim, enc.stride, dict(config))
        return enc.eval(), rec
    if name.startswith("seed:"):
        from common.image_models import load_image_vit

        if not checkpoint:
            raise ConfigError(f"image encoder {name}: give image_encoder.checkpoint (the release's weights "
                              "file); nothing is downloaded")
        vit = load_image_vit(name[len("seed:"):], checkpoint, **config)
        enc = SeedViTEncoder(vit, name, vit.patch, vit.embed_dim, input_height)
        rec = ImageEncoderRecord(name, str(checkpoint), file_sha256(str(checkpoint)), enc.dim, enc.stride,
                                 {"input_height": input_height, **config})
        return enc.eval(), rec
    if config:
        raise ConfigError(f"config key 'image_encoder.config' is not used by {name}: {sorted(config)}")
    if name in HUB_MODELS:
        enc, weights = _create_hub(name, checkpoint, hub_dir, input_height)
    elif name.startswith("timm:"):
        enc, weights = _create_timm(name, checkpoint, input_height)
    else:
        raise ConfigError(f"unknown image encoder {name!r}; available: {sorted(BUILTIN_ENCODERS)}, "
                          f"{sorted(HUB_MODELS)}, seed:<release> or timm:<model>")
    rec = ImageEncoderRecord(name, weights, file_sha256(weights), enc.dim, enc.stride,
                             {"input_height": input_height})
    return enc.eval(), rec
