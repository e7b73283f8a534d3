"""pytorchvideo model-zoo encoders (X3D, Slow, SlowFast, MViT, R(2+1)D) as frozen feature extractors.

Each network is built with the ``pytorchvideo.models`` builder and the configuration of its torch.hub
entry; the classification projection is removed and features are read before it:

* X3D: the head's ``ProjectedPool`` pre-projection map (tokens) and its global-average + post-conv
  output (pooled, 2048-d).
* Slow / R(2+1)D: the last stage's map (tokens) and its global average (pooled, 2048-d).
* SlowFast: slow and fast maps, the fast one average-pooled to the slow grid and concatenated
  (tokens, 2304-d); pooled = both global averages concatenated. The hub head pools with a fixed
  (T, 7, 7) window; global averaging equals it at the native 224 px and differs slightly at 256.
* MViT: the normalised tokens after the last block (tokens, 768-d) and the CLS token (pooled).

Weights come from a local file (the zoo's ``.pyth`` layout ``{"model_state": state_dict}``), from the
torch.hub cache / a download when ``checkpoint="hub"`` and the machine is online, or random init.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import sha256_file
from common.errors import CheckpointError, ConfigError
from videoprobe.models.base import (
    KINETICS_MEAN,
    KINETICS_STD,
    BlockLayout,
    EncoderOutput,
    VideoEncoder,
    load_strict,
    offline,
    read_checkpoint,
    seeded_init,
    strip_prefixes,
    unwrap_state_dict,
)

log = logging.getLogger(__name__)

ZOO_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo"


@dataclass(frozen=True)
class ZooSpec:
    """Builder, hub configuration and the input recipe the weights were trained with."""

    builder: str  # attribute of pytorchvideo.models
    kwargs: dict[str, Any]
    clip_len: int
    frame_step: int
    crop_size: int
    short_side: int
    url: str
    family: str  # "resnet" | "x3d" | "slowfast" | "mvit"
    extra: dict[str, Any] = field(default_factory=dict)


_MVIT_16x4 = {
    "spatial_size": 224,
    "temporal_size": 16,
    "embed_dim_mul": [[1, 2.0], [3, 2.0], [14, 2.0]],
    "atten_head_mul": [[1, 2.0], [3, 2.0], [14, 2.0]],
    "pool_q_stride_size": [[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]],
    "pool_kv_stride_adaptive": [1, 8, 8],
    "pool_kvq_kernel": [3, 3, 3],
}

ZOO_SPECS: dict[str, ZooSpec] = {
    "x3d_s": ZooSpec("x3d.create_x3d", {"input_clip_length": 13, "input_crop_size": 160},
                     13, 6, 160, 182, f"{ZOO_URL}/kinetics/X3D_S.pyth", "x3d"),
    "x3d_m": ZooSpec("x3d.create_x3d", {"input_clip_length": 16, "input_crop_size": 224},
                     16, 5, 224, 256, f"{ZOO_URL}/kinetics/X3D_M.pyth", "x3d"),
    "slow_r50": ZooSpec("resnet.create_resnet",
                        {"stem_conv_kernel_size": (1, 7, 7), "head_pool_kernel_size": (8, 7, 7),
                         "model_depth": 50},
                        8, 8, 256, 256, f"{ZOO_URL}/kinetics/SLOW_8x8_R50.pyth", "resnet"),
    "slowfast_r50": ZooSpec("slowfast.create_slowfast",
                            {"model_depth": 50, "slowfast_fusion_conv_kernel_size": (7, 1, 1)},
                            32, 2, 256, 256, f"{ZOO_URL}/kinetics/SLOWFAST_8x8_R50.pyth", "slowfast",
                            {"alpha": 4}),
    "mvit_base_16x4": ZooSpec("vision_transformers.create_multiscale_vision_transformers", _MVIT_16x4,
                              16, 4, 224, 256, f"{ZOO_URL}/kinetics/MVIT_B_16x4.pyth", "mvit"),
    "r2plus1d_r50": ZooSpec("r2plus1d.create_r2plus1d", {"dropout_rate": 0.5},
                            16, 4, 224, 256, f"{ZOO_URL}/kinetics/R2PLUS1D_16x4_R50.pyth", "resnet"),
}


def _builder(path: str) -> Callable[..., nn.Module]:
    import importlib
    import warnings

    mod_name, fn = path.rsplit(".", 1)
    with warnings.catch_warnings():  # pytorchvideo 0.1.5 calls the deprecated torch.jit.script at import
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        mod = importlib.import_module(f"pytorchvideo.models.{mod_name}")
    return getattr(mod, fn)


def _find_head(net: nn.Module) -> str:
    """The module path of the classification head (the module holding the ``proj`` Linear)."""
    for name, mod in net.named_modules():
        if isinstance(getattr(mod, "proj", None), nn.Linear) and hasattr(mod, "dropout"):
            return name
    raise RuntimeError(f"{type(net).__name__}: no classification head with a 'proj' Linear found")


class ZooEncoder(VideoEncoder):
    """A pytorchvideo zoo network with its classifier removed."""

    def __init__(self, name: str, spec: ZooSpec, **overrides: Any):
        super().__init__()
        self.name = name
        self.spec = spec
        self.family = spec.family
        kwargs = {**spec.kwargs, **overrides}
        self.net = _builder(spec.builder)(**kwargs)
        self._head_path = _find_head(self.net)
        self._proj_prefix = f"{self._head_path}.proj."
        head = self.head
        self.embed_dim = int(head.proj.in_features)
        head.proj = None  # features are read before the projection
        self.clip_len = int(kwargs.get("input_clip_length", kwargs.get("temporal_size", spec.clip_len)))
        spatial = _first(kwargs.get("spatial_size", spec.crop_size))
        self.crop_size = int(kwargs.get("input_crop_size", spatial))
        self.frame_step = spec.frame_step
        self.short_side = max(spec.short_side, self.crop_size)
        self.mean, self.std = KINETICS_MEAN, KINETICS_STD
        self.alpha = int(spec.extra.get("alpha", 1))
        self.frames_multiple = self.alpha
        if self.family == "x3d":
            self.token_dim = int(head.pool.pre_conv.out_channels)
        else:
            self.token_dim = self.embed_dim
        if self.family == "mvit":
            self._mvit_size = (int(kwargs["temporal_size"]), _first(kwargs["spatial_size"]))

    @property
    def head(self) -> nn.Module:
        """The (projection-less) classification head inside ``net``."""
        return self.net.get_submodule(self._head_path)

    def block_layout(self) -> BlockLayout:
        """MViT: ``patch_embed`` (with the cls / position embeddings), ``blocks.i``, ``norm``. The CNNs:
        the builder's ``net.blocks`` in order (stem, then every residual block of each stage; SlowFast:
        one block per fused stage; X3D: the head's pre/post convolutions last)."""
        if self.family == "mvit":
            net = self.net
            layout: BlockLayout = [("patch_embed", ["net.patch_embed.", "net.cls_positional_encoding."])]
            layout += [(f"blocks.{i}", [f"net.blocks.{i}."]) for i in range(len(net.blocks))]
            if net.norm_embed is not None:
                layout.append(("norm", ["net.norm_embed."]))
            return layout
        layout = []
        for i, blk in enumerate(self.net.blocks):
            if next(blk.parameters(), None) is None:
                continue
            res = getattr(blk, "res_blocks", None)
            if isinstance(res, nn.ModuleList):
                layout += [(f"stage{i}.block{j}", [f"net.blocks.{i}.res_blocks.{j}."])
                           for j in range(len(res))]
            else:
                name = "stem" if i == 0 else ("head_pool" if i == len(self.net.blocks) - 1 else f"stage{i}")
                layout.append((name, [f"net.blocks.{i}."]))
        return layout

    # ------------------------------------------------------------------------------------ forward
    def encode(self, x: torch.Tensor) -> EncoderOutput:
        if self.family == "mvit":
            return self._encode_mvit(x)
        if self.family == "slowfast":
            return self._encode_slowfast(x)
        feats = x
        for blk in self.net.blocks[:-1]:
            feats = blk(feats)
        pool = self.head.pool
        if self.family == "x3d":
            t = pool.pre_act(pool.pre_norm(pool.pre_conv(feats)))
            g = t.mean(dim=(2, 3, 4), keepdim=True)
            pooled = pool.post_act(pool.post_conv(g)).flatten(1)
        else:
            t = feats
            pooled = t.mean(dim=(2, 3, 4))
        return EncoderOutput(tokens=t.permute(0, 2, 3, 4, 1), pooled=pooled)

    def _encode_slowfast(self, x: torch.Tensor) -> EncoderOutput:
        t = x.shape[2]
        idx = torch.linspace(0, t - 1, t // self.alpha, device=x.device).long()
        feats: list[torch.Tensor] = [x.index_select(2, idx), x]
        for blk in self.net.blocks[:5]:
            feats = blk(feats)
        slow, fast = feats
        fast_on_slow = F.adaptive_avg_pool3d(fast, slow.shape[2:])
        tokens = torch.cat([slow, fast_on_slow], dim=1).permute(0, 2, 3, 4, 1)
        pooled = torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)
        return EncoderOutput(tokens=tokens, pooled=pooled)

    def _encode_mvit(self, x: torch.Tensor) -> EncoderOutput:
        want_t, want_s = self._mvit_size
        if x.shape[2] != want_t or x.shape[3] != want_s or x.shape[4] != want_s:
            raise ValueError(
                f"{self.name}: MViT has fixed position embeddings for {want_t} frames x {want_s} px, "
                f"got {tuple(x.shape[2:])}"
            )
        net = self.net
        h = net.patch_embed(x)
        h = net.cls_positional_encoding(h)
        if net.pos_drop is not None:
            h = net.pos_drop(h)
        if net.norm_patch_embed is not None:
            h = net.norm_patch_embed(h)
        thw = net.cls_positional_encoding.patch_embed_shape
        for blk in net.blocks:
            h, thw = blk(h, thw)
        if net.norm_embed is not None:
            h = net.norm_embed(h)
        b, _, d = h.shape
        tokens = h[:, 1:].reshape(b, *thw, d)
        return EncoderOutput(tokens=tokens, pooled=h[:, 0])

    # -------------------------------------------------------------------------------- checkpoints
    def load_zoo_state(self, obj: Any, path: str | Path) -> None:
        """Load a zoo state dict (``{"model_state": ...}``), ignoring the classifier projection."""
        sd = unwrap_state_dict(obj, path, ["model_state", "state_dict", "model", "module"])
        sd = strip_prefixes(sd, ["module.", "model."])
        dropped = [k for k in sd if k.startswith(self._proj_prefix)]
        sd = {k: v for k, v in sd.items() if not k.startswith(self._proj_prefix)}
        if dropped:
            log.debug("%s: ignoring classifier keys %s", path, dropped)
        load_strict(self.net, sd, path)


