"""TWLV-I embedding folders: import (integer annotations only, float16 clips, Kinetics ids), re-import,
export in the layout the TWLV-I evaluation framework reads (issue 20 items 1-3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.cache import CacheKey, CacheWriter, FeatureCache
from common.errors import CacheError, InputError
from videoprobe.probe import ProbeConfig, knn_defaults, run_probes
from videoprobe.twlv import import_twlv

# Kinetics ids are YouTube ids + times; YouTube ids may start with '-'
IDS = ["--6bJUbfpnQ_000017_000027", "-0CTi5dfZ5E_000010_000020", "-AfKoqdIzl4_000050_000060",
       "0a1b2c3d4e5_000001_000011", "ZZtopVideo1_000100_000110", "_underscore_000002_000012"]
DIM = 12


def _twlv_folder(d: Path, labels: list[int], seed: int = 0, clips: int = 3, ids: list[str] = IDS,
                 extra: dict | None = None) -> Path:
    """One split folder as TWLV-I publishes it: [id].json (integer annotation + metadata only),
    [id]_c.npy (clips x D) and [id]_v.npy (D,), float16."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, DIM)) * 3
    d.mkdir(parents=True)
    for vid, y in zip(ids, labels):
        c = (centres[y] + rng.normal(size=(clips, DIM)) * 0.3).astype(np.float16)
        np.save(d / f"{vid}_c.npy", c)
        np.save(d / f"{vid}_v.npy", c.astype(np.float32).mean(0).astype(np.float16))
        rec = {"annotation": y, "duration": 10.0, "frames": 300,
               "clip_times": [[3.3 * i, 3.3 * (i + 1)] for i in range(clips)], **(extra or {})}
        (d / f"{vid}.json").write_text(json.dumps(rec))
    return d


def _probe(train: Path, test: Path) -> dict:
    cfg = ProbeConfig(train_cache=str(train), test_cache=str(test), probes=["knn"], knn=knn_defaults(ks=[2]),
                      progress=False)
    return run_probes(cfg)


