"""``pointprobe demo``: the whole point-cloud pipeline on generated ScanNet-format scenes.

generate scenes (raw ScanNet layout) -> preprocess -> short Sonata-style pre-training -> extract
features of the pre-trained encoder, the same architecture with random weights, and the raw input
features -> linear probe of all three -> one table -> a PCA picture of the pre-trained features.
Every stage is resumable: running the demo again skips what is already done.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import load_config, save_config

log = logging.getLogger(__name__)


@dataclass
class PointDemoConfig:
    out: str = "runs/point-demo"  # output folder: raw/, scannet/, pretrain/, features/, probe/, pca/
    scenes: int = 12  # generated rooms
    seed: int = 0  # seed of the generated rooms and the random-init encoder
    pretrain_config: str = "configs/point/pretrain_demo.yaml"  # pre-training config file
    pretrain_overrides: list[str] = field(default_factory=list)  # overrides of it: [train.steps=100]
    probe_config: str = "configs/point/probe_demo.yaml"  # probe config file
    probe_overrides: list[str] = field(default_factory=list)  # key=value overrides of it
    picture: bool = True  # draw the PCA picture


def _stage(name: str, t0: float) -> None:
    print(f"[demo {time.time() - t0:6.1f}s] {name}", flush=True)


def run_demo(cfg: PointDemoConfig) -> dict:
    """Run every stage; returns the probe result rows and output paths."""
    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.extract import ExtractConfig, PointDataConfig, PointEncoderConfig, extract
    from pointprobe.pretrain.train import PretrainConfig, run_pretrain
    from pointprobe.probe import SegProbeConfig, run_probe
    from pointprobe.synth import generate_dataset

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    raw, data = out / "raw", out / "scannet"
    if not (raw / "scannetv2_val.txt").exists():
        _stage(f"generating {cfg.scenes} scenes in the raw ScanNet format -> {raw}", t0)
        generate_dataset(raw, cfg.scenes, cfg.seed, frames_per_scene=0)
    _stage(f"preprocessing -> {data}", t0)
    failed = [r for r in preprocess_dataset(raw, data, splits=("train", "val"), workers=1)
              if r.status == "failed"]
    if failed:
        raise RuntimeError(f"preprocessing failed for {len(failed)} generated scene(s): "
                           f"{failed[0].name}: {failed[0].message}")

    _stage("Sonata-style self-distillation pre-training", t0)
    pcfg = load_config(PretrainConfig, cfg.pretrain_config, [f"data.root={data}", *cfg.pretrain_overrides])
    summary = run_pretrain(pcfg, out / "pretrain")
    ckpt_path = Path(summary["encoder"])
    arch, arch_cfg = summary["arch"], dict(summary["config"])  # what encoder.pth holds, without re-reading it

    specs = {
        "pretrained": PointEncoderConfig(name=arch, checkpoint=str(ckpt_path),
                                       label=f"{arch} pre-trained (demo)"),
        "random": PointEncoderConfig(name=arch, seed=cfg.seed, config=arch_cfg, label=f"{arch} random init"),
        "raw": PointEncoderConfig(name="raw", label="raw input features"),
    }
    folders = []
    for key, spec in specs.items():
        _stage(f"extracting features: {spec.label}", t0)
        ecfg = ExtractConfig(data=PointDataConfig(root=str(data), splits=["train", "val"]), encoder=spec,
                             out=str(out / "features" / key))
        failures = extract(ecfg)
        bad = {k: v for split in failures.values() for k, v in split.items()}
        if bad:
            raise RuntimeError(f"feature extraction failed: {next(iter(bad.items()))}")
        folders.append(str(out / "features" / key))

    _stage("linear probes", t0)
    prcfg = load_config(SegProbeConfig, cfg.probe_config,
                        [f"features=[{','.join(folders)}]", f"out={out / 'probe'}", *cfg.probe_overrides])
    res = run_probe(prcfg)
    picture = None
    if cfg.picture:
        _stage("PCA picture of the pre-trained features", t0)
        picture = pca_picture(out, data)
    _stage("done", t0)
    return {"rows": res["rows"], "md_rows": res["md_rows"], "probe": str(out / "probe"), "picture": picture}


def pca_picture(out: Path, data: Path) -> str | None:
    """Input colour | PCA | similarity | labels panels of the first validation scene."""
    from common.cache import FeatureCache
    from pointprobe.data.scannet import list_scenes, load_scene
    from pointprobe.viz import render_feature_panels

    name = list_scenes(data, "val")[0]
    scene = load_scene(data / "val" / name)
    feats = FeatureCache(out / "features" / "pretrained" / "val")[name]["features"]
    return str(render_feature_panels(scene.coord, scene.color, feats[:].astype("float32"),
                                     out / "pca", labels=scene.segment20,
                                     title=f"{name}: pre-trained features (demo)"))
