"""The probe engine: batching, the vectorised grid of linear heads, lr schedules and the scoring of many
heads at once. Public, with explicit parameters (no config objects); used by every probe.

Training source contract
------------------------
The engine trains on an *iterable of batches* ``(x, y, group)``:

* ``x``: float tensor ``(B, *feature_shape)`` (features of a cache, or later the output of a live
  encoder; a probe that trains part of an encoder would receive its inputs instead),
* ``y``: int64 tensor ``(B,)`` of class ids (``-1`` rows are never yielded),
* ``group``: int64 numpy array ``(B,)`` (scene / video id; used to average a video's views).

:class:`common.probes.data.ProbeData` is one source (:meth:`ProbeData.batches`, or :func:`train_batches`
for the cached fast path); anything that yields such triples is another (:func:`rebatch` cuts a stream
of arbitrary-size blocks into fixed-size batches). A :class:`HeadGrid` consumes batches one at a time
(``train_step(x, y)``) and is scored on any batch iterable (``scores(batches)``), so an
encoder-in-the-loop probe reuses the same heads, schedule (:func:`lr_factor`) and scoring
(:class:`Scorer`, :func:`score_heads`).

The heads are one batched parameter ``W`` of shape (D, H, K): every mini-batch costs one matmul
``X (B, D) @ W (D, H*K)`` for the forward pass and one for the gradient, whatever the number of heads.
Forward, softmax cross-entropy gradient and the optimiser update (AdamW or SGD with momentum, one
learning rate / weight decay per head) are written by hand and vectorised over heads; heads do not
interact, so a head trained inside the grid follows exactly the trajectory it would follow alone on
the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from common.errors import InputError
from common.metrics import segmentation_metrics
from common.probes.data import ProbeData
from common.probes.normalize import apply_normalizer

__all__ = [
    "Batch",
    "group_softmax_sums",
    "HeadGrid",
    "Scorer",
    "lr_factor",
    "eval_batches",
    "score_heads",
    "score_batches",
    "train_batches",
    "rebatch",
]

Batch = tuple[torch.Tensor, torch.Tensor, np.ndarray]  # (x, y, group): the training source contract


class HeadGrid:
    """H linear heads as one (D, H, K) weight with a vectorised AdamW / SGD update.

    ``lrs`` / ``wds``: one learning rate / weight decay per head. Step by step: ``train_step(x, y,
    lr_factor)`` (``x`` already normalised); ``scores(batches, ...)`` scores every head; ``head_state(h)``
    is head ``h`` as an ``nn.Linear`` state dict.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        lrs: torch.Tensor | Sequence[float],
        wds: torch.Tensor | Sequence[float],
        optimizer: str = "adamw",
        momentum: float = 0.9,
        betas: Sequence[float] = (0.9, 0.999),
        device: str | torch.device = "cpu",
    ) -> None:
        if optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', not {optimizer!r}")
        lrs = torch.as_tensor(lrs, dtype=torch.float32)
        wds = torch.as_tensor(wds, dtype=torch.float32)
        if lrs.shape != wds.shape or lrs.ndim != 1:
            raise ValueError(f"lrs, wds: 1-d of one length, got {tuple(lrs.shape)}, {tuple(wds.shape)}")
        device = torch.device(device)
        h = lrs.numel()
        self.H, self.K, self.D = h, num_classes, dim
        self.W = torch.zeros(dim, h, num_classes, device=device)
        self.b = torch.zeros(h, num_classes, device=device)
        self.lrs = lrs.to(device).view(1, h, 1)
        self.wds = wds.to(device).view(1, h, 1)
        self.opt = optimizer
        self.mom = momentum
        self.b1, self.b2 = (float(b) for b in betas)
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

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr_factor: float = 1.0) -> torch.Tensor:
        """One optimiser step of every head on the (normalised) batch; returns the per-head losses (H,)."""
        gW, gb, loss = self.grads(x, y)
        self.step(gW, gb, lr_factor)
        return loss

    def scores(self, batches: Iterable[Batch], task: str = "classification",
               groups: np.ndarray | None = None) -> list[dict]:
        """Every head's scores on (normalised) batches; ``groups``: every group id of the batches to
        average a group's views (classification), None: score rows."""
        return score_batches(self.logits, batches, self.H, self.K, task, groups, self.W.device).result()

    def diverged(self) -> torch.Tensor:
        """(H,) bool: heads whose weights are no longer finite (an lr too large spoils only its head)."""
        return (~torch.isfinite(self.W).all(0).all(1) | ~torch.isfinite(self.b).all(1)).cpu()

    def head_state(self, h: int) -> dict[str, torch.Tensor]:
        return {"weight": self.W[:, h, :].t().contiguous().cpu(), "bias": self.b[h].clone().cpu()}

    @property
    def num_params(self) -> int:
        """Trainable parameters of the whole grid."""
        return self.W.numel() + self.b.numel()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# --------------------------------------------------------------------------------- evaluation
