"""SSF: per-channel scale and shift after linear, norm and conv layers (Lian et al., NeurIPS 2022).

:func:`inject_ssf` wraps each target module ``m`` in :class:`SSF` (``y = m(x) * ssf_scale + ssf_shift``
over the output channels; init scale N(1, 0.02), shift N(0, 0.02)); :func:`merge_ssf` folds every
wrapper into the weights of its module (``W <- diag(s) W``, ``b <- s * b + t``) and puts the plain module
back, so the merged model has the original layout and parameter names (a bias is added where the module
had none).

Supported modules: ``nn.Linear``, ``nn.LayerNorm`` (1-D normalized shape), ``nn.BatchNorm1d/2d/3d``,
``nn.Conv1d/2d/3d`` and spconv sparse convolutions that have a bias (weight layout (out, k, k, k, in),
output a ``SparseConvTensor`` whose features get the scale and shift; PTv3's CPE). Bias-free spconv
convolutions (SparseUNet) are skipped: the merged shift would need a bias, and spconv refuses a bias
on the CPU in eval mode; their following norm carries the SSF. A module must be called through
``module(x)``: code that reads ``module.weight`` and calls ``F.linear`` itself bypasses the wrapper
(:class:`SSF` has no ``weight``, so such code fails loudly instead of silently skipping SSF).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from common.errors import ConfigError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_sparse_conv(m: nn.Module) -> bool:
    """An spconv convolution (checked by class path, so spconv is imported only by its users)."""
    return any(c.__module__.startswith("spconv.") and c.__name__ == "SparseConvolution"
               for c in type(m).__mro__)


def ssf_channels(m: nn.Module) -> tuple[int, int] | None:
    """(output channels, channel dim of the output) of a supported module, else ``None``."""
    if isinstance(m, nn.Linear):
        return m.out_features, -1
    if isinstance(m, nn.LayerNorm):
        return (m.normalized_shape[0], -1) if len(m.normalized_shape) == 1 else None
    if isinstance(m, _BN):
        return m.num_features, 1
    if isinstance(m, _CONV):
        return m.out_channels, 1
    if (_is_sparse_conv(m) and not getattr(m, "transposed", False) and not getattr(m, "inverse", False)
            and m.bias is not None):
        return m.out_channels, -1
    return None


class SSF(nn.Module):
    """``inner(x) * ssf_scale + ssf_shift`` along the output channel dim (sparse tensors: features)."""

    def __init__(self, inner: nn.Module, generator: torch.Generator | None = None, std: float = 0.02):
        super().__init__()
        spec = ssf_channels(inner)
        if spec is None:
            raise ConfigError(f"ssf: {type(inner).__name__} is not a supported module")
        c, self.dim = spec
        ref = next(inner.parameters(), None)
        kw: dict[str, Any] = {"device": ref.device if ref is not None else None,
                              "dtype": ref.dtype if ref is not None else None}
        self.inner = inner
        gen_device = "cpu"
        scale = torch.empty(c, device=gen_device).normal_(1.0, std, generator=generator)
        shift = torch.empty(c, device=gen_device).normal_(0.0, std, generator=generator)
        self.ssf_scale = nn.Parameter(scale.to(**kw))
        self.ssf_shift = nn.Parameter(shift.to(**kw))

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        # in the output's dtype: under autocast a bf16 stream stays bf16 (grads still reach fp32 params)
        return x * self.ssf_scale.view(shape).to(x.dtype) + self.ssf_shift.view(shape).to(x.dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return self._affine(out)
        if hasattr(out, "replace_feature") and hasattr(out, "features"):  # spconv SparseConvTensor
            return out.replace_feature(self._affine(out.features))
        raise ConfigError(f"ssf: {type(self.inner).__name__} returned {type(out).__name__}, not a tensor")

    def extra_repr(self) -> str:
        return f"channels={self.ssf_scale.numel()}, dim={self.dim}"


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _selected(name: str, targets: Sequence[str] | None) -> bool:
    if targets is None:
        return True
    last = name.rsplit(".", 1)[-1]
    return any(t == name or t == last or name.endswith("." + t) for t in targets)


def convs_before_bn(model: nn.Module) -> set[str]:
    """Names of the convolutions whose next leaf module (registration order, the order of every conv-BN
    pair in pytorchvideo / torchvision / Pointcept blocks) is a BatchNorm over their output channels."""
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    out = set()
    for (name, m), (_, nxt) in zip(leaves, leaves[1:]):
        if (isinstance(m, _CONV) or _is_sparse_conv(m)) and isinstance(nxt, _BN) \
                and nxt.num_features == getattr(m, "out_channels", None):
            out.add(name)
    return out


def inject_ssf(model: nn.Module, targets: Sequence[str] | None = None,
               kinds: Sequence[str] = ("linear", "norm", "conv"),
               exclude: Sequence[str] = (), generator: torch.Generator | None = None,
               filter_fn: Callable[[str, nn.Module], bool] | None = None,
               conv_before_bn: bool = False) -> list[str]:
    """Wrap every supported module of ``model`` (of ``kinds``: linear, norm, conv) whose name matches
    ``targets`` (full names or last components; ``None``: all) and is not under an ``exclude`` prefix.
    Returns the wrapped module names; no match raises ``ConfigError``. The model's own parameters are
    left as they are (freezing is :func:`common.tuning.trainable.select_trainable`'s job).

    A convolution followed by a BatchNorm (:func:`convs_before_bn`) gets no SSF of its own unless
    ``conv_before_bn``: the encoder runs in eval mode, where BatchNorm is a per-channel affine map, so
    conv -> SSF -> BN -> SSF spans the same functions as conv -> BN -> SSF, and the conv-side shift is in
    pre-normalisation units (divided by the running std, and compounded through every block): on a
    random x3d_s it made the loss ~27x more sensitive to an eps = 1e-3 MeZO perturbation than the
    BatchNorm-side shifts and scales together (issue 14's video bench). The SSF after the BatchNorm is
    the paper's "after each operation" for a conv-BN unit."""
    bad = sorted(set(kinds) - {"linear", "norm", "conv"})
    if bad:
        raise ConfigError(f"ssf: unknown module kind(s) {bad} (linear, norm, conv)")
    if any(isinstance(m, SSF) for m in model.modules()):
        raise ConfigError("ssf: the model already has SSF wrappers")

    def kind(m: nn.Module) -> str | None:
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, (nn.LayerNorm, *_BN)):
            return "norm"
        if isinstance(m, _CONV) or _is_sparse_conv(m):
            return "conv"
        return None

    chosen = []
    folded = set() if conv_before_bn or "norm" not in kinds else convs_before_bn(model)
    for name, m in model.named_modules():
        if not name or kind(m) not in kinds or ssf_channels(m) is None or name in folded:
            continue
        if any(name == e or name.startswith(e.rstrip(".") + ".") for e in exclude):
            continue
        if _selected(name, targets) and (filter_fn is None or filter_fn(name, m)):
            chosen.append(name)
    if not chosen:
        raise ConfigError(f"ssf: no module of kinds {list(kinds)} matches targets {targets}")
    for name in chosen:
        inner = model.get_submodule(name)
        _set_child(model, name, SSF(inner, generator=generator).train(inner.training))
    return chosen


@torch.no_grad()
def _fold(inner: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    w = inner.weight
    if isinstance(inner, (nn.LayerNorm, *_BN)) and w is None:
        inner.weight = nn.Parameter(scale.detach().clone())
        if isinstance(inner, _BN):
            inner.affine = True
    else:
        w.mul_(scale.view([-1] + [1] * (w.dim() - 1)).to(w.dtype))
    b = inner.bias
    if b is None:
        inner.bias = nn.Parameter(shift.detach().clone().to(w.dtype if w is not None else shift.dtype))
    else:
        b.mul_(scale.to(b.dtype)).add_(shift.to(b.dtype))


def merge_ssf(model: nn.Module) -> int:
    """Fold every :class:`SSF` wrapper of ``model`` into its module and unwrap it (in place); returns
    the number merged. The merged parameters keep their ``requires_grad``."""
    names = [n for n, m in model.named_modules() if isinstance(m, SSF)]
    for name in names:
        wrapper = model.get_submodule(name)
        inner = wrapper.inner
        _fold(inner, wrapper.ssf_scale, wrapper.ssf_shift)
        _set_child(model, name, inner)
    return len(names)
