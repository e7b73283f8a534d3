"""The V-JEPA attentive probe on live clips (issue 15): ``configs/video/attentive_online.yaml`` is
``videoprobe tune method=decoder decoder.depth=1`` - a frozen encoder, one learned query and one
cross-attention block over its tokens, AdamW lr 1e-3 / wd 0.01; only the probe trains."""
from __future__ import annotations

import pytest
import torch

from common.config import load_config

CLASSES = ["BlueSquare", "MoveLeft", "RedDisc"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("att_online")
    generate_dataset(root, SynthConfig(CLASSES, videos_per_class=3, seed=4, frames=12, size=32),
                     progress=False)
    return root


def test_preset_is_decoder_depth_one_with_vjepa_optimiser():
    from videoprobe.tune import VideoTuneTaskConfig

    preset = load_config(VideoTuneTaskConfig, "configs/video/attentive_online.yaml")
    base = load_config(VideoTuneTaskConfig, "configs/video/tune.yaml")
    assert preset.tune.method == "decoder" and preset.decoder.depth == 1 and base.decoder.depth == 3
    assert (preset.tune.head_lr, preset.tune.weight_decay) == (1e-3, 0.01)


def test_online_attentive_probe_trains_only_the_probe(synth_root, tmp_path):
    from common.tuning.loop import Tuner
    from videoprobe.tune import VideoDecoder, VideoTuneConfig, VideoTuneTask

    cfg = load_config(VideoTuneConfig, "configs/video/attentive_online.yaml", [
        f"data.root={synth_root}", "encoder.name=videomae_vit_tiny",
        "encoder.kwargs={num_frames: 4, img_size: 32}",
        "clips.frame_step=2", "clips.batch_size=2", "tune.steps=2", "tune.warmup=0", "tune.progress=false",
        "device=cpu", f"out={tmp_path}"])
    (tmp_path / "run").mkdir()
    tuner = Tuner(VideoTuneTask(cfg), cfg.tune, tmp_path / "run", torch.device("cpu"))
    dec = tuner.model.decoder
    assert isinstance(dec, VideoDecoder) and len(dec.pool.blocks) == 1
    assert dec.pool.query.shape == (1, 1, dec.out_dim)
    assert tuner.trainable and all(n.startswith("decoder.") for n in tuner.trainable)
    before = {n: p.detach().clone() for n, p in tuner.model.encoder.named_parameters()}
    tuner.train()
    assert all(torch.equal(p, before[n]) for n, p in tuner.model.encoder.named_parameters())
    (top1,) = [r["top1"] for r in tuner.evaluate("test")]
    assert 0.0 <= top1 <= 100.0
