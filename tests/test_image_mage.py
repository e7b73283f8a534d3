"""MAGE's image encoder (common.image_models.mage): random weights written in the release's pre-training file
layout ({"model", "optimizer", "epoch", "scaler", "args"} with the VQGAN decoder, the MAGE decoder and the
MLM layer present), loaded strictly, and compared with a forward composed in this file from the raw state
dict (functional VQGAN encoder, nearest-code ids by explicit differences, BERT stem, timm Blocks built
here); the frame-wise video encoder and the lifting encoder on it; opt-in comparison with the official code.
"""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")

from common.checkpoint import save_checkpoint  # noqa: E402
from common.errors import CheckpointError  # noqa: E402
from common.image_models import RELEASES, MageViT, build_image_vit, load_image_vit  # noqa: E402

# a tiny MAGE: 2 VQGAN levels (one 2x2 pooling, a width change 32 -> 64 with its nin_shortcut), 8 px ->
# a 4x4 code grid of a 16-entry codebook, 2 blocks of width 24
TINY = {"embed_dim": 24, "depth": 2, "num_heads": 2, "img_size": 8, "vq_ch": 32, "vq_ch_mult": (1, 2),
        "vq_num_res_blocks": 1, "vq_z_channels": 8, "n_embed": 16}
D, GRID, PATCH, N_EMBED = 24, 4, 2, 16
ARGS = argparse.Namespace(model="mage_vit_base_patch16", batch_size=64, mask_ratio_min=0.5, epochs=1600)


def source_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random encoder weights under the release's key names (every weight non-trivial)."""
    sd = build_image_vit("mage_vitb16", seed=seed, **TINY).model.state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    out = {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in sd.items()}
    out["vqgan.quantize.embedding.weight"] = torch.randn(N_EMBED, 8, generator=g)  # spread-out codes
    return out


def pretraining_file(enc: dict[str, torch.Tensor], path) -> None:
    """``enc`` written as models_mage.py's MaskedGenerativeEncoderViT checkpoint (util/misc.py save_model)."""
    g = torch.Generator().manual_seed(5)
    extra = {  # pre-training / decoder parts that the loader must drop
        "token_emb.position_ids": torch.arange(GRID * GRID + 1).unsqueeze(0),
        "vqgan.decoder.conv_in.weight": torch.randn(32, 8, 3, 3, generator=g),
        "vqgan.decoder.up.0.block.0.conv1.weight": torch.randn(32, 32, 3, 3, generator=g),
        "vqgan.decoder.conv_out.weight": torch.randn(3, 32, 3, 3, generator=g),
        "patch_embed.proj.weight": torch.randn(D, 3, 16, 16, generator=g),
        "patch_embed.proj.bias": torch.zeros(D),
        "cls_token": torch.randn(1, 1, D, generator=g), "pos_embed": torch.randn(1, 17, D, generator=g),
        "decoder_embed.weight": torch.randn(D, D, generator=g), "decoder_embed.bias": torch.zeros(D),
        "mask_token": torch.zeros(1, 1, D), "decoder_pos_embed": torch.zeros(1, 17, D),
        "decoder_pos_embed_learned": torch.randn(1, 17, D, generator=g),
        "decoder_blocks.0.norm1.weight": torch.ones(D),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(3 * D, D),
        "decoder_norm.weight": torch.ones(D), "decoder_pred.weight": torch.randn(768, D, generator=g),
        "mlm_layer.fc.weight": torch.randn(D, D, generator=g), "mlm_layer.ln.weight": torch.ones(D),
        "mlm_layer.bias": torch.zeros(1, 1, N_EMBED + 1001),
    }
    save_checkpoint({"model": {**enc, **extra}, "optimizer": {"state": {}, "param_groups": []}, "epoch": 0,
                     "scaler": {"scale": 65536.0}, "args": ARGS}, path)


