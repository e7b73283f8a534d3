"""The tuning loop: any method of ``common.tuning.METHODS`` on any modality's task (issue 14).

A modality gives a :class:`TuneTask` (points: ``pointprobe.tune.PointTuneTask``; video:
``videoprobe.tune``); :func:`run_tuning` does the rest:

- the model being trained is a :class:`TuneModel` (``encoder.*`` + ``head.*``, or ``decoder.*`` for
  ``method=decoder``); the method is readied by :func:`common.tuning.prepare_method` with the task's
  block layout (prefixed ``encoder.``), ``always=("head.", "decoder.")`` and the task's fixed prefixes;
- ``linear``: the frozen encoder's live features train the multi-head lr x wd
  :class:`common.probes.engine.HeadGrid` (the head is chosen on ``select_split``);
- optimiser: AdamW (``full``: :func:`layerwise_lr_groups`; ``progressive``: :class:`ProgressiveSchedule`
  with discriminative lrs; ``mezo``: :class:`MeZO`), warm-up + cosine (:func:`lr_factor`), gradient
  accumulation, bf16 autocast on CUDA;
- DDP without a wrapper: every rank takes its shard of the global batch (``task.train_batches``), the
  loss is the sum over the rank's labelled rows divided by the global number of labelled rows, and the
  gradients are summed over ranks (``all_reduce``): the same step as one process with the global batch.
  The encoder runs in eval mode (BatchNorm statistics and drop path fixed), so a batch's split over
  ranks does not change its features;
- checkpoints ``<run>/last.pth`` every ``save_every`` steps (trainable state, optimiser, step): a rerun
  resumes exactly (batches are keyed by (seed, epoch, index), dropout by (seed, step));
- evaluation: scores accumulated per head and reduced over ranks; adapters merged first;
- the result row (cost: :class:`TuneCost`, its peak memory read as the training ends, before any
  evaluation; metric; encoder checkpoint hash; config hash) merged into
  ``OUT/tune_results.{md,json}`` and the ladder plot ``OUT/ladder.png`` (metric vs trainable parameters).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from common import dist
from common.checkpoint import load_checkpoint, save_checkpoint
from common.config import config_hash, save_config
from common.errors import CheckpointError, ConfigError, InputError
from common.probes.engine import HeadGrid, Scorer, lr_factor
from common.progress import progress
from common.tuning.cost import PeakMemory, StepTimer, TuneCost, count_parameters
from common.tuning.lora import LoraOptions
from common.tuning.methods import Prepared, check_method, get_method, prepare_method
from common.tuning.mezo import MeZO
from common.tuning.trainable import (
    ProgressiveSchedule,
    discriminative_lrs,
    layerwise_lr_groups,
)

log = logging.getLogger(__name__)

ALWAYS = ("head.", "decoder.")
RESULTS = "tune_results"


# ------------------------------------------------------------------------------------------- contract
@dataclass
class TuneBatch:
    """One batch: ``inputs`` for ``task.features``; ``labels`` (N,) int64 (-1 ignored); ``groups`` (N,)
    int64 scene / video id (a video's views are averaged when scoring). ``expand`` (evaluation, optional):
    (N,) int64, the row of the model's output that scores each label row (points: the grid-sampled voxel
    of every input point); the loop then scores the label rows in chunks of ``eval_chunk`` rows, so
    full-resolution features are never held at once (None: output rows are the label rows)."""

    inputs: Any
    labels: torch.Tensor
    groups: np.ndarray
    expand: torch.Tensor | None = None


class TuneTask(Protocol):
    """What a modality gives the loop (see the module docstring and docs of each method)."""

    modality: str  # "points" | "video"
    metric: str  # "miou" (segmentation: confusion over rows) | "top1" (classification per group)
    class_names: list[str]

    def build_encoder(self, device: torch.device) -> tuple[nn.Module, dict]:
        """The live encoder and its record {"encoder", "checkpoint", "checkpoint_sha256"}."""

    def blocks(self, encoder: nn.Module) -> list[tuple[str, list[str]]]:
        """Ordered blocks (input side first) as (name, parameter-name prefixes of the encoder)."""

    def fixed(self, encoder: nn.Module) -> list[str]:
        """Parameter prefixes of the encoder that never train."""

    def feature_dim(self, encoder: nn.Module) -> int: ...

    def train_batches(self, epoch: int, rank: int, world: int) -> Iterator[TuneBatch]:
        """Augmented batches of one epoch; rank ``rank`` of ``world`` gets its shard of every global
        batch (the same number of batches on every rank)."""

    def eval_batches(self, split: str, rank: int, world: int) -> Iterator[TuneBatch]:
        """Full-resolution batches of ``split`` (this rank's share)."""

    def features(self, encoder: nn.Module, inputs: Any) -> torch.Tensor:
        """(N, D) feature rows aligned with the batch's labels (differentiable)."""

    def decoder(self, encoder: nn.Module, num_classes: int) -> nn.Module | None:
        """``method=decoder``: a module mapping ``inputs`` to logits (N, num_classes); it runs the frozen
        ``encoder`` itself (held, not registered as a submodule). None: unsupported."""


# --------------------------------------------------------------------------------------------- config
@dataclass
class TuneSettings:
    """Settings of the tuning loop (section ``tune`` of ``pointprobe tune`` / ``videoprobe tune``)."""

    method: str = "linear"  # linear | decoder | ssf | lora | last_k | progressive | full | mezo | prompt
    over: str | None = None  # mezo: the trainable set it tunes (ssf | lora | last_k | full)
    steps: int = 200  # optimizer steps
    warmup: int = 10  # linear lr warm-up steps, then cosine to 0
    accum: int = 1  # gradient accumulation: micro-batches per optimizer step
    lr: float = 1e-3  # lr of the encoder's trainable part (adapters, blocks); full: block i of n gets
    #                   lr * layer_decay ** (n - i)
    head_lr: float = 1e-3  # lr of the head / decoder
    weight_decay: float = 0.01
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2])  # linear: grid of lrs
    wds: list[float] = field(default_factory=lambda: [0.0, 1e-3])  # linear: grid of weight decays
    k: int = 2  # last_k: number of trailing blocks that train
    layer_decay: float = 0.75  # full: layer-wise lr decay per block
    progressive_at: list[float] = field(default_factory=lambda: [0.25, 0.5])  # stage start fractions
    progressive_factor: float = 0.5  # discriminative lr factor between successive stages
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv"])
    mezo_eps: float = 1e-3
    mezo_lr: float = 1e-4
    # LP-FT (Kumar et al. 2022): a linear probe file written by `pointprobe probe` (probe_*.pt, the cached
    # linear probe of the same encoder and label set): the head (its standardisation and weights) starts
    # from it instead of a random init; for the methods with the loop's linear head (ssf, lora, last_k,
    # progressive, full, mezo). null: random head, standardisation estimated from training batches
    head_init: str | None = None
    norm_batches: int = 4  # training batches that estimate the feature standardisation
    save_every: int = 50  # checkpoint every N steps (and at the end)
    # preemption: these signals finish the step in progress, write last.pth and stop (exit status 3);
    # the same command then resumes exactly
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGINT", "SIGUSR1"])
    seed: int = 0
    # evaluation: label rows (full-resolution points) gathered and scored per chunk when the task gives
    # ``TuneBatch.expand``; bounds the memory of a large scene (0 = all rows at once)
    eval_chunk: int = 262144
    select_split: str = "val"  # linear: the head of the grid is chosen on this split
    eval_split: str = "val"  # the split reported
    autocast: bool = True  # bf16 autocast on CUDA
    progress: bool = True


