"""An encoder built without a checkpoint says so in the log, once per build (point and video)."""
from __future__ import annotations

import logging

import torch


def _random_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "without a checkpoint" in r.getMessage()]


def test_point_encoder_random_init_warns_once(caplog):
    from pointprobe.extract import PointEncoderConfig, build_encoder

    spec = PointEncoderConfig(name="sparseunet", seed=3, config={"channels": [8, 16], "depths": [1, 1]})
    with caplog.at_level(logging.WARNING):
        _, rec = build_encoder(spec, torch.device("cpu"))
    msgs = _random_warnings(caplog)
    assert rec.checkpoint_sha256 == "random:3"
    assert len(msgs) == 1 and "sparseunet" in msgs[0] and "random:3" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_encoder(PointEncoderConfig(name="raw"), torch.device("cpu"))  # no weights at all: no warning
    assert not _random_warnings(caplog)


def test_video_encoder_random_init_warns_once(caplog):
    from videoprobe.models import create_video_encoder

    with caplog.at_level(logging.WARNING):
        enc = create_video_encoder("videomae_vit_tiny", seed=5)
    msgs = _random_warnings(caplog)
    assert enc.checkpoint_id == "random:5" and len(msgs) == 1 and "videomae_vit_tiny" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_video_encoder("frame_stats")  # hand-designed, no weights: checkpoint "none", no warning
    assert not _random_warnings(caplog)
