"""common.cache: round trips, key refusal, crash/resume, corruption reports, ranks, odd item ids."""
from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common.cache import (
    CacheKey,
    CacheWriter,
    FeatureCache,
    FillResult,
    MissingItemError,
    fill_cache,
    is_cache_entry,
    item_stem,
    journal_path,
    merge_manifests,
)
from common.errors import CacheError, InputError

REPO = Path(__file__).resolve().parent.parent
D = 8


def make_key(**kw) -> CacheKey:
    base = dict(encoder="sonata_small", checkpoint_sha256="ab12" * 16, config_hash="0123456789abcdef",
                preprocessing={"grid_size": 0.02, "normals": True}, dataset="scannet", split="val")
    base.update(kw)
    return CacheKey(**base)


def item_data(item_id: str, n: int | None = None) -> dict[str, np.ndarray]:
    """Deterministic arrays for an item, derived from its id (the same in every process)."""
    seed = int.from_bytes(item_id.encode(), "little") % (2**32)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40)) if n is None else n
    return {
        "features": rng.normal(size=(n, D)).astype(np.float32) * 3,
        "labels": rng.integers(-1, 20, size=n).astype(np.int64),
        "coord": rng.uniform(0, 5, size=(n, 3)).astype(np.float32),
    }


def write_items(w: CacheWriter, ids) -> None:
    for i in ids:
        w.write(i, **item_data(i))


def check_items(cache: FeatureCache, ids, dtype=np.float32) -> None:
    for i in ids:
        ref = item_data(i)
        got = cache[i]
        assert set(got) == {"features", "labels", "coord"}
        assert got["features"].dtype == dtype
        np.testing.assert_array_equal(got["features"], ref["features"].astype(dtype))
        np.testing.assert_array_equal(got["labels"], ref["labels"])
        np.testing.assert_array_equal(got["coord"], ref["coord"])
        assert cache.n(i) == len(ref["features"])


# ------------------------------------------------------------------------------------------ basics


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    path = tmp_path / "cache"
    ids = ["scene0002_00", "scene0000_00", "scene0001_00"]
    meta = {"config": {"levels": 4, "grid": (0.02, 0.02)}, "note": "x"}
    with CacheWriter(path, make_key(), D, dtype=dtype, meta=meta, fsync=False) as w:
        write_items(w, ids)
        assert w.has("scene0000_00") and not w.has("scene0003_00")
        assert len(w) == 3
    assert (path / "manifest.json").exists()
    assert not list(path.glob("manifest.rank*.jsonl"))  # merged on close
    cache = FeatureCache(path, expect_key=make_key(), verify=True)
    assert cache.items() == sorted(ids) and list(cache) == sorted(ids)
    assert len(cache) == 3 and "scene0001_00" in cache and "nope" not in cache
    assert cache.key == make_key() and cache.feature_dim == D and cache.dtype == dtype
    assert cache.meta == {"config": {"levels": 4, "grid": [0.02, 0.02]}, "note": "x"}
    check_items(cache, ids, np.dtype(dtype))
    f = cache["scene0000_00"]["features"]
    assert isinstance(f, np.memmap) and not f.flags.writeable
    only = cache.load("scene0001_00")
    assert list(only) == ["features"]
    assert cache.arrays("scene0001_00") == ["features", "labels", "coord"]
    total = sum(len(item_data(i)["features"]) for i in ids)
    assert cache.total_rows == total
    cat = cache.concat()
    assert cat["features"].shape == (total, D)
    np.testing.assert_array_equal(
        cat["labels"], np.concatenate([item_data(i)["labels"] for i in sorted(ids)]))
    with pytest.raises(MissingItemError, match="scene0009_00") as ei:
        cache["scene0009_00"]
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, CacheError)
    with pytest.raises(CacheError, match="no array 'normals'"):
        cache.load("scene0000_00", ["normals"])
    # the manifest records everything the design asks for
    m = json.loads((path / "manifest.json").read_text())
    assert m["key"]["checkpoint_sha256"] == "ab12" * 16 and m["key"]["dataset"] == "scannet"
    assert m["feature_dim"] == D and m["dtype"] == dtype and m["format_version"] == 1
    entry = m["items"]["scene0000_00"]["arrays"]["features"]
    assert entry["shape"] == [len(item_data("scene0000_00")["features"]), D]
    assert entry["nbytes"] == np.prod(entry["shape"]) * np.dtype(dtype).itemsize
    assert len(entry["sha256"]) == 64