def method_tag(s: TuneSettings) -> str:
    """The row's method name: ``mezo-<over>`` for mezo; ``+lp-ft`` when the head starts from a probe."""
    tag = f"mezo-{s.over}" if s.method == "mezo" else s.method
    return f"{tag}+lp-ft" if s.head_init else tag


HEAD_INIT_METHODS = ("ssf", "lora", "last_k", "progressive", "full", "mezo")


def load_head_init(settings: TuneSettings, class_names: Sequence[str] | None = None,
                   dim: int | None = None) -> dict:
    """The head of ``settings.head_init`` (a ``pointprobe probe`` linear probe file, read safely through
    :mod:`common.checkpoint`) as {"mean", "std", "weight", "bias"}; one-line errors for a method without
    the loop's linear head (ConfigError), and for a file whose normalisation, classes or width do not fit
    (InputError naming the file)."""
    from common.probes.linear import load_probe

    path = settings.head_init
    if settings.method not in HEAD_INIT_METHODS:
        raise ConfigError(f"tune: head_init is for the methods with the loop's linear head "
                          f"({', '.join(HEAD_INIT_METHODS)}), not '{settings.method}'")
    p = load_probe(path)
    w, b = p.state_dict["weight"].float(), p.state_dict["bias"].float()
    mode = p.norm.get("mode")
    if mode not in ("standardize", "none"):
        raise InputError(path, f"head_init: the probe's normalisation is {mode!r}; only 'standardize' or "
                               "'none' map onto the tuned head")
    if class_names is not None and p.class_names is not None and list(p.class_names) != list(class_names):
        raise InputError(path, f"head_init: the probe's {len(p.class_names)} classes are not the task's "
                               f"{len(class_names)} (another label set?)")
    if class_names is not None and w.shape[0] != len(class_names):
        raise InputError(path, f"head_init: the probe has {w.shape[0]} classes, the task {len(class_names)}")
    if dim is not None and w.shape[1] != dim:
        raise InputError(path, f"head_init: the probe reads {w.shape[1]}-d features, the encoder gives {dim} "
                               "(another encoder or levels?)")
    if mode == "none":
        mean, std = torch.zeros(w.shape[1]), torch.ones(w.shape[1])
    else:
        mean, std = p.norm["mean"].float(), p.norm["std"].float()
    return {"mean": mean, "std": std, "weight": w, "bias": b}


# ---------------------------------------------------------------------------------------------- model
class FeatureNorm(nn.Module):
    """Fixed standardisation of the features (buffers estimated once from training batches)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Head(nn.Module):
    """Standardisation + one linear layer."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = FeatureNorm(dim)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.float()))


