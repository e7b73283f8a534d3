"""Tests of common.scatter against a python loop, numpy, torch-scatter and autograd.gradcheck."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.scatter import has_torch_scatter, offsets_to_index, reduce_by_sorted_offsets, segment_reduce

REDUCES = ["sum", "mean", "max", "min"]


def loop_reference(src: torch.Tensor, index: torch.Tensor, num_segments: int, reduce: str) -> torch.Tensor:
    """Slow, obvious reference: one python loop over segments; empty segments are 0."""
    rows = []
    for s in range(num_segments):
        members = [src[i] for i in range(src.shape[0]) if int(index[i]) == s]
        if not members:
            rows.append(torch.zeros(src.shape[1:], dtype=src.dtype))
            continue
        stack = torch.stack(members)
        rows.append({"sum": stack.sum(0), "mean": stack.mean(0), "max": stack.max(0).values,
                     "min": stack.min(0).values}[reduce])
    return torch.stack(rows)


def numpy_reference(src: np.ndarray, index: np.ndarray, num_segments: int, reduce: str) -> np.ndarray:
    out = np.zeros((num_segments,) + src.shape[1:], dtype=src.dtype)
    if reduce in ("sum", "mean"):
        np.add.at(out, index, src)
        if reduce == "mean":
            count = np.maximum(np.bincount(index, minlength=num_segments), 1)
            out = out / count.reshape((-1,) + (1,) * (src.ndim - 1))
        return out
    fill = -np.inf if reduce == "max" else np.inf
    acc = np.full_like(out, fill)
    (np.maximum if reduce == "max" else np.minimum).at(acc, index, src)
    acc[~np.isfinite(acc)] = 0  # empty segments
    return acc


def make(n: int = 40, c: int = 3, s: int = 9, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n, c, generator=g, dtype=dtype)
    index = torch.randint(0, s - 2, (n,), generator=g)  # the last two segments stay empty
    index[index == 3] = 4  # and segment 3 too
    return src, index, s


@pytest.mark.parametrize("reduce", REDUCES)
def test_matches_loop_and_numpy(reduce):
    src, index, s = make()
    out = segment_reduce(src, index, s, reduce, backend="torch")
    assert out.shape == (s, 3)
    torch.testing.assert_close(out, loop_reference(src, index, s, reduce))
    np.testing.assert_allclose(out.numpy(), numpy_reference(src.numpy(), index.numpy(), s, reduce),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(out[[3, 7, 8]], torch.zeros(3, 3))


@pytest.mark.parametrize("reduce", REDUCES)
def test_one_dimensional_src(reduce):
    src, index, s = make(c=1)
    out = segment_reduce(src[:, 0], index, s, reduce)
    assert out.shape == (s,)
    torch.testing.assert_close(out, loop_reference(src, index, s, reduce)[:, 0])


def test_negative_values_max_not_clipped_by_zero():
    src = torch.tensor([[-3.0], [-1.0], [-2.0]])
    index = torch.tensor([0, 0, 1])
    assert segment_reduce(src, index, 2, "max").flatten().tolist() == [-1.0, -2.0]
    assert segment_reduce(-src, index, 2, "min").flatten().tolist() == [1.0, 2.0]


def test_empty_src_and_zero_segments():
    out = segment_reduce(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3, "max")
    assert torch.equal(out, torch.zeros(3, 4))
    assert segment_reduce(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0, "mean").shape == (0, 4)


@pytest.mark.parametrize("reduce", REDUCES)
def test_gradcheck(reduce):
    src, index, s = make(n=12, c=2, s=6, seed=1, dtype=torch.float64)
    src.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: segment_reduce(x, index, s, reduce, backend="torch"), (src,))


def test_max_gradient_goes_to_argmax():
    src = torch.tensor([[1.0, 5.0], [3.0, 2.0], [0.5, 0.1]], requires_grad=True)
    segment_reduce(src, torch.tensor([0, 0, 1]), 2, "max").sum().backward()
    assert src.grad.tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]


def test_bad_input_raises_value_error():
    src, index, s = make()
    with pytest.raises(ValueError, match="out of range"):
        segment_reduce(src, index, 3)
    bad = index.clone()
    bad[0] = -1
    with pytest.raises(ValueError, match="out of range"):
        segment_reduce(src, bad, s)
    with pytest.raises(ValueError, match="entries but src has"):
        segment_reduce(src, index[:-1], s)
    with pytest.raises(ValueError, match="reduce"):
        segment_reduce(src, index, s, "median")
    with pytest.raises(ValueError, match="integer"):
        segment_reduce(src, index.float(), s)
    with pytest.raises(ValueError, match="backend"):
        segment_reduce(src, index, s, backend="cuda")
    if not has_torch_scatter():
        with pytest.raises(ValueError, match="not installed"):
            segment_reduce(src, index, s, backend="torch_scatter")


@pytest.mark.parametrize("reduce", REDUCES)
def test_sorted_offsets(reduce):
    src, index, s = make()
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=s)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    assert torch.equal(offsets_to_index(offsets), index[order])
    torch.testing.assert_close(reduce_by_sorted_offsets(src[order], offsets, reduce),
                               segment_reduce(src, index, s, reduce))
    short = offsets.clone()
    short[-1] -= 1
    with pytest.raises(ValueError, match="end at"):
        reduce_by_sorted_offsets(src, short, reduce)
    unsorted = offsets.clone()
    unsorted[1], unsorted[2] = offsets[2] + 1, offsets[1]
    with pytest.raises(ValueError, match="non-decreasing"):
        reduce_by_sorted_offsets(src, unsorted, reduce)


def test_auto_backend_choice(monkeypatch):
    from common import scatter

    assert scatter._resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(scatter, "_torch_scatter_status", lambda: (True, False))
    assert scatter._resolve_backend("auto", torch.device("cuda")) == "torch"  # CPU-only build
    with pytest.raises(ValueError, match="without CUDA"):
        scatter._resolve_backend("torch_scatter", torch.device("cuda"))
    monkeypatch.setattr(scatter, "_torch_scatter_status", lambda: (True, True))
    assert scatter._resolve_backend("auto", torch.device("cuda")) == "torch_scatter"
    assert scatter._resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(scatter, "_torch_scatter_status", lambda: (False, False))
    assert scatter._resolve_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(ValueError, match="not installed"):
        scatter._resolve_backend("torch_scatter", torch.device("cpu"))


@pytest.mark.parametrize("reduce", REDUCES)
def test_torch_scatter_backend_agrees(reduce):
    pytest.importorskip("torch_scatter")
    src, index, s = make(n=200, c=5, s=30, seed=3, dtype=torch.float64)
    a = src.clone().requires_grad_(True)
    b = src.clone().requires_grad_(True)
    out_t = segment_reduce(a, index, s, reduce, backend="torch")
    out_s = segment_reduce(b, index, s, reduce, backend="torch_scatter")
    torch.testing.assert_close(out_t, out_s)  # includes the empty segments (0 in both)
    weight = torch.randn(s, 5, dtype=torch.float64)
    (out_t * weight).sum().backward()
    (out_s * weight).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)  # no ties in random doubles
    small, small_index, s = make(n=12, c=2, s=6, seed=1, dtype=torch.float64)
    small.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: segment_reduce(x, small_index, s, reduce, backend="torch_scatter"), (small,))