def test_torch_inputs_and_empty_item(tmp_path):
    import torch

    path = tmp_path / "c"
    with CacheWriter(path, make_key(), D, fsync=False) as w:
        w.write("t", torch.ones(5, D, dtype=torch.float64), labels=torch.arange(5))
        w.write("empty", np.zeros((0, D), np.float32), labels=np.zeros(0, np.int64))
    c = FeatureCache(path)
    np.testing.assert_array_equal(c["t"]["features"], np.ones((5, D), np.float32))
    assert c["t"]["labels"].dtype == np.int64
    assert c["empty"]["features"].shape == (0, D) and c.n("empty") == 0


def test_bad_inputs_rejected(tmp_path):
    w = CacheWriter(tmp_path / "c", make_key(), D, dtype="float16", fsync=False)
    f = np.zeros((4, D), np.float32)
    f[2, 3] = np.nan
    with pytest.raises(CacheError, match=r"item 'scans/bad'.*NaN.*row 2"):
        w.write("scans/bad", f)
    f[2, 3] = np.inf
    with pytest.raises(CacheError, match="NaN/inf"):
        w.write("scans/bad", f)
    with pytest.raises(CacheError, match="float16 range"):
        w.write("scans/bad", np.full((2, D), 1e6, np.float32))
    with pytest.raises(CacheError, match=r"expected \(n, 8\)"):
        w.write("scans/bad", np.zeros((4, D + 1), np.float32))
    with pytest.raises(CacheError, match="labels have shape"):
        w.write("scans/bad", np.zeros((4, D), np.float32), labels=np.zeros(3))
    with pytest.raises(CacheError, match="numeric"):
        w.write("scans/bad", np.array([["a"] * D]))
    with pytest.raises(CacheError, match="not a non-empty string"):
        w.write("", np.zeros((1, D)))
    assert not w.has("scans/bad") and len(w) == 0
    assert not list((tmp_path / "c").rglob("*.npy"))  # nothing half-written
    w.write("ok", np.zeros((1, D)))
    with pytest.raises(CacheError, match="already in cache"):
        w.write("ok", np.zeros((1, D)))
    w.close()
    with pytest.raises(CacheError, match="closed"):
        w.write("x", np.zeros((1, D)))
    for bad in [dict(dtype="float64"), dict(feature_dim=0), dict(rank=2, world_size=2)]:
        kw = dict(path=tmp_path / "d", key=make_key(), feature_dim=D) | bad
        with pytest.raises(CacheError):
            CacheWriter(**kw)


def test_overwrite_replaces_files(tmp_path):
    path = tmp_path / "c"
    with CacheWriter(path, make_key(), D, fsync=False) as w:
        w.write("a", np.zeros((2, D)), labels=np.zeros(2))
        old = w._items["a"]["arrays"]["features"]["file"]
        w.write("a", np.ones((3, D)), overwrite=True)
        new = w._items["a"]["arrays"]["features"]["file"]
    assert new != old and not (path / old).exists()
    assert not (path / old.replace("features", "labels")).exists()
    c = FeatureCache(path, verify=True)
    np.testing.assert_array_equal(c["a"]["features"], np.ones((3, D)))
    assert c.arrays("a") == ["features"]


# -------------------------------------------------------------------------------------- key checks


def test_key_diff():
    a = make_key()
    assert a.diff(make_key()) == []
    assert a.diff(make_key(split="train", encoder="ptv3")) == ["encoder", "split"]
    assert a.diff(make_key(preprocessing={"normals": True, "grid_size": 0.02})) == []  # order-free
    assert a.diff(make_key(preprocessing={"grid_size": 0.05, "normals": True})) == ["preprocessing"]
    assert CacheKey.from_dict(a.to_dict()) == a
    with pytest.raises(CacheError, match="lacks split"):
        CacheKey.from_dict({k: v for k, v in a.to_dict().items() if k != "split"})


