"""Distributed helpers for torchrun: one process per device, each working on its own shard of items.

Under ``torchrun --nproc_per_node=K`` every process gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment. ``init_from_env()`` turns those into a
``torch.distributed`` process group (gloo on the CPU, NCCL on CUDA). Until a group is initialised,
every helper behaves as a single process (rank 0 of 1), so the same code runs with or without torchrun.

Typical extraction loop::

    dist.init_from_env()
    for item in dist.shard(items):          # this rank's strided slice
        ...
    dist.barrier()
    if dist.is_main():
        ...                                 # merge, report
    dist.cleanup()

Feature extraction wraps exactly this loop in ``common.cache.fill_cache``; ``pick_device`` chooses the
rank's device.
"""
from __future__ import annotations

import atexit
import datetime
import os
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from common.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "launched_by_torchrun",
    "env_world_size",
    "init_from_env",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "barrier",
    "shard",
    "all_gather_object",
    "broadcast_object",
    "all_reduce_tensor",
    "device_for_rank",
    "pick_device",
    "cleanup",
    "StopSignals",
    "INTERRUPTED_EXIT",
]

_REDUCE_OPS = ("sum", "mean", "max", "min")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    """True when the torchrun variables ``RANK`` and ``WORLD_SIZE`` are in the environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when absent), whether or not a group is initialised."""
    return max(1, _env_int("WORLD_SIZE", 1))


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise ``torch.distributed`` from the torchrun environment when ``WORLD_SIZE > 1``.

    ``backend`` defaults to ``"nccl"`` when CUDA is available and ``"gloo"`` otherwise. On NCCL the
    current CUDA device is set to ``LOCAL_RANK`` first. Returns True when this process is now part of
    a multi-process group, False for a plain single process (nothing is initialised then).
    Calling it again once initialised is a no-op that returns True.

    The group is also destroyed at interpreter exit (``atexit``) when the caller has not done it: a gloo
    process that exits with its group alive can abort in the interpreter's teardown ("terminate called
    without an active exception", exit -6; pytorch issue 190489), seen here in 1 of 60 four-rank runs.
    """
    if tdist.is_available() and tdist.is_initialized():
        return True
    ws = env_world_size()
    if ws <= 1:
        return False
    if not tdist.is_available():
        raise ConfigError(f"WORLD_SIZE={ws} but this torch build has no torch.distributed support")
    r = _env_int("RANK", -1)
    if not 0 <= r < ws:
        raise ConfigError(f"WORLD_SIZE={ws} but RANK={os.environ.get('RANK')!r} is not in [0, {ws})")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={ws} but {' and '.join(missing)} not set; launch with torchrun "
            "(python -m torch.distributed.run --nproc_per_node=N ...)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("backend nccl needs CUDA, which is not available; use gloo")
        torch.cuda.set_device(local_rank())
    tdist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=r,
        world_size=ws,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    atexit.unregister(cleanup)  # once per process, however often a group is made
    atexit.register(cleanup)
    return True


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node, from ``LOCAL_RANK`` (0 when absent)."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank() == 0


def _backend() -> str | None:
    return str(tdist.get_backend()) if is_distributed() else None


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not is_distributed():
        return
    if _backend() == "nccl":
        tdist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        tdist.barrier()


def shard(items: Sequence[T], rank_: int | None = None, world_size_: int | None = None) -> list[T]:
    """This rank's deterministic strided slice ``items[rank::world_size]``.

    The slices of all ranks are disjoint and together cover ``items`` exactly once, in the order
    given (callers pass a sorted list so every rank sees the same order). ``rank_`` /
    ``world_size_`` override the group's values (for tests and for planning).
    """
    r = rank() if rank_ is None else rank_
    ws = world_size() if world_size_ is None else world_size_
    if ws < 1 or not 0 <= r < ws:
        raise ValueError(f"rank {r} is not in [0, {ws})")
    return list(items)[r::ws]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process).

    Objects must be picklable.
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``t`` over all ranks with ``op`` in {"sum", "mean", "max", "min"} and return the result.

    In a single process ``t`` is returned unchanged. ``"mean"`` of an integer tensor returns a float
    tensor; other cases reduce in place on ``t`` (on NCCL a CPU tensor is reduced on the rank's GPU
    and copied back).
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"all_reduce op {op!r} is not one of {_REDUCE_OPS}")
    if not is_distributed():
        return t
    work = t
    if op == "mean" and not (t.is_floating_point() or t.is_complex()):
        work = t.to(torch.float64)
    moved = _backend() == "nccl" and work.device.type != "cuda"
    buf = work.to(device_for_rank()) if moved else work
    red = {"sum": tdist.ReduceOp.SUM, "mean": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX,
           "min": tdist.ReduceOp.MIN}[op]
    tdist.all_reduce(buf, op=red)
    if op == "mean":
        buf.div_(world_size())
    if moved:
        work.copy_(buf.to(work.device))
    return work


def device_for_rank() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        lr, n = local_rank(), torch.cuda.device_count()
        if lr >= n:
            raise ConfigError(f"LOCAL_RANK={lr} but only {n} CUDA device(s) are visible")
        return torch.device("cuda", lr)
    return torch.device("cpu")


def pick_device(name: str = "auto") -> torch.device:
    """The device a command runs on: ``"auto"`` -> this rank's CUDA device when CUDA is available, else
    the CPU; any other name (``cpu``, ``cuda``, ``cuda:1``) as given. A ``cuda`` name without CUDA is a
    ``ConfigError``."""
    if name == "auto":
        return device_for_rank()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None


def cleanup() -> None:
    """Destroy the process group if one is initialised (safe to call always)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