# ------------------------------------------------------------------------------------ layout and loader
def test_pretraining_file_loads_the_encoder_strictly(tmp_path):
    enc = source_weights()
    path = tmp_path / "mage-vitb-1600.pth"
    pretraining_file(enc, path)
    vit = load_image_vit("mage_vitb16", path, **TINY)
    assert isinstance(vit, MageViT)
    loaded = vit.model.state_dict()
    assert set(loaded) == set(enc)
    for k, v in enc.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    # the encoder part of the file: tokenizer encoder + codebook, token stem, blocks, final norm
    assert {k.split(".")[0] for k in loaded} == {"vqgan", "token_emb", "blocks", "norm"}
    assert {".".join(k.split(".")[:2]) for k in loaded if k.startswith("vqgan.")} == {"vqgan.encoder",
                                                                                       "vqgan.quantize"}


def test_missing_key_wrong_shape_and_unknown_key_give_the_bracketed_diff(tmp_path):
    enc = source_weights()
    del enc["blocks.1.mlp.fc2.bias"]
    enc["token_emb.position_embeddings.weight"] = torch.zeros(5, D)
    enc["vqgan.quant_conv.weight"] = torch.zeros(8, 8, 1, 1)  # a taming VQGAN with quant_conv: another model
    path = tmp_path / "bad.pth"
    pretraining_file(enc, path)
    with pytest.raises(CheckpointError) as e:
        load_image_vit("mage_vitb16", path, **TINY)
    msg = str(e.value)
    assert msg.startswith(f"{path}: checkpoint does not fit mage_vitb16 (mage_vit_base_patch16)")
    assert "missing 1 [blocks.1.mlp.fc2.bias]" in msg
    assert "unexpected 1 [vqgan.quant_conv.weight]" in msg
    assert ("wrong shape 1 [token_emb.position_embeddings.weight: checkpoint (5, 24) vs model (17, 24)]"
            in msg)
    assert "\n" not in msg


def test_file_without_the_model_wrapper_is_an_error(tmp_path):
    path = tmp_path / "odd.pth"
    save_checkpoint({"state_dict": source_weights(), "epoch": 0}, path)
    with pytest.raises(CheckpointError, match="no mage encoder state dict found"):
        load_image_vit("mage_vitb16", path, **TINY)


