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


def test_bench_probe_memory_rows_and_disk_refusal(tmp_path):
    """The generator is deterministic and learnable (labels in 0..19 or -1), caches are written through
    fill_cache in the real format, and the tool refuses to start without the caches + margin free."""
    from common.cache import FeatureCache
    from tools.bench_probe_memory import RowBank, check_disk, item_rows, row_bytes, write_cache

    assert item_rows(10, 4) == [4, 4, 2] and row_bytes(1232) == 2472
    a, b = RowBank(16, bank_rows=64, seed=3).item(2, 100), RowBank(16, bank_rows=64, seed=3).item(2, 100)
    assert np.array_equal(a["features"], b["features"]) and np.array_equal(a["labels"], b["labels"])
    assert a["features"].dtype == np.float16 and set(np.unique(a["labels"])) <= set(range(-1, 20))
    w = write_cache(tmp_path / "c", "train", 250, 16, 100, seed=0)
    cache = FeatureCache(tmp_path / "c" / "train")
    assert cache.items() == ["item00000", "item00001", "item00002"] and cache.total_rows == 250
    assert cache.meta["label_set"] == "segment20" and w["bytes"] > 250 * 16 * 2
    data = ProbeData.from_cache(cache)
    assert data.num_rows == int(sum((np.asarray(cache[i]["labels"]) >= 0).sum() for i in cache.items()))
    with pytest.raises(SystemExit, match="not starting"):
        check_disk(tmp_path, need=1e18)
    check_disk(tmp_path, need=0, margin=0)


def test_bench_scale_points_pool_is_shared_and_resumes(tmp_path):
    """The N-scene sets link the first N scenes of one pool (written once, atomically), with val at
    ScanNet's rate; a second generate() writes nothing."""
    from tools.bench_scale_points import _du, generate, split_of

    assert sum(split_of(i) == "val" for i in range(1513)) == 312 and split_of(0) == "val"
    sizes = np.array([300, 400, 500, 600, 700, 800])
    pool = tmp_path / "pool"
    small = generate(tmp_path / "d3", 3, sizes=sizes[:3], pool=pool)
    mtimes = {p: p.stat().st_mtime_ns for p in pool.rglob("*.npy")}
    big = generate(tmp_path / "d6", 6, sizes=sizes, pool=pool)
    assert set(small) <= set(big) and len(list(pool.iterdir())) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # the first three were not rewritten
    assert (tmp_path / "d6" / "val" / "scene0000_00").is_symlink()
    assert np.load(tmp_path / "d6" / "train" / "scene0004_00" / "segment20.npy").dtype == np.int16
    assert _du(tmp_path / "d6") == _du(pool) and not list(pool.glob(".*"))
    generate(tmp_path / "d6", 6, sizes=sizes, pool=pool)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_cache_writer_finite_check_of_float16_items(tmp_path):
    """The writer's float16 check (exponent bits, blockwise) refuses NaN, +inf and -inf at the row where
    they are, accepts the largest finite values and subnormals, and still refuses float32 rows that
    overflow float16."""
    from common.cache import CacheError, CacheKey, CacheWriter, _all_finite

    x = np.zeros((300, 7), np.float16)
    x[0, 0], x[1, 1], x[2, 2] = np.float16(65504), np.float16(-65504), np.float16(6e-8)
    assert _all_finite(x) and _all_finite(x, block=5)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[123, 4] = bad
        assert not _all_finite(y, block=5) and not _all_finite(y)
    assert _all_finite(np.arange(5)) and not _all_finite(np.array([1.0, np.nan]))
    key = CacheKey(encoder="e", checkpoint_sha256="", config_hash="c")
    with CacheWriter(tmp_path / "c", key, 7, "float16") as w:
        w.write("ok", x, np.zeros(300, np.int64))
        y = x.copy()
        y[123, 4] = -np.inf
        with pytest.raises(CacheError, match=r"1 NaN/inf value\(s\) \(first at row 123\)"):
            w.write("bad", y)
        with pytest.raises(CacheError, match="exceed the float16 range"):
            w.write("big", np.full((2, 7), 1e6, np.float32))