class TuneModel(nn.Module):
    """``encoder`` + ``head`` (or ``decoder``): one module so trainable sets, checkpoints and merges see
    one parameter namespace (``encoder.*``, ``head.*``, ``decoder.*``)."""

    def __init__(self, task: TuneTask, encoder: nn.Module, head: nn.Module | None, decoder: nn.Module | None):
        super().__init__()
        self.task = [task]  # not a module
        self.encoder = encoder
        self.head = head
        self.decoder = decoder

    def logits(self, inputs: Any) -> torch.Tensor:
        if self.decoder is not None:
            return self.decoder(inputs).float()
        return self.head(self.task[0].features(self.encoder, inputs))


# ------------------------------------------------------------------------------------------- helpers
def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _grid_state(g: HeadGrid) -> dict:
    out = {k: getattr(g, k).cpu().clone() for k in ("W", "b", "mW", "mb", "vW", "vb") if hasattr(g, k)}
    out["t"] = g.t
    return out


def _load_grid(g: HeadGrid, st: dict) -> None:
    for k, v in st.items():
        if k == "t":
            g.t = int(v)
        else:
            getattr(g, k).copy_(v)


def reduce_scorer(s: Scorer) -> Scorer:
    """Sum a scorer's counts over ranks (every rank then holds the global scores)."""
    if not dist.is_distributed():
        return s
    for name in ("conf", "top5", "loss"):
        dist.all_reduce_tensor(getattr(s, name))
    counts = torch.tensor([s.n, s.n_rows], dtype=torch.int64)
    dist.all_reduce_tensor(counts)
    s.n, s.n_rows = int(counts[0]), int(counts[1])
    if s.view_average:
        dist.all_reduce_tensor(s.prob_sum)
        gl = torch.from_numpy(s.group_label.copy())
        dist.all_reduce_tensor(gl, "max")
        s.group_label = gl.numpy()
    return s


def _metric(row: dict, metric: str) -> float:
    return float(row["mIoU"] if metric == "miou" else row["top1"])


def block_layout(task: TuneTask, encoder: nn.Module) -> list[tuple[str, list[str]]]:
    """The task's blocks with names relative to the :class:`TuneModel` (``encoder.`` prefixed)."""
    return [(b, [f"encoder.{p}" for p in ps]) for b, ps in task.blocks(encoder)]


# ----------------------------------------------------------------------------------------------- run
@dataclass
class TuneRun:
    """State of one run (what a checkpoint holds lives in :meth:`Tuner.state`)."""

    step: int = 0
    history: list[dict] = field(default_factory=list)


