"""MAGE's image encoder (LTH14/mage, the linear-probe model of ``models_vit_mage.py``), own code where timm
has no module: the frozen VQGAN tokenizer and the BERT token stem; the ViT blocks are timm's ``Block``.

The encoder does not read pixels through a patch embedding. Pixels in [0, 1] (no mean / std) go through
the VQGAN encoder (the JAX-VQGAN port of MaskGIT: bias-free 3x3 convolutions, GroupNorm(32, eps 1e-6) +
swish residual blocks, 2x2 average pooling between levels, no attention, no ``quant_conv``), each position
takes the id of its nearest codebook entry (squared Euclidean distance), a fake class id
(``codebook_size + 76``, 1100 for the 1024-entry codebook) is prepended, and BERT embeddings (word +
learned 1-D position embeddings, LayerNorm eps 1e-6) feed the blocks. The ids are discrete, so nothing
differentiates through the tokenizer (MAGE freezes it).

Representations (:class:`MageViT`):

* linear (``--global_pool``, the README's linear probe): the mean of the last block's patch tokens through
  ``fc_norm``, a LayerNorm that the checkpoint does not hold and the probe does not train, i.e. weight 1,
  bias 0: a parameter-free standardisation, ``(B, D)``. The pre-trained final ``norm`` is not used there.
* dense: the last block's patch tokens through the pre-trained final ``norm`` (the encoder output that
  MAGE's decoder was trained on, and what the ``--cls_token`` variant normalises with), ``(B, 16, 16, D)``.

The BERT position table has ``grid * grid + 1`` rows, so only the native grid (256 px for 16x16) is
defined; other sizes are refused.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from common.image_models.releases import Release

GROUPS = 32  # GroupNorm groups of the VQGAN (fixed in the release's code)
FAKE_CLASS_OFFSET = 1100 - 1024  # the fake class id is codebook_size + 76 (1100 for 1024 codes)


@dataclass(frozen=True)
class MageArch:
    """Sizes of a MAGE encoder: the ViT and the VQGAN encoder (``config/vqgan.yaml``)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    img_size: int = 256
    vq_ch: int = 128
    vq_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    vq_num_res_blocks: int = 2
    vq_z_channels: int = 256  # = the codebook entry size (no quant_conv in between)
    n_embed: int = 1024

    @property
    def patch(self) -> int:
        """Pixels per code id along each side (the VQGAN's downsampling factor)."""
        return 2 ** (len(self.vq_ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


class VQResBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, added to the input; when the width changes the
    release's code adds ``nin_shortcut`` (1x1) of the residual branch instead of the input."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(h)
        return skip + h


class VQLevel(nn.Module):
    """The residual blocks of one resolution (``down.<i>.block.<j>``)."""

    def __init__(self, blocks: Sequence[VQResBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class VQMiddle(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = VQResBlock(channels, channels)
        self.block_2 = VQResBlock(channels, channels)


class VQGANEncoder(nn.Module):
    """Pixels (B, 3, H, W) -> latents (B, z_channels, H / patch, W / patch); key names as the release's."""

    def __init__(self, arch: MageArch):
        super().__init__()
        ch = arch.vq_ch
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        levels, c = [], ch
        for mult in arch.vq_ch_mult:
            blocks = []
            for _ in range(arch.vq_num_res_blocks):
                blocks.append(VQResBlock(c, ch * mult))
                c = ch * mult
            levels.append(VQLevel(blocks))
        self.down = nn.ModuleList(levels)
        self.mid = VQMiddle(c)
        self.norm_out = _group_norm(c)
        self.conv_out = nn.Conv2d(c, arch.vq_z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for blk in level.block:
                h = blk(h)
            if i < len(self.down) - 1:  # downsampling without a convolution: 2x2 average pooling
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class VQQuantizer(nn.Module):
    """The codebook (``quantize.embedding``): each latent's nearest entry id."""

    def __init__(self, n_embed: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, h, w) code ids, argmin of ||z - e||^2 = |z|^2 + |e|^2 - 2 z.e."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        book = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.t()
        return dist.argmin(dim=1).reshape(b, h, w)


class VQGANTokenizer(nn.Module):
    """The encoder half of MAGE's VQGAN (``vqgan.encoder.*``, ``vqgan.quantize.*``)."""

    def __init__(self, arch: MageArch):
        super().__init__()
        self.encoder = VQGANEncoder(arch)
        self.quantize = VQQuantizer(arch.n_embed, arch.vq_z_channels)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.encoder(x))


class TokenEmbedding(nn.Module):
    """BERT embeddings (``token_emb.*``): word + learned 1-D position embeddings, LayerNorm (eps 1e-6).
    The release's dropout (0.1 in training) is left out: the encoder here is frozen."""

    def __init__(self, vocab_size: int, dim: int, max_positions: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-6)  # noqa: N815 - the release's key name

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_embeddings.weight[: ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(ids) + pos)


class MageEncoder(nn.Module):
    """The modules (and key names) of MAGE's encoder: ``vqgan``, ``token_emb``, ``blocks``, ``norm``."""

    def __init__(self, arch: MageArch):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.arch = arch
        self.embed_dim = arch.embed_dim
        self.codebook_size = arch.n_embed
        self.fake_class_id = arch.n_embed + FAKE_CLASS_OFFSET
        vocab = arch.n_embed + 1000 + 1  # codes, 1000 class ids, the mask id
        self.vqgan = VQGANTokenizer(arch)
        self.token_emb = TokenEmbedding(vocab, arch.embed_dim, arch.grid * arch.grid + 1)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(Block(arch.embed_dim, arch.num_heads, arch.mlp_ratio, qkv_bias=True,
                                          norm_layer=norm) for _ in range(arch.depth))
        self.norm = norm(arch.embed_dim)

    def token_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> (B, 1 + h*w) ids: the fake class id, then the code ids in row-major order."""
        codes = self.vqgan(x).flatten(1)
        cls = torch.full((codes.shape[0], 1), self.fake_class_id, dtype=codes.dtype, device=codes.device)
        return torch.cat([cls, codes], dim=1)


class MageViT(nn.Module):
    """MAGE's encoder with the seed releases' interface (see :class:`common.image_models.ImageViT`):
    ``features(x) -> (linear (B, D), patch tokens (B, h, w, D))``; ``x``: pixels in [0, 1]."""

    def __init__(self, name: str, release: Release, model: MageEncoder):
        super().__init__()
        self.name, self.release, self.model = name, release, model
        self.patch = model.arch.patch
        self.embed_dim = model.embed_dim
        self.depth = len(model.blocks)
        self.linear_dim = self.embed_dim
        self.grid = (model.arch.grid, model.arch.grid)
        self.num_prefix = 1  # the fake class token
        self.fixed_prefixes = ("vqgan.",)  # frozen by design (and ids are not differentiable)

    def block_outputs(self, x: torch.Tensor, last: int | None = None
                      ) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Outputs (B, 1 + h*w, D) of the last ``last`` blocks (default all), before any norm."""
        hh, ww = x.shape[-2:]
        if (hh // self.patch, ww // self.patch) != self.grid or hh % self.patch or ww % self.patch:
            g, px = self.grid, self.grid[0] * self.patch
            raise ValueError(f"{self.name}: MAGE's position embeddings are for a {g[0]}x{g[1]} code grid "
                             f"({px} px), got {hh}x{ww}")
        t = self.model.token_emb(self.model.token_ids(x))
        keep = self.depth if last is None else last
        outs = []
        for i, blk in enumerate(self.model.blocks):
            t = blk(t)
            if i >= self.depth - keep:
                outs.append(t)
        return outs, self.grid

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fc_norm of the mean patch token (B, D), patch tokens after the final norm (B, h, w, D))."""
        outs, (h, w) = self.block_outputs(x, last=1)
        last = outs[-1]
        lin = F.layer_norm(last[:, 1:].mean(dim=1), (self.embed_dim,), eps=1e-6)
        patches = self.model.norm(last)[:, 1:].reshape(x.shape[0], h, w, -1)
        return lin, patches

    def linear_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_features(x)


def build_mage(name: str, release: Release, **arch: object) -> MageViT:
    """Release ``name``'s MAGE encoder with random weights (PyTorch's default initialisation)."""
    kwargs = {**release.timm_kwargs, **arch}
    if "vq_ch_mult" in kwargs:
        kwargs["vq_ch_mult"] = tuple(kwargs["vq_ch_mult"])  # type: ignore[arg-type]
    return MageViT(name, release, MageEncoder(MageArch(**kwargs))).eval()  # type: ignore[arg-type]
