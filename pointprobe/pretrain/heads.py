"""Prototype (online clustering) heads of Sonata-style self-distillation."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PrototypeHead"]


class PrototypeHead(nn.Module):
    """``Linear(C, hidden) -> GELU -> Linear(hidden, bottleneck) -> L2 norm -> prototypes``.

    The prototype layer is a bias-free linear layer with weight normalisation and a frozen unit gain
    (each prototype row has norm 1), so its outputs are cosine similarities in [-1, 1] (the logits of
    the distillation loss).
    """

    def __init__(self, in_channels: int, hidden_channels: int = 4096, bottleneck_channels: int = 256,
                 num_prototypes: int = 4096):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels),
            nn.GELU(),
            nn.Linear(hidden_channels, bottleneck_channels),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight_norm direction "v"; the gain g is fixed to 1 (Sonata/DINO freeze it)
        self.prototype_v = nn.Parameter(torch.empty(num_prototypes, bottleneck_channels))
        nn.init.trunc_normal_(self.prototype_v, std=0.02)
        self.num_prototypes = num_prototypes

    def prototypes(self) -> torch.Tensor:
        """The (K, bottleneck) unit-norm prototype matrix."""
        return F.normalize(self.prototype_v, dim=1)

    def embed(self, feat: torch.Tensor) -> torch.Tensor:
        """L2-normalised bottleneck embedding (N, bottleneck)."""
        z = self.mlp(feat)
        eps = 1e-6 if z.dtype in (torch.float16, torch.bfloat16) else 1e-12
        return F.normalize(z, dim=-1, eps=eps)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Prototype similarities (N, K)."""
        z = self.embed(feat)
        return z @ self.prototypes().to(z.dtype).t()
