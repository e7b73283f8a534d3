"""Security holes of issue 12: code execution from weights files, path traversal, refused runs that
overwrote the previous run's record."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint, trusted
from common.errors import CheckpointError, InputError
from common.paths import check_item_name, check_scene_name, inside_root


# ------------------------------------------------------------------------------ crafted checkpoints
class _Payload:
    """Unpickling this runs code: it creates ``marker`` (what an attacker's file would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _evil_file(tmp_path: Path, state: dict) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({**state, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    path, marker = _evil_file(tmp_path, {"model": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "evil.pth" in msg and "builtins.exec" in msg and "trust_checkpoint=true" in msg and "\n" not in msg
    assert not marker.exists()


def test_video_encoder_refuses_crafted_checkpoint(tmp_path):
    from videoprobe.models import create_video_encoder

    path, marker = _evil_file(tmp_path, {"model": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match=r"evil.pth: .*builtins.exec.*encoder.trust_checkpoint=true"):
        create_video_encoder("videomae_vit_tiny", checkpoint=str(path), num_frames=16, img_size=32)
    assert not marker.exists()


def test_point_encoder_refuses_crafted_checkpoint(tmp_path):
    from pointprobe.models import load_encoder

    path, marker = _evil_file(tmp_path, {"config": {}, "state_dict": {}})
    with pytest.raises(CheckpointError, match=r"evil.pth: .*builtins.exec.*trust_checkpoint=true"):
        load_encoder(path)
    assert not marker.exists()


def test_trust_opt_in_loads_with_full_unpickling_and_warns(tmp_path, caplog):
    path, marker = _evil_file(tmp_path, {"model": {"w": torch.zeros(2)}})
    with trusted([path]):
        obj = load_checkpoint(path)
    assert marker.exists()  # the opt-in really unpickles everything: that is why it is explicit
    assert "model" in obj and any("full unpickling" in r.getMessage() for r in caplog.records)


def _videomae_official(tmp_path: Path) -> tuple[Path, dict]:
    """A file in the official VideoMAE fine-tuning layout: {"model", "optimizer", "epoch", "args"}, with
    the argparse.Namespace (and numpy scalars) that run_class_finetuning.py pickles."""
    from tests.test_video_models import _layout

    sd = _layout("videomae", False, "fc_norm", torch.Generator().manual_seed(1))
    args = argparse.Namespace(model="vit_small_patch16_224", batch_size=8, epochs=90, tubelet_size=2,
                              input_size=224, lr=1e-3, layer_decay=0.75, drop_path=0.1, nb_classes=174,
                              data_path="/data/ssv2", output_dir=None, mixup=0.8, crop_pct=None)
    obj = {"model": {**sd, "head.weight": torch.zeros(5, 48), "head.bias": torch.zeros(5)},
           "epoch": 39, "args": args, "max_accuracy": np.float64(66.7), "scaler": {"scale": 65536.0}}
    path = tmp_path / "checkpoint-39.pth"
    torch.save(obj, path)
    return path, sd


def test_official_videomae_layout_with_namespace_loads_without_opt_in(tmp_path):
    from videoprobe.models import create_video_encoder

    path, _ = _videomae_official(tmp_path)
    raw = load_checkpoint(path)
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].nb_classes == 174
    assert float(raw["max_accuracy"]) == pytest.approx(66.7)
    enc = create_video_encoder("videomae_vit_tiny", checkpoint=str(path), num_frames=16, img_size=32)
    assert len(enc.checkpoint_id) == 64


# --------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("bad", ["", ".", "..", "../../evil/scene0950_00", "/abs/scene0000_00", "a/b",
                                 "a\\b", "x\x00y", " scene0000_00", "C:evil"])
def test_item_name_rejects_bad(bad):
    with pytest.raises(InputError):
        check_item_name(bad)


def test_item_and_scene_names_accept_good():
    assert check_item_name("scene0950_00") == "scene0950_00"
    assert check_item_name("v_ApplyEyeMakeup_g01_c01") == "v_ApplyEyeMakeup_g01_c01"
    assert check_scene_name("scene0950_00") == "scene0950_00"
    with pytest.raises(InputError, match="sceneXXXX_YY"):
        check_scene_name("scene950")
    with pytest.raises(InputError, match="path separator"):
        check_scene_name("../../x/scene0950_00")


