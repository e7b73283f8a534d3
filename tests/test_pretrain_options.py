"""Seed objectives as pre-training options (issue 16 part 2): residual decay, iBOT, DMJD."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.config import load_config
from common.errors import ConfigError
from tests.test_pretrain import TINY, _write_dataset

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.models import load_encoder
    from pointprobe.models.ptv3 import residual_decay_factors
    from pointprobe.models.registry import create_encoder
    from pointprobe.models.structure import PointBatch
    from pointprobe.pretrain.config import PretrainConfig
    from pointprobe.pretrain.trainer import Pretrainer, run_pretrain


def _cfg(root, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [f"data.root={root}", *TINY, *extra])


def _points(n: int = 300, seed: int = 0) -> PointBatch:
    g = torch.Generator().manual_seed(seed)
    coord = torch.rand(n, 3, generator=g) * 2
    grid = torch.unique(torch.floor(coord / 0.05).long(), dim=0)
    coord = grid.float() * 0.05
    feat = torch.cat([coord, torch.rand(len(grid), 6, generator=g)], 1)
    return PointBatch.create(coord, grid, feat, offset=torch.tensor([len(grid)]), grid_size=0.05)


# ------------------------------------------------------------------------------------ residual decay
def test_residual_decay_factors_linear_from_one():
    assert residual_decay_factors(5, 0.6) == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    assert residual_decay_factors(3, 1.0) == [1.0, 1.0, 1.0]
    assert residual_decay_factors(1, 0.5) == [0.5]


@pytest.mark.parametrize("name,cfg,blocks", [
    ("sparseunet", {"channels": [8, 16, 16], "depths": [1, 2, 1]}, "levels"),
    ("ptv3_tiny", {}, "enc"),
])
def test_residual_decay_weights_the_shortcuts(name, cfg, blocks):
    torch.manual_seed(0)
    off = create_encoder(name, **cfg).eval()
    torch.manual_seed(0)
    plain = create_encoder(name, **cfg, residual_decay=1.0).eval()
    torch.manual_seed(0)
    on = create_encoder(name, **cfg, residual_decay=0.5).eval()
    # off: no key in the config (release configs unchanged), every shortcut weight 1, same forward bit for bit
    assert "residual_decay" not in off.config and "residual_decay" not in plain.config
    assert on.config["residual_decay"] == 0.5
    if blocks == "levels":
        scales = [b.shortcut_scale for lvl in on.levels for b in lvl]
        offs = [b.shortcut_scale for lvl in off.levels for b in lvl]
    else:
        scales = [b.shortcut_scale for st in on.enc.values() for b in st.blocks()]
        offs = [b.shortcut_scale for st in off.enc.values() for b in st.blocks()]
    assert scales == pytest.approx(residual_decay_factors(len(scales), 0.5)) and scales[-1] == 0.5
    assert offs == [1.0] * len(offs)
    on.load_state_dict(off.state_dict())
    p = _points()
    with torch.no_grad():
        f_off, f_plain, f_on = off(p).feat, plain(p).feat, on(p).feat
    assert torch.equal(f_off, f_plain)
    assert not torch.allclose(f_off, f_on, atol=1e-4)  # the decayed shortcut changes the forward


def test_residual_decay_bad_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="residual_decay"):
        create_encoder("ptv3_tiny", residual_decay=1.5)
    with pytest.raises(ConfigError, match="residual_decay"):
        create_encoder("sparseunet", residual_decay=-0.1)
    with pytest.raises(ConfigError, match="model.residual_decay"):
        Pretrainer(_cfg(_write_dataset(tmp_path / "d", 1), "model.residual_decay=2"))


@pytest.mark.parametrize("backbone", ["sparseunet", "ptv3_tiny"])
def test_pretrain_residual_decay_is_exported_and_reloads(tmp_path, backbone):
    root = _write_dataset(tmp_path / "data", 2)
    extra = ["model.backbone=ptv3_tiny", "model.backbone_config={}"] if backbone == "ptv3_tiny" else []
    cfg = _cfg(root, *extra, "model.residual_decay=0.7", "train.steps=1", "train.batch_size=1")
    res = run_pretrain(cfg, tmp_path / "run")
    assert res["config"]["residual_decay"] == 0.7
    enc = load_encoder(tmp_path / "run" / "encoder.pth")
    assert enc.config["residual_decay"] == 0.7
    tr = Pretrainer(cfg)
    tr.load_state(tmp_path / "run" / "last.pth")
    tr.close()
    teacher = tr.teacher.backbone.eval()
    p = _points(seed=1)
    with torch.no_grad():
        np.testing.assert_array_equal(enc(p).feat.numpy(), teacher(p).feat.numpy())
    # the student trains with the decayed shortcuts too
    blocks = ([b for lvl in tr.student.backbone.levels for b in lvl] if backbone == "sparseunet"
              else [b for st in tr.student.backbone.enc.values() for b in st.blocks()])
    assert blocks[-1].shortcut_scale == pytest.approx(0.7)


# ---------------------------------------------------------------------------------------------- iBOT
def _capture_masked_level(tr: Pretrainer) -> list:
    """Record the student's head-level outputs (the first call of a step is the masked views)."""
    seen: list = []
    orig = tr.student.level

    def level(point):
        out = orig(point)
        seen.append((point, out))
        return out

    tr.student.level = level
    return seen


