"""Check the CUDA code paths against the CPU ones, and time them: run this once on a GPU machine.

Each check runs the same computation on the CPU and on CUDA from the same weights and inputs and
reports the largest difference (relative to the largest value) or the mean cosine between per-point /
per-clip features, plus GPU throughput where it matters. Nothing is downloaded: weights are random
(seeded) and scenes are generated (``pointprobe.synth``). A check that fails is reported with its
error and the others still run; the exit status is the number of failed checks.

Checks: spconv sparse convolutions; SparseUNet and PTv3 (sonata_small) features in float32 and under
bf16 autocast; PTv3 / SparseUNet throughput (GPU vs this machine's CPU); Sonata-style pre-training
steps with bf16 autocast; the same under ``torchrun`` with NCCL; ``common.scatter``; the multi-head
linear probe; 2D->3D lifting; PCA; a VideoMAE ViT and the attentive probe. The GPU path of issue 15
(about 8 minutes, ``--only gpu_path``): device preprocessing gives the numpy path's encoder inputs;
``encode_points`` throughput of sonata (release layout, random init) on 200k-point scenes as a fraction
of the network alone, before (CPU preprocessing, blocking copy) and after (device preprocessing, pinned
non-blocking copy; target >= 0.7); extraction with DataLoader workers; building torch-scatter's CUDA
kernels from source; flash-attn for PTv3 patch attention, built from the registry's source (each step
time-boxed; the machine reaches no registry, so the sources travel with the tree). The tuning ladder of
issue 14 (``--only tune``; tiny runs, not yet timed on a GPU): every ``pointprobe tune`` method (linear,
decoder, ssf, lora, last_k, progressive, full, mezo over ssf) on a tiny SparseUNet and a tiny PTv3 and every
``videoprobe tune`` method (linear, ssf, lora, prompt, mezo over ssf) on a tiny VideoMAE-layout ViT read
from a file, 3 steps each with bf16 autocast, in this process: per run finished (or its error), the
metric, trainable parameters, training peak memory (``cuda_max_allocated``), s / step; and ``linear``'s
first-step loss and cached standardisation in float32 on the CPU vs CUDA (relative differences):

    python tools/check_cuda.py --fetch-sources .gpusrc        # here, once (pip download, no build)
    python tools/check_cuda.py --only gpu_path --sources .gpusrc --out $OUT   # on the GPU machine
    python tools/check_cuda.py --only tune --out $OUT                         # the tuning ladder
    python tools/check_cuda.py [--out runs/check-cuda] [--quick]              # every check
    python tools/check_cuda.py --dry-run [--only tune]   # no GPU: imports, the checks' CPU parts, small data

Writes ``OUT/check_cuda.md`` and ``OUT/check_cuda.json`` (the ``check_cuda`` section of
docs/benchmarks.md is that markdown; ``--doc`` writes it there directly).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import machine_line, update_section  # noqa: E402

RESULTS: list[dict] = []


def check(name: str):
    """Decorator: run a check, record its numbers (a dict) or its error."""

    def wrap(fn):
        def run(*a, **kw):
            t = time.time()
            try:
                out = fn(*a, **kw) or {}
                ok = bool(out.pop("ok", True))
                rec = {"check": name, "ok": ok, **out}
            except Exception as e:  # noqa: BLE001 - every failure is reported, the next check runs
                rec = {"check": name, "ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
                traceback.print_exc()
            rec["seconds"] = round(time.time() - t, 2)
            RESULTS.append(rec)
            print(json.dumps(rec), flush=True)
            return rec

        return run

    return wrap


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))


def mean_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8).mean())


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up (CUDA synchronised)."""
    out = fn()
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out


# ------------------------------------------------------------------------------------------- data
def scenes(root: Path, n: int) -> Path:
    """``n`` generated rooms, preprocessed (ScanNet layout) under ``root``."""
    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.synth import generate_dataset

    generate_dataset(root / "raw", n, seed=0, frames_per_scene=0, progress=False)
    preprocess_dataset(root / "raw", root / "scannet", splits=("train", "val", "test"), workers=1)
    return root / "scannet"


def first_scene(data: Path):
    from pointprobe.data.scannet import list_scenes, load_scene

    return load_scene(data / "train" / list_scenes(data, "train")[0])


