"""``pointprobe cluster``: unsupervised semantics from cached point features, scored by Hungarian mIoU.

For each feature folder (``pointprobe lift`` / ``distill`` predictions / ``extract`` output: one cache
per split with ``features`` and ``labels``, optionally ``visible_count``):

1. take up to ``max_fit_points`` feature rows of the ``fit_split`` scenes (seen points only when the
   cache has ``visible_count`` and ``visible_only``);
2. optionally train a STEGO-style correlation head on them: a projection ``z = Linear(f) + MLP(f)`` to
   ``stego.dim`` channels trained so that the cosine correlations of projections follow the centred
   cosine correlations of the frozen features (pairs of points from the same scene, from the scene most
   similar in mean feature, and from a random scene, each with its own shift), loss
   ``-(F_ij - b) * max(S_ij, 0)``;
3. cosine k-means (``common.pca.kmeans``) with ``k`` centroids (default: the number of classes of the
   label set), every evaluated point assigned to its most similar centroid;
4. clusters matched one-to-one to classes by the Hungarian algorithm on the confusion counts of the
   whole split (``common.metrics.hungarian_miou``): unsupervised mIoU, mAcc, allAcc, per-class IoU.

Points no frame saw (lifted features with ``visible_count == 0``) are left out of fitting and scoring
when ``visible_only`` (their fraction is reported as ``coverage``); distilled or encoder features cover
every point. Writes ``results.{md,json}``, ``per_class_iou.{md,json}``, ``details.json``, the resolved
config, and for the first ``viz_scenes`` scenes per folder a cluster-coloured ``clusters.ply``, a
class-coloured ``matched.ply`` and ``panels.png`` (``pointprobe.viz.visualize_points``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import config_hash, save_config
from common.errors import ConfigError, InputError
from pointprobe.data.scannet import class_names as scannet_class_names

log = logging.getLogger(__name__)

__all__ = [
    "StegoConfig",
    "ClusterConfig",
    "StegoHead",
    "stego_correlation_loss",
    "train_stego_head",
    "assign_clusters",
    "cluster_folder",
    "run_cluster",
]


# ---------------------------------------------------------------------------------------------- config
@dataclass
class StegoConfig:
    enabled: bool = False
    dim: int = 64  # projection width (SceneDINO: 768 -> 64)
    hidden: int = 256  # width of the non-linear branch (0 = linear projection only)
    steps: int = 400
    batch_scenes: int = 2
    points_per_scene: int = 1024
    lr: float = 1e-3
    # (shift, weight) of the three pair kinds; STEGO-style values, to tune per feature type
    self_shift: float = 0.18
    self_weight: float = 0.67
    knn_shift: float = 0.12
    knn_weight: float = 0.25
    random_shift: float = 0.46
    random_weight: float = 0.63


@dataclass
class ClusterConfig:
    features: list[str] = field(default_factory=list)  # cache folders (one per feature type)
    names: list[str] = field(default_factory=list)  # display names (default: recorded encoder label)
    split: str = "val"  # split scored
    fit_split: str = ""  # split the head / k-means are fitted on ("" = the scored split; no labels used)
    root: str = ""  # preprocessed scenes for the pictures ("" = the data root recorded in the cache)
    k: int = 0  # clusters (0 = number of classes of the label set)
    visible_only: bool = True  # skip unseen points of lifted features (fit and score)
    max_fit_points: int = 200_000
    kmeans_iters: int = 100
    seed: int = 0
    device: str = "auto"
    stego: StegoConfig = field(default_factory=StegoConfig)
    viz_scenes: int = 2  # scenes per folder with PLY + PNG (0 = none)
    out: str = "runs/cluster"


# ----------------------------------------------------------------------------------------------- STEGO
class StegoHead(nn.Module):
    """``z = W f + MLP(f)``: STEGO's linear + non-linear projection of frozen features."""

    def __init__(self, in_dim: int, dim: int = 64, hidden: int = 256):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.mlp = (nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
                    if hidden > 0 else None)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = self.linear(f)
        return z + self.mlp(f) if self.mlp is not None else z


