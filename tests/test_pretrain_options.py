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


# ---------------------------------------------------------------------------------------------- Mugs
MUGS = ["loss.mugs_weight=1.0", "loss.mugs_queue=8", "loss.mugs_topk=3", "loss.mugs_dim=8",
        "loss.mugs_prototypes=16", "train.steps=2", "train.batch_size=1"]
NO_SONATA = ["loss.mask_weight=0", "loss.roll_weight=0", "loss.unmask_weight=0"]


def test_mugs_info_nce_and_centred_cross_entropy_match_manual():
    from pointprobe.pretrain.mugs import centred_cross_entropy, info_nce

    g = torch.Generator().manual_seed(0)
    p, t, neg = (torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=1) for n in (4, 4, 5))
    logits = torch.cat([(p * t).sum(1, keepdim=True), p @ neg.t()], 1) / 0.2
    ref = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long), reduction="none")
    torch.testing.assert_close(info_nce(p, t, neg, 0.2), ref)
    s, tl, c = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g), torch.randn(1, 7, generator=g)
    q = torch.softmax((tl - c) / 0.04, 1)
    ref = -(q * torch.log_softmax(s / 0.1, 1)).sum(1)
    torch.testing.assert_close(centred_cross_entropy(s, tl, c, 0.1, 0.04), ref)


