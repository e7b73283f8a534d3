"""EMA teacher update."""
from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn as nn

__all__ = ["ema_update", "copy_weights"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float,
               names: Collection[str] | None = None) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter (by name), or only
    for ``names`` (the trained ones: the others are left bitwise as they are), and a plain copy of
    floating-point buffers (e.g. batch-norm statistics)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    sp = dict(student.named_parameters())
    tp = dict(teacher.named_parameters())
    if sp.keys() != tp.keys():
        diff = sorted(set(sp) ^ set(tp))[:5]
        raise ValueError(f"teacher and student parameters differ: {diff}")
    if names is not None:
        unknown = sorted(set(names) - set(tp))[:5]
        if unknown:
            raise ValueError(f"EMA: no such parameters {unknown}")
    wanted = None if names is None else set(names)
    names = [n for n in tp if wanted is None or n in wanted]
    t_list = [tp[n].data for n in names]
    s_list = [sp[n].data.to(tp[n].dtype) for n in names]
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    sb = dict(student.named_buffers())
    for n, b in teacher.named_buffers():
        if n in sb:
            b.copy_(sb[n])


@torch.no_grad()
def copy_weights(teacher: nn.Module, student: nn.Module) -> None:
    """Make ``teacher`` an exact copy of ``student``'s parameters and buffers (by name)."""
    ema_update(teacher, student, 0.0)