def _centred_corr(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Cosine correlations (n, m) of frozen features, centred per row (STEGO's pointwise variant)."""
    c = F.normalize(f1, dim=1) @ F.normalize(f2, dim=1).T
    return c - c.mean(1, keepdim=True) + c.mean()


def stego_correlation_loss(f1: torch.Tensor, f2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                           shift: float) -> torch.Tensor:
    """``mean(-(F - shift) * max(S, 0))`` with F the centred feature correlations and S the projection
    correlations of two point sets: pairs more correlated than ``shift`` are pulled together."""
    fd = _centred_corr(f1, f2)
    cd = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
    return (-(fd - shift) * cd.clamp(min=0)).mean()


def train_stego_head(scenes: list[torch.Tensor], spec: StegoConfig, seed: int = 0,
                     device: torch.device | str = "cpu", progress: bool = False
                     ) -> tuple[StegoHead, list[float]]:
    """Train a head on per-scene feature samples ``scenes`` [(n_i, D)]; returns it (eval mode) and losses."""
    from common.progress import progress as progress_bar

    if not scenes:
        raise InputError(None, "no scenes with features to train the correlation head on")
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = StegoHead(scenes[0].shape[1], spec.dim, spec.hidden).to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=spec.lr)
    means = F.normalize(torch.stack([s.float().mean(0) for s in scenes]), dim=1)
    sim = means @ means.T
    sim.fill_diagonal_(-2.0)
    nearest = sim.argmax(1) if len(scenes) > 1 else torch.zeros(1, dtype=torch.long)
    n = len(scenes)

    def sample(i: int) -> torch.Tensor:
        s = scenes[i]
        idx = torch.randint(s.shape[0], (min(spec.points_per_scene, s.shape[0]),), generator=g)
        return s[idx].float().to(dev)

    losses = []
    for _ in progress_bar(range(spec.steps), desc="stego head", unit="step", disable=not progress,
                          leave=False):
        batch = torch.randint(n, (spec.batch_scenes,), generator=g).tolist()
        loss = torch.zeros((), device=dev)
        for i in batch:
            f_a, f_b = sample(i), sample(i)
            f_k = sample(int(nearest[i]))
            r = int(torch.randint(n - 1, (1,), generator=g)) if n > 1 else 0
            f_r = sample(r + (r >= i) if n > 1 else i)
            z_a, z_b, z_k, z_r = head(f_a), head(f_b), head(f_k), head(f_r)
            loss = loss + (
                spec.self_weight * stego_correlation_loss(f_a, f_b, z_a, z_b, spec.self_shift)
                + spec.knn_weight * stego_correlation_loss(f_a, f_k, z_a, z_k, spec.knn_shift)
                + spec.random_weight * stego_correlation_loss(f_a, f_r, z_a, z_r, spec.random_shift))
        loss = loss / len(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return head.eval(), losses


# -------------------------------------------------------------------------------------------- clustering
def assign_clusters(feat: torch.Tensor, centroids: torch.Tensor, chunk: int = 262_144) -> torch.Tensor:
    """Index (N,) of the most cosine-similar unit centroid for every row of ``feat``."""
    c = centroids.to(feat.device, torch.float32)
    return torch.cat([(F.normalize(x.float(), dim=1) @ c.T).argmax(1) for x in feat.split(chunk)]) if len(
        feat) else torch.zeros(0, dtype=torch.long)


def _open(folder: str | Path, split: str) -> Any:
    from common.cache import FeatureCache

    path = Path(folder) / split
    if not FeatureCache.exists(path):
        raise InputError(path, f"no feature cache for split '{split}'")
    return FeatureCache(path)


def _scene_rows(cache: Any, item: str, visible_only: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features mmap, labels, evaluated mask) of one scene."""
    a = cache[item]
    labels = np.asarray(a["labels"]).astype(np.int64) if "labels" in a else np.full(cache.n(item), -1)
    mask = np.ones(labels.shape[0], bool)
    if visible_only and "visible_count" in a:
        mask = np.asarray(a["visible_count"]) > 0
    return a["features"], labels, mask


def _fit_samples(cache: Any, cfg: ClusterConfig, rng: np.random.Generator) -> list[torch.Tensor]:
    items = cache.items()
    per = max(1, cfg.max_fit_points // max(1, len(items)))
    out = []
    for item in items:
        feat, _, mask = _scene_rows(cache, item, cfg.visible_only)
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            continue
        if rows.size > per:
            rows = np.sort(rng.choice(rows, per, replace=False))
        out.append(torch.from_numpy(np.asarray(feat[rows], np.float32)))
    if not out:
        raise InputError(cache.path, "no (seen) points to fit the clustering on")
    return out


def _data_root(cache: Any, cfg: ClusterConfig) -> Path | None:
    if cfg.root:
        return Path(cfg.root)
    conf = cache.meta.get("config", {})
    root = (conf.get("data") or {}).get("root") if isinstance(conf, dict) else None
    return Path(root) if root else None


def cluster_folder(folder: str | Path, cfg: ClusterConfig, out: Path, name: str | None = None,
                   device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Fit and score one feature folder; returns its result record (pictures in ``out/<name>/``)."""
    from common.metrics import hungarian_miou
    from common.pca import kmeans

    cache = _open(folder, cfg.split)
    fit_cache = _open(folder, cfg.fit_split) if cfg.fit_split and cfg.fit_split != cfg.split else cache
    label_set = cache.meta.get("label_set", "segment20")
    class_names = list(scannet_class_names(label_set))
    n_classes = len(class_names)
    k = cfg.k or n_classes
    label = name or cache.meta.get("encoder", {}).get("label") or cache.key.encoder
    rng = np.random.default_rng(cfg.seed)
    fit = _fit_samples(fit_cache, cfg, rng)
    head, losses = None, []
    if cfg.stego.enabled:
        head, losses = train_stego_head(fit, cfg.stego, cfg.seed, device, progress)

    @torch.no_grad()
    def transform(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, torch.float32)
        return head(x) if head is not None else x

    fit_all = torch.cat([transform(x) for x in fit])
    _, centroids = kmeans(fit_all, k, seed=cfg.seed, max_iter=cfg.kmeans_iters, max_rows=None)
    clusters, labels, n_total = [], [], 0
    per_scene: dict[str, np.ndarray] = {}
    for item in cache.items():
        feat, lab, mask = _scene_rows(cache, item, cfg.visible_only)
        n_total += lab.shape[0]
        cid = np.full(lab.shape[0], -1, np.int64)
        rows = np.flatnonzero(mask)
        if rows.size:
            x = torch.from_numpy(np.asarray(feat[rows], np.float32))
            cid[rows] = assign_clusters(transform(x), centroids).cpu().numpy()
        per_scene[item] = cid
        clusters.append(cid[mask])
        labels.append(lab[mask])
    cl, lb = np.concatenate(clusters), np.concatenate(labels)
    if not (lb >= 0).any():
        raise InputError(cache.path, f"split '{cfg.split}' has no labelled (seen) points to score")
    scores = hungarian_miou(cl, lb, k, n_classes)
    mapping = np.asarray(scores["mapping"])
    labelled = int((lb >= 0).sum())
    total_labelled = sum(int((np.asarray(cache.load(i, ("labels",))["labels"]) >= 0).sum())
                         for i in cache.items())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    viz = _pictures(cache, cfg, out / safe, per_scene, mapping, label) if cfg.viz_scenes > 0 else {}
    return {
        "name": label, "features": str(folder), "encoder": cache.key.encoder,
        "checkpoint_sha256": cache.key.checkpoint_sha256, "config_hash": cache.key.config_hash,
        "dim": cache.feature_dim, "k": k, "head": f"stego {cfg.stego.dim}" if head is not None else "none",
        "mIoU": 100 * scores["mIoU"], "mAcc": 100 * scores["mAcc"], "allAcc": 100 * scores["allAcc"],
        "iou": [100 * v for v in scores["iou"]], "class_names": class_names, "label_set": label_set,
        "mapping": scores["mapping"], "scenes": len(cache), "points_scored": labelled,
        "coverage": labelled / total_labelled if total_labelled else float("nan"), "points": n_total,
        "fit_points": int(fit_all.shape[0]),
        "stego_loss_first_last": [losses[0], losses[-1]] if losses else [],
        "pictures": viz,
    }


def _pictures(cache: Any, cfg: ClusterConfig, out: Path, per_scene: dict[str, np.ndarray],
              mapping: np.ndarray, title: str) -> dict[str, str]:
    """Per scene: clusters.ply (cluster colours), matched.ply (matched class colours), panels.png."""
    from common.pca import categorical_palette
    from pointprobe.data.scannet import SCANNET20_PALETTE, load_scene
    from pointprobe.viz import visualize_points, write_colored_ply

    root = _data_root(cache, cfg)
    if root is None:
        log.warning("%s: no data root recorded; give root= for the pictures", cache.path)
        return {}
    k = len(mapping)
    palette = categorical_palette(k)
    grey = np.array([0.62, 0.62, 0.62], np.float32)
    written = {}
    for item in cache.items()[: cfg.viz_scenes]:
        folder = root / cfg.split / item
        try:
            scene = load_scene(folder)
        except InputError as e:
            log.warning("no picture for %s (%s)", item, e)
            continue
        cid = per_scene[item]
        if len(scene) != cid.shape[0]:
            log.warning("no picture for %s: %d points but %d cached rows", item, len(scene), cid.shape[0])
            continue
        d = out / item
        col = np.where(cid[:, None] >= 0, palette[np.maximum(cid, 0)], grey)
        write_colored_ply(d / "clusters.ply", scene.coord, col, {"cluster": cid})
        matched = np.where(cid >= 0, mapping[np.maximum(cid, 0)], -1)
        n_classes = len(scannet_class_names(cache.meta.get("label_set", "segment20")))
        pal = (SCANNET20_PALETTE.astype(np.float32) / 255.0 if n_classes == 20
               else categorical_palette(n_classes))
        known = (matched >= 0) & (matched < len(pal))
        mcol = np.where(known[:, None], pal[np.clip(matched, 0, len(pal) - 1)], grey)
        write_colored_ply(d / "matched.ply", scene.coord, mcol, {"label": matched})
        feats = np.array(cache.load(item)["features"], np.float32)
        labels = scene.labels(cache.meta.get("label_set", "segment20"))
        res = visualize_points(scene.coord, scene.color, feats, d, labels=labels, pred=matched,
                               title=f"{title}: {item}", quiet=True)
        written[item] = str(res.png)
    return written


def run_cluster(cfg: ClusterConfig, progress: bool = True) -> dict:
    """Cluster every feature folder; write the tables and pictures under ``cfg.out``."""
    from common import dist
    from common.report import jsonable, write_table

    if not cfg.features:
        raise ConfigError("config key 'features' is empty: give feature folders (lift / distill / extract)")
    if cfg.names and len(cfg.names) != len(cfg.features):
        raise ConfigError(f"config key 'names' has {len(cfg.names)} entries for {len(cfg.features)} features")
    if cfg.k < 0 or cfg.max_fit_points < 1:
        raise ConfigError("config keys 'k' must be >= 0 and 'max_fit_points' >= 1")
    device = dist.pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    records = [cluster_folder(f, cfg, out, cfg.names[i] if cfg.names else None, device, progress)
               for i, f in enumerate(cfg.features)]
    rows = [{"features": r["name"], "dim": r["dim"], "k": r["k"], "head": r["head"], "mIoU": r["mIoU"],
             "mAcc": r["mAcc"], "allAcc": r["allAcc"], "scored points": r["points_scored"],
             "coverage": r["coverage"], "checkpoint": r["checkpoint_sha256"][:16]} for r in records]
    meta = {"task": "unsupervised semantic segmentation: cosine k-means, Hungarian-matched to classes",
            "split": cfg.split, "fit split": cfg.fit_split or cfg.split, "visible only": cfg.visible_only,
            "config_hash": config_hash(cfg), "config": asdict(cfg),
            "features": [{k: r[k] for k in ("name", "encoder", "checkpoint_sha256", "config_hash",
                                            "features")} for r in records]}
    write_table(rows, out / "results", f"Unsupervised clustering, {cfg.split} split (Hungarian mIoU)",
                meta=meta, float_format=".2f")
    class_names = records[0]["class_names"]
    per_class = [{"class": c, **{r["name"]: r["iou"][j] for r in records}} for j, c in enumerate(class_names)]
    write_table(per_class, out / "per_class_iou", "Per-class IoU after Hungarian matching (%)",
                meta={"split": cfg.split}, float_format=".1f")
    details = json.dumps(jsonable({"records": records, "meta": meta}), indent=1)
    (out / "details.json").write_text(details + "\n")
    return {"rows": rows, "records": records, "out": str(out)}
