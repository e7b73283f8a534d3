"""Linear recoverability (pointprobe.recover): least-squares map from new to old features, the OLD probe
scored through it; identity + same encoder gives the old probe's own score."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.cache import CacheKey, CacheWriter
from common.errors import InputError
from pointprobe.probe import SegProbeConfig, run_probe
from pointprobe.recover import fit_linear_map, main, recoverability

D = 8


def _write(folder, split, scenes, sha):
    key = CacheKey(encoder="sparseunet", checkpoint_sha256=sha, config_hash="0" * 16, split=split)
    meta = {"label_set": "segment20", "encoder": {"label": sha}}
    with CacheWriter(folder / split, key, scenes[next(iter(scenes))][0].shape[1], meta=meta) as w:
        for name, (f, y) in scenes.items():
            w.write(name, f, y)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """OLD features (class c -> 3 * unit vector c + noise, with overlap), NEW = an invertible linear map of
    them into 12 dims (+ a little noise), UNRELATED = noise; a probe trained on the old train split."""
    tmp = tmp_path_factory.mktemp("recover")
    rng = np.random.default_rng(0)
    mix = rng.normal(0, 1, (12, D)).astype(np.float32)
    folders = {k: tmp / k for k in ("old", "new", "unrelated")}
    for split, n_scenes in (("train", 4), ("test", 2)):
        old, new, unrel = {}, {}, {}
        for i in range(n_scenes):
            y = rng.integers(0, 4, 400)
            f = np.eye(D, dtype=np.float32)[y] * 1.5 + rng.normal(0, 0.6, (400, D)).astype(np.float32)
            name = f"scene{split[:2]}{i:02d}_00"
            old[name] = (f, y)
            new[name] = (f @ mix.T + rng.normal(0, 0.01, (400, 12)).astype(np.float32), y)
            unrel[name] = (rng.normal(0, 1, (400, 12)).astype(np.float32), y)
        for key, scenes in (("old", old), ("new", new), ("unrelated", unrel)):
            _write(folders[key], split, scenes, key)
    cfg = SegProbeConfig(features=[str(folders["old"])], out=str(tmp / "probe"), eval_split="test")
    cfg.probe.lrs, cfg.probe.wds, cfg.probe.epochs, cfg.probe.progress = [0.03], [0.0], 3, False
    res = run_probe(cfg)
    (probe,) = (tmp / "probe").glob("probe_*.pt")
    return folders, probe, res["rows"][0]["mIoU"]


def test_identity_and_same_encoder_give_the_old_probe_score(setup):
    folders, probe, own = setup
    res = recoverability(folders["old"], folders["old"], probe, A=torch.eye(D))
    assert res["mIoU"] == pytest.approx(res["old_mIoU"], abs=1e-9)
    assert res["old_mIoU"] == pytest.approx(own, abs=1e-6)  # as pointprobe probe scored it
    assert res["r2"] == pytest.approx(1.0) and res["ratio"] == pytest.approx(1.0)
    fitted = recoverability(folders["old"], folders["old"], probe)
    assert torch.allclose(fitted["A"], torch.eye(D), atol=1e-3)
    assert fitted["mIoU"] == pytest.approx(res["mIoU"], abs=1e-6)


def test_a_linear_map_of_the_old_features_is_recovered_and_noise_is_not(setup):
    folders, probe, _ = setup
    mapped = recoverability(folders["new"], folders["old"], probe)
    assert mapped["A"].shape == (D, 12) and mapped["r2"] > 0.99
    assert mapped["mIoU"] == pytest.approx(mapped["old_mIoU"], abs=1.0)
    noise = recoverability(folders["unrelated"], folders["old"], probe)
    assert noise["r2"] < 0.2 and noise["mIoU"] < mapped["mIoU"] - 10


def test_fit_linear_map_solves_least_squares():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (500, 6))
    a = rng.normal(0, 1, (4, 6))
    A = fit_linear_map(x, x @ a.T, ridge=0.0)
    assert torch.allclose(A.double(), torch.from_numpy(a), atol=1e-5)
    with pytest.raises(ValueError):
        fit_linear_map(x, x[:10])


def test_cli_and_mismatched_caches(setup, tmp_path, capsys):
    folders, probe, _ = setup
    out = tmp_path / "rec.json"
    assert main(["--new", str(folders["new"]), "--old", str(folders["old"]), "--probe", str(probe),
                 "--out", str(out)]) == 0
    assert "linear recoverability" in capsys.readouterr().out
    assert json.loads(out.read_text())["r2"] > 0.99
    other = tmp_path / "other"
    _write(other, "test", {"sceneXX_00": (np.zeros((5, D), np.float32), np.zeros(5, np.int64))}, "x")
    with pytest.raises(InputError, match="other scenes"):
        recoverability(other, folders["old"], probe, A=torch.eye(D))
    assert main(["--new", str(other), "--old", str(folders["old"]), "--probe", str(probe)]) == 2
