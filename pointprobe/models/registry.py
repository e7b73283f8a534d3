"""Name -> point encoder: the ``ENCODERS`` table, building, checkpoint loading and the encoder record.

Every stage that needs a point encoder (extract, label, featviz, ablate, pretrain, distill) goes through
this module: :func:`create_encoder` (random initial weights), :func:`load_encoder` (a checkpoint file
or release name) and :func:`build_encoder` (either, from a :class:`PointEncoderConfig` config section,
frozen, with the :class:`EncoderRecord` every cache and result stores).

A new encoder is one module (its ``PointEncoder`` subclass, see ``structure.PointEncoder`` for the
contract) plus one :class:`EncoderSpec` row in ``ENCODERS`` below.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import load_state_dict_strict
from common.errors import CheckpointError, ConfigError
from common.freeze import freeze

from .load import checkpoint_sha256, infer_ptv3_config, read_checkpoint, resolve_checkpoint, strip_prefixes
from .ptv3 import PTV3_TINY_CONFIG, SONATA_CONFIG, SONATA_SMALL_CONFIG, PointTransformerV3
from .structure import PointEncoder

log = logging.getLogger(__name__)

RAW = "raw"  # PointEncoderConfig.name of "no model: the input features themselves"

ConfigInference = Callable[[Mapping[str, torch.Tensor], "str | os.PathLike"], dict[str, Any]]


def _sparseunet(**cfg: Any) -> PointEncoder:
    from .sparseunet import create_sparseunet  # spconv is imported on first use

    return create_sparseunet(**cfg)


@dataclass(frozen=True)
class EncoderSpec:
    """One row of ``ENCODERS``: how a name becomes an encoder and how its checkpoints are read.

    - ``arch``: the architecture the model records (``model.arch``; checkpoints store it);
    - ``constructor(**config)`` builds the model; ``defaults`` is the named preset's config that the
      caller's overrides go on top of;
    - checkpoint layout: ``state_dict`` keys are the model's own names after ``load.strip_prefixes``
      (``module.``, ``student.backbone.``, ``backbone.``); ``infer_config(state_dict, path)`` gives the
      config of a checkpoint that stores none (None: such files need ``encoder.config``);
    - ``smoke_config``: overrides that make a small model of the same architecture (tests);
    - feature dims: :meth:`feature_dims` (built on the meta device, no weights allocated).
    """

    arch: str
    constructor: Callable[..., PointEncoder]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    infer_config: ConfigInference | None = None
    smoke_config: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, **cfg: Any) -> PointEncoder:
        return self.constructor(**{**self.defaults, **cfg})

    def feature_dims(self, **cfg: Any) -> tuple[int, int]:
        """(feature dim of all up-cast levels, of the deepest level alone) of the model ``cfg`` builds."""
        from common.cli import build_without_weights

        model, _ = build_without_weights(lambda _name: self(**cfg), self.arch)
        return int(model.feature_dim(None)), int(model.feature_dim(0))


_PTV3_SMOKE = {"enc_channels": [8, 16, 24], "enc_num_head": [1, 2, 3], "enc_depths": [1, 2, 1],
               "enc_patch_size": [64, 64, 64], "stride": [2, 2], "drop_path": 0.0}
_SPARSEUNET_SMOKE = {"channels": [8, 16, 16], "depths": [1, 1, 1]}



def _ptv3(defaults: Mapping[str, Any]) -> EncoderSpec:
    return EncoderSpec("ptv3", PointTransformerV3, defaults, infer_ptv3_config, _PTV3_SMOKE)


# name -> spec; entries are callables (``ENCODERS[name](**cfg)`` builds), so a plain factory also works
ENCODERS: dict[str, EncoderSpec | Callable[..., PointEncoder]] = {
    "ptv3": _ptv3({}),
    "sonata": _ptv3(SONATA_CONFIG),
    "sonata_small": _ptv3(SONATA_SMALL_CONFIG),
    "ptv3_tiny": _ptv3(PTV3_TINY_CONFIG),
    "sparseunet": EncoderSpec("sparseunet", _sparseunet, {}, None, _SPARSEUNET_SMOKE),
}


def create_encoder(name: str, **overrides: Any) -> PointEncoder:
    """Build encoder ``name`` from the table with config ``overrides`` (random initial weights)."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; available: {sorted(ENCODERS)}")
    return ENCODERS[name](**overrides)


