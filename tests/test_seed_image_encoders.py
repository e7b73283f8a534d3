"""Seed image encoders (common.image_models): random weights written in each release's file layout
(real key names and nesting), loaded through the loader, compared with the timm model the weights came
from (its own forward_features / forward_intermediates); readable diffs; frame-wise video encoders."""
from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("timm")

from common.checkpoint import save_checkpoint  # noqa: E402
from common.errors import CheckpointError, ConfigError  # noqa: E402
from common.image_models import (  # noqa: E402
    RELEASES,
    build_image_vit,
    interpolate_pos_embed,
    load_image_vit,
    release_of,
)

D, HEADS, DEPTH = 24, 2, 4


def tiny(name: str) -> dict:
    """timm overrides for a tiny model of release ``name`` (native grid 2x2)."""
    patch = 14 if name.startswith("dinov2") else (8 if name.endswith("8") else 16)
    arch = {"embed_dim": D, "num_heads": HEADS, "depth": DEPTH, "img_size": 2 * patch}
    return arch


def source_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The timm model whose (randomised) weights are written in the release layout: the reference."""
    vit = build_image_vit(name, seed=seed, **tiny(name))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in vit.model.parameters():  # every weight matters (timm's init leaves zeros and 1e-5 scales)
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return vit.model.eval()


def rand_like_sd(sd: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in sd.items()}


def head(prefix: str, seed: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"{prefix}mlp.0.weight": torch.randn(8, D, generator=g), f"{prefix}last_layer.weight_g":
            torch.ones(5, 1)}


ARGS = argparse.Namespace(arch="vit_small", patch_size=16)


# ------------------------------------------------------------------ the release layouts, written by hand
def write_release(name: str, layout: str, src: dict, path) -> None:
    """``src`` (timm key names) written as release ``name``'s ``layout`` file (reference doc layouts)."""
    fam = name.split("_")[0]
    other = rand_like_sd(src, 99)  # a student that differs from the teacher
    if fam == "dino" and layout == "backbone":
        obj = dict(src)
    elif fam == "dino" and layout == "full":
        obj = {"student": {**{f"module.backbone.{k}": v for k, v in other.items()}, **head("module.head.")},
               "teacher": {**{f"backbone.{k}": v for k, v in src.items()}, **head("head.")},
               "optimizer": {"state": {}, "param_groups": []}, "epoch": 3, "args": ARGS,
               "dino_loss": {"center": torch.zeros(1, 8)}}
    elif fam == "ibot" and layout == "backbone":
        obj = {"state_dict": dict(src)}
    elif fam == "ibot" and layout == "full":
        obj = {"student": {**{f"module.backbone.{k}": v for k, v in other.items()},
                           "module.backbone.masked_embed": torch.zeros(D), **head("module.head.")},
               "teacher": {**{f"backbone.{k}": v for k, v in src.items()}, **head("head.")},
               "optimizer": {}, "epoch": 1, "args": ARGS, "ibot_loss": {"center": torch.zeros(1, 8)}}
    elif fam == "mugs" and layout == "backbone":
        rel = {"relation_blocks.0.norm1.weight": torch.ones(D), "relation_blocks.0.attn.qkv.weight":
               torch.randn(3 * D, D)}
        obj = {"state_dict": {**src, **rel}}
    elif fam == "mugs" and layout == "full":
        rel = {"backbone.relation_blocks.0.norm1.weight": torch.ones(D)}
        obj = {"student": {f"module.backbone.{k}": v for k, v in other.items()},
               "teacher": {**{f"backbone.{k}": v for k, v in src.items()}, **rel, **head("instance_head."),
                           **head("local_group_head."), **head("group_head.")},
               "student_mem": {"queue": torch.zeros(4, 8)}, "teacher_mem": {"queue": torch.zeros(4, 8)},
               "optimizer": {}, "epoch": 2, "args": ARGS}
    elif fam == "dinov2" and layout == "hub" and name.endswith("_reg"):
        # the release adds a class position to the class token and gives registers none; timm keeps the
        # sum in cls_token and patch-only positions: split a random class position back out
        cls_pos = torch.randn(1, 1, D, generator=torch.Generator().manual_seed(11))
        obj = {k: v for k, v in src.items() if k not in ("cls_token", "pos_embed", "reg_token")}
        obj.update({"cls_token": src["cls_token"] - cls_pos,
                    "pos_embed": torch.cat([cls_pos, src["pos_embed"]], 1),
                    "register_tokens": src["reg_token"], "mask_token": torch.zeros(1, D)})
    elif fam == "dinov2" and layout == "hub":
        obj = {**src, "mask_token": torch.zeros(1, D)}
        if name == "dinov2_vitg14":
            obj = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v
                   for k, v in obj.items()}
    elif fam == "dinov2" and layout == "teacher":
        chunk = DEPTH // 2  # block_chunks=2: chunk c holds blocks [c*chunk, (c+1)*chunk) by global index
        teacher = {}
        for k, v in src.items():
            if k.startswith("blocks."):
                i = int(k.split(".")[1])
                k = f"blocks.{i // chunk}.{k.removeprefix('blocks.')}"
            teacher[f"backbone.{k}"] = v
        teacher["backbone.mask_token"] = torch.zeros(1, D)
        obj = {"teacher": {**teacher, **head("dino_head."), **head("ibot_head.")}}
    elif fam == "beitv2" and layout == "pretrain":
        n = src["rel_pos_bias.relative_position_bias_table"].shape[0]
        model = {**src, "mask_token": torch.zeros(1, 1, D), "lm_head.weight": torch.randn(8, D),
                 "lm_head.bias": torch.zeros(8), "cls_pt_layers.0.norm1.weight": torch.ones(D),
                 "cls_pt_layers.1.mlp.fc1.weight": torch.randn(4 * D, D),
                 "rel_pos_bias.relative_position_index": torch.zeros(5, 5, dtype=torch.long)}
        assert n > 0
        obj = {"model": model, "optimizer": {}, "epoch": 1, "args": ARGS, "scaler": {"scale": 1.0}}
    else:
        raise AssertionError(f"no layout {layout} for {name}")
    save_checkpoint(obj, path)


