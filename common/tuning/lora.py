"""LoRA adapters through the ``peft`` library (optional extra ``probesuite[tune]``).

:func:`inject_lora` calls ``peft.inject_adapter_in_model`` with a ``LoraConfig`` on any ``nn.Module``
(target modules by name: ``"qkv"`` matches every module whose name is or ends with ``.qkv``);
:func:`merge_lora` merges each adapter with peft's own ``merge`` and puts the base layer back, so the
merged model has the original layout and parameter names.

peft covers ``nn.Linear`` (PTv3 / video-ViT ``qkv``, ``proj``, MLP ``fc1`` / ``fc2``) and dense
``nn.Conv1d/2d/3d`` (the video patch embedding, zoo CNNs). It does not know spconv's sparse
convolutions (PTv3's CPE, SparseUNet): a target of that type raises ``ConfigError`` here; LoRA on
those would need own code (a low-rank delta on the (out, k, k, k, in) kernel), which is not written.
As with SSF, the adapter only acts when the model calls the module (``module(x)``); code that reads
``module.weight`` and calls ``F.linear`` itself (VideoMAE's split q/v bias) bypasses it - see
:func:`common.tuning.methods.check_adapters_reached`.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from common.errors import ConfigError


def _peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("lora: the peft library is not installed (pip install 'probesuite[tune]')") \
            from None
    return peft


@dataclass(frozen=True)
class LoraOptions:
    """rank r, scaling alpha / r, dropout on the adapter input, target module names."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("qkv",)

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"lora: rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("lora: no target modules given")


def _is_sparse_conv(m: nn.Module) -> bool:
    return any(c.__module__.startswith("spconv.") for c in type(m).__mro__)


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_lora(model: nn.Module, options: LoraOptions | None = None, exclude: Sequence[str] = (),
                adapter_name: str = "default") -> list[str]:
    """Inject LoRA adapters into ``model`` in place; returns the adapted module names. ``exclude``:
    prefixes (the head) that get no adapter. Targets that match nothing, or modules peft does not
    support, raise ``ConfigError``."""
    peft = _peft()
    o = options or LoraOptions()
    matched = [(n, m) for n, m in model.named_modules() if n and _matches(n, o.targets)
               and not any(n == e.rstrip(".") or n.startswith(e.rstrip(".") + ".") for e in exclude)]
    if not matched:
        raise ConfigError(f"lora: no module of the model is named {list(o.targets)}"
                          + (f" outside {list(exclude)}" if exclude else ""))
    sparse = [n for n, m in matched if _is_sparse_conv(m)]
    if sparse:
        raise ConfigError(f"lora: {sparse[0]} is an spconv sparse convolution, which peft does not support "
                          f"(choose Linear / dense Conv targets)")
    # the exact module names as one regular expression (peft full-matches a string target)
    names_re = "|".join(re.escape(n) for n, _ in matched)
    cfg = peft.LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout,
                          target_modules=f"(?:{names_re})", bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            peft.inject_adapter_in_model(cfg, model, adapter_name=adapter_name)
        except ValueError as e:
            raise ConfigError(f"lora: peft refused the targets {list(o.targets)}: {str(e).splitlines()[0]}") \
                from None
    layers = [(n, m) for n, m in model.named_modules() if _is_lora_layer(m)]
    for _, m in layers:  # new adapter modules (dropout) start in train mode: follow the wrapped layer
        m.train(m.get_base_layer().training)
    return [n for n, _ in layers]


def _is_lora_layer(m: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(m, BaseTunerLayer)


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model`` into its base weights (peft's ``merge(safe_merge=True)``, which
    raises on non-finite results) and unwrap it; returns the number merged."""
    _peft()
    tuner = [n for n, m in model.named_modules() if _is_lora_layer(m)]
    # outermost tuner layers only (a tuner layer's base_layer may itself be one)
    top = [n for n in tuner if not any(n.startswith(o + ".") for o in tuner if o != n)]
    for name in top:
        layer = model.get_submodule(name)
        if hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        else:
            layer.merge(safe_merge=True)
            base = layer.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, base)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return len(top)
