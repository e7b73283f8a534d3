"""The tuning loop (common/tuning/loop.py) on a toy task: methods, accumulation, resume, results table."""
from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import CheckpointError
from common.tuning.cost import PeakMemory, can_reset_peak_rss
from common.tuning.loop import TuneBatch, Tuner, TuneSettings, method_tag, run_tuning, write_results


class ToyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.b0 = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.b1 = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        h = h + torch.relu(self.b0(h))
        return h + torch.relu(self.b1(h))


class ToyTask:
    """4-d Gaussian blobs of 3 classes; 'inputs' are the raw rows; groups = row ids (segmentation)."""

    modality = "toy"
    metric = "miou"
    class_names = ["a", "b", "c"]

    def __init__(self, n_batches: int = 4, rows: int = 24):
        rng = np.random.default_rng(0)
        centers = rng.normal(0, 2, (3, 4))
        self.data = {}
        for split, n in (("train", n_batches * rows), ("val", 60)):
            y = rng.integers(0, 3, n)
            x = centers[y] + rng.normal(0, 1, (n, 4))
            self.data[split] = (torch.tensor(x, dtype=torch.float32), torch.tensor(y))
        self.rows = rows

    def build_encoder(self, device):
        torch.manual_seed(0)
        return ToyEncoder(), {"encoder": "toy", "checkpoint": None, "checkpoint_sha256": "random:0"}

    def blocks(self, encoder):
        return [("b0", ["embed.", "b0."]), ("b1", ["b1."])]

    def fixed(self, encoder):
        return []

    def feature_dim(self, encoder):
        return 8

    def train_batches(self, epoch, rank, world) -> Iterator[TuneBatch]:
        x, y = self.data["train"]
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for s in range(0, len(y), self.rows):
            idx = perm[s: s + self.rows][rank::world]
            yield TuneBatch(x[idx], y[idx], idx.numpy().astype(np.int64))

    def eval_batches(self, split, rank, world):
        x, y = self.data[split]
        yield TuneBatch(x[rank::world], y[rank::world], np.arange(len(y))[rank::world])

    def features(self, encoder, inputs):
        return encoder(inputs)

    def decoder(self, encoder, num_classes):
        enc = [encoder]

        class Dec(nn.Module):
            def __init__(self):
                super().__init__()
                self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, num_classes))

            def forward(self, inputs):
                with torch.no_grad():
                    f = enc[0](inputs)
                return self.mlp(f)

        return Dec()


def _settings(**kw) -> TuneSettings:
    base = dict(steps=4, warmup=1, lr=1e-2, head_lr=1e-2, progress=False, norm_batches=2, save_every=2,
                lrs=[1e-2, 1e-1], wds=[0.0], lora_targets=["0"], lora_rank=2)
    base.update(kw)
    return TuneSettings(**base)


@pytest.mark.parametrize("method,kw", [("linear", {}), ("decoder", {}), ("ssf", {}), ("lora", {}),
                                       ("last_k", {"k": 1}), ("progressive", {"progressive_at": [0.5]}),
                                       ("full", {}), ("mezo", {"over": "last_k", "k": 1})])
def test_every_method_changes_only_its_trainable_set(tmp_path, method, kw):
    task = ToyTask()
    s = _settings(method=method, **kw)
    tuner = Tuner(task, s, tmp_path, torch.device("cpu"), "h")
    before = {n: p.detach().clone() for n, p in tuner.model.named_parameters()}
    declared = set(tuner.trainable)
    tuner.train()
    for n, p in tuner.model.named_parameters():
        if n not in declared:
            assert torch.equal(p, before[n]), f"{method}: {n} moved"
    if method != "linear":
        assert any(not torch.equal(p, before[n]) for n, p in tuner.model.named_parameters() if n in declared)
    else:
        assert not declared & {n for n, _ in tuner.model.named_parameters() if n.startswith("encoder.")}
    if method == "last_k" or (method == "mezo"):
        assert {n for n in declared if n.startswith("encoder.")} == {n for n, _ in
                                                                     tuner.model.named_parameters()
                                                                     if n.startswith("encoder.b1.")}
    rows = tuner.evaluate("val")
    assert len(rows) == (2 if method == "linear" else 1) and 0.0 <= rows[0]["mIoU"] <= 1.0


def test_progressive_unfreezes_on_schedule(tmp_path):
    task = ToyTask()
    tuner = Tuner(task, _settings(method="progressive", steps=4, progressive_at=[0.5]), tmp_path,
                  torch.device("cpu"), "h")
    b0 = {n: p.detach().clone() for n, p in tuner.model.named_parameters() if n.startswith("encoder.")}
    tuner.train(max_steps=2)  # steps 0, 1: fraction < 0.5, only the head trains
    for n, p in tuner.model.named_parameters():
        if n in b0:
            assert torch.equal(p, b0[n]), n
    tuner.train()
    assert any(not torch.equal(p, b0[n]) for n, p in tuner.model.named_parameters() if n in b0)


