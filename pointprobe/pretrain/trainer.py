"""Sonata-style self-distillation pre-training: the data plan, training loop, checkpoints, exact resume.

Config schema: ``pointprobe.pretrain.config``; backbone, heads and parameter groups:
``pointprobe.pretrain.model``.

One optimiser step:

1. the global batch of ``train.batch_size`` scenes is split into ``accum_steps`` micro-batches and,
   under torchrun, over ranks; scene order is a per-epoch permutation keyed by ``train.seed`` and the
   views of a scene are drawn from a generator keyed by (seed, step, batch position, scene index), so
   the data do not depend on the number of processes;
2. teacher (EMA of the student, no drop path) encodes the global views; the student encodes the
   masked global views and the local views; both up-cast ``model.upcast_steps`` levels (no decoder);
3. points are paired by nearest neighbour in the original coordinates (radius ``loss.match_radius``):
   masked view vs its own global view, masked view vs the other global view ("roll"), local view vs
   the first global view; teacher logits -> Sinkhorn-Knopp (global over ranks) -> cross-entropy with
   the student's ``log_softmax(logits / student_temp)``, weights 2/8, 2/8, 4/8;
4. AdamW with layer-wise lr decay over the blocks the encoder declares (``block_layout``), one-cycle
   lr, cosine weight decay, gradient clipping; then the EMA teacher update with a cosine momentum.

Extended pre-training (``init.checkpoint``, ``explora.*``; ``pointprobe.pretrain.explora``): the backbone
starts from an encoder file; with ``explora.enabled`` only LoRA adapters, the unfrozen blocks, the norms
(optional), the mask token and the heads train, the EMA moves only those in the teacher, and
``encoder.pth`` holds the teacher with the adapters merged. ``trainable.json`` lists what trains. BFP
(``loss.bfp_alpha`` > 0) adds ``alpha * mean ||A f_new - f_old||`` on the local views' up-cast features
(per view, then over the views), ``A`` a learnable linear map (identity at first), ``f_old`` a frozen
snapshot of the starting encoder.

Seed-paper options (off by default): ``model.residual_decay`` (decayed identity shortcuts in the encoder,
kept in ``encoder.pth``'s config), ``loss.ibot_weight`` (iBOT: masked points of each masked view against
the teacher on the unmasked same view; own ``ibot_head`` or, with ``loss.ibot_shared_head``, the mask
head), ``loss.disjoint_masks`` K (DMJD: K complementary masked copies of each global view, every term on
masked views over all copies), ``loss.mugs_weight`` (Mugs: instance, local-group and group terms on view
embeddings, ``pointprobe.pretrain.mugs``; its queues, memory and centre are in the checkpoint).

Checkpoints (``out/checkpoints/step_*.pth`` and ``out/last.pth``) hold student, teacher (with heads),
optimiser, step and RNG states; resuming continues exactly. ``out/encoder.pth`` is the teacher
backbone in the release format that ``pointprobe.models.load_encoder`` reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common import dist
from common.checkpoint import load_checkpoint, load_latest, save_checkpoint
from common.config import config_hash, save_config, to_dict
from common.errors import CheckpointError, ConfigError, InputError
from common.paths import sweep_stale_temps
from common.progress import progress
from pointprobe.pretrain.config import PretrainConfig, validate_config
from pointprobe.pretrain.ema import copy_weights, ema_update
from pointprobe.pretrain.explora import (
    apply_explora,
    freeze_frozen_norm_stats,
    init_backbone,
    merged_backbone,
    snapshot,
    trainable_summary,
)
from pointprobe.pretrain.loss import assignment_entropy, distill_loss, sinkhorn_knopp
from pointprobe.pretrain.model import (
    DistillModel,
    build_backbone,
    head_in_channels,
    mugs_widths,
    param_groups,
)
from pointprobe.pretrain.mugs import (
    MugsState,
    centred_cross_entropy,
    info_nce,
    mugs_pairs,
    pool_views,
    split_mean,
)
from pointprobe.pretrain.schedules import StepValues, step_values
from pointprobe.pretrain.views import (
    SceneViews,
    ViewBatch,
    collate_views,
    level_mean,
    make_scene_views,
    match_views,
)

log = logging.getLogger("pointprobe.pretrain")

__all__ = ["SceneStore", "ScenePlan", "Pretrainer", "run_pretrain", "feature_stats"]


# ---------------------------------------------------------------------------------------------- data
class SceneStore:
    """Scenes of ``{root}/{split}`` (preprocessed layout); ``get(i)`` -> (coord, color, normal, name)."""

    def __init__(self, root: str | os.PathLike, split: str, max_scenes: int = 0, cache: bool = True):
        from pointprobe.data.scannet import list_scenes

        if not str(root):
            raise ConfigError("config key 'data.root' is empty: give the preprocessed data folder")
        self.root = Path(root)
        self.split = split
        names = list_scenes(self.root, split)
        if max_scenes > 0:
            names = names[:max_scenes]
        if not names:
            raise InputError(self.root / split, "no scenes found")
        self.names = names
        self.cache = cache
        self._mem: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.names)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        if i in self._mem:
            return self._mem[i]
        from pointprobe.data.scannet import load_scene

        folder = self.root / self.split / self.names[i]
        s = load_scene(folder)
        item = (s.coord, s.color, s.normal, str(folder))
        if self.cache:
            self._mem[i] = item
        return item


class ScenePlan:
    """Which scene sits at each position of each global batch (independent of the number of ranks)."""

    def __init__(self, n_scenes: int, batch_size: int, seed: int):
        self.n = n_scenes
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def scene(self, step: int, position: int) -> int:
        epoch, pos = divmod(step * self.batch_size + position, self.n)
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, 7, epoch]).permutation(self.n)
        return int(self._perms[epoch][pos])

    def positions(self, micro: int, accum: int, rank: int, world: int) -> list[int]:
        per_micro = self.batch_size // accum
        per_rank = per_micro // world
        start = micro * per_micro + rank * per_rank
        return list(range(start, start + per_rank))


# ---------------------------------------------------------------------------------------------- stats
@torch.no_grad()
def _mean_entropy(p: torch.Tensor) -> float:
    """Mean entropy (nats) of the rows of a probability matrix (nan when empty)."""
    if p.shape[0] == 0:
        return float("nan")
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum(1).mean())


@torch.no_grad()
def feature_stats(feat: torch.Tensor, max_rows: int = 4096) -> tuple[float, float]:
    """(mean per-channel std of L2-normalised features x sqrt(D), effective rank): ~1 and large for
    spread-out features, 0 and 1 for collapsed ones."""
    if feat.shape[0] < 2:
        return float("nan"), float("nan")
    f = F.normalize(feat.float(), dim=1)
    if f.shape[0] > max_rows:
        f = f[torch.linspace(0, f.shape[0] - 1, max_rows).long()]
    std = float(f.std(0).mean() * math.sqrt(f.shape[1]))
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    erank = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    return std, erank


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``): views of varying sizes fragment
    the heap and the resident size would otherwise creep up by several MB per step."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def _rng_state() -> dict:
    st = np.random.get_state()
    out = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]),
                  "has_gauss": int(st[3]), "cached": float(st[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(st: dict) -> None:
    py = st["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = st["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# -------------------------------------------------------------------------------------------- trainer
class Pretrainer:
    """Holds models, optimiser and data plan; ``run()`` trains to ``train.steps``."""

    def __init__(self, cfg: PretrainConfig, out_dir: str | os.PathLike | None = None,
                 store: SceneStore | None = None):
        validate_config(cfg)
        self.cfg = cfg
        self.out = Path(out_dir or cfg.out) if (out_dir or cfg.out) else None
        self.rank, self.world = dist.rank(), dist.world_size()
        t = cfg.train
        if t.batch_size % (t.accum_steps * self.world):
            raise ConfigError(f"config key 'train.batch_size' ({t.batch_size}) must be a multiple of "
                              f"accum_steps x processes ({t.accum_steps} x {self.world})")
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        try:
            dev = dist.pick_device(t.device)
        except ConfigError as e:
            raise ConfigError(f"config key 'train.device': {e}") from None
        # a bare "cuda" under torchrun: this rank's GPU (as "auto" gives)
        self.device = dist.device_for_rank() if dev.type == "cuda" and dev.index is None else dev
        self.store = store or SceneStore(cfg.data.root, cfg.data.split, cfg.data.max_scenes,
                                         cfg.data.cache_in_memory)
        self.plan = ScenePlan(len(self.store), t.batch_size, t.seed)

        torch.manual_seed(t.seed)
        if cfg.init.checkpoint:
            ck, trust, rd = cfg.init.checkpoint, cfg.init.trust_checkpoint, cfg.model.residual_decay
            student_bb = init_backbone(ck, cfg.model.drop_path, trust, rd)
            teacher_bb = init_backbone(ck, 0.0, trust, rd)
            log.info("starting from %s (%s; model.backbone / backbone_config are not used)",
                     cfg.init.checkpoint, student_bb.arch)
        else:
            student_bb = build_backbone(cfg.model, cfg.model.drop_path)
            teacher_bb = build_backbone(cfg.model, 0.0)
        # BFP: the starting encoder, frozen (f_old)
        self.old = snapshot(student_bb).to(self.device) if cfg.loss.bfp_alpha > 0 else None
        try:
            hin = head_in_channels(student_bb, cfg.model.upcast_steps)
        except (ValueError, ConfigError) as e:
            raise ConfigError(f"config key 'model.upcast_steps': {e}") from None
        own_ibot = cfg.loss.ibot_weight > 0 and not cfg.loss.ibot_shared_head
        self.student = DistillModel(student_bb, hin, cfg.model, own_ibot, cfg.loss).to(self.device)
        self.teacher = DistillModel(teacher_bb, hin, cfg.model, own_ibot, cfg.loss).to(self.device)
        self.mugs_state: MugsState | None = None  # Mugs queues, memory, centre
        if self.student.mugs is not None:
            _, dim, protos = mugs_widths(cfg.model, cfg.loss)
            self.mugs_state = MugsState(cfg.loss.mugs_queue, hin, dim, protos, t.seed).to(self.device)
        e = cfg.explora
        self.ema_names: list[str] | None = None  # None: every parameter (full pre-training)
        self.explora_info: dict = {}
        if e.enabled:
            args = (e.lora_rank, e.lora_alpha, e.lora_targets, e.unfreeze_blocks, e.train_norms,
                    e.train_mask_token)
            self.explora_info = apply_explora(self.student, *args)
            apply_explora(self.teacher, *args)
            self.student.to(self.device)
            self.teacher.to(self.device)
            self.ema_names = self.explora_info["trainable"]
        copy_weights(self.teacher, self.student)
        self.trainable = trainable_summary(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.groups = param_groups(self.student, cfg.optim.layer_decay)
        self.bfp_map: torch.nn.Linear | None = None
        if self.old is not None:
            self.bfp_map = torch.nn.Linear(hin, hin, bias=False).to(self.device)
            with torch.no_grad():
                self.bfp_map.weight.copy_(torch.eye(hin))
            scale = (cfg.loss.bfp_lr or cfg.optim.lr) / cfg.optim.lr
            self.groups.append({"params": [self.bfp_map.weight], "lr_scale": scale, "decay": False})
            self.trainable["bfp_map"] = hin * hin
        log.info("trainable parameters: %d of %d in the encoder, %d of %d in the heads%s",
                 self.trainable["trainable_backbone"], self.trainable["total_backbone"],
                 self.trainable["trainable_heads"], self.trainable["total_heads"],
                 f"; explora {self.explora_info['groups']}, unfrozen blocks "
                 f"{self.explora_info['unfrozen_blocks']}" if e.enabled else "")
        self.optimizer = torch.optim.AdamW(
            [{"params": g["params"], "lr": cfg.optim.lr, "weight_decay": 0.0} for g in self.groups],
            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        self.ddp = None
        if dist.is_distributed():
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.student, device_ids=ids)
        self.step = 0
        self._pool = ThreadPoolExecutor(1) if t.prefetch else None
        self._pending: dict[tuple[int, int], Any] = {}
        self.history: list[dict] = []

    # -- schedules / data --------------------------------------------------------------------------
    def values(self, step: int) -> StepValues:
        c, lo, o = self.cfg, self.cfg.loss, self.cfg.optim
        return step_values(step, c.train.steps, pct_start=o.pct_start, div_factor=o.div_factor,
                           final_div_factor=o.final_div_factor, wd_start=o.weight_decay_start,
                           wd_end=o.weight_decay_end, momentum_start=lo.momentum_start,
                           momentum_end=lo.momentum_end, teacher_temp_start=lo.teacher_temp_start,
                           teacher_temp_base=lo.teacher_temp_base, mask_size_start=lo.mask_size_start,
                           mask_size_base=lo.mask_size_base, mask_ratio_start=lo.mask_ratio_start,
                           mask_ratio_base=lo.mask_ratio_base, warmup_ratio=lo.warmup_ratio)

    def scene_views(self, step: int, position: int) -> SceneViews:
        """The views of the scene at ``position`` of global batch ``step`` (deterministic)."""
        idx = self.plan.scene(step, position)
        coord, color, normal, name = self.store.get(idx)
        v = self.values(step)
        rng = np.random.default_rng([self.cfg.train.seed, step, position, idx])
        return make_scene_views(coord, color, normal, self.cfg.views, rng, v.mask_size, v.mask_ratio, name,
                                disjoint_masks=self.cfg.loss.disjoint_masks)

    def _build_micro(self, step: int, micro: int) -> ViewBatch:
        t = self.cfg.train
        pos = self.plan.positions(micro, t.accum_steps, self.rank, self.world)
        return collate_views([self.scene_views(step, p) for p in pos], self.cfg.views.grid_size)

    def micro_batch(self, step: int, micro: int) -> ViewBatch:
        key = (step, micro)
        fut = self._pending.pop(key, None)
        vb = fut.result() if fut is not None else self._build_micro(step, micro)
        # queue the next one
        if self._pool is not None:
            nxt = (step, micro + 1) if micro + 1 < self.cfg.train.accum_steps else (step + 1, 0)
            if nxt[0] < self.cfg.train.steps and nxt not in self._pending:
                self._pending[nxt] = self._pool.submit(self._build_micro, *nxt)
        return vb

    # -- one step ----------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def micro_step(self, vb: ViewBatch, v: StepValues, scale: float, sync: bool) -> dict:
        """Forward + backward of one micro-batch; returns its metrics."""
        lc, dev = self.cfg.loss, self.device
        vb = vb.to(dev)
        with torch.no_grad(), self._autocast():
            t_lvl = self.teacher.level(vb.teacher)
            use_mask = lc.mask_weight + lc.roll_weight > 0 or (lc.ibot_weight > 0 and lc.ibot_shared_head)
            t_mask = self.teacher.mask_head(t_lvl.feat).float() if use_mask else None
            t_unmask = self.teacher.unmask_head(t_lvl.feat).float() if lc.unmask_weight > 0 else None
            t_ibot = None  # iBOT targets: the teacher (online tokenizer) on the unmasked global views
            if lc.ibot_weight > 0:
                t_ibot = t_mask if lc.ibot_shared_head else self.teacher.ibot_head(t_lvl.feat).float()
        t_origin = level_mean(vb.teacher_origin, t_lvl).cpu().numpy()
        t_off = t_lvl.offset.cpu().numpy()
        mugs = self.mugs_state
        t_mugs: dict = {}
        if mugs is not None:  # teacher view embeddings, their memory neighbours, the Mugs targets
            with torch.no_grad(), self._autocast():
                t_pooled = pool_views(t_lvl)
                has_rel = self.teacher.mugs.relation is not None
                nb = mugs.neighbours(t_pooled, lc.mugs_topk) if has_rel else None
                t_mugs = {k: x.float() for k, x in self.teacher.mugs(t_pooled, nb, target=True).items()}
        model = self.ddp if self.ddp is not None else self.student
        ctx = contextlib.nullcontext() if sync or self.ddp is None else self.ddp.no_sync()
        need_local = lc.unmask_weight > 0 or (mugs is not None and self.cfg.views.local_views > 0)
        with ctx:
            with self._autocast():
                out = model(vb.masked, vb.local if need_local else None, mugs, lc.mugs_topk,
                            unmask=lc.unmask_weight > 0)
            trees: dict = {}
            G, L, B, K = vb.n_global, vb.n_local, vb.n_scenes, vb.n_mask_copies
            losses: dict[str, torch.Tensor] = {}
            n_pairs: dict[str, int] = {}
            target_h: dict[str, float] = {}
            m_lvl = out["masked"]
            m_origin = level_mean(vb.masked_origin, m_lvl).cpu().numpy()
            m_off = m_lvl.offset.cpu().numpy()
            # masked view (j * G + g) * K + c: copy c of global view g of scene j (K = 1 without DMJD)
            own = [((j * G + g) * K + c, j * G + g) for j in range(B) for g in range(G) for c in range(K)]
            specs = []
            if lc.mask_weight > 0:
                specs.append(("mask", lc.mask_weight, own))
            if lc.roll_weight > 0:
                roll = [((j * G + g) * K + c, j * G + (g + 1) % G)
                        for j in range(B) for g in range(G) for c in range(K)]
                specs.append(("roll", lc.roll_weight, roll))
            own_pairs = None
            for name, _, vpairs in specs:
                q, r, grp = match_views(m_origin, m_off, t_origin, t_off, vpairs, lc.match_radius, trees)
                if name == "mask":
                    own_pairs = (q, r, grp)
                target = sinkhorn_knopp(t_mask[torch.from_numpy(r).to(dev)], v.teacher_temp,
                                        lc.sinkhorn_iters)
                losses[name] = distill_loss(target, out["masked_logits"][torch.from_numpy(q).to(dev)],
                                            lc.student_temp, torch.from_numpy(grp).to(dev), B * G * K)
                n_pairs[name] = len(q)
                target_h[name] = _mean_entropy(target)
            if lc.ibot_weight > 0:
                # iBOT: only the masked positions of each masked view (a head-level point is masked when
                # most of the input points pooled into it are), against the teacher on the same view
                q, r, grp = own_pairs if own_pairs is not None else match_views(
                    m_origin, m_off, t_origin, t_off, own, lc.match_radius, trees)
                frac = level_mean(vb.masked.mask.float().unsqueeze(1), m_lvl)[:, 0]
                keep = (frac >= 0.5).cpu().numpy()[q]
                q, r, grp = q[keep], r[keep], grp[keep]
                target = sinkhorn_knopp(t_ibot[torch.from_numpy(r).to(dev)], v.teacher_temp,
                                        lc.sinkhorn_iters)
                s_logits = out["masked_logits"] if lc.ibot_shared_head else out["ibot_logits"]
                losses["ibot"] = distill_loss(target, s_logits[torch.from_numpy(q).to(dev)],
                                              lc.student_temp, torch.from_numpy(grp).to(dev), B * G * K)
                n_pairs["ibot"] = len(q)
                target_h["ibot"] = _mean_entropy(target)
            if lc.unmask_weight > 0:
                l_lvl = out["local"]
                l_origin = level_mean(vb.local_origin, l_lvl).cpu().numpy()
                vpairs = [(j * L + k, j * G) for j in range(B) for k in range(L)]
                q, r, grp = match_views(l_origin, l_lvl.offset.cpu().numpy(), t_origin, t_off, vpairs,
                                        lc.match_radius, trees)
                target = sinkhorn_knopp(t_unmask[torch.from_numpy(r).to(dev)], v.teacher_temp,
                                        lc.sinkhorn_iters)
                losses["unmask"] = distill_loss(target, out["local_logits"][torch.from_numpy(q).to(dev)],
                                                lc.student_temp, torch.from_numpy(grp).to(dev), B * L)
                n_pairs["unmask"] = len(q)
                target_h["unmask"] = _mean_entropy(target)
            weights = {"mask": lc.mask_weight, "roll": lc.roll_weight, "unmask": lc.unmask_weight,
                       "ibot": lc.ibot_weight}
            loss = sum(weights[k] * val for k, val in losses.items())
            if mugs is not None:
                terms = self.mugs_terms(out["mugs"], t_mugs, vb, v.teacher_temp)
                losses.update({f"mugs_{k}": val for k, val in terms.items()})
                ws = {"instance": lc.mugs_instance_weight, "local_group": lc.mugs_local_group_weight,
                      "group": lc.mugs_group_weight}
                losses["mugs"] = sum(ws[k] * val for k, val in terms.items()) / sum(ws[k] for k in terms)
                loss = loss + lc.mugs_weight * losses["mugs"]
            if self.bfp_map is not None:
                losses["bfp"] = self.bfp_term(out, vb)
                loss = loss + lc.bfp_alpha * losses["bfp"]
            (loss * scale).backward()
        if mugs is not None:  # after the loss (Mugs enqueues after its loss too): the teacher's views
            mugs.enqueue(t_pooled, t_mugs.get("instance"), t_mugs.get("local_group"))
            if "group" in t_mugs:
                mugs.update_center(t_mugs["group"], lc.mugs_center_momentum)
        metrics = {f"{k}_loss": float(val.detach()) for k, val in losses.items()}
        metrics["loss"] = float(loss.detach())
        metrics.update({f"{k}_pairs": n for k, n in n_pairs.items()})
        # cross-entropy = target entropy + KL(target || student): the KL is what the student can still learn
        metrics.update({f"{k}_kl": metrics[f"{k}_loss"] - h for k, h in target_h.items()})
        metrics.update({f"{k}_target_entropy": h for k, h in target_h.items()})
        logits = next((x for x in (t_mask, t_unmask, t_ibot, t_mugs.get("group")) if x is not None), None)
        h_mean, h_point = (assignment_entropy(logits, v.teacher_temp) if logits is not None
                           else (float("nan"), float("nan")))
        metrics["teacher_entropy"], metrics["teacher_entropy_point"] = h_mean, h_point
        metrics["feat_std"], metrics["eff_rank"] = feature_stats(t_lvl.feat)
        metrics["points"] = len(vb.teacher) + len(vb.masked) + len(vb.local)
        return metrics

    def mugs_terms(self, s_out: dict, t_out: dict, vb: ViewBatch, teacher_temp: float) -> dict:
        """The Mugs terms (instance, local_group, group: those with a head) between the student's views
        (masked global views, then local views) and the teacher's global views of the same scene."""
        lc, st = self.cfg.loss, self.mugs_state
        n_local = vb.n_local if "local" in s_out else 0
        s_idx, t_idx, small = (x.to(self.device) for x in mugs_pairs(vb.n_scenes, vb.n_global,
                                                                     vb.n_mask_copies, n_local))
        terms: dict[str, torch.Tensor] = {}
        for k, queue in (("instance", st.instance_queue), ("local_group", st.local_group_queue)):
            if k in s_out:
                per = info_nce(s_out[k][s_idx], t_out[k][t_idx], queue, lc.mugs_temp)
                terms[k] = split_mean(per, small)
        if "group" in s_out:
            per = centred_cross_entropy(s_out["group"][s_idx], t_out["group"][t_idx], st.center,
                                        lc.student_temp, teacher_temp)
            terms["group"] = split_mean(per, small)
        return terms

    def bfp_term(self, out: dict, vb: ViewBatch) -> torch.Tensor:
        """BFP: ``||A f_new(x) - f_old(x)||_2`` averaged over the points of each view, then over the views
        (as the distillation terms), x the local views (the masked global views when there are none), f the
        up-cast features the heads see. Per view first: the term (and its gradient) is then the same however
        the batch is split over processes or micro-batches (a mean over all the points of a rank's batch
        weighted the scenes by size, so 2 processes gave another loss than 1)."""
        from common.scatter import segment_reduce
        from pointprobe.models.structure import upcast

        new = out["local"] if "local" in out else out["masked"]
        inp = vb.local if "local" in out else vb.masked
        with torch.no_grad(), self._autocast():
            old = upcast(self.old(inp), steps=self.cfg.model.upcast_steps).feat.float()
        if old.shape != new.feat.shape:
            raise ValueError(f"BFP: old and new features differ in shape ({tuple(old.shape)} vs "
                             f"{tuple(new.feat.shape)})")
        dist_pt = (self.bfp_map(new.feat.float()) - old).norm(dim=1)
        counts = torch.diff(new.offset.long(), prepend=new.offset.new_zeros(1).long()).to(dist_pt.device)
        view = torch.repeat_interleave(torch.arange(len(counts), device=dist_pt.device), counts)
        return segment_reduce(dist_pt, view, len(counts), "mean").sum() / len(counts)

    def train_step(self) -> dict:
        """One optimiser step (all micro-batches); returns averaged metrics."""
        t, o = self.cfg.train, self.cfg.optim
        step = self.step
        v = self.values(step)
        for g, pg in zip(self.groups, self.optimizer.param_groups):
            pg["lr"] = o.lr * v.lr_factor * g["lr_scale"]
            pg["weight_decay"] = v.weight_decay if g["decay"] else 0.0
        self.student.train()
        if self.ema_names is not None:
            freeze_frozen_norm_stats(self.student)
        acc: dict[str, float] = {}
        for a in range(t.accum_steps):
            vb = self.micro_batch(step, a)
            m = self.micro_step(vb, v, 1.0 / t.accum_steps, sync=a == t.accum_steps - 1)
            for k, val in m.items():
                acc[k] = acc.get(k, 0.0) + val / t.accum_steps
        for k in ("points",) + tuple(k for k in acc if k.endswith("_pairs")):
            acc[k] = acc[k] * t.accum_steps  # totals, not means
        if self.mugs_state is not None:
            acc["mugs_queue_filled"] = int(self.mugs_state.filled)
        if step < int(round(o.freeze_prototypes_ratio * t.steps)):
            sm = self.student
            mugs_group = sm.mugs.group if sm.mugs is not None else None
            for head in (sm.mask_head, sm.unmask_head, sm.ibot_head, mugs_group):
                if head is not None:
                    head.prototype_v.grad = None  # AdamW skips it: no update, no weight decay
        if self.bfp_map is not None and dist.is_distributed() and self.bfp_map.weight.grad is not None:
            g = self.bfp_map.weight.grad
            g.copy_(dist.all_reduce_tensor(g.clone(), "mean"))
        gnorm = float("nan")
        if o.clip_grad > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), o.clip_grad))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.teacher, self.student, v.momentum, self.ema_names)
        self.step += 1
        # loss of the whole global batch (mean over ranks)
        if dist.is_distributed():
            keys = sorted(k for k in acc if k.endswith("loss"))
            vals = dist.all_reduce_tensor(torch.tensor([acc[k] for k in keys], dtype=torch.float64), "mean")
            acc.update(dict(zip(keys, vals.tolist())))
        acc.update(step=self.step, lr=o.lr * v.lr_factor, weight_decay=v.weight_decay, momentum=v.momentum,
                   teacher_temp=v.teacher_temp, mask_size=v.mask_size, mask_ratio=v.mask_ratio,
                   grad_norm=gnorm,
                   effective_batch=t.batch_size)
        return acc

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": "pointprobe-pretrain-v1",
            "step": self.step,
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **({"bfp_map": self.bfp_map.state_dict()} if self.bfp_map is not None else {}),
            **({"mugs": self.mugs_state.state_dict()} if self.mugs_state is not None else {}),
            "rng": _rng_state(),
            "world_size": self.world,
            "scenes_seen": self.step * self.cfg.train.batch_size,
        }

    @staticmethod
    def check_checkpoint(st: Any, path: str | os.PathLike) -> None:
        """Raise ``CheckpointError`` unless ``st`` is a pre-training checkpoint."""
        if not isinstance(st, dict) or st.get("format") != "pointprobe-pretrain-v1":
            raise CheckpointError(f"{path}: not a pointprobe pre-training checkpoint")

    def load_state(self, path: str | os.PathLike, st: dict | None = None) -> None:
        """Resume from a training checkpoint (exactly: weights, optimiser, step, RNG states); ``st``: the
        already loaded file."""
        if st is None:
            st = load_checkpoint(path)
            self.check_checkpoint(st, path)
        try:
            self.student.load_state_dict(st["student"])
            self.teacher.load_state_dict(st["teacher"])
            self.optimizer.load_state_dict(st["optimizer"])
            if self.bfp_map is not None:
                self.bfp_map.load_state_dict(st["bfp_map"])
            if self.mugs_state is not None:
                self.mugs_state.load_state_dict(st["mugs"])
        except (RuntimeError, ValueError, KeyError) as e:
            msg = str(e).splitlines()[0]
            raise CheckpointError(f"{path}: does not match this model/config ({msg})") from None
        if st.get("config_hash") != config_hash(self.cfg):
            old = st.get("config", {})
            new = to_dict(self.cfg)
            diff = sorted(_diff_keys(old, new))
            log.warning("%s: resuming with a different config (%s)", path, ", ".join(diff[:6]))
        self.step = int(st["step"])
        _set_rng_state(st["rng"])

    def save(self) -> Path | None:
        """Write ``checkpoints/step_N.pth``, ``last.pth`` and ``encoder.pth`` (rank 0)."""
        if self.out is None or not dist.is_main():
            return None
        ck = self.out / "checkpoints"
        ck.mkdir(parents=True, exist_ok=True)
        path = ck / f"step_{self.step:07d}.pth"
        save_checkpoint(self.state(), path)
        _link_or_copy(path, self.out / "last.pth")
        old = sorted(ck.glob("step_*.pth"))
        for p in old[: max(0, len(old) - max(2, self.cfg.train.keep_checkpoints))]:
            p.unlink(missing_ok=True)
        self.export(self.out / "encoder.pth")
        if self.cfg.train.keep_encoders:
            (self.out / "encoders").mkdir(exist_ok=True)
            _link_or_copy(self.out / "encoder.pth", self.out / "encoders" / f"step_{self.step:07d}.pth")
        return path

    def export_record(self) -> tuple[str, dict]:
        """(arch, config) of the exported backbone: its config with ``drop_path`` 0 (inference)."""
        src = self.teacher if self.cfg.train.export == "teacher" else self.student
        return src.backbone.arch, {**dict(src.backbone.config), "drop_path": 0.0}

    def export(self, path: str | os.PathLike) -> Path:
        """The teacher (or student) backbone in the release format ``{"arch","config","state_dict","meta"}``
        (``pointprobe.models.save_encoder``, the one encoder writer)."""
        from pointprobe.models import save_encoder

        bb = (self.teacher if self.cfg.train.export == "teacher" else self.student).backbone
        meta = {"source": "pointprobe pretrain", "step": self.step, "config_hash": config_hash(self.cfg),
                "which": self.cfg.train.export}
        if self.cfg.init.checkpoint:
            meta["init"] = str(self.cfg.init.checkpoint)
        if self.cfg.explora.enabled:
            bb = merged_backbone(bb)  # adapters merged: the plain layout, no peft needed to load it
            meta["explora"] = "merged"
        orig = bb.config
        bb.config = self.export_record()[1]
        try:
            return save_encoder(bb, path, **meta)
        finally:
            bb.config = orig

    # -- loop --------------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None) -> dict:
        """Train until ``train.steps`` (or ``max_steps`` more steps); returns the last metrics."""
        t = self.cfg.train
        end = t.steps if max_steps is None else min(t.steps, self.step + max_steps)
        logf = None
        if self.out is not None and dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            logf = open(self.out / "log.jsonl", "a")
            (self.out / "trainable.json").write_text(json.dumps(
                {**self.trainable, **({"explora": {k: v for k, v in self.explora_info.items()
                                                   if k != "trainable"},
                                       "trainable_names": self.explora_info["trainable"]}
                                      if self.explora_info else {})}, indent=1))
        bar = progress(total=end, initial=self.step, desc="pretrain", unit="step",
                       disable=not (t.progress and dist.is_main()))
        last: dict = {}
        t0 = time.perf_counter()
        warned_at = -10**9
        self.interrupted = None
        signals = dist.StopSignals(t.stop_signals, t.save_every_minutes)
        try:
            signals.__enter__()
            while self.step < end:
                ts, cs = time.perf_counter(), time.process_time()
                m = self.train_step()
                dt = time.perf_counter() - ts
                m["step_time"] = dt
                m["cpu_time"] = time.process_time() - cs  # all threads of this process
                m["points_per_s"] = m["points"] * self.world / dt
                m["scenes_per_s"] = t.batch_size / dt
                m["elapsed"] = time.perf_counter() - t0
                if not math.isfinite(m["loss"]):
                    raise ConfigError(f"loss became {m['loss']} at step {self.step}; lower optim.lr")
                collapse = []
                if m["teacher_entropy"] < 0.05:
                    collapse.append(f"teacher prototype-usage entropy {m['teacher_entropy']:.3f} of log K")
                if m["teacher_entropy_point"] > 0.995:
                    h = m["teacher_entropy_point"]
                    collapse.append(f"teacher outputs nearly uniform (entropy {h:.3f} of log K; lower "
                                    "loss.teacher_temp_* or freeze prototypes longer)")
                if m["feat_std"] < 0.02:
                    collapse.append(f"feature std {m['feat_std']:.4f} (x sqrt D)")
                if m["eff_rank"] < 2.0:
                    collapse.append(f"effective rank {m['eff_rank']:.2f}")
                m["collapse_warning"] = bool(collapse)
                if collapse and self.step - warned_at >= max(t.log_every, 1) and dist.is_main():
                    log.warning("step %d: possible collapse: %s", self.step, "; ".join(collapse))
                    warned_at = self.step
                self.history.append(m)
                last = m
                if self.step % 10 == 0:
                    _release_freed_memory()
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", pts_s=f"{m['points_per_s']:.0f}",
                                H=f"{m['teacher_entropy']:.2f}")
                if logf is not None and (self.step % max(t.log_every, 1) == 0 or self.step == end):
                    logf.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                           for k, v in m.items()}) + "\n")
                    logf.flush()
                stop, save_due = signals.poll()
                if stop:  # every rank stops after this same step
                    self.save()
                    self.interrupted = signals.received or "a signal to another rank"
                    break
                if (save_due or (t.save_every > 0 and self.step % t.save_every == 0)) and self.step < t.steps:
                    self.save()
                    signals.mark_saved()
            if self.step >= t.steps and self.interrupted is None:
                self.save()
        finally:
            signals.__exit__(None, None, None)
            bar.close()
            if logf is not None:
                logf.close()
        return last

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to (or, where links fail, a copy of) ``src``, replaced atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    out = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple))
                               and list(va) == list(vb)):
            out.add(f"{prefix}{k}")
    return out


