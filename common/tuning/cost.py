"""What a tuning run costs: trainable parameters, peak memory, wall time per step (``TuneCost``).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` since :meth:`PeakMemory.start` (reset there);
on the CPU the process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; it
cannot be reset, so compare methods each run in a fresh process, as the bench does).
"""
from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from common.tuning.prompt import prompt_names
from common.tuning.trainable import adapter_names


@dataclass
class TuneCost:
    """Cost columns of one result row (JSON-friendly: :meth:`as_dict`)."""

    method: str
    trainable_params: int  # encoder parameters that train (adapters included) + head
    encoder_trainable_params: int  # of which inside the encoder (adapters included)
    encoder_params: int  # the encoder's own parameters (adapters excluded)
    trainable_pct: float  # 100 * encoder_trainable_params / encoder_params
    peak_memory_bytes: int | None = None
    memory_kind: str = ""  # "cpu_max_rss" or "cuda_max_allocated"
    steps: int = 0
    step_time_s: float | None = None  # mean wall time per optimizer step
    total_time_s: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _adapter_set(model: nn.Module) -> set[str]:
    """Parameters added by a method (SSF, LoRA, the input prompt): not part of the encoder's own size."""
    return set(adapter_names(model, "ssf")) | set(adapter_names(model, "lora")) | set(prompt_names(model))


def count_parameters(params: Iterable[torch.Tensor]) -> int:
    seen: set[int] = set()
    n = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def trainable_counts(encoder: nn.Module, head: nn.Module | None = None) -> tuple[int, int, int]:
    """(trainable total, trainable in the encoder, encoder base size). Trainable means
    ``requires_grad``; the base size leaves out SSF / LoRA adapter and input-prompt parameters."""
    adapters = _adapter_set(encoder)
    named = dict(encoder.named_parameters())
    enc_base = count_parameters(p for n, p in named.items() if n not in adapters)
    enc_train = count_parameters(p for p in named.values() if p.requires_grad)
    head_train = 0 if head is None else count_parameters(p for p in head.parameters() if p.requires_grad)
    return enc_train + head_train, enc_train, enc_base


class PeakMemory:
    """Peak memory of a run on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_max_rss"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


class StepTimer:
    """Wall time per step (``with timer: step()``); CUDA work is synchronised at both ends."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.times: list[float] = []
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> StepTimer:
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._t0)

    @property
    def mean(self) -> float | None:
        return sum(self.times) / len(self.times) if self.times else None

    @property
    def total(self) -> float:
        return sum(self.times)


def tune_cost(method: str, encoder: nn.Module, head: nn.Module | None = None,
              memory: PeakMemory | None = None, timer: StepTimer | None = None) -> TuneCost:
    """The :class:`TuneCost` of a run from its modules, memory meter and step timer."""
    total, enc_train, enc_base = trainable_counts(encoder, head)
    return TuneCost(method=method, trainable_params=total, encoder_trainable_params=enc_train,
                    encoder_params=enc_base, trainable_pct=100.0 * enc_train / enc_base if enc_base else 0.0,
                    peak_memory_bytes=None if memory is None else memory.peak(),
                    memory_kind="" if memory is None else memory.kind,
                    steps=0 if timer is None else len(timer.times),
                    step_time_s=None if timer is None else timer.mean,
                    total_time_s=None if timer is None else timer.total)


__all__ = ["PeakMemory", "StepTimer", "TuneCost", "count_parameters", "trainable_counts", "tune_cost"]
