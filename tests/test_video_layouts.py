"""Benchmark layouts exactly as published (issue 21): HMDB51 names with '#', mmaction2's folders, the
Diving48 V2 JSON pair + vocabulary, the 20BN SSv2 file names, cvdfoundation's Kinetics replacement
folder and label-less test CSV; integer labels of a list follow classInd.txt's base (issue 12)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from videoprobe.data import ClipDataset, ClipSpec, build_video_dataset
from videoprobe.data.synth import write_video


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def rel(items: list, root: Path) -> list[tuple[str, str, int]]:
    return [(it.video_id, str(Path(it.path).relative_to(root.resolve())), it.label) for it in items]


# ------------------------------------------------------------------------------------------ HMDB51


HMDB_CLAP = ("#20_Rhythm_clap_u_nm_np1_le_goo_4.avi 1 \n#20_Rhythm_clap_u_nm_np1_le_goo_5.avi 2 \n"
             "Applauding_clap_u_cm_np1_fr_med_0.avi 1 \n")


def test_hmdb51_names_starting_with_hash_are_videos(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "testTrainMulti_7030_splits/clap_test_split1.txt", HMDB_CLAP)
    touch(tmp_path, "hmdb51_org/clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi")
    with caplog.at_level(logging.INFO, logger="videoprobe.data.datasets"):
        train, names = build_video_dataset("hmdb51", tmp_path, "train")
    assert names == ["clap"]
    assert rel(train, tmp_path) == [
        ("#20_Rhythm_clap_u_nm_np1_le_goo_4", "hmdb51_org/clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi", 0),
        ("Applauding_clap_u_cm_np1_fr_med_0", "hmdb51_org/clap/Applauding_clap_u_cm_np1_fr_med_0.avi", 0)]
    assert "found 1 of 2 listed videos" in caplog.text
    assert "Applauding_clap_u_cm_np1_fr_med_0.avi" in caplog.text  # the missing one is named
    test, _ = build_video_dataset("hmdb51", tmp_path, "test")
    assert [it.video_id for it in test] == ["#20_Rhythm_clap_u_nm_np1_le_goo_5"]


def test_hmdb51_mmaction2_layout_and_annotations_override(tmp_path: Path) -> None:
    # mmaction2: split files moved into annotations/, videos in videos/<class>/
    write(tmp_path / "annotations/clap_test_split1.txt", HMDB_CLAP)
    write(tmp_path / "annotations/wave_test_split1.txt", "winKen_wave_u_cm_np1_ri_bad_1.avi 1\n")
    train, names = build_video_dataset("hmdb51", tmp_path, "train")
    assert names == ["clap", "wave"]
    assert [p for _, p, _ in rel(train, tmp_path)] == [
        "clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi", "clap/Applauding_clap_u_cm_np1_fr_med_0.avi",
        "wave/winKen_wave_u_cm_np1_ri_bad_1.avi"]  # no videos/ folder yet: relative to the root
    (tmp_path / "videos").mkdir()
    train, _ = build_video_dataset("hmdb51", tmp_path, "train")
    assert rel(train, tmp_path)[2][1] == "videos/wave/winKen_wave_u_cm_np1_ri_bad_1.avi"
    other = write(tmp_path / "my_splits/clap_test_split1.txt", "a.avi 1\n").parent
    items, names = build_video_dataset("hmdb51", tmp_path, "train", annotations=other)
    assert names == ["clap"] and [it.video_id for it in items] == ["a"]
    write(tmp_path / "testTrainMulti_7030_splits/clap_test_split1.txt", "b.avi 1\n")
    with pytest.raises(InputError, match="ambiguous HMDB51 split folder.*data.annotations"):
        build_video_dataset("hmdb51", tmp_path, "train")


# ------------------------------------------------------------------------------------------ list + classInd


def test_list_integer_labels_follow_the_class_index_base(tmp_path: Path) -> None:
    cls = write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 Biking\n3 CarPhone\n")
    # no video of the top class: a 0-based reading would silently shift every label by one
    lst = write(tmp_path / "list.txt", "a.avi 1\nb.avi 2\n")
    items, names = build_video_dataset("list", tmp_path, "train", list_file=lst, class_index=cls)
    assert names == ["ApplyEyeMakeup", "Biking", "CarPhone"]
    assert [it.label for it in items] == [0, 1]
    bad = write(tmp_path / "bad.txt", "a.avi 1\nb.avi 0\n")
    with pytest.raises(InputError) as info:
        build_video_dataset("list", tmp_path, "train", list_file=bad, class_index=cls)
    assert str(info.value).startswith(f"{bad}: line 2: unknown label '0' (not in classInd.txt")
    assert "1..3" in str(info.value)
    zero = write(tmp_path / "classes0.txt", "0 cat\n1 dog\n")  # a 0-based class file
    l0 = write(tmp_path / "l0.txt", "a.avi 1\n")
    items, _ = build_video_dataset("list", tmp_path, "train", list_file=l0, class_index=zero)
    assert [it.label for it in items] == [1]


# ------------------------------------------------------------------------------------------ Diving48


VOCAB = [["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"],
         ["Forward", "25som", "NoTwis", "PIKE"], ["Inward", "15som", "NoTwis", "TUCK"]]


def _diving48(root: Path, ann_dir: str = "") -> None:
    write(root / ann_dir / "Diving48_vocab.json", json.dumps(VOCAB))
    write(root / ann_dir / "Diving48_V2_train.json", json.dumps([
        {"vid_name": "-mmq0PT-u8k_00155", "label": 3, "start_frame": 0, "end_frame": 12},
        {"vid_name": "_8Vy3dlHg2w_00000", "label": 0, "start_frame": 4, "end_frame": 10}]))
    write(root / ann_dir / "Diving48_V2_test.json", json.dumps([
        {"vid_name": "2x00lRzlTVQ_00001", "label": 1, "start_frame": 0, "end_frame": 20}]))


def test_diving48_official_json_and_vocab(tmp_path: Path) -> None:
    _diving48(tmp_path)
    (tmp_path / "rgb").mkdir()
    train, names = build_video_dataset("diving48", tmp_path, "train")
    assert names == ["Back 15som 05Twis FREE", "Back 15som 15Twis FREE", "Forward 25som NoTwis PIKE",
                     "Inward 15som NoTwis TUCK"]
    assert rel(train, tmp_path) == [("-mmq0PT-u8k_00155", "rgb/-mmq0PT-u8k_00155.mp4", 3),
                                    ("_8Vy3dlHg2w_00000", "rgb/_8Vy3dlHg2w_00000.mp4", 0)]
    assert [it.segment for it in train] == [(0, 12), (4, 10)]
    test, tnames = build_video_dataset("diving48", tmp_path, "val")  # Diving48 has train and test only
    assert tnames == names  # the class list is the vocabulary, not the labels of one split
    assert [(it.video_id, it.label) for it in test] == [("2x00lRzlTVQ_00001", 1)]
    # mmaction2's layout: annotations/ + videos/
    mm = tmp_path / "mm"
    _diving48(mm, "annotations")
    (mm / "videos").mkdir()
    items, _ = build_video_dataset("diving48", mm, "train")
    assert rel(items, mm)[0][1] == "videos/-mmq0PT-u8k_00155.mp4"
    write(mm / "annotations/Diving48_V2_train.json", json.dumps([{"vid_name": "x", "label": 4}]))
    with pytest.raises(InputError, match=r"Diving48_V2_train\.json: entry 1 \(x\): label 4 is not in "
                                         r"Diving48_vocab\.json \(0\.\.3\)"):
        build_video_dataset("diving48", mm, "train")


def test_diving48_segment_bounds_are_sampled(tmp_path: Path) -> None:
    frames = np.zeros((30, 32, 32, 3), np.uint8)
    for t in range(30):
        frames[t, :, :] = 8 * t  # brightness = frame number
    write_video(tmp_path / "rgb/clip_00000.mp4", frames, fps=10, crf=0)
    _diving48(tmp_path)
    write(tmp_path / "Diving48_V2_train.json", json.dumps([
        {"vid_name": "clip_00000", "label": 2, "start_frame": 20, "end_frame": 28}]))
    items, _ = build_video_dataset("diving48", tmp_path, "train")
    spec = ClipSpec(clip_len=4, frame_step=2, num_clips=2, spatial="none", backend="pyav")
    s = ClipDataset(items, spec)[0]
    assert s["error"] is None
    assert s["frame_indices"].tolist() == [[20, 22, 24, 26], [21, 23, 25, 27]]
    brightness = s["video"].mean(dim=(1, 3, 4)) * 255  # (V, T)
    assert np.allclose(brightness.numpy(), 8 * s["frame_indices"], atol=3)


# ------------------------------------------------------------------------------------------ SSv2


def test_ssv2_20bn_file_names_and_labels_override(tmp_path: Path) -> None:
    labels = {"Putting something on something": "0", "Moving something up": "1"}
    write(tmp_path / "annotations/something-something-v2-labels.json", json.dumps(labels))
    write(tmp_path / "annotations/something-something-v2-train.json", json.dumps([
        {"id": "78687", "label": "putting cup on table", "template": "Putting [something] on [something]",
         "placeholders": ["cup", "table"]}]))
    write(tmp_path / "annotations/something-something-v2-validation.json", json.dumps([
        {"id": "42326", "label": "moving pen up", "template": "Moving [something] up",
         "placeholders": ["pen"]}]))
    write(tmp_path / "annotations/something-something-v2-test.json", json.dumps([{"id": "555"}]))
    (tmp_path / "videos").mkdir()
    items, names = build_video_dataset("ssv2", tmp_path, "train")
    assert names == ["Putting something on something", "Moving something up"]
    assert rel(items, tmp_path) == [("78687", "videos/78687.webm", 0)]
    val, _ = build_video_dataset("ssv2", tmp_path, "validation")
    assert [(it.video_id, it.label) for it in val] == [("42326", 1)]
    test, _ = build_video_dataset("ssv2", tmp_path, "test")
    assert [(it.video_id, it.label) for it in test] == [("555", -1)]
    mine = write(tmp_path / "elsewhere/my_labels.json", json.dumps({"Moving something up": "0",
                                                                     "Putting something on something": "1"}))
    items, names = build_video_dataset("ssv2", tmp_path, "train", class_index=mine)
    assert names[0] == "Moving something up" and items[0].label == 1
    write(tmp_path / "annotations/labels.json", json.dumps(labels))
    with pytest.raises(InputError, match="ambiguous SSv2 labels file.*data.class_index"):
        build_video_dataset("ssv2", tmp_path, "train")


# ------------------------------------------------------------------------------------------ Kinetics


def test_kinetics_cvdf_replacement_and_label_less_test_csv(tmp_path: Path) -> None:
    write(tmp_path / "annotations/train.csv", "label,youtube_id,time_start,time_end,split\n"
          "abseiling,--33Lscn6sk,4,14,train\nair drumming,-AD5U7MuSD0,10,20,train\n")
    write(tmp_path / "annotations/val.csv", "label,youtube_id,time_start,time_end,split\n"
          "air drumming,zzz,0,10,val\n")
    write(tmp_path / "annotations/test.csv", "youtube_id,time_start,time_end,split\nqqq,5,15,test\n")
    touch(tmp_path, "train/--33Lscn6sk_000004_000014.mp4", "train/-AD5U7MuSD0_000010_000020.mp4",
          "replacement/replacement_for_corrupted_k400/--33Lscn6sk_000004_000014.mp4",
          "val/zzz_000000_000010.mp4", "test/qqq_000005_000015.mp4")
    train, names = build_video_dataset("kinetics", tmp_path, "train")
    assert names == ["abseiling", "air drumming"]
    assert rel(train, tmp_path) == [
        ("--33Lscn6sk_000004_000014",
         "replacement/replacement_for_corrupted_k400/--33Lscn6sk_000004_000014.mp4", 0),
        ("-AD5U7MuSD0_000010_000020", "train/-AD5U7MuSD0_000010_000020.mp4", 1)]
    test, tnames = build_video_dataset("kinetics", tmp_path, "test")
    assert tnames == names  # from train.csv
    assert rel(test, tmp_path) == [("qqq_000005_000015", "test/qqq_000005_000015.mp4", -1)]


def test_kinetics_mmaction2_layout(tmp_path: Path) -> None:
    write(tmp_path / "annotations/kinetics_train.csv", "label,youtube_id,time_start,time_end,split\n"
          "air drumming,-AD5U7MuSD0,10,20,train\nabseiling,0347ZoDXyP0,102,112,train\n")
    write(tmp_path / "annotations/kinetics_val.csv", "label,youtube_id,time_start,time_end,split\n"
          "abseiling,0wR5jVB-WPk,417,427,val\n")
    touch(tmp_path, "videos_train/air_drumming/-AD5U7MuSD0_000010_000020.mp4",
          "videos_train/abseiling/0347ZoDXyP0_000102_000112.mp4",
          "videos_val/abseiling/0wR5jVB-WPk_000417_000427.mp4")
    train, names = build_video_dataset("kinetics", tmp_path, "train", missing="error")
    assert names == ["abseiling", "air drumming"]
    assert [p for _, p, _ in rel(train, tmp_path)] == [
        "videos_train/air_drumming/-AD5U7MuSD0_000010_000020.mp4",
        "videos_train/abseiling/0347ZoDXyP0_000102_000112.mp4"]
    val, _ = build_video_dataset("kinetics", tmp_path, "val", missing="error")
    assert rel(val, tmp_path) == [("0wR5jVB-WPk_000417_000427",
                                   "videos_val/abseiling/0wR5jVB-WPk_000417_000427.mp4", 0)]
    write(tmp_path / "annotations/train.csv", "label,youtube_id,time_start,time_end\n")
    with pytest.raises(InputError, match="ambiguous Kinetics train CSV.*data.annotations"):
        build_video_dataset("kinetics", tmp_path, "train")


def test_extract_help_and_readme_list_every_layout(capsys: pytest.CaptureFixture[str]) -> None:
    from videoprobe.cli import main
    from videoprobe.data import KINDS

    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Video dataset layouts"):]
    section = section[: section.find("\n## ", 5)]
    for kind in set(KINDS) - {"synth"}:
        assert f"  {kind}  " in text, kind
        assert f"`{kind}`" in section, kind
    for name in ("ucfTrainTestlist", "testTrainMulti_7030_splits", "replacement_for_corrupted_k400",
                 "something-something-v2-{labels,train,validation,test}.json", "Diving48_vocab.json",
                 "Diving48_V2_{train,test}.json", "kinetics_", "videos_"):
        assert name in text and name in section, name