def _first(v: Any) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


def hub_checkpoint_file(name: str) -> Path:
    """The local file of a zoo model's weights: the torch.hub cache, else a download when online."""
    url = ZOO_SPECS[name].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return cached
    if offline():
        raise CheckpointError(
            f"{cached}: '{name}' weights are not in the torch.hub cache and this machine is offline; "
            f"download {url} elsewhere and pass encoder.checkpoint=/path/to/file"
        )
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    except Exception as e:  # noqa: BLE001 - network errors of every kind
        raise CheckpointError(f"{url}: download failed ({e}); pass a local file") from None
    return cached


def create_zoo_encoder(
    name: str, checkpoint: str | None = None, seed: int = 0, **overrides: Any
) -> ZooEncoder:
    """Build zoo model ``name``; ``checkpoint`` is None (random init), "hub" or a local ``.pyth`` file."""
    if name not in ZOO_SPECS:
        raise ConfigError(f"unknown pytorchvideo zoo model '{name}' (known: {', '.join(ZOO_SPECS)})")
    if checkpoint and overrides:
        raise ConfigError(f"{name}: architecture overrides {sorted(overrides)} cannot go with a checkpoint")
    with seeded_init(seed):
        enc = ZooEncoder(name, ZOO_SPECS[name], **overrides)
    if checkpoint is None:
        enc.checkpoint_id = f"random:{seed}"
        return enc
    path = hub_checkpoint_file(name) if checkpoint == "hub" else Path(checkpoint)
    enc.load_zoo_state(read_checkpoint(path), path)
    enc.checkpoint_path = str(path)
    enc.checkpoint_id = sha256_file(path)
    return enc
