"""Raw ScanNet v2 -> Pointcept's preprocessed layout, in parallel, resumable, one failure per bad scene.

``preprocess_dataset(raw, out)`` reads the split files and label table next to ``raw/scans``, and
writes ``out/{split}/{scene}/*.npy`` for every listed scene. A scene whose output folder is complete
is skipped; each scene is written to a temporary folder renamed at the end; a scene that raises
``InputError`` is reported and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from common.errors import InputError
from pointprobe.data.scannet import (
    SPLITS,
    LabelMap,
    find_raw_scene,
    raw_scene_files,
    read_label_map,
    read_raw_scene,
    read_split_file,
    save_scene,
    scene_is_complete,
)

__all__ = ["SceneResult", "preprocess_scene", "preprocess_dataset", "LABEL_TABLE"]

LABEL_TABLE = "scannetv2-labels.combined.tsv"


@dataclasses.dataclass
class SceneResult:
    """Outcome of one scene: status is 'done', 'skipped' (already complete) or 'failed'."""

    name: str
    split: str
    status: str
    message: str = ""
    n_points: int = 0


def preprocess_scene(
    raw_root: str | Path, name: str, split: str, out_root: str | Path, label_map: LabelMap
) -> SceneResult:
    """Convert one raw scene; ``InputError`` becomes a 'failed' result naming the file."""
    out = Path(out_root) / split / name
    scene_dir = find_raw_scene(raw_root, name)
    files = raw_scene_files(scene_dir)
    has_labels = files["segs"].is_file() and files["aggregation"].is_file()
    # train/val scenes must be labelled; test scenes are labelled only when annotations exist
    need_labels = split != "test" or has_labels
    if out.is_dir() and scene_is_complete(out, labelled=need_labels):
        return SceneResult(name, split, "skipped")
    for stale in out.parent.glob(f".{name}.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    try:
        scene = read_raw_scene(scene_dir, label_map, with_labels=need_labels)
        save_scene(scene, out)
    except InputError as e:
        return SceneResult(name, split, "failed", str(e))
    return SceneResult(name, split, "done", n_points=len(scene))


def _job(args: tuple) -> SceneResult:
    return preprocess_scene(*args)


def preprocess_dataset(
    raw_root: str | Path,
    out_root: str | Path,
    splits: Sequence[str] = SPLITS,
    workers: int = 1,
    progress: bool = True,
    log=print,
) -> list[SceneResult]:
    """Preprocess every scene of ``splits``; returns one ``SceneResult`` per scene (in job order).

    Missing split files or label table raise ``InputError`` (nothing can be done without them);
    per-scene problems are reported through ``log`` as one line each and returned as 'failed'.
    """
    from common.progress import progress as progress_bar
    from common.progress import progress_write

    raw_root, out_root = Path(raw_root), Path(out_root)
    if not raw_root.is_dir():
        raise InputError(raw_root, "raw ScanNet folder not found")
    for s in splits:
        if s not in SPLITS:
            raise InputError(None, f"unknown split {s!r} (expected some of {', '.join(SPLITS)})")
    label_map = read_label_map(raw_root / LABEL_TABLE)
    jobs = []
    for split in splits:
        for name in read_split_file(raw_root / f"scannetv2_{split}.txt"):
            jobs.append((str(raw_root), name, split, str(out_root), label_map))
    results: list[SceneResult | None] = [None] * len(jobs)
    bar = progress_bar(total=len(jobs), desc="preprocess", unit="scene", disable=not progress)

    def record(i: int, r: SceneResult) -> None:
        results[i] = r
        if r.status == "failed":
            (progress_write if progress else log)(f"failed: {r.message}")
        bar.update()

    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as ex:
            futures = {ex.submit(_job, job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                record(futures[fut], fut.result())
    else:
        for i, job in enumerate(jobs):
            record(i, _job(job))
    bar.close()
    done = [r for r in results if r is not None]
    summary = {
        "raw": str(raw_root),
        "splits": list(splits),
        "counts": {k: sum(r.status == k for r in done) for k in ("done", "skipped", "failed")},
        "failed": {f"{r.split}/{r.name}": r.message for r in done if r.status == "failed"},
    }
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "preprocess.json").write_text(json.dumps(summary, indent=2) + "\n")
    return done
