"""Step -> value schedules of the pre-training recipe (pure functions of the step: exact on resume)."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["cosine_between", "warmup_then_constant", "one_cycle_factor", "StepValues", "step_values"]


def cosine_between(start: float, end: float, t: float) -> float:
    """Half-cosine interpolation from ``start`` (t=0) to ``end`` (t>=1)."""
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_then_constant(start: float, base: float, step: int, warmup_steps: int) -> float:
    """Cosine from ``start`` to ``base`` over ``warmup_steps`` steps, then ``base`` (mask size / ratio,
    teacher temperature curricula)."""
    if warmup_steps <= 0:
        return base
    return cosine_between(start, base, step / warmup_steps)


def one_cycle_factor(step: int, total: int, pct_start: float = 0.05, div_factor: float = 10.0,
                     final_div_factor: float = 1000.0) -> float:
    """lr / max_lr of a cosine one-cycle schedule (torch ``OneCycleLR(anneal_strategy="cos")`` shape):
    ``1/div_factor`` -> 1 over the first ``pct_start`` of the steps, then -> ``1/(div*final_div)``."""
    lo0 = 1.0 / div_factor
    lo1 = lo0 / final_div_factor
    warm = max(pct_start * total - 1.0, 1.0)
    if step <= warm:
        return cosine_between(lo0, 1.0, step / warm)
    rest = max(total - 1.0 - warm, 1.0)
    return cosine_between(1.0, lo1, (step - warm) / rest)


@dataclass(frozen=True)
class StepValues:
    """Every scheduled quantity at one optimiser step."""

    lr_factor: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    mask_size: float
    mask_ratio: float


def step_values(step: int, total: int, *, pct_start: float, div_factor: float, final_div_factor: float,
                wd_start: float, wd_end: float, momentum_start: float, momentum_end: float,
                teacher_temp_start: float, teacher_temp_base: float, mask_size_start: float,
                mask_size_base: float, mask_ratio_start: float, mask_ratio_base: float,
                warmup_ratio: float) -> StepValues:
    """All schedules of the Sonata recipe at ``step`` of ``total``: one-cycle lr, cosine weight decay and
    EMA momentum over the run, cosine warm-ups (first ``warmup_ratio`` of the steps) of the teacher
    temperature and of the mask patch size / ratio."""
    t = step / max(total - 1, 1)
    warm = int(round(total * warmup_ratio))
    return StepValues(
        lr_factor=one_cycle_factor(step, total, pct_start, div_factor, final_div_factor),
        weight_decay=cosine_between(wd_start, wd_end, t),
        momentum=cosine_between(momentum_start, momentum_end, t),
        teacher_temp=warmup_then_constant(teacher_temp_start, teacher_temp_base, step, warm),
        mask_size=warmup_then_constant(mask_size_start, mask_size_base, step, warm),
        mask_ratio=warmup_then_constant(mask_ratio_start, mask_ratio_base, step, warm),
    )