class Tuner:
    """One tuning run of ``settings.method`` on ``task`` (see the module docstring)."""

    def __init__(self, task: TuneTask, settings: TuneSettings, run_dir: str | Path, device: torch.device,
                 cfg_hash: str = ""):
        self.task, self.s, self.device = task, settings, device
        self.run_dir = Path(run_dir)
        self.cfg_hash = cfg_hash
        self.rank, self.world = dist.rank(), dist.world_size()
        self.method = get_method(settings.method)
        torch.manual_seed(settings.seed)
        encoder, self.record = task.build_encoder(device)
        encoder.to(device)
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.encoder_initial = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
        self.encoder_params = count_parameters(encoder.parameters())
        self.num_classes = len(task.class_names)
        label_map = self._prepare_prompt(encoder) if settings.method == "prompt" else None
        dim = task.feature_dim(encoder)
        self.grid: HeadGrid | None = None
        head = decoder = None
        torch.manual_seed(settings.seed + 1)
        if settings.method == "linear":
            head = Head(dim, self.num_classes)  # only its norm is used; the grid holds the heads
            n = len(settings.lrs) * len(settings.wds)
            lrs = [lr for lr in settings.lrs for _ in settings.wds]
            wds = [wd for _ in settings.lrs for wd in settings.wds]
            self.grid = HeadGrid(dim, self.num_classes, lrs, wds, device=device)
            self.grid_labels = [f"lr={lr:g} wd={wd:g}" for lr, wd in zip(lrs, wds)]
            assert self.grid.H == n
        elif settings.method == "decoder":
            decoder = task.decoder(encoder, self.num_classes)
            if decoder is None:
                raise ConfigError(f"tune: method=decoder is not supported by the {task.modality} task")
        else:  # prompt with a linear / flm label map: the map is the head (on source logits, unstandardised)
            head = label_map if label_map is not None else Head(dim, self.num_classes)
        head_from_probe = False
        if settings.head_init:  # LP-FT: the head starts as the trained linear probe (norm and weights)
            init = load_head_init(settings, task.class_names, dim)
            with torch.no_grad():
                head.norm.mean.copy_(init["mean"])
                head.norm.std.copy_(init["std"])
                head.linear.weight.copy_(init["weight"])
                head.linear.bias.copy_(init["bias"])
            head_from_probe = True
        self.model = TuneModel(task, encoder, head, decoder).to(device)
        self.blocks = block_layout(task, encoder)
        fixed = [f"encoder.{p}" for p in task.fixed(encoder)]
        lora = LoraOptions(settings.lora_rank, settings.lora_alpha, settings.lora_dropout,
                           tuple(settings.lora_targets))
        base = settings.over if settings.method == "mezo" else settings.method
        self.schedule: ProgressiveSchedule | None = None
        gen = torch.Generator().manual_seed(settings.seed + 2)
        self.prepared: Prepared = prepare_method(
            self.model, settings.method, self.blocks, k=settings.k, always=ALWAYS, fixed=fixed,
            over=settings.over, lora=lora, generator=gen)
        self.model.to(device)
        if base == "progressive":
            self.schedule = ProgressiveSchedule(self.model, self.blocks, self._stages(), settings.head_lr,
                                                always=ALWAYS, fixed=fixed)
            self.schedule.apply(0, settings.steps)
        self.trainable = list(self.prepared.trainable) if self.schedule is None else \
            self.schedule.trainable_at(settings.steps - 1, settings.steps)
        self.opt: torch.optim.Optimizer | None = None
        self.mezo: MeZO | None = None
        named = dict(self.model.named_parameters())
        if settings.method == "linear":
            pass
        elif self.method.zeroth_order:
            self.mezo = MeZO([named[n] for n in self.prepared.trainable], settings.mezo_lr, settings.mezo_eps,
                             seed=settings.seed, weight_decay=0.0)
        elif base == "full":
            groups = layerwise_lr_groups(self.model, self.blocks, settings.lr, settings.layer_decay,
                                         always=ALWAYS, weight_decay=settings.weight_decay, fixed=fixed,
                                         head_lr=settings.head_lr)
            self.opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "param_names"} for g in groups])
        elif self.schedule is not None:
            self.opt = torch.optim.AdamW(self.schedule.optimizer_groups(settings.weight_decay))
        else:
            enc = [named[n] for n in self.prepared.trainable if not n.startswith(ALWAYS)]
            hd = [named[n] for n in self.prepared.trainable if n.startswith(ALWAYS)]
            groups = [g for g in ({"params": enc, "lr": settings.lr}, {"params": hd, "lr": settings.head_lr})
                      if g["params"]]
            self.opt = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
        if self.opt is not None:
            for g in self.opt.param_groups:
                g["base_lr"] = g["lr"]
        self.state = TuneRun()
        self.interrupted: str | None = None  # the signal that stopped :meth:`train`
        self.norm_ready = head_from_probe  # a head from a probe keeps that probe's standardisation
        self.memory = PeakMemory(device)
        self.train_peak: int | None = None  # bytes: peak memory of the training steps (all sessions)
        self.timer = StepTimer(device)

    # -- setup ---------------------------------------------------------------------------------
    def _stages(self) -> list[tuple[float, list[str], float]]:
        """Blocks split into len(progressive_at) stages from the output side, each with its lr."""
        names = [b for b, _ in self.blocks]
        at = sorted(self.s.progressive_at)
        if not at or len(at) > len(names):
            raise ConfigError(f"tune: progressive_at needs 1..{len(names)} fractions, got {at}")
        chunks = np.array_split(np.arange(len(names))[::-1], len(at))
        lrs = discriminative_lrs(self.s.lr, len(at), self.s.progressive_factor)
        return [(a, [names[i] for i in sorted(c)], lr) for a, c, lr in zip(at, chunks, lrs)]

    def _prepare_prompt(self, encoder: nn.Module) -> nn.Module | None:
        """method=prompt: the task injects its input prompt into ``encoder`` (``task.prepare_prompt``) and
        returns the output label map to use as the head (None: the loop's standardised linear head)."""
        prepare = getattr(self.task, "prepare_prompt", None)
        if prepare is None:
            raise ConfigError(f"tune: method=prompt is not supported by the {self.task.modality} task "
                              f"(input prompts are for video and frame-wise image encoders)")
        return prepare(encoder)

    def _batches(self) -> Iterator[tuple[int, TuneBatch]]:
        """(epoch, batch) forever, epoch by epoch."""
        epoch = 0
        while True:
            n = 0
            for b in self.task.train_batches(epoch, self.rank, self.world):
                n += 1
                yield epoch, b
            if n == 0:
                raise ConfigError("tune: the training split yields no batches")
            epoch += 1

    def _features(self, inputs: Any, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), _autocast(self.device, self.s.autocast):
            return self.task.features(self.model.encoder, inputs)

    @torch.no_grad()
    def estimate_norm(self) -> None:
        """Feature mean / std from the first ``norm_batches`` training batches (of epoch 0, over ranks)."""
        head = self.model.head
        if head is None or not isinstance(getattr(head, "norm", None), FeatureNorm):
            # a decoder, or a prompt's label map (FLM reads source logits as they are: no standardisation)
            self.norm_ready = True
            return
        s1 = s2 = None
        cnt = torch.zeros(1, dtype=torch.float64)
        for i, b in enumerate(self.task.train_batches(0, self.rank, self.world)):
            if i >= self.s.norm_batches:
                break
            x = self._features(b.inputs, False).double().cpu()
            x = x[b.labels.cpu() >= 0]
            s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
            s2 = (x * x).sum(0) if s2 is None else s2 + (x * x).sum(0)
            cnt += x.shape[0]
        if s1 is None:
            raise ConfigError("tune: no training batches to estimate the feature standardisation from")
        for t in (s1, s2, cnt):
            dist.all_reduce_tensor(t)
        mean = s1 / cnt.clamp_min(1)
        std = (s2 / cnt.clamp_min(1) - mean * mean).clamp_min(0).sqrt()
        # a channel constant on these batches (a dead / saturated unit) is centred, not scaled (as
        # sklearn's StandardScaler): a 1e-6 floor would multiply any later change of it by 1e6 once the
        # encoder trains (the x3d_s MeZO / SSF blow-up of issue 14's video bench)
        std = torch.where(std > 1e-6 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        head.norm.mean.copy_(mean.float())
        head.norm.std.copy_(std.float())
        self.norm_ready = True

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "last.pth"

    def checkpoint_state(self) -> dict:
        st: dict[str, Any] = {
            "kind": "tune", "method": method_tag(self.s), "config_hash": self.cfg_hash,
            "step": self.state.step,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "trainable": self.trainable, "history": self.state.history, "record": dict(self.record),
            "train_peak_memory_bytes": self._train_peak(),
        }
        if self.opt is not None:
            st["optimizer"] = self.opt.state_dict()
        if self.mezo is not None:
            st["mezo"] = self.mezo.state_dict()
        if self.grid is not None:
            st["grid"] = _grid_state(self.grid)
        return st

    def save(self) -> None:
        if dist.is_main():
            save_checkpoint(self.checkpoint_state(), self.ckpt_path, keep_previous=True)
        dist.barrier()

    def resume(self) -> bool:
        """Load ``last.pth`` of this run folder when present; True when resumed."""
        if not self.ckpt_path.is_file():
            return False
        st = load_checkpoint(self.ckpt_path, trust=True, hint=None)
        if not isinstance(st, dict) or st.get("kind") != "tune":
            raise CheckpointError(f"{self.ckpt_path}: not a tuning checkpoint")
        if st.get("config_hash") != self.cfg_hash:
            raise CheckpointError(f"{self.ckpt_path}: written by another configuration (config hash "
                                  f"{st.get('config_hash')} != {self.cfg_hash}); give a new out")
        self.model.load_state_dict(st["model"])
        if self.opt is not None:
            self.opt.load_state_dict(st["optimizer"])
        if self.mezo is not None:
            self.mezo.load_state_dict(st["mezo"])
        if self.grid is not None:
            _load_grid(self.grid, st["grid"])
        self.state.step = int(st["step"])
        self.state.history = list(st["history"])
        self.train_peak = st.get("train_peak_memory_bytes")  # the earlier sessions' training peak
        self.norm_ready = True
        return True

    # -- training ------------------------------------------------------------------------------
    def _train_peak(self) -> int | None:
        """The training peak so far: the larger of the earlier sessions' and this one's (when it trained)."""
        now = self.memory.peak() if self.memory.started else None
        peaks = [p for p in (self.train_peak, now) if p is not None]
        return max(peaks) if peaks else None

    def _global_rows(self, y: torch.Tensor) -> float:
        n = torch.tensor([float((y >= 0).sum())], dtype=torch.float64)
        return float(dist.all_reduce_tensor(n)[0])

    def _loss(self, b: TuneBatch) -> tuple[torch.Tensor, float]:
        """Sum of the cross-entropy over this rank's labelled rows / global labelled rows."""
        y = b.labels.to(self.device)
        n = self._global_rows(y)
        with _autocast(self.device, self.s.autocast):
            z = self.model.logits(b.inputs)
        loss = nn.functional.cross_entropy(z.float(), y, ignore_index=-1, reduction="sum")
        return loss / max(n, 1.0), n

    def _linear_step(self, micro: list[TuneBatch], f: float) -> float:
        xs, ys = [], []
        for b in micro:
            x = self.model.head.norm(self._features(b.inputs, False).float())
            keep = b.labels.to(x.device) >= 0
            xs.append(x[keep])
            ys.append(b.labels.to(x.device)[keep])
        x, y = torch.cat(xs), torch.cat(ys)
        if dist.is_distributed():  # the global batch on every rank: the grid's step is then identical
            parts = dist.all_gather_object((x.cpu(), y.cpu()))
            x = torch.cat([p[0] for p in parts]).to(self.device)
            y = torch.cat([p[1] for p in parts]).to(self.device)
        if x.shape[0] == 0:
            return float("nan")
        return float(self.grid.train_step(x, y, f).mean())

    def _allreduce_grads(self) -> None:
        """Sum gradients over ranks; a parameter without a gradient on every rank keeps ``grad None``
        (as in one process: the optimizer then skips it, weight decay included)."""
        if not dist.is_distributed():
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int64)
        dist.all_reduce_tensor(has)
        for p, h in zip(params, has.tolist()):
            if h == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce_tensor(p.grad)

    def train_step(self, micro: list[TuneBatch]) -> float:
        s = self.s
        step = self.state.step
        f = lr_factor(step, s.steps, s.warmup)
        torch.manual_seed(s.seed * 1_000_003 + step)  # dropout etc.: keyed by the step (exact resume)
        if self.grid is not None:
            return self._linear_step(micro, f)
        self.model.train()
        self.model.encoder.eval()  # BatchNorm statistics and drop path fixed (see the module docstring)
        if self.mezo is not None:
            self.mezo.lr = s.mezo_lr * f

            def closure() -> float:
                tot = torch.zeros(1, dtype=torch.float64)
                for b in micro:
                    loss, _ = self._loss(b)
                    tot += float(loss)
                return float(dist.all_reduce_tensor(tot)[0]) / len(micro)

            return self.mezo.step(closure)
        if self.schedule is not None:
            self.schedule.apply(step, s.steps)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for b in micro:
            loss, _ = self._loss(b)
            (loss / len(micro)).backward()
            total += float(loss.detach())
        self._allreduce_grads()
        self.opt.step()
        t = torch.tensor([total / len(micro)], dtype=torch.float64)
        return float(dist.all_reduce_tensor(t)[0])

    def train(self, max_steps: int | None = None) -> None:
        """Train until ``steps`` (or ``max_steps`` more); checkpoints every ``save_every`` steps."""
        s = self.s
        if not self.norm_ready:
            self.estimate_norm()
        end = s.steps if max_steps is None else min(s.steps, self.state.step + max_steps)
        if self.state.step >= end:
            return
        self.memory.start()
        bar = progress(total=s.steps, initial=self.state.step, desc=f"tune {method_tag(s)}", unit="step",
                       disable=not (s.progress and dist.is_main()))
        batches = self._batches()
        for _ in range(self.state.step * s.accum):  # resume: the batches already used
            next(batches)
        logf = open(self.run_dir / "log.jsonl", "a") if dist.is_main() else None
        self.interrupted = None
        signals = dist.StopSignals(s.stop_signals)
        try:
            signals.__enter__()
            while self.state.step < end:
                micro = [next(batches)[1] for _ in range(s.accum)]
                with self.timer:
                    loss = self.train_step(micro)
                if not math.isfinite(loss) and self.grid is None:
                    raise ConfigError(f"tune: loss became {loss} at step {self.state.step}; lower the lr")
                self.state.step += 1
                m = {"step": self.state.step, "loss": loss, "step_time": self.timer.times[-1]}
                self.state.history.append(m)
                if logf is not None:
                    logf.write(json.dumps(m) + "\n")
                    logf.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                saved = self.state.step % max(s.save_every, 1) == 0 or self.state.step == s.steps
                if saved:
                    self.save()
                stop, _ = signals.poll()
                if stop:  # every rank stops after this same step (see common.dist.StopSignals)
                    if not saved:
                        self.save()
                    self.interrupted = signals.received or "a signal to another rank"
                    break
        finally:
            self.train_peak = self._train_peak()  # read as the training ends: evaluation does not count
            signals.__exit__(None, None, None)
            bar.close()
            if logf is not None:
                logf.close()

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> list[dict]:
        """Scores of every head (linear: the grid; otherwise one) on ``split``, over all ranks."""
        self.model.eval()
        task = "segmentation" if self.task.metric == "miou" else "classification"
        H = self.grid.H if self.grid is not None else 1
        batches = list(self.task.eval_batches(split, self.rank, self.world)) if task == "classification" \
            else None
        groups = None
        if batches is not None:
            local = np.concatenate([b.groups for b in batches]) if batches else np.zeros(0, np.int64)
            groups = np.unique(np.concatenate(dist.all_gather_object(local)))
        scorer = Scorer(H, self.num_classes, task, groups is not None, groups)
        for b in batches if batches is not None else self.task.eval_batches(split, self.rank, self.world):
            if self.grid is not None:
                x = self.model.head.norm(self._features(b.inputs, False).float())
                z = self.grid.logits(x)
            else:
                with _autocast(self.device, self.s.autocast):
                    z = self.model.logits(b.inputs).float()[:, None, :]
            y_all, g_all = b.labels.cpu(), np.asarray(b.groups)
            n = len(y_all)
            step = n if b.expand is None or self.s.eval_chunk <= 0 else self.s.eval_chunk
            for lo in range(0, max(n, 1), max(step, 1)):
                y, g = y_all[lo:lo + step], g_all[lo:lo + step]
                zc = z[lo:lo + step] if b.expand is None else z[b.expand[lo:lo + step].to(z.device)]
                keep = y >= 0
                scorer.add(zc[keep.to(zc.device)], y[keep], g[keep.numpy()])
        return reduce_scorer(scorer).result()

    def merge(self) -> int:
        return self.prepared.merge(self.model)

    def cost(self) -> TuneCost:
        named = dict(self.model.named_parameters())
        enc_train = count_parameters(named[n] for n in self.trainable if n.startswith("encoder."))
        head_train = count_parameters(named[n] for n in self.trainable if n.startswith(ALWAYS))
        if self.grid is not None:
            head_train = self.grid.D * self.num_classes + self.num_classes  # one head of the grid
        return TuneCost(method=method_tag(self.s), trainable_params=enc_train + head_train,
                        encoder_trainable_params=enc_train, encoder_params=self.encoder_params,
                        trainable_pct=100.0 * enc_train / max(self.encoder_params, 1),
                        peak_memory_bytes=self.train_peak, memory_kind=self.memory.kind,
                        process_peak_memory_bytes=self.memory.process_peak(),
                        steps=len(self.timer.times), step_time_s=self.timer.mean,
                        total_time_s=self.timer.total)


