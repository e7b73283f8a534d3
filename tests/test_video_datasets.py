"""Dataset layouts read from hand-written tiny list files; ClipDataset; the reader table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import InputError
from videoprobe.data import (
    ClipDataset,
    ClipSpec,
    VideoItem,
    build_video_dataset,
    collate_items,
    read_class_index,
)
from videoprobe.data.synth import render_video, write_video


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def summary(items: list[VideoItem], root: Path) -> list[tuple[str, str, int, str]]:
    return [(it.video_id, str(Path(it.path).relative_to(root.resolve())), it.label, it.split) for it in items]


# ------------------------------------------------------------------------------------------ folders


def test_class_folders(tmp_path: Path) -> None:
    touch(tmp_path, "b_class/x1.mp4", "a_class/y1.avi", "a_class/sub/y2.MP4", "a_class/notes.txt",
          ".hidden/z.mp4")
    items, names = build_video_dataset("folder", tmp_path, "train")
    assert names == ["a_class", "b_class"]
    assert summary(items, tmp_path) == [
        ("y2", "a_class/sub/y2.MP4", 0, "train"), ("y1", "a_class/y1.avi", 0, "train"),
        ("x1", "b_class/x1.mp4", 1, "train")]


def test_kinetics_folder_layout_with_split_dirs(tmp_path: Path) -> None:
    touch(tmp_path, "train/abseiling/v1.mp4", "train/air drumming/v2.mp4", "val/abseiling/v3.mp4",
          "train/x/same.mp4", "train/abseiling/same.mp4")
    items, names = build_video_dataset("folder", tmp_path, "train")
    assert names == ["abseiling", "air drumming", "x"]
    ids = {it.video_id: it.label for it in items}
    assert ids == {"abseiling__same": 0, "v1": 0, "v2": 1, "x__same": 2}  # duplicate stems get the class
    val, _ = build_video_dataset("folder", tmp_path, "val")
    assert [it.video_id for it in val] == ["v3"]


# ------------------------------------------------------------------------------------------ UCF101


@pytest.fixture
def ucf(tmp_path: Path) -> Path:
    write(tmp_path / "ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n3 Bowling\n")
    write(tmp_path / "ucfTrainTestlist/trainlist01.txt",
          "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nArchery/v_Archery_g09_c02.avi 2\r\n\r\n")
    write(tmp_path / "ucfTrainTestlist/testlist01.txt",
          "Bowling/v_Bowling_g01_c01.avi\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c03.avi\n")
    return tmp_path


def test_ucf101_lists(ucf: Path) -> None:
    items, names = build_video_dataset("ucf101", ucf, "train")
    assert names == ["ApplyEyeMakeup", "Archery", "Bowling"]
    assert summary(items, ucf) == [
        ("v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "train"),
        ("v_Archery_g09_c02", "Archery/v_Archery_g09_c02.avi", 1, "train")]
    test, _ = build_video_dataset("ucf101", ucf, "test")
    assert [(it.video_id, it.label, it.split) for it in test] == [
        ("v_Bowling_g01_c01", 2, "test"), ("v_ApplyEyeMakeup_g01_c03", 0, "test")]
    val, _ = build_video_dataset("ucf101", ucf, "val")
    assert [it.label for it in val] == [2, 0]


def test_ucf101_unknown_label_names_list_and_line(ucf: Path) -> None:
    lst = write(ucf / "ucfTrainTestlist/trainlist01.txt",
                "Archery/v_Archery_g09_c02.avi 2\nX/v_X_g01_c01.avi 4\n")
    with pytest.raises(InputError) as info:
        build_video_dataset("ucf101", ucf, "train")
    assert str(info.value).startswith(f"{lst}: line 2: unknown label '4'")
    assert "classInd.txt" in str(info.value)
    write(ucf / "ucfTrainTestlist/testlist01.txt", "Bowling/a.avi\nSkiing/b.avi\n")
    with pytest.raises(InputError, match=r"testlist01\.txt: line 2: unknown label 'Skiing'"):
        build_video_dataset("ucf101", ucf, "test")


def test_class_index_problems(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="consecutive"):
        read_class_index(write(tmp_path / "c1.txt", "1 a\n3 b\n"))
    with pytest.raises(InputError, match="duplicate"):
        read_class_index(write(tmp_path / "c2.txt", "1 a\n2 a\n"))
    assert read_class_index(write(tmp_path / "c3.txt", "2 b\n1 a\n")) == ["a", "b"]
    assert read_class_index(write(tmp_path / "c4.txt", "alpha\nbeta gamma\n")) == ["alpha", "beta gamma"]
    with pytest.raises(InputError, match="class index file not found"):
        read_class_index(tmp_path / "nope.txt")


# ------------------------------------------------------------------------------------------ generic list


def test_generic_list(tmp_path: Path) -> None:
    lst = write(tmp_path / "lists/train.txt", "clips/a.mp4 dog\nclips/b c.mp4 cat\n/abs/d.mp4 dog\n")
    items, names = build_video_dataset("list", tmp_path, "train", list_file=lst, video_root=tmp_path)
    assert names == ["cat", "dog"]
    assert [(it.video_id, it.path, it.label) for it in items] == [
        ("a", str((tmp_path / "clips/a.mp4").resolve()), 1),
        ("b c", str((tmp_path / "clips/b c.mp4").resolve()), 0),
        ("d", "/abs/d.mp4", 1)]
    ints = write(tmp_path / "ints.txt", "a.mp4 0\nb.mp4 2\n")
    items, names = build_video_dataset("list", tmp_path, "train", list_file=ints)
    assert names == ["0", "1", "2"] and [it.label for it in items] == [0, 2]
    assert Path(items[0].path) == (tmp_path / "a.mp4").resolve()  # default root: the list's folder
    cls = write(tmp_path / "classes.txt", "1 cat\n2 dog\n")
    bad = write(tmp_path / "bad.txt", "a.mp4 cat\nb.mp4 horse\n")
    with pytest.raises(InputError, match=r"bad\.txt: line 2: unknown label 'horse' \(not in classes\.txt\)"):
        build_video_dataset("list", tmp_path, "train", list_file=bad, class_index=cls)


def test_missing_policy(tmp_path: Path) -> None:
    touch(tmp_path, "here.mp4")
    lst = write(tmp_path / "l.txt", "here.mp4 0\ngone.mp4 0\n")
    kept, _ = build_video_dataset("list", tmp_path, "train", list_file=lst)
    assert len(kept) == 2
    skipped, _ = build_video_dataset("list", tmp_path, "train", list_file=lst, missing="skip")
    assert [it.video_id for it in skipped] == ["here"]
    with pytest.raises(InputError, match=r"gone\.mp4: video file not found \(listed in .*l\.txt"):
        build_video_dataset("list", tmp_path, "train", list_file=lst, missing="error")


# ------------------------------------------------------------------------------------------ HMDB51


def test_hmdb51_splits(tmp_path: Path) -> None:
    write(tmp_path / "testTrainMulti_7030_splits/brush_hair_test_split1.txt",
          "a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    write(tmp_path / "testTrainMulti_7030_splits/cartwheel_test_split1.txt", "d.avi 2\ne.avi 1\n")
    write(tmp_path / "testTrainMulti_7030_splits/cartwheel_test_split2.txt", "d.avi 1\ne.avi 2\n")
    touch(tmp_path, "hmdb51_org/brush_hair/a.avi")
    train, names = build_video_dataset("hmdb51", tmp_path, "train")
    assert names == ["brush_hair", "cartwheel"]
    assert summary(train, tmp_path) == [("a", "hmdb51_org/brush_hair/a.avi", 0, "train"),
                                        ("e", "hmdb51_org/cartwheel/e.avi", 1, "train")]
    test, _ = build_video_dataset("hmdb51", tmp_path, "test")
    assert [(it.video_id, it.label) for it in test] == [("b", 0), ("d", 1)]
    split2, names2 = build_video_dataset("hmdb51", tmp_path, "train", split_id=2)
    assert names2 == ["cartwheel"] and [it.video_id for it in split2] == ["d"]
    bad = write(tmp_path / "testTrainMulti_7030_splits/cartwheel_test_split1.txt", "d.avi 2\ne.avi 5\n")
    with pytest.raises(InputError, match=f"{bad}: line 2: expected"):
        build_video_dataset("hmdb51", tmp_path, "train")


# ------------------------------------------------------------------------------------------ Kinetics


KINETICS_TRAIN = """label,youtube_id,time_start,time_end,split
abseiling,--33Lscn6sk,4,14,train
air drumming,-AD5U7MuSD0,10.0,20.0,train
abseiling,0347ZoDXyP0,102,112,train
"""


def test_kinetics_csv(tmp_path: Path) -> None:
    write(tmp_path / "annotations/train.csv", KINETICS_TRAIN)
    write(tmp_path / "annotations/validate.csv",
          "label,youtube_id,time_start,time_end,split,is_cc\nair drumming,zzz,0,10,val,0\n")
    touch(tmp_path, "videos/train/abseiling/--33Lscn6sk_000004_000014.mp4",
          "videos/train/air_drumming/-AD5U7MuSD0_000010_000020.mp4", "videos/zzz_000000_000010.mp4")
    items, names = build_video_dataset("kinetics", tmp_path, "train")
    assert names == ["abseiling", "air drumming"]
    assert summary(items, tmp_path) == [
        ("--33Lscn6sk_000004_000014", "videos/train/abseiling/--33Lscn6sk_000004_000014.mp4", 0, "train"),
        ("-AD5U7MuSD0_000010_000020", "videos/train/air_drumming/-AD5U7MuSD0_000010_000020.mp4", 1, "train"),
        ("0347ZoDXyP0_000102_000112", "videos/train/abseiling/0347ZoDXyP0_000102_000112.mp4", 0, "train")]
    present, _ = build_video_dataset("kinetics", tmp_path, "train", missing="skip")
    assert len(present) == 2
    val, vnames = build_video_dataset("kinetics", tmp_path, "val")  # classes from train.csv, flat file found
    assert vnames == names
    assert summary(val, tmp_path) == [("zzz_000000_000010", "videos/zzz_000000_000010.mp4", 1, "val")]
    bad = write(tmp_path / "annotations/validate.csv", "label,youtube_id,time_start,time_end,split\n"
                "abseiling,a,0,10,val\nbungee jumping,b,0,10,val\n")
    with pytest.raises(InputError) as info:
        build_video_dataset("kinetics", tmp_path, "val")
    assert str(info.value).startswith(f"{bad}: line 3: unknown label 'bungee jumping'")
    write(tmp_path / "annotations/test.csv", "youtube_id,time_start\nx,1\n")
    with pytest.raises(InputError, match="header must contain"):
        build_video_dataset("kinetics", tmp_path, "test")


# ------------------------------------------------------------------------------------------ SSv2


def test_ssv2_json(tmp_path: Path) -> None:
    labels = {"Moving something up": "1", "Putting something on something": "0", "Pushing something": "2"}
    write(tmp_path / "labels/labels.json", json.dumps(labels))
    write(tmp_path / "labels/train.json", json.dumps([
        {"id": "78687", "label": "putting cup on table", "template": "Putting [something] on [something]",
         "placeholders": ["cup", "table"]},
        {"id": "42326", "label": "moving pen up", "template": "Moving [something] up",
         "placeholders": ["pen"]}]))
    write(tmp_path / "labels/validation.json", json.dumps([
        {"id": "1", "label": "pushing box", "template": "Pushing [something]", "placeholders": ["box"]}]))
    write(tmp_path / "labels/test.json", json.dumps([{"id": "555"}]))
    (tmp_path / "20bn-something-something-v2").mkdir()
    items, names = build_video_dataset("ssv2", tmp_path, "train")
    assert names == ["Putting something on something", "Moving something up", "Pushing something"]
    assert summary(items, tmp_path) == [("78687", "20bn-something-something-v2/78687.webm", 0, "train"),
                                        ("42326", "20bn-something-something-v2/42326.webm", 1, "train")]
    val, _ = build_video_dataset("ssv2", tmp_path, "validation")
    assert [(it.video_id, it.label, it.split) for it in val] == [("1", 2, "val")]
    test, _ = build_video_dataset("ssv2", tmp_path, "test")
    assert [(it.video_id, it.label) for it in test] == [("555", -1)]
    bad = write(tmp_path / "labels/validation.json", json.dumps([
        {"id": "1", "template": "Pushing [something]"}, {"id": "9", "template": "Spinning [something]"}]))
    with pytest.raises(InputError) as info:
        build_video_dataset("ssv2", tmp_path, "val")
    assert str(info.value).startswith(f"{bad}: entry 2 (id 9): unknown label 'Spinning something'")


# ------------------------------------------------------------------------------------------ torch datasets


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory: pytest.TempPathFactory) -> list[VideoItem]:
    d = tmp_path_factory.mktemp("clipds")
    items = []
    for i, name in enumerate(["RedDisc", "MoveLeft"]):
        write_video(d / f"{name}.mp4", render_video(name, 20, 32, np.random.default_rng(i)), fps=10)
        items.append(VideoItem(name, str(d / f"{name}.mp4"), i, "train"))
    (d / "broken.mp4").write_bytes(b"not a video at all" * 50)
    items.append(VideoItem("broken", str(d / "broken.mp4"), 0, "train"))
    return items


def test_clip_dataset_views_and_failures(small_videos: list[VideoItem]) -> None:
    spec = ClipSpec(clip_len=4, frame_step=2, num_clips=2, spatial="three_crop", size=24)
    ds = ClipDataset(small_videos, spec)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_items)
    out = [s for batch in loader for s in batch]
    assert [s["video_id"] for s in out] == ["RedDisc", "MoveLeft", "broken"]
    for s in out[:2]:
        assert s["error"] is None and s["backend"] == "decord"
        assert s["video"].shape == (6, 3, 4, 24, 24) and s["frame_indices"].shape == (2, 4)
    bad = out[2]
    assert bad["video"] is None and bad["error"].startswith(small_videos[2].path + ": ")
    with pytest.raises(InputError):
        ClipDataset(small_videos, spec, strict=True)[2]
    rspec = ClipSpec(4, 2, 1, mode="random", spatial="random_resized", size=16)
    a, b = ClipDataset(small_videos[:1], rspec, seed=3), ClipDataset(small_videos[:1], rspec, seed=4)
    assert torch.equal(a[0]["video"], a[0]["video"])  # seeded by (seed, video id)
    assert not torch.equal(a[0]["video"], b[0]["video"])


# ------------------------------------------------------------------------------------------ reader table


def test_unknown_kind_is_one_config_error_listing_the_kinds(tmp_path: Path) -> None:
    from common.errors import ConfigError
    from videoprobe.data.datasets import KINDS

    with pytest.raises(ConfigError) as e:
        build_video_dataset("ucf-101", tmp_path, "train")
    msg = str(e.value)
    assert "\n" not in msg and "'ucf-101'" in msg and ", ".join(KINDS) in msg


def test_a_new_layout_is_one_function_and_one_table_entry(tmp_path: Path, monkeypatch) -> None:
    """A format "one video per line: <class>/<file>" added as a reader + a READERS entry is read by
    build_video_dataset and by the extractor's load_items (config kind) with nothing else changed."""
    from videoprobe.data import datasets
    from videoprobe.extract import DataConfig, load_items

    def read_lines(src: datasets.DataSource) -> datasets.Layout:
        listing = src.root / f"{src.name}.txt"
        rels = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        names = sorted({r.split("/")[0] for r in rels})
        items = [VideoItem(Path(r).stem, str((src.root / r).resolve()), names.index(r.split("/")[0]),
                           src.name) for r in rels]
        return items, names, listing

    monkeypatch.setitem(datasets.READERS, "lines", read_lines)
    touch(tmp_path, "b/2.mp4", "a/1.mp4")
    write(tmp_path / "val.txt", "b/2.mp4\na/1.mp4\n")
    items, names = build_video_dataset("lines", tmp_path, "validation")
    assert names == ["a", "b"] and [(it.video_id, it.label, it.split) for it in items] == [
        ("2", 1, "val"), ("1", 0, "val")]
    items, names = load_items(DataConfig(kind="lines", root=str(tmp_path), split="val"))
    assert [it.video_id for it in items] == ["1", "2"] and names == ["a", "b"]


def test_clip_dataset_views_follow_the_video_not_its_position(small_videos: list[VideoItem]) -> None:
    """What a resumed or sharded extraction relies on: the same video gives the same random views
    wherever it sits in the list; ``info`` holds [num_frames, fps]."""
    rspec = ClipSpec(4, 2, 1, mode="random", spatial="random_resized", size=16)
    first = ClipDataset(small_videos[:2], rspec, seed=3)[1]
    alone = ClipDataset(small_videos[1:2], rspec, seed=3)[0]
    assert first["video_id"] == alone["video_id"] == "MoveLeft"
    assert torch.equal(first["video"], alone["video"])
    assert np.array_equal(first["frame_indices"], alone["frame_indices"])
    assert first["frame_indices"].dtype == np.int64
    assert first["info"].tolist() == [20.0, 10.0]
