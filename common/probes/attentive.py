"""V-JEPA-style attentive probe: one learned query cross-attends to the frozen encoder's tokens.

``q = q + xattn(q, LN(tokens)); q = q + mlp(LN(q))`` (``depth`` such blocks), then ``Linear(D, K)``.
Tokens of several clips of one video may be concatenated along the token axis so the probe attends
across them. Training: AdamW (lr 1e-3, weight decay 0.01), linear warm-up (default none) then cosine to
0; evaluation averages the softmax over a video's views (rows sharing a group id).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import CheckpointError, ConfigError, InputError
from common.probes._files import read_probe_file, write_probe_file
from common.probes.data import ProbeData
from common.probes.engine import group_softmax_sums, lr_factor, score_heads, train_batches
from common.progress import progress

__all__ = [
    "AttentiveProbe",
    "AttentiveConfig",
    "auto_heads",
    "AttentiveProbeResult",
    "train_attentive_probe",
    "evaluate_attentive_probe",
    "predict_attentive",
    "save_attentive_probe",
    "load_attentive_probe",
]

class _CrossBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, q: torch.Tensor, tokens: torch.Tensor, pad_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        kv = self.norm1(tokens)
        q = q + self.attn(q, kv, kv, key_padding_mask=pad_mask, need_weights=False)[0]
        return q + self.mlp(self.norm2(q))


class AttentiveProbe(nn.Module):
    """One learned query (1, 1, D), ``depth`` cross-attention blocks, then ``Linear(D, num_classes)``."""

    def __init__(
        self, dim: int, num_heads: int, num_classes: int, mlp_ratio: float = 4.0, depth: int = 1
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attentive probe: dim {dim} is not divisible by num_heads {num_heads}")
        if depth < 1:
            raise ConfigError(f"attentive probe: depth must be >= 1, got {depth}")
        self.kwargs = {
            "dim": dim,
            "num_heads": num_heads,
            "num_classes": num_classes,
            "mlp_ratio": mlp_ratio,
            "depth": depth,
        }
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.blocks = nn.ModuleList([_CrossBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L, D) (``pad_mask`` (B, L) True = padding) -> logits (B, K)."""
        q = self.query.expand(tokens.shape[0], -1, -1)
        for blk in self.blocks:
            q = blk(q, tokens, pad_mask)
        return self.head(q[:, 0])


def auto_heads(dim: int) -> int:
    """The largest of 16, 12, 8, 6, 4, 3, 2, 1 that divides ``dim``."""
    return next(h for h in (16, 12, 8, 6, 4, 3, 2, 1) if dim % h == 0)