def run_pretrain(cfg: PretrainConfig, out_dir: str | os.PathLike, resume: str | os.PathLike | None = None,
                 store: SceneStore | None = None) -> dict:
    """Pre-train to ``cfg.train.steps``: saves the resolved config, resumes from ``resume`` or from
    ``out_dir/last.pth`` when present, writes checkpoints and ``encoder.pth``. Returns a summary."""
    out = Path(out_dir)
    cfg = dataclasses.replace(cfg, out=str(out))
    trainer = Pretrainer(cfg, out, store=store)  # checks first: a refusal writes nothing
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
    try:
        if resume:
            trainer.load_state(resume)
            log.info("resumed from %s at step %d", resume, trainer.step)
        else:  # out/last.pth, or when it is damaged the newest readable checkpoints/step_N.pth
            if dist.is_main():
                sweep_stale_temps(out, recursive=True)
            cands = [out / "last.pth", *sorted((out / "checkpoints").glob("step_*.pth"), reverse=True)]
            try:
                st, ck = load_latest(cands, check=Pretrainer.check_checkpoint)
            except FileNotFoundError:
                st, ck = None, None
            if st is not None:
                trainer.load_state(ck, st)
                log.info("resumed from %s at step %d", ck, trainer.step)
        last = trainer.run()
    finally:
        trainer.close()
    if dist.is_main():  # the whole log (a resumed run's steps once each) as curves.csv + curves.png
        from common.curves import read_jsonl, write_curves

        write_curves(read_jsonl(out / "log.jsonl"), out, "curves", x="step", title="pointprobe pretrain")
    arch, enc_cfg = trainer.export_record()
    return {"step": trainer.step, "encoder": str(out / "encoder.pth"), "arch": arch, "config": enc_cfg,
            "last": last, "out": str(out), "interrupted": trainer.interrupted, "trainable": trainer.trainable}
