"""Space-filling-curve serialization of voxel coordinates (PTv3 / Sonata compatible).

Codes of ``grid_coord`` (N, 3) non-negative int64 on a cube of side ``2**depth``:

- ``"z"``: Morton code, bit i of x / y / z at bit 3i+2 / 3i+1 / 3i of the code.
- ``"hilbert"``: Hilbert index (Skilling's transpose algorithm, x the most significant axis).
- ``"z-trans"`` / ``"hilbert-trans"``: the same curves with x and y swapped.

With a batch id the code is ``batch << (3 * depth) | curve_code``, so sorting by code sorts by sample
first. ``depth = bit_length(max(grid_coord) + 1)`` (at most 16), as in the Sonata release.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between each of the low 16 bits of ``v`` (int64)."""
    v = v & 0xFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def z_order_encode(grid_coord: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    """Morton codes (N,) int64 of ``grid_coord`` (N, 3); x holds the highest bit of each triple."""
    _check_depth(depth)
    g = grid_coord.long()
    return (_spread_bits(g[:, 0]) << 2) | (_spread_bits(g[:, 1]) << 1) | _spread_bits(g[:, 2])


def hilbert_encode(grid_coord: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    """Hilbert indices (N,) int64 of ``grid_coord`` (N, 3) on a ``2**depth`` cube.

    Skilling (2004), "Programming the Hilbert curve": coordinates -> transposed index (inverse undo
    excess work, then Gray encode), then the transposed bits are interleaved, x first.
    """
    _check_depth(depth)
    x = [grid_coord[:, i].long().clone() for i in range(3)]
    if depth == 0:
        return torch.zeros_like(x[0])
    q = 1 << (depth - 1)
    while q > 1:
        p = q - 1
        for i in range(3):
            has_bit = (x[i] & q) != 0
            if i == 0:
                x[0] = torch.where(has_bit, x[0] ^ p, x[0])
                continue
            # bit set: invert the low bits of x[0]; else exchange the low bits of x[0] and x[i]
            t = torch.where(has_bit, torch.zeros_like(x[0]), (x[0] ^ x[i]) & p)
            x[0] = torch.where(has_bit, x[0] ^ p, x[0] ^ t)
            x[i] = x[i] ^ t
        q >>= 1
    # Gray encode
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    t = torch.zeros_like(x[0])
    q = 1 << (depth - 1)
    while q > 1:
        t = torch.where((x[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [xi ^ t for xi in x]
    # interleave: at every level the bit of x[0] is the most significant of the triple
    return (_spread_bits(x[0]) << 2) | (_spread_bits(x[1]) << 1) | _spread_bits(x[2])


def _check_depth(depth: int) -> None:
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"serialization depth must be in [0, {MAX_DEPTH}], got {depth}")


def encode(grid_coord: torch.Tensor, batch: torch.Tensor | None = None, depth: int = MAX_DEPTH,
           order: str = "z") -> torch.Tensor:
    """Serialization code (N,) int64 for one curve ``order``; ``batch`` (N,) goes to the high bits."""
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; expected one of {ORDERS}")
    g = grid_coord if not order.endswith("-trans") else grid_coord[:, [1, 0, 2]]
    code = z_order_encode(g, depth) if order.startswith("z") else hilbert_encode(g, depth)
    if batch is not None:
        code = (batch.long() << (3 * depth)) | code
    return code


def serialization_depth(grid_coord: torch.Tensor) -> int:
    """Cube depth used by the release: ``bit_length(max(grid_coord) + 1)``."""
    if grid_coord.numel() == 0:
        return 0
    return int(grid_coord.max().item() + 1).bit_length()


@dataclass
class Serialization:
    """Codes, sorting permutation and its inverse for each order, stacked (k, N)."""

    orders: tuple[str, ...]
    depth: int
    code: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor


def serialize(grid_coord: torch.Tensor, batch: torch.Tensor, orders: Sequence[str],
              depth: int | None = None, shuffle: bool = False,
              generator: torch.Generator | None = None) -> Serialization:
    """Serialize points for every curve in ``orders``; ``shuffle`` permutes which order sits where."""
    if depth is None:
        depth = serialization_depth(grid_coord)
    if depth > MAX_DEPTH:
        raise ValueError(
            f"scene spans {int(grid_coord.max()) + 1} voxels along one axis; serialization supports at "
            f"most 2**{MAX_DEPTH} (crop or chunk the scene, or use a larger grid size)"
        )
    n_batch = int(batch.max().item()) + 1 if batch.numel() else 1
    if 3 * depth + n_batch.bit_length() > 63:
        raise ValueError("serialization code does not fit in int64 (too many samples for this depth)")
    code = torch.stack([encode(grid_coord, batch, depth, o) for o in orders])
    order = torch.argsort(code, dim=1, stable=True)
    inverse = torch.empty_like(order)
    ar = torch.arange(order.shape[1], device=order.device).expand_as(order)
    inverse.scatter_(1, order, ar)
    names = tuple(orders)
    if shuffle and len(orders) > 1:
        perm = torch.randperm(len(orders), generator=generator).tolist()
        code, order, inverse = code[perm], order[perm], inverse[perm]
        names = tuple(names[i] for i in perm)
    return Serialization(orders=names, depth=depth, code=code, order=order, inverse=inverse)
