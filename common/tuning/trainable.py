"""Trainable sets of the tuning methods: which parameters of a model train, with which learning rate.

A caller describes its encoder by an ordered block layout, input side first::

    blocks = [("stem", model.embedding), ("enc0", ["enc.enc0."]), ("enc1", model.enc.enc1), ...]

each entry naming a block by a module of ``model`` or by parameter-name prefixes. Parameters named by
``always`` prefixes (the head, a decoder) train in every method; ``fixed`` prefixes never train (parameters
the model keeps fixed by design, as V-JEPA's sinusoidal ``pos_embed``); everything else follows the method:

- ``linear`` / ``decoder``: the encoder is frozen (only ``always`` trains);
- ``last_k``: the last ``k`` blocks of the layout train;
- ``progressive``: blocks are unfrozen on a schedule (:class:`ProgressiveSchedule`), each group with its
  own learning rate (discriminative learning rates);
- ``full``: everything trains, with layer-wise learning-rate decay over the blocks
  (:func:`layerwise_lr_groups`);
- ``ssf`` / ``lora``: only the injected adapter parameters (see :mod:`common.tuning.ssf`,
  :mod:`common.tuning.lora`) train.

Frozen parameters get ``requires_grad=False``; with ``optimizer.zero_grad(set_to_none=True)`` their
``.grad`` stays ``None`` and torch optimizers leave them bitwise unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from common.errors import ConfigError

BlockSpec = tuple[str, "nn.Module | Sequence[str] | str"]

# name fragments of adapter parameters (SSF wrappers and peft's LoRA layers)
SSF_MARK = "ssf_"
LORA_MARKS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def _under(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def resolve_blocks(model: nn.Module, blocks: Sequence[BlockSpec]) -> list[tuple[str, list[str]]]:
    """The parameter names of each block, in layout order. A parameter claimed by two blocks, a module
    that is not part of ``model`` or a block without parameters raises ``ConfigError``."""
    if not blocks:
        raise ConfigError("tuning: the encoder declares no blocks (an ordered list of (name, module or "
                          "prefixes) is needed for this method)")
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    out: list[tuple[str, list[str]]] = []
    owner: dict[str, str] = {}
    for entry in blocks:
        if not (isinstance(entry, tuple | list) and len(entry) == 2):
            raise ConfigError(f"tuning: block entry {entry!r} is not a (name, module or prefixes) pair")
        bname, spec = entry
        if isinstance(spec, nn.Module):
            ids = [id(p) for p in spec.parameters()]
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise ConfigError(f"tuning: block '{bname}' holds {len(missing)} parameter(s) that are not "
                                  f"parameters of the model being tuned")
            names = [by_id[i] for i in ids]
        else:
            prefixes = [spec] if isinstance(spec, str) else list(spec)
            names = [n for n in named if any(_under(n, p) for p in prefixes)]
        if not names:
            raise ConfigError(f"tuning: block '{bname}' has no parameters")
        for n in names:
            if n in owner:
                raise ConfigError(f"tuning: parameter '{n}' is in blocks '{owner[n]}' and '{bname}'")
            owner[n] = bname
        out.append((bname, names))
    return out


def _always_names(model: nn.Module, always: Sequence[str]) -> list[str]:
    return [n for n, _ in model.named_parameters() if any(_under(n, p) for p in always)]


def adapter_names(model: nn.Module, kind: str) -> list[str]:
    """Names of the injected adapter parameters of ``kind`` ("ssf" or "lora")."""
    if kind == "ssf":
        return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1].startswith(SSF_MARK)]
    if kind == "lora":
        return [n for n, _ in model.named_parameters() if any(f".{m}." in f".{n}." for m in LORA_MARKS)]
    raise ConfigError(f"tuning: unknown adapter kind '{kind}' (ssf or lora)")


def set_trainable(model: nn.Module, names: Iterable[str]) -> list[str]:
    """``requires_grad=True`` exactly for ``names`` (an unknown name raises); returns them in model order."""
    want = set(names)
    named = dict(model.named_parameters())
    unknown = sorted(want - set(named))
    if unknown:
        raise ConfigError(f"tuning: unknown parameter name(s) {unknown[:5]}")
    for n, p in named.items():
        p.requires_grad_(n in want)
    return [n for n in named if n in want]


def select_trainable(model: nn.Module, method: str, blocks: Sequence[BlockSpec] | None = None, k: int = 1,
                     always: Sequence[str] = (), schedule: ProgressiveSchedule | None = None,
                     fixed: Sequence[str] = ()) -> list[str]:
    """Freeze ``model`` except what ``method`` trains; returns the trainable parameter names.

    ``always``: prefixes that train in every method (head, decoder). ``progressive`` returns the set
    of step 0 (pass ``schedule`` to use its first stage; without one only ``always`` trains).
    ``fixed``: prefixes that never train, whatever the method.
    """
    always_set = _always_names(model, always)
    if method in ("linear", "decoder"):
        names = always_set
    elif method == "last_k":
        layout = resolve_blocks(model, blocks or [])
        if not 1 <= k <= len(layout):
            raise ConfigError(f"tuning: last_k needs 1 <= k <= {len(layout)} (the number of blocks), got {k}")
        names = always_set + [n for _, ns in layout[-k:] for n in ns]
    elif method == "progressive":
        names = always_set if schedule is None else schedule.trainable_at(0, 1)
    elif method == "full":
        names = [n for n, _ in model.named_parameters()]
    elif method in ("ssf", "lora"):
        found = adapter_names(model, method)
        if not found:
            raise ConfigError(f"tuning: method '{method}' but the model has no {method} adapters "
                              f"(inject them first)")
        names = always_set + found
    else:
        raise ConfigError(f"tuning: unknown trainable set '{method}' (linear, decoder, last_k, progressive, "
                          f"full, ssf, lora)")
    fixed_set = set(_always_names(model, fixed))
    return set_trainable(model, [n for n in names if n not in fixed_set])


def layerwise_decay_factors(n_blocks: int, decay: float) -> list[float]:
    """Learning-rate factor of each block (input side first): ``decay ** (n_blocks - i)`` for block i;
    the head (``always``) keeps factor 1 (BEiT's layer-wise decay with the head as layer n+1)."""
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"tuning: layer-wise lr decay must be in (0, 1], got {decay}")
    return [decay ** (n_blocks - i) for i in range(n_blocks)]


