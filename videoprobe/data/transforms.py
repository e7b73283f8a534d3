"""Clip specification, temporal clip indices and spatial views of decoded clips.

Layout conventions: decoders return uint8 frames (T, H, W, 3); everything here works on float clips
(C, T, H, W) in [0, 1]; a set of views of one video is (V, C, T, H, W) with V = clips x crops,
ordered clip-major (clip 0 crop 0, clip 0 crop 1, ..., clip 1 crop 0, ...).

The temporal/spatial sampling primitives below are private fallbacks of the ones planned in
``common.sampling`` (``clip_indices``, ``center_crop``, ``three_crops``, ``random_resized_crop``,
``resize_short_side``).
# TODO(lead): switch to common.sampling's video functions when they land (same signatures).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Seed = int | np.random.Generator | None
TEMPORAL_MODES = ("uniform", "random")
SPATIAL_MODES = ("center", "three_crop", "random_resized", "none")


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclass(frozen=True)
class ClipSpec:
    """How to cut views out of a video.

    ``clip_len`` frames per clip taken every ``frame_step`` frames; ``num_clips`` clips placed
    ``mode`` = "uniform" (evenly spread, deterministic; one clip = the centre one) or "random";
    ``spatial`` = "center" (resize short side to ``short_side`` then centre crop ``size``),
    "three_crop" (resize short side to ``short_side`` then 3 crops along the long side),
    "random_resized" (random area/aspect crop resized to ``size``) or "none" (keep full frames);
    ``short_side`` defaults to ``size``.  ``backend`` picks the decoder (see ``open_video``).
    """

    clip_len: int = 16
    frame_step: int = 4
    num_clips: int = 1
    mode: str = "uniform"
    spatial: str = "center"
    size: int = 224
    short_side: int | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.frame_step < 1 or self.num_clips < 1:
            raise ValueError("clip_len, frame_step and num_clips must be >= 1")
        if self.mode not in TEMPORAL_MODES:
            raise ValueError(f"mode must be one of {TEMPORAL_MODES}, got {self.mode!r}")
        if self.spatial not in SPATIAL_MODES:
            raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {self.spatial!r}")
        if self.size < 1:
            raise ValueError("size must be >= 1")

    @property
    def crops_per_clip(self) -> int:
        return 3 if self.spatial == "three_crop" else 1

    @property
    def num_views(self) -> int:
        """V = num_clips x crops_per_clip."""
        return self.num_clips * self.crops_per_clip

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for cache keys / recorded preprocessing)."""
        return asdict(self)


def clip_indices(num_frames: int, clip_len: int, frame_step: int = 1, num_clips: int = 1,
                 mode: str = "uniform", rng: Seed = None) -> np.ndarray:
    """Frame indices (num_clips, clip_len) int64 of clips of ``clip_len`` frames every ``frame_step``.

    A clip spans ``(clip_len - 1) * frame_step + 1`` frames.  "uniform": starts evenly spaced over
    ``[0, num_frames - span]`` (a single clip is centred); "random": starts drawn uniformly.  A video
    shorter than the span starts at 0 and repeats its last frame (indices clamped).
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"mode must be one of {TEMPORAL_MODES}, got {mode!r}")
    span = (clip_len - 1) * frame_step + 1
    max_start = max(num_frames - span, 0)
    if mode == "random":
        starts = _rng(rng).integers(0, max_start + 1, size=num_clips)
    elif num_clips == 1:
        starts = np.array([max_start // 2])
    else:
        starts = np.round(np.linspace(0, max_start, num_clips)).astype(np.int64)
    idx = starts[:, None] + np.arange(clip_len)[None, :] * frame_step
    return np.minimum(idx, num_frames - 1).astype(np.int64)


def to_float_clip(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (C, T, H, W) in [0, 1]."""
    return frames.permute(3, 0, 1, 2).to(torch.float32).div_(255.0)


def resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of a float (C, T, H, W) clip."""
    if clip.shape[-2:] == (height, width):
        return clip
    x = clip.permute(1, 0, 2, 3)  # (T, C, H, W): frames as a batch
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(1, 0, 2, 3).clamp_(0.0, 1.0)


def resize_short_side(clip: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize (C, T, H, W) so that min(H, W) == ``short_side``, keeping the aspect ratio."""
    h, w = clip.shape[-2:]
    if h <= w:
        return resize(clip, short_side, max(1, round(w * short_side / h)))
    return resize(clip, max(1, round(h * short_side / w)), short_side)


def _crop(clip: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return clip[..., top:top + size, left:left + size]


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size`` x ``size`` crop of (C, T, H, W); a side smaller than ``size`` is resized up first."""
    h, w = clip.shape[-2:]
    if min(h, w) < size:
        clip = resize_short_side(clip, size)
        h, w = clip.shape[-2:]
    return _crop(clip, (h - size) // 2, (w - size) // 2, size)


def three_crops(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Three ``size`` crops along the longer side (start, centre, end) -> (3, C, T, size, size)."""
    h, w = clip.shape[-2:]
    if min(h, w) < size:
        clip = resize_short_side(clip, size)
        h, w = clip.shape[-2:]
    if w >= h:
        top = (h - size) // 2
        lefts = [0, (w - size) // 2, w - size]
        return torch.stack([_crop(clip, top, left, size) for left in lefts])
    left = (w - size) // 2
    tops = [0, (h - size) // 2, h - size]
    return torch.stack([_crop(clip, top, left, size) for top in tops])


def random_resized_crop(clip: torch.Tensor, size: int, scale: tuple[float, float] = (0.3, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), rng: Seed = None) -> torch.Tensor:
    """One random crop (area fraction in ``scale``, aspect in ``ratio``), the same for every frame,
    resized to ``size`` x ``size``; falls back to the central largest crop after 10 failed draws."""
    g = _rng(rng)
    h, w = clip.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * g.uniform(*scale)
        aspect = math.exp(g.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(g.integers(0, h - ch + 1))
            left = int(g.integers(0, w - cw + 1))
            return resize(clip[..., top:top + ch, left:left + cw], size, size)
    s = min(h, w)
    return resize(_crop(clip, (h - s) // 2, (w - s) // 2, s), size, size)


def spatial_views(clip: torch.Tensor, spatial: str, size: int, short_side: int | None = None,
                  rng: Seed = None) -> torch.Tensor:
    """The spatial views of one float clip (C, T, H, W) -> (crops, C, T, size, size)
    (``spatial="none"`` keeps the full frames: (1, C, T, H, W))."""
    if spatial == "none":
        return clip.unsqueeze(0)
    if spatial == "random_resized":
        return random_resized_crop(clip, size, rng=rng).unsqueeze(0)
    clip = resize_short_side(clip, short_side or size)
    if spatial == "center":
        return center_crop(clip, size).unsqueeze(0)
    if spatial == "three_crop":
        return three_crops(clip, size)
    raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {spatial!r}")


def make_views(frames: torch.Tensor, indices: np.ndarray, spec: ClipSpec, rng: Seed = None) -> torch.Tensor:
    """Views (V, C, T, H, W) float in [0, 1] from decoded uint8 ``frames`` (N, H, W, 3) whose row i is
    frame ``indices.reshape(-1)[i]``; ``indices`` is (num_clips, clip_len)."""
    g = _rng(rng)
    n_clips, clip_len = indices.shape
    views = []
    for c in range(n_clips):
        clip = to_float_clip(frames[c * clip_len:(c + 1) * clip_len])
        views.append(spatial_views(clip, spec.spatial, spec.size, spec.short_side, g))
    return torch.cat(views).contiguous()
