"""Frozen encoders: :func:`freeze` puts a module in eval mode with no gradients; :func:`assert_frozen`
checks it. Every encoder freeze site (point and video extraction, the image encoders of lifting) and
every probe fed by a live encoder goes through this module."""

from __future__ import annotations

from typing import TypeVar

import torch

from common.errors import ProbeSuiteError

__all__ = ["NotFrozenError", "freeze", "assert_frozen"]

M = TypeVar("M", bound=torch.nn.Module)


class NotFrozenError(ProbeSuiteError):
    """An encoder that must be frozen is in training mode or has trainable parameters."""


def freeze(module: M) -> M:
    """Eval mode and ``requires_grad=False`` on every parameter; returns ``module`` (in place)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def assert_frozen(module: torch.nn.Module, name: str | None = None) -> None:
    """Raise :class:`NotFrozenError` if ``module`` (or a sub-module) is in training mode or any of its
    parameters requires grad. :func:`freeze` freezes it."""
    label = name or type(module).__name__
    training = [n or "<root>" for n, m in module.named_modules() if m.training]
    if training:
        raise NotFrozenError(
            f"{label} is in training mode ({len(training)} module(s), e.g. {training[0]}); "
            "call .eval() (common.freeze.freeze) before probing"
        )
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    if trainable:
        raise NotFrozenError(
            f"{label} has {len(trainable)} parameter(s) that require grad "
            f"(e.g. {trainable[0]}); call .requires_grad_(False) (common.freeze.freeze)"
        )
