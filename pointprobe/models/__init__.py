"""Point encoders: a plain table from names to factories, loading, and feature extraction.

``ENCODERS[name](**cfg)`` builds an encoder (a :class:`~pointprobe.models.structure.PointEncoder`);
named configs fill in defaults that ``cfg`` overrides. Loading checkpoints: :func:`load_encoder`;
per-point features of a scene: :func:`encode_points`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.errors import ConfigError

from .ptv3 import PTV3_TINY_CONFIG, SONATA_CONFIG, SONATA_SMALL_CONFIG, PointTransformerV3, upcast
from .structure import PointBatch, PointEncoder


def _preset(defaults: dict[str, Any]) -> Callable[..., PointTransformerV3]:
    def factory(**cfg: Any) -> PointTransformerV3:
        return PointTransformerV3(**{**defaults, **cfg})

    return factory


ENCODERS: dict[str, Callable[..., PointEncoder]] = {
    "ptv3": PointTransformerV3,
    "sonata": _preset(SONATA_CONFIG),
    "sonata_small": _preset(SONATA_SMALL_CONFIG),
    "ptv3_tiny": _preset(PTV3_TINY_CONFIG),
}


def _sparseunet(**cfg: Any) -> PointEncoder:
    from .sparseunet import create_sparseunet  # spconv is imported on first use

    return create_sparseunet(**cfg)


ENCODERS["sparseunet"] = _sparseunet


def create_encoder(name: str, **overrides: Any) -> PointEncoder:
    """Build encoder ``name`` from the table with config ``overrides`` (random initial weights)."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; available: {sorted(ENCODERS)}")
    return ENCODERS[name](**overrides)


from .load import checkpoint_sha256, load_encoder, save_encoder  # noqa: E402
from .preprocess import encode_points  # noqa: E402

__all__ = [
    "ENCODERS", "PointBatch", "PointEncoder", "PointTransformerV3", "checkpoint_sha256", "create_encoder",
    "encode_points", "load_encoder", "save_encoder", "upcast",
]
