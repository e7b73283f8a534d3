"""Benchmark the 2D -> 3D feature fusion: batched, vectorised lifting against a per-frame Python loop.

Data: one generated scene (``pointprobe synth``: mesh vertices, ray-cast 320x240 RGB-D frames). The
image encoder is not timed: feature maps are random, (D=384, 17x23) like DINOv2 ViT-S/14 patch tokens
and (D=3, 240x320) like pixel colours. Timed: project every point into every frame, border margin,
occlusion test against the depth map, bilinear read of the feature map at the pixel, mean over views.

* ours: ``pointprobe.lift.project.FusionAccumulator`` with ``batch_frames`` frames per call (all
  (frame, point) projections of a batch in one tensor expression, only visible pairs gathered);
* baseline (written here): the straightforward loop of OpenScene-style fusion code, one frame at a
  time: numpy projection of all points, masks, ``F.interpolate`` of the frame's feature map to the
  image size, index the visible pixels, accumulate.

Both must give the same fused features and view counts (checked). Figure of merit: point-frame
projections per second (N points x F frames / time). Writes the section ``bench_lift`` of
``docs/benchmarks.md``.

    OMP_NUM_THREADS=1 python tools/bench_lift.py [--frames 20] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import machine_line, update_section  # noqa: E402
from pointprobe.lift.project import FusionAccumulator, world_to_camera  # noqa: E402


def baseline_fusion(coord: np.ndarray, maps: torch.Tensor, depth: np.ndarray, poses: np.ndarray,
                    K: np.ndarray, margin: int = 10, thr: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame loop: numpy projection, full-resolution upsampling of the map, visible pixels."""
    n, D = coord.shape[0], maps.shape[1]
    H, W = depth.shape[1:]
    acc = np.zeros((n, D), np.float32)
    cnt = np.zeros(n, np.int64)
    xyz = coord.astype(np.float32)
    for f in range(len(poses)):
        w2c = np.linalg.inv(poses[f]).astype(np.float32)
        cam = xyz @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.round(K[0, 0] * cam[:, 0] / z + K[0, 2])
            v = np.round(K[1, 1] * cam[:, 1] / z + K[1, 2])
        inside = (z > 1e-3) & (u >= margin) & (u < W - margin) & (v >= margin) & (v < H - margin)
        idx = np.flatnonzero(inside)
        ui, vi = u[idx].astype(np.int64), v[idx].astype(np.int64)
        d = depth[f, vi, ui]
        vis = (d > 0) & (np.abs(d - z[idx]) <= thr * d)
        idx, ui, vi = idx[vis], ui[vis], vi[vis]
        up = F.interpolate(maps[f : f + 1], size=(H, W), mode="bilinear", align_corners=False)[0]
        acc[idx] += up[:, vi, ui].T.numpy()  # each point at most once per frame: plain fancy-index add
        cnt[idx] += 1
    return acc / np.maximum(cnt, 1)[:, None], cnt


def ours_fusion(coord: np.ndarray, maps: torch.Tensor, depth: np.ndarray, poses: np.ndarray, K: np.ndarray,
                batch: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    acc = FusionAccumulator(torch.from_numpy(coord), maps.shape[1], margin=10, threshold=0.25, device=device)
    w2c = world_to_camera(torch.from_numpy(poses))
    dt = torch.from_numpy(depth)
    Kt = torch.from_numpy(K)
    for s in range(0, len(poses), batch):
        acc.add(maps[s : s + batch], dt[s : s + batch], w2c[s : s + batch], Kt)
    if device != "cpu":
        torch.cuda.synchronize()
    return acc.mean().cpu().numpy(), acc.count.cpu().numpy()


def _time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pointprobe.data import frames as fr
    from pointprobe.data.ply import read_ply
    from pointprobe.synth import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, 1, seed=0, frames_per_scene=args.frames, image_size=(320, 240), progress=False)
        d = Path(tmp) / "scans" / "scene0000_00"
        coord = read_ply(d / "scene0000_00_vh_clean_2.ply").coord.astype(np.float32)
        frames = [fr.read_frame(d, i) for i in fr.frame_indices(d)]
        K = fr.read_intrinsics(d)
    depth = np.stack([f.depth for f in frames])
    poses = np.stack([f.pose for f in frames])
    n, nf = coord.shape[0], len(frames)
    g = torch.Generator().manual_seed(0)
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for D, (h, w), what in ((384, (17, 23), "D=384 at 17x23 (DINOv2 ViT-S/14-like)"),
                            (3, (240, 320), "D=3 at 240x320 (pixel colour)")):
        maps = torch.randn(nf, D, h, w, generator=g)
        t_base, (ref, ref_cnt) = _time(lambda maps=maps: baseline_fusion(coord, maps, depth, poses, K),
                                       args.repeats)
        pf = n * nf
        rows.append((what, "per-frame loop (baseline)", "cpu", 1, t_base, pf / t_base, 1.0, "reference"))
        for device in devices:
            for batch in (1, 8, nf):
                t, (feat, cnt) = _time(lambda maps=maps, b=batch, dev=device: ours_fusion(
                    coord, maps, depth, poses, K, b, dev), args.repeats)
                # float32 (ours) vs float64 (baseline) projection may round a point lying exactly on a
                # pixel border differently: require agreement on all but a handful of points
                same = (cnt == ref_cnt) & (np.abs(feat - ref).max(1) <= 1e-3)
                check = (f"equal on {100 * same.mean():.3f}% of points ({int((~same).sum())} differ; "
                         f"{int((ref_cnt > 0).sum()):,} seen)")
                if same.mean() < 0.999:
                    raise SystemExit(f"results differ from the baseline: {check}")
                rows.append((what, f"ours, {batch} frame(s) per batch", device, batch, t, pf / t, t_base / t,
                             check))
    lines = [
        f"Fusion of {nf} frames (320x240, generated scene) onto {n:,} mesh vertices: projection, 10 px "
        "margin, relative occlusion test 0.25, bilinear feature read, mean over views. Encoder time excluded "
        f"(random feature maps). Median of {args.repeats} runs after a warm-up; torch threads = "
        f"{args.threads}; the CPU is shared with other jobs, so absolute times are noisy. Speed-up = "
        "baseline "
        "time / method time (same feature maps, same setting). The baseline upsamples each frame's whole map "
        "to the image (as OpenScene-style code does); at D=384 most of our gain is from reading only the "
        "needed pixels (a sparse bilinear-weight matrix times the patch table), at D=3 (stride 1) the rows "
        "isolate the batching of projections over frames.",
        "",
        f"Machine: {machine_line()}",
        "",
        "| features | method | device | ms | point-frame projections / s | speed-up | check vs baseline |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for what, method, dev, _, t, rate, speed, check in rows:
        lines.append(f"| {what} | {method} | {dev} | {1000 * t:.1f} | {rate / 1e6:.1f} M | {speed:.2f}x "
                     f"| {check} |")
    md = "\n".join(lines)
    print(md)
    if not args.no_doc:
        update_section("bench_lift", md)


if __name__ == "__main__":
    main()
