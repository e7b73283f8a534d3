"""Load and save point encoder checkpoints.

Three layouts are read (always with ``torch.load(weights_only=True)``, through
``common.checkpoint.load_checkpoint``):

- Sonata release files (``sonata.pth``, ``sonata_small.pth``): ``{"config", "state_dict"}``.
- Pointcept training checkpoints: ``{"state_dict", "epoch", "optimizer", ...}`` with keys prefixed
  ``module.student.backbone.`` (teacher and heads are ignored); the config is recognised from the
  tensor shapes (Sonata / Sonata-small) or given with ``config=``.
- This project's checkpoints (:func:`save_encoder`): ``{"arch", "config", "state_dict", "meta"}``.

Reading, writing, strict loading, prefix stripping and hashing are ``common.checkpoint``'s; this
module only knows the point encoders' key layouts (which prefixes, which config inference). Building a
model from a checkpoint needs the encoder table: ``registry.load_encoder`` (this module imports no
other module of the package but ``structure`` and ``ptv3``'s presets).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    select_prefix,
    sha256_file,
)
from common.checkpoint import strip_prefixes as _strip
from common.errors import CheckpointError

from .ptv3 import SONATA_CONFIG, SONATA_SMALL_CONFIG
from .structure import PointEncoder

HUB_REPO = "facebook/sonata"
HUB_FILES = {"sonata": "sonata.pth", "sonata_small": "sonata_small.pth"}
WRAPPER_PREFIXES = ("module.",)  # DDP
STRIP_PREFIXES = ("student.backbone.", "backbone.")  # Pointcept Sonata training files: the student backbone

# hex sha256 of a checkpoint file (recorded with every cache and result)
checkpoint_sha256 = sha256_file


def _hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _hub_download(name: str) -> Path:
    """Path of release checkpoint ``name`` from the Sonata release cache or the Hugging Face cache/hub."""
    filename = HUB_FILES[name]
    release_cache = Path(os.path.expanduser("~/.cache/sonata/ckpt")) / filename
    if release_cache.is_file():
        return release_cache
    where = (f"download {filename} from https://huggingface.co/{HUB_REPO} on a machine with network and "
             f"pass encoder.checkpoint=/path/{filename} (featviz points: --checkpoint /path/{filename}), "
             f"or put it in the Hugging Face cache ({_hub_cache_dir()}, "
             f"e.g. `huggingface-cli download {HUB_REPO} {filename}`) or in {release_cache.parent}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(
            f"{name}: huggingface_hub is not installed, cannot fetch {filename}; {where}"
        ) from None
    try:
        return Path(hf_hub_download(repo_id=HUB_REPO, filename=filename, local_files_only=True))
    except Exception:  # not cached yet: try the network
        pass
    try:
        return Path(hf_hub_download(repo_id=HUB_REPO, filename=filename))
    except Exception as e:  # offline, gated, hub down: all reported the same way
        raise CheckpointError(
            f"{name}: could not fetch {filename} from the Hugging Face hub "
            f"({type(e).__name__}; offline?); {where}"
        ) from None


def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """A local checkpoint file, or a release name (``sonata``, ``sonata_small``) resolved via the hub."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if str(path_or_name) in HUB_FILES:
        return _hub_download(str(path_or_name))
    if path.exists():
        raise CheckpointError(f"{path}: is not a checkpoint file")
    raise CheckpointError(f"{path}: no such checkpoint file (release names: {sorted(HUB_FILES)})")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` and keep the backbone: ``student.backbone.`` (Pointcept Sonata) or ``backbone.``."""
    return select_prefix(_strip(state_dict, WRAPPER_PREFIXES), STRIP_PREFIXES)


def read_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` (``common.checkpoint.load_checkpoint``: known harmless
    classes allowed, anything else refused unless ``trust``) with errors turned into ``CheckpointError``."""
    ckpt = load_checkpoint(path, trust=trust, hint="encoder.trust_checkpoint=true")
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: checkpoint is a {type(ckpt).__name__}, expected a dict")
    return dict(ckpt)


def _ptv3_shapes(sd: Mapping[str, torch.Tensor]) -> tuple[int, list[int], list[int]] | None:
    """(in_channels, depths, channels) read from a PTv3 state dict, or None if it is not one."""
    stem = sd.get("embedding.stem.linear.weight")
    if stem is None:
        return None
    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(r"enc\.enc(\d+)\.block(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if stages != list(range(len(stages))):
        return None
    depths = [max(blocks[s]) + 1 for s in stages]
    channels = []
    for s in stages:
        w = sd.get(f"enc.enc{s}.block0.norm1.0.weight")
        if w is None:
            return None
        channels.append(int(w.shape[0]))
    return int(stem.shape[1]), depths, channels


def infer_ptv3_config(sd: Mapping[str, torch.Tensor], path: str | os.PathLike) -> dict[str, Any]:
    """Config of a Pointcept checkpoint without one: the Sonata preset whose shapes match."""
    shapes = _ptv3_shapes(sd)
    if shapes is None:
        raise CheckpointError(f"{path}: no config in the checkpoint and the state dict is not a PTv3 encoder "
                              f"(keys start {sorted(sd)[:3]})")
    for preset in (SONATA_CONFIG, SONATA_SMALL_CONFIG):
        if (preset["in_channels"], preset["enc_depths"], preset["enc_channels"]) == shapes:
            return {**preset, "mask_token": "embedding.mask_token" in sd}
    raise CheckpointError(
        f"{path}: no config in the checkpoint and its shapes (in_channels={shapes[0]}, depths={shapes[1]}, "
        f"channels={shapes[2]}) match no Sonata preset; give encoder.config={{...}} (enc_num_head, order, "
        f"...; Python: load_encoder(..., config=...))"
    )


def save_encoder(model: PointEncoder, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``{"arch", "config", "state_dict", "meta"}`` atomically; ``meta`` holds plain values only."""
    ckpt = {
        "arch": model.arch,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    return save_checkpoint(ckpt, path)
