"""Lifting fidelity with oracle 2D features: how right are lifted values where the truth is known?

Data: generated rooms (``pointprobe.synth``, a seed no test uses) written in the raw ScanNet layout
with ray-cast RGB-D frames along the generator's ``walk`` camera path and the per-frame label maps it
renders (``label-filt/N.png``: the label id of the surface each pixel's ray hits). The 2D "features" are
oracles: a one-hot of the frame's label map and the frame's own colours (as JPEG-decoded, like any
encoder input), lifted onto the mesh vertices by ``pointprobe.lift.lift.lift_scene`` with each
visibility rule. Per rule and frame count:

* coverage: fraction of vertices seen by at least one view;
* label accuracy: the lifted one-hot's argmax equals the vertex's own label, at seen vertices;
* colour error: mean absolute channel difference between lifted and vertex colour (/255), median and
  90th percentile over seen vertices (JPEG, shading blend and colour noise put a floor of a few /255);
* far-source fraction: seen vertices at least one of whose fused views read a pixel whose ray hits the
  mesh more than 5 cm from the vertex (the value came, at least partly, from another surface).
* recall of visible: the fraction of the vertices the frames' cameras can see at all (inside an image,
  nothing on the ray from the camera to the vertex: ray-cast on the mesh) that the rule counts as seen.

Geometry bounds on coverage, whatever the rule: the vertices visible from the frames' cameras, and per
room the vertices visible from ``--ceiling-cameras`` free-standing cameras anywhere in it.

Targets (issue 17), default rule at 30 frames: accuracy >= 97 %, coverage >= 85 %, far-source <= 2 %.
Writes the section ``bench_lift_fidelity`` of ``docs/benchmarks.md``.

    OMP_NUM_THREADS=2 python tools/bench_lift_fidelity.py [--scenes 3] [--frames 15 30 45] [--seed 917]
        [--image-size 640x480] [--rules NAME_PART ...] [--no-doc]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchdoc import machine_line, update_section  # noqa: E402
from pointprobe.lift.lift import FusionConfig, lift_scene  # noqa: E402

FAR = 0.05  # metres
DEFAULT = FusionConfig()
CONTACT = 0.03  # metres: a vertex this close to another label's surface has an ambiguous pixel label
DEFAULT_NAME = "sensor 0.5 cm + 0.5 %, grazing cut, cos/z weights (default)"
RULES: dict[str, FusionConfig] = {
    "openscene (relative 0.25, plain mean)": FusionConfig(rule="openscene"),
    "openscene absolute 3 cm": FusionConfig(rule="openscene", occlusion_relative=False,
                                          occlusion_threshold=0.03),
    "sensor 2 cm + 1 %, grazing cut, cos/z weights": FusionConfig(depth_tol_abs=0.02, depth_tol_rel=0.01),
    "sensor 1 cm + 0.5 %, grazing cut, cos/z weights": FusionConfig(depth_tol_abs=0.01, depth_tol_rel=0.005),
    DEFAULT_NAME: DEFAULT,
    "sensor 0.5 cm + 0.5 %, grazing cut, cos/z weights, views <= 5 m": FusionConfig(max_depth=5.0),
    "sensor 0.5 cm + 0.5 %, grazing cut, cos^2/z^2 weights": FusionConfig(angle_power=2, distance_power=2),
    "sensor 0.5 cm + 0.5 %, grazing cut, cos^4/z^4 weights": FusionConfig(angle_power=4, distance_power=4),
    "sensor 0.5 cm + 0.5 %, grazing cut at cos 0.1 (84 deg), cos/z weights": FusionConfig(min_cos=0.1),
    "sensor 0.5 cm + 0.5 % + 0.5 footprint x tan, grazing cut, cos/z weights": FusionConfig(slope_tol=0.5),
    "sensor 0.5 cm + 0.5 % + 1 footprint x tan, grazing cut, cos/z weights": FusionConfig(slope_tol=1.0),
    "sensor 0.5 cm + 0.5 %, grazing cut, cos/z weights, edge pixels (3x3 range > 5 %) dropped":
        FusionConfig(edge_tol=0.05),
}


def _scene_truth(scene) -> dict:
    import open3d as o3d

    from pointprobe.data.scannet import vertex_normals
    from pointprobe.synth import vertex_label_ids

    label_id, _ = vertex_label_ids(scene)
    ids = np.unique(label_id)
    label = np.searchsorted(ids, label_id)
    # distance of every vertex to the nearest surface of another label (touching / coincident objects)
    face_label = label[scene.faces[:, 0]]
    contact = np.full(len(label), np.inf)
    for c in range(len(ids)):
        other = scene.faces[face_label != c]
        mine = np.flatnonzero(label == c)
        if len(other) and len(mine):
            rc = o3d.t.geometry.RaycastingScene()
            rc.add_triangles(o3d.core.Tensor(np.ascontiguousarray(scene.coord, np.float32)),
                             o3d.core.Tensor(np.ascontiguousarray(other, np.uint32)))
            contact[mine] = rc.compute_distance(o3d.core.Tensor(scene.coord[mine].astype(np.float32))).numpy()
    return {"coord": scene.coord.astype(np.float32), "color": scene.color.astype(np.float32),
            "normal": vertex_normals(scene.coord, scene.faces), "ids": ids, "label": label,
            "clear": contact > CONTACT}


def _oracle_fn(d: Path, ids: np.ndarray):
    """FrameBatch -> (B, C + 3, H, W): one-hot of the label map (C = label ids of the scene), RGB/255."""
    from PIL import Image

    def fn(batch) -> torch.Tensor:
        B, H, W = batch.depths.shape
        out = np.zeros((B, len(ids) + 3, H, W), np.float32)
        for k, i in enumerate(batch.indices):
            lab = np.asarray(Image.open(d / "label-filt" / f"{i}.png")).astype(np.int64)
            cls = np.searchsorted(ids, lab)  # every map id is a vertex id of this scene
            np.put_along_axis(out[k], cls[None], 1.0, axis=0)
        out[:, len(ids):] = batch.colors.transpose(0, 3, 1, 2) / 255.0
        return torch.from_numpy(out)

    return fn


def _far_fraction(coord: np.ndarray, faces: np.ndarray, pairs: list, seen: np.ndarray,
                  K: np.ndarray) -> float:
    """Fraction of seen points with a fused view whose pixel's ray hits the mesh > FAR from the point."""
    import open3d as o3d

    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(np.ascontiguousarray(coord, np.float32)),
                     o3d.core.Tensor(np.ascontiguousarray(faces, np.uint32)))
    far = np.zeros(len(coord), bool)
    for pose, idx, u, v in pairs:
        cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(len(u))], 1)
        dirs = cam @ pose[:3, :3].T  # camera z component 1: t_hit is the z-depth
        rays = np.concatenate([np.broadcast_to(pose[:3, 3], dirs.shape), dirs], 1).astype(np.float32)
        t = rc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        hit = rays[:, :3] + rays[:, 3:] * np.where(np.isfinite(t), t, 0)[:, None]
        bad = ~np.isfinite(t) | (np.linalg.norm(hit - coord[idx], axis=1) > FAR)
        far[idx[bad]] = True
    return float(far[seen].mean()) if seen.any() else 0.0


