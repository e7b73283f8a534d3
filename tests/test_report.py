"""common.report: tables (markdown + JSON) and non-blank PNG figures."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from common.report import bar_chart_png, confusion_png, line_plot_png, markdown_table, write_table


def _assert_not_blank(path):
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # a blank (single colour) picture has zero variance; real content has several colours
    assert img[..., :3].var() > 1e-3
    assert len(np.unique(img[..., :3].reshape(-1, 3).round(2), axis=0)) > 5


def test_write_table_markdown_and_json(tmp_path):
    rows = [
        {"encoder": "sonata", "mIoU": 0.7251, "mAcc": 0.831},
        {"encoder": "random|init", "mIoU": float("nan"), "mAcc": np.float32(0.05), "note": "x"},
    ]
    meta = {
        "checkpoint_sha256": "ab" * 32,
        "split": "val",
        "config": {"lr": 1e-3, "nested": {"a": [1, 2]}},
        "config_hash": "0123456789abcdef",
    }
    md, js = write_table(rows, tmp_path / "out" / "probe", "Linear probe", meta=meta)
    assert md.name == "probe.md" and js.name == "probe.json"
    text = md.read_text()
    assert text.startswith("# Linear probe")
    assert "| encoder | mIoU | mAcc | note |" in text
    assert "| sonata | 0.7251 | 0.831 |  |" in text
    assert "random\\|init" in text and "nan" in text
    assert "- split: val" in text
    d = json.loads(js.read_text())
    assert d["title"] == "Linear probe"
    assert d["columns"] == ["encoder", "mIoU", "mAcc", "note"]
    assert d["rows"][0]["mIoU"] == pytest.approx(0.7251)
    assert d["rows"][1]["mIoU"] is None  # NaN -> null, still valid JSON
    assert d["rows"][1]["mAcc"] == pytest.approx(0.05)
    assert d["meta"]["config"]["nested"]["a"] == [1, 2]
    assert d["meta"]["checkpoint_sha256"] == "ab" * 32


def test_write_table_column_selection(tmp_path):
    md, js = write_table([{"a": 1, "b": 2.5, "c": 3}], tmp_path / "t", "T", columns=["c", "a"])
    assert "| c | a |" in md.read_text()
    assert json.loads(js.read_text())["columns"] == ["c", "a"]
    assert markdown_table([{"x": 0.123456}], float_format=".2f").endswith("| 0.12 |")


def test_bar_chart_single_and_grouped(tmp_path):
    p1 = bar_chart_png(
        {"sonata": 72.5, "ptv3 msc": 21.8, "raw xyz": 5.0}, tmp_path / "bars.png", "mIoU", "mIoU (%)"
    )
    _assert_not_blank(p1)
    rng = np.random.default_rng(0)
    classes = [f"class{i}" for i in range(20)]
    p2 = bar_chart_png(
        {"sonata": rng.random(20), "random": list(rng.random(20) * 0.3)},
        tmp_path / "g.png",
        "per-class IoU",
        "IoU",
        labels=classes,
    )
    _assert_not_blank(p2)
    with pytest.raises(ValueError):
        bar_chart_png({"a": [1, 2], "b": [1, 2, 3]}, tmp_path / "bad.png")


def test_confusion_and_line_plot(tmp_path):
    rng = np.random.default_rng(1)
    conf = rng.integers(0, 50, (6, 6)) + np.eye(6, dtype=int) * 200
    p = confusion_png(conf, list("abcdef"), tmp_path / "conf.png")
    _assert_not_blank(p)
    p = confusion_png(conf, None, tmp_path / "conf_raw.png", normalize=False)
    _assert_not_blank(p)
    p = line_plot_png(
        [0.01, 0.1, 1.0],
        {"linear": [40, 60, 72], "decoder": [44, 66, 79]},
        tmp_path / "line.png",
        "label efficiency",
        "fraction",
        "mIoU",
        logx=True,
    )
    _assert_not_blank(p)


def test_slug_has_no_spaces_or_parentheses():
    from common.report import slug

    assert slug("sparseunet pre-trained (demo)") == "sparseunet_pre-trained_demo"
    assert slug("frame_stats (frame-wise)") == "frame_stats_frame-wise"
    assert slug("  (( ))  ") == "item" and slug("a/b\\c", "x") == "a_b_c"


def test_bench_folders_are_slugs_and_must_differ():
    from common.errors import ConfigError
    from videoprobe.bench import BenchEncoderConfig, BenchmarkConfig, BenchSuiteConfig, _check, _folder

    assert _folder("frame_stats (frame-wise)") == "frame_stats_frame-wise"
    suite = BenchSuiteConfig(encoders=[BenchEncoderConfig(name="a", label="x (1)"),
                                       BenchEncoderConfig(name="b", label="x 1")],
                             benchmarks=[BenchmarkConfig(name="B")])
    with pytest.raises(ConfigError, match="same folder names"):
        _check(suite)


def _tick_labels_overlap(ax, renderer) -> bool:
    """Neighbouring x tick labels overlap: unrotated, their boxes intersect; rotated by a, two parallel
    text strips whose anchors are d apart horizontally are d * sin(a) apart, less than a line height."""
    labels = ax.get_xticklabels()
    rot = labels[0].get_rotation() % 180
    if rot == 0:
        boxes = [t.get_window_extent(renderer) for t in labels]
        return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    xs = ax.transData.transform([(t.get_position()[0], 0) for t in labels])[:, 0]
    line_h = max(t.get_fontsize() for t in labels) * ax.figure.dpi / 72 * 1.2
    lines = max(t.get_text().count("\n") + 1 for t in labels)
    return bool(np.min(np.diff(xs)) * np.sin(np.deg2rad(rot)) < line_h * lines)


def _extent_inside(inner, outer, tol=1.0):
    return (inner.x0 >= outer.x0 - tol and inner.x1 <= outer.x1 + tol and inner.y0 >= outer.y0 - tol
            and inner.y1 <= outer.y1 + tol)


def test_bench_chart_layout_title_labels_legend_chance():
    import matplotlib.pyplot as plt

    from common.report import bar_chart_figure

    cols = ["Kinetics-400", "UCF101", "HMDB51", "Something-Something-v2", "Diving48", "appearance avg",
            "motion avg"]
    rng = np.random.default_rng(0)
    fig = bar_chart_figure(
        {"videomae_base (K400 fine-tuned)": rng.random(7) * 90,
         "frame_stats (frame-wise)": rng.random(7) * 50, "motion_energy": rng.random(7) * 40},
        title="twlv five-dataset suite with a rather long descriptive name: linear probe, top-1 (%)",
        ylabel="top-1 (%)", labels=cols, chance=[0.25, 1.0, 2.0, 0.6, 2.1, 1.1, 1.3])
    try:
        r = fig.canvas.get_renderer()
        ax = fig.axes[0]
        fig_box = fig.bbox
        assert _extent_inside(ax.title.get_window_extent(r), fig_box)  # the title is not clipped
        ticks = [t.get_window_extent(r) for t in ax.get_xticklabels()]
        assert all(_extent_inside(b, fig_box) for b in ticks)
        assert not _tick_labels_overlap(ax, r)
        leg = ax.get_legend()
        assert leg is not None
        leg_box = leg.get_window_extent(r)
        assert not leg_box.overlaps(ax.get_window_extent(r)) and _extent_inside(leg_box, fig_box)
        chance = [c for c in ax.get_children() if str(c.get_label()).startswith("chance")]
        assert chance, "no chance line"
    finally:
        plt.close(fig)


def test_chart_marks_absent_positions():
    import matplotlib.pyplot as plt

    from common.report import bar_chart_figure

    fig = bar_chart_figure({"a": [50.0, float("nan"), 0.0, 30.0], "b": [40.0, float("nan"), 0.0, 10.0]},
                           labels=["wall", "sofa", "desk", "sink"], absent=[False, True, True, False])
    try:
        ax = fig.axes[0]
        names = [t.get_text() for t in ax.get_xticklabels()]
        assert names == ["wall", "sofa (absent)", "desk (absent)", "sink"]
        hatched = [p for p in ax.patches if p.get_hatch()]
        assert len(hatched) == 2
        assert any("absent" in t.get_text() for t in fig.texts)  # the note saying what hatching means
    finally:
        plt.close(fig)


def test_chart_labels_wrap_between_words_only():
    import matplotlib.pyplot as plt

    from common.report import bar_chart_figure

    fig = bar_chart_figure({"a": [50.0, 100.0, 50.0, 100.0], "b": [50.0, 100.0, 50.0, 100.0]},
                           labels=["app", "mot", "appearance avg", "motion avg"], chance=50.0)
    try:
        texts = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        words = {w for t in texts for w in t.split()}
        assert {"appearance", "avg", "motion"} <= words  # "appearan / ce avg" was drawn before
        assert not _tick_labels_overlap(fig.axes[0], fig.canvas.get_renderer())
    finally:
        plt.close(fig)