@dataclass
class AttentiveConfig:
    """Settings of the attentive probe (defaults from V-JEPA's frozen evaluation)."""

    num_heads: int = 16  # 0: the largest of 16, 12, 8, 6, 4, 3, 2, 1 dividing the token dim
    depth: int = 1
    mlp_ratio: float = 4.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.0
    epochs: int = 20
    batch_size: int = 256
    val_fraction: float = 0.1
    view_average: bool = True
    metric: str = "top1"  # "top1" | "mean_class"
    num_classes: int = 0
    seed: int = 0
    device: str = "cpu"
    max_ram_gb: float = 2.0
    window_rows: int = 16384
    eval_batch_size: int = 512
    progress: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("attentive: epochs, batch_size and lr must be positive")
        if self.num_heads < 0:
            raise ConfigError(f"attentive.num_heads must be >= 0 (0 = auto), got {self.num_heads}")
        if self.metric not in ("top1", "mean_class"):
            raise ConfigError(f"attentive.metric must be top1 or mean_class, not {self.metric!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"attentive.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class AttentiveProbeResult:
    """A trained attentive probe with its validation scores and per-epoch training loss."""

    state_dict: dict[str, torch.Tensor]
    model_kwargs: dict
    num_classes: int
    class_names: list[str] | None
    val: dict
    history: list[dict]
    config: dict
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ the probe contract
    @property
    def trainable_params(self) -> int:
        return int(sum(p.numel() for p in self.model().parameters()))

    def evaluate(self, data: ProbeData, view_average: bool | None = None, device: str | torch.device = "cpu",
                 **kw: Any) -> dict:
        """:func:`evaluate_attentive_probe` of this probe."""
        return evaluate_attentive_probe(self, data, view_average=view_average, device=device, **kw)

    def group_scores(self, data: ProbeData, device: str | torch.device = "cpu") -> np.ndarray:
        """(G, K) softmax probabilities summed over each group's rows (groups in sorted order)."""
        return group_softmax_sums(lambda x: predict_attentive(self, x, device=device), data)

    def summary(self) -> dict:
        heads = self.model_kwargs["num_heads"]
        return {"heads": heads, "val_top1": 100.0 * self.val["top1"],
                "setting": f"{heads} heads, {self.config['epochs']} epochs"}

    def save(self, path: str | Path) -> Path:
        return save_attentive_probe(self, path)

    @classmethod
    def load(cls, path: str | Path) -> AttentiveProbeResult:
        return load_attentive_probe(path)

    def model(self, device: str | torch.device = "cpu") -> AttentiveProbe:
        m = AttentiveProbe(**self.model_kwargs)
        m.load_state_dict(self.state_dict)
        return m.to(device).eval()


def _check_tokens(data: ProbeData, what: str) -> None:
    if len(data.feature_shape) != 2:
        raise InputError(
            None, f"attentive probe: {what} rows must be token arrays (L, D), got shape {data.feature_shape}"
        )


def train_attentive_probe(
    train: ProbeData,
    val: ProbeData | None = None,
    cfg: AttentiveConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> AttentiveProbeResult:
    """Train an :class:`AttentiveProbe` on rows of tokens (ProbeData whose rows are (L, D) arrays).

    Without ``val`` a fraction of the training groups is held out (``val_fraction``; 0: score on train).
    """
    cfg = cfg or AttentiveConfig()
    cfg.validate()
    device = torch.device(cfg.device)
    _check_tokens(train, "training")
    selected_on = "val"
    if val is None:
        if cfg.val_fraction > 0:
            train, val = train.split(cfg.val_fraction, cfg.seed)
            selected_on = f"held-out {cfg.val_fraction:g} of train"
        else:
            val, selected_on = train, "train"
    _check_tokens(val, "validation")
    if val.feature_shape[-1] != train.feature_shape[-1]:
        raise InputError(None, f"token dims differ: train {train.feature_shape}, val {val.feature_shape}")
    if train.num_rows == 0 or val.num_rows == 0:
        raise InputError(None, "attentive probe needs labelled training and validation rows")
    k = cfg.num_classes or int(max(train.labels().max(), val.labels().max())) + 1
    if int(train.labels().max()) >= k:
        raise InputError(None, f"training label {int(train.labels().max())} >= num_classes {k}")
    torch.manual_seed(cfg.seed)
    model = AttentiveProbe(train.dim, cfg.num_heads or auto_heads(train.dim), k, cfg.mlp_ratio,
                           cfg.depth).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "query"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "query"]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
    )
    in_ram = train.nbytes_float32 <= cfg.max_ram_gb * 2**30
    x_all = y_all = None
    if in_ram:
        x_all, y_all, _ = train.load(device)
    n = train.num_rows
    spe = math.ceil(n / cfg.batch_size)
    total, warmup = spe * cfg.epochs, int(round(cfg.warmup_epochs * spe))
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    history = []
    step = 0
    bar = progress(total=total, desc=f"attentive probe ({cfg.epochs} epochs)", unit="step",
                   disable=not cfg.progress, leave=False)
    model.train()
    for epoch in range(cfg.epochs):
        tot, cnt = 0.0, 0
        for xb, yb in train_batches(train, cfg.batch_size, loaded=(x_all, y_all) if in_ram else None,
                                    window_rows=cfg.window_rows, gen=gen, rng=rng, device=device):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(step, total, warmup)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not torch.isfinite(loss):
                raise InputError(None, f"attentive probe: loss became {loss.item()} at step {step}")
            tot += loss.item() * yb.shape[0]
            cnt += yb.shape[0]
            step += 1
            bar.update(1)
        history.append({"epoch": epoch + 1, "train_loss": tot / max(cnt, 1)})
    bar.close()
    model.eval()
    result = AttentiveProbeResult(
        state_dict={k_: v.detach().cpu().clone() for k_, v in model.state_dict().items()},
        model_kwargs=dict(model.kwargs),
        num_classes=k,
        class_names=list(class_names) if class_names is not None else None,
        val={},
        history=history,
        config=dataclasses.asdict(cfg),
        meta={"selected_on": selected_on, "train_rows": n, "val_rows": val.num_rows, "steps": total},
    )
    result.val = evaluate_attentive_probe(result, val, device=device)
    if val is not train and val.has_groups:
        from common.probes.notes import val_groups_notes

        result.meta["notes"] = val_groups_notes(val.groups(), "video(s)", "attentive probe",
                                               "gives the reported validation score")
    result.val.pop("confusion", None)
    return result


