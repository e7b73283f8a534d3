"""Point encoders: the name -> encoder table, loading, and per-point features of a scene.

Rooms: ``registry`` (``ENCODERS``, ``create_encoder``, ``load_encoder``, ``build_encoder`` and the
encoder record), ``load`` (checkpoint files: release names, key layouts, writing), ``encode``
(``encode_points`` and its :class:`~pointprobe.models.encode.Preprocessing` recipe), ``structure``
(``PointBatch``, the ``PointEncoder`` contract, ``upcast``), one module per architecture (``ptv3``,
``sparseunet``).
"""
from __future__ import annotations

from .encode import Preprocessing, encode_points
from .load import checkpoint_sha256, save_encoder
from .ptv3 import PointTransformerV3
from .registry import (
    ENCODERS,
    RAW,
    EncoderRecord,
    EncoderSpec,
    PointEncoderConfig,
    build_encoder,
    create_encoder,
    load_encoder,
)
from .structure import PointBatch, PointEncoder, upcast

__all__ = [
    "ENCODERS", "RAW", "EncoderRecord", "EncoderSpec", "PointBatch", "PointEncoder", "PointEncoderConfig",
    "PointTransformerV3", "Preprocessing", "build_encoder", "checkpoint_sha256", "create_encoder",
    "encode_points", "load_encoder", "save_encoder", "upcast",
]
