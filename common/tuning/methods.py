"""The table of tuning methods and one entry point that readies a model for a method.

``METHODS[name]`` says what a method trains and whether it has adapters to merge; :func:`prepare_method`
injects the adapters (SSF / LoRA), freezes everything the method does not train and returns the
trainable names plus a merge function. The training loop (``pointprobe tune`` / ``videoprobe tune``)
then builds its optimizer from the trainable set (``full``: :func:`layerwise_lr_groups`;
``progressive``: :class:`ProgressiveSchedule`; ``mezo``: :class:`MeZO` over the set named by ``over``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.errors import ConfigError
from common.tuning.lora import LoraOptions, has_kernel_lora, inject_lora, merge_lora
from common.tuning.prompt import PROMPT_ATTR, prompt_names
from common.tuning.ssf import SSF, inject_ssf, merge_ssf
from common.tuning.trainable import BlockSpec, ProgressiveSchedule, select_trainable, set_trainable


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    encoder_trains: bool  # any encoder parameter (or adapter) trains
    needs_blocks: bool  # needs the encoder's declared block layout
    adapters: str | None = None  # "ssf" / "lora": injected, merged after training
    zeroth_order: bool = False  # forward passes only (MeZO)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("linear", "frozen encoder; linear head(s) trained on live augmented features", False, False),
    Method("decoder", "frozen encoder; a light trainable decoder and head", False, False),
    Method("ssf", "per-channel scale and shift after linear / norm / conv layers, merged after training",
           True, False, adapters="ssf"),
    Method("lora", "low-rank adapters (peft) on attention qkv (optionally proj / MLP), merged after training",
           True, False, adapters="lora"),
    Method("last_k", "the last k blocks of the encoder train", True, True),
    Method("progressive", "blocks unfrozen on a schedule, each stage with its own learning rate", True, True),
    Method("full", "everything trains, layer-wise learning-rate decay over the blocks", True, True),
    Method("mezo", "zeroth-order SPSA (forward passes only) over the trainable set of another method", True,
           False, zeroth_order=True),
    Method("prompt", "AutoVP visual prompt: a trainable padding border around the resized input "
           "(inject_prompt) and an output label map (linear or frequency-based)", True, False,
           adapters="prompt"),
]}

MEZO_OVER = ("ssf", "lora", "last_k", "full")


@dataclass
class Prepared:
    """A model readied for a method: what trains and how to merge adapters afterwards."""

    method: str
    trainable: list[str]
    adapted_modules: list[str] = field(default_factory=list)
    adapters: str | None = None
    over: str | None = None  # mezo: the trainable set it tunes

    def merge(self, model: nn.Module) -> int:
        """Fold the adapters into the weights (SSF / LoRA); a no-op (0) for other methods."""
        if self.adapters == "ssf":
            return merge_ssf(model)
        if self.adapters == "lora":
            return merge_lora(model)
        return 0


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"tuning: unknown method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[name]


def check_method(method: str, over: str | None = None) -> str:
    """The method whose trainable set is used (``over`` for mezo, else ``method``); one ConfigError line
    for an unknown method, a mezo without a valid ``over`` or an ``over`` given to another method."""
    m = get_method(method)
    if m.zeroth_order:
        if over not in MEZO_OVER:
            raise ConfigError(f"tuning: mezo needs over= one of {', '.join(MEZO_OVER)}, got {over!r}")
        return over
    if over is not None:
        raise ConfigError(f"tuning: over= is for mezo only, not '{method}'")
    return method


def prepare_method(model: nn.Module, method: str, blocks: Sequence[BlockSpec] | None = None, *, k: int = 1,
                   always: Sequence[str] = (), fixed: Sequence[str] = (), over: str | None = None,
                   lora: LoraOptions | None = None,
                   ssf_targets: Sequence[str] | None = None, ssf_exclude: Sequence[str] = (),
                   schedule: ProgressiveSchedule | None = None,
                   generator: torch.Generator | None = None) -> Prepared:
    """Inject ``method``'s adapters into ``model`` (in place) and freeze what it does not train.

    ``always``: prefixes (head, decoder) that train in every method; adapters are not injected under
    them. ``fixed``: prefixes that never train (see :func:`select_trainable`). ``over`` (mezo only):
    one of ``MEZO_OVER``.
    """
    base = check_method(method, over)
    adapters = METHODS[base].adapters
    adapted: list[str] = []
    if adapters == "ssf":
        adapted = inject_ssf(model, targets=ssf_targets, exclude=tuple(always) + tuple(ssf_exclude),
                             generator=generator)
    elif adapters == "lora":
        adapted = inject_lora(model, lora, exclude=always)
    elif adapters == "prompt":  # the prompt needs a size and border: injected by the task (inject_prompt)
        found = prompt_names(model)
        if not found:
            raise ConfigError("tuning: method 'prompt' but the model has no input prompt "
                              "(inject_prompt first)")

        def under(n: str, prefixes: Sequence[str]) -> bool:
            return any(n == p.rstrip(".") or n.startswith(p.rstrip(".") + ".") for p in prefixes)

        names = set_trainable(model, [n for n, _ in model.named_parameters()
                                      if (n in found or under(n, always)) and not under(n, fixed)])
        return Prepared(method=method, trainable=names, adapted_modules=[PROMPT_ATTR], adapters=adapters)
    if METHODS[base].needs_blocks and base != "progressive" and not blocks:
        raise ConfigError(f"tuning: method '{base}' needs the encoder's block layout")
    names = select_trainable(model, base, blocks=blocks, k=k, always=always, schedule=schedule, fixed=fixed)
    return Prepared(method=method, trainable=names, adapted_modules=adapted, adapters=adapters,
                    over=over if METHODS[method].zeroth_order else None)


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """SSF wrappers, peft LoRA layers and kernel-LoRA modules of ``model`` by name."""
    out: dict[str, nn.Module] = {n: mod for n, mod in model.named_modules() if isinstance(mod, SSF)}
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft not installed
        return out
    out.update({n: mod for n, mod in model.named_modules() if isinstance(mod, BaseTunerLayer)
                or has_kernel_lora(mod)})
    return out


def check_adapters_reached(model: nn.Module, run: Callable[[], Any]) -> list[str]:
    """Run ``run()`` (one forward pass) and raise ``ConfigError`` naming any adapter module that was not
    called: a model that reads ``module.weight`` and calls ``F.linear`` itself bypasses the adapter and
    would silently train nothing. Returns the names of the adapters that were reached."""
    mods = adapter_modules(model)
    hit: set[str] = set()
    handles = [mod.register_forward_hook(lambda _m, _i, _o, n=n: hit.add(n)) for n, mod in mods.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    missed = [n for n in mods if n not in hit]
    if missed:
        raise ConfigError(f"tuning: {len(missed)} adapter module(s) are never called by the forward pass "
                          f"(e.g. {missed[0]}): the model reads their weights directly")
    return sorted(hit)