def _capture_grad(module: torch.nn.Module) -> list:
    grads: list = []

    def hook(_m, _inp, out):
        out.register_hook(lambda g: grads.append(g.detach().clone()))

    module.register_forward_hook(hook)
    return grads


ONLY_IBOT = ["loss.mask_weight=0", "loss.roll_weight=0", "loss.unmask_weight=0", "loss.ibot_weight=1.0",
             "train.steps=2", "train.batch_size=1"]


def test_ibot_off_by_default(tmp_path):
    tr = Pretrainer(_cfg(_write_dataset(tmp_path / "d", 1), "train.steps=1", "train.batch_size=1"))
    assert tr.student.ibot_head is None and tr.teacher.ibot_head is None
    m = tr.train_step()
    tr.close()
    assert "ibot_loss" not in m


def test_ibot_own_head_distils_only_the_masked_points(tmp_path):
    from pointprobe.pretrain.views import level_mean

    tr = Pretrainer(_cfg(_write_dataset(tmp_path / "d", 2), *ONLY_IBOT))
    assert tr.student.ibot_head is not None and tr.teacher.ibot_head is not None
    seen = _capture_masked_level(tr)
    grads = _capture_grad(tr.student.ibot_head)
    before = tr.student.ibot_head.prototype_v.detach().clone()
    m = tr.train_step()
    tr.close()
    assert m["ibot_loss"] > 0 and m["loss"] == pytest.approx(m["ibot_loss"])
    assert m["ibot_pairs"] > 0
    point, lvl = seen[0]
    masked = level_mean(point.mask.float().unsqueeze(1), lvl)[:, 0] >= 0.5
    assert 0 < int(masked.sum()) < len(masked)
    g = grads[0].abs().sum(1)
    assert g.shape[0] == len(masked)
    assert torch.all(g[~masked] == 0)  # visible points get no iBOT gradient
    assert int((g[masked] > 0).sum()) == m["ibot_pairs"]  # every matched masked point does
    assert not torch.equal(before, tr.student.ibot_head.prototype_v)  # the own head trains
    # the EMA moves the teacher's iBOT head (the online tokenizer) too
    assert not torch.equal(tr.teacher.ibot_head.prototype_v, before)


def test_ibot_shared_head_uses_the_mask_head(tmp_path):
    tr = Pretrainer(_cfg(_write_dataset(tmp_path / "d", 1), *ONLY_IBOT, "loss.ibot_shared_head=true"))
    assert tr.student.ibot_head is None
    grads = _capture_grad(tr.student.mask_head)
    m = tr.train_step()
    tr.close()
    assert m["ibot_loss"] > 0 and m["ibot_pairs"] > 0
    assert grads and float(grads[0].abs().sum()) > 0  # the loss flows through the mask head


def test_ibot_weight_scales_the_term(tmp_path):
    root = _write_dataset(tmp_path / "d", 1)
    vals = {}
    for w in (0.5, 0.0):
        tr = Pretrainer(_cfg(root, "train.steps=1", "train.batch_size=1", f"loss.ibot_weight={w}"))
        vals[w] = tr.train_step()
        tr.close()
    m = vals[0.5]
    rest = sum(wt * m[f"{k}_loss"] for k, wt in (("mask", 0.25), ("roll", 0.25), ("unmask", 0.5)))
    assert m["loss"] == pytest.approx(rest + 0.5 * m["ibot_loss"], rel=1e-5)
    assert "ibot_loss" not in vals[0.0]


