"""Tuning methods that keep the encoder in the loop (issue 14): trainable sets, SSF, LoRA, MeZO, costs.

Modality-free: every function works on plain ``nn.Module`` trees; the encoder supplies its ordered block
layout, the caller its head. ``METHODS`` is the table of methods; :func:`prepare_method` readies a model.
"""
from common.tuning.cost import PeakMemory, StepTimer, TuneCost, trainable_counts, tune_cost
from common.tuning.lora import LoraOptions, inject_lora, merge_lora
from common.tuning.methods import (
    METHODS,
    MEZO_OVER,
    Method,
    Prepared,
    adapter_modules,
    check_adapters_reached,
    get_method,
    prepare_method,
)
from common.tuning.mezo import MeZO, direction, z_seed
from common.tuning.prompt import LabelMap, PadPrompt, flm_mapping, inject_prompt, prompt_names, remove_prompt
from common.tuning.ssf import SSF, inject_ssf, merge_ssf
from common.tuning.trainable import (
    ProgressiveSchedule,
    discriminative_lrs,
    layerwise_decay_factors,
    layerwise_lr_groups,
    resolve_blocks,
    select_trainable,
    set_trainable,
)

__all__ = [
    "LabelMap", "LoraOptions", "METHODS", "MEZO_OVER", "MeZO", "Method", "PadPrompt", "PeakMemory",
    "Prepared", "ProgressiveSchedule", "SSF", "StepTimer", "TuneCost", "adapter_modules",
    "check_adapters_reached", "direction", "discriminative_lrs", "flm_mapping", "get_method", "inject_lora",
    "inject_prompt", "inject_ssf", "layerwise_decay_factors", "layerwise_lr_groups", "merge_lora",
    "merge_ssf", "prepare_method", "prompt_names", "remove_prompt", "resolve_blocks", "select_trainable",
    "set_trainable", "trainable_counts", "tune_cost", "z_seed"
]
