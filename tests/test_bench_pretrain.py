"""tools/bench_pretrain.py end to end on a tiny run: every stage, the table, the plot, resume."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # spconv's torch.cuda.amp decorators


def test_bench_pretrain_tiny_run_and_resume(tmp_path, monkeypatch):
    from tools import bench_pretrain

    out = tmp_path / "bench"
    argv = ["--out", str(out), "--scenes", "5", "--every", "2", "--no-doc",
            "--set", "train.steps=4", "views.max_points=1500", "train.progress=false",
            # a narrow encoder and heads: the bench's own (4.8 M parameters, 480-channel features of every
            # scene) made this test the suite's disk peak, 0.9 of its 1.0 GB
            "model.backbone_config.channels=[8,16,16,16,16]", "model.head_hidden=64",
            "model.head_bottleneck=32", "model.num_prototypes=64",
            "--probe-set", "max_train_points=20000", "probe.epochs=1", "probe.lrs=[0.01]", "probe.wds=[0.0]"]
    assert bench_pretrain.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [r["pre-training steps"] for r in rows] == [0, 2, 4, None]  # random, kept encoders, raw
    assert rows[-1]["encoder"] == "raw input features" and rows[-1]["dim"] == 9
    assert all(0 <= r["mIoU"] <= 100 for r in rows)
    assert res["meta"]["gain_over_random"] == pytest.approx(rows[2]["mIoU"] - rows[0]["mIoU"])
    assert (out / "miou_vs_steps.png").stat().st_size > 1000
    # features of intermediate steps are removed once probed; random and raw are kept
    assert sorted(p.name for p in (out / "features").iterdir()) == ["random", "raw"]
    # a second run finds every stage done and reproduces the table without recomputing anything

    def fail(*a, **k):
        raise AssertionError("stage recomputed")

    import pointprobe.extract
    import pointprobe.pretrain.train

    monkeypatch.setattr(pointprobe.extract, "extract", fail)
    monkeypatch.setattr(pointprobe.pretrain.train, "run_pretrain", fail)
    assert bench_pretrain.main(argv) == 0
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [r["mIoU"] for r in again] == [r["mIoU"] for r in rows]
    # another pre-training configuration in the same folder is refused, not mixed in
    other = [a if a != "train.steps=4" else "train.steps=6" for a in argv]
    with pytest.raises(SystemExit, match="another configuration"):
        bench_pretrain.main(other)