def _raycaster(coord: np.ndarray, faces: np.ndarray):
    import open3d as o3d

    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(np.ascontiguousarray(coord, np.float32)),
                     o3d.core.Tensor(np.ascontiguousarray(faces, np.uint32)))
    return lambda rays: rc.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays, np.float32)))["t_hit"].numpy()


def visible_from(coord: np.ndarray, cast, poses: list[np.ndarray], K: np.ndarray, size: tuple[int, int],
                 margin: int = 10) -> np.ndarray:
    """(N,) bool: vertices inside some pose's image (``margin`` px from the border) with nothing in front of
    them (the ray from the camera to the vertex meets the mesh no nearer than 1 cm before it): the
    geometric truth of what these cameras can see, whatever the depth maps and the rule."""
    W, H = size
    seen = np.zeros(len(coord), bool)
    for T in poses:
        c = (coord - T[:3, 3]) @ T[:3, :3]
        z = np.where(c[:, 2] > 1e-3, c[:, 2], np.nan)
        with np.errstate(invalid="ignore"):
            u = np.round(K[0, 0] * c[:, 0] / z + K[0, 2])
            v = np.round(K[1, 1] * c[:, 1] / z + K[1, 2])
            idx = np.flatnonzero((u >= margin) & (u < W - margin) & (v >= margin) & (v < H - margin))
        ray = coord[idx] - T[:3, 3]
        dist = np.linalg.norm(ray, axis=1)
        t = cast(np.concatenate([np.broadcast_to(T[:3, 3], ray.shape), ray / dist[:, None]], 1))
        seen[idx[t >= dist - 0.01]] = True
    return seen


