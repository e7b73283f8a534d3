"""The seed image encoders' release file layouts, one table row per release (see the README section
"Seed image encoders" and /work/shared/reference/image_encoders.md for where each fact comes from).

A row says which timm architecture reproduces the release, where the encoder's weights sit inside the
released file (the wrapper keys tried in order, the prefixes stripped, the keys that belong to heads or
pre-training parts and are dropped, regex renames onto timm's names) and which representation the
release's own linear evaluation uses (``n_last`` CLS tokens, the mean patch token concatenated or
interleaved, through the final norm or not).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# "mean": the mean patch token alone (MAGE's --global_pool, through a parameter-free LayerNorm)
Avgpool = Literal["none", "concat", "interleave", "mean"]


@dataclass(frozen=True)
class Release:
    """How to read one release's checkpoint into a timm model and what its linear probe reads."""

    family: str  # dino | ibot | mugs | dinov2 | beitv2 | mage
    timm_name: str  # the timm architecture (MAGE: own modules around timm Blocks, named for messages)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    # dict keys under which the encoder sits, tried in order ("teacher" before "student": the
    # official evaluations read the teacher; "state_dict" for iBOT / Mugs backbone files)
    wrappers: tuple[str, ...] = ("teacher", "state_dict", "model")
    # keep only this part when the file has it (training files hold backbone + heads)
    select: tuple[str, ...] = ("module.backbone.", "backbone.")
    strip: tuple[str, ...] = ("module.", "backbone.", "encoder.")
    # keys of heads / pre-training-only parts, dropped (anything else unknown is an error)
    drop: tuple[str, ...] = ()
    # (regex, replacement) applied to every key after stripping, in order
    renames: tuple[tuple[str, str], ...] = ()
    # linear protocol: CLS of the last n blocks (+ the last block's mean patch token)
    n_last: int = 4
    avgpool: Avgpool = "none"
    final_norm: bool = True  # intermediate outputs through the final norm (DINO/iBOT/Mugs/DINOv2)
    # DINOv2 with registers: the file's class position pos_embed[:, 0] is added to cls_token and
    # removed (timm's register models keep patch-only positions; the sum is what the release computes)
    fold_cls_pos: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224  # the linear protocol's evaluation crop (MAGE: 256)

    @property
    def is_beit(self) -> bool:
        return self.family == "beitv2"

    @property
    def is_mage(self) -> bool:
        """MAGE: VQGAN tokenizer + BERT token stem (own code, ``common.image_models.mage``), timm Blocks."""
        return self.family == "mage"


_VIT = {"img_size": 224, "qkv_bias": True, "global_pool": "token", "num_classes": 0}
_DINO_DROP = ("head.", "dino_loss.")
_IBOT_DROP = ("head.", "masked_embed")
_MUGS_DROP = ("relation_blocks.", "instance_head.", "local_group_head.", "group_head.", "head.",
              "masked_embed")
_DINOV2 = {"img_size": 518, "qkv_bias": True, "global_pool": "token", "num_classes": 0}
_DINOV2_DROP = ("mask_token", "dino_head.", "ibot_head.")
# DINOv2 training files chunk the blocks (block_chunks=4): blocks.<chunk>.<global index>.*
_DINOV2_RENAMES = ((r"^blocks\.\d+\.(\d+)\.", r"blocks.\1."),)
# ViT-g/14 uses a SwiGLU FFN: DINOv2's w12 / w3 are timm's packed fc1 / fc2
_DINOV2_G_RENAMES = _DINOV2_RENAMES + ((r"\.mlp\.w12\.", ".mlp.fc1."), (r"\.mlp\.w3\.", ".mlp.fc2."))
_BEITV2 = {"img_size": 224, "qkv_bias": True, "use_abs_pos_emb": False, "use_rel_pos_bias": False,
           "use_shared_rel_pos_bias": True, "init_values": 0.1, "use_fc_norm": False,
           "global_pool": "token", "num_classes": 0}
_BEITV2_DROP = ("mask_token", "lm_head.", "cls_pt_layers.", "head.", "fc_norm.")
# MAGE (models_mage.py MaskedGenerativeEncoderViT): the encoder is vqgan.encoder / vqgan.quantize, token_emb,
# blocks, norm; the VQGAN decoder, the MAGE decoder and MLM layer, and the unused patch_embed / cls_token /
# sin-cos pos_embed of pre-training are dropped; token_emb.position_ids is a constant arange buffer
_MAGE_DROP = ("vqgan.decoder.", "decoder_", "mask_token", "mlm_layer.", "patch_embed.", "cls_token",
              "pos_embed", "token_emb.position_ids")
# config/vqgan.yaml: ch 128, ch_mult [1, 1, 2, 2, 4], 2 residual blocks per level, z_channels = embed_dim
# 256, 1024 codes; 256 px -> a 16x16 code grid
_MAGE_VQ = {"img_size": 256, "vq_ch": 128, "vq_ch_mult": (1, 1, 2, 2, 4), "vq_num_res_blocks": 2,
            "vq_z_channels": 256, "n_embed": 1024}

