"""Space-filling-curve codes against slow independent references."""
from __future__ import annotations

import pytest
import torch

from pointprobe.models.serialization import (
    encode,
    hilbert_encode,
    serialization_depth,
    serialize,
    z_order_encode,
)


def morton_ref(x: int, y: int, z: int, depth: int) -> int:
    """Bit-by-bit Morton code: bit i of x, y, z -> bits 3i+2, 3i+1, 3i."""
    code = 0
    for i in range(depth):
        code |= ((x >> i) & 1) << (3 * i + 2)
        code |= ((y >> i) & 1) << (3 * i + 1)
        code |= ((z >> i) & 1) << (3 * i)
    return code


def hilbert_ref(point: tuple[int, int, int], bits: int) -> int:
    """Skilling's AxestoTranspose on plain Python ints, then the transpose read out MSB first."""
    x = list(point)
    n = len(x)
    m = 1 << (bits - 1)
    q = m
    while q > 1:  # inverse undo
        p = q - 1
        for i in range(n):
            if x[i] & q:
                x[0] ^= p
            else:
                t = (x[0] ^ x[i]) & p
                x[0] ^= t
                x[i] ^= t
        q >>= 1
    for i in range(1, n):  # Gray encode
        x[i] ^= x[i - 1]
    t = 0
    q = m
    while q > 1:
        if x[n - 1] & q:
            t ^= q - 1
        q >>= 1
    for i in range(n):
        x[i] ^= t
    h = 0
    for b in range(bits - 1, -1, -1):
        for i in range(n):
            h = (h << 1) | ((x[i] >> b) & 1)
    return h


@pytest.mark.parametrize("depth", [1, 3, 8, 9, 16])
def test_z_order_matches_bitwise_reference(depth):
    g = torch.randint(0, 2**depth, (300, 3), generator=torch.Generator().manual_seed(depth))
    codes = z_order_encode(g, depth).tolist()
    assert codes == [morton_ref(*row, depth) for row in g.tolist()]


@pytest.mark.parametrize("depth", [1, 2, 5, 11, 16])
def test_hilbert_matches_skilling_reference(depth):
    g = torch.randint(0, 2**depth, (300, 3), generator=torch.Generator().manual_seed(100 + depth))
    codes = hilbert_encode(g, depth).tolist()
    assert codes == [hilbert_ref(tuple(row), depth) for row in g.tolist()]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hilbert_is_a_continuous_bijection_on_the_cube(depth):
    side = 2**depth
    ar = torch.arange(side)
    g = torch.cartesian_prod(ar, ar, ar)
    h = hilbert_encode(g, depth)
    assert sorted(h.tolist()) == list(range(side**3))
    walk = g[torch.argsort(h)]
    steps = (walk[1:] - walk[:-1]).abs().sum(1)
    assert bool((steps == 1).all()), "consecutive Hilbert cells must be face neighbours"
    z = z_order_encode(g, depth)
    assert sorted(z.tolist()) == list(range(side**3))


def test_trans_orders_swap_x_and_y_and_batch_goes_high():
    g = torch.randint(0, 64, (200, 3), generator=torch.Generator().manual_seed(0))
    batch = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(1))
    for curve in ("z", "hilbert"):
        assert torch.equal(encode(g, None, 6, f"{curve}-trans"), encode(g[:, [1, 0, 2]], None, 6, curve))
        code = encode(g, batch, 6, curve)
        assert torch.equal(code >> 18, batch)
        assert torch.equal(code & ((1 << 18) - 1), encode(g, None, 6, curve))
    with pytest.raises(ValueError, match="unknown serialization order"):
        encode(g, None, 6, "peano")


def test_serialize_sorts_and_inverts():
    g = torch.randint(0, 100, (500, 3), generator=torch.Generator().manual_seed(2))
    batch = torch.sort(torch.randint(0, 2, (500,), generator=torch.Generator().manual_seed(3))).values
    orders = ["z", "z-trans", "hilbert", "hilbert-trans"]
    s = serialize(g, batch, orders)
    assert s.depth == serialization_depth(g) == int(g.max() + 1).bit_length()
    assert s.orders == tuple(orders)
    for k, o in enumerate(orders):
        assert torch.equal(s.code[k], encode(g, batch, s.depth, o))
        assert bool((s.code[k][s.order[k]][1:] >= s.code[k][s.order[k]][:-1]).all())
        assert torch.equal(s.order[k][s.inverse[k]], torch.arange(500))
    shuffled = serialize(g, batch, orders, shuffle=True, generator=torch.Generator().manual_seed(5))
    assert sorted(shuffled.orders) == sorted(orders)
    for k, o in enumerate(shuffled.orders):
        assert torch.equal(shuffled.code[k], encode(g, batch, s.depth, o))


def test_serialize_rejects_scenes_beyond_16_bits():
    g = torch.tensor([[0, 0, 0], [70000, 0, 0]])
    with pytest.raises(ValueError, match="2\\*\\*16"):
        serialize(g, torch.zeros(2, dtype=torch.long), ["z"])