def run_tuning(task: TuneTask, settings: TuneSettings, out: str | Path, cfg: Any = None,
               device: torch.device | None = None, max_steps: int | None = None) -> dict:
    """Train (or resume) ``settings.method`` on ``task``, evaluate, write the result row.

    Run state lives in ``OUT/runs/<method>-<config hash>/`` (``last.pth``, ``log.jsonl``,
    ``config.yaml``, ``tuned.pth``: the final model, adapters merged); the resolved config is also
    ``OUT/tune_results_<method>.yaml``; the row is merged into ``OUT/tune_results.{md,json}`` (one row
    per method and encoder) and ``OUT/ladder.png``. ``max_steps``: stop after that many steps (no
    evaluation; for tests of resume). Returns the row (or ``{"stopped_at": step}``; stopped by one of
    ``settings.stop_signals``: ``{"interrupted": signal name, "stopped_at": step}`` after saving).
    """
    out = Path(out)
    device = device or torch.device("cpu")
    # refuse an unknown method / mezo set before anything is written (a refused command leaves no files)
    check_method(settings.method, settings.over)
    if settings.head_init:
        load_head_init(settings)
    h = config_hash(cfg if cfg is not None else settings)
    run_dir = out / "runs" / f"{method_tag(settings)}-{h}"
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg is not None:  # in the run folder and next to the results table
            save_config(cfg, run_dir / "config.yaml")
            save_config(cfg, out / f"{RESULTS}_{method_tag(settings)}.yaml")
    dist.barrier()
    tuner = Tuner(task, settings, run_dir, device, h)
    resumed = tuner.resume()
    if resumed and dist.is_main():
        log.info("tune: resumed %s at step %d", run_dir, tuner.state.step)
    t0 = time.perf_counter()
    tuner.train(max_steps)
    if tuner.interrupted is not None:
        return {"interrupted": tuner.interrupted, "stopped_at": tuner.state.step, "run_dir": str(run_dir)}
    if tuner.state.step < settings.steps:
        return {"stopped_at": tuner.state.step, "run_dir": str(run_dir)}
    head = 0
    chosen = ""
    if tuner.grid is not None:
        sel = tuner.evaluate(settings.select_split)
        ok = ~tuner.grid.diverged().numpy()
        vals = [(_metric(r, task.metric) if ok[i] else -1.0) for i, r in enumerate(sel)]
        head = int(np.argmax(vals))
        chosen = tuner.grid_labels[head]
    cost = tuner.cost()  # before the merge: adapter parameters count as trainable
    merged = tuner.merge()
    res = tuner.evaluate(settings.eval_split)[head]
    metric_name = "mIoU" if task.metric == "miou" else "top1"
    row = {
        "method": method_tag(settings), "encoder": tuner.record.get("encoder"),
        "trainable_params": cost.trainable_params, "encoder_trainable_params": cost.encoder_trainable_params,
        "trainable_pct": cost.trainable_pct, "peak_memory_mb": (cost.peak_memory_bytes or 0) / 2**20,
        "memory_kind": cost.memory_kind,
        "process_peak_memory_mb": (cost.process_peak_memory_bytes or 0) / 2**20,
        "step_time_s": cost.step_time_s, "total_time_s": cost.total_time_s,
        "steps": settings.steps, metric_name: 100.0 * _metric(res, task.metric),
        "split": settings.eval_split, "head": chosen, "merged_adapters": merged,
        "checkpoint_sha256": tuner.record.get("checkpoint_sha256"), "config_hash": h,
        "head_init": settings.head_init,
        "wall_s": time.perf_counter() - t0, "resumed": resumed,
    }
    if dist.is_main():
        final = {"model": {k: v.detach().cpu() for k, v in tuner.model.state_dict().items()},
                 "record": dict(tuner.record), "method": method_tag(settings), "row": row}
        save_checkpoint(final, run_dir / "tuned.pth")
        write_results(out, [row], task.modality)
    dist.barrier()
    return row


