"""`pointprobe encoders` / `videoprobe encoders`: the tables are derived from the encoder registries."""
from __future__ import annotations

import json

import torch


def test_pointprobe_encoders_follow_the_table(monkeypatch, capsys):
    from pointprobe.cli import main
    from pointprobe.models import ENCODERS, PointTransformerV3
    from pointprobe.models.ptv3 import PTV3_TINY_CONFIG

    # a new table entry appears without any other change: the listing is not hand-written
    monkeypatch.setitem(ENCODERS, "ptv3_probe_test",
                        lambda **cfg: PointTransformerV3(**{**PTV3_TINY_CONFIG, "enc_channels": [8, 16, 24],
                                                            "enc_num_head": [1, 2, 3], **cfg}))
    assert main(["encoders", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == list(ENCODERS)
    tiny = ENCODERS["ptv3_tiny"]()  # real weights on the CPU: the meta-device description matches it
    assert rows["ptv3_tiny"]["dim (all levels)"] == tiny.feature_dim(None)
    assert rows["ptv3_tiny"]["dim (deepest)"] == tiny.feature_dim(0)
    assert rows["ptv3_probe_test"]["dim (deepest)"] == 24
    assert rows["ptv3_probe_test"]["dim (all levels)"] == 48
    assert rows["sonata"]["input"] == "coord+color+normal"
    assert "sonata.pth" in rows["sonata"]["weights"] and "encoder.checkpoint=" in rows["sonata"]["weights"]
    assert all(r["random init"].startswith("yes") for r in rows.values())
    from pointprobe.commands import encoders as cmd

    monkeypatch.setattr(cmd, "encoder_rows", lambda: list(rows.values()))  # the table of the same rows
    assert main(["encoders"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| name | arch | dim (all levels) |")
    assert all(f"| {n} |" in table for n in ENCODERS)


def test_videoprobe_encoders_follow_the_table(monkeypatch, capsys):
    from videoprobe.cli import main
    from videoprobe.models import VIDEO_ENCODERS, create_video_encoder
    from videoprobe.models.vit import vit_factory

    monkeypatch.setitem(VIDEO_ENCODERS, "vjepa_probe_test", vit_factory("vjepa", "tiny"))
    assert main(["encoders", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == list(VIDEO_ENCODERS)
    tiny = create_video_encoder("videomae_vit_tiny")
    assert rows["videomae_vit_tiny"]["dim"] == tiny.embed_dim
    assert rows["videomae_vit_tiny"]["clip (frames x step)"] == f"{tiny.clip_len} x {tiny.frame_step}"
    assert rows["videomae_vit_tiny"]["token grid"] == "x".join(map(str, tiny.grid))
    out = tiny(torch.rand(1, 3, tiny.clip_len, tiny.crop_size, tiny.crop_size))
    assert tuple(out.tokens.shape[1:4]) == tiny.grid
    x3d = create_video_encoder("x3d_s")  # a token grid from the meta-device forward matches a real one
    out = x3d(torch.rand(1, 3, x3d.clip_len, x3d.crop_size, x3d.crop_size))
    assert rows["x3d_s"]["token grid"] == "x".join(str(s) for s in out.tokens.shape[1:4])
    assert rows["vjepa_probe_test"]["dim"] == tiny.embed_dim
    assert rows["x3d_m"]["clip (frames x step)"] == "16 x 5" and "hub" in rows["x3d_m"]["weights"]
    assert rows["motion_energy"]["weights"].startswith("none") and rows["frame_stats"]["random init"] == "-"
    assert rows["videomae_vit_b"]["weights"] == "encoder.checkpoint=FILE"
    from videoprobe.commands import encoders as cmd

    monkeypatch.setattr(cmd, "encoder_rows", lambda: list(rows.values()))
    assert main(["encoders"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| name | dim | token dim | clip (frames x step) |")
    assert all(f"| {n} |" in table for n in VIDEO_ENCODERS)
