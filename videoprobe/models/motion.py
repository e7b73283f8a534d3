"""``motion_energy``: a hand-designed, parameter-free motion descriptor (no learning, no weights).

It exists so that the offline demo can show the appearance / motion split without downloaded
weights: it sees how things move and almost nothing of what they look like, the mirror image of the
frame-wise baseline. It is not a learned video model and should not be reported as one.

Per clip: frames -> grey -> ``work_size`` x ``work_size`` (area resize). For each pair of consecutive
frames and each cell of a ``grid`` x ``grid`` layout it does block matching: the mean squared
difference between frame t+1 and frame t shifted by every displacement d with |dx|, |dy| <= ``radius``
(working pixels), turned into a soft assignment over displacements (softmin, temperature relative to
the cell's mean cost), plus the frame-difference energy mean |I_{t+1} - I_t|.

Tokens ``(B, T-1, grid, grid, D_tok)``: the displacement distribution, the expected displacement
(vx, vy), the energy and a confidence. Pooled (energy-weighted over cells and time):
displacement histogram; mean flow over the clip and over each half (direction reversals); per-cell
mean flow and energy; divergence and curl of the cell flow field (zoom, rotation) over the clip and
each half; the energy profile over time (4 bins).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.errors import ConfigError
from videoprobe.models.base import EncoderOutput, VideoEncoder


class MotionEnergyEncoder(VideoEncoder):
    """Block-matching motion statistics on a coarse grid (see the module docstring)."""

    def __init__(self, work_size: int = 32, grid: int = 4, radius: int = 2, temperature: float = 0.05,
                 clip_len: int = 16, frame_step: int = 2, crop_size: int = 112):
        super().__init__()
        if work_size % grid:
            raise ConfigError(f"motion_energy: work_size {work_size} must be a multiple of grid {grid}")
        self.name = "motion_energy"
        self.work_size, self.grid, self.radius, self.temperature = work_size, grid, radius, temperature
        self.clip_len, self.frame_step, self.crop_size, self.short_side = clip_len, frame_step, crop_size, 128
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        r = torch.arange(-radius, radius + 1, dtype=torch.float32)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self.register_buffer("disp", torch.stack([dx.flatten(), dy.flatten()], dim=1), persistent=False)
        n_disp = (2 * radius + 1) ** 2
        self.token_dim = n_disp + 4
        g2 = grid * grid
        self.embed_dim = n_disp + 6 + 3 * g2 + 6 + 4
        c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1  # cell centres in [-1, 1]
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("cell_xy", torch.stack([cx.flatten(), cy.flatten()], dim=1), persistent=False)
        self.checkpoint_id = "none"

    def _match(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """Mean squared error per cell for every displacement: (N, n_disp, grid, grid)."""
        r = self.radius
        s = self.work_size
        padded = F.pad(prev[:, None], (r, r, r, r), mode="replicate")[:, 0]
        costs = []
        for dx, dy in self.disp.tolist():
            # frame t shifted by d: content at x - d moves to x
            shifted = padded[:, r - int(dy): r - int(dy) + s, r - int(dx): r - int(dx) + s]
            costs.append((nxt - shifted) ** 2)
        cost = torch.stack(costs, dim=1)  # (N, n_disp, s, s)
        return F.adaptive_avg_pool2d(cost, self.grid)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        b, _, t, _, _ = x.shape
        if t < 2:
            raise ValueError(f"{self.name}: needs at least 2 frames, got {t}")
        g, n_disp = self.grid, self.disp.shape[0]
        grey = x.mean(dim=1)  # (B, T, H, W)
        grey = F.interpolate(grey, size=(self.work_size, self.work_size), mode="area")
        prev = grey[:, :-1].reshape(-1, self.work_size, self.work_size)
        nxt = grey[:, 1:].reshape(-1, self.work_size, self.work_size)
        cost = self._match(prev, nxt)  # (N, D, g, g)
        scale = self.temperature * cost.mean(dim=1, keepdim=True) + 1e-6
        prob = torch.softmax(-cost / scale, dim=1)
        flow = torch.einsum("ndij,dc->ncij", prob, self.disp)  # (N, 2, g, g)
        energy = F.adaptive_avg_pool2d((nxt - prev).abs()[:, None], g)[:, 0]  # (N, g, g)
        conf = prob.amax(dim=1)
        tp = t - 1
        prob = prob.reshape(b, tp, n_disp, g, g)
        flow = flow.reshape(b, tp, 2, g, g)
        energy = energy.reshape(b, tp, g, g)
        conf = conf.reshape(b, tp, g, g)

        parts = [prob.permute(0, 1, 3, 4, 2), flow.permute(0, 1, 3, 4, 2), energy[..., None], conf[..., None]]
        tokens = torch.cat(parts, dim=-1)
        w = energy / (energy.sum(dim=(1, 2, 3), keepdim=True) + 1e-8)  # weights over (time, cells)
        hist = torch.einsum("btij,btdij->bd", w, prob)
        halves = [slice(0, max(1, tp // 2)), slice(tp // 2, tp)] if tp > 1 else [slice(0, 1), slice(0, 1)]
        mean_flow = [self._wmean(flow[:, sl], energy[:, sl]) for sl in (slice(0, tp), *halves)]
        cell_w = energy / (energy.sum(dim=1, keepdim=True) + 1e-8)  # weights over time, per cell
        cell_flow = (flow * cell_w[:, :, None]).sum(dim=1).flatten(1)  # (B, 2*g*g)
        cell_energy = energy.mean(dim=1).flatten(1) * 10.0
        divcurl = [self._div_curl(flow[:, sl], energy[:, sl]) for sl in (slice(0, tp), *halves)]
        profile = F.adaptive_avg_pool1d(energy.mean(dim=(2, 3))[:, None], 4)[:, 0] * 10.0
        pooled = torch.cat([hist * 4.0, *mean_flow, cell_flow, cell_energy, *divcurl, profile], dim=1)
        return EncoderOutput(tokens=tokens, pooled=pooled)

    @staticmethod
    def _wmean(flow: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Energy-weighted mean flow (B, 2) of flow (B, T, 2, g, g)."""
        w = energy / (energy.sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        return (flow * w[:, :, None]).sum(dim=(1, 3, 4))

    def _div_curl(self, flow: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Divergence and curl (B, 2) of the weighted least-squares affine fit v = a + M p over cells."""
        b = flow.shape[0]
        v = flow.permute(0, 1, 3, 4, 2).reshape(b, -1, 2)  # (B, T*g*g, 2)
        tp = flow.shape[1]
        p = self.cell_xy.repeat(tp, 1)  # (T*g*g, 2)
        design = torch.cat([torch.ones_like(p[:, :1]), p], dim=1)  # (K, 3)
        w = energy.reshape(b, -1)[..., None] + 1e-6  # (B, K, 1)
        a_mat = torch.einsum("kp,bkq->bpq", design, w * design[None])  # (B, 3, 3)
        rhs = torch.einsum("kp,bkc->bpc", design, w * v)  # (B, 3, 2)
        a_mat = a_mat + 1e-4 * torch.eye(3, dtype=a_mat.dtype, device=a_mat.device)
        coef = torch.linalg.solve(a_mat, rhs)  # rows: a, d/dx, d/dy ; cols: vx, vy
        div = coef[:, 1, 0] + coef[:, 2, 1]
        curl = coef[:, 1, 1] - coef[:, 2, 0]
        return torch.stack([div, curl], dim=1)


def create_motion_energy(name: str = "motion_energy", checkpoint: str | None = None, seed: int = 0,
                         **kw: object) -> MotionEnergyEncoder:
    """The parameter-free motion descriptor; ``checkpoint`` must be None."""
    if checkpoint is not None:
        raise ConfigError("motion_energy is hand-designed and takes no checkpoint")
    return MotionEnergyEncoder(**kw)  # type: ignore[arg-type]
