"""``pointprobe distill``: a 3D encoder trained to predict lifted 2D features, so every point gets one.

Data: the caches written by ``pointprobe lift`` (``features`` (N, D) + ``visible_count`` per scene)
and the preprocessed scenes they came from (``coord``, ``color``, ``normal``). Model: a point encoder
from ``pointprobe.models.create_encoder`` (SparseUNet, PTv3, ...), its up-cast features (``levels``)
standardised over the points (``model.head_norm=bn``: BatchNorm without affine, folded into the exported
projection) followed by one ``nn.Linear`` to the lifted dimension. Loss:
``1 - cos(prediction, lifted feature)`` averaged over the points that at least one frame saw (unseen
points have no target).

Each step takes ``batch_scenes`` scenes, augmented (rotation about z, mirror, scale), grid-sampled at
``grid_size`` (one random point per voxel, as in training elsewhere), cropped to ``max_points`` around
a random point, with the same input features as ``encode_points`` (centre-shifted coordinates,
colour / 255, normals). With ``center_targets`` the projection fits the lifted feature minus the mean
training feature (image features share a large common component that would otherwise dominate the
cosine); as the loss fixes directions only, a prediction is that mean plus the predicted direction
scaled to the mean norm of the centred training targets (``head.pth`` stores both as
``target_offset`` and ``target_radius``). AdamW, linear warm-up then cosine decay, gradient clipping;
the scene order and all augmentation of epoch ``e`` come from a generator keyed by (seed, e), so a run
resumed from ``out/last.pth`` (written after every epoch) continues exactly where it stopped.

Outputs in ``out/``: ``config.yaml``; ``encoder.pth`` (``save_encoder`` release format, probed with
``pointprobe extract encoder.checkpoint=out/encoder.pth``); ``head.pth`` (the projection);
``history.json`` (loss and validation cosines per epoch, with the constant-prediction baseline);
``last.pth`` (resume state); and with ``export_predictions`` one cache per split in
``out/predicted/<split>`` holding the predicted features of every point (``pointprobe probe`` /
``pointprobe cluster`` read them like lifted features).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import load_checkpoint, load_latest, previous_path, save_checkpoint
from common.config import config_hash, save_config
from common.errors import CacheError, CheckpointError, ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "DistillDataConfig",
    "DistillModelConfig",
    "DistillTrainConfig",
    "DistillConfig",
    "DistillScenes",
    "Distiller",
    "run_distill",
    "cosine_loss",
    "scene_inputs",
]


# ---------------------------------------------------------------------------------------------- config
@dataclass
class DistillDataConfig:
    lifted: str = "runs/lift/patchstats"  # `pointprobe lift` output (one cache per split)
    root: str = "data/scannet"  # preprocessed layout with the same scenes (points)
    train_split: str = "train"
    val_split: str = "val"  # "" = no validation
    max_scenes: int = 0  # training scenes used (0 = all)


@dataclass
class DistillModelConfig:
    backbone: str = "sparseunet"  # pointprobe.models.ENCODERS name
    backbone_config: dict | None = None  # constructor overrides (null = the named encoder's defaults)
    levels: int | None = None  # up-cast levels fed to the projection (None = all)
    # "bn": the projection's input standardised over the points (BatchNorm1d without affine; folded into
    # head.pth's weight and bias at export); "none": the backbone's features as they are
    head_norm: str = "bn"


@dataclass
class DistillTrainConfig:
    epochs: int = 30
    batch_scenes: int = 2
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    clip_grad: float = 3.0  # 0 = off
    grid_size: float = 0.02
    max_points: int = 100_000  # grid-sampled points per scene and step (sphere crop beyond)
    augment: bool = True
    center_targets: bool = True  # fit target - (mean training target); predictions add the mean back
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = leave as is)
    val_every: int = 1  # epochs between validations (0 = only at the end)
    progress: bool = True
    save_every_minutes: float = 0.0  # also a mid-epoch last.pth when this much time passed since the last
    # caught: finish the current step, write last.pth, exit with status 3 ("interrupted, resumable")
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGINT", "SIGUSR1"])


@dataclass
class DistillConfig:
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    model: DistillModelConfig = field(default_factory=DistillModelConfig)
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)
    out: str = "runs/distill"
    resume: bool = True  # continue from out/last.pth when it exists
    export_predictions: bool = True  # projected features of every point into out/predicted/<split>
    predict_splits: list[str] = field(default_factory=lambda: ["train", "val"])
    dtype: str = "float16"  # of the prediction caches


# Settings that may change between a run and its resumption (everything else must match).
_RESUMABLE = {("train", "epochs"), ("train", "device"), ("train", "threads"), ("train", "progress"),
              ("train", "val_every"), ("train", "save_every_minutes"), ("train", "stop_signals"), ("out",),
              ("resume",), ("export_predictions",), ("predict_splits",), ("dtype",)}


def _training_hash(cfg: DistillConfig) -> str:
    d = asdict(cfg)
    for path in _RESUMABLE:
        node = d
        for k in path[:-1]:
            node = node[k]
        node.pop(path[-1], None)
    return config_hash(d)


def validate(cfg: DistillConfig) -> None:
    t = cfg.train
    if t.epochs < 1 or t.batch_scenes < 1 or t.max_points < 100:
        raise ConfigError("config keys 'train.epochs' and 'train.batch_scenes' must be >= 1, "
                          "'train.max_points' >= 100")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"config key 'train.device' must be auto, cpu or cuda, got {t.device!r}")
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' is cuda but CUDA is not available")
    if cfg.dtype not in ("float16", "float32"):
        raise ConfigError(f"config key 'dtype': expected float16 or float32, got {cfg.dtype!r}")
    if cfg.model.head_norm not in ("bn", "none"):
        raise ConfigError(f"config key 'model.head_norm' must be bn or none, got {cfg.model.head_norm!r}")
    if not cfg.data.lifted or not cfg.data.root:
        raise ConfigError("config keys 'data.lifted' and 'data.root' must name the lift output and the "
                          "preprocessed scenes")


# ------------------------------------------------------------------------------------------------ data
class DistillScenes:
    """Scenes of one split: points from ``root/split/<scene>``, targets from the lifted cache."""

    def __init__(self, lifted: str | os.PathLike, root: str | os.PathLike, split: str, max_scenes: int = 0):
        from common.cache import FeatureCache

        path = Path(lifted) / split
        if not FeatureCache.exists(path):
            raise InputError(path, f"no lifted-feature cache for split '{split}' (run `pointprobe lift`)")
        self.cache = FeatureCache(path)
        self.root, self.split = Path(root), split
        names = self.cache.items()
        if max_scenes > 0:
            names = names[:max_scenes]
        if not names:
            raise InputError(path, "the lifted-feature cache holds no scenes")
        self.names = names
        self.dim = self.cache.feature_dim
        self._points: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def points(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(coord, color, normal) of scene ``i`` (kept in memory after the first read)."""
        name = self.names[i]
        if name not in self._points:
            from pointprobe.data.scannet import load_scene

            s = load_scene(self.root / self.split / name)
            if len(s) != self.cache.n(name):
                raise InputError(self.root / self.split / name, f"{len(s)} points but the lifted cache has "
                                                                f"{self.cache.n(name)} rows for this scene")
            self._points[name] = (s.coord, s.color, s.normal)
        return self._points[name]

    def targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(lifted features (N, D) memory-mapped, visible_count (N,))."""
        a = self.cache.load(self.names[i], ("features", "visible_count"))
        return a["features"], np.asarray(a["visible_count"])

    def labels(self, i: int) -> np.ndarray:
        return np.asarray(self.cache.load(self.names[i], ("labels",))["labels"])


def scene_inputs(coord: np.ndarray, color: np.ndarray, normal: np.ndarray, feat_keys: tuple[str, ...],
                 grid_size: float, rng: np.random.Generator, max_points: int, augment: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One training view of a scene: (rows of the input points kept (M,), coord (M, 3), grid_coord
    (M, 3), feat (M, C)), with ``encode_points``' input features after augmentation."""
    from common.sampling import grid_sample, sphere_crop
    from pointprobe.models.encode import center_shift

    xyz = coord.astype(np.float64)
    nrm = normal.astype(np.float64)
    if augment:
        a = rng.uniform(0, 2 * np.pi)
        R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
        if rng.random() < 0.5:
            R = R @ np.diag([-1.0, 1.0, 1.0])
        xyz = xyz @ R.T * rng.uniform(0.9, 1.1)
        nrm = nrm @ R.T
    xyz = center_shift(xyz)  # of the whole scene, as encode_points does before grid sampling
    gs = grid_sample(xyz, grid_size, mode="train", seed=rng)
    rows, gc = gs.index, gs.grid_coord
    if rows.shape[0] > max_points:
        keep = sphere_crop(xyz[rows], max_points, rng=rng)
        rows, gc = rows[keep], gc[keep]
        gc = gc - gc.min(0)
    xyz = xyz[rows]
    parts = {"coord": xyz.astype(np.float32), "color": color[rows].astype(np.float32) / 255.0,
             "normal": nrm[rows].astype(np.float32)}
    feat = np.concatenate([parts[k] for k in feat_keys], axis=1)
    return rows, xyz.astype(np.float32), gc.astype(np.int64), feat


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos(pred_i, target_i)`` over rows."""
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=1, eps=1e-8)).mean()


# ----------------------------------------------------------------------------------------------- model
class LiftStudent(nn.Module):
    """The student of 2D -> 3D feature distillation: backbone + linear projection to the lifted feature
    dimension (not ``pointprobe.pretrain.train.DistillModel``, the self-distillation student/teacher)."""

    def __init__(self, backbone: nn.Module, levels: int | None, out_dim: int, head_norm: str = "bn"):
        super().__init__()
        self.backbone = backbone
        self.levels = levels
        dim = backbone.feature_dim(levels)
        # The backbone's features share a large common component (post-LayerNorm/GELU activations are
        # not centred), so every step on the projection's weight also moves the prediction of every point
        # by the same offset: the centred cosine then swings with the last scenes trained on.
        self.norm = nn.BatchNorm1d(dim, affine=False) if head_norm == "bn" else nn.Identity()
        self.head = nn.Linear(dim, out_dim)

    def forward(self, point: Any) -> torch.Tensor:
        return self.project_features(self.backbone.encode(point, self.levels))

    def project_features(self, f: torch.Tensor) -> torch.Tensor:
        """Backbone features -> head outputs (the norm, then the linear projection). The norm's running
        statistics are the plain mean of the first 10 training batches' statistics, then an exponential
        average (0.1): right from the first step, yet following the backbone as it trains."""
        if self.training and isinstance(self.norm, nn.BatchNorm1d):
            self.norm.momentum = max(0.1, 1.0 / (int(self.norm.num_batches_tracked) + 1))
        return self.head(self.norm(f))

    def folded_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of one linear map equal to the eval-mode norm + projection."""
        w, b = self.head.weight.detach(), self.head.bias.detach()
        if isinstance(self.norm, nn.BatchNorm1d):
            scale = torch.rsqrt(self.norm.running_var + self.norm.eps)
            w2 = w * scale[None]
            return w2, b - w2 @ self.norm.running_mean
        return w, b


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


