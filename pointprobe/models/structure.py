"""The point batch structure that point encoders consume and return, and the encoder interface.

A :class:`PointBatch` holds B point clouds concatenated along the first axis (Pointcept convention:
``offset`` (B,) are cumulative end indices, ``batch`` (N,) the sample id of every row). Encoders that
pool keep the finer level as ``parent`` and the row -> pooled-row map as ``pooling_inverse``, so a
hierarchy can be walked back ("up-cast") to the input rows.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.errors import ConfigError, InputError

# One residual/transformer block of an encoder: (block name, parameter-name prefixes relative to the
# encoder), listed input side first. See :meth:`PointEncoder.block_layout`.
BlockLayout = list[tuple[str, list[str]]]

# Which inputs feed the input feature, by the encoder's number of input channels (concatenated in order).
FEAT_KEYS_BY_CHANNELS: dict[int, tuple[str, ...]] = {
    3: ("coord",),
    6: ("coord", "color"),
    9: ("coord", "color", "normal"),
}


@dataclass(eq=False)
class PointBatch:
    """B point clouds concatenated: per-row tensors plus the hierarchy links of a pooling encoder.

    coord (N, 3) float; grid_coord (N, 3) int64 voxel coordinates (>= 0); feat (N, C); offset (B,)
    cumulative end rows; batch (N,) sample id; mask (N,) bool or None (masked rows, pre-training).
    """

    coord: torch.Tensor
    grid_coord: torch.Tensor
    feat: torch.Tensor
    offset: torch.Tensor
    batch: torch.Tensor
    mask: torch.Tensor | None = None
    grid_size: float | None = None
    # filled in by encoders
    serialization: Any = None  # pointprobe.models.serialization.Serialization
    sparse: Any = None  # spconv.SparseConvTensor sharing this level's conv indices
    parent: PointBatch | None = None
    pooling_inverse: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)

    @classmethod
    def create(cls, coord: torch.Tensor, grid_coord: torch.Tensor, feat: torch.Tensor,
               offset: torch.Tensor | None = None, batch: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, grid_size: float | None = None) -> PointBatch:
        """Validated batch; give ``offset`` or ``batch`` (sorted sample ids) or neither (one sample)."""
        n = coord.shape[0]
        if coord.dim() != 2 or coord.shape[1] != 3:
            raise InputError(None, f"coord must have shape (N, 3), got {tuple(coord.shape)}")
        if n == 0:
            raise InputError(None, "point batch is empty (0 points)")
        if grid_coord.shape != (n, 3):
            raise InputError(None, f"grid_coord must have shape ({n}, 3), got {tuple(grid_coord.shape)}")
        if feat.dim() != 2 or feat.shape[0] != n:
            raise InputError(None, f"feat must have shape ({n}, C), got {tuple(feat.shape)}")
        if grid_coord.dtype.is_floating_point:
            raise InputError(None, f"grid_coord must be an integer tensor, got {grid_coord.dtype}")
        if not torch.isfinite(coord).all() or not torch.isfinite(feat).all():
            raise InputError(None, "coord / feat contain NaN or inf")
        if int(grid_coord.min()) < 0:
            raise InputError(None, "grid_coord must be non-negative (voxel indices from the scene minimum)")
        device = coord.device
        if offset is None and batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=device)
        if offset is None:
            batch = batch.long()
            if bool((batch[1:] < batch[:-1]).any()):
                raise InputError(None, "batch ids must be sorted (samples stored contiguously)")
            offset = torch.cumsum(torch.bincount(batch), 0)
        else:
            offset = offset.long().to(device)
            counts = torch.diff(offset, prepend=offset.new_zeros(1))
            if int(offset[-1]) != n or bool((counts <= 0).any()):
                raise InputError(None, f"offset must be increasing cumulative counts ending at N={n}, "
                                       f"got {offset.tolist()[:8]}")
            batch = torch.repeat_interleave(torch.arange(len(offset), device=device), counts)
        if mask is not None and mask.shape != (n,):
            raise InputError(None, f"mask must have shape ({n},), got {tuple(mask.shape)}")
        return cls(coord=coord, grid_coord=grid_coord.long(), feat=feat, offset=offset, batch=batch,
                   mask=None if mask is None else mask.bool(), grid_size=grid_size)

    @classmethod
    def from_dict(cls, data: Mapping[str, torch.Tensor]) -> PointBatch:
        """From a Pointcept-style dict with ``coord``, ``grid_coord``, ``feat`` and ``offset``/``batch``."""
        missing = [k for k in ("coord", "grid_coord", "feat") if k not in data]
        if missing:
            raise InputError(None, f"point dict lacks {missing}")
        return cls.create(data["coord"], data["grid_coord"], data["feat"], offset=data.get("offset"),
                          batch=data.get("batch"), mask=data.get("mask"), grid_size=data.get("grid_size"))

    def __len__(self) -> int:
        return int(self.coord.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.offset.shape[0])

    @property
    def counts(self) -> torch.Tensor:
        """Rows per sample (B,)."""
        return torch.diff(self.offset, prepend=self.offset.new_zeros(1))

    def levels(self) -> list[PointBatch]:
        """This level and its pooling parents, finest (the input) first."""
        out: list[PointBatch] = []
        node: PointBatch | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def root(self) -> PointBatch:
        return self.levels()[0]

    def to_root(self, feat: torch.Tensor) -> torch.Tensor:
        """Copy per-row features of this level down to the input rows through the pooling inverses."""
        node: PointBatch = self
        while node.parent is not None:
            feat = feat[node.pooling_inverse]
            node = node.parent
        return feat


class PointEncoder(nn.Module):
    """Interface every point encoder of ``pointprobe.models.ENCODERS`` follows.

    - ``arch``: short architecture name stored in checkpoints (``"ptv3"``, ``"sparseunet"``).
    - ``config``: dict of constructor keyword arguments (``type(model)(**model.config)`` rebuilds it).
    - ``in_channels`` and ``feat_keys``: the input feature is ``concat(*feat_keys)`` with that width.
    - ``forward(point: PointBatch) -> PointBatch``: the encoder's output level (with ``parent`` links).
    - ``encode(point, levels) -> Tensor (N, D)``: one feature row per row of the input ``point``;
      ``feature_dim(levels)`` gives D. ``levels`` means what the architecture says (PTv3: number of
      up-cast concatenation steps); encoders without a hierarchy ignore it.

    What pre-training (``pointprobe.pretrain``) needs of an encoder, beyond the above:

    - constructor keys ``drop_path`` (stochastic depth rate of the student; the teacher gets 0.0) and
      ``mask_token`` (``True``: a learned token replaces the rows where ``PointBatch.mask`` is set);
    - :meth:`block_layout` when layer-wise lr decay is not 1.0 (an encoder that declares no layout is
      refused then, never silently trained without decay). The same ordered list serves "unfreeze the
      last k blocks".
    """

    arch: str = ""
    config: dict
    in_channels: int

    def block_layout(self) -> BlockLayout:
        """The encoder's blocks in depth order (input side first), each ``(name, prefixes)``: a parameter
        ``p`` of ``named_parameters()`` belongs to the block when ``p`` starts with one of the prefixes;
        parameters of no block (stem, pooling, mask token) belong to none. Encoders that do not declare
        one raise ``NotImplementedError``."""
        raise NotImplementedError(f"encoder {self.arch or type(self).__name__!r} declares no block layout "
                                  f"(PointEncoder.block_layout)")

    @property
    def feat_keys(self) -> tuple[str, ...]:
        try:
            return FEAT_KEYS_BY_CHANNELS[self.in_channels]
        except KeyError:
            raise ValueError(f"no input feature layout for in_channels={self.in_channels}") from None

    def feature_dim(self, levels: int | None = None) -> int:
        raise NotImplementedError

    def encode(self, point: PointBatch, levels: int | None = None) -> torch.Tensor:
        raise NotImplementedError


def block_index(name: str, layout: BlockLayout) -> int | None:
    """Depth index (in ``layout``) of the block parameter ``name`` belongs to, or None. A prefix matches
    at the start of ``name`` or after a dot (so ``backbone.``-prefixed names of a wrapper match too)."""
    for i, (_, prefixes) in enumerate(layout):
        for p in prefixes:
            if name.startswith(p) or f".{p}" in name:
                return i
    return None


def upcast(point: PointBatch, levels: int | None = None, steps: int | None = None) -> PointBatch:
    """Walk a pooled hierarchy back from ``point`` (an encoder output) towards its input rows.

    ``steps`` pooling steps are walked (default: all, down to the input rows); the first ``levels`` of
    them (default: all walked) concatenate ``[parent.feat, child.feat[inverse]]`` (the Sonata up-cast:
    all levels of Sonata -> 48+96+192+384+512 = 1232 channels), the remaining ones copy the features down
    unchanged (the PCA demo's "2 levels + copy"). Returns the level reached, its ``feat`` replaced by the
    up-cast features (the ``parent`` chain is kept). Out-of-range values raise ``ConfigError``.
    """
    depth = len(point.levels()) - 1
    steps = depth if steps is None else steps
    if not 0 <= steps <= depth:
        raise ConfigError(f"upcast: steps must be in [0, {depth}], got {steps}")
    levels = steps if levels is None else levels
    if not 0 <= levels <= steps:
        raise ConfigError(f"upcast: levels must be in [0, {steps}], got {levels}")
    node, feat = point, point.feat
    for i in range(steps):
        parent = node.parent
        up = feat[node.pooling_inverse]
        feat = torch.cat([parent.feat, up.to(parent.feat.dtype)], 1) if i < levels else up
        node = parent
    return dataclasses.replace(node, feat=feat)
