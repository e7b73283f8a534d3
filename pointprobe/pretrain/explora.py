"""Extended pre-training (ExPLoRA): start from an encoder file, keep most of it frozen, train LoRA adapters
(``common.tuning.lora``), one or two whole blocks (by the encoder's ``block_layout``) and optionally the
norms, with the same self-distillation objective; export with the adapters merged.

- :func:`init_backbone` builds the backbone a checkpoint describes (``pointprobe.models.load_encoder``,
  the suite's safe loader: ``weights_only`` unless ``trust``) with the mask token and drop path that
  pre-training needs; a file without a mask token gets the fresh (zero) one.
- :func:`apply_explora` injects the adapters into a :class:`DistillModel`'s backbone and sets
  ``requires_grad`` to the declared set: adapters, unfrozen blocks, norms (``train_norms``), the mask
  token (``train_mask_token``) and the two heads (new for every run). It is applied identically to the
  student and the teacher, so the teacher's adapters follow the student's by EMA like every other
  trained parameter; the frozen rest is never touched (the EMA skips it, batch norms with frozen
  parameters stay in eval mode), so it stays bitwise the starting weights.
- :func:`merged_backbone` is a copy of a backbone with every adapter merged into its base weights: the
  original layout and parameter names, loadable by the plain ``load_encoder`` without peft.
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from common.errors import CheckpointError, ConfigError
from common.tuning.lora import LoraOptions, inject_lora, merge_lora
from common.tuning.trainable import adapter_names, set_trainable
from pointprobe.models.registry import create_encoder, load_encoder
from pointprobe.models.structure import PointEncoder

log = logging.getLogger("pointprobe.pretrain")

__all__ = ["init_backbone", "resolve_unfrozen", "apply_explora", "merged_backbone", "trainable_summary",
           "freeze_frozen_norm_stats", "snapshot"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def init_backbone(path: str | os.PathLike, drop_path: float, trust: bool = False,
                  residual_decay: float | None = None) -> PointEncoder:
    """The encoder of ``path`` (file or release name) rebuilt with ``mask_token=True`` and ``drop_path``
    (and ``residual_decay`` when given and not 1), its weights loaded; the only key allowed to be absent
    from the file is the mask token."""
    src = load_encoder(path, trust=trust)
    cfg = {**dict(src.config), "drop_path": drop_path, "mask_token": True}
    if residual_decay is not None and residual_decay != 1.0:
        cfg["residual_decay"] = residual_decay
    model = create_encoder(src.arch, **cfg)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    bad = [k for k in missing if "mask_token" not in k]
    if bad or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the {src.arch} encoder with a mask token "
                              f"(missing {bad[:3]}, unexpected {list(unexpected)[:3]})")
    return model


def resolve_unfrozen(backbone: PointEncoder, blocks: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The ``block_layout`` entries named by ``blocks``: a block name or an index (``-1`` = the last)."""
    if not blocks:
        return []
    try:
        layout = backbone.block_layout()
    except NotImplementedError as e:
        raise ConfigError(f"config key 'explora.unfreeze_blocks': {e}") from None
    names = [n for n, _ in layout]
    out = []
    for b in blocks:
        b = str(b)
        if b in names:
            i = names.index(b)
        else:
            try:
                i = int(b)
            except ValueError:
                raise ConfigError(f"config key 'explora.unfreeze_blocks': no block {b!r} (blocks: "
                                  f"{', '.join(names)}; or an index, -1 = the last)") from None
            if not -len(names) <= i < len(names):
                raise ConfigError(f"config key 'explora.unfreeze_blocks': index {i} outside the "
                                  f"{len(names)} blocks")
            i %= len(names)
        entry = (layout[i][0], list(layout[i][1]))
        if entry not in out:
            out.append(entry)
    return out


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(p) if p.endswith(".") else (name == p or name.startswith(p + "."))
               for p in prefixes)


def apply_explora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str],
                  unfreeze_blocks: Sequence[str], train_norms: bool, train_mask_token: bool = True) -> dict:
    """Inject LoRA (``rank`` 0: none) into ``model.backbone`` outside the unfrozen blocks and make the
    declared set the only trainable parameters; returns ``{"trainable": names, "groups": {kind: n}}``."""
    bb = model.backbone
    unfrozen = resolve_unfrozen(bb, unfreeze_blocks)
    block_prefixes = [p for _, ps in unfrozen for p in ps]
    if rank > 0:
        opts = LoraOptions(rank=rank, alpha=alpha, targets=tuple(targets))
        exclude = [p.rstrip(".") for p in block_prefixes]
        try:
            inject_lora(bb, opts, exclude=exclude)
        except ConfigError as e:
            raise ConfigError(f"config key 'explora.lora_targets': {e}") from None
        bb.explora_lora = (opts, exclude)  # how to rebuild the adapted layout (merged_backbone)
    lora = [f"backbone.{n}" for n in adapter_names(bb, "lora")] if rank else []
    groups: dict[str, list[str]] = {"lora": lora, "blocks": [], "norms": [], "mask_token": [], "heads": []}
    for n, _ in bb.named_parameters():
        if _under(n, block_prefixes):
            groups["blocks"].append(f"backbone.{n}")
        elif "mask_token" in n and train_mask_token:
            groups["mask_token"].append(f"backbone.{n}")
    if train_norms:
        for mname, m in bb.named_modules():
            if isinstance(m, _NORMS):
                for pn, _ in m.named_parameters(recurse=False):
                    full = f"backbone.{mname}.{pn}"
                    if full not in groups["blocks"]:
                        groups["norms"].append(full)
    groups["heads"] = [n for n, _ in model.named_parameters() if not n.startswith("backbone.")]
    names = set_trainable(model, [n for g in groups.values() for n in g])
    return {"trainable": names, "groups": {k: len(v) for k, v in groups.items()},
            "unfrozen_blocks": [b for b, _ in unfrozen]}


def freeze_frozen_norm_stats(model: nn.Module) -> None:
    """Batch norms whose parameters are all frozen go to eval mode (their running statistics stay)."""
    for m in model.modules():
        frozen = not any(p.requires_grad for p in m.parameters())
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and frozen:
            m.eval()


def merged_backbone(backbone: PointEncoder) -> PointEncoder:
    """A copy of ``backbone`` (on the CPU) with its LoRA adapters merged (no peft layers left, original
    names). Rebuilt from its arch and config with the same adapters (parametrized spconv layers do not
    deep-copy), its state loaded, then merged; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        out = create_encoder(backbone.arch, **dict(backbone.config))
        spec = getattr(backbone, "explora_lora", None)
        if spec is not None:
            inject_lora(out, spec[0], exclude=spec[1])
    out.load_state_dict({k: v.detach().cpu() for k, v in backbone.state_dict().items()})
    merge_lora(out)
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Trainable and total scalars of ``model`` (backbone and heads apart)."""
    tot = {"backbone": 0, "heads": 0}
    tr = {"backbone": 0, "heads": 0}
    for n, p in model.named_parameters():
        k = "backbone" if n.startswith("backbone.") else "heads"
        tot[k] += p.numel()
        if p.requires_grad:
            tr[k] += p.numel()
    return {"trainable_backbone": tr["backbone"], "total_backbone": tot["backbone"],
            "trainable_heads": tr["heads"], "total_heads": tot["heads"],
            "trainable": tr["backbone"] + tr["heads"], "total": tot["backbone"] + tot["heads"]}


def snapshot(backbone: PointEncoder) -> PointEncoder:
    """A frozen eval-mode copy (the BFP reference ``f_old``)."""
    out = copy.deepcopy(backbone)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out

