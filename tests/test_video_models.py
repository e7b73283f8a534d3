"""Video encoders: shapes for every registered name, strict checkpoint loading, offline hub errors.

Checkpoints are written by the tests with random weights in the published key layouts (VideoMAE,
V-JEPA, pytorchvideo zoo, torchvision); outputs are compared with reference forwards written here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.errors import CheckpointError, ConfigError
from videoprobe.models import VIDEO_ENCODERS, assert_frozen, create_video_encoder
from videoprobe.models.framewise import SEED_FRAME_ENCODERS
from videoprobe.models.vit import VIT_SIZES, VideoViT

torch.set_num_threads(1)

# name -> (frames, size, constructor kwargs) for a small forward pass
SMALL = {
    "x3d_s": (4, 64, {}),
    "x3d_m": (4, 64, {}),
    "slow_r50": (4, 64, {}),
    "slowfast_r50": (8, 64, {}),
    "r2plus1d_r50": (4, 64, {}),
    "mvit_base_16x4": (4, 64, {"spatial_size": 64, "temporal_size": 4}),
    "videomae_vit_tiny": (4, 32, {}),
    "vjepa_vit_tiny": (4, 32, {}),
    "frame_resnet18": (3, 32, {}),
    "frame_resnet50": (2, 32, {}),
    "frame_vit_b_16": (2, 32, {"crop_size": 32}),
    "frame_stats": (3, 32, {}),
    "motion_energy": (5, 32, {}),
}
BIG_VITS = {"videomae_vit_s", "videomae_vit_b", "videomae_vit_l", "videomae_vit_h", "videomae_vit_g",
            "vjepa_vit_l", "vjepa_vit_h"}


# seed image encoders per frame: covered by tests/test_seed_image_encoders.py (release file layouts)
SEED_FRAMES = set(SEED_FRAME_ENCODERS)


def test_every_registered_encoder_is_covered():
    assert set(VIDEO_ENCODERS) == set(SMALL) | BIG_VITS | SEED_FRAMES


@pytest.mark.parametrize("name", sorted(SMALL))
def test_encoder_shapes_and_frozen(name):
    t, s, kw = SMALL[name]
    enc = create_video_encoder(name, **kw)
    assert_frozen(enc)
    clip = torch.rand(2, 3, t, s, s)
    with torch.no_grad():
        out = enc(clip)
    assert out.pooled.shape == (2, enc.embed_dim)
    assert out.tokens is not None and out.tokens.ndim == 5
    assert out.tokens.shape[0] == 2 and out.tokens.shape[-1] == enc.token_dim
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.tokens).all()
    # the two clips differ, so must their features (a constant encoder would pass the shape checks)
    assert not torch.allclose(out.pooled[0], out.pooled[1])
    d = enc.describe()
    assert d["name"] == name and d["checkpoint_sha256"] in ("none", "random:0")


@pytest.mark.parametrize("name", sorted(BIG_VITS))
def test_big_vit_sizes_on_meta_device(name):
    family, size = name.split("_vit_")
    with torch.device("meta"):
        m = VideoViT(name, family, size)
    spec = VIT_SIZES[size]
    assert m.embed_dim == spec.embed_dim and len(m.blocks) == spec.depth
    assert m.blocks[0].attn.num_heads == spec.num_heads
    assert m.state_dict()["patch_embed.proj.weight"].shape == (spec.embed_dim, 3, 2, 16, 16)
    if family == "vjepa":
        assert m.state_dict()["pos_embed"].shape == (1, 1568, spec.embed_dim)


def test_vit_token_grid():
    enc = create_video_encoder("videomae_vit_tiny")
    out = enc(torch.rand(1, 3, 8, 64, 48))
    assert out.tokens.shape == (1, 4, 4, 3, 48)
    with pytest.raises(ValueError, match="height/width of 16"):
        enc(torch.rand(1, 3, 8, 40, 48))


def test_unknown_name_and_seeded_init():
    with pytest.raises(ConfigError, match="unknown video encoder"):
        create_video_encoder("not_a_model")
    a = create_video_encoder("videomae_vit_tiny", seed=3)
    b = create_video_encoder("videomae_vit_tiny", seed=3)
    c = create_video_encoder("videomae_vit_tiny", seed=4)
    x = torch.rand(1, 3, 2, 16, 16)
    assert torch.equal(a(x).pooled, b(x).pooled)
    assert not torch.allclose(a(x).pooled, c(x).pooled)
    assert a.checkpoint_id == "random:3"


# ------------------------------------------------------------------------------ ViT checkpoint files
D, DEPTH, HEADS, HID = 48, 2, 3, 192  # the "tiny" size


def _layout(family: str, layer_scale: bool, final: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights in the published key layout (independent of the model code)."""
    r = lambda *shape: torch.randn(*shape, generator=gen) * 0.1  # noqa: E731
    sd = {"patch_embed.proj.weight": r(D, 3, 2, 16, 16), "patch_embed.proj.bias": r(D)}
    if family == "vjepa":
        sd["pos_embed"] = r(1, 8 * 2 * 2, D)  # 16 frames x 32 px -> 8 x 2 x 2 tokens
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + r(D), p + "norm1.bias": r(D),
            p + "attn.qkv.weight": r(3 * D, D),
            p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
            p + "norm2.weight": 1 + r(D), p + "norm2.bias": r(D),
            p + "mlp.fc1.weight": r(HID, D), p + "mlp.fc1.bias": r(HID),
            p + "mlp.fc2.weight": r(D, HID), p + "mlp.fc2.bias": r(D),
        })
        if family == "videomae":
            sd[p + "attn.q_bias"], sd[p + "attn.v_bias"] = r(D), r(D)
        else:
            sd[p + "attn.qkv.bias"] = r(3 * D)
        if layer_scale:
            sd[p + "gamma_1"], sd[p + "gamma_2"] = r(D), r(D)
    sd[f"{final}.weight"], sd[f"{final}.bias"] = 1 + r(D), r(D)
    return sd


