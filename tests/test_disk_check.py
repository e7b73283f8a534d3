"""tests/conftest.py: the suite stops with one line when the temporary folder's disk is nearly full."""
from __future__ import annotations

import importlib.util
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

_Usage = namedtuple("_Usage", "total used free")


def _conftest():
    spec = importlib.util.spec_from_file_location("suite_conftest", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nearly_full_disk_stops_the_suite_with_one_line(monkeypatch, tmp_path):
    mod = _conftest()
    monkeypatch.setattr(mod.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: _Usage(10**12, 10**12 - 287_000_000, 287_000_000))
    with pytest.raises(pytest.exit.Exception) as e:
        mod.pytest_sessionstart(None)
    assert e.value.returncode == 1
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "only 0.29 GB free" in msg and "TMPDIR" in msg


def test_enough_disk_lets_the_suite_run(monkeypatch, tmp_path):
    mod = _conftest()
    monkeypatch.setattr(mod.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: _Usage(10**12, 0, mod.NEED_FREE_BYTES))
    assert mod.pytest_sessionstart(None) is None