CASES = [("dino_vits16", "backbone"), ("dino_vits16", "full"), ("dino_vitb16", "full"),
         ("dino_vits8", "backbone"), ("ibot_vits16", "backbone"), ("ibot_vits16", "full"),
         ("ibot_vitb16", "backbone"), ("mugs_vits16", "backbone"), ("mugs_vits16", "full"),
         ("dinov2_vits14", "hub"), ("dinov2_vits14", "teacher"), ("dinov2_vitb14", "teacher"),
         ("dinov2_vitg14", "hub"), ("dinov2_vits14_reg", "hub"), ("beitv2_vitb16", "pretrain")]


# each release's linear protocol as the reference doc states it (n last blocks, mean patch token, through
# the final norm), written here independently of the loader's table
PROTOCOL = {
    "dino_vits16": (4, "none", True), "dino_vits8": (4, "none", True),
    "dino_vitb16": (1, "interleave", True), "dino_vitb8": (1, "interleave", True),
    "ibot_vits16": (4, "none", True), "ibot_vitb16": (1, "concat", True), "mugs_vits16": (4, "none", True),
    **{f"dinov2_vit{s}14": (4, "concat", True) for s in "sblg"},
    **{f"dinov2_vit{s}14_reg": (4, "concat", True) for s in "sblg"},
    "beitv2_vitb16": (1, "concat", False),
    # MAGE (own code, tests/test_image_mage.py): no CLS, the mean patch token through a parameter-free norm
    "mage_vitb16": (0, "mean", False), "mage_vitl16": (0, "mean", False),
}


def test_protocol_covers_every_release():
    assert set(PROTOCOL) == set(RELEASES)


