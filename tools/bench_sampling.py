"""Benchmark voxel grid sampling (with the inverse map) of a synthetic 1M-point room.

Compares ``common.sampling.grid_sample`` with a Pointcept-style numpy path (FNV-1a 64-bit hash of the
grid coordinates, argsort, ``np.unique`` with inverse and counts, one random point per voxel, written
here) and with open3d's ``voxel_down_sample`` / ``voxel_down_sample_and_trace``. Writes the section
``bench_sampling`` of ``docs/benchmarks.md``.

    OMP_NUM_THREADS=1 python tools/bench_sampling.py [--points 1000000] [--grid 0.02] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import machine_line, update_section  # noqa: E402
from common.sampling import grid_sample, grid_sample_test  # noqa: E402

FNV64_OFFSET = np.uint64(0xCBF29CE484222325)
FNV64_PRIME = np.uint64(0x100000001B3)


def synthetic_room(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) float32 points on the floor, ceiling and walls of a 6 x 5 x 3 m room plus four boxes
    (furniture), with 5 mm noise: a stand-in for a ScanNet scene surface."""
    rng = np.random.default_rng(seed)
    size = np.array([6.0, 5.0, 3.0])
    pts = rng.uniform(0.0, 1.0, (n, 3)) * size
    face = rng.integers(0, 10, n)
    for f, (axis, value) in enumerate([(2, 0.0), (2, 3.0), (0, 0.0), (0, 6.0), (1, 0.0), (1, 5.0)]):
        pts[face == f, axis] = value
    for f, (lo, hi) in enumerate([((1, 1, 0), (2.2, 1.8, 0.8)), ((3, 3, 0), (4.5, 4.2, 0.5)),
                                  ((4.5, 0.5, 0), (5.8, 1.2, 1.9)), ((0.3, 3.5, 0), (1.0, 4.6, 1.1))]):
        sel = np.flatnonzero(face == 6 + f)
        lo_, hi_ = np.array(lo, dtype=float), np.array(hi, dtype=float)
        box = lo_ + rng.uniform(0.0, 1.0, (sel.size, 3)) * (hi_ - lo_)
        axis = rng.integers(0, 3, sel.size)
        side = rng.integers(0, 2, sel.size)
        box[np.arange(sel.size), axis] = np.where(side == 1, hi_[axis], lo_[axis])
        pts[sel] = box
    pts += rng.normal(0.0, 0.005, pts.shape)
    return pts.astype(np.float32)


def fnv1a_64(grid: np.ndarray) -> np.ndarray:
    """FNV-1a over the three 64-bit words of each row: h = (h xor word) * prime, modulo 2^64."""
    h = np.full(grid.shape[0], FNV64_OFFSET, dtype=np.uint64)
    words = grid.astype(np.uint64)
    for j in range(grid.shape[1]):
        h ^= words[:, j]
        h *= FNV64_PRIME
    return h


def pointcept_style(coord: np.ndarray, grid_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash + argsort + unique grid sampling (train mode): (kept rows (M,), inverse (N,))."""
    rng = np.random.default_rng(seed)
    coord = coord.astype(np.float64)  # same voxel formula as ours, so both partitions can be compared
    grid = np.floor((coord - coord.min(0)) / grid_size).astype(np.int64)
    key = fnv1a_64(grid)
    order = np.argsort(key)
    _, inverse_sorted, count = np.unique(key[order], return_inverse=True, return_counts=True)
    start = np.cumsum(np.insert(count, 0, 0)[:-1])
    kept = order[start + rng.integers(0, count.max(), count.size) % count]
    inverse = np.empty_like(inverse_sorted)
    inverse[order] = inverse_sorted
    _ = grid[kept]  # the grid coordinates of the kept points, as the real path returns them
    return kept, inverse


Timings = dict[str, tuple[float, float, object]]


def timed_round_robin(fns: dict[str, tuple[Callable[[], object], int]]) -> Timings:
    """Time several methods in interleaved rounds (each round runs every method still due once), so a
    change of machine load hits all of them alike. ``fns``: name -> (function, repeats). Returns
    name -> (median seconds, min seconds, last result); every function first runs once as a warm-up."""
    results = {name: fn() for name, (fn, _) in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(max(r for _, r in fns.values())):
        for name, (fn, repeats) in fns.items():
            if round_ < repeats:
                t0 = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), min(ts), results[name]) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--grid", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-doc", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    coord = synthetic_room(args.points)
    n, g, r = args.points, args.grid, args.repeats
    fns: dict[str, tuple[Callable[[], object], int]] = {
        "train": (lambda: grid_sample(coord, g, seed=0), r),
        "first": (lambda: grid_sample(coord, g, mode="first"), r),
        "test": (lambda: grid_sample_test(coord, g), max(1, r // 2)),
        "numpy": (lambda: pointcept_style(coord, g, seed=0), r),
    }
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - open3d is a dependency, but keep the bench usable
        print(f"open3d not importable ({exc}); skipping its rows", file=sys.stderr)
    else:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord.astype(np.float64)))
        lo, hi = pcd.get_min_bound(), pcd.get_max_bound()
        fns["o3d"] = (lambda: pcd.voxel_down_sample(g), r)
        fns["o3d_trace"] = (lambda: pcd.voxel_down_sample_and_trace(g, lo, hi, False), max(1, r // 3))
    res = timed_round_robin(fns)

    ours = res["train"][2]
    kept, inverse = res["numpy"][2]
    # same partition of the points: as many distinct (our voxel, their voxel) pairs as voxels on each side
    pairs = np.unique(ours.inverse * kept.size + inverse).size
    same = kept.size == len(ours) == pairs
    notes = {
        "train": ("probesuite `grid_sample` (train, with inverse)", f"{len(ours)} voxels"),
        "first": ("probesuite `grid_sample` (first, with inverse)", f"{len(res['first'][2])} voxels"),
        "test": ("probesuite `grid_sample_test` (all passes)", f"{len(res['test'][2])} passes"),
        "numpy": ("numpy FNV-1a hash + argsort + unique (Pointcept-style)",
                  f"{kept.size} voxels, same partition as ours: {'yes' if same else 'NO'}"),
    }
    if "o3d" in res:
        notes["o3d"] = ("open3d `voxel_down_sample` (no inverse)",
                        f"{len(res['o3d'][2].points)} voxels (grid origin min - size/2)")
        traced = res["o3d_trace"][2][0]
        notes["o3d_trace"] = ("open3d `voxel_down_sample_and_trace`", f"{len(traced.points)} voxels")
    med_ours = res["train"][0]
    rows = [(notes[k][0], res[k][0], res[k][1], notes[k][1]) for k in notes]

    lines = [
        f"Grid sampling of {n:,} points (synthetic room surface, float32), grid {g} m; "
        f"median and min of {r} runs after a warm-up, methods interleaved round by round "
        "(trace / test rows: fewer runs); "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. "
        "Ratio = method's median time / `grid_sample` train median time (higher: ours faster). "
        "The machine is shared with other jobs, so absolute times are noisy.",
        "",
        f"Machine: {machine_line()}",
        "",
        "| method | median ms | min ms | ratio vs ours | note |",
        "|---|---:|---:|---:|---|",
    ]
    for name, med, mn, note in rows:
        lines.append(f"| {name} | {med * 1e3:.1f} | {mn * 1e3:.1f} | {med / med_ours:.2f}x | {note} |")
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_doc:
        print(f"written to {update_section('bench_sampling', markdown)}")
    return markdown


if __name__ == "__main__":
    main()