def layerwise_lr_groups(model: nn.Module, blocks: Sequence[BlockSpec], lr: float, decay: float,
                        always: Sequence[str] = (), weight_decay: float = 0.0,
                        fixed: Sequence[str] = (), head_lr: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``full``: every parameter trains; block i gets
    ``lr * decay ** (n - i)``, ``always`` gets ``head_lr`` (default ``lr``). A trainable parameter in
    no block and not under ``always`` raises ``ConfigError`` (the layout must cover the encoder).
    ``fixed`` prefixes stay frozen and in no group."""
    fixed_set = set(_always_names(model, fixed))
    layout = [(b, [n for n in ns if n not in fixed_set]) for b, ns in resolve_blocks(model, blocks)]
    named = dict(model.named_parameters())
    factors = layerwise_decay_factors(len(layout), decay)
    head = set(_always_names(model, always))
    covered = {n for _, ns in layout for n in ns}
    stray = [n for n in named if n not in covered and n not in head and n not in fixed_set]
    if stray:
        raise ConfigError(f"tuning: parameter(s) {stray[:5]} are in no declared block and not under "
                          f"always={list(always)}")
    for n, p in named.items():
        p.requires_grad_(n not in fixed_set)
    groups = [{"name": b, "params": [named[n] for n in ns if n not in head], "param_names": [n for n in ns
              if n not in head], "lr": lr * f, "lr_factor": f, "weight_decay": weight_decay}
              for (b, ns), f in zip(layout, factors)]
    if head:
        hn = [n for n in named if n in head]
        hlr = lr if head_lr is None else head_lr
        groups.append({"name": "head", "params": [named[n] for n in hn], "param_names": hn, "lr": hlr,
                       "lr_factor": 1.0, "weight_decay": weight_decay})
    return [g for g in groups if g["params"]]


@dataclass(frozen=True)
class Stage:
    """Blocks unfrozen from ``at`` (fraction of training, 0 <= at < 1) on, trained with ``lr``."""

    at: float
    blocks: tuple[str, ...]
    lr: float


class ProgressiveSchedule:
    """Progressive unfreezing with discriminative learning rates.

    ``stages``: (fraction, block name or names, lr); the head (``always``) trains from step 0 with
    ``head_lr``. Build the optimizer once from :meth:`optimizer_groups` (every group, frozen ones
    included) and call :meth:`apply` before each step: it sets ``requires_grad`` (and keeps each
    group's lr), so not-yet-unfrozen blocks have ``.grad None`` and stay bitwise unchanged.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[BlockSpec],
                 stages: Sequence[tuple[float, str | Sequence[str], float]], head_lr: float,
                 always: Sequence[str] = (), fixed: Sequence[str] = ()):
        self.model = model
        fixed_set = set(_always_names(model, fixed))
        self.layout = {b: [n for n in ns if n not in fixed_set] for b, ns in resolve_blocks(model, blocks)}
        self.head = _always_names(model, always)
        self.head_lr = head_lr
        parsed: list[Stage] = []
        seen: set[str] = set()
        for at, names, lr in stages:
            names = (names,) if isinstance(names, str) else tuple(names)
            if not 0.0 <= float(at) < 1.0:
                raise ConfigError(f"tuning: progressive stage at {at}: the fraction must be in [0, 1)")
            for b in names:
                if b not in self.layout:
                    raise ConfigError(f"tuning: progressive stage names unknown block '{b}' (blocks: "
                                      f"{', '.join(self.layout)})")
                if b in seen:
                    raise ConfigError(f"tuning: block '{b}' is unfrozen by two progressive stages")
                seen.add(b)
            parsed.append(Stage(float(at), names, float(lr)))
        self.stages = sorted(parsed, key=lambda s: s.at)

    @staticmethod
    def fraction(step: int, total: int) -> float:
        if total <= 0 or not 0 <= step <= total:
            raise ConfigError(f"tuning: step {step} outside a run of {total} steps")
        return step / total

    def active_stages(self, step: int, total: int) -> list[Stage]:
        f = self.fraction(step, total)
        return [s for s in self.stages if s.at <= f]

    def param_groups_at(self, step: int, total: int) -> list[dict[str, Any]]:
        """The groups that train at ``step`` of ``total``: the head, then every unfrozen stage's blocks,
        each ``{"name", "param_names", "lr"}`` (names, not tensors: cheap to log and compare)."""
        groups = [{"name": "head", "param_names": list(self.head), "lr": self.head_lr}] if self.head else []
        for s in self.active_stages(step, total):
            groups.append({"name": "+".join(s.blocks), "param_names": [n for b in s.blocks
                                                                        for n in self.layout[b]], "lr": s.lr})
        return groups

    def trainable_at(self, step: int, total: int) -> list[str]:
        return [n for g in self.param_groups_at(step, total) for n in g["param_names"]]

    def optimizer_groups(self, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Every group (head and all stages) with its tensors and lr, for building the optimizer once."""
        named = dict(self.model.named_parameters())
        groups = [{"name": "head", "params": [named[n] for n in self.head], "lr": self.head_lr,
                   "weight_decay": weight_decay}] if self.head else []
        for s in self.stages:
            groups.append({"name": "+".join(s.blocks), "params": [named[n] for b in s.blocks
                                                                   for n in self.layout[b]],
                           "lr": s.lr, "weight_decay": weight_decay})
        return groups

    def apply(self, step: int, total: int) -> list[str]:
        """Set ``requires_grad`` for ``step``; returns the trainable names."""
        return set_trainable(self.model, self.trainable_at(step, total))


def discriminative_lrs(lr: float, n: int, factor: float) -> list[float]:
    """``n`` learning rates for stages ordered output side first: lr, lr*factor, lr*factor**2, ..."""
    if not 0.0 < factor <= 1.0:
        raise ConfigError(f"tuning: discriminative lr factor must be in (0, 1], got {factor}")
    return [lr * factor ** i for i in range(n)]