def test_accumulation_equals_one_large_batch(tmp_path):
    """accum=2 over two equal-size micro-batches = one step on their union."""
    task = ToyTask(rows=24)
    a = Tuner(task, _settings(method="full", steps=1, warmup=1), tmp_path / "a", torch.device("cpu"), "h")
    a.estimate_norm()
    b = Tuner(task, _settings(method="full", steps=1, warmup=1), tmp_path / "b", torch.device("cpu"), "h")
    b.model.load_state_dict(a.model.state_dict())
    batches = list(task.train_batches(0, 0, 1))[:2]
    a.train_step(batches)
    union = TuneBatch(torch.cat([x.inputs for x in batches]), torch.cat([x.labels for x in batches]),
                      np.concatenate([x.groups for x in batches]))
    b.train_step([union])
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("method", ["lora", "mezo"])
def test_resume_is_exact(tmp_path, method):
    task = ToyTask()
    kw = {"over": "ssf"} if method == "mezo" else {}
    full = run_tuning(task, _settings(method=method, **kw), tmp_path / "a")
    part = run_tuning(task, _settings(method=method, **kw), tmp_path / "b", max_steps=2)
    assert part["stopped_at"] == 2
    again = run_tuning(task, _settings(method=method, **kw), tmp_path / "b")
    assert again["resumed"] and again["mIoU"] == full["mIoU"]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    task = ToyTask()
    a = Tuner(task, _settings(method="ssf"), tmp_path, torch.device("cpu"), "hash-a")
    a.train(max_steps=2)
    b = Tuner(task, _settings(method="ssf"), tmp_path, torch.device("cpu"), "hash-b")
    with pytest.raises(CheckpointError, match="another configuration"):
        b.resume()


