"""MeZO over SSF on a small BatchNorm CNN (the x3d_s failure of the video bench, reduced).

The bench's x3d_s row died with ``loss became inf at step 2``: its pooled features had channels that
were constant on the batches the head's standardisation was estimated from (std 0, floored at 1e-6), so
any change of the encoder that moved such a channel was multiplied by 1e6 in the head; MeZO's projected
gradient from an eps=1e-3 perturbation was ~1e5 and the step blew the SSF scales up.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import ConfigError
from common.tuning.loop import TuneBatch, Tuner, TuneSettings
from common.tuning.mezo import MeZO


class BNCnn(nn.Module):
    """conv-BN-ReLU, a 1x1 conv + ReLU, global mean: BatchNorm at its init statistics (eval mode). The
    last conv's channels 4..7 have zero weights and bias 0.1: constant features on every input (as the
    dead / saturated channels of a randomly initialised network)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.out.weight[4:].zero_()
            self.out.bias[4:].fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return torch.relu(self.out(h)).mean(dim=(2, 3))


class ImageTask:
    """3 classes of 3 x 6 x 6 images (class = which colour channel is bright), 2 training batches."""

    modality = "toy"
    metric = "top1"
    class_names = ["r", "g", "b"]

    def __init__(self, rows: int = 12):
        rng = np.random.default_rng(0)
        self.data = {}
        for split, n in (("train", 2 * rows), ("val", 18)):
            y = rng.integers(0, 3, n)
            x = rng.normal(0, 0.3, (n, 3, 6, 6))
            x[np.arange(n), y] += 1.0
            self.data[split] = (torch.tensor(x, dtype=torch.float32), torch.tensor(y))
        self.rows = rows

    def build_encoder(self, device):
        torch.manual_seed(0)
        return BNCnn().eval(), {"encoder": "bncnn", "checkpoint": None, "checkpoint_sha256": "random:0"}

    def blocks(self, encoder):
        return [("stem", ["conv.", "bn."]), ("out", ["out."])]

    def fixed(self, encoder):
        return []

    def feature_dim(self, encoder):
        return 8

    def train_batches(self, epoch, rank, world) -> Iterator[TuneBatch]:
        x, y = self.data["train"]
        for s in range(0, len(y), self.rows):
            idx = torch.arange(s, s + self.rows)[rank::world]
            yield TuneBatch(x[idx], y[idx], idx.numpy().astype(np.int64))

    def eval_batches(self, split, rank, world):
        x, y = self.data[split]
        yield TuneBatch(x[rank::world], y[rank::world], np.arange(len(y))[rank::world])

    def features(self, encoder, inputs):
        return encoder(inputs)

    def decoder(self, encoder, num_classes):
        return None


def _tuner(tmp_path, **kw) -> Tuner:
    s = dict(method="mezo", over="ssf", steps=6, warmup=1, mezo_lr=1e-3, mezo_eps=1e-3, progress=False,
             norm_batches=2, save_every=100)
    s.update(kw)
    (tmp_path / "run").mkdir(exist_ok=True)
    return Tuner(ImageTask(), TuneSettings(**s), tmp_path / "run", torch.device("cpu"))


def test_constant_features_are_centred_not_divided_by_the_std_floor(tmp_path):
    tuner = _tuner(tmp_path)
    tuner.estimate_norm()
    norm = tuner.model.head.norm
    x = torch.cat([tuner._features(b.inputs, False) for b in tuner.task.train_batches(0, 0, 1)])
    const = x.std(0) == 0
    assert const[4:].all() and not const[:4].any()  # the reduced case: 4 live, 4 constant channels
    torch.testing.assert_close(norm.std[const], torch.ones(int(const.sum())))  # scale 1, not 1e-6
    torch.testing.assert_close(norm.mean, x.double().mean(0).float())
    torch.testing.assert_close(norm.std[~const], x[:, ~const].double().std(0, unbiased=False).float())
    # a small move of a constant channel stays small after the standardisation
    moved = x.clone()
    moved[:, 4:] += 1e-3
    assert (norm(moved) - norm(x)).abs().max() < 1e-2


def test_mezo_over_ssf_on_a_bn_cnn_stays_finite_and_bounded(tmp_path):
    """MeZO's setting (eps 1e-3, lr 1e-3) over SSF on the BN CNN: the losses stay finite and near the
    start (before the fix: 1e6-amplified constant channels, projected gradients ~1e3, loss inf / huge)."""
    tuner = _tuner(tmp_path)
    tuner.train()
    losses = [h["loss"] for h in tuner.state.history]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert max(losses) < 3 * losses[0] + 1.0, losses
    assert all(abs(h) < 1e3 for h in [tuner.mezo.last_grad])


def test_mezo_refuses_a_non_finite_loss_and_takes_no_step():
    p = nn.Parameter(torch.linspace(-1, 1, 5))
    before = p.detach().clone()
    opt = MeZO([p], lr=1e-3, eps=1e-3, seed=0)
    calls = iter([float("inf"), 1.0])
    with pytest.raises(ConfigError, match=r"mezo: the loss at theta \+ eps z is inf at step 0"):
        opt.step(lambda: next(calls))
    # theta restored (+eps z, -2 eps z, +eps z: up to float rounding, as every MeZO step) and not updated
    torch.testing.assert_close(p.detach(), before, rtol=0, atol=1e-6)
    assert opt.steps == 0 and opt.last_grad is None
    calls = iter([1.0, float("nan")])
    with pytest.raises(ConfigError, match=r"theta - eps z is nan at step 0"):
        opt.step(lambda: next(calls))
    torch.testing.assert_close(p.detach(), before, rtol=0, atol=1e-6)
    assert opt.steps == 0
    opt.step(lambda: torch.tensor(2.0))  # a finite loss still steps
    assert opt.steps == 1 and opt.last_grad == 0.0
