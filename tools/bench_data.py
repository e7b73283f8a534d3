"""Benchmark the ScanNet data path: PLY reading, vertex normals, synth + preprocess of 4 scenes.

* PLY: ``pointprobe.data.ply.read_ply`` against open3d's ``read_triangle_mesh`` on the same
  ScanNet-format binary mesh (a generated scene, ~80k vertices).
* Normals: the ``np.bincount`` path of ``vertex_normals`` against ``np.add.at`` and against the
  per-face Python loop of Pointcept's preprocessing script (written here).
* Synth + preprocess of 4 scenes (15 frames at 320x240 each) against the 20 s target.

Writes the section ``bench_data`` of ``docs/benchmarks.md``.

    OMP_NUM_THREADS=1 python tools/bench_data.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import machine_line, update_section  # noqa: E402
from pointprobe.data.ply import read_ply  # noqa: E402
from pointprobe.data.scannet import vertex_normals  # noqa: E402


def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _normals_add_at(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(coord[faces[:, 1]] - coord[faces[:, 0]], coord[faces[:, 2]] - coord[faces[:, 0]])
    nv = np.zeros_like(coord)
    for k in range(3):
        np.add.at(nv, faces[:, k], fn)
    return nv / np.maximum(np.linalg.norm(nv, axis=1, keepdims=True), 1e-12)


def _normals_loop(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Pointcept's preprocess_scannet.py: one Python iteration per face."""
    v01 = coord[faces[:, 1]] - coord[faces[:, 0]]
    v02 = coord[faces[:, 2]] - coord[faces[:, 0]]
    vec = np.cross(v01, v02)
    length = np.sqrt((vec**2).sum(1, keepdims=True)) + 1e-8
    nf = vec / length * (length * 0.5)
    nv = np.zeros_like(coord)
    for i in range(len(faces)):
        nv[faces[i]] += nf[i]
    return nv / (np.sqrt((nv**2).sum(1, keepdims=True)) + 1e-8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import open3d as o3d

    from pointprobe.data.scannet_preprocess import preprocess_dataset
    from pointprobe.synth import generate_dataset, generate_scene, write_scene

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = generate_scene(0, 1, frames=0)
        d = write_scene(scene, tmp / "scans")
        ply = d / f"{scene.name}_vh_clean_2.ply"
        n_v, n_f = len(scene.coord), len(scene.faces)
        ours = _times(lambda: read_ply(ply), args.repeats)
        ref = _times(lambda: o3d.io.read_triangle_mesh(str(ply)), args.repeats)
        m, r = statistics.median(ours), statistics.median(ref)
        rows.append(("PLY read, `read_ply`", m, 1.0, f"{n_v} vertices, {n_f} faces, binary"))
        rows.append(("PLY read, open3d `read_triangle_mesh`", r, r / m, "same file"))

        coord = scene.coord.astype(np.float64)
        faces = scene.faces
        ours_n = _times(lambda: vertex_normals(coord, faces), args.repeats)
        add_at = _times(lambda: _normals_add_at(coord, faces), args.repeats)
        loop = _times(lambda: _normals_loop(coord, faces), 1)
        agree = np.abs(vertex_normals(coord, faces) - _normals_loop(coord, faces)).max()
        mn = statistics.median(ours_n)
        rows.append(("vertex normals, `vertex_normals` (bincount)", mn, 1.0, f"{n_f} faces"))
        ma = statistics.median(add_at)
        rows.append(("vertex normals, `np.add.at`", ma, ma / mn, ""))
        note = f"max diff {agree:.1e}"
        rows.append(("vertex normals, per-face loop (Pointcept script)", loop[0], loop[0] / mn, note))

        t0 = time.perf_counter()
        generate_dataset(tmp / "raw", 4, seed=0, frames_per_scene=15, image_size=(320, 240), progress=False)
        t1 = time.perf_counter()
        preprocess_dataset(tmp / "raw", tmp / "pre", workers=2, progress=False)
        t2 = time.perf_counter()
        t0b = time.perf_counter()
        generate_dataset(tmp / "raw0", 4, seed=0, frames_per_scene=0, progress=False)
        t1b = time.perf_counter()

    table = ["| step | median ms | ratio vs ours | note |", "|---|---:|---:|---|"]
    for name, sec, ratio, note in rows:
        table.append(f"| {name} | {sec * 1000:.1f} | {ratio:.2f}x | {note} |")
    total = t2 - t0
    md = (
        f"Machine: {machine_line()}\n\n"
        f"Median of {args.repeats} runs after a warm-up (the loop reference: one run); OMP_NUM_THREADS "
        "as set by the caller; the machine is shared, absolute times are noisy. Ratio = method time / our "
        "time (higher: ours faster).\n\n" + "\n".join(table) + "\n\n"
        f"Synthetic data for the demo / end-to-end test, 4 scenes: `generate_dataset` with 15 frames of "
        f"320x240 per scene {t1 - t0:.1f} s (without frames {t1b - t0b:.1f} s), `preprocess_dataset` "
        f"(2 workers) {t2 - t1:.1f} s; total {total:.1f} s = {total / 20:.2f} of the 20 s target.\n"
    )
    path = update_section("bench_data", md)
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