class Scorer:
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


def eval_batches(data: ProbeData | tuple, batch_size: int, window_rows: int) -> Iterator[Batch]:
    """Yield (x float32 tensor, y, groups) in storage order from a ProbeData or loaded (x, y, groups)."""
    if isinstance(data, tuple):
        x, y, g = data
        for s in range(0, x.shape[0], batch_size):
            yield x[s : s + batch_size], y[s : s + batch_size], g[s : s + batch_size]
        return
    yield from data.batches(batch_size, None, window_rows)


def score_batches(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    num_heads: int,
    num_classes: int,
    task: str,
    groups: np.ndarray | None,
    device: str | torch.device = "cpu",
    norm: Mapping | None = None,
) -> Scorer:
    """Score ``num_heads`` heads (``logits_fn``: x (B, ...) -> (B, H, K)) on batches; ``groups``: every
    group id that occurs, to average a group's views (None: per row); ``norm``: applied to x first."""
    scorer = Scorer(num_heads, num_classes, task, groups is not None, groups)
    for x, y, g in batches:
        x = x.to(device)
        if norm is not None:
            x = apply_normalizer(x, norm)
        y_cpu = y.cpu()
        if y_cpu.numel() and int(y_cpu.max()) >= num_classes:
            raise InputError(None, f"label {int(y_cpu.max())} >= num_classes {num_classes}")
        scorer.add(logits_fn(x), y_cpu, g)
    return scorer


def score_heads(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    data: ProbeData | tuple,
    *,
    norm: Mapping | None,
    num_heads: int,
    num_classes: int,
    task: str,
    view_average: bool,
    batch_size: int,
    window_rows: int,
    device: str | torch.device,
) -> Scorer:
    """:func:`score_batches` on a ProbeData or loaded (x, y, groups) (``norm`` None: rows already
    normalised); ``view_average``: average a group's views (classification)."""
    groups = data[2] if isinstance(data, tuple) else data.groups()
    return score_batches(logits_fn, eval_batches(data, batch_size, window_rows), num_heads, num_classes,
                         task, groups if view_average else None, device, norm)


def train_batches(
    train: ProbeData,
    batch_size: int,
    *,
    loaded: tuple[torch.Tensor, torch.Tensor] | None = None,
    norm: Mapping | None = None,
    out_dtype: torch.dtype | None = None,
    window_rows: int = 262144,
    gen: torch.Generator | None = None,
    rng: np.random.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (x normalised, y) mini-batches; exactly ceil(n / batch_size) batches.

    ``loaded``: the rows already in memory (x normalised, y) on ``device``, shuffled with ``gen``;
    otherwise ``train`` is streamed in windows shuffled with ``rng`` and normalised with ``norm`` (in
    ``out_dtype``) on the fly.
    """
    if loaded is not None:
        x_all, y_all = loaded
        perm = torch.randperm(x_all.shape[0], generator=gen).to(device)
        for s in range(0, x_all.shape[0], batch_size):
            idx = perm[s : s + batch_size]
            yield torch.index_select(x_all, 0, idx), torch.index_select(y_all, 0, idx)
        return

    def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xw, yw, _ in train.iter_windows(window_rows, rng):
            xt = torch.from_numpy(xw).to(device)
            if norm is not None:
                xt = apply_normalizer(xt, norm, out_dtype)
            yield xt, torch.from_numpy(yw).to(device)

    yield from rebatch(windows(), batch_size)


def rebatch(blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_size: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cut a stream of (x, y) blocks of any size into batches of ``batch_size`` rows (the last one
    shorter), carrying the remainder of a block over to the next."""
    carry_x: torch.Tensor | None = None
    carry_y: torch.Tensor | None = None
    for xt, yt in blocks:
        if carry_x is not None:
            xt, yt = torch.cat([carry_x, xt]), torch.cat([carry_y, yt])
        full = (xt.shape[0] // batch_size) * batch_size
        for s in range(0, full, batch_size):
            yield xt[s : s + batch_size], yt[s : s + batch_size]
        carry_x, carry_y = (xt[full:], yt[full:]) if full < xt.shape[0] else (None, None)
    if carry_x is not None:
        yield carry_x, carry_y


def group_softmax_sums(predict_rows: Callable[[torch.Tensor], torch.Tensor], data: ProbeData) -> np.ndarray:
    """(G, K) softmax probabilities of ``predict_rows(x)`` (logits of a group's rows) summed over each
    group's rows, groups in sorted order: the ``group_scores`` of every probe that outputs logits."""
    x, _, g = data.load()
    return np.stack([torch.softmax(predict_rows(x[torch.from_numpy(g == u)]), 1).double().sum(0).numpy()
                     for u in np.unique(g)])