class Distiller:
    """Holds data, model, optimiser; ``run()`` trains to ``train.epochs`` and exports."""

    def __init__(self, cfg: DistillConfig):
        from common import dist
        from pointprobe.models import create_encoder

        validate(cfg)
        self.cfg = cfg
        t = cfg.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.device = dist.pick_device(t.device)
        self.out = Path(cfg.out)
        self.train_data = DistillScenes(cfg.data.lifted, cfg.data.root, cfg.data.train_split,
                                        cfg.data.max_scenes)
        self.val_data = (DistillScenes(cfg.data.lifted, cfg.data.root, cfg.data.val_split)
                         if cfg.data.val_split else None)
        torch.manual_seed(t.seed)
        try:
            backbone = create_encoder(cfg.model.backbone, **(cfg.model.backbone_config or {}))
            self.model = LiftStudent(backbone, cfg.model.levels, self.train_data.dim,
                                     cfg.model.head_norm).to(self.device)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key 'model': {e}") from None
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=t.lr)
        self.steps_per_epoch = math.ceil(len(self.train_data) / t.batch_scenes)
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        # position inside the current epoch (a checkpoint written between two steps of an epoch)
        self.batch_in_epoch = 0
        self.epoch_losses: list[float] = []
        self.epoch_rng: str | None = None  # JSON of the epoch generator's state after batch_in_epoch
        self.interrupted: str | None = None
        self.train_hash = _training_hash(cfg)
        self.offset = np.zeros(self.train_data.dim, np.float32)
        self.radius = 0.0  # mean norm of the centred training targets (0: predictions are not rescaled)
        if t.center_targets:
            self.offset, self.radius = self.target_stats()

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "epoch": self.epoch,
                "step": self.step, "history": self.history, "train_hash": self.train_hash,
                "torch_rng": torch.get_rng_state(), "batch_in_epoch": self.batch_in_epoch,
                "epoch_losses": list(self.epoch_losses), "epoch_rng": self.epoch_rng or ""}

    def save(self, path: Path) -> None:
        """Atomic write; the replaced checkpoint stays as ``last.prev.pth`` for :meth:`resume`."""
        save_checkpoint(self.state(), path, keep_previous=True)

    def _check_resume(self, st: Any, path: Path) -> None:
        if not isinstance(st, dict) or not {"model", "opt", "epoch", "step", "train_hash"} <= set(st):
            raise CheckpointError(f"{path}: not a distill resume checkpoint")

    def load(self, path: Path) -> None:
        """Resume from ``path`` (a file this command wrote: read with ``weights_only=True``)."""
        st = load_checkpoint(path, map_location=self.device)
        self._check_resume(st, path)
        self._apply(st, path)

    def resume(self, last: Path) -> Path | None:
        """Resume from ``last`` or, when it is truncated or corrupt, from ``last.prev.pth`` (warned)."""
        try:
            st, used = load_latest([last, previous_path(last)], check=self._check_resume,
                                   map_location=self.device)
        except FileNotFoundError:
            return None
        self._apply(st, used)
        return used

    def _apply(self, st: dict, path: Path) -> None:
        if st.get("train_hash") != self.train_hash:
            raise ConfigError(f"{path} was written with different training settings; use a new out folder "
                              "or resume=false")
        try:
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["opt"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: does not fit this model ({str(e).splitlines()[0]})") from None
        self.epoch, self.step, self.history = int(st["epoch"]), int(st["step"]), list(st["history"])
        torch.set_rng_state(st["torch_rng"])
        # written between two steps of an epoch (a signal, save_every_minutes); older files: epoch ends
        self.batch_in_epoch = int(st.get("batch_in_epoch", 0))
        self.epoch_losses = [float(x) for x in st.get("epoch_losses", [])]
        self.epoch_rng = st.get("epoch_rng") or None
        if self.batch_in_epoch and self.epoch_rng is None:
            raise CheckpointError(f"{path}: mid-epoch checkpoint without the epoch's generator state")

    # -- training -----------------------------------------------------------------------------------
    def _batch(self, scene_ids: list[int], rng: np.random.Generator
               ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        from pointprobe.models.structure import PointBatch

        t = self.cfg.train
        keys = self.model.backbone.feat_keys
        coords, gcs, feats, targets, masks, counts = [], [], [], [], [], []
        for i in scene_ids:
            coord, color, normal = self.train_data.points(i)
            rows, xyz, gc, feat = scene_inputs(coord, color, normal, keys, t.grid_size, rng, t.max_points,
                                               t.augment)
            target, count = self.train_data.targets(i)
            coords.append(xyz)
            gcs.append(gc)
            feats.append(feat)
            targets.append(np.asarray(target[rows], dtype=np.float32) - self.offset)
            masks.append(count[rows] > 0)
            counts.append(rows.shape[0])
        dev = self.device
        point = PointBatch.create(torch.from_numpy(np.concatenate(coords)).to(dev),
                                  torch.from_numpy(np.concatenate(gcs)).to(dev),
                                  torch.from_numpy(np.concatenate(feats)).to(dev),
                                  offset=torch.tensor(np.cumsum(counts), device=dev),
                                  grid_size=t.grid_size)
        return (point, torch.from_numpy(np.concatenate(targets)).to(dev),
                torch.from_numpy(np.concatenate(masks)).to(dev))

    def train_epoch(self, signals: Any = None, last: Path | None = None) -> float | None:
        """Train the rest of epoch ``self.epoch`` (from ``batch_in_epoch``); returns its mean loss, or None
        when ``signals`` (a ``common.dist.StopSignals``) asked to stop: ``last`` was then written after
        the step in progress and ``self.interrupted`` names the signal."""
        from common.progress import progress

        t = self.cfg.train
        rng = np.random.default_rng([t.seed, self.epoch])
        order = rng.permutation(len(self.train_data))
        start = self.batch_in_epoch
        if start:  # resumed between two steps: the generator continues where the checkpoint left it
            rng.bit_generator.state = json.loads(self.epoch_rng or "")
        total = t.epochs * self.steps_per_epoch
        warmup = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.model.train()
        losses = list(self.epoch_losses)
        bar = progress(range(start, self.steps_per_epoch), desc=f"distill epoch {self.epoch + 1}/{t.epochs}",
                       unit="step", disable=not t.progress, leave=False)
        for b in bar:
            ids = [int(i) for i in order[b * t.batch_scenes : (b + 1) * t.batch_scenes]]
            point, target, mask = self._batch(ids, rng)
            for g in self.opt.param_groups:
                g["lr"] = t.lr * _lr_factor(self.step, total, warmup)
            pred = self.model(point)
            if bool(mask.any()):  # else no seen point in these crops: nothing to learn from
                loss = cosine_loss(pred[mask], target[mask])
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if t.clip_grad > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
                self.opt.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            self.step += 1
            self.batch_in_epoch, self.epoch_losses = b + 1, losses
            self.epoch_rng = json.dumps(rng.bit_generator.state)
            if signals is None:
                continue
            stop, save_due = signals.poll()
            if stop:  # a mid-epoch checkpoint; rerunning continues with the next batch of this epoch
                if last is not None:
                    self.save(last)
                self.interrupted = signals.received or "a signal to another rank"
                bar.close()
                return None
            if save_due and last is not None and b + 1 < self.steps_per_epoch:
                self.save(last)
                signals.mark_saved()
        self.batch_in_epoch, self.epoch_losses, self.epoch_rng = 0, [], None
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def predict(self, coord: np.ndarray, color: np.ndarray, normal: np.ndarray, source: str | None = None
                ) -> torch.Tensor:
        """Predicted lifted features (N, D) of every input point (``encode_points`` preprocessing, eval
        mode). With centred targets the cosine loss fixes only directions: the prediction is the mean
        training target plus the predicted direction scaled to the mean norm of the centred targets."""
        from pointprobe.models import Preprocessing, encode_points

        self.model.eval()
        f = encode_points(self.model.backbone, coord, color, normal, levels=self.cfg.model.levels,
                          prep=Preprocessing(grid_size=self.cfg.train.grid_size), device=self.device,
                          source=source)
        return self.project(self.model.project_features(f.to(self.device)).float().cpu())

    def project(self, out: torch.Tensor) -> torch.Tensor:
        """Head outputs -> lifted-feature space (see :meth:`predict`)."""
        if self.radius <= 0:
            return out
        return F.normalize(out, dim=1) * self.radius + torch.from_numpy(self.offset)

    def target_stats(self) -> tuple[np.ndarray, float]:
        """(mean lifted feature, mean norm of lifted feature minus that mean) over the seen training
        points: the constant-prediction baseline and the scale of the centred targets."""
        acc, n = np.zeros(self.train_data.dim), 0
        for i in range(len(self.train_data)):
            target, count = self.train_data.targets(i)
            acc += np.asarray(target[count > 0], np.float64).sum(0)
            n += int((count > 0).sum())
        mean = acc / max(n, 1)
        norms = 0.0
        for i in range(len(self.train_data)):
            target, count = self.train_data.targets(i)
            norms += float(np.linalg.norm(np.asarray(target[count > 0], np.float64) - mean, axis=1).sum())
        return mean.astype(np.float32), norms / max(n, 1)

    def mean_target(self) -> torch.Tensor:
        """Mean lifted feature over the seen training points (the constant-prediction baseline)."""
        if not hasattr(self, "_mean_target"):
            self._mean_target = torch.from_numpy(self.target_stats()[0])
        return self._mean_target

    def validate(self) -> dict:
        """Mean cosine similarity to the lifted features on seen validation points; the same for a constant
        prediction (the mean training target) as a baseline; and the cosine of prediction and target both
        minus the mean training target (how well the variation between points is predicted)."""
        data = self.val_data
        if data is None:
            return {}
        sims, base, centred, n = 0.0, 0.0, 0.0, 0
        mean = self.mean_target()
        for i in range(len(data)):
            coord, color, normal = data.points(i)
            target, count = data.targets(i)
            seen = count > 0
            if not seen.any():
                continue
            pred = self.predict(coord, color, normal, source=data.names[i])
            tgt = torch.from_numpy(np.asarray(target[seen], np.float32))
            p = pred[torch.from_numpy(seen)]
            sims += float(F.cosine_similarity(p, tgt, dim=1).sum())
            base += float(F.cosine_similarity(mean[None], tgt, dim=1).sum())
            centred += float(F.cosine_similarity(p - mean, tgt - mean, dim=1).sum())
            n += int(seen.sum())
        nan = float("nan")
        return {"val_cosine": sims / n if n else nan, "val_cosine_mean_baseline": base / n if n else nan,
                "val_cosine_centred": centred / n if n else nan, "val_points": n}

    def run(self) -> dict:
        """Train to ``train.epochs`` and export; stopped by one of ``train.stop_signals``, it returns
        ``{"interrupted": signal name, "epoch", "step", "history"}`` after writing ``last.pth``."""
        from common.dist import StopSignals

        t = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out)
        last = self.out / "last.pth"
        if self.cfg.resume:
            used = self.resume(last)
            if used is not None:
                log.info("resumed from %s at epoch %d step %d", used, self.epoch, self.step)
        self.interrupted = None
        with StopSignals(t.stop_signals, t.save_every_minutes) as signals:
            while self.epoch < t.epochs:
                if not self._epoch(signals, last):
                    return {"interrupted": self.interrupted, "epoch": self.epoch, "step": self.step,
                            "history": self.history}
                signals.mark_saved()
        return self.export()

    def _epoch(self, signals: Any, last: Path) -> bool:
        """One (rest of an) epoch, validation, ``last.pth`` and ``history.json``; False when interrupted."""
        t = self.cfg.train
        loss = self.train_epoch(signals, last)
        if loss is None:
            return False
        self.epoch += 1
        rec: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "loss": loss}
        if self.val_data is not None and ((t.val_every and self.epoch % t.val_every == 0)
                                          or self.epoch == t.epochs):
            rec.update(self.validate())
        self.history.append(rec)
        log.info("epoch %d: %s", self.epoch, json.dumps(rec))
        self.save(last)
        (self.out / "history.json").write_text(json.dumps(self.history, indent=1) + "\n")
        if self.epoch == t.epochs:  # the end: curves.csv + curves.png beside history.json
            from common.curves import write_curves

            write_curves(self.history, self.out, "curves", x="epoch", title="pointprobe distill",
                         groups={"loss": ["loss"], "validation cosine": [
                             "val_cosine", "val_cosine_mean_baseline", "val_cosine_centred"]})
        return True

    # -- export -------------------------------------------------------------------------------------
    def export(self) -> dict:
        from pointprobe.models import checkpoint_sha256, save_encoder

        lift_meta = self.train_data.cache.meta.get("encoder", {})
        meta = {"source": "pointprobe distill", "lifted": str(self.cfg.data.lifted),
                "lifted_encoder": lift_meta.get("name", ""), "epochs": self.epoch,
                "levels": self.cfg.model.levels,
                "target_dim": self.train_data.dim, "train_hash": self.train_hash}
        enc_path = save_encoder(self.model.backbone, self.out / "encoder.pth", **meta)
        head_path = self.out / "head.pth"
        weight, bias = self.model.folded_head()
        save_checkpoint({"weight": weight.cpu(), "bias": bias.cpu(),
                         "target_offset": torch.from_numpy(self.offset).float(), "target_radius": self.radius,
                         "levels": self.cfg.model.levels, "encoder": str(enc_path)}, head_path)
        result = {"encoder": str(enc_path), "head": str(head_path), "history": self.history}
        if self.cfg.export_predictions:
            sha = checkpoint_sha256(enc_path)
            result["predicted"] = {s: self.export_split(s, sha, lift_meta) for s in self.cfg.predict_splits}
        return result

    def export_split(self, split: str, sha: str, lift_meta: dict) -> dict[str, str]:
        """Projected features of every scene of ``split`` into ``out/predicted/<split>``; failures."""
        from common.cache import CacheKey, CacheWriter

        data = DistillScenes(self.cfg.data.lifted, self.cfg.data.root, split)
        name = f"distill/{self.cfg.model.backbone}"
        label = f"{lift_meta.get('label', data.cache.key.encoder)} distilled ({self.cfg.model.backbone})"
        key = CacheKey(encoder=name, checkpoint_sha256=sha,
                       config_hash=config_hash({"train": self.train_hash, "epochs": self.epoch}),
                       preprocessing={"grid_size": self.cfg.train.grid_size, "sampling": "canonical",
                                      "levels": self.cfg.model.levels, "head": "linear"},
                       dataset=str(Path(self.cfg.data.root).resolve()), split=split)
        meta = {"encoder": {"name": name, "label": label, "checkpoint": str(self.out / "encoder.pth"),
                            "checkpoint_sha256": sha, "config": dict(self.model.backbone.config),
                            "levels": self.cfg.model.levels},
                "label_set": data.cache.meta.get("label_set", "segment20"), "config": asdict(self.cfg),
                "lifted_from": str(Path(self.cfg.data.lifted) / split), "num_scenes": len(data)}
        path = self.out / "predicted" / split
        try:
            writer = CacheWriter(path, key, data.dim, dtype=self.cfg.dtype, meta=meta)
        except CacheError:  # predictions of an earlier model in our own output folder: replace them
            log.info("replacing stale predictions in %s", path)
            shutil.rmtree(path)
            writer = CacheWriter(path, key, data.dim, dtype=self.cfg.dtype, meta=meta)
        index = {n: i for i, n in enumerate(data.names)}

        def compute(item: str) -> dict:
            i = index[item]
            coord, color, normal = data.points(i)
            _, count = data.targets(i)
            return {"features": self.predict(coord, color, normal, source=item).numpy(),
                    "labels": data.labels(i), "lifted_visible_count": count}

        errors = writer.fill(data.names, compute, progress=self.cfg.train.progress, desc=f"predict {split}")
        writer.close()
        return errors


def run_distill(cfg: DistillConfig) -> dict:
    """Train (or resume) and export; returns paths, history and prediction-cache failures."""
    return Distiller(cfg).run()
