"""The one interface every video encoder implements; checkpoints through ``common.checkpoint``.

An encoder maps a clip ``(B, C, T, H, W)`` float in [0, 1] to ``EncoderOutput(tokens, pooled)``;
it applies its own normalisation (``mean`` / ``std``). ``tokens`` is ``(B, T', H', W', token_dim)``
or ``None``; ``pooled`` is ``(B, embed_dim)``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.checkpoint import load_checkpoint, load_state_dict_strict
from common.checkpoint import strip_prefixes as strip_prefixes  # noqa: F401  (layouts: vit, zoo, framewise)
from common.errors import CheckpointError
from common.freeze import assert_frozen as assert_frozen  # re-exported by videoprobe.models
from common.freeze import freeze

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.45, 0.45, 0.45)  # pytorchvideo model zoo
KINETICS_STD = (0.225, 0.225, 0.225)


# The encoder's blocks for tuning: ordered (name, parameter-name prefixes relative to the encoder), input
# side first (``common.tuning``: last-k, progressive unfreezing, layer-wise lr decay).
BlockLayout = list[tuple[str, list[str]]]


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch of clips."""

    tokens: torch.Tensor | None  # (B, T', H', W', token_dim)
    pooled: torch.Tensor  # (B, embed_dim)


class VideoEncoder(nn.Module):
    """Base class: input checks, normalisation, freezing and a description for records.

    Subclasses set the attributes in ``__init__`` and implement ``encode(x)`` on a normalised clip.
    """

    name: str = "video_encoder"
    embed_dim: int = 0
    token_dim: int = 0
    clip_len: int = 16
    frame_step: int = 4
    crop_size: int = 224
    short_side: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # "random:<seed>", "none" (no parameters / hand-designed) or the checkpoint's sha256
    checkpoint_id: str = "none"
    checkpoint_path: str | None = None
    # spatial / temporal sizes must be multiples of these (e.g. the ViT patch and tubelet)
    size_multiple: int = 1
    frames_multiple: int = 1

    def normalize(self, clip: torch.Tensor) -> torch.Tensor:
        """``(clip - mean) / std`` per channel, on a (B, C, T, H, W) tensor."""
        mean = torch.as_tensor(self.mean, dtype=clip.dtype, device=clip.device).view(1, -1, 1, 1, 1)
        std = torch.as_tensor(self.std, dtype=clip.dtype, device=clip.device).view(1, -1, 1, 1, 1)
        return (clip - mean) / std

    def check_input(self, clip: torch.Tensor) -> None:
        """Raise ``ValueError`` with a readable message for a clip of the wrong shape."""
        if clip.ndim != 5 or clip.shape[1] != 3:
            raise ValueError(f"{self.name}: expected a clip (B, 3, T, H, W), got shape {tuple(clip.shape)}")
        _, _, t, h, w = clip.shape
        if t % self.frames_multiple or h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"{self.name}: frames must be a multiple of {self.frames_multiple} and height/width of "
                f"{self.size_multiple}, got T={t}, H={h}, W={w}"
            )

    def forward(self, clip: torch.Tensor) -> EncoderOutput:
        self.check_input(clip)
        return self.encode(self.normalize(clip.float()))

    def encode(self, x: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def freeze(self) -> VideoEncoder:
        """Eval mode and no gradients: the state every extraction runs in."""
        return freeze(self)

    def block_layout(self) -> BlockLayout:
        """The encoder's blocks in depth order (input side first), each ``(name, prefixes)``: together they
        hold every parameter exactly once, except those named by :meth:`fixed`. An encoder without
        parameters has an empty layout; one with parameters that declares none raises
        ``NotImplementedError``."""
        if next(self.parameters(), None) is None:
            return []
        raise NotImplementedError(f"video encoder {self.name!r} declares no block layout "
                                  f"(VideoEncoder.block_layout)")

    def fixed(self) -> list[str]:
        """Parameter-name prefixes that never train (kept fixed by design); none by default."""
        return []

    def describe(self) -> dict[str, Any]:
        """The facts a cache key / result record needs about this encoder."""
        return {
            "name": self.name,
            "embed_dim": int(self.embed_dim),
            "token_dim": int(self.token_dim),
            "clip_len": int(self.clip_len),
            "frame_step": int(self.frame_step),
            "crop_size": int(self.crop_size),
            "short_side": int(self.short_side),
            "mean": list(self.mean),
            "std": list(self.std),
            "checkpoint": self.checkpoint_path,
            "checkpoint_sha256": self.checkpoint_id,
        }


# ----------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """``torch.load`` a file on the CPU, safely (``common.checkpoint.load_checkpoint``).

    Only tensors, containers and known harmless classes (the ``argparse.Namespace`` of VideoMAE files)
    are unpickled; a file needing anything else is a ``CheckpointError`` naming the opt-in
    ``encoder.trust_checkpoint=true`` (or ``trust=True`` here), which loads it fully with a warning.
    """
    return load_checkpoint(path, trust=trust, hint="encoder.trust_checkpoint=true")


def unwrap_state_dict(obj: Any, path: str | Path, wrappers: Iterable[str]) -> dict[str, torch.Tensor]:
    """Descend into the first wrapper key present (e.g. "model_state", "model") until tensors appear."""
    wrappers = list(wrappers)
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for w in wrappers:
            if w in obj and isinstance(obj[w], Mapping):
                obj = obj[w]
                break
        else:
            break
        seen += 1
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(list(map(str, obj.keys()))[:8])
        raise CheckpointError(
            f"{path}: no state dict found (top-level keys: {keys}; expected one of {wrappers})"
        )
    raise CheckpointError(f"{path}: not a state dict (got {type(obj).__name__})")


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict(strict=True)`` with a readable diff as ``CheckpointError`` on any mismatch
    (``common.checkpoint.load_state_dict_strict``: ``missing N [...]; unexpected N [...]; wrong shape``)."""
    load_state_dict_strict(model, sd, path, style="bracketed")


def offline() -> bool:
    """True when downloads must not be tried: ``PROBESUITE_OFFLINE=1`` or no route to the internet."""
    if os.environ.get("PROBESUITE_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    try:
        with socket.create_connection(("dl.fbaipublicfiles.com", 443), timeout=2.0):
            return False
    except OSError:
        return True


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for a random initialisation, restoring the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
