"""DINOv2-style linear probing: a whole grid of linear heads (learning rate x weight decay) trained in
one pass over cached features, the best head chosen on validation.

The heads are one batched parameter ``W`` of shape (D, H, K): every mini-batch costs one matmul
``X (B, D) @ W (D, H*K)`` for the forward pass and one for the gradient, whatever the number of heads.
Forward, softmax cross-entropy gradient and the optimiser update (AdamW or SGD with momentum, one
learning rate / weight decay per head, cosine schedule with linear warm-up) are written by hand and
vectorised over heads; heads do not interact, so a head trained inside the grid follows exactly the
trajectory it would follow alone on the same batches.

Data (:class:`ProbeData`) is a list of chunks (feature array, labels), e.g. memory-mapped arrays of the
feature cache. Rows labelled ``-1`` are ignored. When the labelled rows fit in ``max_ram_gb`` (as
float32) they are loaded into one tensor (fast path); otherwise each epoch streams shuffled windows:
chunks are cut into pieces of at most ``unit_rows`` rows, the pieces are shuffled, gathered into
windows of ``window_rows`` rows and the rows of each window shuffled again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import CheckpointError, ConfigError, InputError
from common.metrics import segmentation_metrics
from common.probes._files import read_probe_file, write_probe_file
from common.progress import progress

__all__ = [
    "ProbeData",
    "LinearProbeConfig",
    "LinearProbeResult",
    "train_linear_probe",
    "evaluate_linear_probe",
    "predict",
    "save_probe",
    "load_probe",
    "fit_normalizer",
    "apply_normalizer",
]

IGNORE_INDEX = -1


# ----------------------------------------------------------------------------------------------- data
@dataclass
class _Chunk:
    features: Any  # (n, *shape) numpy array or memmap
    labels: np.ndarray  # (n,) int64
    groups: np.ndarray  # (n,) int64
    rows: np.ndarray  # sorted int64 indices of the rows in use (labelled, in this split)
    name: str


def _as_numpy(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if isinstance(a, np.ndarray):  # includes np.memmap: keep it lazy
        return a
    return np.asarray(a)


class ProbeData:
    """Training / evaluation rows for a probe, held as chunks that need not fit in memory.

    ``chunks``: sequence of ``(features (n_i, ...), labels (n_i,) or scalar)``; features may be numpy
    arrays, memmaps (float16 / float32) or tensors. ``groups``: per chunk an int (the whole chunk is one
    group, e.g. one scene or one video) or an (n_i,) int array (e.g. video id per clip); groups are used
    to hold out validation data by group and, for classification, to average predictions over a
    video's views. Without groups every row is its own group. ``names`` label chunks in error messages.
    Rows whose label is ``-1`` are dropped.
    """

    def __init__(
        self,
        chunks: Sequence[tuple[Any, Any]],
        groups: Sequence[int | Any] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if len(chunks) == 0:
            raise InputError(None, "no feature chunks given")
        if groups is not None and len(groups) != len(chunks):
            raise InputError(None, f"{len(groups)} group entries for {len(chunks)} chunks")
        self.has_groups = groups is not None
        self._chunks: list[_Chunk] = []
        shape = None
        offset = 0
        for i, (x, y) in enumerate(chunks):
            name = str(names[i]) if names is not None else f"chunk {i}"
            x = _as_numpy(x)
            if x.ndim < 2:
                raise InputError(name, f"features must be (n, dim), got shape {x.shape}")
            if shape is None:
                shape = x.shape[1:]
            elif x.shape[1:] != shape:
                raise InputError(name, f"feature shape {x.shape[1:]} differs from the first chunk's {shape}")
            if not (np.issubdtype(x.dtype, np.floating)):
                raise InputError(name, f"features must be floating point, got {x.dtype}")
            n = x.shape[0]
            y = np.asarray(_as_numpy(y)).reshape(-1)
            if y.size == 1 and n != 1:
                y = np.full(n, y[0])
            if y.size != n:
                raise InputError(name, f"{y.size} labels for {n} feature rows")
            if y.size and not np.issubdtype(y.dtype, np.integer):
                if np.all(np.mod(y, 1) == 0):
                    y = y.astype(np.int64)
                else:
                    raise InputError(name, f"labels must be integer class ids, got {y.dtype}")
            y = y.astype(np.int64, copy=False)
            if y.size and y.min() < IGNORE_INDEX:
                raise InputError(name, f"label {int(y.min())} is negative (only -1 = ignore is allowed)")
            if groups is None:
                g = np.arange(offset, offset + n, dtype=np.int64)
            else:
                gi = groups[i]
                if np.ndim(gi) == 0:
                    g = np.full(n, int(gi), dtype=np.int64)
                else:
                    g = np.asarray(_as_numpy(gi)).reshape(-1).astype(np.int64)
                    if g.size != n:
                        raise InputError(name, f"{g.size} group ids for {n} feature rows")
            offset += n
            rows = np.flatnonzero(y != IGNORE_INDEX).astype(np.int64)
            self._chunks.append(_Chunk(x, y, g, rows, name))
        self.feature_shape: tuple[int, ...] = tuple(shape)

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(cls, features: Any, labels: Any, groups: Any | None = None) -> ProbeData:
        """One in-memory chunk (``groups``: optional (n,) ids)."""
        return cls([(features, labels)], None if groups is None else [groups])

    @classmethod
    def from_cache(
        cls,
        cache: Any,
        items: Sequence[str] | None = None,
        feature_key: str = "features",
        label_key: str = "labels",
    ) -> ProbeData:
        """Chunks from a ``common.cache.FeatureCache`` (memory-mapped, not loaded); each item is a group."""
        items = list(cache.items()) if items is None else list(items)
        if not items:
            raise InputError(getattr(cache, "path", None), "the feature cache has no items")
        chunks = []
        for it in items:
            arrays = cache[it]
            if feature_key not in arrays:
                raise InputError(it, f"cache item has no {feature_key!r} array")
            if label_key not in arrays or arrays[label_key] is None:
                raise InputError(it, f"cache item has no {label_key!r} array (labels are needed to probe)")
            chunks.append((arrays[feature_key], arrays[label_key]))
        return cls(chunks, groups=list(range(len(items))), names=[str(i) for i in items])

    def _with_rows(self, rows: list[np.ndarray]) -> ProbeData:
        new = object.__new__(ProbeData)
        new.has_groups = self.has_groups
        new.feature_shape = self.feature_shape
        new._chunks = [dataclasses.replace(c, rows=r) for c, r in zip(self._chunks, rows)]
        return new

    # ------------------------------------------------------------------------------- properties
    @property
    def num_rows(self) -> int:
        """Number of labelled rows in use."""
        return int(sum(len(c.rows) for c in self._chunks))

    @property
    def dim(self) -> int:
        return int(self.feature_shape[-1])

    @property
    def nbytes_float32(self) -> int:
        return self.num_rows * int(np.prod(self.feature_shape)) * 4

    def labels(self) -> np.ndarray:
        """Labels of the rows in use, in storage order."""
        return np.concatenate([c.labels[c.rows] for c in self._chunks])

    def groups(self) -> np.ndarray:
        """Group ids of the rows in use, in storage order."""
        return np.concatenate([c.groups[c.rows] for c in self._chunks])

    @property
    def num_classes(self) -> int:
        y = self.labels()
        return int(y.max()) + 1 if y.size else 0

    # ----------------------------------------------------------------------------------- splits
    def split(self, val_fraction: float, seed: int = 0) -> tuple[ProbeData, ProbeData]:
        """Hold out ``val_fraction`` of the groups (of the rows when there are no groups)."""
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        g = self.groups()
        uniq = np.unique(g)
        if len(uniq) < 2:
            raise InputError(self._chunks[0].name, "cannot hold out validation data: only one group")
        rng = np.random.default_rng(seed)
        n_val = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
        val_groups = rng.choice(uniq, size=n_val, replace=False)
        tr, va = [], []
        for c in self._chunks:
            in_val = np.isin(c.groups[c.rows], val_groups)
            tr.append(c.rows[~in_val])
            va.append(c.rows[in_val])
        return self._with_rows(tr), self._with_rows(va)

    # ---------------------------------------------------------------------------------- loading
    def _read(self, c: _Chunk, rows: np.ndarray) -> np.ndarray:
        if len(rows) == c.features.shape[0]:
            a = np.asarray(c.features[:])
        elif len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            a = np.asarray(c.features[rows[0] : rows[-1] + 1])
        else:
            a = np.asarray(c.features[rows])
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a).all():
            raise InputError(c.name, "features contain NaN or inf")
        return a

    def load(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """All rows in use as (float32 features, int64 labels, group ids)."""
        n = self.num_rows
        x = torch.empty((n, *self.feature_shape), dtype=torch.float32)
        xn = x.numpy()  # shares memory; a numpy copy also accepts read-only memmaps without a warning
        i = 0
        for c in self._chunks:
            if len(c.rows):
                xn[i : i + len(c.rows)] = self._read(c, c.rows)
                i += len(c.rows)
        return x.to(device), torch.from_numpy(self.labels()).to(device), self.groups()

    def iter_windows(
        self, window_rows: int, rng: np.random.Generator | None = None, unit_rows: int = 8192
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (features float32, labels, groups) windows of about ``window_rows`` rows.

        With ``rng``: pieces of at most ``unit_rows`` rows are visited in random order and the rows of
        each window shuffled; without: storage order.
        """
        units = [
            (ci, c.rows[s : s + unit_rows])
            for ci, c in enumerate(self._chunks)
            for s in range(0, len(c.rows), unit_rows)
        ]
        if rng is not None:
            units = [units[i] for i in rng.permutation(len(units))]
        buf: list[tuple[int, np.ndarray]] = []
        size = 0
        for u in units:
            buf.append(u)
            size += len(u[1])
            if size >= window_rows:
                yield self._gather(buf, rng)
                buf, size = [], 0
        if buf:
            yield self._gather(buf, rng)

    def _gather(self, units: list[tuple[int, np.ndarray]], rng: np.random.Generator | None):
        xs, ys, gs = [], [], []
        for ci, rows in units:
            c = self._chunks[ci]
            xs.append(self._read(c, rows))
            ys.append(c.labels[rows])
            gs.append(c.groups[rows])
        x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
        if rng is not None:
            p = rng.permutation(len(y))
            x, y, g = x[p], y[p], g[p]
        return x, y, g


