"""What a tuning run costs: trainable parameters, peak memory, wall time per step (``TuneCost``).

Peak memory is the peak of the TRAINING, from :meth:`PeakMemory.start` (after the standardisation
estimate) to the end of the last step (before evaluation and merging): on CUDA
``torch.cuda.max_memory_allocated`` (reset at start); on the CPU the peak resident set size during
training (Linux: the kernel's high-water mark ``VmHWM``, reset at start through ``/proc/self/clear_refs``).
The RSS is absolute: the frozen encoder weights and the data resident at start count, so methods compare
like with like. Where the mark cannot be reset (no /proc, macOS) the process's ``ru_maxrss`` stands in and
``memory_kind`` says so; the process-wide peak is kept as a second figure.
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
    peak_memory_bytes: int | None = None  # peak of the training (see PeakMemory): what methods compare
    memory_kind: str = ""  # "cpu_peak_rss_train", "cpu_max_rss_process" or "cuda_max_allocated"
    process_peak_memory_bytes: int | None = None  # the whole process's peak RSS (data loading, evaluation)
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


def _status_bytes(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in bytes; None where unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_process_peak = 0  # bytes: the process's peak RSS before the last reset (the reset clears ru_maxrss too)


def _max_rss() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (``echo 5 > /proc/self/clear_refs``, proc(5):
    VmHWM restarts at the current RSS; so does ``ru_maxrss``, kept first in ``_process_peak``); False where
    that is not possible (no /proc, not writable)."""
    global _process_peak
    if not sys.platform.startswith("linux"):
        return False
    _process_peak = max(_process_peak, _max_rss())
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def can_reset_peak_rss() -> bool:
    """True where :class:`PeakMemory` measures the CPU peak since ``start`` (Linux with /proc); the check
    itself resets the mark."""
    return _reset_peak_rss()


class PeakMemory:
    """Peak memory of the training on ``device``, from :meth:`start` (see the module docstring).

    CPU: the peak resident set size since ``start`` (``cpu_peak_rss_train``: ``start`` resets the
    kernel's high-water mark, ``peak`` reads ``VmHWM``); it is absolute, so the frozen weights and the
    data resident at ``start`` count. Where the mark cannot be reset (no /proc, macOS) the process's
    ``ru_maxrss`` stands in (``cpu_max_rss_process``: everything the process did before counts too).
    CUDA: ``max_memory_allocated`` since ``start`` (``cuda_max_allocated``).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.started = False
        self._reset = False  # the CPU high-water mark was reset at start

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda_max_allocated"
        return "cpu_peak_rss_train" if self._reset else "cpu_max_rss_process"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._reset = _reset_peak_rss()
        self.started = True

    def peak(self) -> int:
        """Bytes: the peak since :meth:`start` (the process peak where that cannot be measured)."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._reset:
            hwm = _status_bytes("VmHWM")
            if hwm is not None:
                return hwm
        return self.process_peak()

    @staticmethod
    def process_peak() -> int:
        """Bytes: the peak RSS of the whole process since it began (``ru_maxrss`` and what it was before
        any reset; host memory on CUDA)."""
        return max(_process_peak, _max_rss())


def peak_ratio_note(mezo: dict, lin: dict, key: str = "peak_memory_mb") -> str:
    """The bench line "MeZO training peak / online linear training peak" from two result rows (``key``:
    their training peak in MB; ``memory_kind`` says what it measured). Process-wide peaks
    (``cpu_max_rss_process``, or rows without a kind) are said to be no training peak."""
    a, b = mezo.get(key), lin.get(key)
    if not a or not b:
        return "MeZO / online linear training peak: not recorded"
    ratio = a / b
    kinds = {mezo.get("memory_kind") or "", lin.get("memory_kind") or ""}
    good = {"cpu_peak_rss_train", "cuda_max_allocated"}
    if len(kinds) != 1 or not kinds <= good:
        return (f"MeZO / online linear peak memory: {ratio:.2f}, NOT the training peaks (memory_kind "
                f"{' / '.join(sorted(k or 'unknown' for k in kinds))}: the whole process's peak)")
    return f"MeZO training peak / online linear training peak: {ratio:.2f} (target <= 1.3; {kinds.pop()})"


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
                    process_peak_memory_bytes=None if memory is None else memory.process_peak(),
                    steps=0 if timer is None else len(timer.times),
                    step_time_s=None if timer is None else timer.mean,
                    total_time_s=None if timer is None else timer.total)


__all__ = ["PeakMemory", "StepTimer", "TuneCost", "can_reset_peak_rss", "count_parameters",
           "peak_ratio_note", "trainable_counts", "tune_cost"]