# ------------------------------------------------------------------------------------------ results
COLUMNS = ["method", "encoder", "mIoU", "top1", "trainable_params", "trainable_pct", "peak_memory_mb",
           "step_time_s", "total_time_s", "steps", "split", "checkpoint_sha256", "config_hash"]


def write_results(out: str | Path, rows: Sequence[dict], modality: str = "") -> tuple[Path, Path]:
    """Merge ``rows`` into ``OUT/tune_results.{md,json}`` (a row replaces the one of the same method,
    encoder and checkpoint) and redraw ``OUT/ladder.png``."""
    from common.report import write_table

    out = Path(out)
    path = out / f"{RESULTS}.json"
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    key = lambda r: (r.get("method"), r.get("encoder"), r.get("checkpoint_sha256"))  # noqa: E731
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + list(rows)
    cols = [c for c in COLUMNS if any(c in r for r in merged)]
    md_rows = []
    for r in merged:
        m = {c: r.get(c) for c in cols}
        if m.get("checkpoint_sha256"):
            m["checkpoint_sha256"] = str(m["checkpoint_sha256"])[:12]
        md_rows.append(m)
    paths = write_table(merged, out / RESULTS, f"{modality or 'tuning'}: the tuning ladder", columns=cols,
                        md_rows=md_rows, float_format=".4g",
                        footnotes=["trainable_pct: encoder parameters that train (adapters included) as a "
                                   "percentage of the encoder's own parameters; the head is not counted",
                                   "peak_memory_mb: peak of the training steps (read before evaluation): "
                                   "peak RSS during training on the CPU (absolute: the frozen weights and "
                                   "the data resident at its start count; memory_kind cpu_max_rss_process: "
                                   "the whole process's peak, where it cannot be reset), max allocated on "
                                   "CUDA"])
    try:
        ladder_plot(merged, out / "ladder.png")
    except Exception as e:  # noqa: BLE001 - a missing plotting backend must not lose the table
        log.warning("tune: no ladder plot (%s)", e)
    return paths


