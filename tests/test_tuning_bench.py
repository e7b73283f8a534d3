"""tools/bench_tuning.py (points): the LP-FT ladder and the section's command line."""
from __future__ import annotations

from pathlib import Path

from tools.bench_tuning import LADDER, LP_FT, base_method, command_args, ladder


def test_lp_ft_ladder_starts_the_tuned_heads_from_the_probe_and_keeps_a_plain_full():
    probe = Path("/runs/probe/probe_sparseunet.pt")
    runs = ladder(True, probe)
    init = f"tune.head_init={probe}"
    with_init = [(m, w) for m, w, x in runs if init in x]
    assert with_init == [(m, "pre") for m, w, _ in LADDER if w == "pre" and m in LP_FT]
    plain = [(m, w) for m, w, x in runs if init not in x]
    assert ("full", "pre") in plain and ("full", "random") in plain and ("linear", "pre") in plain
    assert runs[-1][0] == "decoder"  # the most expensive row last
    assert ladder(False, None) == LADDER


def test_base_method_and_command_args():
    assert [base_method(t) for t in ("last_k+lp-ft", "mezo-ssf+lp-ft", "mezo-ssf", "full")] == \
        ["last_k", "mezo", "mezo", "full"]
    assert command_args(["--out", "x", "--note", "a b", "--steps", "3", "--note=z", "--report-only"]) == \
        ["--out", "x", "--steps", "3", "--report-only"]


def test_mezo_memory_line_compares_training_peaks_and_says_when_it_cannot():
    """The bench's MeZO / linear line divided two process-wide peaks (4012 / 4012 MB in every method):
    it now names the training peak, and says so when the rows hold process-wide peaks."""
    from common.tuning.cost import peak_ratio_note

    lin = {"peak_memory_mb": 1000.0, "memory_kind": "cpu_peak_rss_train"}
    mezo = {"peak_memory_mb": 1100.0, "memory_kind": "cpu_peak_rss_train"}
    line = peak_ratio_note(mezo, lin)
    assert "training peak" in line and "1.10" in line and "target <= 1.3" in line
    old = peak_ratio_note(dict(mezo, memory_kind="cpu_max_rss_process"), dict(lin, memory_kind=""))
    assert "NOT the training peaks" in old and "1.10" in old
    assert "not recorded" in peak_ratio_note({"train_peak_mb": None}, lin, key="train_peak_mb")
