"""Raw ScanNet v2 -> Pointcept's preprocessed layout, in parallel, resumable, one failure per bad scene.

``preprocess_dataset(raw, out)`` reads the split files and label table next to ``raw/scans`` (the
official ones shipped with pointprobe when the root has none: ``select_splits``), and writes
``out/{split}/{scene}/*.npy`` for every listed scene. By default every split that is present is
processed and the others are named as skipped; a split asked for by name that is not present is an
error. Scenes on disk that no split list names are reported, never put into a split. A scene whose
output folder is complete is skipped; each scene is written to a temporary folder renamed at the end;
a scene that raises ``InputError`` is reported and skipped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import InputError
from common.paths import check_item_name, disk_errors, pid_alive, remove_quietly, temp_pid
from pointprobe.data.scannet import (
    LABEL_TABLE,
    SHIPPED_META,
    SPLITS,
    LabelMap,
    find_raw_scene,
    raw_scene_files,
    raw_scene_names,
    read_label_map,
    read_raw_scene,
    read_split_file,
    save_scene,
    scene_is_complete,
    shipped_meta_file,
)

__all__ = ["SceneResult", "SplitPlan", "select_splits", "preprocess_scene", "preprocess_dataset",
           "LABEL_TABLE"]


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
    """Convert one raw scene; ``InputError`` becomes a 'failed' result naming the file. A name that is
    not a plain folder name (``../x``, ``/abs``, ...) is a 'failed' result: it never becomes a path."""
    try:
        check_item_name(name, "scene name", Path(raw_root) / f"scannetv2_{split}.txt")
    except InputError as e:
        return SceneResult(name, split, "failed", str(e))
    out = Path(out_root) / split / name
    scene_dir = find_raw_scene(raw_root, name)
    files = raw_scene_files(scene_dir)
    has_labels = files["segs"].is_file() and files["aggregation"].is_file()
    # train/val scenes must be labelled; test scenes are labelled only when annotations exist
    need_labels = split != "test" or has_labels
    if out.is_dir() and scene_is_complete(out, labelled=need_labels):
        return SceneResult(name, split, "skipped")
    for stale in out.parent.glob(f".{name}.tmp-*"):  # left by an interrupted run (never a live one)
        pid = temp_pid(stale.name)
        if pid is not None and not pid_alive(pid):
            remove_quietly(stale)
    try:
        scene = read_raw_scene(scene_dir, label_map, with_labels=need_labels)
        save_scene(scene, out, root=out_root)
    except InputError as e:
        return SceneResult(name, split, "failed", str(e))
    return SceneResult(name, split, "done", n_points=len(scene))


@dataclasses.dataclass
class SplitPlan:
    """Which scenes of which splits to process, and where the lists and label table come from."""

    scenes: dict[str, list[str]]  # split -> scene names, in list order
    skipped: dict[str, str]  # split -> why it is not processed
    lists_source: str  # the raw root (its own files) or SHIPPED_META
    label_table: Path
    not_on_disk: dict[str, int]  # split -> listed scenes absent from disk (shipped lists only)
    unlisted: list[str]  # scenes on disk that no split list names


def select_splits(raw_root: str | Path, splits: Sequence[str] | None = None,
                  log: Callable[[str], None] = print) -> SplitPlan:
    """Decide what to process; says through ``log`` where the lists come from and what is skipped.

    The root's own ``scannetv2_{split}.txt`` files are used when it has any (a split without its file
    is absent); otherwise the official lists shipped with pointprobe, where a split is present when
    at least one of its scenes is on disk, and only those scenes are processed. ``splits=None``
    processes every present split; a split named in ``splits`` that is absent raises ``InputError``.
    """
    raw_root = Path(raw_root)
    for s in splits or ():
        if s not in SPLITS:
            raise InputError(None, f"unknown split {s!r} (expected some of {', '.join(SPLITS)})")
    own = {s: raw_root / f"scannetv2_{s}.txt" for s in SPLITS}
    on_disk = raw_scene_names(raw_root)
    full: dict[str, list[str]] = {}  # every available list, whole
    lists: dict[str, list[str]] = {}  # the present splits and the scenes to process
    skipped: dict[str, str] = {}
    not_on_disk: dict[str, int] = {}
    if any(p.is_file() for p in own.values()):
        source = str(raw_root)
        for s, p in own.items():
            if p.is_file():
                full[s] = lists[s] = read_split_file(p)
            else:
                skipped[s] = f"no {p.name} in {raw_root}"
        log(f"split lists: {', '.join(own[s].name for s in lists)} from {raw_root}")
    else:
        source = SHIPPED_META
        log(f"split lists: {raw_root} has no scannetv2_*.txt, using the official ScanNet v2 lists shipped "
            f"with pointprobe ({SHIPPED_META}/scannetv2_{{train,val,test}}.txt: 1201/312/100 scenes)")
        for s in SPLITS:
            full[s] = read_split_file(shipped_meta_file(f"scannetv2_{s}.txt"))
            present = [n for n in full[s] if n in on_disk]
            if present:
                lists[s] = present
                not_on_disk[s] = len(full[s]) - len(present)
                if not_on_disk[s]:
                    log(f"split {s}: {len(present)} of the {len(full[s])} listed scenes are on disk; "
                        f"the other {not_on_disk[s]} are not processed")
            else:
                skipped[s] = (f"none of the {len(full[s])} scenes of the official scannetv2_{s}.txt is "
                              f"under {raw_root}/scans or scans_test")
    unlisted = sorted(set(on_disk) - {n for names in full.values() for n in names})
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        log(f"{len(unlisted)} scene(s) on disk are in no split list and were not processed: {shown} "
            f"(list them in {raw_root}/scannetv2_<split>.txt to include them)")
    if splits is not None:
        missing = [s for s in splits if s not in lists]
        if missing and source != SHIPPED_META:
            raise InputError(own[missing[0]], "split file not found (asked for by name; the root has other "
                                              "scannetv2_*.txt files, so the shipped lists are not used)")
        if missing:
            raise InputError(raw_root, f"split {missing[0]!r} was asked for but {skipped[missing[0]]}")
        for s in [s for s in lists if s not in splits]:
            skipped[s] = "not asked for (--splits)"
            del lists[s]
    if not lists:
        raise InputError(raw_root, "no split to process: no scannetv2_*.txt here and no scene of the "
                                   "official lists under scans/ or scans_test/")
    for s, why in skipped.items():
        log(f"split {s}: skipped ({why})")
    table = raw_root / LABEL_TABLE
    if table.is_file():
        log(f"label table: {table}")
    else:
        table = shipped_meta_file(LABEL_TABLE)
        log(f"label table: {raw_root} has no {LABEL_TABLE}, using the copy shipped with pointprobe "
            f"({SHIPPED_META}/{LABEL_TABLE})")
    scenes = {s: lists[s] for s in SPLITS if s in lists}
    return SplitPlan(scenes, skipped, source, table, not_on_disk, unlisted)


def _job(args: tuple) -> SceneResult:
    return preprocess_scene(*args)


def preprocess_dataset(
    raw_root: str | Path,
    out_root: str | Path,
    splits: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    log=print,
) -> list[SceneResult]:
    """Preprocess every scene of ``splits`` (None: every present split, see ``select_splits``).

    Returns one ``SceneResult`` per scene (in job order). A split asked for by name that is absent
    raises ``InputError``; per-scene problems are reported through ``log`` as one line each and
    returned as 'failed'.
    """
    from common.progress import progress as progress_bar
    from common.progress import progress_write

    raw_root, out_root = Path(raw_root), Path(out_root)
    if not raw_root.is_dir():
        raise InputError(raw_root, "raw ScanNet folder not found")
    plan = select_splits(raw_root, splits, log)
    label_map = read_label_map(plan.label_table)
    jobs = []
    for split, names in plan.scenes.items():
        for name in names:
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
        "splits": list(plan.scenes),
        "skipped_splits": plan.skipped,
        "split_lists": plan.lists_source,
        "label_table": str(plan.label_table),
        "not_on_disk": plan.not_on_disk,
        "unlisted": plan.unlisted,
        "counts": {k: sum(r.status == k for r in done) for k in ("done", "skipped", "failed")},
        "failed": {f"{r.split}/{r.name}": r.message for r in done if r.status == "failed"},
    }
    with disk_errors(out_root):
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "preprocess.json").write_text(json.dumps(summary, indent=2) + "\n")
    return done
