"""Benchmark the input-order-independent choice of one point per voxel (``encode_points`` default).

``pointprobe.models.encode.canonical_index`` picks, in every voxel, the lexicographically smallest
(coord, colour, normal) row, sorting only the voxels that hold several points. Baseline (written
here): the direct definition, one ``np.lexsort`` of every row by (voxel, features). Both must return
the same rows (checked). Data: generated rooms (``pointprobe.synth``), centre-shifted and
grid-sampled as ``encode_points`` does, at 2 cm (the encoders' grid) and 5 cm. Writes the section
``bench_preprocess`` of ``docs/benchmarks.md``.

    python tools/bench_preprocess.py [--scenes 3] [--repeats 5] [--no-doc]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import machine_line, update_section  # noqa: E402
from common.sampling import grid_sample  # noqa: E402
from pointprobe.models.encode import canonical_index, center_shift  # noqa: E402
from pointprobe.synth import generate_scene  # noqa: E402


def lexsort_all(inverse: np.ndarray, m: int, feat: np.ndarray) -> np.ndarray:
    """Baseline: one lexsort of every row by (voxel, last feature column, ..., first)."""
    keys = [feat[:, j] for j in range(feat.shape[1] - 1, -1, -1)] + [inverse]
    order = np.lexsort(keys)
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = inverse[order[1:]] != inverse[order[:-1]]
    return order[first]


def _median_ms(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    rows = []
    for i in range(args.scenes):
        sc = generate_scene(0, i, frames=0)
        normal = np.random.default_rng(i).normal(size=sc.coord.shape).astype(np.float32)  # any 3 columns
        xyz = center_shift(sc.coord.astype(np.float64)).astype(np.float32)
        feat = np.concatenate([xyz, sc.color / 255.0, normal], 1).astype(np.float32)
        for grid in (0.02, 0.05):
            gs = grid_sample(xyz, grid, mode="first")
            inv, m = np.asarray(gs.inverse), len(gs)
            if not np.array_equal(canonical_index(inv, m, feat), lexsort_all(inv, m, feat)):
                raise SystemExit(f"bench_preprocess: results differ on scene {i} at grid {grid}")
            base = _median_ms(lambda inv=inv, m=m, f=feat: lexsort_all(inv, m, f), args.repeats)
            ours = _median_ms(lambda inv=inv, m=m, f=feat: canonical_index(inv, m, f), args.repeats)
            shared = float((np.bincount(inv, minlength=m)[inv] > 1).mean())
            rows.append((sc.name, len(xyz), grid, m, shared, base, ours))
    lines = [
        f"Machine: {machine_line()}. Median of {args.repeats} runs per scene; same rows returned (checked).",
        "",
        "| scene | points | grid (m) | voxels | points in shared voxels | lexsort of all rows (ms) | "
        "ours (ms) | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, n, grid, m, shared, base, ours in rows:
        lines.append(f"| {name} | {n:,} | {grid} | {m:,} | {shared:.0%} | {base:.1f} | {ours:.1f} | "
                     f"{base / ours:.1f}x |")
    lines += ["", "- command: `python tools/bench_preprocess.py`"]
    md = "\n".join(lines)
    print(md)
    if not args.no_doc:
        print(f"written to {update_section('bench_preprocess', md)}")
    return md


if __name__ == "__main__":
    main()
