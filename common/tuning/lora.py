"""LoRA adapters through the ``peft`` library (optional extra ``probesuite[tune]``).

:func:`inject_lora` calls ``peft.inject_adapter_in_model`` with a ``LoraConfig`` on any ``nn.Module``
(target modules by name: ``"qkv"`` matches every module whose name is or ends with ``.qkv``);
:func:`merge_lora` merges each adapter with peft's own ``merge`` and puts the base layer back, so the
merged model has the original layout and parameter names.

peft covers ``nn.Linear`` (PTv3 / video-ViT ``qkv``, ``proj``, MLP ``fc1`` / ``fc2``) and dense
``nn.Conv1d/2d/3d`` (the video patch embedding, zoo CNNs). It does not know spconv's sparse
convolutions (PTv3's CPE, SparseUNet): for those this module has its own code, :class:`KernelLoRA`, a
weight parametrization ``W + (alpha / r) * reshape(B @ A)`` over the kernel's (out, k*k*k*in) matrix
(no input dropout: a weight-space delta has no adapter input to drop). As with SSF, a peft adapter
only acts when the model calls the module (``module(x)``); code that reads ``module.weight`` and calls
``F.linear`` itself (VideoMAE's split q/v bias) bypasses it - see
:func:`common.tuning.methods.check_adapters_reached`.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

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
    sparse = [(n, m) for n, m in matched if _is_sparse_conv(m)]
    dense = [(n, m) for n, m in matched if not _is_sparse_conv(m)]
    if sparse and o.dropout:
        raise ConfigError(f"lora: dropout={o.dropout} is not supported on spconv targets ({sparse[0][0]}: "
                          f"a kernel delta has no adapter input); use dropout=0")
    for _, m in sparse:
        add_kernel_lora(m, o.rank, o.alpha)
    if dense:
        # the exact module names as one regular expression (peft full-matches a string target)
        names_re = "|".join(re.escape(n) for n, _ in dense)
        cfg = peft.LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout,
                              target_modules=f"(?:{names_re})", bias="none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                peft.inject_adapter_in_model(cfg, model, adapter_name=adapter_name)
            except ValueError as e:
                raise ConfigError(f"lora: peft refused the targets {list(o.targets)}: "
                                  f"{str(e).splitlines()[0]}") from None
    layers = [(n, m) for n, m in model.named_modules() if _is_lora_layer(m)]
    for _, m in layers:  # new adapter modules (dropout) start in train mode: follow the wrapped layer
        m.train(m.get_base_layer().training)
    done = {n for n, _ in layers} | {n for n, _ in sparse}
    return [n for n, _ in model.named_modules() if n in done]


class KernelLoRA(nn.Module):
    """Weight parametrization ``W + scaling * (B @ A).view(W.shape)``; ``A`` (r, prod(W.shape[1:])) is
    Kaiming-uniform, ``B`` (W.shape[0], r) zero, as in peft (the adapted layer starts as the base one)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out, rest = weight.shape[0], math.prod(weight.shape[1:])
        self.lora_A = nn.Parameter(torch.empty(rank, rest, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out, rank, device=weight.device, dtype=weight.dtype))
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.lora_B @ self.lora_A).view(weight.shape).to(weight.dtype) * self.scaling


def add_kernel_lora(module: nn.Module, rank: int, alpha: float) -> None:
    """Parametrize ``module.weight`` with a :class:`KernelLoRA` (own code for spconv kernels)."""
    if has_kernel_lora(module):
        raise ConfigError(f"lora: {type(module).__name__} already has a kernel LoRA")
    w = module.weight
    lora = KernelLoRA(w.detach(), rank, alpha)
    lora.param_order = list(module._parameters)  # restored by the merge (state-dict key order)
    parametrize.register_parametrization(module, "weight", lora)
    module.parametrizations.weight.original.requires_grad_(w.requires_grad)


def has_kernel_lora(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, KernelLoRA) for p in module.parametrizations.weight)


def _is_lora_layer(m: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(m, BaseTunerLayer)


def _is_pointwise_conv3d(layer: nn.Module) -> bool:
    """A peft LoRA layer over a 1 x 1 x 1 ``nn.Conv3d`` (x3d's conv_a / conv_c): peft 0.21 merges it
    wrongly (it squeezes two of the three kernel axes), so :func:`merge_lora` merges it itself."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else None
    return (isinstance(base, nn.Conv3d) and tuple(base.kernel_size) == (1, 1, 1) and base.groups == 1
            and hasattr(layer, "lora_A") and not getattr(layer, "use_dora", {}).get("default", False))


@torch.no_grad()
def _merge_pointwise_conv3d(layer: nn.Module) -> nn.Conv3d:
    """``W += scaling * B @ A`` for every active adapter of a 1 x 1 x 1 Conv3d LoRA layer; the base layer."""
    base = layer.get_base_layer()
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        a = layer.lora_A[name].weight.flatten(1)  # (r, in)
        b = layer.lora_B[name].weight.flatten(1)  # (out, r)
        merged = base.weight + (layer.scaling[name] * (b @ a)).view_as(base.weight).to(base.weight.dtype)
        if not torch.isfinite(merged).all():
            raise ConfigError(f"lora: merging adapter {name!r} gives non-finite weights")
        base.weight.copy_(merged)
    return base


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model`` into its base weights (peft's ``merge(safe_merge=True)``, which
    raises on non-finite results) and unwrap it; returns the number merged."""
    _peft()
    tuner = [n for n, m in model.named_modules() if _is_lora_layer(m)]
    # outermost tuner layers only (a tuner layer's base_layer may itself be one)
    top = [n for n in tuner if not any(n.startswith(o + ".") for o in tuner if o != n)]
    for name in top:
        layer = model.get_submodule(name)
        if _is_pointwise_conv3d(layer):
            base = _merge_pointwise_conv3d(layer)
        elif hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        else:
            layer.merge(safe_merge=True)
            base = layer.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, base)
    if hasattr(model, "peft_config"):
        del model.peft_config
    kernel = [m for _, m in model.named_modules() if has_kernel_lora(m)]
    with torch.no_grad():
        for m in kernel:
            trainable = m.parametrizations.weight.original.requires_grad
            order = next(p.param_order for p in m.parametrizations.weight if isinstance(p, KernelLoRA))
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            m.weight.requires_grad_(trainable)
            params = m._parameters
            m._parameters = type(params)([(k, params[k]) for k in order if k in params]
                                         + [(k, v) for k, v in params.items() if k not in order])
    return len(top) + len(kernel)
