"""Progress in log files: plain lines (done/total, rate, ETA) without carriage returns when stderr is
not a terminal; a tqdm bar on a terminal."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

from common import progress as progress_mod
from common.cache import CacheKey, CacheWriter
from common.progress import PlainProgress, format_seconds, interval_seconds, progress


def test_interval_from_env(monkeypatch):
    monkeypatch.delenv("PROBESUITE_PROGRESS_SECONDS", raising=False)
    assert interval_seconds() == 30.0
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "2.5")
    assert interval_seconds() == 2.5
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "soon")
    assert interval_seconds() == 30.0


def test_format_seconds():
    assert format_seconds(8.4) == "8s"
    assert format_seconds(75) == "1m15s"
    assert format_seconds(4000) == "1h06m"


def test_non_tty_gets_plain_lines(monkeypatch, capsys):
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "0")  # a line at every update
    bar = progress(range(4), desc="extract train", unit="scene")
    assert isinstance(bar, PlainProgress)
    assert list(bar) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[0].startswith("extract train: 1/4 scene (25%), ") and "ETA" in lines[0]
    assert lines[3].startswith("extract train: 4/4 scene (100%)")
    assert "done in" in lines[-1]


def test_update_postfix_and_no_total(monkeypatch):
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "0")
    buf = io.StringIO()
    bar = PlainProgress(desc="pretrain", unit="step", initial=10, total=20, file=buf)
    bar.update(1)
    bar.set_postfix(loss="0.123")
    bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("pretrain: 11/20 step (55%)")
    assert lines[1].endswith("loss=0.123")
    sweep = PlainProgress(desc="logreg C sweep", unit="fit", file=buf, leave=False)
    sweep.update(3)
    assert buf.getvalue().splitlines()[-1].startswith("logreg C sweep: 3 fit, ")


def test_long_interval_prints_only_the_final_line(monkeypatch):
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "3600")
    buf = io.StringIO()
    with PlainProgress(total=3, desc="preprocess", unit="scene", file=buf) as bar:
        bar.update(3)
    assert buf.getvalue().count("\n") == 1 and "3/3 scene (100%)" in buf.getvalue()
    quiet = io.StringIO()
    with PlainProgress(total=3, desc="inner", file=quiet, leave=False) as bar:  # inner loops: no last line
        bar.update(3)
    with PlainProgress(total=0, desc="nothing to do", file=quiet):
        pass
    with PlainProgress(total=3, desc="off", file=quiet, disable=True) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_tty_gets_tqdm(monkeypatch):
    from tqdm import tqdm

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(progress_mod.sys, "stderr", Tty())
    bar = progress(total=2, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()


def test_cache_fill_reports_plain_lines(tmp_path, monkeypatch, capsys):
    """A real call site: filling a feature cache (what `pointprobe extract` runs) in a log file."""
    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "0")
    key = CacheKey(encoder="raw", checkpoint_sha256="none", config_hash="0" * 16, dataset="synth",
                   split="train")
    with CacheWriter(tmp_path / "cache", key, feature_dim=3, dtype="float32") as w:
        failures = w.fill(["a", "b", "c"], lambda i: {"features": np.ones((2, 3), np.float32),
                                                      "labels": np.zeros(2, np.int64)}, desc="extract train")
    assert failures == {}
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "extract train: 3/3 item (100%)" in err


def test_subprocess_stderr_to_file_has_no_carriage_returns(tmp_path):
    """stderr redirected to a file (a batch job): lines, not a redrawn bar."""
    code = ("from common.progress import progress\n"
            "for _ in progress(range(50), desc='steps', unit='step'):\n    pass\n")
    log = tmp_path / "job.log"
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", code], stderr=fh, check=True, timeout=120,
                       env={**__import__("os").environ, "PROBESUITE_PROGRESS_SECONDS": "0"})
    text = log.read_text()
    assert "\r" not in text
    assert "steps: 50/50 step (100%)" in text and "done in" in text


def test_probe_progress_counts_steps_not_epochs(monkeypatch, capsys):
    """The linear probe's bar counts optimiser steps and says so: a 2-epoch run over 10 batches per epoch ends
    at 20/20 step (it printed '20/20 epoch')."""
    from common.probes.data import ProbeData
    from common.probes.linear import LinearProbeConfig, train_linear_probe

    monkeypatch.setenv("PROBESUITE_PROGRESS_SECONDS", "0")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    data = ProbeData([(x, (x[:, 0] > 0).astype(np.int64))])
    cfg = LinearProbeConfig(epochs=2, batch_size=10, lrs=[0.1], wds=[0.0], progress=True)
    train_linear_probe(data, data, cfg)
    last = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("linear probe")][-1]
    assert last.startswith("linear probe (1 heads, 2 epochs): 20/20 step (100%)"), last
