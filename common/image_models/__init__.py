"""Seed image encoders (DINO, iBOT, Mugs, DINOv2, BEiT v2, MAGE) from their official checkpoint layouts.

``load_image_vit(name, checkpoint)`` builds the timm architecture of release ``name`` (see
:data:`RELEASES`; ``timm.create_model(..., pretrained=False)``, nothing downloads), finds the encoder
in the released file (wrapper keys, prefixes, dropped heads, renames: the release's table row) and
loads it with :func:`common.checkpoint.load_state_dict_strict` (every model key, every shape, or one
``CheckpointError`` with the bracketed diff). The result is an :class:`ImageViT` whose
``linear_features`` is the release's linear-probe representation and ``patch_tokens`` the dense one.
Modality-free: the video frame-wise encoders and the 2D->3D lifting both build on it.

MAGE is not a timm ViT (a VQGAN tokenizer and a BERT token stem before timm Blocks): its rows build a
:class:`~common.image_models.mage.MageViT` (own code, ``common.image_models.mage``) with the same
interface; the file is read and checked the same way.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import load_checkpoint, load_state_dict_strict, select_prefix, strip_prefixes
from common.errors import CheckpointError, ConfigError
from common.image_models.mage import MageViT, build_mage
from common.image_models.releases import RELEASES, UNSUPPORTED, Release
from common.image_models.vit import ImageViT, interpolate_pos_embed

__all__ = ["RELEASES", "UNSUPPORTED", "ImageViT", "MageViT", "Release", "SeedImageModel", "build_image_vit",
           "extract_state_dict", "interpolate_pos_embed", "load_image_vit", "release_of"]

SeedImageModel = ImageViT | MageViT  # features(x) -> (linear (B, linear_dim), patch tokens (B, h, w, D))

TRUST_HINT = "encoder.trust_checkpoint=true"


def release_of(name: str) -> Release:
    """The table row of ``name``; a ``ConfigError`` naming the known ones (or why one is left out)."""
    if name in RELEASES:
        return RELEASES[name]
    family = name.split("_")[0]
    if family in UNSUPPORTED:
        raise ConfigError(f"{name}: not supported: {UNSUPPORTED[family]}")
    raise ConfigError(f"unknown image encoder release '{name}' (known: {', '.join(sorted(RELEASES))})")


def build_image_vit(name: str, seed: int | None = None, **arch: Any) -> SeedImageModel:
    """The architecture of release ``name`` with timm's random initialisation (``seed``: torch RNG
    seed, restored afterwards); ``arch`` overrides timm arguments (e.g. ``depth``, ``embed_dim``; MAGE:
    the fields of :class:`~common.image_models.mage.MageArch`)."""
    release = release_of(name)
    try:
        import timm
    except ImportError:
        raise ConfigError(f"{name}: timm is not installed (pip install timm)") from None
    kwargs = {**release.timm_kwargs, **arch}
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        if release.is_mage:
            try:
                return build_mage(name, release, **arch)
            except TypeError as e:
                raise ConfigError(f"{name}: cannot build MAGE with {sorted(arch)} ({e})") from None
        try:
            model = timm.create_model(release.timm_name, pretrained=False, **kwargs)
        except TypeError as e:
            raise ConfigError(f"{name}: cannot build timm {release.timm_name} with {sorted(arch)} ({e})"
                              ) from None
    return ImageViT(name, release, model).eval()


def _unwrap(obj: Any, path: Path, release: Release) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in release.wrappers if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping):
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: no {release.family} encoder state dict found (keys: {keys}; "
                              f"looked under {list(release.wrappers)})")
    raise CheckpointError(f"{path}: not a state dict (got {type(obj).__name__})")


def extract_state_dict(obj: Any, path: str | Path, release: Release) -> dict[str, torch.Tensor]:
    """The encoder part of a loaded release file, under timm's key names (heads etc. dropped)."""
    path = Path(path)
    sd = _unwrap(obj, path, release)
    sd = strip_prefixes(select_prefix(sd, release.select), release.strip)
    sd = {k: v for k, v in sd.items()
          if not k.startswith(release.drop) and not k.endswith("relative_position_index")}
    for pattern, repl in release.renames:
        rx = re.compile(pattern)
        sd = {rx.sub(repl, k): v for k, v in sd.items()}
    if release.fold_cls_pos and "pos_embed" in sd and "cls_token" in sd:
        pos = sd["pos_embed"]
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
        sd["pos_embed"] = pos[:, 1:]
    return sd


def load_image_vit(name: str, checkpoint: str | Path, *, trust: bool = False, **arch: Any) -> SeedImageModel:
    """Release ``name`` with the weights of ``checkpoint`` (a local file), strictly; eval mode."""
    if checkpoint in (None, "", "hub"):
        raise CheckpointError(f"{name}: give the release's weights file (.pth); nothing is downloaded")
    path = Path(checkpoint)
    vit = build_image_vit(name, **arch)
    sd = extract_state_dict(load_checkpoint(path, trust=trust, hint=TRUST_HINT, kind="checkpoint"), path,
                            vit.release)
    load_state_dict_strict(vit.model, sd, path, what=f"checkpoint does not fit {name} "
                           f"({vit.release.timm_name})", style="bracketed")
    return vit.eval()