def expected_linear(name: str, src: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The linear-probe feature by the reference doc's formulas, from timm's own intermediates."""
    n, avgpool, final_norm = PROTOCOL[name]
    inter = src.forward_intermediates(x, indices=n, norm=final_norm, return_prefix_tokens=True,
                                      output_fmt="NLC", intermediates_only=True)
    cls = [prefix[:, 0] for _, prefix in inter]
    avg = inter[-1][0].mean(dim=1)
    if avgpool == "none":
        return torch.cat(cls, dim=-1)
    if avgpool == "concat":
        return torch.cat([*cls, avg], dim=-1)
    return torch.cat((cls[0].unsqueeze(-1), avg.unsqueeze(-1)), dim=-1).reshape(x.shape[0], -1)


@pytest.mark.parametrize("name,layout", CASES)
def test_release_layout_loads_and_matches_timm(tmp_path, name, layout):
    src = source_model(name)
    path = tmp_path / f"{name}_{layout}.pth"
    write_release(name, layout, src.state_dict(), path)
    vit = load_image_vit(name, path, **tiny(name))
    size = tiny(name)["img_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lin, patches = vit.features(x)
        ref_tokens = src.forward_features(x)[:, getattr(src, "num_prefix_tokens", 1):]
        ref_lin = expected_linear(name, src, x)
    n, avgpool, _ = PROTOCOL[name]
    assert lin.shape == (2, D * (n + (avgpool != "none")))
    assert patches.shape == (2, 2, 2, D)
    torch.testing.assert_close(patches.reshape(2, 4, D), ref_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lin, ref_lin, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vit.patch_tokens(x), patches)


def test_linear_dims_of_the_real_architectures():
    """Shapes of the representations at the real sizes (ViT-S/16, ViT-S/14, BEiT v2 B/16), random weights."""
    for name, lin_dim, grid in (("dino_vits16", 4 * 384, 14), ("dinov2_vits14", 5 * 384, 16)):
        vit = build_image_vit(name, seed=0, depth=4)
        assert vit.linear_dim == lin_dim
        x = torch.randn(1, 3, grid * vit.patch, grid * vit.patch)
        with torch.no_grad():
            lin, patches = vit.features(x)
        assert lin.shape == (1, lin_dim) and patches.shape == (1, grid, grid, 384)
    beit = build_image_vit("beitv2_vitb16", seed=0, depth=1)
    assert beit.linear_dim == 2 * 768 and beit.model.pos_embed is None


def test_dino_full_checkpoint_reads_the_teacher_not_the_student(tmp_path):
    src = source_model("dino_vits16")
    path = tmp_path / "full.pth"
    write_release("dino_vits16", "full", src.state_dict(), path)
    vit = load_image_vit("dino_vits16", path, **tiny("dino_vits16"))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(vit.model.state_dict()[k], v, rtol=0, atol=0)


def test_wrong_shape_and_missing_key_give_the_bracketed_diff(tmp_path):
    src = source_model("dino_vits16").state_dict()
    bad = dict(src)
    del bad["blocks.1.mlp.fc2.bias"]
    bad["pos_embed"] = torch.zeros(1, 7, D)
    bad["blocks.9.norm1.weight"] = torch.ones(D)
    path = tmp_path / "bad.pth"
    save_checkpoint(bad, path)
    with pytest.raises(CheckpointError) as e:
        load_image_vit("dino_vits16", path, **tiny("dino_vits16"))
    msg = str(e.value)
    assert str(path) in msg and "checkpoint does not fit dino_vits16" in msg
    assert "missing 1 [blocks.1.mlp.fc2.bias]" in msg
    assert "unexpected 1 [blocks.9.norm1.weight]" in msg
    assert "wrong shape 1 [pos_embed: checkpoint (1, 7, 24) vs model (1, 5, 24)]" in msg
    assert "\n" not in msg


def test_ibot_backbone_under_wrong_wrapper_is_an_error_not_an_empty_load(tmp_path):
    """The official iBOT loader silently loads nothing from a wrongly keyed file: here it is a diff."""
    src = source_model("ibot_vits16").state_dict()
    path = tmp_path / "odd.pth"
    save_checkpoint({"weights": src, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="no ibot encoder state dict found"):
        load_image_vit("ibot_vits16", path, **tiny("ibot_vits16"))
    # a DINOv2 file given as DINO: layer scale and mask_token are not DINO keys
    src2 = source_model("dinov2_vits14")
    path2 = tmp_path / "v2.pth"
    write_release("dinov2_vits14", "hub", src2.state_dict(), path2)
    with pytest.raises(CheckpointError, match=r"unexpected 9 \[blocks.0.ls1.gamma, "):
        load_image_vit("dino_vits16", path2, **{**tiny("dino_vits16"), "patch_size": 14, "img_size": 28})


def test_missing_file_and_unknown_or_unsupported_release(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_image_vit("dino_vits16", tmp_path / "nope.pth", **tiny("dino_vits16"))
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        load_image_vit("dino_vits16", "hub")
    with pytest.raises(ConfigError, match="harmon_mar: not supported: Harmon's shared encoder is a MAR"):
        release_of("harmon_mar")
    assert release_of("mage_vitb16").family == "mage"  # issue 16: MAGE is supported (own code)
    with pytest.raises(ConfigError, match="known: .*dino_vits16"):
        release_of("dino_vitx99")


def test_pos_embed_resampled_as_the_releases_do_not_as_timm():
    """Away from the native grid: bicubic with (n + 0.1) / N and no antialias, rows and columns in the
    right orientation (a non-square grid); timm's dynamic_img_size resampling gives other tokens."""
    m = 4
    ii, jj = torch.meshgrid(torch.arange(m).float(), torch.arange(m).float(), indexing="ij")
    pos = torch.zeros(1, 1 + m * m, 2)
    pos[0, 1:, 0], pos[0, 1:, 1] = ii.flatten(), jj.flatten()
    pos[0, 0] = torch.tensor([7.0, 7.0])
    out = interpolate_pos_embed(pos, 2, 6)
    assert out.shape == (1, 13, 2) and torch.equal(out[0, 0], pos[0, 0])
    grid = out[0, 1:].reshape(2, 6, 2)
    assert torch.allclose(grid[:, :, 0], grid[:, :1, 0].expand(2, 6))  # row coordinate constant along a row
    assert torch.allclose(grid[:, :, 1], grid[:1, :, 1].expand(2, 6))  # column coordinate constant down
    assert grid[1, 0, 0] > grid[0, 0, 0] and grid[0, 5, 1] > grid[0, 0, 1]
    assert interpolate_pos_embed(pos, m, m) is pos
    src = source_model("dinov2_vits14")
    vit = build_image_vit("dinov2_vits14", **tiny("dinov2_vits14"))
    vit.model.load_state_dict(src.state_dict())
    import timm

    dyn = timm.create_model("vit_small_patch14_dinov2", pretrained=False, dynamic_img_size=True,
                            **{**RELEASES["dinov2_vits14"].timm_kwargs, **tiny("dinov2_vits14")}).eval()
    dyn.load_state_dict(src.state_dict())
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        ours = vit.patch_tokens(x)
        theirs = dyn.forward_features(x)[:, 1:].reshape(1, 3, 4, D)
    assert ours.shape == (1, 3, 4, D)
    assert not torch.allclose(ours, theirs, atol=1e-4)


def test_dinov2_registers_are_not_patches_and_take_no_position():
    src = source_model("dinov2_vits14_reg")
    vit = build_image_vit("dinov2_vits14_reg", **tiny("dinov2_vits14_reg"))
    vit.model.load_state_dict(src.state_dict())
    assert vit.num_prefix == 5 and vit.model.pos_embed.shape[1] == 4
    x = torch.randn(1, 3, 42, 28)  # off the native grid: positions resampled for patches only
    with torch.no_grad():
        lin, patches = vit.features(x)
    assert patches.shape == (1, 3, 2, D) and lin.shape == (1, 5 * D)


def test_beit_refuses_other_grids():
    vit = build_image_vit("beitv2_vitb16", seed=0, **tiny("beitv2_vitb16"))
    with pytest.raises(ValueError, match="relative position bias is for a 2x2 patch grid"):
        vit.patch_tokens(torch.randn(1, 3, 48, 48))


# ------------------------------------------------------------------------------- frame-wise video probing
def test_framewise_seed_encoder_on_a_tiny_clip(tmp_path):
    from videoprobe.models import VIDEO_ENCODERS, create_video_encoder

    assert "dino_vits16_frames" in VIDEO_ENCODERS and "dinov2_vits14_frames" in VIDEO_ENCODERS
    src = source_model("dinov2_vits14")
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    write_release("dinov2_vits14", "hub", src.state_dict(), path)
    enc = create_video_encoder("dinov2_vits14_frames", str(path), arch=tiny("dinov2_vits14"), crop_size=28,
                               clip_len=3)
    clip = torch.rand(2, 3, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = enc(clip)
    assert out.pooled.shape == (2, 5 * D) and out.tokens.shape == (2, 3, 2, 2, D)
    assert enc.embed_dim == 5 * D and enc.token_dim == D and enc.size_multiple == 14
    assert enc.describe()["checkpoint_sha256"] == enc.checkpoint_id and len(enc.checkpoint_id) == 64
    # pooled = the per-frame linear feature (normalised as the release does) averaged over frames
    frames = clip.permute(0, 2, 1, 3, 4).reshape(6, 3, 28, 28)
    mean = torch.tensor(RELEASES["dinov2_vits14"].mean).view(1, 3, 1, 1)
    std = torch.tensor(RELEASES["dinov2_vits14"].std).view(1, 3, 1, 1)
    with torch.no_grad():
        per_frame = expected_linear("dinov2_vits14", src, (frames - mean) / std).reshape(2, 3, -1)
    torch.testing.assert_close(out.pooled, per_frame.mean(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14_reg", "beitv2_vitb16"])
def test_framewise_block_layout_covers_every_parameter_once_in_order(name):
    from videoprobe.models.framewise import create_seed_frames_encoder

    enc = create_seed_frames_encoder(f"{name}_frames", None, arch=tiny(name))
    layout = enc.block_layout()
    assert [b for b, _ in layout] == ["stem", *(f"blocks.{i}" for i in range(DEPTH)), "norm"]
    owner = {}
    for i, (_, prefixes) in enumerate(layout):
        for n, _ in enc.named_parameters():
            if any(n == p or (p.endswith(".") and n.startswith(p)) for p in prefixes):
                assert n not in owner, n
                owner[n] = i
    names = [n for n, _ in enc.named_parameters()]
    assert set(owner) == set(names)
    assert [owner[n] for n in names] == sorted(owner[n] for n in names)


def test_framewise_seed_encoder_weights_only_from_a_local_file(tmp_path):
    from videoprobe.models import create_video_encoder

    enc = create_video_encoder("dino_vits16_frames", None, seed=3, arch=tiny("dino_vits16"), crop_size=32)
    assert enc.checkpoint_id == "random:3" and enc.checkpoint_path is None  # random init, recorded as such
    with pytest.raises(CheckpointError, match="no hub download"):
        create_video_encoder("dino_vits16_frames", "hub")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        create_video_encoder("dino_vits16_frames", str(tmp_path / "missing.pth"))


# ------------------------------------------------------- against the official code (opt-in, skipped here)
def _official(monkeypatch, env: str, sub: str) -> None:
    import os

    root = os.environ.get(env)
    if not root:
        pytest.skip(f"set {env} to a checkout of the official repository to compare with its code")
    import sys

    monkeypatch.syspath_prepend(os.path.join(root, sub) if sub else root)
    for name in [m for m in sys.modules if m.split(".")[0] in ("utils", "vision_transformer", "models")]:
        monkeypatch.delitem(sys.modules, name)  # the releases' generic module names: their own copies


def _randomise(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_equals_the_official_code(tmp_path, monkeypatch, registers):
    """PROBESUITE_DINOV2_REPO=<facebookresearch/dinov2 checkout>: ViT-S/14 hub files, 3 input sizes."""
    _official(monkeypatch, "PROBESUITE_DINOV2_REPO", "")
    from dinov2.models import vision_transformer as vits

    ref = _randomise(vits.vit_small(patch_size=14, img_size=518, init_values=1.0, block_chunks=0,
                                    num_register_tokens=registers, interpolate_antialias=False,
                                    interpolate_offset=0.1), 0)
    path = tmp_path / "hub.pth"
    save_checkpoint(ref.state_dict(), path)
    ours = load_image_vit("dinov2_vits14_reg" if registers else "dinov2_vits14", path)
    for hw in ((224, 224), (518, 518), (224, 308)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            lin, patches = ours.features(x)
            inter = ref.get_intermediate_layers(x, n=4, return_class_token=True, norm=True)
        torch.testing.assert_close(lin, torch.cat([c for _, c in inter] + [inter[-1][0].mean(1)], -1))
        torch.testing.assert_close(patches.flatten(1, 2), inter[-1][0])


def test_dino_equals_the_official_code(tmp_path, monkeypatch):
    """PROBESUITE_DINO_REPO=<facebookresearch/dino checkout>: ViT-S/16 full checkpoint (teacher)."""
    _official(monkeypatch, "PROBESUITE_DINO_REPO", "")
    import vision_transformer as dv

    teacher, student = _randomise(dv.vit_small(patch_size=16), 0), _randomise(dv.vit_small(patch_size=16), 1)
    path = tmp_path / "full.pth"
    save_checkpoint({"student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                     "teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
                     "epoch": 1, "args": ARGS}, path)
    ours = load_image_vit("dino_vits16", path)
    for hw in ((224, 224), (448, 448), (224, 320)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            lin, patches = ours.features(x)
            inter = teacher.get_intermediate_layers(x, 4)
        torch.testing.assert_close(lin, torch.cat([o[:, 0] for o in inter], -1))
        torch.testing.assert_close(patches.flatten(1, 2), inter[-1][:, 1:])


def test_beitv2_equals_the_official_code(tmp_path, monkeypatch):
    """PROBESUITE_UNILM_REPO=<microsoft/unilm checkout>: BEiT v2 ViT-B/16 pre-training file layout."""
    _official(monkeypatch, "PROBESUITE_UNILM_REPO", "beit2")
    from functools import partial

    import modeling_finetune as mf

    ref = _randomise(mf.VisionTransformer(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_mean_pooling=False,
        use_shared_rel_pos_bias=True, use_abs_pos_emb=False, init_values=0.1, num_classes=0), 0)
    model = {k: v for k, v in ref.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    path = tmp_path / "pt.pth"
    save_checkpoint({"model": {**model, "mask_token": torch.zeros(1, 1, 768)}, "epoch": 1, "args": ARGS},
                    path)
    ours = load_image_vit("beitv2_vitb16", path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        lin, patches = ours.features(x)
        last = ref.get_intermediate_layers(x)[-1]
    torch.testing.assert_close(lin, torch.cat([last[:, 0], last[:, 1:].mean(1)], -1))
    torch.testing.assert_close(patches.flatten(1, 2), ref.norm(last)[:, 1:])


@pytest.mark.parametrize("release", ["ibot", "mugs"])
def test_ibot_and_mugs_equal_the_official_code(tmp_path, monkeypatch, release):
    """PROBESUITE_IBOT_REPO / PROBESUITE_MUGS_REPO: ViT-S/16 backbone files ({"state_dict": ...}); the
    Mugs file keeps its relation block, which is not the encoder."""
    if release == "ibot":
        _official(monkeypatch, "PROBESUITE_IBOT_REPO", "")
        from models.vision_transformer import vit_small
        ref = _randomise(vit_small(patch_size=16), 0)
    else:
        _official(monkeypatch, "PROBESUITE_MUGS_REPO", "src")
        from vision_transformer import vit_small
        ref = _randomise(vit_small(patch_size=16, num_relation_blocks=1), 0)
    path = tmp_path / "backbone.pth"
    save_checkpoint({"state_dict": ref.state_dict()}, path)
    ours = load_image_vit(f"{release}_vits16", path)
    for hw in ((224, 224), (224, 320)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            lin, patches = ours.features(x)
            inter = ref.get_intermediate_layers(x, 4)
        torch.testing.assert_close(lin, torch.cat([o[:, 0] for o in inter], -1))
        torch.testing.assert_close(patches.flatten(1, 2), inter[-1][:, 1:])