@torch.no_grad()
def evaluate_attentive_probe(
    result: AttentiveProbeResult,
    data: ProbeData,
    view_average: bool | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """top1 / top5 / mean_class / loss (softmax averaged over a group's views), ``confusion`` (K, K)."""
    _check_tokens(data, "evaluation")
    model = result.model(device)
    va = result.config.get("view_average", True) if view_average is None else view_average
    bs = batch_size or result.config.get("eval_batch_size", 512)
    scorer = score_heads(
        lambda x: model(x).unsqueeze(1),
        data,
        norm=None,
        num_heads=1,
        num_classes=result.num_classes,
        task="classification",
        view_average=va and data.has_groups,
        batch_size=bs,
        window_rows=16384,
        device=torch.device(device),
    )
    out = scorer.result()[0]
    out["confusion"] = scorer.confusion(0)
    out["num_rows"] = data.num_rows
    return out


@torch.no_grad()
def predict_attentive(
    result: AttentiveProbeResult, tokens: Any, batch_size: int = 512, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Logits (N, K) (cpu) for tokens (N, L, D)."""
    model = result.model(device)
    if tokens.ndim != 3 or tokens.shape[-1] != result.model_kwargs["dim"]:
        raise InputError(
            None,
            f"tokens of shape {tuple(tokens.shape)} do not match the probe "
            f"(N, L, {result.model_kwargs['dim']})",
        )
    outs = []
    for s in range(0, tokens.shape[0], batch_size):
        t = tokens[s : s + batch_size]
        t = t.float() if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t, dtype=np.float32))
        outs.append(model(t.to(device)).cpu())
    return torch.cat(outs)


_FORMAT = "probesuite.attentive_probe"


def save_attentive_probe(result: AttentiveProbeResult, path: str | Path) -> Path:
    """Save a plain dict atomically through ``common.checkpoint`` (read back with ``weights_only``)."""
    payload = {
        "format": _FORMAT,
        "version": 1,
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(result)},
    }
    payload["val"] = {k: v for k, v in payload["val"].items() if k != "confusion"}
    return write_probe_file(payload, path)


def load_attentive_probe(path: str | Path) -> AttentiveProbeResult:
    """Load a file written by :func:`save_attentive_probe` (``CheckpointError`` naming it otherwise)."""
    d = read_probe_file(path, _FORMAT, "attentive")
    names = [f.name for f in dataclasses.fields(AttentiveProbeResult)]
    missing = [k for k in names if k not in d]
    if missing:
        raise CheckpointError(f"{path}: probe file lacks {missing}")
    res = AttentiveProbeResult(**{k: d[k] for k in names})
    try:
        res.model()
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the recorded probe shape ({e})") from None
    return res