def test_inside_root(tmp_path):
    assert inside_root("ApplyEyeMakeup/v_x.avi", tmp_path) == tmp_path / "ApplyEyeMakeup/v_x.avi"
    with pytest.raises(InputError, match="leads outside"):
        inside_root("../x.avi", tmp_path / "videos")


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------- preprocess traversal
def test_preprocess_split_entry_cannot_escape_raw_or_out(tmp_path, capsys):
    """The report's scenario: --raw and --out side by side, a split entry ../../evil/scene0950_00 that
    points at a (valid) raw scene of the user's outside both: it must be a failed item, untouched."""
    from pointprobe.cli import main
    from pointprobe.data.scannet import list_scenes
    from tests.test_scannet_data import _raw_root, _write_raw_scene

    root = _raw_root(tmp_path)  # tmp/raw
    _write_raw_scene(root, "scene0000_00")
    _write_raw_scene(tmp_path, "scene0950_00", sub="evil")  # tmp/evil/scene0950_00: the user's data
    (tmp_path / "evil" / "scene0950_00" / "notes.txt").write_text("my only copy\n")
    (root / "scannetv2_train.txt").write_text("scene0000_00\n../../evil/scene0950_00\n")
    before = _tree_digest(tmp_path / "evil")
    out = tmp_path / "out"
    rc = main(["preprocess", "--raw", str(root), "--out", str(out), "--splits", "train", "--workers", "1",
               "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1
    assert _tree_digest(tmp_path / "evil") == before
    assert "1 written" in cap.out and "1 failed" in cap.out
    assert "train/../../evil/scene0950_00:" in cap.err and "path separator" in cap.err
    assert list_scenes(out, "train") == ["scene0000_00"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil", "out", "raw"]


def test_save_scene_replaces_atomically_and_stays_in_root(tmp_path):
    from pointprobe.data.scannet import Scene, load_scene, save_scene

    n = 4
    neg = np.full(n, -1, np.int64)
    scene = Scene("scene0000_00", np.random.rand(n, 3).astype(np.float32), np.zeros((n, 3), np.uint8),
                  np.zeros((n, 3), np.float32), neg, neg, neg, labelled=False)
    out = tmp_path / "out"
    dest = save_scene(scene, out / "train" / "scene0000_00", root=out)
    (dest / "extra_user_file.txt").write_text("x")  # replaced as a whole: the old folder goes
    scene.coord[:] = 7
    save_scene(scene, dest, root=out)
    np.testing.assert_array_equal(load_scene(dest).coord, 7)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["scene0000_00"]  # no temp, no old copy
    # a destination that is a symlink to the user's folder: the link is replaced, the target untouched
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("keep")
    (out / "train" / "scene0001_00").symlink_to(user, target_is_directory=True)
    save_scene(scene, out / "train" / "scene0001_00", root=out)
    assert (user / "keep.txt").read_text() == "keep" and not (out / "train" / "scene0001_00").is_symlink()
    with pytest.raises(InputError, match="outside the output folder"):
        save_scene(scene, tmp_path / "elsewhere" / "scene0002_00", root=out)
    with pytest.raises(InputError, match="path separator|relative folder"):
        save_scene(scene, out / "train" / "..", root=out)


# ------------------------------------------------------------------------ refused runs write nothing
def _point_dataset(root: Path, n: int = 2) -> Path:
    from pointprobe.data.scannet import Scene, save_scene

    rng = np.random.default_rng(0)
    for i in range(n):
        k = 300
        lab = rng.integers(0, 20, k).astype(np.int64)
        scene = Scene(f"scene{i:04d}_00", rng.random((k, 3)).astype(np.float32) * 2,
                      rng.integers(0, 255, (k, 3)).astype(np.uint8),
                      np.tile([0, 0, 1], (k, 1)).astype(np.float32), lab, lab, np.zeros(k, np.int64))
        save_scene(scene, root / "val" / scene.name, root=root)
    return root


def test_refused_point_extract_leaves_out_folder_byte_identical(tmp_path, monkeypatch, capsys):
    import pointprobe.extract as px
    from pointprobe.cli import main

    data = _point_dataset(tmp_path / "data")
    out = tmp_path / "f"
    base = ["extract", f"data.root={data}", f"out={out}", "data.splits=[val]", "device=cpu"]
    assert main([*base, "encoder.name=raw"]) == 0
    before = _tree_digest(out)

    def no_build(*a, **k):
        raise AssertionError("the encoder was built before the cache key was checked")

    monkeypatch.setattr(px, "build_encoder", no_build)
    rc = main([*base, "encoder.name=sparseunet", "encoder.config={channels: [16, 32], depths: [1, 1]}"])
    assert rc == 2 and "encoder=raw but this run has sparseunet" in capsys.readouterr().err
    assert _tree_digest(out) == before
    monkeypatch.undo()

    # a difference only the built encoder knows (its config) is still refused before any write
    small = ["encoder.name=sparseunet", "encoder.config={channels: [8, 16], depths: [1, 1]}"]
    out2 = tmp_path / "g"
    base2 = [*base[:2], f"out={out2}", *base[3:]]
    assert main([*base2, *small]) == 0
    before2 = _tree_digest(out2)
    rc = main([*base2, "encoder.name=sparseunet", "encoder.config={channels: [8, 24], depths: [1, 1]}"])
    assert rc == 2 and "config_hash" in capsys.readouterr().err
    assert _tree_digest(out2) == before2

    # a missing data root: no out folder appears, an existing one keeps its config.yaml
    rc = main(["extract", f"data.root={tmp_path / 'nope'}", f"out={tmp_path / 'h'}", "encoder.name=raw"])
    assert rc == 2 and not (tmp_path / "h").exists()
    rc = main(["extract", f"data.root={tmp_path / 'nope'}", f"out={out}", "encoder.name=raw"])
    assert rc == 2 and _tree_digest(out) == before


def test_refused_video_extract_builds_nothing_and_writes_nothing(tmp_path, monkeypatch):
    import videoprobe.extract as vx
    from common.errors import CacheError
    from tests.test_video_pipeline import CLASSES, _cfg
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = tmp_path / "synth"
    generate_dataset(root, SynthConfig(classes=CLASSES[:2], videos_per_class=2, frames=16, size=64,
                                       clips_per_group=1, test_fraction=0.5), progress=False)
    out = tmp_path / "cache"
    vx.extract(_cfg(root, out, **{"save_tokens": False}))
    before = _tree_digest(out)
    ck = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(3)}}, ck)

    def no_build(*a, **k):
        raise AssertionError("the encoder was built before the cache key was checked")

    monkeypatch.setattr(vx, "build_encoder", no_build)
    with pytest.raises(CacheError, match="checkpoint_sha256=none but this run has"):
        vx.extract(_cfg(root, out, **{"save_tokens": False, "encoder.checkpoint": str(ck)}))
    assert _tree_digest(out) == before
    with pytest.raises(InputError):  # a missing data root: no cache folder appears
        vx.extract(_cfg(tmp_path / "nope", tmp_path / "c2", **{"save_tokens": False}))
    assert not (tmp_path / "c2").exists()


def test_video_list_entry_cannot_leave_the_video_root(tmp_path):
    from videoprobe.data.datasets import read_path_label_list

    vids = tmp_path / "videos"
    (vids / "ApplyEyeMakeup").mkdir(parents=True)
    lst = tmp_path / "list.txt"
    lst.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 0\n")
    items = read_path_label_list(lst, vids, ["ApplyEyeMakeup"])
    assert items[0].path == str((vids / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi").resolve())
    lst.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 0\n../../etc/passwd.avi 0\n")
    with pytest.raises(InputError, match=r"list.txt: line 2: .*leads outside"):
        read_path_label_list(lst, vids, ["ApplyEyeMakeup"])