def test_mugs_pairs_student_views_against_the_teacher_views_of_their_scene():
    from pointprobe.pretrain.mugs import mugs_pairs, split_mean

    s, t, small = mugs_pairs(n_scenes=2, n_global=2, n_copies=2, n_local=3)
    # 2 scenes x (2 x 2 masked + 3 local) student views, each against the 2 global views of its scene
    assert len(s) == 2 * (4 + 3) * 2
    scene_of_student = [v // 4 if v < 8 else (v - 8) // 3 for v in s.tolist()]
    assert [x // 2 for x in t.tolist()] == scene_of_student
    assert small.tolist() == [v >= 8 for v in s.tolist()]
    per = torch.where(small, torch.tensor(3.0), torch.tensor(1.0))
    assert float(split_mean(per, small)) == pytest.approx(2.0)  # mean of the large and small means
    assert float(split_mean(per[~small], small[~small])) == pytest.approx(1.0)


def test_mugs_state_queue_fills_wraps_and_finds_neighbours():
    from pointprobe.pretrain.mugs import MugsState

    st = MugsState(size=5, mem_dim=4, dim=3, prototypes=6, seed=0)
    assert int(st.filled) == 0 and int(st.ptr) == 0
    a, b = torch.arange(12.0).reshape(3, 4) + 1, -torch.arange(12.0).reshape(3, 4) - 1
    ia, ib = torch.eye(3), 2 * torch.eye(3)
    st.enqueue(a, ia, ia)
    assert int(st.filled) == 3 and int(st.ptr) == 3
    torch.testing.assert_close(st.memory[:3], a)
    # neighbours: only among the written rows (k=2 of 3)
    nb = st.neighbours(torch.tensor([[1.0, 2, 3, 4], [9.0, 10, 11, 12]]), 2)
    sim = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(
        torch.tensor([[1.0, 2, 3, 4], [9.0, 10, 11, 12]]), dim=1).t()
    for i in range(2):
        torch.testing.assert_close(nb[i], a[sim[:, i].topk(2).indices])
    st.enqueue(b, ib, ib)  # wraps: rows 3, 4, 0
    assert int(st.filled) == 5 and int(st.ptr) == 1
    torch.testing.assert_close(st.memory[[3, 4, 0]], b)
    torch.testing.assert_close(st.memory[1:3], a[1:])
    torch.testing.assert_close(st.instance_queue[[3, 4, 0]], ib)
    torch.testing.assert_close(st.local_group_queue[1:3], ia[1:])
    st.update_center(torch.ones(2, 6), 0.9)
    torch.testing.assert_close(st.center, torch.full((1, 6), 0.1))


def test_mugs_off_by_default_loss_and_parameters_unchanged(tmp_path):
    root = _write_dataset(tmp_path / "d", 1)
    base = ["train.steps=1", "train.batch_size=1"]
    runs = {}
    zero = ["loss.mugs_weight=0", "loss.mugs_queue=3", "loss.mugs_topk=2", "loss.mugs_prototypes=7"]
    for name, extra in (("default", []), ("zero", zero), ("on", MUGS[:-2])):
        tr = Pretrainer(_cfg(root, *base, *extra))
        params = {k: v.clone() for k, v in tr.student.state_dict().items()}
        m = tr.train_step()
        runs[name] = (tr, params, m)
        tr.close()
    tr, params, m = runs["default"]
    assert tr.student.mugs is None and tr.teacher.mugs is None and tr.mugs_state is None
    assert not any("mugs" in k for k in params) and "mugs" not in tr.state()
    assert not any(k.startswith("mugs") for k in m)
    tr0, params0, m0 = runs["zero"]
    assert params0.keys() == params.keys() and all(torch.equal(params0[k], params[k]) for k in params)
    assert m0["loss"] == m["loss"]  # exactly the old loss
    assert all(torch.equal(a, b) for a, b in zip(tr0.student.parameters(), tr.student.parameters()))
    # on: the same backbone and Sonata heads at the start (Mugs heads built last), the Sonata terms as
    # before at the first step, the Mugs term added on top
    tr1, params1, m1 = runs["on"]
    assert all(torch.equal(params1[k], params[k]) for k in params)
    assert set(params1) - set(params) == {k for k in params1 if k.startswith("mugs.")} != set()
    for k in ("mask_loss", "roll_loss", "unmask_loss"):
        assert m1[k] == pytest.approx(m[k], rel=1e-6)
    assert m1["loss"] == pytest.approx(m["loss"] + m1["mugs_loss"], rel=1e-5)


@pytest.mark.parametrize("only", ["instance", "local_group", "group"])
def test_mugs_each_term_trains_its_head_and_the_backbone(tmp_path, only):
    keys = {"instance": "loss.mugs_instance_weight", "local_group": "loss.mugs_local_group_weight",
            "group": "loss.mugs_group_weight"}
    off = [f"{k}=0" for g, k in keys.items() if g != only]
    tr = Pretrainer(_cfg(_write_dataset(tmp_path / "d", 1), *MUGS, *NO_SONATA, *off))
    heads = tr.student.mugs
    assert {g for g in ("instance", "local_group", "group") if getattr(heads, g) is not None} == {only}
    m = tr.micro_step(tr.micro_batch(0, 0), tr.values(0), 1.0, sync=True)
    tr.close()
    assert set(k for k in m if k.startswith("mugs_") and k.endswith("_loss")) == {f"mugs_{only}_loss",
                                                                                   "mugs_loss"}
    assert np.isfinite(m[f"mugs_{only}_loss"]) and m[f"mugs_{only}_loss"] > 0
    assert m["loss"] == pytest.approx(m[f"mugs_{only}_loss"], rel=1e-6)
    trained = [getattr(heads, only)] + ([heads.relation] if only == "local_group" else [])
    for mod in trained:
        for n, p in mod.named_parameters():
            if "predictor" in n or "prototype" in n or "mlp" in n or "proj" in n or "qkv" in n:
                assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"{only}: {n}"
    bb = [p.grad for p in tr.student.backbone.parameters() if p.requires_grad]
    assert sum(float(g.abs().sum()) for g in bb if g is not None) > 0
    # the masked views of every scene and the local views take part (2 + 2 student views per scene)
    assert int(tr.mugs_state.filled) == 2  # the teacher's 2 global views were written


def test_mugs_all_terms_combine_and_memory_holds_the_teacher_views(tmp_path):
    from pointprobe.pretrain.mugs import pool_views

    tr = Pretrainer(_cfg(_write_dataset(tmp_path / "d", 1), *MUGS, "loss.mugs_weight=0.5",
                         "loss.mugs_group_weight=2"))
    seen: list = []
    orig = tr.teacher.level
    tr.teacher.level = lambda p: seen.append(orig(p)) or seen[-1]
    m = tr.train_step()
    tr.close()
    for k in ("instance", "local_group", "group"):
        assert np.isfinite(m[f"mugs_{k}_loss"])
    mugs = (m["mugs_instance_loss"] + m["mugs_local_group_loss"] + 2 * m["mugs_group_loss"]) / 4
    assert m["mugs_loss"] == pytest.approx(mugs, rel=1e-5)
    rest = sum(w * m[f"{k}_loss"] for k, w in (("mask", 0.25), ("roll", 0.25), ("unmask", 0.5)))
    assert m["loss"] == pytest.approx(rest + 0.5 * mugs, rel=1e-5)
    assert m["mugs_queue_filled"] == 2
    with torch.no_grad():
        torch.testing.assert_close(tr.mugs_state.memory[:2], pool_views(seen[0]))


def test_mugs_resume_is_exact_and_export_unchanged(tmp_path):
    from pointprobe.pretrain.mugs import MugsState
    from tests.test_pretrain import run_and_resume

    root = _write_dataset(tmp_path / "data", 2)
    cfg = _cfg(root, *MUGS[:-2], "loss.mugs_queue=3", "train.steps=4", "train.batch_size=1")
    a, b, c = run_and_resume(cfg, tmp_path)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history + c.history]
    assert [r["mugs_loss"] for r in a.history] == [r["mugs_loss"] for r in b.history + c.history]
    assert a.history[-1]["mugs_queue_filled"] == 3  # 8 teacher views through a queue of 3: wrapped
    sa, sc = a.mugs_state.state_dict(), c.mugs_state.state_dict()
    assert sa.keys() == sc.keys() and all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not torch.equal(sa["memory"], MugsState(3, sa["memory"].shape[1], 8, 16, 0).memory)
    for mod_a, mod_c in ((a.student, c.student), (a.teacher, c.teacher)):
        sda, sdc = mod_a.state_dict(), mod_c.state_dict()
        assert all(torch.equal(sda[k], sdc[k]) for k in sda)
    # the exported encoder: the backbone in its usual format, no Mugs heads
    off = Pretrainer(_cfg(root, "train.steps=1"))
    off.export(tmp_path / "off.pth")
    off.close()
    ref = torch.load(tmp_path / "off.pth", map_location="cpu", weights_only=False)
    got = torch.load(tmp_path / "a" / "encoder.pth", map_location="cpu", weights_only=False)
    assert got.keys() == ref.keys() and got["arch"] == ref["arch"] and got["config"] == ref["config"]
    shapes = [{k: v.shape for k, v in x["state_dict"].items()} for x in (got, ref)]
    assert shapes[0] == shapes[1]
    enc = load_encoder(tmp_path / "a" / "encoder.pth")
    with torch.no_grad():
        np.testing.assert_array_equal(enc.eval()(_points()).feat.numpy(),
                                      a.teacher.backbone.eval()(_points()).feat.numpy())


@pytest.mark.parametrize("key,match", [
    ("loss.mugs_weight=-1", "loss.mugs_weight"),
    ("loss.mugs_topk=20", "loss.mugs_topk"),
    ("loss.mugs_queue=0", "loss.mugs_queue"),
    ("loss.mugs_temp=0", "loss.mugs_temp"),
    ("loss.mugs_group_weight=-1", "loss.mugs_group_weight"),
    ("loss.mugs_center_momentum=1", "loss.mugs_center_momentum"),
    ("loss.mugs_relation_heads=7", "loss.mugs_relation_heads"),
])
def test_mugs_bad_values_are_one_line_config_errors(tmp_path, key, match):
    with pytest.raises(ConfigError, match=match) as e:
        Pretrainer(_cfg(_write_dataset(tmp_path / "d", 1), *MUGS, key))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="mugs_\\*_weight"):
        Pretrainer(_cfg(tmp_path / "d", *MUGS, "loss.mugs_instance_weight=0",
                        "loss.mugs_local_group_weight=0", "loss.mugs_group_weight=0"))


@pytest.mark.dist
@pytest.mark.slow
def test_mugs_ddp_two_processes_match_one(tmp_path):
    """Queues filled from every rank in rank order and the centre averaged over ranks: 2 processes train
    as 1 does (the second step uses what the first wrote)."""
    from tests.test_pretrain import _launch

    root = _write_dataset(tmp_path / "data", 3, density=600.0)
    ov = [f"data.root={root}", *TINY, *MUGS[:-2], "train.steps=2", "train.batch_size=2",
          "views.max_points=800"]
    one = _launch(1, ov, tmp_path / "one.json")
    two = _launch(2, ov, tmp_path / "two.json")
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two["param"], one["param"], rtol=1e-3, atol=1e-6)
    assert two["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