# ------------------------------------------------------------------------------------------ checkpoints
def build_from_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike,
                          config: Mapping[str, Any] | None = None) -> PointEncoder:
    """Build the encoder a checkpoint dict describes and load its weights (strict)."""
    sd = ckpt.get("state_dict")
    if sd is None and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt  # a bare state dict
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: no state_dict in checkpoint (top-level keys: {sorted(ckpt)[:8]})")
    sd = strip_prefixes(sd)
    arch = ckpt.get("arch", "ptv3")
    if arch not in ENCODERS:
        raise CheckpointError(f"{path}: unknown encoder arch {arch!r}; available: {sorted(ENCODERS)}")
    entry = ENCODERS[arch]
    cfg = ckpt.get("config")
    if cfg is not None and not isinstance(cfg, Mapping):
        raise CheckpointError(f"{path}: config is a {type(cfg).__name__}, expected a dict")
    if cfg is None:
        infer = getattr(entry, "infer_config", None)
        if infer is not None:
            try:
                cfg = infer(sd, path)
            except CheckpointError:
                if config is None:
                    raise
                cfg = {}
        elif config is None:
            raise CheckpointError(f"{path}: no config in the checkpoint; give encoder.config={{...}} "
                                  f"(Python: load_encoder(..., config=...))")
        else:
            cfg = {}
    cfg = {**cfg, **(config or {})}
    try:
        model = entry(**cfg)
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad encoder config: {e}") from None
    built = getattr(model, "arch", type(model).__name__)
    load_state_dict_strict(model, sd, path, style="counted", sep="; ",
                           what=f"state dict does not match the {built} model built from its config")
    return model


def load_encoder(path_or_name: str | os.PathLike, device: str | torch.device = "cpu",
                 config: Mapping[str, Any] | None = None, trust: bool = False) -> PointEncoder:
    """Encoder from a checkpoint file or release name (``sonata``, ``sonata_small``), in eval mode.

    ``config`` overrides (or, for Pointcept checkpoints of non-preset shape, supplies) the constructor
    config. The model gets ``checkpoint_path`` set; hash the file with :func:`checkpoint_sha256`.
    ``trust``: also load a file that pickles classes beyond the safe list (full unpickling, warned).
    """
    path = resolve_checkpoint(path_or_name)
    model = build_from_checkpoint(read_checkpoint(path, trust=trust), path, config)
    model.checkpoint_path = str(path)
    return model.to(device).eval()


# ------------------------------------------------------------------------------ config section + record
@dataclass
class PointEncoderConfig:
    """Which encoder: a table name (random init with ``seed``), a checkpoint file, or ``raw``."""

    name: str = "sonata_small"  # pointprobe.models.ENCODERS name, or "raw" (input features as features)
    checkpoint: str | None = None  # file or release name (sonata, sonata_small); overrides random init
    seed: int = 0  # seed of the random initialisation when no checkpoint is given
    config: dict = field(default_factory=dict)  # constructor overrides (random init, or checkpoint config)
    levels: int | None = None  # up-cast levels (None = all; Sonata base: 4 -> 1232 channels)
    label: str | None = None  # display name in tables (default: name or checkpoint file name)
    # load a checkpoint that pickles classes beyond the harmless list (full unpickling: it can run code)
    trust_checkpoint: bool = False


@dataclass
class EncoderRecord:
    """What every cache entry and result records about its encoder."""

    name: str
    label: str
    checkpoint: str | None
    checkpoint_sha256: str
    config: dict
    levels: int | None


def build_encoder(spec: PointEncoderConfig, device: torch.device) -> tuple[Any, EncoderRecord]:
    """(model or None for raw, record): frozen, in eval mode. Checkpoints are hashed; random init is
    seeded (and warned about)."""
    if spec.name == RAW:
        rec = EncoderRecord(RAW, spec.label or RAW, None, "none", {"features": "coord,color,normal"}, None)
        return None, rec
    if spec.checkpoint:
        model = load_encoder(spec.checkpoint, device=device, config=spec.config or None,
                             trust=spec.trust_checkpoint)
        path = getattr(model, "checkpoint_path", spec.checkpoint)
        sha = checkpoint_sha256(path)
        label = spec.label or Path(spec.checkpoint).stem
    else:
        torch.manual_seed(spec.seed)
        model = create_encoder(spec.name, **spec.config).to(device)
        sha = f"random:{spec.seed}"
        label = spec.label or f"{spec.name} (random init)"
        from common.report import warn_random_weights

        warn_random_weights(spec.name, spec.seed, log)
    freeze(model)
    rec = EncoderRecord(getattr(model, "arch", spec.name) if spec.checkpoint else spec.name, label,
                        spec.checkpoint, sha, dict(getattr(model, "config", spec.config)), spec.levels)
    return model, rec


def encoder_identity(spec: PointEncoderConfig) -> tuple[str | None, str]:
    """(encoder name or None when only the built model knows it, checkpoint sha256 / random:<seed>),
    without building the encoder: a checkpoint is only hashed."""
    if spec.name == RAW:
        return RAW, "none"
    if spec.checkpoint:
        return None, checkpoint_sha256(resolve_checkpoint(spec.checkpoint))
    return spec.name, f"random:{spec.seed}"
