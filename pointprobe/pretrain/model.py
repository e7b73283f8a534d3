"""What pre-training trains: the backbone (any ``pointprobe.models.ENCODERS`` name, built with a mask
token and drop path), the two prototype heads (and the optional iBOT / Mugs heads), and the optimiser's
parameter groups (layer-wise lr decay over the blocks the encoder declares in
``PointEncoder.block_layout``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from common.errors import ConfigError
from pointprobe.models.registry import create_encoder
from pointprobe.models.structure import PointBatch, PointEncoder, block_index, upcast
from pointprobe.pretrain.config import PretrainLossConfig, PretrainModelConfig
from pointprobe.pretrain.heads import PrototypeHead
from pointprobe.pretrain.mugs import GRANULARITIES, MugsHeads, MugsState, pool_views

__all__ = ["build_backbone", "DistillModel", "head_in_channels", "block_index", "param_groups",
           "mugs_granularities", "mugs_widths"]


def build_backbone(cfg: PretrainModelConfig, drop_path: float) -> PointEncoder:
    """The backbone named ``cfg.backbone`` with a mask token and ``drop_path`` (what pre-training needs
    of an encoder: see ``PointEncoder``)."""
    extra = {"residual_decay": cfg.residual_decay} if cfg.residual_decay != 1.0 else {}
    return create_encoder(cfg.backbone, **{**cfg.backbone_config, "drop_path": drop_path, "mask_token": True,
                                           **extra})


class DistillModel(nn.Module):
    """Backbone + mask head + unmask head (+ the iBOT head when ``ibot_head``, the Mugs heads when
    ``mugs``) (the student; the teacher is a copy without drop path)."""

    def __init__(self, backbone: PointEncoder, head_in: int, cfg: PretrainModelConfig,
                 ibot_head: bool = False, mugs: PretrainLossConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.mask_head = PrototypeHead(head_in, cfg.head_hidden, cfg.head_bottleneck, cfg.num_prototypes)
        self.unmask_head = PrototypeHead(head_in, cfg.head_hidden, cfg.head_bottleneck, cfg.num_prototypes)
        self.ibot_head = (PrototypeHead(head_in, cfg.head_hidden, cfg.head_bottleneck, cfg.num_prototypes)
                          if ibot_head else None)
        self.mugs = None  # built last: the other heads start as they do without Mugs
        if mugs is not None and mugs.mugs_weight > 0:
            hidden, dim, protos = mugs_widths(cfg, mugs)
            self.mugs = MugsHeads(head_in, hidden, dim, protos, mugs.mugs_relation_heads,
                                  mugs_granularities(mugs))
        self.upcast_steps = cfg.upcast_steps

    def level(self, point: PointBatch) -> PointBatch:
        """Backbone + up-cast: the head level with concatenated features."""
        out = self.backbone(point)
        return upcast(out, steps=self.upcast_steps)

    def forward(self, masked: PointBatch, local: PointBatch | None, mugs_state: MugsState | None = None,
                mugs_topk: int = 1, unmask: bool = True) -> dict:
        """Student pass: every input in one call (one DDP forward per backward). ``mugs_state``: the Mugs
        heads run on the view embeddings (masked views, then local views), neighbours from its memory;
        ``unmask`` false: no unmask-head logits for the local views."""
        m = self.level(masked)
        res = {"masked": m, "masked_logits": self.mask_head(m.feat)}
        if self.ibot_head is not None:
            res["ibot_logits"] = self.ibot_head(m.feat)
        if local is not None:
            lv = self.level(local)
            res["local"] = lv
            if unmask:
                res["local_logits"] = self.unmask_head(lv.feat)
        if self.mugs is not None and mugs_state is not None:
            pooled = pool_views(m) if local is None else torch.cat([pool_views(m), pool_views(res["local"])])
            nb = mugs_state.neighbours(pooled.detach(), mugs_topk) if self.mugs.relation is not None else None
            res["mugs"] = self.mugs(pooled, nb)
        return res


def mugs_granularities(lc: PretrainLossConfig) -> tuple[str, ...]:
    """The Mugs granularities with a positive weight."""
    ws = (lc.mugs_instance_weight, lc.mugs_local_group_weight, lc.mugs_group_weight)
    return tuple(g for g, w in zip(GRANULARITIES, ws) if w > 0)


def mugs_widths(cfg: PretrainModelConfig, lc: PretrainLossConfig) -> tuple[int, int, int]:
    """(hidden, embedding, prototypes) of the Mugs heads (0 in ``loss.mugs_*``: the ``model.head_*``)."""
    return (lc.mugs_hidden or cfg.head_hidden, lc.mugs_dim or cfg.head_bottleneck,
            lc.mugs_prototypes or cfg.num_prototypes)


def head_in_channels(backbone: PointEncoder, upcast_steps: int) -> int:
    """Width of the up-cast features the heads see."""
    return backbone.feature_dim(upcast_steps)


def param_groups(model: DistillModel, layer_decay: float) -> list[dict]:
    """AdamW groups: lr scale ``layer_decay ** (n_blocks - 1 - block)`` for the encoder's blocks (its
    ``block_layout()``, 1 for every other parameter); no weight decay on biases, norms and the mask token.
    With ``layer_decay != 1`` an encoder that declares no block layout is a ``ConfigError``."""
    layout: list = []
    if layer_decay != 1.0:
        try:
            layout = model.backbone.block_layout()
        except NotImplementedError as e:
            raise ConfigError(f"config key 'optim.layer_decay' is {layer_decay} but {e}; declare it or set "
                              f"optim.layer_decay=1.0") from None
    n_blocks = len(layout)
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        idx = block_index(name[len("backbone."):], layout) if name.startswith("backbone.") else None
        scale = layer_decay ** (n_blocks - 1 - idx) if idx is not None else 1.0
        decay = not (p.ndim <= 1 or name.endswith(".bias") or "mask_token" in name)
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr_scale": s, "decay": d}
            for (s, d), ps in sorted(groups.items(), key=lambda x: x[0])]