# ---------------------------------------------------------------------------------------------- DMJD
def test_disjoint_patch_masks_partition_the_points():
    from pointprobe.pretrain.views import disjoint_patch_masks

    coord = np.random.default_rng(0).random((2000, 3)) * 2
    masks = disjoint_patch_masks(coord, 0.4, 3, np.random.default_rng(1))
    assert len(masks) == 3
    count = np.sum(masks, axis=0)
    assert np.all(count == 1)  # every point masked in exactly one copy
    assert all(0.2 < mk.mean() < 0.47 for mk in masks)


def test_disjoint_masked_copies_cover_each_global_view_once():
    from pointprobe.pretrain.views import ViewConfig, collate_views, make_scene_views
    from tests.test_pretrain import _scene

    coord, color, normal = _scene(0)
    cfg = ViewConfig(max_points=3000)
    sv = make_scene_views(coord, color, normal, cfg, np.random.default_rng(3), 0.3, 0.5, disjoint_masks=3)
    assert len(sv.masked) == 3 * len(sv.globals_)
    for g, v in enumerate(sv.globals_):
        copies = sv.masked[3 * g: 3 * g + 3]
        key = {tuple(r): i for i, r in enumerate(v.origin)}
        hits = np.zeros(len(v), dtype=int)
        for c in copies:
            assert {tuple(r) for r in c.origin} <= set(key)  # copies of this global view
            for r in c.origin[c.mask]:
                hits[key[tuple(r)]] += 1
        assert hits.max() == 1  # disjoint
        assert (hits == 1).mean() > 0.9  # covering (re-gridding the jittered copy drops a few points)
    vb = collate_views([sv], cfg.grid_size)
    assert vb.n_mask_copies == 3 and len(vb.masked.offset) == 3 * vb.n_global


def test_dmjd_step_predicts_every_point_once(tmp_path):
    root = _write_dataset(tmp_path / "d", 1)
    tr = Pretrainer(_cfg(root, "loss.disjoint_masks=2", "loss.ibot_weight=0.5", "train.steps=1",
                         "train.batch_size=1"))
    vb = tr.micro_batch(0, 0)
    assert vb.n_mask_copies == 2 and len(vb.masked.offset) == 2 * vb.n_global
    seen = _capture_masked_level(tr)
    m = tr.train_step()
    tr.close()
    assert m["ibot_loss"] > 0 and m["mask_loss"] > 0 and m["roll_loss"] > 0
    _, lvl = seen[0]
    assert len(lvl.offset) == 2 * vb.n_global  # the student encodes both copies of each global view
    rows_per_copy = len(lvl) / 2
    # the masked positions of the K copies together cover (nearly) every point of the view once
    assert 0.6 * rows_per_copy < m["ibot_pairs"] <= 1.05 * rows_per_copy
    assert m["mask_pairs"] > 1.8 * rows_per_copy  # visible + masked positions of both copies


def test_disjoint_masks_config_checked(tmp_path):
    with pytest.raises(ConfigError, match="disjoint_masks"):
        Pretrainer(_cfg(_write_dataset(tmp_path / "d", 1), "loss.disjoint_masks=0"))


def test_all_options_together_train_save_and_resume(tmp_path):
    root = _write_dataset(tmp_path / "d", 2)
    cfg = _cfg(root, "model.residual_decay=0.8", "loss.ibot_weight=0.5", "loss.disjoint_masks=2",
               "train.steps=2", "train.batch_size=1")
    res = run_pretrain(cfg, tmp_path / "run")
    assert res["step"] == 2 and np.isfinite(res["last"]["loss"]) and res["last"]["ibot_pairs"] > 0
    tr = Pretrainer(cfg)
    tr.load_state(tmp_path / "run" / "last.pth")
    tr.close()
    st = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=False)
    assert torch.equal(tr.teacher.ibot_head.prototype_v, st["teacher"]["ibot_head.prototype_v"])
    assert load_encoder(tmp_path / "run" / "encoder.pth").config["residual_decay"] == 0.8


@pytest.mark.parametrize("keys", [
    ["--config", "configs/point/pretrain_explora.yaml"],  # explora.enabled without init.checkpoint
    ["train.steps=0"],
    ["data.root=/nonexistent/probesuite-data"],
])
def test_a_refused_pretrain_writes_nothing(tmp_path, capsys, keys):
    """A pre-training refused for its config, data or init (one error line, exit 2) leaves no out folder
    (before: out/config.yaml was written first, then the checks ran)."""
    from common.config import REPO_ROOT
    from pointprobe.cli import main

    out = tmp_path / "pre"
    keys = [str(REPO_ROOT / k) if k.endswith(".yaml") else k for k in keys]
    assert main(["pretrain", *keys, f"out={out}"]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()
