"""Extended pre-training (ExPLoRA) and BFP in ``pointprobe pretrain``: start from an encoder file, train
only the declared set (LoRA, unfrozen blocks, norms, mask token, heads), teacher adapters by EMA, merged
export, exact resume, the BFP term."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from common.errors import ConfigError
from tests.test_pretrain import _cfg, _scene, _write_dataset, run_and_resume

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.models import encode_points, load_encoder, save_encoder
    from pointprobe.models.registry import create_encoder
    from pointprobe.pretrain.trainer import Pretrainer, run_pretrain

SMALL = {"channels": [8, 16, 16], "depths": [1, 1, 1]}
EXPLORA = ["explora.enabled=true", "explora.lora_rank=2", "explora.lora_targets=[conv1, conv2]",
           "explora.unfreeze_blocks=[-1]", "explora.train_norms=true"]


def _base_file(tmp_path, arch="sparseunet", config=None):
    """A random encoder saved in the release format, without a mask token (as a released file)."""
    torch.manual_seed(5)
    enc = create_encoder(arch, **(SMALL if config is None else config))
    return save_encoder(enc, tmp_path / "base.pth"), enc


def _norm_params(model: torch.nn.Module) -> set[str]:
    return {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
            for p, _ in mod.named_parameters(recurse=False)}


def _declared(name: str, last_block: str, norms: set[str]) -> bool:
    return ("lora_" in name or name.startswith(last_block) or name in norms or "mask_token" in name
            or not name.startswith("backbone."))


def test_explora_trains_only_the_declared_set_and_teacher_adapters_follow(tmp_path):
    root = _write_dataset(tmp_path / "data", 3)
    base, enc = _base_file(tmp_path)
    tr = Pretrainer(_cfg(root, f"init.checkpoint={base}", "train.steps=3", "train.batch_size=2", *EXPLORA),
                    tmp_path / "run")
    last = tr.student.backbone.block_layout()[-1][0]
    assert tr.explora_info["unfrozen_blocks"] == [last]
    sb = dict(tr.student.named_parameters())
    norms = _norm_params(tr.student)
    assert any(n.startswith("backbone.stem.") for n in norms)
    declared = {n for n in sb if _declared(n, f"backbone.{last}.", norms)}
    assert set(tr.explora_info["trainable"]) == declared
    assert {n for n, p in sb.items() if p.requires_grad} == declared
    assert any("lora_" in n for n in declared) and not any("lora_" in n and last in n for n in declared)
    before_s = {n: p.detach().clone() for n, p in tr.student.named_parameters()}
    before_t = {n: p.detach().clone() for n, p in tr.teacher.named_parameters()}
    # the frozen base starts as the file's weights
    w = enc.state_dict()["levels.0.0.conv1.weight"]
    assert torch.equal(tr.student.backbone.levels[0][0].conv1.parametrizations.weight.original, w)
    tr.run()
    tr.close()
    for name, mod, before in (("student", tr.student, before_s), ("teacher", tr.teacher, before_t)):
        for n, p in mod.named_parameters():
            if n in declared:
                continue
            assert torch.equal(p, before[n]), f"{name}.{n} moved but is not in the declared set"
    moved = [n for n, p in tr.student.named_parameters() if n in declared and not torch.equal(p, before_s[n])]
    assert any("lora_B" in n for n in moved) and any(n.startswith(f"backbone.{last}.") for n in moved)
    t_moved = [n for n, p in tr.teacher.named_parameters()
               if "lora_B" in n and not torch.equal(p, before_t[n])]
    assert t_moved  # the teacher's adapters follow the student's by EMA
    info = json.loads((tmp_path / "run" / "trainable.json").read_text())
    assert 0 < info["trainable_backbone"] < info["total_backbone"]
    assert info["trainable_backbone"] == sum(sb[n].numel() for n in declared if n.startswith("backbone."))


def test_explora_export_has_the_adapters_merged(tmp_path):
    root = _write_dataset(tmp_path / "data", 2)
    base, _ = _base_file(tmp_path)
    out = tmp_path / "run"
    cfg = _cfg(root, f"init.checkpoint={base}", "train.steps=2", "train.batch_size=1", *EXPLORA)
    tr = Pretrainer(cfg, out)
    tr.run()
    tr.close()
    sd = torch.load(out / "encoder.pth", weights_only=True)
    assert not any("lora" in k or "parametrizations" in k or "base_layer" in k for k in sd["state_dict"])
    assert sd["meta"]["explora"] == "merged"
    merged = load_encoder(out / "encoder.pth")  # the plain loader, no adapters
    c, col, nrm = _scene(7)
    f_merged = encode_points(merged, c, col, nrm)
    f_adapted = encode_points(tr.teacher.backbone.eval(), c, col, nrm)
    assert torch.allclose(f_merged, f_adapted, atol=1e-4, rtol=1e-4)
    # the adapters did something: the merged encoder is not the starting one
    f_base = encode_points(load_encoder(base), c, col, nrm)
    assert not torch.allclose(f_merged, f_base, atol=1e-4)


def test_explora_lora_on_ptv3_attention(tmp_path):
    cfg_small = {"enc_channels": [8, 16, 24], "enc_num_head": [1, 2, 3], "enc_depths": [1, 2, 1],
                 "enc_patch_size": [64, 64, 64], "stride": [2, 2]}
    root = _write_dataset(tmp_path / "data", 2)
    base, _ = _base_file(tmp_path, "ptv3_tiny", cfg_small)
    out = tmp_path / "run"
    res = run_pretrain(_cfg(root, f"init.checkpoint={base}", "train.steps=1", "train.batch_size=1",
                            "explora.enabled=true", "explora.lora_rank=2",
                            "explora.unfreeze_blocks=[enc.enc2.block0]", "explora.train_norms=false"), out)
    tr_names = json.loads((out / "trainable.json").read_text())["trainable_names"]
    assert any(n.endswith("qkv.lora_A.default.weight") for n in tr_names)
    assert not any(".norm" in n and "enc.enc2.block0" not in n for n in tr_names if n.startswith("backbone."))
    assert res["trainable"]["trainable_backbone"] < res["trainable"]["total_backbone"]
    enc = load_encoder(out / "encoder.pth")
    assert enc.arch == "ptv3" and not any("lora" in k for k in enc.state_dict())


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_explora_resume_is_exact(tmp_path, one_thread):
    """Resuming gives the same losses and weights bit for bit. One thread: with several, BLAS reductions
    may split differently from run to run (last-bit differences even between two fresh runs)."""
    root = _write_dataset(tmp_path / "data", 3)
    base, _ = _base_file(tmp_path)
    cfg = _cfg(root, f"init.checkpoint={base}", "train.steps=4", "train.batch_size=2", "loss.bfp_alpha=0.5",
               "train.threads=1", *EXPLORA)
    a, b, c = run_and_resume(cfg, tmp_path)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history + c.history]
    for mod_a, mod_c in ((a.student, c.student), (a.teacher, c.teacher), (a.bfp_map, c.bfp_map)):
        sa, sc = mod_a.state_dict(), mod_c.state_dict()
        assert all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bfp_term(tmp_path):
    """alpha = 0 leaves the loss as it was; alpha > 0 adds alpha * bfp_loss, and at the first step (A =
    identity, student = the starting encoder, no drop path) the term is 0."""
    root = _write_dataset(tmp_path / "data", 2)
    base, _ = _base_file(tmp_path)
    common = [f"init.checkpoint={base}", "train.steps=2", "train.batch_size=1", "model.drop_path=0.0"]
    plain = Pretrainer(_cfg(root, *common))
    plain.run()
    plain.close()
    zero = Pretrainer(_cfg(root, *common, "loss.bfp_alpha=0.0"))
    zero.run()
    zero.close()
    assert [r["loss"] for r in zero.history] == [r["loss"] for r in plain.history]
    assert zero.bfp_map is None and "bfp_loss" not in zero.history[0]
    bfp = Pretrainer(_cfg(root, *common, "loss.bfp_alpha=2.0"))
    bfp.run()
    bfp.close()
    h = bfp.history
    assert h[0]["bfp_loss"] == pytest.approx(0.0, abs=1e-5)
    assert h[1]["bfp_loss"] > 0  # the student moved away from the snapshot
    for r in h:
        distill = sum(w * r[f"{k}_loss"] for k, w in (("mask", 0.25), ("roll", 0.25), ("unmask", 0.5)))
        assert r["loss"] == pytest.approx(distill + 2.0 * r["bfp_loss"], rel=1e-5)
    assert h[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-5)
    assert not torch.equal(bfp.bfp_map.weight, torch.eye(bfp.bfp_map.weight.shape[0]))  # A learns


def test_explora_config_errors(tmp_path):
    root = _write_dataset(tmp_path / "data", 1)
    base, _ = _base_file(tmp_path)
    with pytest.raises(ConfigError, match="explora.unfreeze_blocks"):
        Pretrainer(_cfg(root, f"init.checkpoint={base}", *EXPLORA, "explora.unfreeze_blocks=[nope]"))
    with pytest.raises(ConfigError, match="explora.lora_targets"):
        Pretrainer(_cfg(root, f"init.checkpoint={base}", *EXPLORA, "explora.lora_targets=[qkv]"))
    with pytest.raises(ConfigError, match="nothing of the encoder"):
        Pretrainer(_cfg(root, f"init.checkpoint={base}", *EXPLORA, "explora.lora_rank=0",
                        "explora.unfreeze_blocks=[]", "explora.train_norms=false"))
    with pytest.raises(ConfigError, match="needs init.checkpoint"):
        Pretrainer(_cfg(root, *EXPLORA))


def test_explora_config_file_loads():
    from pathlib import Path

    from common.config import load_config
    from pointprobe.pretrain.config import PretrainConfig, validate_config

    path = Path(__file__).resolve().parent.parent / "configs" / "point" / "pretrain_explora.yaml"
    cfg = load_config(PretrainConfig, path, ["init.checkpoint=enc.pth"])
    validate_config(cfg)
    assert cfg.explora.enabled and cfg.explora.lora_targets == ["conv1", "conv2"]
    assert cfg.explora.unfreeze_blocks == ["-1"] and cfg.loss.bfp_alpha == 0.0
    with pytest.raises(ConfigError, match="needs init.checkpoint"):
        validate_config(load_config(PretrainConfig, path))


def test_bfp_term_is_the_same_however_the_batch_is_split(tmp_path, one_thread):
    """The BFP term is a mean per view, then over the views: two micro-batches of one scene give the term
    of one batch of two (and so do two torchrun processes, tests/test_pretrain_ddp_options.py); a mean
    over all the points of a micro-batch weighted the scenes by their size and gave another term (0.5 %
    off here). One step: the distillation terms are Sinkhorn-normalised per micro-batch, so after a step
    the students differ a little."""
    root = _write_dataset(tmp_path / "data", 3)
    base, _ = _base_file(tmp_path)
    common = [f"init.checkpoint={base}", "train.steps=1", "train.batch_size=2", "loss.bfp_alpha=0.5",
              "train.threads=1", *EXPLORA]
    terms = []
    for accum in (1, 2):
        tr = Pretrainer(_cfg(root, *common, f"train.accum_steps={accum}"))
        tr.run()
        tr.close()
        terms.append(tr.history[0]["bfp_loss"])
    assert terms[0] > 0 and terms[1] == pytest.approx(terms[0], rel=1e-5)