def test_mismatch_refused_naming_field(tmp_path):
    path = tmp_path / "runs" / "x"
    with CacheWriter(path, make_key(), D, fsync=False) as w:
        write_items(w, ["a"])
    with pytest.raises(CacheError) as ei:
        CacheWriter(path, make_key(checkpoint_sha256="cd34" * 16), D)
    msg = str(ei.value)
    assert str(path) in msg and "checkpoint_sha256=ab12ab12ab12.." in msg and "cd34cd34cd34.." in msg
    assert "another folder (out=...)" in msg  # the real key, not a --cache flag
    with pytest.raises(CacheError, match=r"preprocessing\.grid_size=0\.02 but this run has 0\.05"):
        CacheWriter(path, make_key(preprocessing={"grid_size": 0.05, "normals": True}), D)
    with pytest.raises(CacheError, match="feature_dim=8 but this run has 16"):
        CacheWriter(path, make_key(), 16)
    with pytest.raises(CacheError, match="dtype=float32 but this run has float16"):
        CacheWriter(path, make_key(), D, dtype="float16")
    with pytest.raises(CacheError, match=r"split=val but this run has train.*dataset|dataset.*split"):
        CacheWriter(path, make_key(split="train", dataset="s3dis"), D)
    with pytest.raises(CacheError, match="encoder=sonata_small but this run has ptv3"):
        FeatureCache(path, expect_key=make_key(encoder="ptv3"))
    # the refused writers left nothing behind and the cache still reads
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "shards"]
    check_items(FeatureCache(path, expect_key=make_key()), ["a"])


def test_mismatch_against_unmerged_journal(tmp_path):
    path = tmp_path / "c"
    w = CacheWriter(path, make_key(), D, rank=1, world_size=2, fsync=False)
    write_items(w, ["a"])
    w.close()  # several ranks: no merge on close
    assert not (path / "manifest.json").exists()
    with pytest.raises(CacheError, match="config_hash"):
        CacheWriter(path, make_key(config_hash="ffff"), D, rank=0, world_size=2)


# --------------------------------------------------------------------------------- crash / resume


