"""`pointprobe ablate`: a trained probe on live features with colour / normals removed or estimated."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from common.errors import ConfigError
from pointprobe.ablate import AblateConfig, estimate_normals, run_ablation
from pointprobe.cli import main

FAST_PROBE = ["probe.epochs=2", "probe.lrs=[0.01,0.03]", "probe.wds=[0.0]", "max_train_points=40000",
              "probe.batch_size=2048"]
SMALL = ["encoder.name=sparseunet", "encoder.config={channels: [16, 32, 48], depths: [1, 1, 1]}"]


def test_estimated_normals_follow_the_planes_of_a_generated_room():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from test_pretrain import _scene

    coord, _, true = _scene(0, density=2500.0)
    est = estimate_normals(coord, radius=0.1, max_nn=30, orient="centre")
    assert est.shape == coord.shape and est.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(est, axis=1), 1.0, atol=1e-5)
    cos = np.abs(np.sum(est * true, axis=1))
    assert np.median(cos) > 0.99
    assert (cos > 0.9).mean() > 0.9  # the rest: points near edges and corners, where planes meet
    # oriented towards the room's centre: the floor (z = 0, away from the boxes) points up
    floor = (coord[:, 2] < 1e-6) & (cos > 0.9)
    assert floor.sum() > 100 and (est[floor, 2] > 0).mean() > 0.99
    up = estimate_normals(coord, orient="up")
    assert (up[:, 2] >= -1e-6).all()


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    assert main(["synth", "--out", str(root / "raw"), "--scenes", "4", "--seed", "5",
                 "--frames-per-scene", "0", "--no-progress"]) == 0
    assert main(["preprocess", "--raw", str(root / "raw"), "--out", str(root / "data")]) == 0
    assert main(["extract", f"data.root={root / 'data'}", f"out={root / 'su'}", *SMALL]) == 0
    # raw: the input features themselves, stored as float16 by the cache writer
    assert main(["extract", f"data.root={root / 'data'}", f"out={root / 'raw'}", "encoder.name=raw"]) == 0
    assert main(["probe", f"features=[{root / 'su'},{root / 'raw'}]", f"out={root / 'probe'}",
                 *FAST_PROBE]) == 0
    return root


@pytest.mark.slow
def test_full_row_equals_probe_and_removed_colour_changes_features(probed, tmp_path):
    res = json.loads((probed / "probe" / "results.json").read_text())
    for name, enc, ckpt in (("sparseunet_random_init", "sparseunet (random init)", "random:0"),
                            ("raw", "raw", "none")):
        probe = probed / "probe" / f"probe_{name}.pt"
        out = tmp_path / name
        assert main(["ablate", "--probe", str(probe), "--data", str(probed / "data"), "--split", "val",
                     "--out", str(out)]) == 0
        table = json.loads((out / "ablation.json").read_text())
        rows = {r["ablation"]: r for r in table["rows"]}
        assert list(rows) == ["full", "no_color", "no_normal", "est_normal", "no_color_est_normal"]
        probe_row = next(r for r in res["rows"] if r["encoder"] == enc)
        for m in ("mIoU", "mAcc", "allAcc"):  # the same split, the same features: the same numbers
            assert rows["full"][m] == pytest.approx(probe_row[m], abs=1e-9), (name, m)
            assert rows["full"][f"drop {m}"] == 0.0
            for a, r in rows.items():
                assert r[f"drop {m}"] == pytest.approx(rows["full"][m] - r[m], abs=1e-9), (a, m)
        assert rows["full"]["feature change"] == 0.0
        for a in ("no_color", "no_normal", "est_normal", "no_color_est_normal"):
            assert rows[a]["feature change"] > 1e-3, (name, a)  # the encoder sees other inputs
        assert all(r["checkpoint"] == ckpt for r in rows.values())
        md = (out / "ablation.md").read_text()
        assert "no_color_est_normal" in md and "drop mIoU" in md and "open3d" in md


@pytest.mark.slow
def test_ablation_library_options_and_errors(probed, tmp_path):
    probe = probed / "probe" / "probe_sparseunet_random_init.pt"
    cfg = AblateConfig(probe=str(probe), data=str(probed / "data"), split="val", out=str(tmp_path / "a"),
                       ablations=["no_color"], limit=1, dtype="float32")
    res = run_ablation(cfg)
    assert [r["ablation"] for r in res["rows"]] == ["no_color"] and res["meta"]["scenes"] == 1
    assert res["rows"][0]["drop mIoU"] is None  # no full row to compare with
    with pytest.raises(ConfigError, match="ablations"):
        run_ablation(AblateConfig(probe=str(probe), data=str(probed / "data"), ablations=["no_colour"]))
    from common.errors import InputError

    with pytest.raises(InputError, match="split folder not found"):
        run_ablation(AblateConfig(probe=str(probe), data=str(probed / "data"), split="nope",
                                  out=str(tmp_path / "b")))
