"""Clip specification, temporal clip indices and spatial views of decoded clips.

Layout conventions: decoders return uint8 frames (T, H, W, 3); everything here works on float clips
(C, T, H, W) in [0, 1]; a set of views of one video is (V, C, T, H, W) with V = clips x crops,
ordered clip-major (clip 0 crop 0, clip 0 crop 1, ..., clip 1 crop 0, ...).

The sampling primitives are ``common.sampling``'s (``center_crop``, ``three_crops`` (a list of 3),
``random_resized_crop``, ``resize_short_side``, re-exported here); ``clip_indices`` here stacks
``common.sampling.clip_indices`` into one (num_clips, clip_len) array.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from common.sampling import center_crop, random_resized_crop, resize_short_side, three_crops
from common.sampling import clip_indices as _clip_indices

Seed = int | np.random.Generator | None
TEMPORAL_MODES = ("uniform", "random")
SPATIAL_MODES = ("center", "three_crop", "random_resized", "none")
RANDOM_RESIZED_SCALE = (0.3, 1.0)  # area fraction range of the random crop (video training)


__all__ = ["ClipSpec", "RANDOM_RESIZED_SCALE", "SPATIAL_MODES", "TEMPORAL_MODES", "center_crop",
           "clip_indices", "make_views", "random_resized_crop", "resize_short_side", "spatial_views",
           "three_crops", "to_float_clip"]


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
                 mode: str = "uniform", rng: Seed = None, source: str | None = None) -> np.ndarray:
    """Frame indices (num_clips, clip_len) int64 of clips of ``clip_len`` frames every ``frame_step``.

    A clip spans ``(clip_len - 1) * frame_step + 1`` frames.  "uniform": starts evenly spaced over
    ``[0, num_frames - span]`` (a single clip is centred); "random": starts drawn uniformly.  A video
    shorter than the span starts at 0 and repeats its last frame (indices clamped).  (Stacks
    ``common.sampling.clip_indices``; no frames raises ``InputError(source, ...)``.)
    """
    clips = _clip_indices(num_frames, clip_len, frame_step, num_clips, mode, rng, source)  # type: ignore[arg-type]
    return np.stack(clips).astype(np.int64)


def to_float_clip(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (C, T, H, W) in [0, 1]."""
    return frames.permute(3, 0, 1, 2).to(torch.float32).div_(255.0)


def spatial_views(clip: torch.Tensor, spatial: str, size: int, short_side: int | None = None,
                  rng: Seed = None) -> torch.Tensor:
    """The spatial views of one float clip (C, T, H, W) -> (crops, C, T, size, size)
    (``spatial="none"`` keeps the full frames: (1, C, T, H, W)).  "center" / "three_crop" first
    resize the short side to ``max(short_side or size, size)``; "random_resized" draws an area
    fraction in ``RANDOM_RESIZED_SCALE`` and an aspect ratio in [3/4, 4/3]."""
    if spatial == "none":
        return clip.unsqueeze(0)
    if spatial == "random_resized":
        return random_resized_crop(clip, size, scale=RANDOM_RESIZED_SCALE, rng=_rng(rng)).unsqueeze(0)
    clip = resize_short_side(clip, max(short_side or size, size))
    if spatial == "center":
        return center_crop(clip, size).unsqueeze(0)
    if spatial == "three_crop":
        return torch.stack(three_crops(clip, size))
    raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {spatial!r}")


def make_views(frames: torch.Tensor, indices: np.ndarray, spec: ClipSpec, rng: Seed = None) -> torch.Tensor:
    """Views (V, C, T, H, W) float32 in [0, 1] from decoded uint8 ``frames`` (N, H, W, 3) whose row i is
    frame ``indices.reshape(-1)[i]``; ``indices`` is (num_clips, clip_len)."""
    g = _rng(rng)
    n_clips, clip_len = indices.shape
    views = []
    for c in range(n_clips):
        clip = to_float_clip(frames[c * clip_len:(c + 1) * clip_len])
        views.append(spatial_views(clip, spec.spatial, spec.size, spec.short_side, g))
    return torch.cat(views).clamp_(0.0, 1.0).contiguous()  # resampling can overshoot 1 by rounding