def test_resume_after_dropped_writer(tmp_path):
    path = tmp_path / "c"
    ids = [f"scene{i:04d}_00" for i in range(5)]
    w = CacheWriter(path, make_key(), D)
    write_items(w, ids[:3])
    del w  # "crash": never closed, never merged
    gc.collect()
    assert not (path / "manifest.json").exists()
    partial = FeatureCache(path, expect_key=make_key())  # readable from the journal
    assert partial.items() == ids[:3] and partial.unmerged_journals
    w = CacheWriter(path, make_key(), D)
    assert all(w.has(i) for i in ids[:3]) and not w.has(ids[3])
    todo = [i for i in ids if not w.has(i)]
    assert todo == ids[3:]
    write_items(w, todo)
    w.close()
    cache = FeatureCache(path, verify=True)
    assert cache.items() == ids
    check_items(cache, ids)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from tests.test_cache import make_key, item_data
    from common.cache import CacheWriter

    w = CacheWriter(sys.argv[1], make_key(), 8, fsync=True)
    for i in range(3):
        w.write(f"v/{i}", **item_data(f"v/{i}"))
    real_replace = os.replace
    calls = []
    def replace_then_die(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 2:  # features and labels of item 3 are in place, the record is not
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_die
    w.write("v/3", **item_data("v/3"))
    print("not killed")
    """
)


def test_resume_after_sigkill_and_torn_journal(tmp_path):
    path = tmp_path / "c"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(path), str(REPO)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ids = [f"v/{i}" for i in range(3)]
    assert FeatureCache(path).items() == ids  # the killed item is not recorded
    # a torn last journal line (killed mid-append) is ignored by readers and cut by the next writer
    jp = journal_path(path, 0)
    with open(jp, "ab") as f:
        f.write(b'{"type":"item","id":"v/9","n":3,"arr')
    assert FeatureCache(path).items() == ids
    w = CacheWriter(path, make_key(), D)
    assert [w.has(f"v/{i}") for i in range(5)] == [True, True, True, False, False]
    write_items(w, ["v/3", "v/4"])
    w.close()
    cache = FeatureCache(path, verify=True)
    assert cache.items() == [f"v/{i}" for i in range(5)]
    check_items(cache, cache.items())
    assert not list(path.rglob(".*.tmp*"))  # no temporary files left behind


def test_second_writer_same_rank_refused(tmp_path):
    w = CacheWriter(tmp_path / "c", make_key(), D, fsync=False)
    with pytest.raises(CacheError, match="another writer with rank 0"):
        CacheWriter(tmp_path / "c", make_key(), D)
    w2 = CacheWriter(tmp_path / "c", make_key(), D, rank=1, world_size=2, fsync=False)
    w2.close()
    w.close()


# ------------------------------------------------------------------------------------- corruption


def _one_item_cache(tmp_path) -> tuple[Path, Path]:
    path = tmp_path / "c"
    with CacheWriter(path, make_key(), D, fsync=False) as w:
        write_items(w, ["scans/scene0000_00", "scans/scene0001_00"])
    entry = json.loads((path / "manifest.json").read_text())["items"]["scans/scene0001_00"]
    return path, path / entry["arrays"]["features"]["file"]


def test_truncated_shard_named(tmp_path):
    path, shard = _one_item_cache(tmp_path)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(CacheError) as ei:
        FeatureCache(path)
    msg = str(ei.value)
    assert str(shard) in msg and "truncated" in msg and "scans/scene0001_00" in msg
    shard.unlink()
    with pytest.raises(CacheError, match=rf"{shard.name}: missing .*scans/scene0001_00"):
        FeatureCache(path)


def test_corrupt_array_header_and_payload(tmp_path):
    path, shard = _one_item_cache(tmp_path)
    raw = bytearray(shard.read_bytes())
    raw[:6] = b"NOTNPY"  # same size, broken header: found on load
    shard.write_bytes(bytes(raw))
    cache = FeatureCache(path)
    check_items(cache, ["scans/scene0000_00"])
    with pytest.raises(CacheError, match=rf"{shard.name}: corrupt array file.*scans/scene0001_00"):
        cache["scans/scene0001_00"]
    with pytest.raises(CacheError, match=rf"{shard.name}: sha256 mismatch"):
        FeatureCache(path, verify=True)


def test_payload_flip_found_by_verify(tmp_path):
    path, shard = _one_item_cache(tmp_path)
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    FeatureCache(path)  # sizes fine
    with pytest.raises(CacheError, match=rf"{shard.name}: sha256 mismatch.*scans/scene0001_00"):
        FeatureCache(path, verify=True)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'{"format_version": 1}', b"\xff\xfe"])
def test_corrupt_manifest_named(tmp_path, content):
    path, _ = _one_item_cache(tmp_path)
    (path / "manifest.json").write_bytes(content)
    with pytest.raises(CacheError, match=r"manifest\.json: "):
        FeatureCache(path)
    with pytest.raises(CacheError, match=r"manifest\.json: "):
        CacheWriter(path, make_key(), D)


def test_corrupt_manifest_entry_and_missing_cache(tmp_path):
    path, _ = _one_item_cache(tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    del m["items"]["scans/scene0000_00"]["arrays"]["features"]["file"]
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match=r"manifest\.json: corrupt manifest entry for item 'scans/scene0000"):
        FeatureCache(path)
    with pytest.raises(CacheError, match="does not exist"):
        FeatureCache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match=r"manifest\.json: missing"):
        FeatureCache(tmp_path / "empty")
    m["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="format_version 99"):
        FeatureCache(path)


def test_corrupt_journal_middle_line(tmp_path):
    path = tmp_path / "c"
    w = CacheWriter(path, make_key(), D, fsync=False)
    write_items(w, ["a", "b"])
    w.close(merge=False)
    jp = journal_path(path, 0)
    lines = jp.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    jp.write_bytes(b"\n".join(lines))
    with pytest.raises(CacheError, match=r"manifest\.rank0\.jsonl: corrupt journal line 2"):
        FeatureCache(path)


# ---------------------------------------------------------------------------------- several ranks


def test_two_ranks_one_process_then_merge(tmp_path):
    path = tmp_path / "c"
    ids = [f"scans/scene{i:04d}_00" for i in range(7)]
    w0 = CacheWriter(path, make_key(), D, rank=0, world_size=2, meta={"who": 0}, fsync=False)
    w1 = CacheWriter(path, make_key(), D, rank=1, world_size=2, meta={"who": 1}, fsync=False)
    for k, i in enumerate(ids):
        (w0 if k % 2 == 0 else w1).write(i, **item_data(i))
    w0.close()
    w1.close()
    assert not (path / "manifest.json").exists()
    assert sorted(p.name for p in path.glob("manifest.rank*.jsonl")) == ["manifest.rank0.jsonl",
                                                                        "manifest.rank1.jsonl"]
    assert FeatureCache(path).items() == ids  # readable before the merge
    out = merge_manifests(path)
    assert out == path / "manifest.json" and not list(path.glob("manifest.rank*.jsonl"))
    cache = FeatureCache(path, expect_key=make_key(), verify=True)
    assert cache.items() == ids and cache.meta == {"who": 0} and not cache.unmerged_journals
    check_items(cache, ids)
    merge_manifests(path)  # idempotent
    assert FeatureCache(path).items() == ids
    # resuming with one process after a 2-rank run sees everything and merges the new journal
    with CacheWriter(path, make_key(), D, fsync=False) as w:
        assert all(w.has(i) for i in ids)
        write_items(w, ["extra"])
    assert FeatureCache(path).items() == sorted([*ids, "extra"])


def test_merge_keeps_journal_of_live_writer(tmp_path):
    path = tmp_path / "c"
    w0 = CacheWriter(path, make_key(), D, rank=0, world_size=2, fsync=False)
    w1 = CacheWriter(path, make_key(), D, rank=1, world_size=2, fsync=False)
    write_items(w0, ["a"])
    w0.close()
    write_items(w1, ["b"])
    merge_manifests(path)  # rank 1 still writing: its journal must stay
    assert journal_path(path, 1).exists() and not journal_path(path, 0).exists()
    write_items(w1, ["c"])
    w1.close()
    assert FeatureCache(path).items() == ["a", "b", "c"]
    merge_manifests(path)
    assert not journal_path(path, 1).exists()
    assert sorted(json.loads((path / "manifest.json").read_text())["items"]) == ["a", "b", "c"]


def test_merge_refuses_disagreeing_journals(tmp_path):
    path = tmp_path / "c"
    CacheWriter(path, make_key(), D, rank=0, world_size=2, fsync=False).close()
    other = tmp_path / "other"
    CacheWriter(other, make_key(split="train"), D, rank=1, world_size=2, fsync=False).close()
    os.replace(journal_path(other, 1), journal_path(path, 1))
    with pytest.raises(CacheError, match=r"manifest\.rank1\.jsonl: journal disagrees.*split=val vs train"):
        merge_manifests(path)


def test_fill_collects_failures(tmp_path):
    def compute(i: str):
        if i == "broken":
            raise InputError(f"/data/{i}.ply", "truncated file")
        if i == "nan":
            return {"features": np.full((2, D), np.nan)}
        return item_data(i)

    with CacheWriter(tmp_path / "c", make_key(), D, fsync=False) as w:
        failures = w.fill(["a", "broken", "nan", "b"], compute, progress=False)
        assert set(failures) == {"broken", "nan"} and "truncated file" in failures["broken"]
        assert w.items() == ["a", "b"]
        assert w.fill(["a", "b"], lambda i: pytest.fail("recomputed"), progress=False) == {}
    check_items(FeatureCache(tmp_path / "c"), ["a", "b"])


def _compute_with_failures(i: str):
    if i == "broken":
        raise InputError(f"/data/{i}.ply", "truncated file")
    if i == "nan":
        return {"features": np.full((2, D), np.nan)}
    return item_data(i)


def test_fill_cache_single_process(tmp_path):
    path = tmp_path / "c"
    res = fill_cache(path, make_key(), D, "float32", ["a", "broken", "nan", "b"], _compute_with_failures,
                     meta={"run": 1}, progress=False)
    assert isinstance(res, FillResult)
    assert set(res.failures) == {"broken", "nan"}
    assert res.failures["broken"] == "/data/broken.ply: truncated file"
    assert "NaN/inf" in res.failures["nan"]
    assert (res.written, res.skipped) == (2, 0) and res.seconds >= 0
    # closed and merged: one manifest, no journal left
    assert (path / "manifest.json").is_file() and not list(path.glob("manifest.rank*.jsonl"))
    cache = FeatureCache(path, expect_key=make_key(), verify=True)
    assert cache.items() == ["a", "b"] and cache.meta == {"run": 1}
    check_items(cache, ["a", "b"])


def test_fill_cache_resume_skips_done_items(tmp_path):
    path = tmp_path / "c"
    fill_cache(path, make_key(), D, "float32", ["a", "broken", "b"], _compute_with_failures, progress=False)
    seen: list[str] = []

    def compute(i: str):
        seen.append(i)
        return item_data(i)

    res = fill_cache(path, make_key(), D, "float32", ["a", "b", "broken", "c"], compute, progress=False)
    assert seen == ["broken", "c"]  # done items are not recomputed; the failed one is retried
    assert (res.written, res.skipped, res.failures) == (2, 2, {})
    assert FeatureCache(path).items() == ["a", "b", "broken", "c"]


def test_fill_cache_killed_mid_run_keeps_finished_items(tmp_path):
    path = tmp_path / "c"

    def compute(i: str):
        if i == "c":
            raise RuntimeError("killed")
        return item_data(i)

    with pytest.raises(RuntimeError, match="killed"):
        fill_cache(path, make_key(), D, "float32", ["a", "b", "c", "d"], compute, progress=False)
    assert not (path / "manifest.json").exists() and FeatureCache.exists(path)  # journal only
    assert FeatureCache(path).items() == ["a", "b"]
    res = fill_cache(path, make_key(), D, "float32", ["a", "b", "c", "d"], item_data, progress=False)
    assert (res.written, res.skipped) == (2, 2)
    check_items(FeatureCache(path, verify=True), ["a", "b", "c", "d"])


def test_fill_cache_refuses_other_key_before_computing(tmp_path):
    path = tmp_path / "c"
    fill_cache(path, make_key(), D, "float32", ["a"], item_data, progress=False)
    with pytest.raises(CacheError, match="checkpoint_sha256="):
        fill_cache(path, make_key(checkpoint_sha256="cd34" * 16), D, "float32", ["b"],
                   lambda i: pytest.fail("computed"), progress=False)
    assert FeatureCache(path).items() == ["a"]


def test_fill_cache_item_id_prefetch_and_printed_failures(tmp_path, capsys):
    path = tmp_path / "c"
    items = [("v1", 0), ("v2", 1), ("v3", 2)]
    fill_cache(path, make_key(), D, "float32", items[:1], lambda rec: item_data(rec["id"]),
               item_id=lambda it: it[0], prefetch=lambda todo: ({"id": it[0]} for it in todo), progress=False)
    asked: list[list] = []

    def prefetch(todo):
        asked.append(list(todo))
        for vid, k in todo:  # a decoding stage: a bad file gives its message instead of raising
            yield {"id": vid, "error": "bad.mp4: cannot decode" if k == 2 else None}

    def compute(rec):
        if rec["error"] is not None:
            raise InputError(None, rec["error"])
        return item_data(rec["id"])

    res = fill_cache(path, make_key(), D, "float32", items, compute, item_id=lambda it: it[0],
                     prefetch=prefetch, progress=False, progress_unit="video", print_failures=True)
    assert asked == [[("v2", 1), ("v3", 2)]]  # only what is still to do is prefetched
    assert res.failures == {"v3": "bad.mp4: cannot decode"} and (res.written, res.skipped) == (1, 1)
    assert "skipped v3: bad.mp4: cannot decode" in capsys.readouterr().err
    assert FeatureCache(path).items() == ["v1", "v2"]


def test_feature_cache_exists(tmp_path):
    path = tmp_path / "c"
    assert not FeatureCache.exists(path)  # no folder
    path.mkdir()
    (path / "manifest.txt").write_text("not a cache\n")
    assert not FeatureCache.exists(path)  # a folder of other things
    w = CacheWriter(path, make_key(), D, rank=1, world_size=2, fsync=False)
    write_items(w, ["a"])
    assert FeatureCache.exists(path)  # a run under way: its journal
    w.close()
    merge_manifests(path)
    assert not list(path.glob("manifest.rank*.jsonl")) and FeatureCache.exists(path)  # merged
    assert not FeatureCache.exists(path / "shards")


def test_is_cache_entry():
    for name in ("manifest.json", "manifest.rank0.jsonl", "manifest.rank12.jsonl", "shards", ".x.tmp1"):
        assert is_cache_entry(name), name
    for name in ("manifest.rank.jsonl", "extract_config.yaml", "notes.txt", "manifest.json.bak"):
        assert not is_cache_entry(name), name


# --------------------------------------------------------------------------------------- item ids


def test_item_ids_with_slashes_and_odd_characters(tmp_path):
    path = tmp_path / "c"
    ids = ["scans/scene0000_00", "scans_scene0000_00", "a/b", "a_b", "a b", "..", "../../etc/passwd",
           "/abs/path.mp4", "vidéo 1.mp4", "kinetics/abseiling/x-1_000010_000020", "A/B", "x" * 300,
           "y" * 300 + "/1", "y" * 300 + "/2", "con", "-", "a\\b"]
    stems = [item_stem(i) for i in ids]
    assert len(set(stems)) == len(ids)
    assert all("/" not in s and "\\" not in s and not s.startswith((".", "-")) and len(s) <= 81
               for s in stems)
    assert item_stem("scans/scene0000_00") == item_stem("scans/scene0000_00")  # stable
    with CacheWriter(path, make_key(), D, fsync=False) as w:
        write_items(w, ids)
    files = [p for p in path.rglob("*") if p.is_file()]
    root = path.resolve()
    assert all(root in p.resolve().parents for p in files)
    assert not (tmp_path / "etc").exists()
    assert len([p for p in files if p.suffix == ".npy"]) == 3 * len(ids)
    cache = FeatureCache(path, verify=True)
    assert cache.items() == sorted(ids)
    check_items(cache, ids)


# ---------------------------------------------------------------------------------- real torchrun


TORCHRUN_EXTRACT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from common import dist
    from common.cache import CacheWriter, merge_manifests
    from tests.test_cache import make_key, item_data

    assert dist.init_from_env()
    items = [f"scans/scene{i:04d}_00" for i in range(9)]
    w = CacheWriter(sys.argv[1], make_key(), 8, rank=dist.rank(), world_size=dist.world_size(),
                    meta={"world_size": dist.world_size()})
    failures = w.fill(dist.shard(items), item_data, progress=False)
    assert not failures, failures
    assert w.n_written == len(dist.shard(items))
    w.close()
    dist.barrier()
    if dist.is_main():
        merge_manifests(sys.argv[1])
    dist.barrier()
    dist.cleanup()
    """
)