def test_results_table_merges_rows_and_draws_the_ladder(tmp_path):
    task = ToyTask()
    run_tuning(task, _settings(method="linear"), tmp_path)
    run_tuning(task, _settings(method="ssf"), tmp_path)
    row = run_tuning(task, _settings(method="ssf", lr=3e-2), tmp_path)  # same method + encoder: replaces
    data = json.loads((tmp_path / "tune_results.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["linear", "ssf"]
    assert data["rows"][1]["config_hash"] == row["config_hash"]
    for key in ("trainable_params", "trainable_pct", "peak_memory_mb", "step_time_s", "total_time_s",
                "mIoU", "checkpoint_sha256", "config_hash"):
        assert key in data["rows"][0]
    assert data["rows"][0]["trainable_pct"] == 0.0 and data["rows"][1]["trainable_pct"] > 0.0
    assert (tmp_path / "ladder.png").stat().st_size > 0
    md = (tmp_path / "tune_results.md").read_text()
    assert "| linear" in md and "| ssf" in md
    write_results(tmp_path, [dict(data["rows"][0], method="linear", mIoU=1.0)], "toy")
    data = json.loads((tmp_path / "tune_results.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["ssf", "linear"]


def test_method_tag():
    assert method_tag(TuneSettings(method="mezo", over="lora")) == "mezo-lora"
    assert method_tag(TuneSettings(method="ssf")) == "ssf"


@pytest.mark.parametrize("method,kw", [("full", {}), ("ssf", {}), ("last_k", {"k": 1}),
                                       ("progressive", {"progressive_at": [0.5]})])
def test_head_lr_is_the_heads_lr_in_every_method(tmp_path, method, kw):
    """``tune.head_lr`` is the head's learning rate whatever the method: ``full`` (layer-wise decay over
    the blocks) gave its head ``tune.lr`` and ignored ``head_lr``; the blocks keep lr * decay ** (n - i)."""
    s = _settings(method=method, lr=2e-3, head_lr=5e-3, layer_decay=0.5, **kw)
    tuner = Tuner(ToyTask(), s, tmp_path, torch.device("cpu"))
    names = {id(p): n for n, p in tuner.model.named_parameters()}
    head = [g for g in tuner.opt.param_groups if any(names[id(p)].startswith("head.") for p in g["params"])]
    assert head and all(g["lr"] == pytest.approx(5e-3) for g in head)
    assert all(names[id(p)].startswith("head.") for g in head for p in g["params"])
    if method == "full":
        blocks = sorted(g["lr"] for g in tuner.opt.param_groups if g not in head)
        assert blocks == pytest.approx([2e-3 * 0.25, 2e-3 * 0.5])


# ------------------------------------------------------------------------- peak memory of the training
MB = 2**20
needs_hwm = pytest.mark.skipif(not can_reset_peak_rss(),
                               reason="needs Linux VmHWM and a writable /proc/self/clear_refs")


def _rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _touched(mb: int) -> torch.Tensor:
    return torch.ones(mb * MB // 4)  # every page written: resident


@needs_hwm
def test_peak_memory_starts_at_start_not_at_the_process_peak():
    """The CPU peak was ``ru_maxrss`` of the whole process: whatever ran before the training (data loading,
    an earlier evaluation) set it, in every method alike. ``start`` resets the kernel's high-water mark."""
    rss0 = _rss_bytes()
    big = _touched(400)
    del big  # a large block goes back to the system (mmap): the RSS drops, the old peak stays
    mem = PeakMemory("cpu")
    mem.start()
    assert mem.kind == "cpu_peak_rss_train"
    p0 = mem.peak()
    assert p0 < rss0 + 200 * MB
    assert mem.process_peak() >= rss0 + 350 * MB  # the process-wide figure is kept as a second field
    more = _touched(200)
    p1 = mem.peak()
    assert 180 * MB <= p1 - p0 <= 260 * MB
    del more


class EvalHeavyTask(ToyTask):
    """Evaluation holds a large buffer (the full-resolution scenes of a real task)."""

    def __init__(self):
        super().__init__()
        self.held: list[torch.Tensor] = []

    def eval_batches(self, split, rank, world):
        self.held.append(_touched(300))
        yield from super().eval_batches(split, rank, world)


@needs_hwm
@pytest.mark.parametrize("method", ["linear", "ssf"])
def test_row_peak_memory_is_the_training_peak_read_before_evaluation(tmp_path, method):
    """``linear`` scores its grid on the selection split before the cost was read, so the row's peak
    included that evaluation; the row now holds the peak of the training steps, read when they end."""
    task = EvalHeavyTask()
    row = run_tuning(task, _settings(method=method), tmp_path)
    assert task.held  # the evaluation ran and its buffers are still resident
    rss = _rss_bytes()
    assert row["memory_kind"] == "cpu_peak_rss_train"
    assert row["peak_memory_mb"] > 10
    assert row["peak_memory_mb"] * MB < rss - 250 * MB  # the evaluation's buffer is not in it
    assert row["process_peak_memory_mb"] >= row["peak_memory_mb"]
    task.held.clear()


@needs_hwm
def test_training_peak_survives_resume_as_the_larger_of_the_sessions(tmp_path):
    task = ToyTask()
    part = run_tuning(task, _settings(method="ssf"), tmp_path, max_steps=2)
    assert part["stopped_at"] == 2
    st = torch.load(tmp_path / "runs" / next(p.name for p in (tmp_path / "runs").iterdir()) / "last.pth",
                    weights_only=False)
    assert st["train_peak_memory_bytes"] > 10 * MB
    again = run_tuning(task, _settings(method="ssf"), tmp_path)
    assert again["resumed"] and again["peak_memory_mb"] * MB >= st["train_peak_memory_bytes"]


# ----------------------------------------------------------------------------------------- the ladder
def _ladder_rows() -> list[dict]:
    """Five rungs within 0.2 mIoU of each other (cached linear / ssf / mezo near 14 in the bench), at
    close and equal x, plus two far ones."""
    near = [("cached linear (extract + probe)", 1_000, 14.00), ("linear", 1_100, 14.05),
            ("ssf", 3_000, 14.10), ("mezo-ssf", 3_000, 14.15), ("lora+lp-ft", 5_000, 14.20)]
    far = [("full", 4_000_000, 10.0), ("progressive", 3_000_000, 10.1)]
    return [{"method": m, "encoder": "sparseunet", "checkpoint_sha256": "ab" * 32, "trainable_params": x,
             "mIoU": y} for m, x, y in near + far]


def test_ladder_labels_do_not_overlap(tmp_path):
    from matplotlib.text import Text

    from common.report import _plt
    from common.tuning.loop import ladder_figure, ladder_plot

    fig, labels = ladder_figure(_ladder_rows())
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, r) for a in labels]  # the text (an Annotation's adds its leader)
    assert len(boxes) == 7
    fw, fh = fig.bbox.width, fig.bbox.height
    for i, a in enumerate(boxes):
        assert a.x0 >= 0 and a.y0 >= 0 and a.x1 <= fw and a.y1 <= fh, f"{labels[i].get_text()} off the figure"
        for j in range(i):
            assert not a.overlaps(boxes[j]), f"{labels[i].get_text()} overlaps {labels[j].get_text()}"
    _plt().close(fig)
    assert ladder_plot(_ladder_rows(), tmp_path / "ladder.png").stat().st_size > 0