def test_streamed_window_is_gathered_in_place(tmp_path):
    """A shuffled window is one float32 array filled in place: the same rows in the same order as
    concatenating the pieces and permuting them, with a traced peak of about one window (it was about
    three: the pieces, their concatenation and the permuted copy)."""
    import tracemalloc

    rng0 = np.random.default_rng(0)
    chunks = [(rng0.standard_normal((n, 64)).astype(np.float16), rng0.integers(-1, 4, n))
              for n in (3000, 5000, 4000)]
    data = ProbeData(chunks, groups=[0, 1, 2])
    wins = list(data.iter_windows(4096, np.random.default_rng(7), unit_rows=1000))
    # the reference: concatenation then permutation, drawn the same way
    units = [(ci, c.rows[s : s + 1000]) for ci, c in enumerate(data._chunks)
             for s in range(0, len(c.rows), 1000)]
    rng = np.random.default_rng(7)
    units = [units[i] for i in rng.permutation(len(units))]
    ref, buf, size = [], [], 0
    for u in units:
        buf.append(u)
        size += len(u[1])
        if size >= 4096:
            ref.append(buf)
            buf, size = [], 0
    if buf:
        ref.append(buf)
    assert len(wins) == len(ref)
    for (x, y, _), us in zip(wins, ref):
        xc = np.concatenate([np.asarray(chunks[ci][0][r], np.float32) for ci, r in us])
        yc = np.concatenate([chunks[ci][1][r] for ci, r in us])
        p = rng.permutation(len(yc))
        assert np.array_equal(x, xc[p]) and np.array_equal(y, yc[p]) and x.dtype == np.float32
    big = ProbeData([(np.ones((40000, 256), np.float16), np.zeros(40000, np.int64))])
    tracemalloc.start()
    x, _, _ = big._gather([(0, big._chunks[0].rows[s : s + 4000]) for s in range(0, 40000, 4000)],
                          np.random.default_rng(0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert x.nbytes == 40000 * 256 * 4 and peak < 1.4 * x.nbytes


def test_bench_scale_points_section_checks_targets_and_growth(tmp_path):
    """The section says which rows are measured, checks the disk / RSS targets only for a measured full size,
    gives the log-log growth slopes (1.00 for a stage that doubles with its scenes) and draws the plot."""
    from tools.bench_scale_points import FULL_SIZE, write_section

    def row(n, ex, pr, load=True):
        r = {"scenes": n, "train_scenes": n * 4 // 5, "val_scenes": n - n * 4 // 5, "points": n * 10**5,
             "extract_s": ex, "probe_s": pr, "disk_bytes": 4.96e9, "data_bytes": n * 4e6,
             "extract_rss_mib": 1700.0, "probe_rss_mib": 3500.0, "mIoU": 50.0}
        return {**r, "extract_load": 1.5, "probe_load": 2.5} if load else r

    doc = tmp_path / "bm.md"
    doc.write_text("# benchmarks\n")
    write_section([row(100, 100.0, 50.0, load=False), row(200, 200.0, 100.0)], doc, "100 200", 2_000_000)
    text = doc.read_text()
    assert "(EXTRAPOLATED" in text and "Targets at" not in text and "| - |" in text and "1.5 / 2.5" in text
    assert "extract time vs training scenes 1.00, probe time vs validation scenes 1.00" in text
    assert (tmp_path / "img" / "bench_scale_points.png").stat().st_size > 10_000
    write_section([row(100, 100.0, 50.0), row(400, 400.0, 200.0), row(FULL_SIZE, 1512.5, 756.5)], doc,
                  f"100 400 {FULL_SIZE}", 2_000_000)
    text = doc.read_text()
    # time = start-up + cost x scenes: here no start-up, 1.25 s per training scene (80 % of the scenes train)
    assert "extract = 0 s + 1.25 s x training scenes (largest deviation 0 %)" in text
    assert "(EXTRAPOLATED" not in text and "target <= 20 GB: met" in text and "target <= 8 GB: met" in text
    assert text.count("## bench_scale_points") == 1