TORCHRUN_FILL = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from common import dist
    from common.cache import fill_cache
    from common.errors import InputError
    from tests.test_cache import make_key, item_data

    assert dist.init_from_env()
    items = [f"s{i}" for i in range(7)]

    def compute(i):
        if i in ("s2", "s3"):  # one failure on each rank (s2 -> rank 0, s3 -> rank 1)
            raise InputError(i, "unreadable")
        return item_data(i)

    res = fill_cache(sys.argv[1], make_key(), 8, "float32", items, compute, progress=False)
    with open(f"{sys.argv[1]}.rank{dist.rank()}.json", "w") as f:
        json.dump({"failures": res.failures, "written": res.written, "skipped": res.skipped}, f)
    dist.cleanup()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_two_ranks_extract_into_one_cache(tmp_path):
    script = tmp_path / "extract.py"
    script.write_text(TORCHRUN_EXTRACT)
    path = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(path), str(REPO)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = [f"scans/scene{i:04d}_00" for i in range(9)]
    assert not list(path.glob("manifest.rank*.jsonl"))
    cache = FeatureCache(path, expect_key=make_key(), verify=True)
    assert cache.items() == ids and cache.meta == {"world_size": 2}
    check_items(cache, ids)


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_two_ranks_fill_cache_gathers_failures(tmp_path):
    script = tmp_path / "fill.py"
    script.write_text(TORCHRUN_FILL)
    path = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(path), str(REPO)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = [json.loads((tmp_path / f"cache.rank{r}.json").read_text()) for r in range(2)]
    expected = {"s2": "s2: unreadable", "s3": "s3: unreadable"}
    assert res[0]["failures"] == expected and res[1]["failures"] == expected  # gathered on every rank
    assert [(r["written"], r["skipped"]) for r in res] == [(3, 0), (2, 0)]
    assert not list(path.glob("manifest.rank*.jsonl"))  # merged by rank 0
    cache = FeatureCache(path, expect_key=make_key(), verify=True)
    assert cache.items() == ["s0", "s1", "s4", "s5", "s6"]
    check_items(cache, cache.items())