RELEASES: dict[str, Release] = {
    # DINO (facebookresearch/dino): ViT-S n=4 CLS; ViT-B n=1 CLS interleaved with the mean patch token
    "dino_vits16": Release("dino", "vit_small_patch16_224", _VIT, drop=_DINO_DROP),
    "dino_vits8": Release("dino", "vit_small_patch8_224", _VIT, drop=_DINO_DROP),
    "dino_vitb16": Release("dino", "vit_base_patch16_224", _VIT, drop=_DINO_DROP, n_last=1,
                           avgpool="interleave"),
    "dino_vitb8": Release("dino", "vit_base_patch8_224", _VIT, drop=_DINO_DROP, n_last=1,
                          avgpool="interleave"),
    # iBOT (bytedance/ibot): small n=4 CLS; base n=1 with [CLS, mean patch] concatenated
    "ibot_vits16": Release("ibot", "vit_small_patch16_224", _VIT, wrappers=("state_dict", "teacher"),
                           drop=_IBOT_DROP),
    "ibot_vitb16": Release("ibot", "vit_base_patch16_224", _VIT, wrappers=("state_dict", "teacher"),
                           drop=_IBOT_DROP, n_last=1, avgpool="concat"),
    # Mugs (sail-sg/mugs): ViT-S n=4 CLS; the relation block of pre-training is not the encoder
    "mugs_vits16": Release("mugs", "vit_small_patch16_224", _VIT, wrappers=("state_dict", "teacher"),
                           drop=_MUGS_DROP),
    # DINOv2 (facebookresearch/dinov2): 4 last CLS + mean patch token, pos_embed for 518 px
    "dinov2_vits14": Release("dinov2", "vit_small_patch14_dinov2", _DINOV2, drop=_DINOV2_DROP,
                             renames=_DINOV2_RENAMES, avgpool="concat"),
    "dinov2_vitb14": Release("dinov2", "vit_base_patch14_dinov2", _DINOV2, drop=_DINOV2_DROP,
                             renames=_DINOV2_RENAMES, avgpool="concat"),
    "dinov2_vitl14": Release("dinov2", "vit_large_patch14_dinov2", _DINOV2, drop=_DINOV2_DROP,
                             renames=_DINOV2_RENAMES, avgpool="concat"),
    "dinov2_vitg14": Release("dinov2", "vit_giant_patch14_dinov2", _DINOV2, drop=_DINOV2_DROP,
                             renames=_DINOV2_G_RENAMES, avgpool="concat"),
    # DINOv2 with 4 registers (register_tokens: no position, left out of the mean patch token)
    **{f"dinov2_vit{s}14_reg": Release("dinov2", f"vit_{size}_patch14_reg4_dinov2", _DINOV2,
                                       drop=_DINOV2_DROP,
                                       renames=(_DINOV2_G_RENAMES if s == "g" else _DINOV2_RENAMES)
                                       + ((r"^register_tokens$", "reg_token"),),
                                       avgpool="concat", fold_cls_pos=True)
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))},
    # BEiT v2 (microsoft/unilm beit2): shared relative position bias, no absolute pos_embed, q/v bias,
    # layer scale; linear = the last block's [CLS, mean patch] WITHOUT the final norm
    "beitv2_vitb16": Release("beitv2", "beitv2_base_patch16_224", _BEITV2, wrappers=("model", "module"),
                             drop=_BEITV2_DROP, n_last=1, avgpool="concat",
                             final_norm=False),
    # MAGE (LTH14/mage): [0, 1] pixels at 256 px; linear = fc_norm(mean patch token), fc_norm = LayerNorm
    # with weight 1 / bias 0 (not in the file, frozen by the probe); the file's final norm is for dense use
    "mage_vitb16": Release("mage", "mage_vit_base_patch16",
                           {"embed_dim": 768, "depth": 12, "num_heads": 12, **_MAGE_VQ},
                           wrappers=("model",), select=(), strip=("module.",), drop=_MAGE_DROP, n_last=0,
                           avgpool="mean", final_norm=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                           input_size=256),
    "mage_vitl16": Release("mage", "mage_vit_large_patch16",
                           {"embed_dim": 1024, "depth": 24, "num_heads": 16, **_MAGE_VQ},
                           wrappers=("model",), select=(), strip=("module.",), drop=_MAGE_DROP, n_last=0,
                           avgpool="mean", final_norm=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                           input_size=256),
}

# Releases asked for that are not supported, and why (a ConfigError names the reason).
UNSUPPORTED: dict[str, str] = {
    "harmon": "Harmon's shared encoder is a MAR encoder over KL-16 VAE latents (plus buffer tokens), "
              "shipped inside the whole Harmon checkpoint with the LLM; its stem is a VAE, not a pixel "
              "patch embedding, so it is not a timm ViT",
}
