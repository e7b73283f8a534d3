"""Mugs (multi-granular self-supervision) as an option of the point pre-training (``loss.mugs_weight``).

Mugs (sail-sg/mugs) supervises an image encoder at three granularities of its image embedding. On point
clouds the *instance* is a view: a scene crop (a masked global view or a local view for the student, an
unmasked global view for the teacher), and its embedding is the mean of the view's up-cast point
features (the features the other heads see). Student views are paired with every teacher global view of
the same scene.

- Instance: projector MLP (+ predictor MLP on the student), L2-normalised; InfoNCE between the student's
  prediction and the teacher's target, the negatives a queue of past teacher targets.
- Local group: each view embedding (the query) and its top-k neighbours (cosine) in a memory of past
  teacher view embeddings go through a transformer block (the "relation block"); its output at the query
  token, normalised, goes through a projector (+ predictor); InfoNCE against the teacher's local-group
  target with an own negatives queue. Both student and teacher look their neighbours up in the teacher
  memory (Mugs keeps a second, student memory filled with student features of weakly augmented images).
- Group: a prototype head (``PrototypeHead``) on the view embedding; cross-entropy between the student's
  ``softmax(s / student_temp)`` and the teacher's ``softmax((t - centre) / teacher_temp)``, the centre an
  EMA of the teacher's mean logits (DINO / Mugs ``ClusteringLoss``).

Each term averages its large-view (masked global) pairs and its small-view (local) pairs and takes the
mean of the two (as Mugs does for its 224 / 96 px crops). The Mugs term is the per-granularity weighted
mean of the three terms. Queues start as random unit vectors (as in Mugs), fixed by ``train.seed``; the
memory is searched only over its written rows (and the first ``top_k`` rows until that many are written).
After every micro-batch the teacher's view embeddings, instance and local-group targets are written into
the queues (gathered over ranks in rank order) and the centre moves. ``MugsState`` holds queues, memory,
write pointer and centre; it is saved in the training checkpoint so a resumed run continues exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import dist
from common.errors import ConfigError
from common.scatter import segment_reduce
from pointprobe.models.structure import PointBatch
from pointprobe.pretrain.heads import PrototypeHead

__all__ = ["MugsHeads", "MugsState", "pool_views", "info_nce", "centred_cross_entropy", "mugs_pairs",
           "split_mean", "GRANULARITIES"]

GRANULARITIES = ("instance", "local_group", "group")


def _mlp(n_layers: int, c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """``n_layers`` bias-free linear layers with GELU between them (Mugs' projector / predictor)."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        a, b = (c_in if i == 0 else hidden), (c_out if i == n_layers - 1 else hidden)
        layers.append(nn.Linear(a, b, bias=False))
        if i < n_layers - 1:
            layers.append(nn.GELU())
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
    return nn.Sequential(*layers)


class ProjectPredict(nn.Module):
    """Projector (3 layers) and predictor (2 layers) of Mugs' instance / local-group heads."""

    def __init__(self, c_in: int, hidden: int, dim: int):
        super().__init__()
        self.projector = _mlp(3, c_in, hidden, dim)
        self.predictor = _mlp(2, dim, hidden, dim)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher output: the normalised projection."""
        return F.normalize(self.projector(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Student output: the normalised prediction of the normalised projection."""
        return F.normalize(self.predictor(self.target(x)), dim=-1)


class RelationBlock(nn.Module):
    """Pre-norm transformer block over ``[query, neighbours]``; returns the normed query token."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"config key 'loss.mugs_relation_heads' ({heads}) must divide the head input "
                              f"width {dim}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """``query`` (n, C), ``neighbours`` (n, k, C) -> (n, C)."""
        x = torch.cat([query.unsqueeze(1), neighbours.to(query.dtype)], dim=1)
        n, t, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, c))
        x = x + self.mlp(self.norm2(x))
        return self.norm(x[:, 0])


class MugsHeads(nn.Module):
    """The Mugs heads of the student (the teacher is an EMA copy); a granularity of weight 0 has none."""

    def __init__(self, c_in: int, hidden: int, dim: int, prototypes: int, relation_heads: int,
                 granularities: tuple[str, ...] = GRANULARITIES):
        super().__init__()
        self.instance = ProjectPredict(c_in, hidden, dim) if "instance" in granularities else None
        self.relation = RelationBlock(c_in, relation_heads) if "local_group" in granularities else None
        self.local_group = ProjectPredict(c_in, hidden, dim) if "local_group" in granularities else None
        self.group = PrototypeHead(c_in, hidden, dim, prototypes) if "group" in granularities else None

    def forward(self, pooled: torch.Tensor, neighbours: torch.Tensor | None, target: bool = False) -> dict:
        """Outputs per granularity for view embeddings ``pooled`` (n, C); ``neighbours`` (n, k, C) from the
        memory (needed with a local-group head). ``target``: the teacher's outputs (no predictor)."""
        out: dict[str, torch.Tensor] = {}
        if self.instance is not None:
            out["instance"] = self.instance.target(pooled) if target else self.instance(pooled)
        if self.local_group is not None:
            if neighbours is None:
                raise ValueError("MugsHeads: the local-group head needs the memory neighbours")
            rel = self.relation(pooled, neighbours)
            out["local_group"] = self.local_group.target(rel) if target else self.local_group(rel)
        if self.group is not None:
            out["group"] = self.group(pooled)
        return out


def pool_views(level: PointBatch) -> torch.Tensor:
    """(n_views, C) mean of the features of each view (views delimited by ``level.offset``)."""
    counts = torch.diff(level.offset, prepend=level.offset.new_zeros(1))
    view = torch.repeat_interleave(torch.arange(len(counts), device=level.feat.device), counts)
    return segment_reduce(level.feat, view, len(counts), "mean")


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` from every rank, in rank order (every rank holds as many rows)."""
    if not dist.is_distributed():
        return x
    w, r, n = dist.world_size(), dist.rank(), x.shape[0]
    buf = x.new_zeros((w * n,) + tuple(x.shape[1:]))
    buf[r * n:(r + 1) * n] = x
    return dist.all_reduce_tensor(buf, "sum")


class MugsState(nn.Module):
    """Queues (instance / local-group negatives), the neighbour memory, its write pointer and the group
    centre: buffers only, saved in the training checkpoint."""

    def __init__(self, size: int, mem_dim: int, dim: int, prototypes: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed) + 16)
        self.register_buffer("memory", F.normalize(torch.randn(size, mem_dim, generator=g), dim=1))
        self.register_buffer("instance_queue", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("local_group_queue", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows written so far (<= size)
        self.register_buffer("center", torch.zeros(1, prototypes))
        self.size = size

    @torch.no_grad()
    def neighbours(self, query: torch.Tensor, k: int) -> torch.Tensor:
        """(n, k, C) the ``k`` rows of the memory most cosine-similar to each row of ``query`` (among the
        written rows; the first ``k`` rows until ``k`` are written)."""
        n_cand = max(int(self.filled), k)
        mem = self.memory[:n_cand]
        sim = F.normalize(query.float(), dim=1) @ F.normalize(mem, dim=1).t()
        idx = sim.topk(k, dim=1).indices
        return mem[idx]

    @torch.no_grad()
    def enqueue(self, memory: torch.Tensor, instance: torch.Tensor | None,
                local_group: torch.Tensor | None) -> None:
        """Write the rows (the same count in each; gathered over ranks) at the pointer, wrapping around."""
        memory = _gather_rows(memory.float())
        n = memory.shape[0]
        idx = (int(self.ptr) + torch.arange(n, device=memory.device)) % self.size
        rows = slice(max(0, n - self.size), n)  # more rows than the queue holds: the last ones
        idx = idx[rows]
        self.memory[idx] = memory[rows]
        if instance is not None:
            self.instance_queue[idx] = _gather_rows(instance.float())[rows]
        if local_group is not None:
            self.local_group_queue[idx] = _gather_rows(local_group.float())[rows]
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    @torch.no_grad()
    def update_center(self, logits: torch.Tensor, momentum: float) -> None:
        """``centre = momentum * centre + (1 - momentum) * mean of the teacher logits`` (over ranks)."""
        mean = dist.all_reduce_tensor(logits.float().mean(0, keepdim=True), "mean")
        self.center.mul_(momentum).add_(mean, alpha=1.0 - momentum)


def info_nce(pred: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor, temp: float) -> torch.Tensor:
    """Per-row InfoNCE ``-log softmax([p.t, p.n_1 .. p.n_Q] / temp)[0]`` (rows of ``pred`` / ``target``
    paired, ``negatives`` (Q, D) shared)."""
    pred = pred.float()
    pos = (pred * target.float()).sum(1, keepdim=True)
    neg = pred @ negatives.float().t()
    logits = torch.cat([pos, neg], dim=1) / temp
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def centred_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
                          student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Per-row ``-sum softmax((t - centre) / teacher_temp) * log_softmax(s / student_temp)``."""
    q = torch.softmax((teacher.float() - center) / teacher_temp, dim=-1)
    return -(q * F.log_softmax(student.float() / student_temp, dim=-1)).sum(-1)


def mugs_pairs(n_scenes: int, n_global: int, n_copies: int, n_local: int) -> tuple[torch.Tensor, ...]:
    """(student view, teacher view, is_small) for every student view (the masked global views, scene-major
    with ``n_copies`` per global view, then the local views) and every teacher global view of its scene."""
    s, t, small = [], [], []
    per_scene = n_global * n_copies
    for j in range(n_scenes):
        for v in range(per_scene):
            for g in range(n_global):
                s.append(j * per_scene + v)
                t.append(j * n_global + g)
                small.append(False)
        for v in range(n_local):
            for g in range(n_global):
                s.append(n_scenes * per_scene + j * n_local + v)
                t.append(j * n_global + g)
                small.append(True)
    return torch.tensor(s), torch.tensor(t), torch.tensor(small)


def split_mean(per_pair: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """Mean of the large-view pairs' and the small-view pairs' means (one of them when the other is
    empty), as Mugs averages its global- and local-crop losses."""
    parts = [per_pair[m].mean() for m in (~small, small) if bool(m.any())]
    return sum(parts) / len(parts)