# ------------------------------------------------------------------------------------------ preemption
def _now() -> float:
    """The clock of ``save_every_minutes`` (monotonic seconds; tests replace it)."""
    return time.monotonic()


class StopSignals:
    """Preemption handling for training loops: ``SIGTERM`` (SLURM / schedulers), ``SIGINT`` (Ctrl-C),
    ``SIGUSR1`` (SLURM ``--signal``) set a flag instead of killing the process; the loop calls
    :meth:`poll` after every step and stops at the step every rank agrees on (one small all-reduce of
    ``[stop, save]``, max over ranks: a signal that reached one rank stops all of them at the same
    step). ``save_every_minutes`` > 0 also asks for a checkpoint when that much time has passed since
    the last one (``mark_saved``). A second SIGINT raises ``KeyboardInterrupt`` at once.

    Use as a context manager (handlers installed only in the main thread, restored on exit)::

        with StopSignals(["SIGTERM", "SIGINT"]) as sig:
            while ...:
                step()
                stop, save = sig.poll()
    """

    def __init__(self, names: Sequence[str] = ("SIGTERM", "SIGINT", "SIGUSR1"),
                 save_every_minutes: float = 0.0):
        import signal as _signal

        self._signal = _signal
        self.signums = []
        for n in names:
            num = getattr(_signal, str(n).upper(), None)
            if not isinstance(num, int):
                raise ConfigError(f"unknown signal name {n!r} (e.g. SIGTERM, SIGINT, SIGUSR1)")
            self.signums.append(num)
        self.save_every_s = max(0.0, float(save_every_minutes)) * 60.0
        self.received: str | None = None
        self._old: dict[int, Any] = {}
        self._last_save = 0.0

    def _handler(self, signum: int, frame: Any) -> None:
        name = self._signal.Signals(signum).name
        if self.received == name == "SIGINT":
            raise KeyboardInterrupt
        self.received = name

    def __enter__(self) -> StopSignals:
        import threading

        self._last_save = _now()
        if threading.current_thread() is threading.main_thread():
            for s in self.signums:
                self._old[s] = self._signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            self._signal.signal(s, h)
        self._old.clear()

    def mark_saved(self) -> None:
        """A checkpoint was just written: restart the ``save_every_minutes`` clock."""
        self._last_save = _now()

    def poll(self) -> tuple[bool, bool]:
        """(stop now, save now), the same on every rank."""
        save = bool(self.save_every_s) and _now() - self._last_save >= self.save_every_s
        flags = torch.tensor([1.0 if self.received else 0.0, 1.0 if save else 0.0], dtype=torch.float64)
        flags = all_reduce_tensor(flags, "max")
        return bool(flags[0] > 0), bool(flags[1] > 0)


INTERRUPTED_EXIT = 3  # exit status of a training command stopped by a signal after saving its checkpoint
