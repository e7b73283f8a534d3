"""Visual prompts (AutoVP-style): a learnable padding border around a resized input and an output label map.

The encoder stays frozen. Its input (an image batch ``(B, C, H, W)`` or a clip batch ``(B, C, T, H, W)``,
values in the encoder's input range) is resized to ``size - 2 * pad`` and framed by a trainable border of
width ``pad`` (one value per channel and pixel, shared over frames and batch), giving ``size x size``.
:func:`inject_prompt` hangs the prompt on the encoder (submodule ``input_prompt``, a forward pre-hook),
so ``encoder(x)`` sees the prompted input and only the prompt (and the label map) train.

Output label mapping, from what the encoder produces (features, or its own source-class logits) to the
task's classes:

- ``LabelMap("linear", n_in, K)``: a trainable linear map (on features it is the usual linear head);
- ``LabelMap("flm", n_source, K, mapping)``: frequency-based label mapping for a classifier-pretrained
  encoder: target class k reads the logit of source class ``mapping[k]``, the source class the prompted
  encoder most often predicts for training examples of class k (:func:`flm_mapping`; one-to-one, greedy
  by count, by default).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError

PROMPT_ATTR = "input_prompt"  # the submodule name the prompt gets inside the encoder
PROMPT_MARK = PROMPT_ATTR + "."

__all__ = ["LabelMap", "PROMPT_ATTR", "PadPrompt", "flm_mapping", "inject_prompt", "prompt_names",
           "remove_prompt"]


class PadPrompt(nn.Module):
    """A trainable border of width ``pad`` around an input resized to ``size - 2 * pad``.

    Border values are ``sigmoid(param)`` (kept in [0, 1], the clip range of the video encoders; zeros
    init = mid grey), one per channel and border pixel.
    """

    def __init__(self, size: int, pad: int, channels: int = 3, mode: str = "bilinear"):
        super().__init__()
        if not 0 < 2 * pad < size:
            raise ConfigError(f"prompt: pad must satisfy 0 < 2 * pad < size, got pad={pad}, size={size}")
        self.size, self.pad, self.channels, self.mode = int(size), int(pad), int(channels), mode
        inner = size - 2 * pad
        self.top = nn.Parameter(torch.zeros(channels, pad, size))
        self.bottom = nn.Parameter(torch.zeros(channels, pad, size))
        self.left = nn.Parameter(torch.zeros(channels, inner, pad))
        self.right = nn.Parameter(torch.zeros(channels, inner, pad))

    @property
    def inner(self) -> int:
        return self.size - 2 * self.pad

    def frame(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.sigmoid(self.top), torch.sigmoid(self.bottom), torch.sigmoid(self.left),
                torch.sigmoid(self.right))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, size, size); (B, C, T, H, W) -> (B, C, T, size, size)."""
        if x.ndim not in (4, 5) or x.shape[1] != self.channels:
            raise ValueError(f"prompt: expected (B, {self.channels}, H, W) or (B, {self.channels}, T, H, W), "
                             f"got {tuple(x.shape)}")
        video = x.ndim == 5
        if video:
            b, c, t, h, w = x.shape
            x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        n = self.inner
        if x.shape[-2:] != (n, n):
            kw: dict[str, Any] = {"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=(n, n), mode=self.mode, **kw)
        top, bottom, left, right = (p.to(x.dtype) for p in self.frame())
        m = x.shape[0]
        middle = torch.cat([left.expand(m, -1, -1, -1), x, right.expand(m, -1, -1, -1)], dim=3)
        out = torch.cat([top.expand(m, -1, -1, -1), middle, bottom.expand(m, -1, -1, -1)], dim=2)
        if video:
            out = out.reshape(b, t, c, self.size, self.size).permute(0, 2, 1, 3, 4)
        return out


def _prompt_pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    prompt = getattr(module, PROMPT_ATTR)
    return (prompt(args[0]), *args[1:])


def inject_prompt(encoder: nn.Module, size: int, pad: int, channels: int = 3) -> PadPrompt:
    """Wrap ``encoder``'s input (in place) with a :class:`PadPrompt` of output ``size`` and border ``pad``:
    ``encoder(x)`` then encodes ``prompt(x)``. The prompt is the submodule ``input_prompt``, created
    trainable and in float32 on the encoder's device; everything else keeps its ``requires_grad``."""
    if hasattr(encoder, PROMPT_ATTR):
        raise ConfigError(f"prompt: {type(encoder).__name__} already has an input prompt")
    ref = next(encoder.parameters(), None)
    prompt = PadPrompt(size, pad, channels)
    if ref is not None:
        prompt = prompt.to(ref.device)
    encoder.add_module(PROMPT_ATTR, prompt)
    encoder.register_forward_pre_hook(_prompt_pre_hook)  # found again by identity (deepcopy-safe)
    return prompt


def remove_prompt(encoder: nn.Module) -> PadPrompt:
    """Undo :func:`inject_prompt`; returns the prompt."""
    prompt = getattr(encoder, PROMPT_ATTR, None)
    if not isinstance(prompt, PadPrompt):
        raise ConfigError(f"prompt: {type(encoder).__name__} has no input prompt")
    hooks = encoder._forward_pre_hooks
    for key in [k for k, fn in hooks.items() if fn is _prompt_pre_hook]:
        del hooks[key]
    delattr(encoder, PROMPT_ATTR)
    return prompt


def prompt_names(model: nn.Module) -> list[str]:
    """Names of the input-prompt parameters anywhere in ``model``."""
    return [n for n, _ in model.named_parameters() if n.startswith(PROMPT_MARK) or f".{PROMPT_MARK}" in n]


def flm_mapping(predictions: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, num_classes: int,
                num_source: int | None = None, unique: bool = True) -> torch.Tensor:
    """Frequency-based label mapping: (num_classes,) int64, target class k -> a source class.

    ``predictions``: the source class predicted for each training example, (N,) ints, or source logits
    (N, S) (argmax taken). ``labels``: (N,) target classes (-1 ignored). Counts ``C[k, s]`` = examples of
    class k predicted as s. ``unique=False``: ``argmax_s C[k, s]`` (ties: lowest s). ``unique=True``
    (AutoVP / ILM-VP): one-to-one, greedily taking the largest remaining count (ties: lowest k, then
    lowest s), removing that class and source each time.
    """
    pred = torch.as_tensor(predictions)
    if pred.ndim == 2:
        num_source = num_source or pred.shape[1]
        pred = pred.argmax(dim=1)
    lab = torch.as_tensor(labels).long().reshape(-1)
    pred = pred.long().reshape(-1)
    if pred.shape != lab.shape:
        raise ConfigError(f"prompt: {pred.numel()} predictions for {lab.numel()} labels")
    if num_source is None:
        raise ConfigError("prompt: flm_mapping needs num_source with (N,) predictions")
    if unique and num_source < num_classes:
        raise ConfigError(f"prompt: a one-to-one mapping needs at least as many source classes "
                          f"({num_source}) as target classes ({num_classes})")
    keep = lab >= 0
    lab, pred = lab[keep], pred[keep]
    bad_pred = lab.numel() and not 0 <= int(pred.min()) <= int(pred.max()) < num_source
    if bad_pred or (lab.numel() and int(lab.max()) >= num_classes):
        raise ConfigError("prompt: flm_mapping got a label or prediction outside its class range")
    counts = torch.zeros(num_classes, num_source, dtype=torch.int64)
    counts.index_put_((lab, pred), torch.ones_like(lab), accumulate=True)
    if not unique:
        return counts.argmax(dim=1)  # first maximum: lowest source index on ties
    mapping = torch.full((num_classes,), -1, dtype=torch.int64)
    work = counts.clone()
    for _ in range(num_classes):
        flat = int(work.argmax())  # row-major first maximum: lowest k, then lowest s
        k, s = divmod(flat, num_source)
        mapping[k] = s
        work[k, :] = -1
        work[:, s] = -1
    return mapping


class LabelMap(nn.Module):
    """Output label mapping onto ``num_classes`` task classes: ``"linear"`` (trainable ``Linear(n_in, K)``)
    or ``"flm"`` (fixed: target k = source logit ``mapping[k]``; no parameters)."""

    def __init__(self, kind: str, n_in: int, num_classes: int, mapping: torch.Tensor | None = None):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.linear = nn.Linear(n_in, num_classes)
        elif kind == "flm":
            if mapping is None or tuple(mapping.shape) != (num_classes,):
                raise ConfigError(f"prompt: flm needs a mapping of {num_classes} source classes")
            if int(mapping.min()) < 0 or int(mapping.max()) >= n_in:
                raise ConfigError(f"prompt: flm mapping points outside the {n_in} source classes")
            self.register_buffer("mapping", mapping.long().clone())
        else:
            raise ConfigError(f"prompt: unknown label map '{kind}' (linear or flm)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_in) features or source logits -> (N, num_classes) task logits."""
        if self.kind == "linear":
            return self.linear(x)
        return x.index_select(1, self.mapping)
