"""tools/bench_tuning_video.py: the video rows go into section bench_tuning as their own subsection, just
before the section's end marker, once (a rerun replaces them)."""
from __future__ import annotations

from tools.bench_tuning_video import MARK_BEGIN, MARK_END, insert_video_rows, video_markdown


def _md(top1: float) -> str:
    table = [{"method": "cached linear (extract + probe)", "encoder": "x3d_s", "top1": 50.0,
              "trainable_params": 8196, "trainable_pct": 0.0, "peak_rss_mb": 900.0, "step_s": None,
              "total_s": 120.0, "checkpoint_sha256": "ab" * 32},
             {"method": "ssf", "encoder": "x3d_s", "top1": top1, "trainable_params": 82660,
              "trainable_pct": 2.5, "train_peak_mb": 1010.0, "peak_rss_mb": 1096.0, "step_s": 16.2,
              "total_s": 171.0,
              "checkpoint_sha256": "ab" * 32}]
    info = {"command": "python tools/bench_tuning.py --modality video", "train": 24, "test": 8, "steps": 30,
            "cnn_steps": 5, "notes": ["a note"]}
    return video_markdown(table, info)


def test_video_rows_go_before_the_end_marker_once(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- begin bench_tuning -->\n## bench_tuning\n\npoints table\n"
                   "<!-- end bench_tuning -->\n\n<!-- begin other -->\nx\n<!-- end other -->\n")
    insert_video_rows(_md(25.0), doc)
    insert_video_rows(_md(37.5), doc)  # a rerun replaces the subsection
    text = doc.read_text()
    assert text.count(MARK_BEGIN) == text.count(MARK_END) == 1 and text.count("### video rows") == 1
    assert text.index("points table") < text.index(MARK_BEGIN) < text.index(MARK_END) \
        < text.index("<!-- end bench_tuning -->") < text.index("<!-- begin other -->")
    # the training peak (the row's, read before evaluation) and the process's peak RSS, both shown
    assert "| ssf | x3d_s | 37.50 | -12.50 | 82660 | 2.50 | 1010 | 1096 | 16.20 | 171 | abababababab |" \
        in text
    assert "| 25.00 |" not in text


def test_video_rows_without_a_section_create_it(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    insert_video_rows(_md(25.0), doc)
    text = doc.read_text()
    assert "<!-- begin bench_tuning -->\n## bench_tuning" in text and text.rstrip().endswith(
        "<!-- end bench_tuning -->")


def test_a_failed_method_is_a_row_saying_so():
    table = [{"method": "cached linear (extract + probe)", "encoder": "x3d_s", "top1": 50.0,
              "trainable_params": 8196, "trainable_pct": 0.0, "peak_rss_mb": None, "step_s": None,
              "total_s": 120.0, "checkpoint_sha256": "ab" * 32},
             {"method": "mezo-ssf (failed)", "encoder": "x3d_s", "top1": None, "trainable_params": None,
              "trainable_pct": None, "peak_rss_mb": None, "step_s": None, "total_s": None,
              "checkpoint_sha256": "", "error": "error: tune: loss became inf at step 2; lower the lr"}]
    md = video_markdown(table, {"command": "c", "train": 1, "test": 1, "steps": 1, "cnn_steps": 1,
                                "notes": ["x3d_s: mezo-ssf (failed): error: tune: loss became inf"]})
    assert "| mezo-ssf (failed) | x3d_s |  |  |  |  |  |  |  |  |" in md and "loss became inf" in md


def test_a_points_rerun_keeps_the_video_rows(tmp_path):
    """tools/bench_tuning.py rewrites section bench_tuning after a points run; the video subsection written
    by --modality video stays inside it (before this, a points rerun dropped it)."""
    from common.benchdoc import update_section
    from tools.bench_tuning import kept_video_rows

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- begin bench_tuning -->\n## bench_tuning\n\nold points table\n"
                   "<!-- end bench_tuning -->\n")
    insert_video_rows(_md(37.5), doc)
    video = kept_video_rows(doc)
    assert video.startswith(MARK_BEGIN) and video.endswith(MARK_END)
    update_section("bench_tuning", "new points table\n\n" + video, doc)
    text = doc.read_text()
    assert "old points table" not in text and "new points table" in text
    assert text.count(MARK_BEGIN) == 1 and "| ssf | x3d_s | 37.50 |" in text
    assert text.index("new points table") < text.index(MARK_BEGIN) < text.index("<!-- end bench_tuning -->")
    assert kept_video_rows(tmp_path / "absent.md") == ""