def _sinusoid(n: int, d: int) -> np.ndarray:
    table = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


def _reference_forward(sd: dict, clip: torch.Tensor, family: str, final: str) -> torch.Tensor:
    """Plain re-implementation of the published forward: returns the pooled feature."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    x = (clip - mean) / std
    h = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 16, 16))
    h = h.flatten(2).transpose(1, 2)
    n = h.shape[1]
    pos = sd["pos_embed"][0] if "pos_embed" in sd else torch.tensor(_sinusoid(n, D), dtype=torch.float32)
    h = h + pos
    dh = D // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        y = F.layer_norm(h, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        if family == "videomae":
            bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(D), sd[p + "attn.v_bias"]])
        else:
            bias = sd[p + "attn.qkv.bias"]
        qkv = y @ sd[p + "attn.qkv.weight"].T + bias
        q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
        heads = []
        for hd in range(HEADS):
            sl = slice(hd * dh, (hd + 1) * dh)
            att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh), dim=-1)
            heads.append(att @ v[..., sl])
        a = torch.cat(heads, dim=-1) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = h + (sd[p + "gamma_1"] * a if p + "gamma_1" in sd else a)
        y = F.layer_norm(h, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        m = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        m = m @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        h = h + (sd[p + "gamma_2"] * m if p + "gamma_2" in sd else m)
    if final == "norm":
        return F.layer_norm(h, (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-6).mean(1)
    return F.layer_norm(h.mean(1), (D,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps=1e-6)


@pytest.mark.parametrize("variant", ["finetuned_module", "pretrain_encoder_prefix", "layer_scale",
                                     "learned_pos"])
def test_videomae_checkpoint_loads_strictly_and_matches_reference(tmp_path, variant):
    gen = torch.Generator().manual_seed(1)
    if variant == "pretrain_encoder_prefix":  # pre-training file: encoder. + decoder, final norm
        sd = _layout("videomae", False, "norm", gen)
        raw = {f"encoder.{k}": v for k, v in sd.items()}
        raw.update({"decoder.blocks.0.norm1.weight": torch.ones(8), "mask_token": torch.zeros(1, 1, 8),
                    "encoder_to_decoder.weight": torch.zeros(8, D)})
        obj, final = {"model": raw}, "norm"
    else:
        ls = variant == "layer_scale"
        sd = _layout("videomae", ls, "fc_norm", gen)
        if variant == "learned_pos":  # VideoMAE trained with learnable positions stores them
            sd["pos_embed"] = torch.randn(1, 8 * 2 * 2, D, generator=gen) * 0.1
        raw = {**sd, "head.weight": torch.zeros(5, D), "head.bias": torch.zeros(5)}
        obj = {"module": {f"module.{k}": v for k, v in raw.items()}} if not ls else {"model": raw}
        final = "fc_norm"
    path = tmp_path / "videomae.pth"
    torch.save(obj, path)
    enc = create_video_encoder("videomae_vit_tiny", checkpoint=str(path), num_frames=16, img_size=32)
    assert_frozen(enc)
    clip = torch.rand(2, 3, 16, 32, 32)
    with torch.no_grad():
        out = enc(clip)
        ref = _reference_forward(sd, clip, "videomae", final)
    assert out.tokens.shape == (2, 8, 2, 2, D)
    torch.testing.assert_close(out.pooled, ref, atol=1e-4, rtol=1e-4)
    assert len(enc.checkpoint_id) == 64


def test_vjepa_checkpoint_uses_target_encoder(tmp_path):
    gen = torch.Generator().manual_seed(2)
    target = _layout("vjepa", False, "norm", gen)
    online = _layout("vjepa", False, "norm", gen)
    obj = {
        "encoder": {f"module.backbone.{k}": v for k, v in online.items()},
        "target_encoder": {f"module.backbone.{k}": v for k, v in target.items()},
        "predictor": {"module.backbone.predictor_embed.weight": torch.zeros(4, D)},
        "epoch": 300,
    }
    path = tmp_path / "vjepa.pth.tar"
    torch.save(obj, path)
    enc = create_video_encoder("vjepa_vit_tiny", checkpoint=str(path), num_frames=16, img_size=32)
    clip = torch.rand(1, 3, 16, 32, 32)
    with torch.no_grad():
        out = enc(clip).pooled
    torch.testing.assert_close(out, _reference_forward(target, clip, "vjepa", "norm"), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, _reference_forward(online, clip, "vjepa", "norm"), atol=1e-3)


def test_vit_checkpoint_wrong_keys_give_readable_diff(tmp_path):
    gen = torch.Generator().manual_seed(3)
    sd = _layout("videomae", False, "fc_norm", gen)
    sd["blocks.1.mlp.fc1.weigth"] = sd.pop("blocks.1.mlp.fc1.weight")
    path = tmp_path / "typo.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as e:
        create_video_encoder("videomae_vit_tiny", checkpoint=str(path), num_frames=16, img_size=32)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert "missing 1 [blocks.1.mlp.fc1.weight]" in msg
    assert "unexpected 1 [blocks.1.mlp.fc1.weigth]" in msg

    sd = _layout("videomae", False, "fc_norm", gen)
    torch.save({"model": sd}, path)
    want = r"wrong shape \d+ \[blocks.0.attn.proj.bias: checkpoint \(48,\) vs model \(384,\)"
    with pytest.raises(CheckpointError, match=want):
        create_video_encoder("videomae_vit_s", checkpoint=str(path), num_frames=16, img_size=32)


def test_checkpoint_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_video_encoder("videomae_vit_tiny", checkpoint=str(tmp_path / "nope.pth"))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_video_encoder("vjepa_vit_tiny", checkpoint=str(bad))


# ---------------------------------------------------------------------------- pytorchvideo zoo
def test_zoo_pooled_matches_hub_head_and_checkpoint_roundtrip(tmp_path):
    kw = {"input_clip_length": 4, "input_crop_size": 64}
    enc = create_video_encoder("x3d_s", seed=5, **kw)
    clip = torch.rand(2, 3, 4, 64, 64)
    head = enc.head
    head.activation = None  # the hub head (pool kernel = feature map) without softmax and projection
    with torch.no_grad():
        ours = enc(clip).pooled
        theirs = enc.net(enc.normalize(clip))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    # a .pyth file in the zoo layout, classifier included, loads strictly into a differently seeded model
    import pytorchvideo.models.x3d as x3d

    with torch.random.fork_rng():
        torch.manual_seed(9)
        full = x3d.create_x3d(**kw)
    path = tmp_path / "X3D_S.pyth"
    torch.save({"model_state": full.state_dict(), "epoch": 1}, path)
    from videoprobe.models.zoo import create_zoo_encoder

    with pytest.raises(ConfigError, match="cannot go with a checkpoint"):
        create_zoo_encoder("x3d_s", str(path), **kw)
    loaded = create_zoo_encoder("x3d_s", None, seed=1, **kw)
    loaded.load_zoo_state(torch.load(path, weights_only=True), path)
    loaded.freeze()
    own = full.state_dict()
    for k, v in loaded.net.state_dict().items():
        torch.testing.assert_close(v, own[k])

    broken = {k: v for k, v in full.state_dict().items() if "blocks.1." not in k}
    with pytest.raises(CheckpointError, match=r"missing \d+ \[blocks\.1\."):
        loaded.load_zoo_state({"model_state": broken}, path)


def test_zoo_hub_name_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBESUITE_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="offline.*encoder.checkpoint="):
        create_video_encoder("x3d_s", checkpoint="hub")
    with pytest.raises(CheckpointError, match="no hub download"):
        create_video_encoder("videomae_vit_b", checkpoint="hub")


def test_zoo_hub_name_uses_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBESUITE_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    import pytorchvideo.models.x3d as x3d

    full = x3d.create_x3d(input_clip_length=13, input_crop_size=160)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model_state": full.state_dict()}, tmp_path / "checkpoints" / "X3D_S.pyth")
    enc = create_video_encoder("x3d_s", checkpoint="hub")
    assert enc.checkpoint_path.endswith("X3D_S.pyth") and len(enc.checkpoint_id) == 64


# ---------------------------------------------------------------------------------- frame-wise
def test_framewise_matches_torchvision_per_frame(tmp_path):
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(4)
        ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # torchvision layout, classifier included
    enc = create_video_encoder("frame_resnet18", checkpoint=str(path))
    ref.fc = torch.nn.Identity()
    ref.eval()
    clip = torch.rand(1, 3, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        per_frame = torch.stack([ref(((clip[0, :, t] - mean) / std)[None])[0] for t in range(3)])
        out = enc(clip)
    torch.testing.assert_close(out.tokens[0, :, 0, 0], per_frame, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooled[0], per_frame.mean(0), atol=1e-4, rtol=1e-4)


def test_timm_name_without_timm_is_a_config_error():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="timm is not installed"):
            create_video_encoder("frame_timm:resnet18")
    else:
        pytest.skip("timm installed")


# ---------------------------------------------------------------------- appearance vs motion
def _moving_square(vx: int, vy: int, colour: tuple[float, ...] = (0.9, 0.3, 0.1), t: int = 8) -> torch.Tensor:
    clip = torch.full((1, 3, t, 64, 64), 0.2)
    gen = torch.Generator().manual_seed(0)
    tex = torch.rand(3, 16, 16, generator=gen) * 0.3 + torch.tensor(colour).view(3, 1, 1) * 0.7
    for i in range(t):
        x0, y0 = 24 + vx * (i - t // 2), 24 + vy * (i - t // 2)
        clip[0, :, i, y0:y0 + 16, x0:x0 + 16] = tex
    return clip


def test_motion_energy_sees_direction_frame_stats_does_not():
    motion = create_video_encoder("motion_energy")
    frames = create_video_encoder("frame_stats")
    right = _moving_square(2, 0)
    left = right.flip(2)  # the same clip played backwards
    with torch.no_grad():
        # frame order is invisible to a frame-wise encoder: left = right played backwards
        torch.testing.assert_close(frames(right).pooled, frames(left).pooled, atol=1e-5, rtol=1e-5)
        m_r, m_l = motion(right).pooled[0], motion(left).pooled[0]
        n = (2 * motion.radius + 1) ** 2
        assert m_r[n] > 0.8 and m_l[n] < -0.8  # clip-mean horizontal flow in working px/frame
        assert abs(float(m_r[n + 1])) < 0.1  # no vertical motion
        up = motion(_moving_square(0, -2)).pooled[0]
        assert up[n + 1] < -0.8 and abs(float(up[n])) < 0.1
        static = motion(_moving_square(0, 0)).pooled[0]
        assert float(static[n:n + 2].abs().max()) < 1e-3
        # colour changes the frame-wise features, not the motion ones
        blue = _moving_square(2, 0, colour=(0.1, 0.3, 0.9))
        assert not torch.allclose(frames(blue).pooled, frames(right).pooled, atol=1e-2)
        torch.testing.assert_close(motion(blue).pooled[0][n:n + 6], m_r[n:n + 6], atol=0.05, rtol=0.05)


def test_encode_views_chunks_autocast_and_token_pooling():
    from videoprobe.extract import encode_views

    enc = create_video_encoder("videomae_vit_tiny")
    views = torch.rand(5, 3, 4, 64, 64)
    cpu = torch.device("cpu")
    with torch.no_grad():
        ref = enc(views)
    pooled, tokens = encode_views(enc, views, 2, cpu, True, [0, 0, 0])
    torch.testing.assert_close(pooled, ref.pooled, atol=1e-5, rtol=1e-5)  # chunks of 2 = one batch of 5
    torch.testing.assert_close(tokens, ref.tokens, atol=1e-5, rtol=1e-5)
    _, pooled_tok = encode_views(enc, views, 8, cpu, True, [1, 2, 0])
    assert pooled_tok.shape == (5, 1, 2, 4, 48)
    want = ref.tokens[:, :, :2, 0].mean(dim=(1, 2))  # all of T, first half of H, first W column
    torch.testing.assert_close(pooled_tok[:, 0, 0, 0], want, atol=1e-5, rtol=1e-5)
    bf16, _ = encode_views(enc, views, 8, cpu, False, [0, 0, 0], precision="bf16")
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, ref.pooled, atol=0.1, rtol=0.05)
    with pytest.raises(ConfigError, match="precision"):
        encode_views(enc, views, 8, cpu, False, [0, 0, 0], precision="int8")
    enc.train()
    with pytest.raises(Exception, match="training mode"):
        encode_views(enc, views, 8, cpu, False, [0, 0, 0])