# ------------------------------------------------------------------ the forward, composed independently
def _group_norm_swish(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    h = F.group_norm(x, 32, sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-6)
    return h * torch.sigmoid(h)


def _vqgan_encoder(x: torch.Tensor, sd: dict, levels: int, blocks: int) -> torch.Tensor:
    """models_vit_mage's tokenizer encoder (taming/modules/diffusionmodules/model.py Encoder) in F ops."""
    def res(h: torch.Tensor, key: str) -> torch.Tensor:
        r = F.conv2d(_group_norm_swish(h, sd, f"{key}.norm1"), sd[f"{key}.conv1.weight"], padding=1)
        r = F.conv2d(_group_norm_swish(r, sd, f"{key}.norm2"), sd[f"{key}.conv2.weight"], padding=1)
        if f"{key}.nin_shortcut.weight" in sd:  # the release adds the 1x1 map of the branch, not of h
            return F.conv2d(r, sd[f"{key}.nin_shortcut.weight"]) + r
        return h + r

    p = "vqgan.encoder"
    h = F.conv2d(x, sd[f"{p}.conv_in.weight"], padding=1)
    for i in range(levels):
        for j in range(blocks):
            h = res(h, f"{p}.down.{i}.block.{j}")
        if i < levels - 1:
            h = F.avg_pool2d(h, 2)
    h = res(res(h, f"{p}.mid.block_1"), f"{p}.mid.block_2")
    return F.conv2d(_group_norm_swish(h, sd, f"{p}.norm_out"), sd[f"{p}.conv_out.weight"],
                    sd[f"{p}.conv_out.bias"])


def reference_forward(x: torch.Tensor, sd: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (B, 1 + h*w), linear (B, D), dense (B, h*w, D)) from the raw state dict of the file."""
    from functools import partial

    from timm.models.vision_transformer import Block

    z = _vqgan_encoder(x, sd, levels=2, blocks=1)  # (B, 8, 4, 4)
    flat = z.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 1, z.shape[1])  # row-major positions
    book = sd["vqgan.quantize.embedding.weight"]
    ids = ((flat - book) ** 2).sum(-1).argmin(-1)  # (B, h*w): nearest code by explicit differences
    ids = torch.cat([torch.full((x.shape[0], 1), N_EMBED + 1100 - 1024), ids], dim=1)  # fake class id
    pos = sd["token_emb.position_embeddings.weight"][: ids.shape[1]]
    t = sd["token_emb.word_embeddings.weight"][ids] + pos
    t = F.layer_norm(t, (D,), sd["token_emb.LayerNorm.weight"], sd["token_emb.LayerNorm.bias"], eps=1e-6)
    for i in range(2):
        blk = Block(D, 2, 4.0, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
        blk.load_state_dict({k.removeprefix(f"blocks.{i}."): v for k, v in sd.items()
                             if k.startswith(f"blocks.{i}.")})
        t = blk(t)
    lin = F.layer_norm(t[:, 1:].mean(1), (D,), eps=1e-6)  # fc_norm: weight 1, bias 0
    dense = F.layer_norm(t[:, 1:], (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return ids, lin, dense


def test_forward_equals_the_composition_from_the_raw_state_dict(tmp_path):
    enc = source_weights(seed=2)
    path = tmp_path / "mage.pth"
    pretraining_file(enc, path)
    vit = load_image_vit("mage_vitb16", path, **TINY)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))  # [0, 1] pixels
    with torch.no_grad():
        ids = vit.model.token_ids(x)
        lin, patches = vit.features(x)
        ref_ids, ref_lin, ref_dense = reference_forward(x, enc)
    assert ids.tolist() == ref_ids.tolist()
    assert len(set(ids[:, 1:].flatten().tolist())) > 3  # the images use several codes
    assert lin.shape == (3, D) and patches.shape == (3, GRID, GRID, D)
    torch.testing.assert_close(lin, ref_lin, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches.reshape(3, GRID * GRID, D), ref_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vit.patch_tokens(x), patches)
    torch.testing.assert_close(vit(x), lin)
    # the linear feature is standardised per image (parameter-free LayerNorm), the dense one is not
    torch.testing.assert_close(lin.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"4x4 code grid \(8 px\), got 10x10"):
        vit.features(torch.rand(1, 3, 10, 10))


def test_real_architecture_sizes():
    """ViT-B/16 and ViT-L/16 with config/vqgan.yaml, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        b, large = build_image_vit("mage_vitb16"), build_image_vit("mage_vitl16")
    sd = {k: tuple(v.shape) for k, v in b.model.state_dict().items()}
    assert sd["vqgan.encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert sd["vqgan.encoder.down.2.block.0.nin_shortcut.weight"] == (256, 256, 1, 1)
    assert sd["vqgan.encoder.down.4.block.1.conv2.weight"] == (512, 512, 3, 3)
    assert sd["vqgan.encoder.conv_out.weight"] == (256, 512, 1, 1)
    assert sd["vqgan.quantize.embedding.weight"] == (1024, 256)
    assert sd["token_emb.word_embeddings.weight"] == (2025, 768)  # 1024 codes + 1000 classes + mask
    assert sd["token_emb.position_embeddings.weight"] == (257, 768)
    assert b.patch == 16 and b.grid == (16, 16) and b.depth == 12 and b.linear_dim == 768
    assert b.model.fake_class_id == 1100 and RELEASES["mage_vitb16"].input_size == 256
    assert large.depth == 24 and large.embed_dim == 1024 and large.model.blocks[0].attn.num_heads == 16
    pretraining_only = ("vqgan.decoder", "vqgan.quant_conv", "patch_embed", "cls_token", "pos_embed")
    assert not any(k.startswith(pretraining_only) for k in sd)


# ------------------------------------------------------------------------ frame-wise video and lifting
def test_framewise_mage_on_raw_pixels(tmp_path):
    from videoprobe.models import VIDEO_ENCODERS, create_video_encoder

    assert "mage_vitb16_frames" in VIDEO_ENCODERS
    enc = source_weights(seed=3)
    path = tmp_path / "mage.pth"
    pretraining_file(enc, path)
    video = create_video_encoder("mage_vitb16_frames", str(path), arch=TINY, crop_size=8, clip_len=2)
    clip = torch.rand(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = video(clip)
        frames = clip.permute(0, 2, 1, 3, 4).reshape(4, 3, 8, 8)  # no mean / std: [0, 1] pixels
        _, ref_lin, ref_dense = reference_forward(frames, enc)
    torch.testing.assert_close(out.pooled, ref_lin.reshape(2, 2, D).mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.tokens, ref_dense.reshape(2, 2, GRID, GRID, D), rtol=1e-5, atol=1e-5)
    assert video.size_multiple == PATCH and video.embed_dim == D
    # the tokenizer is fixed by design, in no trainable block; the rest is covered once
    assert video.fixed() == ["backbone.model.vqgan."]
    layout = video.block_layout()
    assert [b for b, _ in layout] == ["stem", "blocks.0", "blocks.1", "norm"]
    assert layout[0][1] == ["backbone.model.token_emb."]
    # default crop: the release's 256 px
    with torch.device("meta"):
        assert create_video_encoder("mage_vitb16_frames").crop_size == 256


def test_lifting_encoder_feeds_raw_pixels(tmp_path):
    from pointprobe.lift.image_encoders import create_image_encoder

    enc_sd = source_weights(seed=4)
    path = tmp_path / "mage.pth"
    pretraining_file(enc_sd, path)
    enc, rec = create_image_encoder("seed:mage_vitb16", checkpoint=str(path), input_height=8, **TINY)
    img = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        fmap = enc(img)
        _, _, ref_dense = reference_forward(img, enc_sd)
    assert rec.dim == D and rec.stride == PATCH and fmap.shape == (2, D, GRID, GRID)
    ref_map = ref_dense.transpose(1, 2).reshape(2, D, GRID, GRID)
    torch.testing.assert_close(fmap, ref_map, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- against the official code (opt-in, skipped here)
def _official_mage(monkeypatch, tmp_path):
    """Import LTH14/mage's models_vit_mage from PROBESUITE_MAGE_REPO. Stubs, in this opt-in path only:
    omegaconf (OmegaConf.load of config/vqgan.yaml via PyYAML, attribute access) and pytorch_lightning
    (LightningModule = nn.Module) when not installed; Tensor.cuda(device=cpu) (the release moves its
    class-id column with .cuda(device=...)) returns the tensor on that device."""
    import os
    import sys
    import types

    root = os.environ.get("PROBESUITE_MAGE_REPO")
    if not root:
        pytest.skip("set PROBESUITE_MAGE_REPO to a checkout of LTH14/mage to compare with its code")
    import yaml

    class _Cfg(dict):
        def __getattr__(self, key):
            return self[key]

    def _wrap(v):
        return _Cfg({k: _wrap(x) for k, x in v.items()}) if isinstance(v, dict) else v

    if "omegaconf" not in sys.modules:
        try:
            import omegaconf  # noqa: F401
        except ImportError:
            om = types.ModuleType("omegaconf")
            om.OmegaConf = types.SimpleNamespace(  # type: ignore[attr-defined]
                load=lambda p: _wrap(yaml.safe_load(open(os.path.join(root, p)))))
            monkeypatch.setitem(sys.modules, "omegaconf", om)
    try:
        import pytorch_lightning  # noqa: F401
    except ImportError:
        pl = types.ModuleType("pytorch_lightning")
        pl.LightningModule = torch.nn.Module  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pytorch_lightning", pl)
    cuda = torch.Tensor.cuda

    def _cuda(self, device=None, *a, **kw):
        if device is not None and torch.device(device).type == "cpu":
            return self.to(device)
        return cuda(self, device, *a, **kw)

    monkeypatch.setattr(torch.Tensor, "cuda", _cuda)
    monkeypatch.syspath_prepend(root)
    for name in [m for m in sys.modules if m.split(".")[0] in ("taming", "models_vit_mage", "util")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(tmp_path)  # the release reads vqgan_jax_strongaug.ckpt from the working directory
    import models_vit_mage
    from taming.models.vqgan import VQModel

    cfg = _wrap(yaml.safe_load(open(os.path.join(root, "config", "vqgan.yaml"))))["model"]["params"]
    vq = VQModel(ddconfig=cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
    torch.save({"state_dict": vq.state_dict()}, tmp_path / "vqgan_jax_strongaug.ckpt")
    return models_vit_mage


def test_mage_equals_the_official_code(tmp_path, monkeypatch):
    """PROBESUITE_MAGE_REPO=<LTH14/mage checkout>: a ViT-B/16 pre-training file, loaded as main_linprobe.py
    does (strict=False, missing exactly head + fc_norm), its --global_pool forward_features vs ours."""
    mvm = _official_mage(monkeypatch, tmp_path)
    ref = mvm.vit_base_patch16(num_classes=1000, global_pool=True, vqgan_ckpt_path="vqgan_jax_strongaug.ckpt")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.startswith("vqgan.quantize"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif n.endswith("bias") or "norm" in n.lower():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (n.endswith("weight")))
            else:  # fan-in scaled, so the VQGAN's activations neither vanish nor explode
                fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    ref.eval()
    model = {k: v for k, v in ref.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    model.update({"norm.weight": torch.rand(768, generator=g) + 0.5,
                  "norm.bias": torch.randn(768, generator=g),
                  "mask_token": torch.zeros(1, 1, 768), "decoder_embed.weight": torch.zeros(768, 768),
                  "mlm_layer.bias": torch.zeros(1, 1, 2025)})
    path = tmp_path / "mage-vitb-1600.pth"
    save_checkpoint({"model": model, "optimizer": {}, "epoch": 1599, "scaler": {}, "args": ARGS}, path)
    # the release's own loading of that file (main_linprobe.py)
    probe = mvm.vit_base_patch16(num_classes=1000, global_pool=True,
                                 vqgan_ckpt_path="vqgan_jax_strongaug.ckpt")
    msg = probe.load_state_dict(torch.load(path, weights_only=False)["model"], strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    probe.eval()
    ours = load_image_vit("mage_vitb16", path)
    x = torch.rand(2, 3, 256, 256, generator=g)
    with torch.no_grad():
        lin, patches = ours.features(x)
        theirs = probe.forward_features(x)
        ids_ref = probe.vqgan.encode(x)[2][2].reshape(2, -1)
        ids = ours.model.token_ids(x)[:, 1:]
        # dense: the release's own stem and blocks (as forward_features runs them), then the file's norm
        t = probe.token_emb(torch.cat([torch.full((2, 1), probe.fake_class_label), ids_ref.long()], 1))
        for blk in probe.blocks:
            t = blk(t)
        dense = F.layer_norm(t[:, 1:], (768,), model["norm.weight"], model["norm.bias"], eps=1e-6)
    d_lin, d_dense = float((lin - theirs).abs().max()), float((patches.flatten(1, 2) - dense).abs().max())
    print(f"MAGE official vs ours: ids equal {int((ids == ids_ref).sum())}/{ids.numel()}, "
          f"distinct ids {len(set(ids.flatten().tolist()))}, linear max abs diff {d_lin:.3g} "
          f"(scale {float(theirs.abs().max()):.3g}), dense max abs diff {d_dense:.3g}")
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(lin, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(patches.flatten(1, 2), dense, rtol=1e-4, atol=1e-4)
