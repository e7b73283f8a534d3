"""Segment reductions (``scatter``): reduce rows of ``src`` that share a segment id.

``segment_reduce`` is what pooling layers (PTv3 grid pooling: max of features, mean of coordinates)
and per-voxel feature averaging use. Two backends compute the same thing:

- ``"torch"``: native ``Tensor.index_add_`` (sum/mean) and ``Tensor.scatter_reduce`` with
  ``include_self=False`` (max/min). Faster than torch-scatter on the CPU (docs/benchmarks.md,
  "Notes moved from docstrings"), so it is the CPU default.
- ``"torch_scatter"``: ``torch_scatter.scatter`` (optional dependency ``probesuite[scatter]``), the
  default for CUDA tensors when it is installed with CUDA kernels.

Every reduction supports autograd. Empty segments (no row maps to them) give 0 with every reducer and
both backends. For max/min the gradient of a segment goes to its maximal/minimal row(s): torch-scatter
gives it to one argmax row, native torch splits it evenly among tied rows (identical without ties).
"""
from __future__ import annotations

import functools
from typing import Literal

import torch

Reduce = Literal["sum", "mean", "max", "min"]
Backend = Literal["auto", "torch", "torch_scatter"]

REDUCES = ("sum", "mean", "max", "min")
BACKENDS = ("auto", "torch", "torch_scatter")


@functools.cache
def _torch_scatter_status() -> tuple[bool, bool]:
    try:
        import torch_scatter  # noqa: F401
    except (ImportError, OSError):
        return False, False
    try:
        cuda = int(torch.ops.torch_scatter.cuda_version()) != -1
    except (AttributeError, RuntimeError):
        cuda = False
    return True, cuda


def has_torch_scatter(cuda: bool = False) -> bool:
    """True when the optional ``torch_scatter`` extension imports (and loads its compiled library);
    with ``cuda=True``, only when it was also built with CUDA kernels (a build on a machine without
    the CUDA toolkit is CPU-only even against a CUDA build of torch)."""
    installed, with_cuda = _torch_scatter_status()
    return installed and (with_cuda or not cuda)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"segment_reduce: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device.type == "cuda"
    if backend == "auto":
        return "torch_scatter" if on_cuda and has_torch_scatter(cuda=True) else "torch"
    if backend == "torch_scatter" and not has_torch_scatter():
        raise ValueError(
            "segment_reduce: backend='torch_scatter' asked for but torch_scatter is not installed "
            "(pip install --no-build-isolation torch-scatter==2.1.2), use backend='torch' or 'auto'"
        )
    if backend == "torch_scatter" and on_cuda and not has_torch_scatter(cuda=True):
        raise ValueError(
            "segment_reduce: backend='torch_scatter' on a CUDA tensor, but the installed torch_scatter "
            "was built without CUDA; rebuild it where the CUDA toolkit is available or use backend='torch'"
        )
    return backend


def _check(src: torch.Tensor, index: torch.Tensor, num_segments: int, reduce: str, validate: bool) -> None:
    if reduce not in REDUCES:
        raise ValueError(f"segment_reduce: reduce must be one of {REDUCES}, got {reduce!r}")
    if not isinstance(src, torch.Tensor) or not isinstance(index, torch.Tensor):
        raise ValueError("segment_reduce: src and index must be torch tensors")
    if src.dim() not in (1, 2):
        raise ValueError(f"segment_reduce: src must be (N,) or (N, C), got shape {tuple(src.shape)}")
    if index.dim() != 1:
        raise ValueError(f"segment_reduce: index must be 1-D (N,), got shape {tuple(index.shape)}")
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"segment_reduce: index must be an integer tensor, got {index.dtype}")
    if index.shape[0] != src.shape[0]:
        raise ValueError(
            f"segment_reduce: index has {index.shape[0]} entries but src has {src.shape[0]} rows"
        )
    if index.device != src.device:
        raise ValueError(f"segment_reduce: src is on {src.device} but index is on {index.device}")
    if int(num_segments) != num_segments or num_segments < 0:
        raise ValueError(f"segment_reduce: num_segments must be a non-negative int, got {num_segments!r}")
    if validate and index.numel() > 0:
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= num_segments:
            raise ValueError(
                f"segment_reduce: index out of range: values span [{lo}, {hi}] "
                f"but num_segments={num_segments} (allowed [0, {num_segments - 1}])"
            )


