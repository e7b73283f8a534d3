"""Pre-training config schema: the sections of ``pretrain.yaml`` and their cross-field checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError
from pointprobe.pretrain.views import ViewConfig

__all__ = ["PretrainDataConfig", "PretrainModelConfig", "PretrainLossConfig", "PretrainOptimConfig",
           "PretrainTrainConfig", "PretrainInitConfig", "PretrainExploraConfig", "PretrainConfig",
           "validate_config"]


@dataclass
class PretrainDataConfig:
    root: str = ""  # preprocessed layout: {root}/{split}/{scene}/{coord,color,normal}.npy
    split: str = "train"  # split folder the scenes are read from
    max_scenes: int = 0  # 0 = every scene of the split
    cache_in_memory: bool = True  # keep the scenes in memory after the first read


@dataclass
class PretrainModelConfig:
    backbone: str = "sparseunet"  # "sparseunet" or a name of pointprobe.models.ENCODERS (ptv3, sonata, ...)
    backbone_config: dict[str, Any] = field(default_factory=dict)  # constructor overrides
    drop_path: float = 0.3  # student; the teacher has none
    upcast_steps: int = 2  # levels up-cast (concatenated) below the deepest for the heads
    head_hidden: int = 4096
    head_bottleneck: int = 256
    num_prototypes: int = 4096
    # residual decay ("residual connections harm generative representation learning"): the identity
    # shortcuts of encoder block l (of L) weigh 1 - (1 - residual_decay) * l / (L - 1); 1.0 = off. Saved
    # in the encoder's config (encoder.pth reloads with the same forward)
    residual_decay: float = 1.0


@dataclass
class PretrainLossConfig:
    mask_weight: float = 2 / 8
    roll_weight: float = 2 / 8
    unmask_weight: float = 4 / 8
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp_base: float = 0.07
    sinkhorn_iters: int = 3
    match_radius: float = 0.32
    mask_size_start: float = 0.1
    mask_size_base: float = 0.4
    mask_ratio_start: float = 0.3
    mask_ratio_base: float = 0.7
    warmup_ratio: float = 0.05  # curriculum length (mask size / ratio, teacher temperature)
    momentum_start: float = 0.994
    momentum_end: float = 1.0
    # BFP (continual pre-training that keeps old features linearly usable): + bfp_alpha * mean over the
    # points of the local views of ||A f_new(x) - f_old(x)||_2, A a learnable linear map (identity at
    # first), f_old a frozen snapshot of the starting encoder, f the up-cast features the heads see
    bfp_alpha: float = 0.0
    bfp_lr: float = 0.0  # lr of A (0 = optim.lr)
    # iBOT (masked-point-token self-distillation, the teacher as online tokenizer): + ibot_weight x the
    # cross-entropy between the student's per-point output on the MASKED points of a masked global view
    # and the teacher's (Sinkhorn-centred) output on the unmasked same view at the same points
    ibot_weight: float = 0.0  # 0 = off
    ibot_shared_head: bool = False  # true: the mask head's prototypes; false: an own head (ibot_head)
    # DMJD (disjoint masking, joint distillation): K >= 2 complementary masks of each global view per step
    # (every point masked in exactly one of the K masked copies: mask ratio 1/K, the mask_ratio curriculum
    # is not used); the mask / roll terms (every point of every copy: the visible positions) and the iBOT
    # term (the masked positions: every point once per step) run over all K copies jointly. 1 = off
    disjoint_masks: int = 1
    # Mugs (multi-granular supervision; pointprobe.pretrain.mugs). The instance is a view (a scene crop):
    # its embedding is the mean of its up-cast point features. + mugs_weight x the weighted mean of three
    # terms, each between the student's masked global / local views and the teacher's global views of the
    # same scene: instance (InfoNCE, negatives from a queue of past teacher targets), local group (the
    # view's embedding aggregated with its top-k neighbours in a memory of past teacher view embeddings by
    # a transformer block; InfoNCE with an own negatives queue) and group (prototype assignments, teacher
    # centred and sharpened as in DINO / Mugs). Queues, memory and centre are saved in the checkpoint
    mugs_weight: float = 0.0  # 0 = off
    mugs_instance_weight: float = 1.0  # per-granularity weights (0: that head is not built)
    mugs_local_group_weight: float = 1.0
    mugs_group_weight: float = 1.0
    mugs_queue: int = 1024  # rows of each queue (instance / local-group negatives, neighbour memory)
    mugs_topk: int = 8  # neighbours aggregated into a local group
    mugs_temp: float = 0.2  # InfoNCE temperature (instance and local-group terms)
    mugs_prototypes: int = 0  # group-head prototypes (0 = model.num_prototypes)
    mugs_dim: int = 0  # instance / local-group embedding, group bottleneck width (0 = model.head_bottleneck)
    mugs_hidden: int = 0  # hidden width of the Mugs projectors (0 = model.head_hidden)
    mugs_relation_heads: int = 1  # attention heads of the local-group transformer block
    mugs_center_momentum: float = 0.9  # EMA of the teacher's group-logit centre


@dataclass
class PretrainOptimConfig:
    lr: float = 0.004
    layer_decay: float = 0.9
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.2
    pct_start: float = 0.05
    div_factor: float = 10.0
    final_div_factor: float = 1000.0
    clip_grad: float = 3.0  # 0 = off
    # prototypes are not updated during this fraction of the steps (SwAV / DINO freeze them at first):
    # with few steps it keeps the student from flattening its outputs by merging prototypes
    freeze_prototypes_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class PretrainTrainConfig:
    steps: int = 1000  # optimiser steps
    batch_size: int = 4  # scenes per optimiser step, over every rank and micro-batch
    accum_steps: int = 1  # micro-batches per step
    seed: int = 0  # seed of weights, views and data order
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (never on the CPU)
    threads: int = 0  # torch CPU threads (0 = leave as is)
    log_every: int = 10  # a log.jsonl line every N steps
    save_every: int = 200  # checkpoint + encoder.pth every N steps (0 = only at the end)
    save_every_minutes: float = 0.0  # also a checkpoint when this much time passed since the last (0 = off)
    # caught: finish the step, write a checkpoint, exit with status 3 ("interrupted, resumable")
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGINT", "SIGUSR1"])
    keep_checkpoints: int = 2  # step_N.pth files kept (at least 2: a damaged last one falls back)
    export: str = "teacher"  # teacher | student backbone written to encoder.pth
    keep_encoders: bool = False  # also keep encoders/step_N.pth at every save (probe along training)
    prefetch: bool = True  # build the next micro-batch's views in a background thread
    progress: bool = True  # progress bar (terminal) / a line every PROBESUITE_PROGRESS_SECONDS (logs)


@dataclass
class PretrainInitConfig:
    """Where the encoder starts: a file (``pretrain`` encoder.pth, a Sonata release) or random init."""

    # file or release name; "" = random init of model.backbone (with a file: arch and config from the file)
    checkpoint: str = ""
    trust_checkpoint: bool = False  # load a file that pickles classes beyond the safe list


@dataclass
class PretrainExploraConfig:
    """ExPLoRA: most of the encoder frozen; LoRA adapters, whole blocks and norms train (merged on export)."""

    enabled: bool = False  # false: every parameter trains (full (continued) pre-training)
    lora_rank: int = 8  # 0 = no adapters
    lora_alpha: float = 16.0
    # module names: PTv3 attention "qkv" (and "proj"); SparseUNet (no attention): its convs "conv1", "conv2"
    lora_targets: list[str] = field(default_factory=lambda: ["qkv"])
    unfreeze_blocks: list[str] = field(default_factory=lambda: ["-1"])  # block_layout names or indices
    train_norms: bool = True  # LayerNorm / BatchNorm / GroupNorm weights and biases of the encoder
    train_mask_token: bool = True


@dataclass
class PretrainConfig:
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)  # scenes in the preprocessed layout
    views: ViewConfig = field(default_factory=ViewConfig)  # crops, masks, augmentations
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)  # backbone and heads
    # self-distillation losses and curricula
    loss: PretrainLossConfig = field(default_factory=PretrainLossConfig)
    # AdamW with layer decay, OneCycle schedule
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)  # steps, batch, checkpoints
    init: PretrainInitConfig = field(default_factory=PretrainInitConfig)  # start from an encoder file
    explora: PretrainExploraConfig = field(default_factory=PretrainExploraConfig)  # frozen encoder + adapters
    out: str = ""  # output folder: encoder.pth, last.pth, log.jsonl, config.yaml (resumes there)


def validate_config(cfg: PretrainConfig) -> None:
    """Cross-field checks; raise ``ConfigError`` naming the key."""
    t = cfg.train
    if t.steps < 1:
        raise ConfigError("config key 'train.steps' must be >= 1")
    if t.batch_size < 1 or t.accum_steps < 1:
        raise ConfigError("config keys 'train.batch_size' and 'train.accum_steps' must be >= 1")
    if t.batch_size % t.accum_steps:
        raise ConfigError(f"config key 'train.batch_size' ({t.batch_size}) must be a multiple of "
                          f"'train.accum_steps' ({t.accum_steps})")
    if t.export not in ("teacher", "student"):
        raise ConfigError(f"config key 'train.export' must be teacher or student, got {t.export!r}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"config key 'train.device' must be auto, cpu or cuda, got {t.device!r}")
    if cfg.views.global_views < 1 or cfg.views.local_views < 0:
        raise ConfigError("config keys 'views.global_views' >= 1 and 'views.local_views' >= 0")
    if cfg.loss.roll_weight > 0 and cfg.views.global_views < 2:
        raise ConfigError("config key 'loss.roll_weight' > 0 needs views.global_views >= 2")
    if cfg.loss.unmask_weight > 0 and cfg.views.local_views < 1:
        raise ConfigError("config key 'loss.unmask_weight' > 0 needs views.local_views >= 1")
    if cfg.loss.ibot_weight < 0:
        raise ConfigError("config key 'loss.ibot_weight' must be >= 0")
    _check_mugs(cfg)
    if (cfg.loss.mask_weight + cfg.loss.roll_weight + cfg.loss.unmask_weight + cfg.loss.ibot_weight
            + cfg.loss.mugs_weight <= 0):
        raise ConfigError("config keys 'loss.*_weight': at least one must be positive")
    if cfg.loss.disjoint_masks < 1:
        raise ConfigError(f"config key 'loss.disjoint_masks' must be >= 1 (1 = off), got "
                          f"{cfg.loss.disjoint_masks}")
    if not 0.0 <= cfg.model.residual_decay <= 1.0:
        raise ConfigError(f"config key 'model.residual_decay' must be in [0, 1] (1 = off), got "
                          f"{cfg.model.residual_decay}")
    if cfg.model.upcast_steps < 0:
        raise ConfigError("config key 'model.upcast_steps' must be >= 0")
    e = cfg.explora
    if e.enabled:
        if not cfg.init.checkpoint:
            raise ConfigError("config key 'explora.enabled' needs init.checkpoint=FILE (the encoder)")
        if e.lora_rank < 0:
            raise ConfigError("config key 'explora.lora_rank' must be >= 0")
        if e.lora_rank == 0 and not e.unfreeze_blocks and not e.train_norms:
            raise ConfigError("config keys 'explora.*': nothing of the encoder would train (lora_rank 0, no "
                              "unfreeze_blocks, train_norms false)")
    if cfg.loss.bfp_alpha < 0:
        raise ConfigError("config key 'loss.bfp_alpha' must be >= 0")


def _check_mugs(cfg: PretrainConfig) -> None:
    """The ``loss.mugs_*`` keys (checked only when ``loss.mugs_weight`` > 0, except its sign)."""
    lo = cfg.loss
    if lo.mugs_weight < 0:
        raise ConfigError(f"config key 'loss.mugs_weight' must be >= 0 (0 = off), got {lo.mugs_weight}")
    if lo.mugs_weight == 0:
        return
    ws = {"mugs_instance_weight": lo.mugs_instance_weight,
          "mugs_local_group_weight": lo.mugs_local_group_weight, "mugs_group_weight": lo.mugs_group_weight}
    for k, w in ws.items():
        if w < 0:
            raise ConfigError(f"config key 'loss.{k}' must be >= 0, got {w}")
    if sum(ws.values()) <= 0:
        raise ConfigError("config keys 'loss.mugs_*_weight': with loss.mugs_weight > 0 at least one must be "
                          "positive")
    if lo.mugs_queue < 1:
        raise ConfigError(f"config key 'loss.mugs_queue' must be >= 1, got {lo.mugs_queue}")
    if not 1 <= lo.mugs_topk <= lo.mugs_queue:
        raise ConfigError(f"config key 'loss.mugs_topk' must be in [1, loss.mugs_queue={lo.mugs_queue}], got "
                          f"{lo.mugs_topk}")
    if lo.mugs_temp <= 0:
        raise ConfigError(f"config key 'loss.mugs_temp' must be > 0, got {lo.mugs_temp}")
    for k in ("mugs_prototypes", "mugs_dim", "mugs_hidden"):
        if getattr(lo, k) < 0:
            raise ConfigError(f"config key 'loss.{k}' must be >= 0 (0 = the model.head_* value), got "
                              f"{getattr(lo, k)}")
    if lo.mugs_relation_heads < 1:
        raise ConfigError(f"config key 'loss.mugs_relation_heads' must be >= 1, got {lo.mugs_relation_heads}")
    if not 0.0 <= lo.mugs_center_momentum < 1.0:
        raise ConfigError(f"config key 'loss.mugs_center_momentum' must be in [0, 1), got "
                          f"{lo.mugs_center_momentum}")
