"""Synthetic ScanNet-like scenes, written in the raw ScanNet v2 format, with posed RGB-D frames.

``generate_dataset(out, n_scenes, seed)`` writes::

    out/scannetv2-labels.combined.tsv          label table (real column names; rows for the categories used)
    out/scannetv2_{train,val,test}.txt         splits (60/20/20 %; test scenes keep their labels)
    out/scans/sceneXXXX_00/
        sceneXXXX_00_vh_clean_2.ply            mesh: vertices x,y,z,red,green,blue,alpha; triangle faces
        sceneXXXX_00_vh_clean_2.labels.ply     same mesh, vertex property label = nyu40 id
        sceneXXXX_00_vh_clean_2.0.010000.segs.json, sceneXXXX_00.aggregation.json, sceneXXXX_00.txt
        color/N.jpg depth/N.png pose/N.txt intrinsic/intrinsic_{color,depth}.txt   (ray-cast frames)
        label-filt/N.png instance-filt/N.png   per-pixel label (the label table's ``id``) and instance
                                               (objectId + 1) of the surface each ray hits, 16-bit, 0 = none

Scenes come from ``pointprobe.synth.scenes.generate_scene``; frames are ray-cast by
``pointprobe.synth.cameras.render_frames``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from pointprobe.synth.cameras import CAMERA_PATHS, camera_intrinsics, render_frames
from pointprobe.synth.rooms import LABEL_IDS, NYU40_NAMES, RAW_TO_NYU40, SCANNET_SCENE_TYPES
from pointprobe.synth.scenes import DEFAULT_DOMAIN, SynthScene, check_domain, generate_scene, vertex_label_ids


def write_scene(
    scene: SynthScene,
    scans_dir: str | os.PathLike,
    frames_image_size: tuple[int, int] = (320, 240),
    rng: np.random.Generator | None = None,
) -> Path:
    """Write a ``SynthScene`` as a raw ScanNet scene folder (mesh, labels, segs, aggregation, frames)."""
    from pointprobe.data.frames import write_frame, write_intrinsics
    from pointprobe.data.ply import write_ply

    d = Path(scans_dir) / scene.name
    d.mkdir(parents=True, exist_ok=True)
    n = len(scene.coord)
    vert = {
        "x": scene.coord[:, 0],
        "y": scene.coord[:, 1],
        "z": scene.coord[:, 2],
        "red": scene.color[:, 0],
        "green": scene.color[:, 1],
        "blue": scene.color[:, 2],
        "alpha": np.full(n, 255, np.uint8),
    }
    write_ply(d / f"{scene.name}_vh_clean_2.ply", vert, scene.faces, comments=["probesuite synthetic scene"])
    write_ply(
        d / f"{scene.name}_vh_clean_2.labels.ply",
        {**vert, "label": scene.nyu40.astype(np.uint16)},
        scene.faces,
        comments=["probesuite synthetic scene"],
    )
    segs = {
        "params": {
            "kThresh": "0.0001",
            "segMinVerts": "20",
            "minPoints": "750",
            "maxPoints": "30000",
            "thinThresh": "0.05",
            "flatThresh": "0.001",
            "minLength": "0.02",
            "maxLength": "1",
        },
        "sceneId": scene.name,
        "segIndices": scene.seg_indices.tolist(),
    }
    (d / f"{scene.name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(segs))
    agg = {
        "sceneId": f"scannet.{scene.name}",
        "appId": "probesuite.synth",
        "segGroups": scene.groups,
        "segmentsFile": f"scannet.{scene.name}_vh_clean_2.0.010000.segs.json",
    }
    (d / f"{scene.name}.aggregation.json").write_text(json.dumps(agg))
    W, H = frames_image_size
    K = camera_intrinsics(W, H)
    world_poses = [scene.room_to_world @ P for P in scene.camera_room_poses]
    align = np.linalg.inv(scene.room_to_world)
    info = [
        f"axisAlignment = {' '.join(f'{x:.6f}' for x in align.ravel())}",
        f"colorHeight = {H}",
        f"colorWidth = {W}",
        f"depthHeight = {H}",
        f"depthWidth = {W}",
        f"fx_color = {K[0, 0]:.6f}",
        f"fx_depth = {K[0, 0]:.6f}",
        f"fy_color = {K[1, 1]:.6f}",
        f"fy_depth = {K[1, 1]:.6f}",
        f"mx_color = {K[0, 2]:.6f}",
        f"mx_depth = {K[0, 2]:.6f}",
        f"my_color = {K[1, 2]:.6f}",
        f"my_depth = {K[1, 2]:.6f}",
        f"numColorFrames = {len(world_poses)}",
        f"numDepthFrames = {len(world_poses)}",
        "numIMUmeasurements = 0",
        f"sceneType = {SCANNET_SCENE_TYPES[scene.room_type]}",
    ]
    (d / f"{scene.name}.txt").write_text("\n".join(info) + "\n")
    if world_poses:
        write_intrinsics(d, K, K)
        frames, hits = render_frames(scene.coord, scene.faces, scene.color, world_poses, K, W, H, rng=rng,
                                     return_hits=True)
        label_id, inst = vertex_label_ids(scene)
        corner = scene.faces[np.maximum(hits["prim"], 0), 0]
        label_maps = np.where(hits["prim"] >= 0, label_id[corner], 0).astype(np.uint16)
        inst_maps = np.where(hits["prim"] >= 0, inst[corner], 0).astype(np.uint16)
        for i, ((img, depth), pose) in enumerate(zip(frames, world_poses)):
            write_frame(d, i, img, depth, pose)
            write_label_maps(d, i, label_maps[i], inst_maps[i])
    return d


def write_label_maps(scene_dir: str | os.PathLike, index: int, labels: np.ndarray,
                     instances: np.ndarray) -> None:
    """Write ``label-filt/index.png`` and ``instance-filt/index.png`` (16-bit PNG, 0 = none)."""
    from PIL import Image

    d = Path(scene_dir)
    for sub, arr in (("label-filt", labels), ("instance-filt", instances)):
        (d / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(arr, np.uint16)).save(d / sub / f"{index}.png", compress_level=1)


def write_label_table(path: str | os.PathLike, counts: dict[str, int] | None = None) -> Path:
    """Write ``scannetv2-labels.combined.tsv`` rows for the categories the generator uses.

    Columns (a subset of the real file's, same names and order): id, raw_category, category, count,
    nyu40id, nyu40class. ``count`` is the number of generated instances when ``counts`` is given.
    """
    counts = counts or {}
    rows = ["\t".join(["id", "raw_category", "category", "count", "nyu40id", "nyu40class"])]
    for raw in sorted(RAW_TO_NYU40, key=lambda r: LABEL_IDS[r]):
        nyu = RAW_TO_NYU40[raw]
        rows.append(
            "\t".join(
                [str(LABEL_IDS[raw]), raw, raw, str(counts.get(raw, 0)), str(nyu), NYU40_NAMES[nyu - 1]]
            )
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def split_names(names: list[str], seed: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict:
    """Deterministic train/val/test split (at least one train scene; val/test once there are >= 3 scenes)."""
    n = len(names)
    order = np.random.default_rng([int(seed), 7919]).permutation(n)
    n_val = max(1, round(fractions[1] * n)) if n >= 2 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
    n_val = min(n_val, n - 1 - n_test) if n >= 2 else 0
    picked = [names[i] for i in order]
    val, test = sorted(picked[:n_val]), sorted(picked[n_val : n_val + n_test])
    train = sorted(picked[n_val + n_test :])
    return {"train": train, "val": val, "test": test}


def _one(args: tuple) -> tuple[str, Counter]:
    out, seed, index, frames, image_size, camera_path, domain = args
    scene = generate_scene(seed, index, frames=frames, camera_path=camera_path, domain=domain)
    write_scene(scene, Path(out) / "scans", image_size, rng=np.random.default_rng([int(seed), int(index), 1]))
    return scene.name, Counter(g["label"] for g in scene.groups)


def generate_dataset(
    out: str | os.PathLike,
    n_scenes: int,
    seed: int = 0,
    frames_per_scene: int = 15,
    image_size: tuple[int, int] = (320, 240),
    workers: int = 1,
    progress: bool = True,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    camera_path: str = "walk",
    domain: str = DEFAULT_DOMAIN,
) -> dict[str, list[str]]:
    """Write ``n_scenes`` synthetic scenes in the raw ScanNet layout under ``out``; returns the splits.

    ``frames_per_scene`` frames are ray-cast per scene along ``camera_path`` (``walk``: one lap along
    the walls looking inwards and across, like a scan; ``loop``: the first generator's small loop).
    ``domain``: ``rgbd`` (default) or ``lidar`` (``pointprobe.synth.scenes.DOMAINS``); it is written to
    ``out/synth_domain.txt``."""
    from common.progress import progress as progress_bar

    if n_scenes < 1:
        raise ValueError("n_scenes must be >= 1")
    out = Path(out)
    (out / "scans").mkdir(parents=True, exist_ok=True)
    if camera_path not in CAMERA_PATHS:
        raise ValueError(f"unknown camera path {camera_path!r} (expected one of {', '.join(CAMERA_PATHS)})")
    check_domain(domain)
    jobs = [(str(out), seed, i, frames_per_scene, tuple(image_size), camera_path, domain)
            for i in range(n_scenes)]
    counts: Counter = Counter()
    names = []
    bar = progress_bar(total=n_scenes, desc="synth", unit="scene", disable=not progress)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            for name, c in ex.map(_one, jobs):
                names.append(name)
                counts.update(c)
                bar.update()
    else:
        for job in jobs:
            name, c = _one(job)
            names.append(name)
            counts.update(c)
            bar.update()
    bar.close()
    write_label_table(out / "scannetv2-labels.combined.tsv", counts)
    (out / "synth_domain.txt").write_text(domain + "\n")
    splits = split_names(names, seed, split_fractions)
    for split, lst in splits.items():
        (out / f"scannetv2_{split}.txt").write_text("".join(f"{s}\n" for s in lst))
    return splits
