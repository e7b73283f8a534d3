"""TWLV-I embedding folders <-> feature caches.

TWLV-I's embedding folders (``[id].json`` with "annotation", ``[id]_c.npy`` clips x D, ``[id]_v.npy``
mean of clips) can be written from a cache (``export_twlv``) and read into one (``import_twlv``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from common.cache import CacheKey, CacheWriter, FeatureCache, is_cache_entry
from common.errors import CacheError, InputError
from common.paths import check_item_name
from common.progress import progress
from videoprobe.extract import report_failures

log = logging.getLogger(__name__)


def _clip_embeddings(feats: np.ndarray, crops: int) -> np.ndarray:
    """(V, D) clip-major views -> (V / crops, D), averaging the crops of each clip."""
    v, d = feats.shape
    if crops < 1 or v % crops:
        raise CacheError(f"{v} views cannot be split into clips of {crops} crops")
    return feats.reshape(v // crops, crops, d).mean(axis=1)


TWLV_SPLITS = ("train", "val")  # the only folder names the TWLV-I framework reads (hard-coded there)
TWLV_CLASS_COUNTS = {"Diving48": 48, "sthsth-v2": 174, "MomentsInTime": 305, "Kinetics400": 400}
LABEL_BASE = 0  # TWLV-I "annotation" values and our cache labels are 0-based class indices


def twlv_split_name(cache_split: str) -> str:
    """The TWLV-I folder a cache split goes to by default: ``train`` stays, any other split is ``val``."""
    return "train" if cache_split == "train" else "val"


def export_twlv(cache_path: str | Path, out: str | Path, split: str | None = None) -> int:
    """Write TWLV-I embedding files for every item of a cache into ``out/<split>/``; returns the count.

    ``split`` defaults to ``train`` for a train cache and ``val`` for any other, the two folder names
    the framework reads. ``[id]_c.npy`` (num_clips, D) float32 (crops averaged), ``[id]_v.npy`` (D,)
    mean of clips (the framework needs it 1-D), ``[id].json``: annotation (0-based class index),
    label_base (0), label_name, duration (s), frames, clip_times [[start, end]].
    """
    cache = FeatureCache(cache_path)
    crops = int(cache.meta.get("crops_per_clip", 1))
    names = cache.meta.get("class_names") or []
    folder = split or twlv_split_name(cache.key.split)
    if folder not in TWLV_SPLITS:
        log.warning("export-twlv: the TWLV-I framework reads only %s/train and %s/val, not %s/%s",
                    out, out, out, folder)
    dest = Path(out) / folder
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for item in progress(cache.items(), desc="export-twlv", unit="video"):
        arrays = cache[item]
        clips = _clip_embeddings(np.asarray(arrays["features"], dtype=np.float32), crops)
        label = int(np.asarray(arrays["labels"]).reshape(-1)[0]) if "labels" in arrays else -1
        rec: dict[str, Any] = {"annotation": label, "label_base": LABEL_BASE}
        if 0 <= label < len(names):
            rec["label_name"] = names[label]
        if "video_info" in arrays:
            frames, fps = (float(v) for v in np.asarray(arrays["video_info"]).reshape(-1)[:2])
            rec["frames"] = int(frames)
            rec["duration"] = frames / fps if fps > 0 else None
            if "frame_indices" in arrays and fps > 0:
                fi = np.asarray(arrays["frame_indices"])
                rec["clip_times"] = [[float(r.min()) / fps, float(r.max() + 1) / fps] for r in fi]
        stem = item.replace("/", "_")
        np.save(dest / f"{stem}_c.npy", clips)
        np.save(dest / f"{stem}_v.npy", clips.mean(axis=0))
        (dest / f"{stem}.json").write_text(json.dumps(rec) + "\n")
        n += 1
    return n


def _numbered(i: int) -> str:
    return f"class_{i}"


# (annotation, or None when it is a class name; label_name; clip embedding file)
_Rec = tuple[int | None, str | None, Path]


def _read_twlv_records(src: Path, jsons: list[Path]) -> tuple[dict[str, _Rec], dict[str, str]]:
    """{video id: (annotation, label_name or None, clip file)} of every readable json, and the failures."""
    recs: dict[str, _Rec] = {}
    failures: dict[str, str] = {}
    for j in jsons:
        vid = j.stem
        try:
            check_item_name(vid, "video id", j)
            rec = json.loads(j.read_text())
            if not isinstance(rec, dict):
                raise InputError(j, "not a JSON object")
            ann = rec.get("annotation")
            name = rec.get("label_name")
            label: int | None
            if ann is None:
                label = -1  # unlabelled
            elif isinstance(ann, bool) or not isinstance(ann, int | str):
                raise InputError(j, f"annotation {ann!r} is not an integer")
            elif isinstance(ann, str) and not re.fullmatch(r"-?\d+", ann.strip()):
                label, name = None, ann  # a class name: resolved against the class list later
            else:
                label = int(ann)
                if label < -1:
                    raise InputError(j, f"annotation {ann!r} is negative (-1 = unlabelled)")
            if name is not None and not isinstance(name, str):
                raise InputError(j, f"label_name {name!r} is not a string")
            base = rec.get("label_base", LABEL_BASE)
            if label != -1 and base != LABEL_BASE:
                raise InputError(j, f"label_base {base!r}: TWLV-I annotations are {LABEL_BASE}-based")
            clip = src / f"{vid}_c.npy"
            if not clip.is_file():
                clip = src / f"{vid}_v.npy"  # a single video embedding is one view
                if not clip.is_file():
                    raise InputError(src / f"{vid}_c.npy", "clip embedding file missing")
            recs[vid] = (label, name, clip)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            failures[vid] = str(InputError(j, f"unreadable json ({e})"))
        except InputError as e:
            failures[vid] = str(e)
    return recs, failures


def _twlv_class_names(src: Path, recs: dict[str, _Rec], failures: dict[str, str],
                      class_names: list[str] | None, num_classes: int | None) -> tuple[list[str], str]:
    """Class names of an import and where they come from; bad labels move from ``recs`` to ``failures``."""
    by_label: dict[int, str] = {}
    for vid, (label, name, _) in sorted(recs.items()):
        if label is not None and label >= 0 and name is not None:
            other = by_label.setdefault(label, name)
            if other != name:
                raise InputError(src / f"{vid}.json", f"label_name {name!r} for annotation {label}, other "
                                                      f"files name it {other!r}")
    if class_names:
        names, origin = list(class_names), "--classes"
        if num_classes and num_classes != len(names):
            raise InputError(src, f"{num_classes} classes asked for but the class file has {len(names)}")
        for label, name in by_label.items():
            if label < len(names) and names[label] != name:
                raise InputError(src, f"files name class {label} {name!r} but --classes has "
                                      f"{names[label]!r} (annotations are {LABEL_BASE}-based; is the class "
                                      "file in this order?)")
    else:
        labels = [lab for lab, _, _ in recs.values() if lab is not None and lab >= 0]
        k = num_classes or (max(labels) + 1 if labels else 0)
        names = [by_label.get(i, _numbered(i)) for i in range(k)]
        origin = ("label_name" if by_label and len(by_label) == k else
                  "label_name and numbers" if by_label else "numbers")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InputError(src, f"label_name {dup!r} names two different annotations")
    for vid, (label, name, clip) in list(recs.items()):
        if label is None:  # a class name as the annotation
            if name not in names:
                failures[vid] = str(InputError(src / f"{vid}.json", f"annotation {name!r} is not an integer "
                                                                    "nor a known class name"))
                del recs[vid]
            else:
                recs[vid] = (names.index(name), name, clip)
        elif label >= len(names):
            failures[vid] = str(InputError(src / f"{vid}.json", f"annotation {label} is outside the "
                                                                f"{len(names)} classes ({origin})"))
            del recs[vid]
    return names, origin


def import_twlv(src: str | Path, out: str | Path, encoder: str = "twlv-import", split: str | None = None,
                class_names: list[str] | None = None, dtype: str = "float32", num_classes: int | None = None,
                stats: dict | None = None) -> int:
    """Read a TWLV-I embedding folder (``[id].json`` + ``[id]_c.npy``) into a feature cache.

    Each clip embedding becomes one view (``features`` (num_clips, D)); the label is the json's
    "annotation" (a 0-based class index, or a class name looked up in ``class_names``). Class names:
    ``class_names``, else the files' "label_name" (written by ``export_twlv``), else ``class_<i>`` for
    i in 0..``num_classes`` - 1 (default: the largest annotation + 1). A folder whose cache
    ``videoprobe probe`` could not use (no labelled video, conflicting names) raises ``InputError``
    before anything is written. Into an existing cache of the same source and encoder, a re-run
    writes what differs (new, changed or removed videos, other class names) and keeps the rest; a
    cache of another key is refused. Bad files are reported and skipped; returns the number of
    videos of ``src`` now in the cache. ``stats`` (if given) receives the counts.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(src, "TWLV-I embedding folder not found")
    jsons = sorted(src.glob("*.json"))
    if not jsons:
        raise InputError(src, "no [id].json files (is this the folder of one split?)")
    recs, failures = _read_twlv_records(src, jsons)
    if not recs:
        raise InputError(src, f"no readable video ({next(iter(failures.values()))})")
    names, origin = _twlv_class_names(src, recs, failures, class_names, num_classes)
    if not any(lab is not None and lab >= 0 for lab, _, _ in recs.values()):
        raise InputError(src, "no video has a class annotation: `videoprobe probe` could not use the cache")
    if len(names) < 2:
        raise InputError(src, f"{len(names)} class(es) ({origin}): a probe needs at least 2 "
                              "(give --classes or --num-classes)")
    first = next(iter(recs.values()))[2]
    try:
        dim = int(np.load(first, mmap_mode="r").shape[-1])
    except (OSError, ValueError, EOFError) as e:
        raise InputError(first, f"cannot read embeddings ({e})") from None
    key = CacheKey(encoder=encoder, checkpoint_sha256="none", config_hash="twlv-import",
                   preprocessing={"source": "twlv"}, dataset=f"twlv:{src.resolve()}", split=split or src.name)
    meta = {"class_names": names, "class_names_from": origin, "label_base": LABEL_BASE, "crops_per_clip": 1,
            "source": str(src)}

    old: FeatureCache | None = None
    if out.is_dir() and any(out.iterdir()):
        try:
            old = FeatureCache(out)
        except CacheError as e:
            if FeatureCache.exists(out):
                raise
            raise CacheError(f"{out}: exists and is not a feature cache; choose another folder") from e
        parts = old.key.describe_diff(key)
        if old.feature_dim != dim:
            parts.append(f"feature_dim={old.feature_dim} but this run has {dim}")
        if old.dtype != dtype:
            parts.append(f"dtype={old.dtype} but this run has {dtype}")
        if parts:
            raise CacheError(f"cache {out} was built with {'; '.join(parts)}; use a new folder or delete it")
    rebuild = old is not None and (any(old.meta.get(k) != v for k, v in meta.items())
                                   or bool(set(old.items()) - set(recs)))
    if rebuild:
        extra = [p.name for p in out.iterdir() if not is_cache_entry(p.name)]
        if extra:
            raise CacheError(f"{out}: the class names or videos differ from the cache's and the folder also "
                             f"holds {extra[0]!r}; import into a new folder")
    dest = out.parent / f".{out.name}.import-{os.getpid()}" if rebuild else out
    counts = {"written": 0, "updated": 0, "unchanged": 0}
    try:
        with CacheWriter(dest, key, dim, dtype, meta=meta) as writer:
            for vid, (label, _, clip) in progress(sorted(recs.items()), desc="import-twlv", unit="video"):
                try:
                    feats = np.atleast_2d(np.load(clip, allow_pickle=False))
                    if feats.ndim != 2:
                        raise InputError(clip, f"embeddings have shape {feats.shape}, expected (clips, D)")
                    labels = np.full(feats.shape[0], label, dtype=np.int64)
                    cur = old.load(vid, ("features", "labels")) if old is not None and vid in old else None
                    same = (cur is not None and np.array_equal(cur["labels"], labels)
                            and np.array_equal(cur["features"], feats.astype(dtype)))
                    if not (same and writer.has(vid)):
                        writer.write(vid, feats, labels, overwrite=writer.has(vid))
                    counts["written" if cur is None else "unchanged" if same else "updated"] += 1
                except (InputError, CacheError, ValueError, OSError) as e:
                    failures[vid] = str(e)
        if rebuild:  # the new cache is complete: put it in place of the old one
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(dest, out)
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if rebuild and dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
    n = len(recs) - sum(v in recs for v in failures)
    if stats is not None:
        stats.update(counts, imported=n, failed=len(failures), classes=len(names), class_names_from=origin,
                     rebuilt=rebuild)
    log.info("import-twlv %s: %d videos (%d written, %d updated, %d unchanged), %d classes from %s", out, n,
             counts["written"], counts["updated"], counts["unchanged"], len(names), origin)
    report_failures(failures, len(jsons))
    return n
