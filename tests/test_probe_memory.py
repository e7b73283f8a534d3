"""ProbeData over memory-mapped caches larger than RAM: streaming keeps no file pages mapped."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from common.probes.data import ProbeData

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file() or sys.platform != "linux",
                                reason="reads RssFile from /proc/self/status")


def _rss_file_mib() -> float:
    return int(re.search(r"RssFile:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def test_streamed_windows_release_the_pages_they_read(tmp_path):
    """Every row of a 64 MiB memory-mapped float16 array is streamed; the process's resident
    file-backed pages do not grow by the file (they did by all of it: a cache streamed by the probe
    showed up in the resident set, up to the machine's memory for a larger-than-RAM cache)."""
    rows, dim = 65536, 512  # 64 MiB
    np.save(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16))
    m = np.load(tmp_path / "f.npy", mmap_mode="r")
    y = np.random.default_rng(1).integers(-1, 5, rows)
    data = ProbeData([(m[: rows // 2], y[: rows // 2]), (m[rows // 2:], y[rows // 2:])])
    before = _rss_file_mib()
    seen = 0
    total = np.zeros(dim, dtype=np.float64)
    for x, yw, _ in data.iter_windows(8192, np.random.default_rng(0)):
        seen += len(yw)
        total += x.sum(0, dtype=np.float64)
    assert seen == int((y >= 0).sum())
    assert _rss_file_mib() - before < 16
    keep = y >= 0
    ref = np.asarray(m, dtype=np.float32)[keep].sum(0, dtype=np.float64)
    np.testing.assert_allclose(total, ref, rtol=1e-6, atol=1e-3)
    x_all, y_all, _ = data.load()  # the in-memory path reads the same rows
    assert x_all.shape == (int(keep.sum()), dim) and _rss_file_mib() - before < 16
