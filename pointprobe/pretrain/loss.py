"""Sinkhorn-Knopp centring of teacher logits and the DINO-style distillation cross-entropy.

Distributed: the Sinkhorn normalisations use global sums (``all_reduce`` of the total and of the
per-prototype row sums, global point count), so the targets are the same whether a batch is processed
by one process or split over several.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common import dist
from common.scatter import segment_reduce

__all__ = ["sinkhorn_knopp", "distill_loss", "assignment_entropy"]


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, n_iter: int = 3) -> torch.Tensor:
    """Soft assignments (n, K) of n samples to K prototypes from teacher ``logits`` (n, K).

    ``Q = exp(logits / temp)``, normalised to sum 1, then ``n_iter`` rounds of: each prototype's total
    weight := 1/K (sums over every rank), each sample's weight := 1/N (N = samples over all ranks).
    Rows of the result sum to 1 (an assignment per sample). Computed in float32.
    """
    if logits.dim() != 2:
        raise ValueError(f"sinkhorn_knopp: logits must be (n, K), got {tuple(logits.shape)}")
    x = logits.float() / temp
    k = x.shape[1]
    local_max = x.max() if x.numel() else torch.tensor(float("-inf"), device=x.device)
    gmax = dist.all_reduce_tensor(local_max.clone().reshape(1), "max")
    q = torch.exp(x - gmax).t()  # (K, n)
    n_total = dist.all_reduce_tensor(torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device), "sum")
    n_total = float(n_total.item())
    if n_total == 0:
        return q.t()
    total = dist.all_reduce_tensor(q.sum().reshape(1), "sum")
    q = q / total
    for _ in range(n_iter):
        rows = dist.all_reduce_tensor(q.sum(dim=1, keepdim=True), "sum").clamp_min(1e-30)
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-30) / n_total
    q = q * n_total
    return q.t()


def distill_loss(target: torch.Tensor, student_logits: torch.Tensor, student_temp: float,
                 group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Cross-entropy ``-sum_k target_k log softmax(student / temp)_k`` per pair, averaged within each
    group (a student view), then over ``n_groups`` views (a view without pairs counts as 0)."""
    if target.shape != student_logits.shape:
        raise ValueError(f"target {tuple(target.shape)} and student {tuple(student_logits.shape)} differ")
    if n_groups <= 0:
        raise ValueError("distill_loss: n_groups must be positive")
    logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    ce = -(target.float() * logp).sum(dim=-1)
    per_view = segment_reduce(ce.unsqueeze(1), group.long(), n_groups, "mean")
    return per_view.sum() / n_groups


@torch.no_grad()
def assignment_entropy(logits: torch.Tensor, temp: float) -> tuple[float, float]:
    """(entropy of the batch-mean assignment, mean per-sample entropy), both divided by log K:
    1 = uniform use of the prototypes, near 0 = collapse onto one prototype."""
    if logits.numel() == 0:
        return float("nan"), float("nan")
    p = torch.softmax(logits.float() / temp, dim=-1)
    logk = torch.log(torch.tensor(float(p.shape[1])))
    mean_p = p.mean(0)
    h_mean = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum() / logk
    h_each = -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean() / logk
    return float(h_mean), float(h_each)