def _spread_labels(fig: Any, ax: Any, labels: list[Any], points: list[tuple[float, float]],
                   gap_px: float = 2.0, marker_px: float = 5.0) -> None:
    """Move the labels vertically (display units) so that no two bounding boxes intersect and none
    covers a marker: from the highest point down, each label takes the smallest shift (up or down, inside
    the axes where possible) that clears the labels placed so far and every marker. A thin leader line
    (the annotation's arrow) ties a moved label to its point."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    def extent(a: Any) -> Any:  # the text only (an Annotation's own extent includes its leader line)
        return Text.get_window_extent(a, r)

    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = ax.get_window_extent(r)
    obstacles = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        obstacles.append(Bbox([[px - marker_px, py - marker_px], [px + marker_px, py + marker_px]]))

    def clash(b: Any, dy: float) -> bool:
        return any(b.x0 < o.x1 and o.x0 < b.x1 and b.y0 + dy < o.y1 + gap_px and o.y0 < b.y1 + dy + gap_px
                   for o in obstacles)

    for i in sorted(range(len(labels)), key=lambda i: -extent(labels[i]).y0):
        bb = extent(labels[i])
        cands = sorted({0.0} | {o.y1 + gap_px - bb.y0 for o in obstacles}
                       | {o.y0 - gap_px - bb.y1 for o in obstacles}, key=abs)
        free = [d for d in cands if not clash(bb, d)]  # never empty: above the highest obstacle is free
        inside = [d for d in free if bb.y0 + d >= box.y0 and bb.y1 + d <= box.y1]
        dy = (inside or free)[0]
        if dy:
            x, y = labels[i].xyann
            labels[i].xyann = (x, y + dy)
        obstacles.append(extent(labels[i]))


def ladder_figure(rows: Sequence[dict]) -> tuple[Any, list[Any]]:
    """The ladder figure: metric against trainable parameters (log x), one marker per row, labelled by
    method; labels do not overlap (:func:`_spread_labels`), the legend sits below the axes. Returns
    (figure, the label artists)."""
    from common.report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))

    def who(r: dict) -> str:
        return f"{r.get('encoder')} {str(r.get('checkpoint_sha256', ''))[:8]}"

    labels = []
    encs = sorted({who(r) for r in rows})
    for i, enc in enumerate(encs):
        sel = [r for r in rows if who(r) == enc]
        xs = [max(int(r["trainable_params"]), 1) for r in sel]
        ys = [float(r.get("mIoU", r.get("top1", 0.0)) or 0.0) for r in sel]
        ax.scatter(xs, ys, color=f"C{i % 10}", label=enc, zorder=3)
        for x, y, r in zip(xs, ys, sel):
            labels.append((x, y, str(r["method"]), f"C{i % 10}"))
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.15)
    ax.set_xlabel("trainable parameters (head included)")
    ax.set_ylabel("mIoU / top-1 (%)")
    ax.set_title("the tuning ladder")
    ax.grid(alpha=0.3)
    if encs:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(encs), 3),
                  frameon=False)
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())  # the layout is final: display positions of the points are fixed from here
    ax.set_ylim(ax.get_ylim())
    mid = np.sqrt(np.prod(ax.get_xlim()))  # points right of the middle get their label on the left
    arts = [ax.annotate(text, (x, y), fontsize=7, xytext=(-10 if x > mid else 10, 0),
                        textcoords="offset pixels", ha="right" if x > mid else "left", va="center",
                        annotation_clip=False, arrowprops={"arrowstyle": "-", "lw": 0.6, "color": c,
                                                           "alpha": 0.7, "shrinkA": 1, "shrinkB": 3})
            for x, y, text, c in labels]
    _spread_labels(fig, ax, arts, [(x, y) for x, y, _, _ in labels])
    return fig, arts


def ladder_plot(rows: Sequence[dict], path: str | Path) -> Path:
    """:func:`ladder_figure` of ``rows`` saved to ``path`` (png)."""
    from common.report import _plt

    fig, _ = ladder_figure(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


__all__ = ["TuneBatch", "TuneTask", "TuneSettings", "Tuner", "TuneModel", "run_tuning", "write_results",
           "ladder_figure", "ladder_plot", "reduce_scorer", "method_tag"]