def tiled(scene, copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A larger scene: ``copies`` shifted copies of one room side by side."""
    span = scene.coord[:, 0].max() - scene.coord[:, 0].min() + 0.5
    coord = np.concatenate([scene.coord + np.array([i * span, 0, 0], np.float32) for i in range(copies)])
    return coord, np.tile(scene.color, (copies, 1)), np.tile(scene.normal, (copies, 1))


# ----------------------------------------------------------------------------------------- checks
@check("environment")
def check_env() -> dict:
    import spconv

    info = {"machine": machine_line(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cuda": torch.version.cuda, "spconv": getattr(spconv, "__version__", "?"),
            "bf16": torch.cuda.is_bf16_supported()}
    try:
        import torch_scatter  # noqa: F401

        from common.scatter import has_torch_scatter

        info["torch_scatter_cuda"] = has_torch_scatter(cuda=True)
    except ImportError:
        info["torch_scatter_cuda"] = "not installed"
    try:
        import flash_attn  # noqa: F401

        info["flash_attn"] = True
    except ImportError:
        info["flash_attn"] = "not installed"
    return info


@check("spconv SubMConv3d + strided SparseConv3d, CUDA vs CPU (float32)")
def check_spconv() -> dict:
    import spconv.pytorch as sp
    from spconv.core import ConvAlgo

    g = torch.Generator().manual_seed(0)
    n, c = 20000, 32
    coords = torch.unique(torch.randint(0, 64, (n, 3), generator=g), dim=0)
    idx = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int64), coords], 1).int()
    feats = torch.randn(len(coords), c, generator=g)
    subm = sp.SubMConv3d(c, c, 3, bias=True, indice_key="s")
    down = sp.SparseConv3d(c, 2 * c, 2, stride=2, bias=True, indice_key="d")
    out = {}
    for algo_name in ("native", "implicit gemm"):
        res = {}
        for dev in ("cpu", "cuda"):
            algo = ConvAlgo.Native if (dev == "cpu" or algo_name == "native") else ConvAlgo.MaskImplicitGemm
            subm.algo, down.algo = algo, algo
            x = sp.SparseConvTensor(feats.to(dev), idx.to(dev), [64, 64, 64], 1)
            with torch.no_grad():
                y = subm.to(dev).train()(x)  # train mode: bias added separately (the CPU path needs it)
                z = down.to(dev).train()(y)
            order = torch.argsort(z.indices[:, 1:].long().cpu() @ torch.tensor([4096, 64, 1]))
            res[dev] = (y.features.cpu(), z.features.cpu()[order])
        out[f"{algo_name}: subm rel diff"] = rel_diff(res["cpu"][0], res["cuda"][0])
        out[f"{algo_name}: strided rel diff"] = rel_diff(res["cpu"][1], res["cuda"][1])
    out["ok"] = max(v for k, v in out.items() if "diff" in k) < 1e-3
    return out


SPARSEUNET = {"channels": [32, 64, 96, 128, 160], "depths": [1, 1, 2, 2, 1]}  # the bench config's


def _encoder_parity(name: str, cfg: dict, scene) -> dict:
    from pointprobe.models import create_encoder, encode_points

    torch.manual_seed(0)
    model = create_encoder(name, **cfg).eval()
    cpu = encode_points(model, scene.coord, scene.color, scene.normal, device="cpu", autocast=None)
    f32 = encode_points(model, scene.coord, scene.color, scene.normal, device="cuda", autocast=None)
    bf16 = encode_points(model, scene.coord, scene.color, scene.normal, device="cuda", autocast="auto")
    out = {"points": len(scene.coord), "dim": cpu.shape[1], "fp32 rel diff": rel_diff(cpu, f32),
           "fp32 mean cosine": mean_cos(cpu, f32), "bf16 mean cosine": mean_cos(cpu, bf16),
           "bf16 min cosine": float(torch.nn.functional.cosine_similarity(cpu, bf16.float(), dim=1).min())}
    out["ok"] = out["fp32 mean cosine"] > 0.9999 and out["bf16 mean cosine"] > 0.99
    return out


@check("SparseUNet features, CUDA vs CPU")
def check_sparseunet(scene) -> dict:
    return _encoder_parity("sparseunet", SPARSEUNET, scene)


@check("PTv3 sonata_small features, CUDA vs CPU")
def check_ptv3(scene) -> dict:
    return _encoder_parity("sonata_small", {}, scene)


@check("encoder throughput (points/s), GPU vs this machine's CPU")
def check_throughput(scene, quick: bool) -> dict:
    from pointprobe.models import create_encoder, encode_points

    out = {}
    copies = 2 if quick else 4
    coord, color, normal = tiled(scene, copies)
    out["points"] = len(coord)
    torch.set_num_threads(os.cpu_count() or 1)
    names = ["sparseunet", "sonata_small"] + ([] if quick else ["sonata"])
    for name in names:
        cfg = SPARSEUNET if name == "sparseunet" else {}
        torch.manual_seed(0)
        model = create_encoder(name, **cfg).eval()
        # fp32 / bf16 network with float32 output; bf16 network with float16 output (what a float16
        # feature cache asks for: half the bytes copied back)
        for mode, ac, dt in (("fp32", None, torch.float32), ("bf16", "auto", torch.float32),
                             ("bf16 f16-out", "auto", torch.float16)):
            def enc(m=model, a=ac, d=dt):
                return encode_points(m, coord, color, normal, device="cuda", autocast=a, max_points=None,
                                     out_dtype=d)

            sec, _ = timed(enc)
            out[f"{name} GPU {mode} points/s"] = round(len(coord) / sec)
        # the network alone (batch already on the GPU, output left there): what the CPU-side grid
        # sampling, feature assembly and the copy of (N, D) float32 features back cost on top
        from common.sampling import grid_sample
        from pointprobe.models.encode import center_shift
        from pointprobe.models.structure import PointBatch

        xyz = center_shift(coord)
        gs = grid_sample(xyz, 0.02, mode="first")
        parts = {"coord": xyz, "color": color / 255.0, "normal": normal}
        feat = np.concatenate([parts[k] for k in model.feat_keys], 1).astype(np.float32)[gs.index]
        batch = PointBatch.create(torch.from_numpy(xyz[gs.index].astype(np.float32)).cuda(),
                                  torch.from_numpy(gs.grid_coord).cuda(), torch.from_numpy(feat).cuda())

        def net(m=model, b=batch):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                return m.encode(b, None)

        sec, _ = timed(net)
        out[f"{name} network only bf16 points/s"] = round(len(coord) / sec)
        out[f"{name} GPU peak memory GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        torch.cuda.reset_peak_memory_stats()
        if name != "sonata":  # the CPU baseline (one pass, float32, all cores)
            t = time.perf_counter()
            encode_points(model, coord, color, normal, device="cpu", autocast=None, max_points=None)
            cpu_rate = len(coord) / (time.perf_counter() - t)
            out[f"{name} CPU points/s"] = round(cpu_rate)
            out[f"{name} GPU bf16 / CPU"] = round(out[f"{name} GPU bf16 points/s"] / cpu_rate, 1)
        model.cpu()
    return out


def _pretrain_overrides(data: Path, steps: int, backbone: str) -> list[str]:
    o = [f"data.root={data}", f"train.steps={steps}", "train.device=cuda", "train.amp=true",
         "train.progress=false", "train.save_every=0", "train.log_every=1", "train.batch_size=2"]
    if backbone == "ptv3":  # the bench recipe with the PTv3 small backbone instead of the SparseUNet
        o += ["model.backbone=sonata_small", "model.backbone_config={}", "views.max_points=20000"]
    return o


@check("pre-training on CUDA, bf16 autocast (SparseUNet bench config and PTv3 sonata_small)")
def check_pretrain(data: Path, tmp: Path, quick: bool) -> dict:
    from common.config import load_config
    from pointprobe.models import load_encoder
    from pointprobe.pretrain.train import PretrainConfig, run_pretrain

    out = {}
    steps = 10 if quick else 30
    for backbone in ("sparseunet", "ptv3"):
        cfg = load_config(PretrainConfig, "configs/point/pretrain_bench_cpu.yaml",
                          _pretrain_overrides(data, steps, backbone))
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        run_pretrain(cfg, tmp / f"pre_{backbone}")
        sec = time.perf_counter() - t
        log = [json.loads(s) for s in (tmp / f"pre_{backbone}" / "log.jsonl").read_text().splitlines()]
        out[f"{backbone}: s/step"] = round(sec / steps, 3)
        out[f"{backbone}: loss first/last"] = [round(log[0]["loss"], 3), round(log[-1]["loss"], 3)]
        out[f"{backbone}: finite"] = all(np.isfinite(r["loss"]) for r in log)
        out[f"{backbone}: peak memory GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        enc = load_encoder(tmp / f"pre_{backbone}" / "encoder.pth")
        out[f"{backbone}: exported encoder"] = enc.arch
    out["ok"] = all(v for k, v in out.items() if k.endswith("finite"))
    return out


@check("torchrun + NCCL pre-training (1 process; DDP, Sinkhorn all-reduce)")
def check_nccl(data: Path, tmp: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29533",
           "-m", "pointprobe.cli", "pretrain", "--config", "configs/point/pretrain_bench_cpu.yaml",
           *_pretrain_overrides(data, 6, "sparseunet"), f"out={tmp / 'pre_nccl'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    log = tmp / "pre_nccl" / "log.jsonl"
    steps = len(log.read_text().splitlines()) if log.exists() else 0
    return {"ok": p.returncode == 0 and steps == 6, "returncode": p.returncode, "logged steps": steps,
            "stderr tail": p.stderr.strip().splitlines()[-1][:200] if p.returncode and p.stderr else ""}


@check("common.scatter segment_reduce, CUDA vs CPU")
def check_scatter() -> dict:
    from common.scatter import segment_reduce

    g = torch.Generator().manual_seed(0)
    src = torch.randn(1_000_000, 64, generator=g)
    index = torch.randint(0, 50_000, (1_000_000,), generator=g)
    out = {}
    for red in ("sum", "mean", "max"):
        a = segment_reduce(src, index, 50_000, red)
        b = segment_reduce(src.cuda(), index.cuda(), 50_000, red)
        out[f"{red} rel diff"] = rel_diff(a, b)
    sec, _ = timed(lambda: segment_reduce(src.cuda(), index.cuda(), 50_000, "mean"))
    out["GPU mean, 1M x 64 rows/s"] = round(1e6 / sec)
    out["ok"] = max(v for k, v in out.items() if "diff" in k) < 1e-4
    return out


@check("multi-head linear probe, CUDA vs CPU")
def check_linear_probe() -> dict:
    from common.probes.linear import LinearProbeConfig, ProbeData, evaluate_linear_probe, train_linear_probe

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 128)).astype(np.float32)
    y = rng.integers(0, 20, 200_000)
    x = centers[y] + 2.5 * rng.normal(size=(len(y), 128)).astype(np.float32)
    chunks = [(x[i : i + 10_000], y[i : i + 10_000]) for i in range(0, len(y), 10_000)]
    data = ProbeData(chunks, groups=list(range(len(chunks))))
    out = {}
    for dev in ("cpu", "cuda"):
        cfg = LinearProbeConfig(task="segmentation", num_classes=20, epochs=3, lrs=[1e-3, 1e-2],
                                wds=[0.0, 1e-3], batch_size=4096, device=dev, progress=False)
        t = time.perf_counter()
        res = train_linear_probe(data, None, cfg)
        out[f"{dev} seconds"] = round(time.perf_counter() - t, 2)
        out[f"{dev} mIoU"] = round(100 * evaluate_linear_probe(res, data, device=dev)["mIoU"], 2)
    out["ok"] = abs(out["cpu mIoU"] - out["cuda mIoU"]) < 0.5
    return out


@check("2D->3D lifting (FusionAccumulator), CUDA vs CPU")
def check_lift() -> dict:
    from pointprobe.lift.project import FusionAccumulator, world_to_camera

    g = torch.Generator().manual_seed(0)
    n, frames, H, W = 200_000, 8, 240, 320
    K = torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    xy = (torch.rand(n, 2, generator=g) - 0.5) * torch.tensor([1.6, 1.2])
    coord = torch.cat([xy * 2.0, torch.full((n, 1), 2.0)], 1)  # a plane 2 m in front of the cameras
    poses = torch.eye(4).repeat(frames, 1, 1)
    poses[:, 0, 3] = torch.linspace(-0.3, 0.3, frames)
    depth = torch.full((frames, H, W), 2.0)
    maps = torch.randn(frames, 64, 17, 23, generator=g)
    res = {}
    for dev in ("cpu", "cuda"):
        acc = FusionAccumulator(coord, 64, device=dev)
        acc.add(maps, depth, world_to_camera(poses), K)
        res[dev] = (acc.mean().cpu(), acc.count.cpu())
    same = bool(torch.equal(res["cpu"][1], res["cuda"][1]))
    d = rel_diff(res["cpu"][0], res["cuda"][0])
    return {"seen points": int((res["cpu"][1] > 0).sum()), "view counts equal": same, "feature rel diff": d,
            "ok": same and d < 1e-4}


@check("PCA colouring, CUDA vs CPU")
def check_pca() -> dict:
    from common.pca import fit_pca, project

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # separated leading components
    basis = torch.linalg.qr(torch.randn(256, 8, generator=g))[0].T
    feat = (torch.randn(100_000, 8, generator=g) * scale) @ basis
    feat += 0.01 * torch.randn(100_000, 256, generator=g)
    a = fit_pca(feat, q=3)
    b = fit_pca(feat.cuda(), q=3)
    pa = project(feat, a.mean, a.components)
    pb = project(feat.cuda(), b.mean.cuda(), b.components.cuda())
    d = rel_diff(pa, pb)
    return {"projection rel diff": d, "ok": d < 1e-3}


@check("VideoMAE ViT-S (random weights) + attentive probe on CUDA")
def check_video(quick: bool) -> dict:
    from common.probes.attentive import AttentiveConfig, train_attentive_probe
    from common.probes.linear import ProbeData
    from videoprobe.models import create_video_encoder

    enc = create_video_encoder("videomae_vit_s", seed=0)
    g = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (2, 3, 16, 224, 224), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        cpu = enc(clip)
        enc.cuda()
        gpu = enc(clip.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf = enc(clip.cuda())
    out = {"pooled fp32 rel diff": rel_diff(cpu.pooled, gpu.pooled),
           "tokens fp32 mean cosine": mean_cos(cpu.tokens.flatten(0, -2), gpu.tokens.flatten(0, -2)),
           "tokens bf16 mean cosine": mean_cos(cpu.tokens.flatten(0, -2), bf.tokens.flatten(0, -2))}
    batch = torch.randint(0, 256, (16, 3, 16, 224, 224), dtype=torch.uint8, device="cuda")

    def run():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return enc(batch)

    sec, _ = timed(run, 2 if quick else 5)
    out["GPU bf16 clips/s (16x224x224)"] = round(16 / sec, 1)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    tok = rng.normal(size=(400, 64, 96)).astype(np.float32) + y[:, None, None] * 0.2
    data = ProbeData([(tok[i : i + 20], y[i : i + 20]) for i in range(0, 400, 20)],
                     groups=[np.arange(i, i + 20) for i in range(0, 400, 20)])  # one clip per video
    acfg = AttentiveConfig(epochs=5, batch_size=64, num_heads=4, device="cuda", progress=False, num_classes=5)
    res = train_attentive_probe(data, None, acfg)
    out["attentive probe val"] = {k: round(float(v), 3) for k, v in res.val.items() if isinstance(v, float)}
    out["ok"] = out["tokens fp32 mean cosine"] > 0.9999 and out["tokens bf16 mean cosine"] > 0.99
    return out


# ---------------------------------------------------------------- the GPU path (issue 15), time-boxed
SCATTER_SDIST = "torch-scatter==2.1.2"
FLASH_SDIST = "flash-attn==2.8.3.post2"


def fetch_sources(folder: Path) -> list[Path]:
    """Download the torch-scatter and flash-attn source archives into ``folder`` (pip, no build): the
    GPU machine reaches no registry, so they travel with the working tree (``carry``)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE"}
    for req in (SCATTER_SDIST, FLASH_SDIST):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "-d", str(folder), req], check=True, env=env)
    return sorted(folder.glob("*.tar.gz"))


