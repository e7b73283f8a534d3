"""LP-FT in ``pointprobe tune`` (issue 14): ``tune.head_init`` starts the tuned head from a linear probe
file written by ``pointprobe probe`` (Kumar et al. 2022: linear probe, then fine-tune)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError, InputError
from common.probes.linear import LinearProbeResult, save_probe
from common.probes.normalize import apply_normalizer
from tests.test_tune_points import _cfg, _run_dir, write_rooms

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from common.tuning.loop import Tuner
    from pointprobe.tune import PointTuneTask, run_point_tune


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    return write_rooms(tmp_path_factory.mktemp("rooms") / "data")


def _probe_file(path: Path, dim: int, class_names: list[str], mode: str = "standardize",
                seed: int = 0) -> Path:
    """A linear probe file as ``pointprobe probe`` writes it (``save_probe``), with given weights."""
    g = torch.Generator().manual_seed(seed)
    k = len(class_names)
    norm = {"mode": mode, "mean": torch.randn(dim, generator=g), "std": torch.rand(dim, generator=g) + 0.5}
    if mode == "whiten":
        norm["proj"] = torch.eye(dim)
    res = LinearProbeResult(
        state_dict={"weight": torch.randn(k, dim, generator=g), "bias": torch.randn(k, generator=g)},
        norm=norm, num_classes=k, class_names=list(class_names), metric="miou",
        heads=[{"head": 0, "lr": 1e-3, "wd": 0.0}], best={"head": 0, "lr": 1e-3, "wd": 0.0}, config={})
    return save_probe(res, path)


def _task(rooms: Path, out: Path, *extra: str) -> tuple[PointTuneTask, int]:
    cfg = _cfg(rooms, out, *extra)
    task = PointTuneTask(cfg, torch.device("cpu"))
    enc, _ = task.build_encoder(torch.device("cpu"))
    return task, task.feature_dim(enc)


def test_head_init_starts_the_tuned_model_as_the_linear_probe(rooms, tmp_path):
    """method=full with head_init: before any step the model's logits are the probe's logits on the
    encoder's features (its standardisation and weights); training keeps that standardisation (it is not
    re-estimated from training batches) and the row is tagged ``full+lp-ft`` with the probe's path."""
    task, dim = _task(rooms, tmp_path / "o")
    probe = _probe_file(tmp_path / "probe_enc.pt", dim, task.class_names)
    extra = ["tune.method=full", f"tune.head_init={probe}", "tune.steps=2"]
    cfg = _cfg(rooms, tmp_path / "out", *extra)
    task = PointTuneTask(cfg, torch.device("cpu"))
    tuner = Tuner(task, cfg.tune, tmp_path / "run", torch.device("cpu"))
    assert tuner.norm_ready
    from common.probes.linear import load_probe

    p = load_probe(probe)
    b = next(task.eval_batches("val", 0, 1))
    with torch.no_grad():
        z = tuner.model.logits(b.inputs)
        f = task.features(tuner.model.encoder, b.inputs)
        want = apply_normalizer(f, p.norm) @ p.state_dict["weight"].t() + p.state_dict["bias"]
    torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-4)

    row = run_point_tune(cfg)
    assert row["method"] == "full+lp-ft" and row["head_init"] == str(probe)
    st = torch.load(_run_dir(tmp_path / "out") / "last.pth", weights_only=False)
    assert torch.equal(st["model"]["head.norm.mean"], p.norm["mean"])
    assert torch.equal(st["model"]["head.norm.std"], p.norm["std"])
    assert not torch.equal(st["model"]["head.linear.weight"], p.state_dict["weight"])  # the head trained
    rows = json.loads((tmp_path / "out" / "tune_results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["full+lp-ft"]


def test_head_init_and_the_random_head_are_two_rows(rooms, tmp_path):
    """An LP-FT run and a plain run of the same method and encoder are two rows of the results table
    (the tag keeps them apart) and two run folders."""
    task, dim = _task(rooms, tmp_path / "o")
    probe = _probe_file(tmp_path / "p.pt", dim, task.class_names)
    out = tmp_path / "out"
    run_point_tune(_cfg(rooms, out, "tune.method=ssf", "tune.steps=1"))
    run_point_tune(_cfg(rooms, out, "tune.method=ssf", "tune.steps=1", f"tune.head_init={probe}"))
    rows = json.loads((out / "tune_results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["ssf", "ssf+lp-ft"]
    assert len(list((out / "runs").iterdir())) == 2


def test_head_init_refusals(rooms, tmp_path):
    """One-line errors: head_init on a method without the loop's linear head (before anything is written),
    a probe of another width, of other classes, with a whitening normalisation, a missing file."""
    from common.errors import CheckpointError

    task, dim = _task(rooms, tmp_path / "o")
    good = _probe_file(tmp_path / "good.pt", dim, task.class_names)
    for method in ("linear", "decoder"):
        out = tmp_path / f"out_{method}"
        with pytest.raises(ConfigError, match="head_init is for the methods"):
            run_point_tune(_cfg(rooms, out, f"tune.method={method}", f"tune.head_init={good}"))
        assert not out.exists()
    cases = {
        "width": (_probe_file(tmp_path / "w.pt", dim + 3, task.class_names), "reads 43-d features"),
        "classes": (_probe_file(tmp_path / "c.pt", dim, task.class_names[:5]), "classes are not the task"),
        "whiten": (_probe_file(tmp_path / "wh.pt", dim, task.class_names, mode="whiten"), "'whiten'"),
    }
    for name, (path, msg) in cases.items():
        with pytest.raises(InputError, match=msg) as e:
            run_point_tune(_cfg(rooms, tmp_path / f"out_{name}", "tune.method=ssf", f"tune.head_init={path}"))
        assert str(path) in str(e.value), name
    with pytest.raises(CheckpointError, match="no such probe file"):
        run_point_tune(_cfg(rooms, tmp_path / "out_missing", "tune.method=ssf",
                            f"tune.head_init={tmp_path / 'nope.pt'}"))
    assert not (tmp_path / "out_missing").exists()
