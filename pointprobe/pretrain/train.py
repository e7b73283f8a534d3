"""Pre-training's public names in one place (the ``pointprobe pretrain`` command, tools and tests).

Rooms: ``config`` (schema and checks), ``model`` (backbone, heads, parameter groups), ``trainer``
(data plan, training loop, checkpoints, ``run_pretrain``).
"""
from __future__ import annotations

from pointprobe.pretrain.config import (
    PretrainConfig,
    PretrainDataConfig,
    PretrainLossConfig,
    PretrainModelConfig,
    PretrainOptimConfig,
    PretrainTrainConfig,
    validate_config,
)
from pointprobe.pretrain.model import DistillModel, build_backbone, head_in_channels, param_groups
from pointprobe.pretrain.trainer import Pretrainer, ScenePlan, SceneStore, run_pretrain

__all__ = [
    "PretrainConfig", "PretrainDataConfig", "PretrainModelConfig", "PretrainLossConfig",
    "PretrainOptimConfig", "PretrainTrainConfig",
    "validate_config", "SceneStore", "ScenePlan", "DistillModel", "Pretrainer", "run_pretrain",
    "build_backbone", "head_in_channels", "param_groups",
]