def scene_of(coord: np.ndarray, color: np.ndarray, normal: np.ndarray, n: int,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points: copies of a room side by side, ``n`` rows of them drawn without replacement."""
    span = coord[:, 0].max() - coord[:, 0].min() + 0.5
    copies = -(-n // len(coord))
    c = np.concatenate([coord + np.array([i * span, 0, 0], np.float32) for i in range(copies)])
    rows = np.sort(np.random.default_rng(seed).choice(len(c), n, replace=False))
    return c[rows], np.tile(color, (copies, 1))[rows], np.tile(normal, (copies, 1))[rows]


def _capture_inputs(model):
    """Wrap ``model.encode`` to record each batch it is given (coord, grid_coord, feat on the CPU)."""
    seen: list[tuple[torch.Tensor, ...]] = []
    encode = model.encode

    def spy(point, levels=None):
        seen.append((point.coord.cpu(), point.grid_coord.cpu(), point.feat.cpu()))
        return encode(point, levels)

    model.encode = spy
    return seen


@check("device preprocessing gives the numpy path's encoder inputs (same rows, order, features)")
def check_preprocess_parity(room, dev: str, small: bool = False) -> dict:
    from pointprobe.models import ENCODERS, create_encoder, encode_points

    torch.manual_seed(0)
    model = create_encoder("sonata_small", **(ENCODERS["sonata_small"].smoke_config if small else {}))
    model = model.eval().to(dev)
    seen = _capture_inputs(model)
    out = {}
    for sampling in ("canonical", "test") if small else ("canonical", "train", "test"):
        feats = []
        for where in ("cpu", "device"):
            seen.clear()
            feats.append(encode_points(model, *room, device=dev, autocast=None, sampling=sampling, seed=1,
                                       device_preprocess=where))
            batches = list(seen)
            if where == "cpu":
                ref = batches
        same = len(ref) == len(batches) and all(
            all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(ref, batches))
        out[f"{sampling}: inputs identical"] = same
        out[f"{sampling}: fp32 feature rel diff"] = rel_diff(feats[0], feats[1])
    del model.encode
    out["ok"] = all(v for k, v in out.items() if k.endswith("identical"))
    return out


@check("encode_points / network-only throughput, sonata (release layout, random init), 200k points")
def check_encode_fraction(room, dev: str, n_points: int, name: str = "sonata", small: bool = False) -> dict:
    from common.sampling import grid_sample, grid_sample_torch
    from pointprobe.models import ENCODERS, create_encoder, encode_points
    from pointprobe.models import encode as enc
    from pointprobe.models.encode import (
        canonical_index,
        canonical_index_torch,
        center_shift,
        center_shift_torch,
    )
    from pointprobe.models.structure import PointBatch

    coord, color, normal = scene_of(*room, n_points)
    torch.manual_seed(0)
    model = create_encoder(name, **(ENCODERS[name].smoke_config if small else {})).eval().to(dev)
    ac = "auto" if dev == "cuda" else None
    reps = 1 if small else 3
    out = {"encoder": name, "points": len(coord)}
    # the network alone: the batch already on the device, the output left there (up-cast included)
    xyz = center_shift(coord)
    feat = np.concatenate([xyz, color / np.float32(255), normal], 1).astype(np.float32)
    gs = grid_sample(xyz, 0.02, mode="first", align="world")
    idx = canonical_index(gs.inverse, len(gs), feat)
    batch = PointBatch.create(torch.from_numpy(xyz[idx].astype(np.float32)).to(dev),
                              torch.from_numpy(gs.grid_coord).to(dev), torch.from_numpy(feat[idx]).to(dev))
    out["voxels"] = len(gs)

    def net():
        with torch.inference_mode(), enc._autocast_ctx(ac, torch.device(dev)):
            return model.encode(batch, None)

    sec_net, _ = timed(net, reps)
    out["network only points/s"] = round(len(coord) / sec_net)
    # preprocessing alone: numpy on the CPU vs torch on the device
    t_np, _ = timed(lambda: canonical_index(
        *(lambda g: (g.inverse, len(g)))(grid_sample(center_shift(coord), 0.02, mode="first", align="world")),
        feat), reps)
    c_dev = torch.from_numpy(coord).to(dev)
    f_dev = torch.from_numpy(feat).to(dev)

    def prep_dev():
        g = grid_sample_torch(center_shift_torch(c_dev), 0.02, mode="first", align="world")
        return canonical_index_torch(g.inverse, len(g), f_dev)

    t_dev, _ = timed(prep_dev, reps)
    out["preprocess numpy ms"] = round(1000 * t_np, 1)
    out[f"preprocess torch {dev} ms"] = round(1000 * t_dev, 1)
    plain = enc._to_host
    variants = [("before (cpu preprocess, blocking copy)", "cpu", False, torch.float16),
                ("cpu preprocess, pinned copy", "cpu", True, torch.float16),
                ("after (device preprocess, pinned copy)", "device", True, torch.float16),
                ("after, float32 out", "device", True, torch.float32)]
    try:
        for label, where, pinned, dt in variants:
            enc._to_host = plain if pinned else (lambda t: t.cpu())

            def run(w=where, d=dt):
                return encode_points(model, coord, color, normal, device=dev, autocast=ac, max_points=None,
                                     out_dtype=d, device_preprocess=w)

            sec, _ = timed(run, reps)
            out[f"{label} points/s"] = round(len(coord) / sec)
            out[f"{label} / network"] = round(sec_net / sec, 3)
    finally:
        enc._to_host = plain
    out["target >= 0.7 met"] = out["after (device preprocess, pinned copy) / network"] >= 0.7
    if dev == "cuda":
        out["GPU peak memory GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    model.cpu()
    return out


@check("extraction with DataLoader workers (num_workers 0 vs N): same cache, wall time")
def check_extract_workers(room, tmp: Path, dev: str, n_scenes: int, n_points: int, workers: int = 4,
                          small: bool = False) -> dict:
    from common.cache import FeatureCache
    from pointprobe.extract import ExtractConfig, PointDataConfig, extract
    from pointprobe.models import ENCODERS
    from pointprobe.models.registry import PointEncoderConfig

    root = tmp / "extract_workers"
    for i in range(n_scenes):
        c, rgb, nrm = scene_of(*room, n_points, seed=i)
        folder = root / "data" / "train" / f"scene{i:04d}_00"
        folder.mkdir(parents=True, exist_ok=True)
        labels = np.zeros(len(c), np.int64)
        for k, a in {"coord": c, "color": rgb, "normal": nrm, "segment20": labels, "segment200": labels,
                     "instance": labels}.items():
            np.save(folder / f"{k}.npy", a)
    out = {"scenes": n_scenes, "points per scene": n_points}
    small_cfg = dict(ENCODERS["sonata_small"].smoke_config) if small else {}
    enc = PointEncoderConfig(name="sonata_small", config=small_cfg)
    for w in (0, workers):  # a subsampled split: the bench times reading and encoding, not disk writes
        cfg = ExtractConfig(data=PointDataConfig(root=str(root / "data"), splits=["train"]), encoder=enc,
                            out=str(root / f"w{w}"), device=dev, num_workers=w,
                            storage={"train": "subsample"}, points_per_scene=min(n_points, 20_000))
        t = time.perf_counter()
        extract(cfg, progress=False)
        out[f"num_workers={w} s"] = round(time.perf_counter() - t, 2)
    a, b = FeatureCache(root / "w0" / "train"), FeatureCache(root / f"w{workers}" / "train")
    same = a.items() == b.items() and all(
        np.array_equal(a.load(it, arrays=None)["features"], b.load(it, arrays=None)["features"])
        for it in a.items())
    out["caches identical"] = same  # on CUDA, equal only where the encoder's kernels are deterministic
    out["ok"] = a.items() == b.items()
    return out


_SCATTER_VERIFY = """
import json, time, torch
from common.scatter import has_torch_scatter, segment_reduce
g = torch.Generator().manual_seed(0)
src = torch.randn(1_000_000, 64, generator=g).cuda()
index = torch.randint(0, 50_000, (1_000_000,), generator=g).cuda()
out = {"torch_scatter cuda kernels": has_torch_scatter(cuda=True)}
for red in ("sum", "mean", "max"):
    a = segment_reduce(src, index, 50_000, red, backend="torch")
    b = segment_reduce(src, index, 50_000, red, backend="torch_scatter")
    out[red + " rel diff vs torch"] = float((a - b).abs().max() / a.abs().max())
for be in ("torch", "torch_scatter"):
    segment_reduce(src, index, 50_000, "mean", backend=be); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        segment_reduce(src, index, 50_000, "mean", backend=be)
    torch.cuda.synchronize()
    out[be + " mean 1M x 64 ms"] = round(1000 * (time.perf_counter() - t) / 5, 2)
print("RESULT " + json.dumps(out))
"""

_FLASH_VERIFY = """
import json, sys, time, numpy as np, torch
import flash_attn
from pointprobe.models import create_encoder, encode_points
from pointprobe.models import ptv3
from tools.check_cuda import scene_of, first_scene_arrays
room = first_scene_arrays(sys.argv[1])
coord, color, normal = scene_of(*room, 200_000)
out = {"flash_attn": flash_attn.__version__}
torch.manual_seed(0)
model = create_encoder("sonata").eval().cuda()
res = {}
for label, fa in (("flash-attn", flash_attn), ("sdpa", None)):
    ptv3.flash_attn = fa
    run = lambda: encode_points(model, coord, color, normal, device="cuda", max_points=None,
                                out_dtype=torch.float16)
    f = run(); torch.cuda.synchronize()
    t = time.perf_counter(); f = run(); torch.cuda.synchronize()
    out[label + " encode_points points/s"] = round(len(coord) / (time.perf_counter() - t))
    res[label] = f.float()
cos = torch.nn.functional.cosine_similarity(res["flash-attn"], res["sdpa"], dim=1)
out["mean cosine flash vs sdpa (bf16)"] = float(cos.mean())
print("RESULT " + json.dumps(out))
"""


def first_scene_arrays(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coord, color, normal) saved by :func:`_save_room` (for the subprocess checks)."""
    z = np.load(path)
    return z["coord"], z["color"], z["normal"]


def _save_room(room, path: Path) -> Path:
    np.savez(path, coord=room[0], color=room[1], normal=room[2])
    return path


def _build(sdist: Path, target: Path, env: dict, budget: float) -> tuple[str, float, str]:
    """pip-install ``sdist`` into ``target`` against the installed torch within ``budget`` seconds:
    (status ok | failed | timed out, seconds, last line of its output)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--target", str(target), str(sdist)]
    t = time.perf_counter()
    # its own process group: on time-out the compilers it started are stopped with it
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    try:
        text, _ = p.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        return "timed out", round(time.perf_counter() - t, 1), f"no result within {budget:.0f} s"
    tail = text.strip().splitlines()
    return ("ok" if p.returncode == 0 else "failed"), round(time.perf_counter() - t, 1), \
        (tail[-1][:200] if tail else "")


def _verify(code: str, target: Path | None, args: list[str], budget: float) -> dict:
    """Run ``code`` in a fresh interpreter with ``target`` first on the path; its ``RESULT`` json."""
    path = [str(target)] if target else []
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(path + [str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=budget,
                       env=env)
    line = next((s for s in p.stdout.splitlines() if s.startswith("RESULT ")), None)
    if line is None:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"verified": False, "verify error": err}
    return {"verified": True, **json.loads(line[len("RESULT "):])}


def _arch_env(extra: dict) -> dict:
    major, minor = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else (9, 0)
    return {**os.environ, "TORCH_CUDA_ARCH_LIST": f"{major}.{minor}", "MAX_JOBS": str(os.cpu_count() or 4),
            "FORCE_CUDA": "1", **{k: v.format(arch=f"{major}{minor}") for k, v in extra.items()}}


def _sdist(sources: Path | None, prefix: str) -> Path | None:
    found = sorted(sources.glob(f"{prefix}-*.tar.gz")) if sources and sources.is_dir() else []
    return found[-1] if found else None


@check("torch-scatter CUDA kernels built from source against the installed torch")
def check_scatter_build(sources: Path | None, tmp: Path, budget: float, dry: bool = False) -> dict:
    sdist = _sdist(sources, "torch_scatter")
    if sdist is None:
        return {"ok": False, "status": f"no torch_scatter sdist in {sources} (run --fetch-sources first)"}
    if dry:
        return {"status": f"found {sdist.name}; not built (dry run)"}
    status, sec, tail = _build(sdist, tmp / "ts", _arch_env({}), budget)
    out = {"source": sdist.name, "build": status, "build s": sec, "build output": tail}
    if status == "ok":
        out.update(_verify(_SCATTER_VERIFY, tmp / "ts", [], 120))
    out["ok"] = status == "ok" and bool(out.get("torch_scatter cuda kernels"))
    return out


@check("flash-attn for PTv3 patch attention (built from the registry's source, time-boxed)")
def check_flash_attn(sources: Path | None, tmp: Path, room, budget: float, dry: bool = False) -> dict:
    room_file = _save_room(room, tmp / "room.npz")
    try:
        import flash_attn  # noqa: F401

        target, out = None, {"build": "already installed"}
    except ImportError:
        sdist = _sdist(sources, "flash_attn")
        if sdist is None:
            return {"ok": False, "status": f"no flash_attn sdist in {sources} (run --fetch-sources first)"}
        if dry:
            return {"status": f"found {sdist.name}; not built (dry run)"}
        env = _arch_env({"FLASH_ATTENTION_FORCE_BUILD": "TRUE", "FLASH_ATTN_CUDA_ARCHS": "{arch}",
                         "NVCC_THREADS": "2"})
        status, sec, tail = _build(sdist, tmp / "fa", env, budget)
        target = tmp / "fa"
        out = {"source": sdist.name, "build": status, "build s": sec, "build output": tail}
        if status != "ok":
            out["ran"] = "PTv3 with torch SDPA only (flash-attn did not install)"
            out["ok"] = False
            return out
    out.update(_verify(_FLASH_VERIFY, target, [str(room_file)], 180))
    out["ran"] = "PTv3 sonata with flash-attn varlen and with SDPA" if out.get("verified") else "nothing"
    out["ok"] = bool(out.get("verified"))
    return out


def gpu_path(room, tmp: Path, dev: str, sources: Path | None, quick: bool, dry: bool = False) -> None:
    """The issue-15 checks in order, each bounded (about 8 minutes on an H200; seconds with ``dry``)."""
    check_preprocess_parity(room if not dry else scene_of(*room, 800), dev, small=dry)
    check_encode_fraction(room, dev, 1500 if dry else (100_000 if quick else 200_000),
                          "sonata_small" if dry else "sonata", small=dry)
    check_extract_workers(room, tmp, dev, 3 if dry else 8, 1000 if dry else 150_000, 2 if dry else 4,
                          small=dry)
    check_scatter_build(sources, tmp, 60 if quick else 240, dry)
    check_flash_attn(sources, tmp, room, 60 if quick else 120, dry)


# ------------------------------------------------------------------------------ issue 14: tune
TUNE_POINT_METHODS: list[tuple[str, list[str]]] = [
    ("linear", []), ("decoder", []), ("ssf", []), ("lora", []), ("last_k", ["tune.k=1"]),
    ("progressive", ["tune.progressive_at=[0.3]"]), ("full", []), ("mezo", ["tune.over=ssf"])]
TUNE_VIDEO_METHODS: list[tuple[str, list[str]]] = [
    ("linear", []), ("ssf", []), ("lora", []), ("prompt", []), ("mezo", ["tune.over=ssf"])]
# tiny encoders (random init): a SparseUNet (spconv; LoRA on its convs) and a PTv3 (LoRA on qkv)
TUNE_POINT_ENCODERS: dict[str, list[str]] = {
    "sparseunet": ["encoder.name=sparseunet", "encoder.config={channels: [8, 16, 16], depths: [1, 1, 1]}",
                   "tune.lora_targets=[conv1, conv2]"],
    "ptv3_tiny": ["encoder.name=ptv3_tiny", "encoder.config={}"],
}


def _tune_common(steps: int) -> list[str]:
    """The tune.* overrides of every tiny run, points and video: ``steps`` steps, a small lr grid, one
    standardisation batch, a checkpoint at the end, no progress bar."""
    return ["tune.progress=false", f"tune.steps={steps}", "tune.warmup=1", "tune.norm_batches=1",
            "tune.lrs=[0.01, 0.1]", "tune.wds=[0.0]", f"tune.save_every={steps}"]


def _tune_point_cfg(data: Path, out: Path, enc: str, dev: str, steps: int, extra: list[str]):
    from common.config import load_config
    from pointprobe.tune import PointTuneConfig

    return load_config(PointTuneConfig, None, [
        f"data.root={data}", f"out={out}", *TUNE_POINT_ENCODERS[enc], "aug.max_points=2000",
        *_tune_common(steps), "batch_size=2", f"device={dev}", *extra])


def _tune_video_cfg(data: Path, ckpt: Path, out: Path, dev: str, steps: int, extra: list[str]):
    from videoprobe.tune import load_task_config

    return load_task_config(None, [
        "data.kind=synth", f"data.root={data}", f"out={out}", "encoder.name=videomae_vit_tiny",
        f"encoder.checkpoint={ckpt}", "encoder.kwargs={num_frames: 8, img_size: 32}", "clips.clip_len=8",
        "clips.frame_step=2", "clips.size=32", "clips.batch_size=4", "clips.eval_batch_size=4",
        "clips.eval_clips=1", "clips.eval_spatial=center", *_tune_common(steps),
        "tune.select_split=test", "tune.eval_split=test",
        "tune.lora_targets=[qkv]", "prompt.pad=4", f"device={dev}", *extra])


def _tune_row(run, cfg, label: str) -> dict:
    """One ``run_*_tune`` call in this process: finished, the metric and the costs of its row (or the
    error's first line)."""
    rec: dict = {"run": label}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        row = run(cfg)
    except Exception as e:  # noqa: BLE001 - every method is reported, the next one runs
        rec.update(finished=False, error=f"{type(e).__name__}: {e}".splitlines()[0][:200])
        traceback.print_exc()
        return rec
    metric = "mIoU" if "mIoU" in row else "top1"
    rec.update(finished="stopped_at" not in row, method=row.get("method"), metric=metric,
               value=row.get(metric), trainable_params=row.get("trainable_params"),
               trainable_pct=row.get("trainable_pct"), peak_memory_mb=row.get("peak_memory_mb"),
               memory_kind=row.get("memory_kind"), step_time_s=row.get("step_time_s"),
               autocast_bf16=bool(cfg.tune.autocast and str(cfg.device) == "cuda"))
    return rec


def _first_step(out: Path) -> tuple[float, torch.Tensor]:
    """(loss of step 1, the cached feature standardisation mean / std) of the one run under ``out``."""
    from common.checkpoint import load_checkpoint

    (run_dir,) = list((out / "runs").iterdir())
    loss = json.loads((run_dir / "log.jsonl").read_text().splitlines()[0])["loss"]
    sd = load_checkpoint(run_dir / "last.pth", trust=True, hint=None)["model"]  # as the tuner resumes it
    norm = torch.cat([sd[k].float().flatten() for k in sorted(sd) if k.endswith(("norm.mean", "norm.std"))
                      and k.startswith("head.")])
    return float(loss), norm


def tune_agreement(data: Path, tmp: Path, dev: str) -> dict:
    """``method=linear`` (SparseUNet, 1 step, float32: autocast off) on the CPU and on ``dev`` from the
    same data, seed and weights: the relative difference of the cached standardisation and of the first
    step's loss (the same augmented batches on both: their randomness is numpy's, keyed by the seed)."""
    from pointprobe.tune import run_point_tune

    res = []
    for i, d in enumerate(("cpu", dev)):  # two run folders, also when dev is the CPU (a dry run)
        out = tmp / f"agree_{i}_{d}"
        run_point_tune(_tune_point_cfg(data, out, "sparseunet", d, 1,
                                       ["tune.method=linear", "tune.autocast=false"]))
        res.append(_first_step(out))
    (la, na), (lb, nb) = res
    return {"linear fp32 first-step loss rel diff": abs(la - lb) / max(abs(la), 1e-12),
            "linear standardisation rel diff": rel_diff(na, nb)}


def make_video_tune_data(root: Path) -> tuple[Path, Path]:
    """The bench's generated appearance / motion set (2 videos per class) and a random-init
    ``videomae_vit_tiny`` in the VideoMAE release layout (tools/bench_tuning_video.py)."""
    from tools.bench_tuning_video import make_data, write_encoders

    data = make_data(root, 2, 1)
    return data, write_encoders(root, ("videomae_vit_tiny",))["videomae_vit_tiny"]


@check("pointprobe tune / videoprobe tune: every method of the ladder (bf16 autocast on CUDA)")
def check_tune(data: Path, tmp: Path, dev: str = "cuda", steps: int = 3,
               point_encoders: tuple[str, ...] = ("sparseunet", "ptv3_tiny"), video: bool = True) -> dict:
    """Every ``pointprobe tune`` method on tiny generated scenes (per encoder of ``point_encoders``) and
    every ``videoprobe tune`` method on a tiny VideoMAE-layout ViT, in this process on ``dev``: per run
    finished / error, metric, trainable parameters, training peak memory (its kind), s / step; then the
    CPU-vs-``dev`` agreement of ``linear`` (:func:`tune_agreement`)."""
    from pointprobe.tune import run_point_tune
    from videoprobe.tune import run_video_tune

    runs = []
    for enc in point_encoders:
        for method, extra in TUNE_POINT_METHODS:
            label = f"points {enc} {method}"
            cfg = _tune_point_cfg(data, tmp / "tune_points" / enc, enc, dev, steps,
                                  [f"tune.method={method}", *extra])
            runs.append(_tune_row(run_point_tune, cfg, label))
            print(json.dumps(runs[-1]), flush=True)
    if video:
        vdata, ckpt = make_video_tune_data(tmp / "tune_video_data")
        for method, extra in TUNE_VIDEO_METHODS:
            cfg = _tune_video_cfg(vdata, ckpt, tmp / "tune_video", dev, steps,
                                  [f"tune.method={method}", *extra])
            runs.append(_tune_row(run_video_tune, cfg, f"video videomae_vit_tiny {method}"))
            print(json.dumps(runs[-1]), flush=True)
    out: dict = {"runs": runs, "finished": sum(bool(r["finished"]) for r in runs), "of": len(runs)}
    for r in runs:  # flat numbers for the markdown table
        if r["finished"]:
            out[r["run"]] = (f"{r['metric']} {r['value']:.1f}, {r['trainable_params']:,} trainable, "
                                  f"{(r['peak_memory_mb'] or 0):.0f} MB {r['memory_kind']}, "
                                  f"{r['step_time_s']:.3f} s/step" + (", bf16" if r["autocast_bf16"] else ""))
        else:
            out[r["run"]] = f"FAILED: {r['error']}"
    try:
        out.update(tune_agreement(data, tmp, dev))
    except Exception as e:  # noqa: BLE001 - the rows above still count
        out["agreement error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    out["ok"] = out["finished"] == out["of"] and "agreement error" not in out
    return out


def _fmt(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if 0.99 <= v < 1.0:  # cosines: show how close to 1
        return f"{v:.6f}"
    return f"{v:.3g}"


def only_names(only: str) -> set[str]:
    """The check names of ``--only``'s comma list (empty: every check)."""
    return {x.strip() for x in only.split(",") if x.strip()}


def section_name(only: str) -> str:
    """The docs/benchmarks.md section of a run: ``check_cuda`` for every check, else named by ``--only``
    (a partial run, e.g. ``check_cuda_gpu_path``, does not replace the full table)."""
    names = sorted(only_names(only))
    return "check_cuda" if not names else "check_cuda_" + "_".join(names)


def markdown(results: list[dict], command: str = "python tools/check_cuda.py") -> str:
    machine = next((r["machine"] for r in results if "machine" in r), None) or machine_line()
    lines = [f"Machine: {machine}.", "",
             "Every check runs the same computation on the CPU and on CUDA from the same (seeded,",
             "random) weights and generated inputs: `rel diff` = max |cpu - cuda| / max |cpu|, `cosine` =",
             "mean per-row cosine similarity to the CPU float32 result. Throughput ratios are against this",
             "machine's CPU.", "",
             "| check | ok | numbers |", "| --- | --- | --- |"]
    for r in results:
        nums = "; ".join(f"{k}: {_fmt(v)}" for k, v in r.items()
                         if k not in ("check", "ok", "machine", "runs"))
        lines.append(f"| {r['check']} | {'yes' if r['ok'] else '**NO**'} | {nums} |")
    lines += ["", f"- command: `{command}`"]
    return "\n".join(lines)


def _command(only: str) -> str:
    return "python tools/check_cuda.py" + (f" --only {only}" if only else "") + \
        (" --sources .gpusrc" if "gpu_path" in only else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/check-cuda")
    ap.add_argument("--quick", action="store_true", help="fewer steps and smaller scenes")
    ap.add_argument("--doc", action="store_true", help="also write the section of docs/benchmarks.md")
    ap.add_argument("--only", default="", help="comma list of check function names (e.g. check_spconv)")
    ap.add_argument("--render", metavar="JSON", help="only re-render OUT/check_cuda.md (and --doc) from a "
                    "check_cuda.json written on a GPU machine")
    ap.add_argument("--sources", type=Path, default=None,
                    help="folder with the torch-scatter and flash-attn source archives (--fetch-sources)")
    ap.add_argument("--fetch-sources", type=Path, metavar="DIR", help="download those archives and stop")
    ap.add_argument("--dry-run", action="store_true", help="without a GPU: the imports and the CPU parts of "
                    "the GPU-path checks on small data; writes nothing to docs")
    args = ap.parse_args(argv)
    if args.fetch_sources:
        for f in fetch_sources(args.fetch_sources):
            print(f)
        return 0
    warnings.filterwarnings("ignore", category=FutureWarning)  # spconv's torch.cuda.amp decorators
    if args.render:
        results = json.loads(Path(args.render).read_text())
        md = markdown(results, _command(args.only))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "check_cuda.md").write_text(md + "\n")
        if args.doc:
            update_section(section_name(args.only), md)
        return 0
    if args.dry_run:
        return dry_run(Path(args.out), args.sources, args.only)
    if not torch.cuda.is_available():
        print("check_cuda: CUDA is not available on this machine; nothing to check", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        data = scenes(tmp / "data", 5)
        scene = first_scene(data)
        calls = [
            ("check_env", lambda: check_env()),
            ("check_spconv", lambda: check_spconv()),
            ("check_sparseunet", lambda: check_sparseunet(scene)),
            ("check_ptv3", lambda: check_ptv3(scene)),
            ("check_scatter", lambda: check_scatter()),
            ("check_linear_probe", lambda: check_linear_probe()),
            ("check_lift", lambda: check_lift()),
            ("check_pca", lambda: check_pca()),
            ("check_video", lambda: check_video(args.quick)),
            ("check_pretrain", lambda: check_pretrain(data, tmp, args.quick)),
            ("check_nccl", lambda: check_nccl(data, tmp)),
            ("check_throughput", lambda: check_throughput(scene, args.quick)),
            ("gpu_path", lambda: gpu_path((scene.coord, scene.color, scene.normal), tmp, "cuda", args.sources,
                                          args.quick)),
            ("tune", lambda: check_tune(data, tmp, "cuda", 2 if args.quick else 3)),
        ]
        only = only_names(args.only)
        for name, call in calls:
            if not only or name in only:
                call()
    md = markdown(RESULTS, _command(args.only))
    (out / "check_cuda.md").write_text(md + "\n")
    (out / "check_cuda.json").write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")
    if args.doc:
        update_section(section_name(args.only), md)
    failed = sum(not r["ok"] for r in RESULTS)
    print(f"check_cuda: {len(RESULTS) - failed} passed, {failed} failed; {out / 'check_cuda.md'}")
    return failed


def dry_run(out: Path, sources: Path | None, only: str = "") -> int:
    """The GPU-path checks and the tune check (``--only gpu_path`` / ``--only tune``: one of them) on the
    CPU with small data (no builds; tune: 5 generated scenes, 1 step per method, the SparseUNet and the
    video ViT): that the script imports and its CPU parts work. Writes OUT/check_cuda_dry.json; the exit
    status is the number of failed checks other than the source lookups (which fail where the archives
    were not fetched)."""
    from tools.bench_scale_points import room_scene

    RESULTS.clear()
    names = only_names(only)
    r = room_scene(4000, 0)
    room = (r["coord"], r["color"], r["normal"])
    with tempfile.TemporaryDirectory() as tmpd:
        if not names or "gpu_path" in names:
            gpu_path(room, Path(tmpd), "cpu", sources, quick=True, dry=True)
        if not names or "tune" in names:
            data = scenes(Path(tmpd) / "data", 5)  # as the full run: 3 train, 1 val, 1 test scenes
            check_tune(data, Path(tmpd), "cpu", 1, point_encoders=("sparseunet",))
    out.mkdir(parents=True, exist_ok=True)
    (out / "check_cuda_dry.json").write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")
    failed = sum(not r["ok"] for r in RESULTS if not r["check"].startswith(("torch-scatter", "flash-attn")))
    print(f"check_cuda --dry-run: {len(RESULTS)} checks ran on the CPU, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
