"""The pre-training options under torchrun (gloo, 2 processes): ExPLoRA + BFP from an encoder file, and
iBOT + DMJD disjoint masks, train and export with world size 2 as one process does: the same losses, the
same teacher, the same exported keys (adapters merged), the replicas (BFP map included) in step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_pretrain import ROOT, TINY, _free_port, _write_dataset

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.models import load_encoder, save_encoder
    from pointprobe.models.registry import create_encoder

_SCRIPT = r"""
import json, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from common import dist
from common.config import load_config
from pointprobe.pretrain.config import PretrainConfig
from pointprobe.pretrain.trainer import Pretrainer
dist.init_from_env()
out = Path(sys.argv[2])
cfg = load_config(PretrainConfig, None, [*json.loads(sys.argv[1]), f"out={out}"])
tr = Pretrainer(cfg, out)
tr.run()
tr.close()
trained = [p for p in tr.student.parameters() if p.requires_grad]
mine = {"student": float(sum(p.detach().double().abs().sum() for p in trained)),
        "bfp_map": None if tr.bfp_map is None else tr.bfp_map.weight.detach().flatten().tolist()}
(out / f"rank{dist.rank()}.json").write_text(json.dumps(mine))
if dist.is_main():
    sd = tr.teacher.state_dict()
    (out / "summary.json").write_text(json.dumps({
        "history": [{k: v for k, v in r.items() if k.endswith("_loss") or k == "loss"} for r in tr.history],
        "teacher": float(sum(v.double().abs().sum() for v in sd.values())),
        "trainable": tr.trainable}))
dist.cleanup()
"""


def _launch(world: int, overrides: list[str], out: Path) -> dict:
    """``world`` gloo processes (the torchrun environment) run the script; rank 0's summary, every rank's
    trained-parameter checksum and BFP map, the exported encoder."""
    out.mkdir(parents=True)
    script = out / "ddp_options.py"
    script.write_text(_SCRIPT)
    port = _free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, str(script), json.dumps(overrides), str(out / "run")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        txt = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, txt[-3000:]
    run = out / "run"
    res = json.loads((run / "summary.json").read_text())
    res["ranks"] = [json.loads((run / f"rank{r}.json").read_text()) for r in range(world)]
    res["export"] = torch.load(run / "encoder.pth", map_location="cpu", weights_only=True)
    res["trainable.json"] = json.loads((run / "trainable.json").read_text())
    return res


def _base_file(tmp_path: Path) -> Path:
    torch.manual_seed(5)
    enc = create_encoder("sparseunet", channels=[8, 16, 16], depths=[1, 1, 1])
    return save_encoder(enc, tmp_path / "base.pth")


CASES = {
    "explora_bfp": ["explora.enabled=true", "explora.lora_rank=2", "explora.lora_targets=[conv1, conv2]",
                    "explora.unfreeze_blocks=[-1]", "explora.train_norms=true", "loss.bfp_alpha=0.5"],
    "ibot_disjoint": ["loss.ibot_weight=0.5", "loss.disjoint_masks=2"],
}


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_pretrain_options_under_two_processes_match_one(tmp_path, case):
    root = _write_dataset(tmp_path / "data", 3, density=600.0)
    ov = [f"data.root={root}", *TINY, "train.steps=2", "train.batch_size=2", "views.max_points=800",
          *CASES[case]]
    if case == "explora_bfp":
        ov.append(f"init.checkpoint={_base_file(tmp_path)}")
    one = _launch(1, ov, tmp_path / "one")
    two = _launch(2, ov, tmp_path / "two")
    # the run did what the options say, in both
    for res in (one, two):
        h = res["history"]
        assert len(h) == 2 and all(np.isfinite(r["loss"]) for r in h)
        keys = set(res["export"]["state_dict"])
        assert not any("lora" in k or "parametrizations" in k or "base_layer" in k for k in keys)
        if case == "explora_bfp":
            assert all("bfp_loss" in r for r in h) and h[1]["bfp_loss"] > 0
            assert res["export"]["meta"]["explora"] == "merged"
            tj = res["trainable.json"]
            assert 0 < tj["trainable_backbone"] < tj["total_backbone"] and tj["bfp_map"] > 0
        else:
            assert all(r["ibot_loss"] > 0 for r in h)
    # two processes = one: losses, teacher, exported keys and trainable counts
    for key in one["history"][0]:
        np.testing.assert_allclose([r[key] for r in two["history"]], [r[key] for r in one["history"]],
                                   rtol=1e-4, atol=1e-5, err_msg=key)
    assert two["teacher"] == pytest.approx(one["teacher"], rel=1e-5)
    assert set(two["export"]["state_dict"]) == set(one["export"]["state_dict"])
    for k, v in one["export"]["state_dict"].items():
        torch.testing.assert_close(two["export"]["state_dict"][k], v, rtol=1e-3, atol=1e-5, msg=k)
    assert two["trainable"] == one["trainable"] and two["trainable.json"] == one["trainable.json"]
    # the replicas stay in step: the trained parameters and the BFP map equal on both ranks
    r0, r1 = two["ranks"]
    assert r0["student"] == r1["student"]
    assert r0["bfp_map"] == r1["bfp_map"]
    if case == "explora_bfp":
        np.testing.assert_allclose(r0["bfp_map"], one["ranks"][0]["bfp_map"], rtol=1e-4, atol=1e-6)
    load_encoder(tmp_path / "two" / "run" / "encoder.pth")  # the plain loader reads the export
