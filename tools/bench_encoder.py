"""Benchmark point encoders: throughput (input points / s) and peak memory of ``encode_points``.

Every configuration runs in its own subprocess so its peak resident memory (``ru_maxrss``) is its own;
CUDA runs also report ``torch.cuda.max_memory_allocated``. Encoders use random weights (speed and
memory do not depend on the values). Scenes are synthetic rooms (surfaces of walls, floor and boxes)
whose area grows with the number of points, so the density stays that of a scan at ~0.02 m.
Baseline: ``sonata_small`` at the same size, same device, same run; the SparseUNet row gives the
throughput ratio against it. A 1M-point scene is encoded in spatial chunks (``max_points``) to show the
memory bound, and a chunked/unchunked comparison gives how much chunking changes the features.

    python tools/bench_encoder.py            # writes the bench_encoder section of docs/benchmarks.md
    python tools/bench_encoder.py --quick    # small sizes, prints only
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def synthetic_room(n: int, seed: int = 0, points_per_m2: float = 4000.0):
    """n points on the surfaces of a room with boxes; floor area scaled so density ~ points_per_m2."""
    rng = np.random.default_rng(seed)
    side = max(2.5, float(np.sqrt(n / points_per_m2 / 4.2)))  # floor + walls + boxes ~ 4.2 x floor area
    w, d, h = 1.2 * side, side, 3.0
    surf = [((0, 0, 0), (w, 0, 0), (0, d, 0), (0, 0, 1)), ((0, 0, 0), (w, 0, 0), (0, 0, h), (0, 1, 0)),
            ((0, d, 0), (w, 0, 0), (0, 0, h), (0, -1, 0)), ((0, 0, 0), (0, d, 0), (0, 0, h), (1, 0, 0)),
            ((w, 0, 0), (0, d, 0), (0, 0, h), (-1, 0, 0))]
    for _ in range(max(2, int(w * d / 5))):
        x, y = rng.uniform(0.3, w - 1.3), rng.uniform(0.3, d - 1.3)
        a, b, c = rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.8)
        surf += [((x, y, c), (a, 0, 0), (0, b, 0), (0, 0, 1)),
                 ((x, y, 0), (a, 0, 0), (0, 0, c), (0, -1, 0)),
                 ((x, y + b, 0), (a, 0, 0), (0, 0, c), (0, 1, 0)),
                 ((x, y, 0), (0, b, 0), (0, 0, c), (-1, 0, 0)),
                 ((x + a, y, 0), (0, b, 0), (0, 0, c), (1, 0, 0))]
    o, u, v, nrm = (np.array([s[i] for s in surf], dtype=float) for i in range(4))
    area = np.linalg.norm(np.cross(u, v), axis=1)
    k = rng.choice(len(surf), size=n, p=area / area.sum())
    st = rng.uniform(size=(n, 2))
    xyz = o[k] + st[:, :1] * u[k] + st[:, 1:] * v[k] + rng.normal(scale=0.003, size=(n, 3))
    rgb = rng.uniform(0, 255, size=(len(surf), 3))[k] + rng.normal(scale=8, size=(n, 3))
    return xyz, np.clip(rgb, 0, 255), nrm[k]


def _build(name: str):
    from pointprobe.models import ENCODERS, create_encoder

    if name == "sparseunet" and name not in ENCODERS:
        from pointprobe.models.sparseunet import create_sparseunet

        return create_sparseunet()
    return create_encoder(name)


def worker(args: argparse.Namespace) -> dict:
    """Runs in a subprocess: one encoder, one scene size; prints a JSON line."""
    import torch

    from common.sampling import grid_sample
    from pointprobe.models import encode_points
    from pointprobe.models.encode import center_shift

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = _build(args.encoder).to(device).eval()
    warm = synthetic_room(5000, seed=1)
    encode_points(model, *warm, device=device)  # warm-up (allocator, spconv tables, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    xyz, rgb, nrm = synthetic_room(args.points, seed=0)
    voxels = len(grid_sample(center_shift(xyz), 0.02, mode="first"))
    max_points = None if args.max_points <= 0 else args.max_points
    t = time.perf_counter()
    feat = encode_points(model, xyz, rgb, nrm, device=device, max_points=max_points)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    out = {
        "encoder": args.encoder, "device": args.device, "points": args.points, "voxels": voxels,
        "max_points": max_points, "dim": int(feat.shape[1]), "seconds": seconds,
        "points_per_s": args.points / seconds, "rss_model_mb": rss_model,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "output_mb": feat.numel() * 4 / 2**20,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.compare_chunks:
        ref = encode_points(model, xyz, rgb, nrm, device=device, max_points=None)
        cos = torch.nn.functional.cosine_similarity(feat, ref, dim=1)
        rel = (feat - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)
        out.update(cos_mean=float(cos.mean()), cos_p01=float(cos.quantile(0.01)),
                   rel_median=float(rel.median()), rel_p99=float(rel.quantile(0.99)))
    return out


def run_config(encoder: str, points: int, device: str, max_points: int = 0, compare: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--encoder", encoder,
           "--points", str(points), "--device", device, "--max-points", str(max_points)]
    if compare:
        cmd.append("--compare-chunks")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        print(f"  {encoder} {points} {device}: FAILED: {' | '.join(tail)}", flush=True)
        return {"encoder": encoder, "points": points, "device": device, "error": tail[-1] if tail else "?"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {encoder:12s} {device:4s} {points:>8d} pts ({res['voxels']} voxels, "
          f"max_points={max_points or '-'}): "
          f"{res['seconds']:.1f} s, {res['points_per_s']:.0f} pts/s, peak RSS {res['peak_rss_mb']:.0f} MB "
          f"(wall incl. start-up {time.perf_counter() - t:.0f} s)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", default="sonata_small")
    ap.add_argument("--points", type=int, default=50_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-points", type=int, default=0)
    ap.add_argument("--compare-chunks", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes, print only (no docs update)")
    args = ap.parse_args()
    if args.worker:
        warnings.simplefilter("ignore")
        print(json.dumps(worker(args)))
        return

    import torch

    from common.benchdoc import machine_line, update_section

    sizes = [10_000, 20_000] if args.quick else [50_000, 200_000]
    large = 100_000 if args.quick else 1_000_000
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    encoders = ["sonata_small"]
    try:
        import pointprobe.models.sparseunet  # noqa: F401

        encoders.append("sparseunet")
    except ImportError:
        pass
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"torch {torch.get_num_threads()}", flush=True)
    rows = [run_config(e, n, d) for d in devices for n in sizes for e in encoders]
    chunk_budget = 100_000 if not args.quick else 20_000
    big = run_config("sonata_small", large, "cpu", chunk_budget)
    fid = run_config("sonata_small", sizes[0], "cpu", max_points=sizes[0] // 2, compare=True)
    if args.quick:
        return

    def fmt(r: dict, base: dict | None) -> str:
        if "error" in r:
            return f"| {r['encoder']} | {r['device']} | {r['points']:,} | - | failed: {r['error']} | | | |"
        ratio = f"{r['points_per_s'] / base['points_per_s']:.2f}x" if base and "error" not in base else "-"
        gpu = f" / {r['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in r else ""
        return (f"| {r['encoder']} ({r['params_m']:.1f}M, {r['dim']} ch) | {r['device']} | {r['points']:,} | "
                f"{r['voxels']:,} | {r['seconds']:.1f} | {r['points_per_s']:,.0f} | {ratio} | "
                f"{r['peak_rss_mb']:,.0f} (model {r['rss_model_mb']:,.0f}){gpu} |")

    lines = [
        f"Machine: {machine_line()}",
        "",
        "`encode_points` (grid 0.02 m, all levels up-cast, features for every input point) on synthetic",
        "room scenes; random weights; one timed run after a warm-up, each configuration in its own",
        f"process (threads: torch {torch.get_num_threads()}). Ratio = throughput / sonata_small throughput",
        "at the same size and device (higher: faster). Peak RSS = the process's maximum resident memory",
        "(MB; 'model' = after building the model and the warm-up); CUDA rows add the peak CUDA",
        "allocation. The machine is shared with other jobs, so absolute times are noisy.",
        "",
        "| encoder | device | points | voxels | seconds | points/s | ratio vs sonata_small | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in devices:
        for n in sizes:
            base = next((r for r in rows if r["device"] == d and r["points"] == n
                         and r["encoder"] == "sonata_small"), None)
            lines += [fmt(r, base) for r in rows if r["device"] == d and r["points"] == n]
    one_pass = next((r for r in rows if r["device"] == "cpu" and r["points"] == sizes[-1]
                     and r["encoder"] == "sonata_small"), None)
    lines += [
        "",
        f"Large scene, CPU: {large:,} points encoded in spatial chunks of at most {chunk_budget:,} voxels",
        f"(+ 1 m context margin; `encode_points(max_points={chunk_budget})`), next to the largest",
        "one-pass run. The N x D float32 output itself is part of the peak.",
        "",
        "| encoder | device | points | voxels | seconds | points/s | ratio vs one pass | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    if one_pass is not None:
        lines.append(fmt(one_pass, one_pass).replace("sonata_small (", "sonata_small, one pass ("))
    lines.append(fmt(big, one_pass).replace("sonata_small (", f"sonata_small, chunks of {chunk_budget:,} ("))
    if "error" not in big:
        lines.append(f"\nOutput tensor of the chunked run alone: {big['output_mb']:,.0f} MB.")
    if "error" not in fid:
        lines += [
            "",
            f"Effect of chunking on features: {sizes[0]:,}-point scene, chunks of "
            f"{sizes[0] // 2:,} voxels vs one pass: mean cosine {fid['cos_mean']:.4f}, 1st percentile "
            f"{fid['cos_p01']:.4f}; relative error |f - f_one_pass| / |f_one_pass|: median "
            f"{fid['rel_median']:.4f}, 99th percentile {fid['rel_p99']:.4f}. PTv3 patches follow the",
            "serialized order of the whole point set, so chunking changes every point a little, not only",
            "points at chunk borders.",
        ]
    path = update_section("bench_encoder", "\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