# -------------------------------------------------------------------------------- normalisation
NORMALIZE_MODES = ("none", "standardize", "whiten", "l2")


def _blocks(
    data: ProbeData | torch.Tensor, window_rows: int, max_rows: int | None = None
) -> Iterator[torch.Tensor]:
    """Row blocks of the data; with ``max_rows``, blocks of a random subset of about that many rows."""
    if isinstance(data, torch.Tensor):
        x = data.reshape(-1, data.shape[-1])
        if max_rows is not None and x.shape[0] > max_rows:
            x = x[:: -(-x.shape[0] // max_rows)]
        for s in range(0, x.shape[0], 65536):
            yield x[s : s + 65536]
        return
    seen = 0
    rng = np.random.default_rng(0) if max_rows is not None and data.num_rows > max_rows else None
    for x, _, _ in data.iter_windows(min(window_rows, max_rows or window_rows), rng):
        yield torch.from_numpy(x).reshape(-1, data.dim)
        seen += x.shape[0]
        if max_rows is not None and seen >= max_rows:
            return


def fit_normalizer(
    data: ProbeData | torch.Tensor,
    mode: str,
    window_rows: int = 262144,
    eps: float = 1e-3,
    whiten_max_rows: int = 1_000_000,
) -> dict:
    """Normalisation statistics of the training rows.

    ``"none"`` / ``"l2"`` (per-row unit norm) need none; ``"standardize"`` gives per-dimension ``mean`` /
    ``std``; ``"whiten"`` gives ``mean`` and ``proj`` (D, D) = U diag(1 / sqrt(lambda + eps * mean(lambda)))
    from the eigen-decomposition of the covariance (PCA whitening: decorrelates the features, which
    makes the probe's optimisation well conditioned; the eps term keeps near-constant directions
    small); the covariance is estimated on at most ``whiten_max_rows`` rows (a random subset).
    Two passes over the rows, float64 accumulation of float32 blocks, no full-size copy.
    """
    if mode not in NORMALIZE_MODES:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, not {mode!r}")
    if mode in ("none", "l2"):
        return {"mode": mode}
    n = 0
    total: torch.Tensor | None = None
    for xb in _blocks(data, window_rows):
        bsum = xb.float().sum(0).double()
        total = bsum if total is None else total + bsum
        n += xb.shape[0]
    if n == 0 or total is None:
        raise InputError(None, "no labelled rows to compute normalisation statistics from")
    mean = total / n
    m32 = mean.float().to(total.device)
    acc: torch.Tensor | None = None
    n2 = 0
    for xb in _blocks(data, window_rows, whiten_max_rows if mode == "whiten" else None):
        d = xb.float() - m32.to(xb.device)
        part = (d.t() @ d if mode == "whiten" else (d * d).sum(0)).double()
        acc = part if acc is None else acc + part
        n2 += xb.shape[0]
    assert acc is not None
    if mode == "standardize":
        std = (acc / n2).sqrt().clamp_min(1e-6)
        return {"mode": mode, "mean": mean.float().cpu(), "std": std.float().cpu()}
    cov = (acc / n2).cpu()
    lam, vecs = torch.linalg.eigh(cov)
    lam = lam.clamp_min(0)
    floor = eps * float(lam.mean()) + 1e-12
    proj = vecs / (lam + floor).sqrt()
    return {"mode": mode, "mean": mean.float().cpu(), "proj": proj.float()}


def apply_normalizer(x: torch.Tensor, norm: Mapping, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Apply statistics from :func:`fit_normalizer` (returns a new tensor unless mode is 'none').

    ``out_dtype=torch.bfloat16`` returns bfloat16 (the whitening matmul itself then runs in bfloat16).
    """
    if out_dtype is not None and out_dtype != torch.float32:
        if norm["mode"] == "whiten":
            xc = (x - norm["mean"].to(x.device)).to(out_dtype)
            return xc @ norm["proj"].to(device=x.device, dtype=out_dtype)
        return apply_normalizer(x, norm).to(out_dtype)
    mode = norm["mode"]
    if mode == "none":
        return x
    if mode == "l2":
        return torch.nn.functional.normalize(x, dim=-1)
    if mode == "standardize":
        return (x - norm["mean"].to(x.device)) / norm["std"].to(x.device)
    if mode == "whiten":
        return (x - norm["mean"].to(x.device)) @ norm["proj"].to(x.device)
    raise CheckpointError(f"unknown normalisation mode {mode!r}")


# ------------------------------------------------------------------------------------- config
@dataclass
class LinearProbeConfig:
    """Settings of the multi-head linear probe (one head per (lr, wd) pair)."""

    task: str = "classification"  # "classification" (metric top1) | "segmentation" (metric mIoU)
    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    wds: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3])
    optimizer: str = "adamw"  # "adamw" | "sgd" (momentum, L2 weight decay)
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: int = 10
    batch_size: int = 1024
    warmup_epochs: float = 1.0
    normalize: str = "standardize"  # "none" | "standardize" | "whiten" | "l2"
    val_fraction: float = 0.1  # held out of train (by group) when no validation data is given
    view_average: bool = True  # classification: average softmax over a group's rows (a video's clips)
    metric: str = "auto"  # "auto" | "top1" | "mean_class" | "mIoU"
    num_classes: int = 0  # 0: 1 + largest label seen
    seed: int = 0
    device: str = "cpu"
    max_ram_gb: float = 2.0  # labelled train rows (float32) up to this size are loaded at once
    window_rows: int = 262144  # streaming mode: rows per shuffled window
    eval_batch_size: int = 65536
    matmul_dtype: str = "float32"  # "bfloat16": training matmuls in bf16 (2x faster on AVX512-BF16 / GPUs)
    keep_all_heads: bool = False  # also return every head's weights (LinearProbeResult.all_heads)
    progress: bool = True

    def validate(self) -> None:
        if self.task not in ("classification", "segmentation"):
            raise ConfigError(f"probe.task must be 'classification' or 'segmentation', not {self.task!r}")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ConfigError(f"probe.lrs must be a non-empty list of positive numbers, got {self.lrs}")
        if not self.wds or any(wd < 0 for wd in self.wds):
            raise ConfigError(f"probe.wds must be a non-empty list of numbers >= 0, got {self.wds}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"probe.optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"probe.normalize must be one of {NORMALIZE_MODES}, not {self.normalize!r}")
        if self.metric not in ("auto", "top1", "mean_class", "mIoU"):
            raise ConfigError(f"probe.metric must be auto, top1, mean_class or mIoU, not {self.metric!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("probe.epochs and probe.batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"probe.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.matmul_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"probe.matmul_dtype must be float32 or bfloat16, not {self.matmul_dtype!r}")
        if len(self.betas) != 2:
            raise ConfigError("probe.betas must have two values")

    def selection_metric(self) -> str:
        if self.metric != "auto":
            return self.metric
        return "mIoU" if self.task == "segmentation" else "top1"


@dataclass
class LinearProbeResult:
    """A trained linear probe: the best head (``weight`` (K, D), ``bias`` (K,)), its normalisation, and
    the table of every head's validation scores."""

    state_dict: dict[str, torch.Tensor]
    norm: dict
    num_classes: int
    class_names: list[str] | None
    metric: str
    heads: list[dict]
    best: dict
    config: dict
    meta: dict = field(default_factory=dict)
    all_heads: dict[str, torch.Tensor] | None = None  # {"weight": (H, K, D), "bias": (H, K)} if kept

    def linear(self) -> torch.nn.Linear:
        """The best head as an ``nn.Linear`` (apply :func:`apply_normalizer` with ``norm`` first)."""
        k, d = self.state_dict["weight"].shape
        lin = torch.nn.Linear(d, k)
        lin.load_state_dict(self.state_dict)
        return lin

    def folded_linear(self) -> torch.nn.Linear:
        """The best head with its normalisation folded in: an ``nn.Linear`` on raw features (like a
        released ``seg_head``). Not possible for ``"l2"`` (per-row) normalisation."""
        w = self.state_dict["weight"].double()
        b = self.state_dict["bias"].double()
        mode = self.norm["mode"]
        if mode == "l2":
            raise ConfigError("an l2-normalised probe cannot be folded into one linear layer")
        if mode != "none":
            proj = (
                torch.diag(1.0 / self.norm["std"].double())
                if mode == "standardize"
                else self.norm["proj"].double()
            )
            w = w @ proj.t()  # logits = (x - mean) @ proj @ W^T + b
            b = b - w @ self.norm["mean"].double()
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w.float(), "bias": b.float()})
        return lin


# ------------------------------------------------------------------------------ core updates
class _Heads:
    """H linear heads as one (D, H, K) weight with a vectorised AdamW / SGD update."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        lrs: torch.Tensor,
        wds: torch.Tensor,
        cfg: LinearProbeConfig,
        device: torch.device,
    ) -> None:
        h = lrs.numel()
        self.H, self.K, self.D = h, num_classes, dim
        self.W = torch.zeros(dim, h, num_classes, device=device)
        self.b = torch.zeros(h, num_classes, device=device)
        self.lrs = lrs.to(device).view(1, h, 1)
        self.wds = wds.to(device).view(1, h, 1)
        self.opt = cfg.optimizer
        self.mom = cfg.momentum
        self.b1, self.b2 = cfg.betas
        self.eps = 1e-8
        self.t = 0
        self.mW = torch.zeros_like(self.W)
        self.mb = torch.zeros_like(self.b)
        if self.opt == "adamw":
            self.vW = torch.zeros_like(self.W)
            self.vb = torch.zeros_like(self.b)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, H, K) float32 (evaluation: always in float32)."""
        return (x.float() @ self.W.view(self.D, -1)).view(-1, self.H, self.K) + self.b

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients of the mean cross-entropy of every head, and the per-head losses.

        ``x`` may be bfloat16 (``matmul_dtype``): both matmuls then run in bfloat16, the softmax and the
        optimiser state stay in float32.
        """
        bsz = x.shape[0]
        w = self.W.view(self.D, -1)
        if x.dtype != w.dtype:
            z = (x @ w.to(x.dtype)).float()
        else:
            z = x @ w
        p = torch.softmax(z.view(bsz, self.H, self.K).add_(self.b), dim=2)
        idx = y.view(-1, 1, 1).expand(-1, self.H, 1)
        loss = -p.gather(2, idx).squeeze(2).clamp_min(1e-30).log().mean(0)
        p.scatter_add_(2, idx, self._minus_one(idx))  # p - onehot(y)
        gb = p.sum(0).div_(bsz)
        pm = p.view(bsz, -1)
        gW = (x.t() @ (pm.to(x.dtype) if x.dtype != pm.dtype else pm)).float().div_(bsz)
        return gW.view(self.D, self.H, self.K), gb, loss

    def _minus_one(self, idx: torch.Tensor) -> torch.Tensor:
        m = getattr(self, "_m1", None)
        if m is None or m.shape != idx.shape:
            m = self._m1 = torch.full(idx.shape, -1.0, device=idx.device)
        return m

    def step(self, gW: torch.Tensor, gb: torch.Tensor, lr_factor: float) -> None:
        lr = self.lrs * lr_factor  # (1, H, 1)
        lr_b = lr[0]  # (H, 1)
        self.t += 1
        if self.opt == "adamw":
            self.W.mul_(1 - lr * self.wds)
            self.mW.mul_(self.b1).add_(gW, alpha=1 - self.b1)
            self.vW.mul_(self.b2).addcmul_(gW, gW, value=1 - self.b2)
            self.mb.mul_(self.b1).add_(gb, alpha=1 - self.b1)
            self.vb.mul_(self.b2).addcmul_(gb, gb, value=1 - self.b2)
            c1 = 1 - self.b1**self.t
            c2 = math.sqrt(1 - self.b2**self.t)
            self.W.sub_(lr / c1 * self.mW / (self.vW.sqrt() / c2 + self.eps))
            self.b.sub_(lr_b / c1 * self.mb / (self.vb.sqrt() / c2 + self.eps))
        else:
            gW = gW + self.wds * self.W
            if self.t == 1:
                self.mW.copy_(gW)
                self.mb.copy_(gb)
            else:
                self.mW.mul_(self.mom).add_(gW)
                self.mb.mul_(self.mom).add_(gb)
            self.W.sub_(lr * self.mW)
            self.b.sub_(lr_b * self.mb)

    def head_state(self, h: int) -> dict[str, torch.Tensor]:
        return {"weight": self.W[:, h, :].t().contiguous().cpu(), "bias": self.b[h].clone().cpu()}


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# --------------------------------------------------------------------------------- evaluation
class _Scorer:
    """Accumulates the scores of H heads over batches of (logits (B, H, K), labels, groups).

    With view averaging, softmax probabilities are summed per group on the fly into a (G, H, K)
    tensor (``groups``: every group id that will occur) and scored once at the end.
    """

    def __init__(
        self,
        num_heads: int,
        num_classes: int,
        task: str,
        view_average: bool,
        groups: np.ndarray | None = None,
    ) -> None:
        self.H, self.K = num_heads, num_classes
        self.task = task
        self.view_average = view_average and task == "classification"
        self.conf = torch.zeros(num_heads * num_classes * num_classes, dtype=torch.int64)
        self.top5 = torch.zeros(num_heads, dtype=torch.int64)
        self.n = 0
        self.n_rows = 0
        self.loss = torch.zeros(num_heads, dtype=torch.float64)
        if self.view_average:
            if groups is None:
                raise ValueError("view averaging needs the group ids")
            self.uniq = np.unique(groups)
            self.prob_sum = torch.zeros(len(self.uniq), num_heads, num_classes)
            self.group_label = np.full(len(self.uniq), -1, dtype=np.int64)

    def _count(self, scores: torch.Tensor, y: torch.Tensor) -> None:
        """scores (B, H, K) (any monotone transform of the probabilities), y (B,) on the cpu."""
        pred = scores.argmax(2)  # (B, H)
        hh = torch.arange(self.H).view(1, -1)
        flat = (hh * self.K + y.view(-1, 1)) * self.K + pred
        self.conf += torch.bincount(flat.reshape(-1), minlength=self.conf.numel())
        k = min(5, self.K)
        top = scores.topk(k, dim=2).indices
        self.top5 += (top == y.view(-1, 1, 1)).any(2).sum(0)
        self.n += y.numel()

    def add(self, z: torch.Tensor, y: torch.Tensor, g: np.ndarray) -> None:
        z = z.float().cpu()
        y = y.cpu()
        idx = y.view(-1, 1, 1).expand(-1, self.H, 1)
        logp = torch.log_softmax(z, dim=2)
        self.loss += -logp.gather(2, idx).squeeze(2).double().sum(0)
        self.n_rows += y.numel()
        if not self.view_average:
            self._count(z, y)
            return
        gi = np.searchsorted(self.uniq, g)
        if np.any(gi >= len(self.uniq)) or np.any(self.uniq[np.minimum(gi, len(self.uniq) - 1)] != g):
            raise ValueError("a group id outside the declared groups")
        yn = y.numpy()
        seen = self.group_label[gi]
        if np.any((seen >= 0) & (seen != yn)) or self._mixed(gi, yn):
            raise InputError(
                None,
                "rows of one group (video) carry different labels; cannot average views "
                "(set view_average=False)",
            )
        self.group_label[gi] = yn
        self.prob_sum.index_add_(0, torch.from_numpy(gi), logp.exp_())

    @staticmethod
    def _mixed(gi: np.ndarray, y: np.ndarray) -> bool:
        """Whether two rows of one group in this batch have different labels."""
        order = np.lexsort((y, gi))
        gs, ys = gi[order], y[order]
        same_g = gs[1:] == gs[:-1]
        return bool(np.any(same_g & (ys[1:] != ys[:-1])))

    def result(self) -> list[dict]:
        if self.view_average:
            present = self.group_label >= 0
            self._count(self.prob_sum[torch.from_numpy(present)], torch.from_numpy(self.group_label[present]))
        n_rows = self.n_rows
        conf = self.conf.view(self.H, self.K, self.K).numpy()
        out = []
        denom = max(self.n, 1)
        for h in range(self.H):
            seg = segmentation_metrics(conf[h])
            row = {"loss": float(self.loss[h] / max(n_rows, 1))}
            if self.task == "segmentation":
                row.update({"mIoU": seg["mIoU"], "mAcc": seg["mAcc"], "allAcc": seg["allAcc"]})
            else:
                row.update(
                    {
                        "top1": float(np.trace(conf[h]) / denom),
                        "top5": float(self.top5[h] / denom),
                        "mean_class": seg["mAcc"],
                    }
                )
            out.append(row)
        return out

    def confusion(self, h: int = 0) -> np.ndarray:
        return self.conf.view(self.H, self.K, self.K)[h].numpy().copy()


def _iter_eval_batches(data: ProbeData | tuple, batch_size: int, window_rows: int):
    """Yield (x float32 tensor, y, groups) in storage order from a ProbeData or loaded tensors."""
    if isinstance(data, tuple):
        x, y, g = data
        for s in range(0, x.shape[0], batch_size):
            yield x[s : s + batch_size], y[s : s + batch_size], g[s : s + batch_size]
        return
    for xw, yw, gw in data.iter_windows(window_rows):
        xt, yt = torch.from_numpy(xw), torch.from_numpy(yw)
        for s in range(0, xt.shape[0], batch_size):
            yield xt[s : s + batch_size], yt[s : s + batch_size], gw[s : s + batch_size]


def _score_heads(
    logits_fn,
    data: ProbeData | tuple,
    norm: Mapping,
    num_heads: int,
    num_classes: int,
    task: str,
    view_average: bool,
    batch_size: int,
    window_rows: int,
    device: torch.device,
    normalized: bool = False,
) -> _Scorer:
    groups = data[2] if isinstance(data, tuple) else data.groups()
    scorer = _Scorer(num_heads, num_classes, task, view_average, groups if view_average else None)
    for x, y, g in _iter_eval_batches(data, batch_size, window_rows):
        x = x.to(device)
        if not normalized:
            x = apply_normalizer(x, norm)
        y_cpu = y.cpu()
        if y_cpu.numel() and int(y_cpu.max()) >= num_classes:
            raise InputError(None, f"label {int(y_cpu.max())} >= num_classes {num_classes}")
        scorer.add(logits_fn(x), y_cpu, g)
    return scorer


# ---------------------------------------------------------------------------------- training
def _check_labels(y: np.ndarray, num_classes: int, what: str) -> None:
    if y.size and y.max() >= num_classes:
        raise InputError(None, f"{what} label {int(y.max())} >= num_classes {num_classes}")


def train_linear_probe(
    train: ProbeData,
    val: ProbeData | None = None,
    cfg: LinearProbeConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> LinearProbeResult:
    """Train the (lr x wd) grid of linear heads on ``train``; pick the best on ``val``.

    Without ``val``, ``cfg.val_fraction`` of the training groups (rows if no groups) is held out; with
    ``val_fraction == 0`` the head is chosen on the training set itself (reported as such).
    """
    cfg = cfg or LinearProbeConfig()
    cfg.validate()
    device = torch.device(cfg.device)
    selected_on = "val"
    if val is None:
        if cfg.val_fraction > 0:
            train, val = train.split(cfg.val_fraction, cfg.seed)
            selected_on = f"held-out {cfg.val_fraction:g} of train"
        else:
            val, selected_on = train, "train"
    if train.num_rows == 0:
        raise InputError(None, "no labelled training rows")
    if val.num_rows == 0:
        raise InputError(None, "no labelled validation rows")
    if len(train.feature_shape) != 1 or val.feature_shape != train.feature_shape:
        raise InputError(
            None,
            f"features must be (n, dim) with the same dim, got {train.feature_shape} and {val.feature_shape}",
        )
    y_train = train.labels()
    num_classes = cfg.num_classes or int(max(y_train.max(), val.labels().max())) + 1
    _check_labels(y_train, num_classes, "training")
    _check_labels(val.labels(), num_classes, "validation")
    if class_names is not None and len(class_names) != num_classes:
        raise InputError(None, f"{len(class_names)} class names for {num_classes} classes")

    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.wds]
    heads = _Heads(
        train.dim,
        num_classes,
        torch.tensor([g[0] for g in grid], dtype=torch.float32),
        torch.tensor([g[1] for g in grid], dtype=torch.float32),
        cfg,
        device,
    )
    in_ram = train.nbytes_float32 <= cfg.max_ram_gb * 2**30
    n = train.num_rows
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if in_ram:
        x_all, y_all, _ = train.load(device)
        norm = fit_normalizer(x_all, cfg.normalize)
        x_all = apply_normalizer(x_all, norm, torch.bfloat16 if cfg.matmul_dtype == "bfloat16" else None)
    else:
        norm = fit_normalizer(train, cfg.normalize, cfg.window_rows)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    loss_sum = torch.zeros(heads.H, dtype=torch.float64, device=device)
    bar = progress(total=total, desc=f"linear probe ({heads.H} heads)", unit="epoch",
                   disable=not cfg.progress, leave=False)
    # per-epoch curves: every head's mean training loss, and (when the snapshots fit) its weights, to score
    # the chosen head on the validation set after each epoch once the choice is made
    epoch_loss: list[list[float]] = []
    snaps: list[tuple[torch.Tensor, torch.Tensor]] = []
    keep_snaps = cfg.epochs > 1 and 4 * (heads.W.numel() + heads.b.numel()) * cfg.epochs <= _SNAPSHOT_BYTES
    for epoch in range(cfg.epochs):
        loss_sum.zero_()
        for xb, yb in _train_batches(
            train, in_ram, x_all if in_ram else None, y_all if in_ram else None, norm, cfg, gen, rng, device
        ):
            gW, gb, loss = heads.grads(xb, yb)
            heads.step(gW, gb, _lr_factor(step, total, warmup))
            loss_sum += loss.double() * xb.shape[0]
            step += 1
            bar.update(1)
        epoch_loss.append((loss_sum / n).cpu().tolist())
        if keep_snaps and epoch < cfg.epochs - 1:
            snaps.append((heads.W.detach().cpu().clone(), heads.b.detach().cpu().clone()))
    bar.close()
    train_loss = epoch_loss[-1]
    # heads never mix (separate columns of one matmul), so a diverged head (lr too large) only spoils itself
    diverged = (~torch.isfinite(heads.W).all(0).all(1) | ~torch.isfinite(heads.b).all(1)).cpu()

    scorer = _score_heads(
        heads.logits,
        val if not (in_ram and val is train) else (x_all, y_all, train.groups()),
        norm,
        heads.H,
        num_classes,
        cfg.task,
        cfg.view_average and val.has_groups,
        cfg.eval_batch_size,
        cfg.window_rows,
        device,
        normalized=(in_ram and val is train),
    )
    scores = scorer.result()
    metric = cfg.selection_metric()
    table = []
    for h, ((lr, wd), s) in enumerate(zip(grid, scores)):
        row = {"head": h, "lr": lr, "wd": wd, "train_loss": train_loss[h]}
        row.update({f"val_{k}": v for k, v in s.items()})
        if diverged[h]:
            row[f"val_{metric}"] = float("nan")
        table.append(row)
    vals = np.array([r[f"val_{metric}"] for r in table], dtype=float)
    if np.isnan(vals).all():
        raise InputError(None, f"every head gave a NaN validation {metric}")
    best_h = int(np.nanargmax(vals))
    from common.probes.notes import grid_edge_notes, val_groups_notes

    history = _head_history(best_h, epoch_loss, snaps, scores[best_h], metric, val, train, in_ram,
                            (x_all, y_all) if in_ram else None, norm, num_classes, cfg, device)
    notes = grid_edge_notes(table[best_h], cfg.lrs, cfg.wds)
    if val is not train and val.has_groups:
        notes += val_groups_notes(val.groups(), "group(s) (scenes / videos)")
    return LinearProbeResult(
        state_dict=heads.head_state(best_h),
        norm=norm,
        num_classes=num_classes,
        class_names=list(class_names) if class_names is not None else None,
        metric=metric,
        heads=table,
        best=dict(table[best_h]),
        config=dataclasses.asdict(cfg),
        meta={
            "selected_on": selected_on,
            "train_rows": n,
            "val_rows": val.num_rows,
            "streamed": not in_ram,
            "steps": total,
            "notes": notes,
            "history": history,
        },
        all_heads={"weight": heads.W.permute(1, 2, 0).contiguous().cpu(), "bias": heads.b.clone().cpu()}
        if cfg.keep_all_heads
        else None,
    )


_SNAPSHOT_BYTES = 256 * 2**20  # per-epoch weight snapshots kept for the validation curve, at most


def _head_history(best_h: int, epoch_loss: list[list[float]],
                  snaps: list[tuple[torch.Tensor, torch.Tensor]], final: dict, metric: str, val: ProbeData,
                  train: ProbeData, in_ram: bool, xy: tuple | None, norm: Mapping, num_classes: int,
                  cfg: LinearProbeConfig, device: torch.device) -> list[dict]:
    """The chosen head's curve: ``{"epoch", "train_loss", "val_loss", "val_<metric>"}`` per epoch
    (validation scores of the earlier epochs only when their weight snapshots were kept: see
    ``_SNAPSHOT_BYTES``)."""
    hist = [{"epoch": e + 1, "train_loss": float(losses[best_h])} for e, losses in enumerate(epoch_loss)]
    same = in_ram and val is train
    for e, (W, b) in enumerate(snaps):
        w = W[:, best_h, :].to(device)
        bias = b[best_h].to(device)
        scorer = _score_heads(
            lambda x, w=w, bias=bias: (x.float() @ w + bias).unsqueeze(1),
            val if not same else (xy[0], xy[1], train.groups()),
            norm, 1, num_classes, cfg.task, cfg.view_average and val.has_groups, cfg.eval_batch_size,
            cfg.window_rows, device, normalized=same,
        )
        res = scorer.result()[0]
        hist[e].update({"val_loss": float(res["loss"]), f"val_{metric}": float(res[metric])})
    hist[-1].update({"val_loss": float(final["loss"]), f"val_{metric}": float(final[metric])})
    return hist


def _train_batches(
    train: ProbeData,
    in_ram: bool,
    x_all,
    y_all,
    norm,
    cfg: LinearProbeConfig,
    gen: torch.Generator,
    rng: np.random.Generator,
    device: torch.device,
):
    """One epoch of shuffled (x normalised, y) mini-batches; exactly ceil(n / batch_size) batches."""
    bs = cfg.batch_size
    if in_ram:
        perm = torch.randperm(x_all.shape[0], generator=gen).to(device)
        for s in range(0, x_all.shape[0], bs):
            idx = perm[s : s + bs]
            yield torch.index_select(x_all, 0, idx), torch.index_select(y_all, 0, idx)
        return
    carry_x: torch.Tensor | None = None
    carry_y: torch.Tensor | None = None
    for xw, yw, _ in train.iter_windows(cfg.window_rows, rng):
        bf16 = getattr(cfg, "matmul_dtype", "float32") == "bfloat16"
        xt = apply_normalizer(torch.from_numpy(xw).to(device), norm, torch.bfloat16 if bf16 else None)
        yt = torch.from_numpy(yw).to(device)
        if carry_x is not None:
            xt, yt = torch.cat([carry_x, xt]), torch.cat([carry_y, yt])
        full = (xt.shape[0] // bs) * bs
        for s in range(0, full, bs):
            yield xt[s : s + bs], yt[s : s + bs]
        carry_x, carry_y = (xt[full:], yt[full:]) if full < xt.shape[0] else (None, None)
    if carry_x is not None:
        yield carry_x, carry_y


# ------------------------------------------------------------------------- inference and i/o
def _features_tensor(features: Any) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        return features.detach().float()
    return torch.from_numpy(np.asarray(features, dtype=np.float32))


@torch.no_grad()
def predict(
    result: LinearProbeResult, features: Any, batch_size: int = 65536, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Logits (N, K) float32 (cpu) of the best head for raw (un-normalised) features (N, D)."""
    w = result.state_dict["weight"].to(device)
    b = result.state_dict["bias"].to(device)
    n = features.shape[0]
    if features.ndim != 2 or features.shape[1] != w.shape[1]:
        raise InputError(
            None, f"features of shape {tuple(features.shape)} do not match the probe's input dim {w.shape[1]}"
        )
    out = torch.empty(n, w.shape[0])
    for s in range(0, n, batch_size):
        x = _features_tensor(features[s : s + batch_size]).to(device)
        out[s : s + batch_size] = (apply_normalizer(x, result.norm) @ w.t() + b).cpu()
    return out


@torch.no_grad()
def evaluate_linear_probe(
    result: LinearProbeResult,
    data: ProbeData,
    view_average: bool | None = None,
    batch_size: int = 65536,
    device: str | torch.device = "cpu",
) -> dict:
    """Scores of the best head on ``data``: classification top1/top5/mean_class (softmax averaged over a
    group's rows when ``view_average``, default from the config), segmentation mIoU/mAcc/allAcc and
    per-class ``iou``; always ``loss``, ``confusion`` (K, K) and ``num_rows``."""
    task = result.config.get("task", "classification")
    va = result.config.get("view_average", True) if view_average is None else view_average
    device = torch.device(device)
    w = result.state_dict["weight"].to(device)
    b = result.state_dict["bias"].to(device)
    if data.feature_shape != (w.shape[1],):
        raise InputError(
            None, f"features of shape {data.feature_shape} do not match the probe's dim {w.shape[1]}"
        )
    scorer = _score_heads(
        lambda x: (x @ w.t() + b).unsqueeze(1),
        data,
        result.norm,
        1,
        result.num_classes,
        task,
        va and data.has_groups,
        batch_size,
        262144,
        device,
    )
    out = scorer.result()[0]
    conf = scorer.confusion(0)
    if task == "segmentation":
        seg = segmentation_metrics(conf, result.class_names)
        out["iou"] = seg["iou"]
        out["acc"] = seg["acc"]
    out["confusion"] = conf
    out["num_rows"] = data.num_rows
    return out


_FORMAT = "probesuite.linear_probe"


def save_probe(result: LinearProbeResult, path: str | Path) -> Path:
    """Save a trained probe (plain tensors / lists / dicts) atomically through ``common.checkpoint``."""
    payload = {
        "format": _FORMAT,
        "version": 1,
        "state_dict": result.state_dict,
        "norm": result.norm,
        "num_classes": result.num_classes,
        "class_names": result.class_names,
        "metric": result.metric,
        "heads": result.heads,
        "best": result.best,
        "config": result.config,
        "meta": result.meta,
    }
    return write_probe_file(payload, path)


def load_probe(path: str | Path) -> LinearProbeResult:
    """Load a probe written by :func:`save_probe` (``CheckpointError`` naming the file otherwise)."""
    d = read_probe_file(path, _FORMAT, "linear")
    missing = [
        k for k in ("state_dict", "norm", "num_classes", "metric", "heads", "best", "config") if k not in d
    ]
    if missing or set(d["state_dict"]) != {"weight", "bias"}:
        raise CheckpointError(f"{path}: probe file lacks {missing or 'weight/bias'}")
    return LinearProbeResult(
        state_dict=d["state_dict"],
        norm=d["norm"],
        num_classes=int(d["num_classes"]),
        class_names=d.get("class_names"),
        metric=d["metric"],
        heads=d["heads"],
        best=d["best"],
        config=d["config"],
        meta=d.get("meta", {}),
    )