def _torch_reduce(src: torch.Tensor, index: torch.Tensor, num_segments: int, reduce: str) -> torch.Tensor:
    shape = (num_segments,) + tuple(src.shape[1:])
    if reduce in ("sum", "mean"):
        out = src.new_zeros(shape).index_add(0, index, src)
        if reduce == "mean":
            count = torch.bincount(index, minlength=num_segments).clamp_(min=1).to(src.dtype)
            out = out / (count if src.dim() == 1 else count.unsqueeze(1))
        return out
    idx = index if src.dim() == 1 else index.unsqueeze(1).expand_as(src)
    # include_self=False: a segment reduces over its own rows only; empty segments keep the zero.
    return src.new_zeros(shape).scatter_reduce(0, idx, src, "amax" if reduce == "max" else "amin",
                                               include_self=False)


def _torch_scatter_reduce(src: torch.Tensor, index: torch.Tensor, num_segments: int,
                          reduce: str) -> torch.Tensor:
    import torch_scatter

    return torch_scatter.scatter(src, index, dim=0, dim_size=num_segments, reduce=reduce)


def segment_reduce(
    src: torch.Tensor,
    index: torch.Tensor,
    num_segments: int,
    reduce: Reduce = "sum",
    backend: Backend = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Reduce the rows of ``src`` (N, C) or (N,) into ``num_segments`` segments given by ``index`` (N,).

    Returns (num_segments, C) (or (num_segments,) for a 1-D ``src``); row s is the sum / mean / max /
    min of the rows i with ``index[i] == s``, and **0 for an empty segment**. ``backend="auto"`` uses
    torch-scatter for CUDA tensors when it is installed and native torch otherwise. Differentiable.
    ``validate`` checks the index range (one device sync); a wrong length, dtype, or an index outside
    ``[0, num_segments)`` raises ``ValueError``.
    """
    _check(src, index, num_segments, reduce, validate)
    index = index.long()
    num_segments = int(num_segments)
    if _resolve_backend(backend, src.device) == "torch_scatter":
        return _torch_scatter_reduce(src, index, num_segments, reduce)
    return _torch_reduce(src, index, num_segments, reduce)


def offsets_to_index(offsets: torch.Tensor) -> torch.Tensor:
    """Segment id per row from CSR offsets (S+1,) (``offsets[0] == 0``, non-decreasing)."""
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts)


def reduce_by_sorted_offsets(src: torch.Tensor, offsets: torch.Tensor, reduce: Reduce = "sum",
                             backend: Backend = "auto") -> torch.Tensor:
    """``segment_csr``-style reduction: rows ``offsets[s]:offsets[s+1]`` of ``src`` form segment s.

    ``offsets`` is (S+1,) integer, starting at 0, non-decreasing, ending at ``len(src)``; returns
    (S, C) with 0 for empty segments (same conventions as :func:`segment_reduce`).
    """
    if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError("reduce_by_sorted_offsets: offsets must be a 1-D tensor (S+1,) with S >= 0")
    if offsets.dtype.is_floating_point or offsets.dtype == torch.bool:
        raise ValueError(f"reduce_by_sorted_offsets: offsets must be integer, got {offsets.dtype}")
    offsets = offsets.to(device=src.device, dtype=torch.long)
    if int(offsets[0]) != 0 or int(offsets[-1]) != src.shape[0]:
        raise ValueError(
            f"reduce_by_sorted_offsets: offsets must start at 0 and end at len(src)={src.shape[0]}, "
            f"got {int(offsets[0])} .. {int(offsets[-1])}"
        )
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("reduce_by_sorted_offsets: offsets must be non-decreasing")
    return segment_reduce(src, offsets_to_index(offsets), offsets.numel() - 1, reduce, backend,
                          validate=False)