def test_import_integer_annotations_gives_a_usable_cache(tmp_path, capsys):
    from videoprobe.cli import main

    tr = _twlv_folder(tmp_path / "K400" / "train", [0, 1, 2, 0, 1, 2])
    va = _twlv_folder(tmp_path / "K400" / "val", [0, 1, 0, 1, 0, 1], seed=0)  # lacks the top class
    assert main(["import-twlv", str(tr), str(tmp_path / "c_train")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["imported"] == 6 and out["classes"] == 3 and out["class_names_from"] == "numbers"
    cache = FeatureCache(tmp_path / "c_train")
    assert cache.meta["class_names"] == ["class_0", "class_1", "class_2"] and cache.meta["label_base"] == 0
    assert sorted(cache.items()) == sorted(IDS)  # leading-dash ids kept as they are
    f = cache["-0CTi5dfZ5E_000010_000020"]["features"]
    np.testing.assert_array_equal(f, np.load(tr / "-0CTi5dfZ5E_000010_000020_c.npy").astype(np.float32))
    # the val split lacks class 2: the same class count keeps names aligned
    assert main(["import-twlv", str(va), str(tmp_path / "c_val"), "--num-classes", "3"]) == 0
    assert FeatureCache(tmp_path / "c_val").meta["class_names"] == cache.meta["class_names"]
    res = _probe(tmp_path / "c_train", tmp_path / "c_val")
    assert res["results"]["knn"]["top1"] == 100.0
    # and without --num-classes (names class_0, class_1) the probe still matches classes by name
    assert main(["import-twlv", str(va), str(tmp_path / "c_val2")]) == 0
    assert _probe(tmp_path / "c_train", tmp_path / "c_val2")["results"]["knn"]["top1"] == 100.0


def test_import_uses_label_name_and_checks_it(tmp_path):
    names = ["abseiling", "air drumming", "archery"]
    d = tmp_path / "train"
    _twlv_folder(d, [0, 1, 2, 0, 1, 2])
    for vid in IDS:
        rec = json.loads((d / f"{vid}.json").read_text())
        rec["label_name"] = names[rec["annotation"]]
        (d / f"{vid}.json").write_text(json.dumps(rec))
    import_twlv(d, tmp_path / "c")
    c = FeatureCache(tmp_path / "c")
    assert c.meta["class_names"] == names and c.meta["class_names_from"] == "label_name"
    # a class file in another order (or 1-based annotations) contradicts label_name: error, nothing written
    with pytest.raises(InputError, match="files name class 0 'abseiling' but --classes has 'archery'"):
        import_twlv(d, tmp_path / "c2", class_names=names[::-1])
    assert not (tmp_path / "c2").exists()
    rec = json.loads((d / f"{IDS[3]}.json").read_text())
    rec["label_name"] = "bowling"
    (d / f"{IDS[3]}.json").write_text(json.dumps(rec))
    with pytest.raises(InputError, match="label_name 'bowling' for annotation 0, other files name it"):
        import_twlv(d, tmp_path / "c3")


def test_import_refuses_a_cache_probe_could_not_use(tmp_path):
    d = _twlv_folder(tmp_path / "test", [0] * 6)
    for vid in IDS:  # an unlabelled split: annotation -1 everywhere
        (d / f"{vid}.json").write_text(json.dumps({"annotation": -1}))
    with pytest.raises(InputError, match="no video has a class annotation"):
        import_twlv(d, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    one = _twlv_folder(tmp_path / "one", [0] * 6)
    with pytest.raises(InputError, match="1 class"):
        import_twlv(one, tmp_path / "c")
    # an annotation outside the given classes is that video's failure (exit status 1), not a silent drop
    two = _twlv_folder(tmp_path / "two", [0, 1, 2, 0, 1, 0])
    assert import_twlv(two, tmp_path / "c", class_names=["a", "b"]) == 5
    assert len(FeatureCache(tmp_path / "c")) == 5


def test_reimport_updates_what_differs(tmp_path):
    from videoprobe.cli import main

    d = _twlv_folder(tmp_path / "train", [0, 1, 2, 0, 1, 2])
    out = tmp_path / "c"
    st: dict = {}
    import_twlv(d, out, stats=st)
    assert st["written"] == 6 and not st["rebuilt"]
    st = {}
    import_twlv(d, out, stats=st)  # same input: nothing is rewritten
    assert (st["written"], st["updated"], st["unchanged"], st["rebuilt"]) == (0, 0, 6, False)
    # one video's clips changed: only it is rewritten
    np.save(d / f"{IDS[1]}_c.npy", np.ones((2, DIM), np.float16))
    st = {}
    import_twlv(d, out, stats=st)
    assert (st["updated"], st["unchanged"]) == (1, 5)
    np.testing.assert_array_equal(FeatureCache(out)[IDS[1]]["features"], np.ones((2, DIM)))
    # adding --classes afterwards renames the classes (the cache is rebuilt in place)
    classes = tmp_path / "classInd.txt"
    classes.write_text("1 abseiling\n2 air_drumming\n3 archery\n")
    assert main(["import-twlv", str(d), str(out), "--classes", str(classes)]) == 0
    c = FeatureCache(out)
    assert c.meta["class_names"] == ["abseiling", "air_drumming", "archery"] and len(c) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    # a removed video disappears from the cache
    for suffix in ("_c.npy", "_v.npy", ".json"):
        (d / f"{IDS[0]}{suffix}").unlink()
    st = {}
    import_twlv(d, out, class_names=c.meta["class_names"], stats=st)
    assert st["rebuilt"] and sorted(FeatureCache(out).items()) == sorted(IDS[1:])
    # another encoder name: refused like extract into a cache of another key
    with pytest.raises(CacheError, match="encoder=twlv-import but this run has other"):
        import_twlv(d, out, encoder="other")
    # a rebuild never deletes files that are not the cache's
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="also holds 'notes.txt'"):
        import_twlv(d, out)
    assert (out / "notes.txt").read_text() == "mine"


def _cache(path: Path, split: str, dtype: str = "float16") -> Path:
    """A cache as `videoprobe extract` writes it (2 clips x 2 crops per video)."""
    key = CacheKey(encoder="x3d_s", checkpoint_sha256="none", config_hash="abc", dataset="kinetics",
                   split=split)
    rng = np.random.default_rng(1)
    meta = {"class_names": ["abseiling", "air drumming", "archery"], "crops_per_clip": 2}
    with CacheWriter(path, key, DIM, dtype, meta=meta) as w:
        for i, vid in enumerate(IDS):
            y = i % 3
            w.write(vid, rng.normal(size=(4, DIM)) + 4 * y, np.full(4, y),
                    video_info=np.array([250.0, 25.0]), frame_indices=np.array([[0, 4, 8], [120, 124, 128]]))
    return path


def test_export_writes_the_folders_the_framework_reads(tmp_path, capsys):
    from videoprobe.cli import main

    train, test = _cache(tmp_path / "train_cache", "train"), _cache(tmp_path / "test_cache", "test")
    assert main(["export-twlv", str(train), str(tmp_path / "emb")]) == 0
    assert main(["export-twlv", str(test), str(tmp_path / "emb")]) == 0
    msg = capsys.readouterr().out
    assert f"under {tmp_path / 'emb'}/val" in msg and "Diving48 (48)" in msg
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["train", "val"]  # not "test"
    cache = FeatureCache(test)
    for split in ("train", "val"):  # what the framework's Embeddings dataset reads, file by file
        d = tmp_path / "emb" / split
        stems = sorted(f[:-5] for f in (p.name for p in d.iterdir()) if f.endswith(".json"))
        assert stems == sorted(IDS)
        for stem in stems:
            rec = json.loads((d / f"{stem}.json").read_text())
            v, c = np.load(d / f"{stem}_v.npy"), np.load(d / f"{stem}_c.npy")
            assert v.shape == (DIM,) and c.shape == (2, DIM) and c.dtype == np.float32
            assert int(rec["annotation"]) == IDS.index(stem) % 3 and rec["label_base"] == 0
            assert rec["label_name"] == cache.meta["class_names"][rec["annotation"]]
        f = np.asarray(cache[IDS[1]]["features"], np.float32)
        np.testing.assert_allclose(np.load(d / f"{IDS[1]}_c.npy"), f.reshape(2, 2, DIM).mean(1), rtol=1e-6)
    # and back: names from label_name, same clip features, kNN identical to the original caches
    assert main(["import-twlv", str(tmp_path / "emb" / "train"), str(tmp_path / "i_train")]) == 0
    assert main(["import-twlv", str(tmp_path / "emb" / "val"), str(tmp_path / "i_val")]) == 0
    imp = FeatureCache(tmp_path / "i_train")
    assert imp.meta["class_names"] == cache.meta["class_names"] and sorted(imp.items()) == sorted(IDS)
    assert _probe(tmp_path / "i_train", tmp_path / "i_val")["results"]["knn"]["top1"] == 100.0