def free_cameras(scene, cast, n: int, seed: int) -> list[np.ndarray]:
    """``n`` camera-to-world poses standing free in the room (nothing but floor below, nothing within
    0.3 m around or above, enclosed by the room), heights 0.6-2.0 m, any yaw, pitches -1.3..+0.7 rad."""
    from pointprobe.synth.cameras import _pose

    rng = np.random.default_rng(seed)
    Wr, Dr, _ = scene.room_size
    G = scene.room_to_world
    out: list[np.ndarray] = []
    dirs = [np.array([np.cos(a), np.sin(a), 0.0]) for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    for _ in range(50 * n):
        if len(out) == n:
            break
        p, z = np.array([rng.uniform(0.3, Wr - 0.3), rng.uniform(0.3, Dr - 0.3)]), rng.uniform(0.6, 2.0)
        T = G @ _pose(p, z, rng.uniform(0, 2 * np.pi), rng.uniform(-1.3, 0.7), 0.0)
        o = T[:3, 3]
        dd = [G[:3, :3] @ x for x in (*dirs, np.array([0, 0, -1.0]), np.array([0, 0, 1.0]))]
        t = cast(np.array([np.concatenate([o, x]) for x in dd]))
        around, down, up = t[:8], t[8], t[9]
        if np.isfinite(around).sum() >= 6 and around.min() >= 0.3 and down >= z - 0.05 and up >= 0.3:
            out.append(T)
    return out


def measure(d: Path, scene, truth: dict, fusion: FusionConfig, K: np.ndarray) -> dict:
    """Lift the oracle maps of one written scene with ``fusion``; the metrics of the module docstring."""
    per_frame: dict[int, list] = {}

    def hook(batch, f_idx, idx, u, v, w):
        for k in torch.unique(f_idx).tolist():
            m = f_idx == k
            per_frame.setdefault(batch.indices[k], []).append(
                (batch.poses[k], idx[m].numpy(), u[m].numpy(), v[m].numpy()))

    C = len(truth["ids"])
    res = lift_scene(d, truth["coord"], _oracle_fn(d, truth["ids"]), C + 3, fusion, normal=truth["normal"],
                     pair_hook=hook)
    seen = res.visible_count > 0
    pairs = [(lst[0][0], *(np.concatenate([x[j] for x in lst]) for j in (1, 2, 3)))
             for lst in per_frame.values()]
    feats = res.features
    right = feats[:, :C].argmax(1) == truth["label"]
    acc = float(right[seen].mean()) if seen.any() else 0.0
    clear = seen & truth["clear"]
    acc_clear = float(right[clear].mean()) if clear.any() else 0.0
    cerr = np.abs(feats[seen, C:] * 255 - truth["color"][seen]).mean(1)
    vis = truth.get("frames_visible")
    recall = float((seen & vis).sum() / max(vis.sum(), 1)) if vis is not None else float("nan")
    return {"coverage": float(seen.mean()), "recall": recall, "accuracy": acc, "accuracy_clear": acc_clear,
            "contact_share": float(1 - clear.sum() / max(seen.sum(), 1)),
            "colour_median": float(np.median(cerr)) if seen.any() else float("nan"),
            "colour_p90": float(np.percentile(cerr, 90)) if seen.any() else float("nan"),
            "far": _far_fraction(truth["coord"], scene.faces, pairs, seen, K),
            "views": float(res.visible_count[seen].mean()) if seen.any() else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=917)
    ap.add_argument("--frames", type=int, nargs="+", default=[15, 30])
    ap.add_argument("--image-size", default="320x240")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ceiling-cameras", type=int, default=2000, help="free cameras for the room's ceiling")
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    ap.add_argument("--rules", nargs="*", default=None, help="only rules whose name contains one of these")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pointprobe.synth import camera_intrinsics, generate_scene, write_scene

    W, H = (int(x) for x in args.image_size.lower().split("x"))
    K = camera_intrinsics(W, H)
    t0 = time.perf_counter()
    results: dict[tuple[str, int], list[dict]] = {}
    rooms = []
    truths: dict[int, dict] = {}  # the geometry does not depend on the frame count
    visible: dict[int, list[float]] = {}  # per frame count: fraction of vertices the cameras can see
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.scenes):
            for nf in args.frames:
                scene = generate_scene(args.seed, i, frames=nf)
                rng = np.random.default_rng([args.seed, i, 1])
                d = write_scene(scene, Path(tmp) / f"f{nf}", (W, H), rng=rng)
                if i not in truths:
                    truths[i] = _scene_truth(scene)
                    cast = _raycaster(scene.coord, scene.faces)
                    cams = free_cameras(scene, cast, args.ceiling_cameras, args.seed + i)
                    truths[i]["ceiling"] = float(visible_from(scene.coord, cast, cams, K, (W, H)).mean())
                    truths[i]["ceiling_cameras"] = len(cams)
                truth = truths[i]
                cast = _raycaster(scene.coord, scene.faces)
                poses = [scene.room_to_world @ P for P in scene.camera_room_poses]
                truth["frames_visible"] = visible_from(scene.coord, cast, poses, K, (W, H))
                visible.setdefault(nf, []).append(float(truth["frames_visible"].mean()))
                if nf == args.frames[0]:
                    rooms.append(f"{scene.room_type} ({len(scene.coord)} vertices)")
                for name, spec in RULES.items():
                    if args.rules and not any(x in name for x in args.rules):
                        continue
                    spec = replace(spec, frame_stride=1, image_size=(W, H), batch_frames=8)
                    r = measure(d, scene, truth, spec, K)
                    results.setdefault((name, nf), []).append(r)
                    print(f"scene {i} {nf:3d} frames  {name:45s} " + " ".join(
                        f"{k}={v:.4f}" for k, v in r.items()), flush=True)
    elapsed = time.perf_counter() - t0
    keys = ("coverage", "recall", "accuracy", "accuracy_clear", "contact_share", "colour_median",
            "colour_p90", "far", "views")
    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in keys} for k, v in results.items()}
    n_cams = "/".join(str(truths[i]["ceiling_cameras"]) for i in sorted(truths))
    lines = [
        f"Oracle 2D features lifted onto generated rooms ({args.scenes} rooms of seed {args.seed}: "
        f"{', '.join(rooms)}; frames {W}x{H} along the generator's `walk` path, every frame used). "
        "Label maps one-hot and the frames' colours are lifted with each visibility rule; means over "
        "the rooms. Colour error: mean absolute channel difference between the lifted and the vertex "
        "colour (/255) at seen vertices. Far source: seen vertices with at least one fused view whose "
        f"pixel's ray hits the mesh more than {FAR * 100:.0f} cm from the vertex. Targets (default rule, "
        "30 frames): accuracy >= 97 %, coverage >= 85 %, far source <= 2 %. Away from contacts: accuracy at "
        f"seen vertices farther than {CONTACT * 100:.0f} cm from any surface of another label (a vertex on "
        "a door trim flush with the wall's opening, a book on its shelf, a picture's edge: the pixel at its "
        "projection shows either surface, whatever the visibility rule); contact share: the seen vertices "
        "that are not. Recall of visible: the fraction of the vertices the frames' cameras can see at all "
        "(inside an image, 10 px from its border, nothing on the ray from the camera to the vertex: "
        "ray-cast on the mesh) that the rule counts as seen.",
        "",
        "Geometry bounds on coverage (ray-cast, independent of depth maps and rule): vertices visible from "
        "the frames' cameras " + ", ".join(f"{100 * np.mean(visible[nf]):.1f} % with {nf} frames"
                                           for nf in args.frames)
        + f"; visible from any of {n_cams} free-standing cameras (random positions, heights 0.6-2.0 m, any "
        "yaw, pitches -1.3..+0.7 rad) per "
        "room: " + ", ".join(f"{100 * truths[i]['ceiling']:.1f} %" for i in sorted(truths))
        + " (walls behind furniture, floor under it, backs and undersides of objects are never visible).",
        "",
        "| rule | frames | coverage | recall of visible | label accuracy (seen) | accuracy away from "
        "contacts | contact share | colour err median | colour err p90 | far source (> 5 cm) "
        "| views per seen point |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for nf in args.frames:
        for name in RULES:
            if (name, nf) not in mean:
                continue
            m = mean[(name, nf)]
            lines.append(f"| {name} | {nf} | {100 * m['coverage']:.1f} % | {100 * m['recall']:.1f} % | "
                         f"{100 * m['accuracy']:.2f} % | "
                         f"{100 * m['accuracy_clear']:.2f} % | {100 * m['contact_share']:.1f} % | "
                         f"{m['colour_median']:.1f} | {m['colour_p90']:.1f} | {100 * m['far']:.2f} % | "
                         f"{m['views']:.1f} |")
    d30 = mean.get((DEFAULT_NAME, 30))
    if d30:
        ok = [d30["accuracy"] >= 0.97, d30["coverage"] >= 0.85, d30["far"] <= 0.02]
        lines += ["", f"Default rule at 30 frames: accuracy {100 * d30['accuracy']:.2f} % "
                      f"({'met' if ok[0] else 'MISSED'}), coverage {100 * d30['coverage']:.1f} % "
                      f"({'met' if ok[1] else 'MISSED'}), far source {100 * d30['far']:.2f} % "
                      f"({'met' if ok[2] else 'MISSED'}); accuracy away from contacts "
                      f"{100 * d30['accuracy_clear']:.2f} %."]
        if not all(ok):
            lines += ["", "Misses: label errors are where objects touch (accuracy away from contacts is the "
                          "rule's own error); coverage is bounded by the geometry above: no rule can count "
                          "more than the vertices the cameras see, and no camera path more than the room's "
                          "visible part (docs/design.md, Lifting)."]
    lines += ["", f"Command: `OMP_NUM_THREADS={args.threads} python tools/bench_lift_fidelity.py --scenes "
                  f"{args.scenes} --seed {args.seed} --frames {' '.join(map(str, args.frames))} --image-size "
                  f"{W}x{H}` ({elapsed:.0f} s, generation included).", "", f"Machine: {machine_line()}."]
    md = "\n".join(lines)
    print(md)
    if not args.no_doc:
        print("updated", update_section("bench_lift_fidelity", md))


if __name__ == "__main__":
    main()
