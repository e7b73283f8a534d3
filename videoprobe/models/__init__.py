"""Video encoders behind one interface: clip (B, C, T, H, W) in [0, 1] -> ``EncoderOutput(tokens, pooled)``.

``VIDEO_ENCODERS`` is a plain table from names to factories ``(name, checkpoint=None, seed=0, **kw)``;
``create_video_encoder(name, checkpoint)`` builds one, frozen (eval mode, no gradients).
``checkpoint``: None (random init, recorded as ``random:<seed>``; hand-designed encoders: ``none``),
a local file, or ``"hub"`` (pytorchvideo zoo only: torch.hub cache or download when online).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from common.errors import ConfigError
from videoprobe.models.base import EncoderOutput, VideoEncoder, assert_frozen
from videoprobe.models.framewise import (
    SEED_FRAME_ENCODERS,
    create_framewise_encoder,
    create_seed_frames_encoder,
)
from videoprobe.models.motion import create_motion_energy
from videoprobe.models.vit import vit_factory
from videoprobe.models.zoo import ZOO_SPECS, create_zoo_encoder

__all__ = ["VIDEO_ENCODERS", "EncoderOutput", "VideoEncoder", "assert_frozen", "create_video_encoder"]


def _zoo(name: str, checkpoint: str | None = None, seed: int = 0, **kw: Any) -> VideoEncoder:
    return create_zoo_encoder(name, checkpoint, seed, **kw)


VIDEO_ENCODERS: dict[str, Callable[..., VideoEncoder]] = {
    # pytorchvideo model zoo (Kinetics-400 weights via checkpoint file or "hub")
    **{name: _zoo for name in ZOO_SPECS},
    # VideoMAE / VideoMAEv2 (tubelet 2, patch 16, 16 frames, 224 px)
    "videomae_vit_s": vit_factory("videomae", "s"),
    "videomae_vit_b": vit_factory("videomae", "b"),
    "videomae_vit_l": vit_factory("videomae", "l"),
    "videomae_vit_h": vit_factory("videomae", "h"),
    "videomae_vit_g": vit_factory("videomae", "g"),
    "videomae_vit_tiny": vit_factory("videomae", "tiny"),
    # V-JEPA (target_encoder of the pre-training file)
    "vjepa_vit_l": vit_factory("vjepa", "l"),
    "vjepa_vit_h": vit_factory("vjepa", "h"),
    "vjepa_vit_tiny": vit_factory("vjepa", "tiny"),
    # frame-wise image models (appearance-only baseline)
    "frame_resnet18": create_framewise_encoder,
    "frame_resnet50": create_framewise_encoder,
    "frame_vit_b_16": create_framewise_encoder,
    "frame_stats": create_framewise_encoder,
    # seed image encoders per frame (DINO, iBOT, Mugs, DINOv2, BEiT v2 release files; common.image_models)
    **{name: create_seed_frames_encoder for name in SEED_FRAME_ENCODERS},
    # hand-designed motion descriptor for the offline demo
    "motion_energy": create_motion_energy,
}


def create_video_encoder(name: str, checkpoint: str | None = None, seed: int = 0, **kw: Any) -> VideoEncoder:
    """Build encoder ``name`` (see ``VIDEO_ENCODERS``; also ``frame_timm:<model>``), frozen.

    Unknown names are a ``ConfigError`` listing the known ones; checkpoint problems are a
    ``CheckpointError`` naming the file.
    """
    if name.startswith("frame_timm:"):
        factory: Callable[..., VideoEncoder] = create_framewise_encoder
    elif name in VIDEO_ENCODERS:
        factory = VIDEO_ENCODERS[name]
    else:
        raise ConfigError(f"unknown video encoder '{name}' (known: {', '.join(sorted(VIDEO_ENCODERS))})")
    if checkpoint in ("", "none", "None", "random"):
        checkpoint = None
    enc = partial(factory, name)(checkpoint=checkpoint, seed=seed, **kw)
    if str(getattr(enc, "checkpoint_id", "")).startswith("random:"):
        from common.report import warn_random_weights

        warn_random_weights(name, seed)
    return enc.freeze()
