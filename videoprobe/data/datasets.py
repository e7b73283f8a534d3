"""Video dataset layouts -> a common list of ``VideoItem`` plus the class names, and torch datasets.

Readers (each returns ``(items, class_names)``; ``label`` indexes ``class_names``; -1 = unlabelled):

* ``read_class_folders(root)``: one sub-folder per class (UCF101 / HMDB51 / Kinetics folder layouts).
* ``read_path_label_list(list_file, video_root, class_names)``: "path label" lines (label = class
  name or integer), or "path" lines whose class is the parent folder's name (UCF101 testlist).
* ``read_ucf101(root, split, split_id)``: ``classInd.txt`` + ``trainlist0K.txt`` (1-based labels) /
  ``testlist0K.txt`` (path only).  The ``videoprobe synth`` output uses this layout.
* ``read_hmdb51(splits_dir, video_root, split, split_id)``: ``<class>_test_split<K>.txt`` files with
  ``<video> <0|1|2>`` lines (1 = train, 2 = test, 0 = unused).
* ``read_kinetics_csv(csv_file, video_root, class_names)``: ``label,youtube_id,time_start,time_end,split``
  -> ``<youtube_id>_<start:06d>_<end:06d>.mp4`` under ``<split>/<label>/``, ``<label>/``, ``<split>/``
  or flat (labels with spaces also tried with underscores).
* ``read_ssv2(labels_json, annotation_json, video_root)``: Something-Something v2 (``labels.json``
  name -> id; entries {id, template, label, placeholders}; class = template without brackets;
  videos ``<id>.webm``).
* ``build_video_dataset(kind, root, split, ...)`` picks the layout reader of ``kind`` in ``READERS``
  (one signature: ``(DataSource) -> (items, class_names, source)``; each knows its usual file names).
  A new format = one such function + one ``READERS`` entry.

A label that is not in the class list raises ``InputError(list_file, "line N: ...")``.

Torch datasets:

* ``ClipDataset(items, spec)`` (map-style, for feature extraction): item i -> dict with ``video``
  (V, C, T, H, W) float in [0, 1] (see ``ClipSpec``), ``label``, ``video_id``, ``path``, ``index``,
  ``frame_indices`` (num_clips, clip_len), ``backend`` and ``error``; clips lie inside the item's
  segment (Diving48's start_frame / end_frame) when it has one.  A file that cannot be decoded
  does NOT raise (unless ``strict=True``): the dict has ``video=None`` and ``error`` = the one-line
  ``InputError`` message, so an extractor can record the failure and go on.  Use
  ``collate_items`` as the DataLoader ``collate_fn`` (it returns the list of dicts unchanged).
  ``videoprobe extract`` decodes through it.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError, InputError
from common.paths import inside_root
from videoprobe.data.transforms import ClipSpec

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv")
MISSING = ("keep", "skip", "error")


@dataclass(frozen=True)
class VideoItem:
    """One video: ``video_id`` (unique within a dataset, file-name safe), absolute ``path``,
    ``label`` (index into the dataset's class names, -1 when unlabelled) and ``split``."""

    video_id: str
    path: str
    label: int
    split: str
    start_frame: int | None = None  # a segment of the file (Diving48): frames start_frame..end_frame-1
    end_frame: int | None = None

    @property
    def segment(self) -> tuple[int, int | None] | None:
        """``(start, end)`` frame bounds (end exclusive, None = to the end) or None for the whole file."""
        if self.start_frame is None and self.end_frame is None:
            return None
        return (self.start_frame or 0, self.end_frame)


# --------------------------------------------------------------------------------------------------
# helpers


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    return path


def _json_list(path: Path, what: str, of: str = "entries") -> tuple[Path, list]:
    """``path`` (which must exist) parsed as a JSON list; a missing file, invalid JSON or another type is
    an ``InputError`` naming the file."""
    path = _need_file(path, what)
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(path, f"invalid JSON: {e}") from e
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON list of {of}")
    return path, data


def _lines(path: Path) -> list[tuple[int, str]]:
    """Every non-empty line (stripped) with its 1-based line number.  No list format of these
    benchmarks has comments: HMDB51 names often start with ``#``
    (``#20_Rhythm_clap_u_nm_np1_le_goo_4.avi``)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from e
    rows = enumerate(text.splitlines(), 1)
    return [(n, s.strip()) for n, s in rows if s.strip()]


def _unique_ids(items: list[VideoItem], source: Path) -> list[VideoItem]:
    """Keep ids unique: duplicated stems get their class folder prefixed; still-duplicate -> error."""
    seen: dict[str, int] = {}
    for it in items:
        seen[it.video_id] = seen.get(it.video_id, 0) + 1
    if all(c == 1 for c in seen.values()):
        return items
    out = []
    for it in items:
        if seen[it.video_id] > 1:
            it = dataclasses.replace(it, video_id=f"{Path(it.path).parent.name}__{it.video_id}")
        out.append(it)
    ids = [it.video_id for it in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(source, f"video id {dup!r} appears more than once")
    return out


def _apply_missing(items: list[VideoItem], missing: str, source: Path) -> list[VideoItem]:
    """Log "found N of M listed videos" (and which are missing), then keep, skip or refuse the missing."""
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    absent = [it for it in items if not os.path.exists(it.path)]
    log.info("%s: found %d of %d listed videos", source, len(items) - len(absent), len(items))
    if not absent:
        return items
    if missing == "error":
        raise InputError(absent[0].path,
                         f"video file not found (listed in {source}; {len(absent)} missing in all)")
    shown = ", ".join(it.path for it in absent[:3])
    if len(absent) > 3:
        shown += f" and {len(absent) - 3} more"
    what = "skipped" if missing == "skip" else "reported as failures"
    log.warning("%s: %d of %d listed videos are missing (%s): %s", source, len(absent), len(items), what,
                shown)
    if missing == "keep":
        return items
    gone = {id(it) for it in absent}
    return [it for it in items if id(it) not in gone]


def read_class_index_base(path: str | os.PathLike) -> tuple[list[str], int]:
    """Class names of a ``classInd.txt``-style file and the number of its first class: lines
    ``"<index> <name>"`` -> (names ordered by index, the smallest index: 1 for UCF101's file); one name
    per line -> (names, 0).  Integer labels of a list read with this file follow that base."""
    path = _need_file(Path(path), "class index file")
    entries: list[tuple[int, str]] = []
    numbered = True
    for _, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0].isdigit():
            entries.append((int(parts[0]), parts[1].strip()))
        else:
            numbered = False
            entries.append((len(entries) + 1, line))
    if not entries:
        raise InputError(path, "no classes")
    entries.sort()
    idx = [i for i, _ in entries]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise InputError(path, "class indices must be consecutive")
    names = [name for _, name in entries]
    if len(set(names)) != len(names):
        raise InputError(path, "duplicate class name")
    return names, (idx[0] if numbered else 0)


def read_class_index(path: str | os.PathLike) -> list[str]:
    """Class names from ``classInd.txt``-style lines ``"<1-based index> <name>"`` (or one name per line),
    ordered by index."""
    return read_class_index_base(path)[0]


# --------------------------------------------------------------------------------------------------
# readers


def read_class_folders(root: str | os.PathLike, split: str = "all", exts: Sequence[str] = VIDEO_EXTS,
                       class_names: Sequence[str] | None = None) -> tuple[list[VideoItem], list[str]]:
    """Videos in ``root/<class>/`` (sub-folders searched recursively); classes sorted by name unless
    ``class_names`` is given (then a folder not in it is an error)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(root, "no class sub-folders")
    names = list(class_names) if class_names is not None else [p.name for p in folders]
    index = {n: i for i, n in enumerate(names)}
    suffixes = {e.lower() for e in exts}
    items = []
    for folder in folders:
        videos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if folder.name not in index:
            if videos:
                raise InputError(folder, "class folder not in the class list")
            continue
        items += [VideoItem(p.stem, str(p.resolve()), index[folder.name], split) for p in videos]
    if not items:
        raise InputError(root, f"no video files ({', '.join(sorted(suffixes))}) in the class folders")
    return _unique_ids(items, root), names


def _label_of(token: str, names: Sequence[str], index: dict[str, int], base: int,
              list_file: Path, n: int, source_name: str) -> int:
    if token in index:
        return index[token]
    if re.fullmatch(r"-?\d+", token):
        k = int(token) - base
        if 0 <= k < len(names):
            return k
        raise InputError(list_file, f"line {n}: unknown label {token!r} (not in {source_name}, whose classes "
                                    f"are numbered {base}..{base + len(names) - 1})")
    raise InputError(list_file, f"line {n}: unknown label {token!r} (not in {source_name})")


def read_path_label_list(list_file: str | os.PathLike, video_root: str | os.PathLike,
                         class_names: Sequence[str], split: str = "all", label_base: int = 0,
                         class_source: str = "the class list") -> list[VideoItem]:
    """Items from "path [label]" lines: ``label`` is a class name or an integer (``label_base`` for
    the first class, 1 for UCF101); lines with a path only take the class from the parent folder name.
    Paths are relative to ``video_root`` (absolute paths kept)."""
    list_file = _need_file(Path(list_file), "list file")
    root = Path(video_root)
    names = list(class_names)
    index = {n: i for i, n in enumerate(names)}
    items = []
    for n, line in _lines(list_file):
        parts = line.rsplit(maxsplit=1)
        rel, token = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], None)
        if token is not None and Path(token).suffix.lower() in VIDEO_EXTS:  # a path with a space, no label
            rel, token = line, None
        if token is None:
            folder = Path(rel).parent.name
            if not folder:
                raise InputError(list_file, f"line {n}: no label and no class folder in {rel!r}")
            label = _label_of(folder, names, index, label_base, list_file, n, class_source)
        else:
            label = _label_of(token, names, index, label_base, list_file, n, class_source)
        path = Path(rel) if Path(rel).is_absolute() else inside_root(rel, root, f"line {n}: video", list_file)
        items.append(VideoItem(Path(rel).stem, str(path.resolve()), label, split))
    if not items:
        raise InputError(list_file, "no entries")
    return _unique_ids(items, list_file)


def read_ucf101(splits_dir: str | os.PathLike, video_root: str | os.PathLike, split: str = "train",
                split_id: int = 1) -> tuple[list[VideoItem], list[str]]:
    """UCF101 split files: ``classInd.txt``, ``trainlist0K.txt`` ("path label", 1-based) and
    ``testlist0K.txt`` ("path", class from the folder)."""
    splits_dir = Path(splits_dir)
    names = read_class_index(splits_dir / "classInd.txt")
    kind = "train" if split == "train" else "test"
    list_file = splits_dir / f"{kind}list{split_id:02d}.txt"
    items = read_path_label_list(list_file, video_root, names, split, label_base=1,
                                 class_source="classInd.txt")
    return items, names


def read_hmdb51(splits_dir: str | os.PathLike, video_root: str | os.PathLike, split: str = "train",
                split_id: int = 1) -> tuple[list[VideoItem], list[str]]:
    """HMDB51 split files ``<class>_test_split<K>.txt`` (``<video> <0|1|2>``: 1 train, 2 test, 0 unused);
    videos in ``video_root/<class>/<video>``; classes sorted by name."""
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise InputError(splits_dir, "HMDB51 split folder not found")
    files = sorted(splits_dir.glob(f"*_test_split{split_id}.txt"))
    if not files:
        raise InputError(splits_dir, f"no *_test_split{split_id}.txt files")
    names = [f.name[: -len(f"_test_split{split_id}.txt")] for f in files]
    want = 1 if split == "train" else 2
    root = Path(video_root)
    items = []
    for label, (name, f) in enumerate(zip(names, files)):
        for n, line in _lines(f):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise InputError(f, f"line {n}: expected '<video> <0|1|2>', got {line!r}")
            if int(parts[1]) == want:
                p = root / name / parts[0]
                items.append(VideoItem(Path(parts[0]).stem, str(p.resolve()), label, split))
    if not items:
        raise InputError(splits_dir, f"split {split!r} (id {split_id}) lists no videos")
    return _unique_ids(items, splits_dir), names


def _kinetics_path(root: Path, split: str | None, label: str, fname: str) -> Path:
    labels = [label] + ([label.replace(" ", "_")] if " " in label else [])
    cands: list[Path] = []
    if split:
        cands += [root / split / lab / fname for lab in labels]
    cands += [root / lab / fname for lab in labels]
    if split:
        cands.append(root / split / fname)
    cands.append(root / fname)
    return _first_existing(*cands) or cands[0]


REPLACEMENT_DIRS = ("replacement/replacement_for_corrupted_k400", "replacement_for_corrupted_k400")


def kinetics_replacements(folder: str | os.PathLike | None) -> dict[str, Path]:
    """cvdfoundation's re-encoded copies of corrupted Kinetics-400 videos: file name -> path, plus the
    youtube id (file name without ``_<start>_<end>``) -> path where that id has one copy only."""
    if folder is None or not Path(folder).is_dir():
        return {}
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_EXTS)
    out: dict[str, Path] = {p.name: p for p in files}
    by_id: dict[str, list[Path]] = {}
    for p in files:
        parts = p.stem.rsplit("_", 2)
        if len(parts) == 3:
            by_id.setdefault(parts[0], []).append(p)
    out.update({f"id:{k}": v[0] for k, v in by_id.items() if len(v) == 1})
    return out


def read_kinetics_csv(csv_file: str | os.PathLike, video_root: str | os.PathLike,
                      class_names: Sequence[str] | None = None, split: str | None = None,
                      ext: str = ".mp4", replacements: dict[str, Path] | None = None,
                      ) -> tuple[list[VideoItem], list[str]]:
    """Kinetics annotations ``label,youtube_id,time_start,time_end,split`` (header required; extra
    columns ignored; no ``label`` column, as in the test split, gives label -1).  Classes:
    ``class_names`` if given, else the sorted labels of this file.  The file of a row is
    ``<youtube_id>_<start:06d>_<end:06d><ext>``, looked for in ``<root>/<split>/<label>/``,
    ``<root>/<label>/``, ``<root>/<split>/`` and ``<root>/`` (a label's spaces also tried as
    underscores); a row whose file is nowhere points at the first of these.  ``replacements``
    (``kinetics_replacements``): a re-encoded copy found there is used instead of the original."""
    csv_file = _need_file(Path(csv_file), "Kinetics CSV")
    root = Path(video_root)
    with open(csv_file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "time_start", "time_end"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise InputError(csv_file, f"header must contain {', '.join(sorted(need))} (and label)")
        rows = list(reader)
    if class_names is None:
        class_names = sorted({r["label"].strip() for r in rows if r.get("label")})
    names = list(class_names)
    index = {n: i for i, n in enumerate(names)}
    replacements = replacements or {}
    items = []
    replaced = 0
    for n, r in enumerate(rows, 2):
        label_name = (r.get("label") or "").strip()
        try:
            start, end = int(float(r["time_start"])), int(float(r["time_end"]))
        except (TypeError, ValueError):
            raise InputError(csv_file, f"line {n}: bad time_start/time_end") from None
        if label_name and label_name not in index:
            raise InputError(csv_file, f"line {n}: unknown label {label_name!r} (not in the class list)")
        row_split = (r.get("split") or split or "").strip() or None
        yid = (r.get("youtube_id") or "").strip()
        vid = f"{yid}_{start:06d}_{end:06d}"
        path = replacements.get(vid + ext) or replacements.get(f"id:{yid}")
        if path is not None:
            replaced += 1
        else:
            path = _kinetics_path(root, row_split, label_name, vid + ext)
        items.append(VideoItem(vid, str(path.resolve()), index[label_name] if label_name else -1,
                               split or row_split or "all"))
    if not items:
        raise InputError(csv_file, "no rows")
    if replaced:
        log.info("%s: %d videos taken from the replacement folder (re-encoded copies of corrupted files)",
                 csv_file, replaced)
    return _unique_ids(items, csv_file), names


def ssv2_class_names(labels_json: str | os.PathLike) -> list[str]:
    """Something-Something v2 ``labels.json`` / ``something-something-v2-labels.json``
    ({template without brackets: "id"}) -> names by id."""
    labels_json = _need_file(Path(labels_json), "SSv2 labels file")
    try:
        mapping = json.loads(labels_json.read_text())
        by_id = sorted((int(v), k) for k, v in mapping.items())
    except (ValueError, AttributeError) as e:
        raise InputError(labels_json, f"not a JSON object of name -> id: {e}") from e
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise InputError(labels_json, "class ids must be 0..N-1")
    return [k for _, k in by_id]


def read_ssv2(labels_json: str | os.PathLike, annotation_json: str | os.PathLike,
              video_root: str | os.PathLike, split: str = "train",
              ext: str = ".webm") -> tuple[list[VideoItem], list[str]]:
    """Something-Something v2: entries {id, template, label, placeholders}; class = template with
    "[" and "]" removed, looked up in ``labels.json``; entries without a template (test set) get -1."""
    names = ssv2_class_names(labels_json)
    index = {n: i for i, n in enumerate(names)}
    annotation_json, entries = _json_list(Path(annotation_json), "SSv2 annotation file")
    root = Path(video_root)
    items = []
    for n, e in enumerate(entries, 1):
        if not isinstance(e, dict) or "id" not in e:
            raise InputError(annotation_json, f"entry {n}: no 'id'")
        template = e.get("template")
        if template is None:
            label = -1
        else:
            name = template.replace("[", "").replace("]", "")
            if name not in index:
                raise InputError(annotation_json, f"entry {n} (id {e['id']}): unknown label {name!r} "
                                                  f"(not in {Path(labels_json).name})")
            label = index[name]
        vid = str(e["id"])
        items.append(VideoItem(vid, str((root / f"{vid}{ext}").resolve()), label, split))
    if not items:
        raise InputError(annotation_json, "no entries")
    return _unique_ids(items, annotation_json), names


def diving48_class_names(vocab_json: str | os.PathLike) -> list[str]:
    """``Diving48_vocab.json``: a list of 48 [take-off, somersaults, twists, flight position] lists;
    class i = the four words joined by spaces ("Back 15som 05Twis FREE")."""
    vocab_json, vocab = _json_list(Path(vocab_json), "Diving48 vocabulary", of="class descriptions")
    if not vocab:
        raise InputError(vocab_json, "expected a JSON list of class descriptions")
    names = []
    for n, v in enumerate(vocab, 1):
        if isinstance(v, list) and v and all(isinstance(w, str) for w in v):
            names.append(" ".join(v))
        elif isinstance(v, str):
            names.append(v)
        else:
            raise InputError(vocab_json, f"entry {n}: expected a list of words, got {v!r}")
    if len(set(names)) != len(names):
        raise InputError(vocab_json, "duplicate class description")
    return names


def read_diving48(annotation_json: str | os.PathLike, vocab_json: str | os.PathLike,
                  video_root: str | os.PathLike, split: str = "train",
                  ext: str = ".mp4") -> tuple[list[VideoItem], list[str]]:
    """Diving48 V2 ``Diving48_V2_{train,test}.json``: entries {vid_name, label, start_frame, end_frame}
    (label indexes the vocabulary; frames ``start_frame`` .. ``end_frame - 1`` of ``<vid_name>.mp4`` are
    sampled).  Classes: all 48 of ``Diving48_vocab.json``, whatever labels this split holds."""
    names = diving48_class_names(vocab_json)
    annotation_json, entries = _json_list(Path(annotation_json), "Diving48 annotation file")
    root = Path(video_root)
    items = []
    for n, e in enumerate(entries, 1):
        if not isinstance(e, dict) or not e.get("vid_name"):
            raise InputError(annotation_json, f"entry {n}: no 'vid_name'")
        vid = str(e["vid_name"])
        try:
            label = int(e["label"]) if e.get("label") is not None else -1
            start = int(e["start_frame"]) if e.get("start_frame") is not None else None
            end = int(e["end_frame"]) if e.get("end_frame") is not None else None
        except (TypeError, ValueError):
            raise InputError(annotation_json, f"entry {n} ({vid}): label / start_frame / end_frame "
                                              "must be integers") from None
        if not -1 <= label < len(names):
            raise InputError(annotation_json, f"entry {n} ({vid}): label {label} is not in "
                                              f"{Path(vocab_json).name} (0..{len(names) - 1})")
        if start is not None and end is not None and not 0 <= start < end:
            raise InputError(annotation_json, f"entry {n} ({vid}): empty segment {start}..{end}")
        items.append(VideoItem(vid, str((root / f"{vid}{ext}").resolve()), label, split, start, end))
    if not items:
        raise InputError(annotation_json, "no entries")
    return _unique_ids(items, annotation_json), names


# --------------------------------------------------------------------------------------------------
# one entry point


def _split_name(split: str) -> str:
    s = split.lower()
    return {"validation": "val", "valid": "val", "validate": "val", "eval": "val"}.get(s, s)


PathArg = str | os.PathLike


def _one_of(what: str, cands: Sequence[Path], hint: str) -> Path | None:
    """The single existing path among ``cands`` (None if none); several different ones are ambiguous."""
    found: list[Path] = []
    for c in cands:
        if c.exists() and not any(c.resolve() == f.resolve() for f in found):
            found.append(c)
    if len(found) > 1:
        raise InputError(found[0], f"ambiguous {what}: also {', '.join(str(f) for f in found[1:])}; "
                                   f"choose one with {hint}")
    return found[0] if found else None


SSV2_PREFIX = "something-something-v2-"


def _ssv2_file(dirs: Sequence[Path], stem: str, hint: str) -> Path:
    names = [f"{stem}.json", f"{SSV2_PREFIX}{stem}.json"]
    cands = [d / n for d in dirs for n in names]
    return _one_of(f"SSv2 {stem} file", cands, hint) or cands[0]


@dataclass(frozen=True)
class DataSource:
    """Where one split of a dataset is: the one argument of every layout reader.

    ``root`` is the dataset folder and ``split`` the split name as asked (``name``: normalised,
    "validation" -> "val");
    ``video_root`` / ``list_file`` / ``class_index`` / ``annotations`` name files that override the
    ones a reader looks for under ``root`` (each reader uses the ones its layout has), ``split_id``
    picks an official split (UCF101 / HMDB51)."""

    root: Path
    split: str
    split_id: int = 1
    video_root: Path | None = None
    list_file: Path | None = None
    class_index: Path | None = None
    annotations: Path | None = None

    @property
    def name(self) -> str:
        """The split's normalised name ("validation", "valid", "eval" -> "val")."""
        return _split_name(self.split)


# What a layout reader returns: the items, the class names (``label`` indexes them) and the file or
# folder they were read from (named in the "found N of M listed videos" line).
Layout = tuple[list[VideoItem], list[str], Path]
LayoutReader = Callable[[DataSource], Layout]


def _layout_folder(src: DataSource) -> Layout:
    """``root/<split>/<class>/*`` if ``root/<split>`` exists, else ``root/<class>/*``."""
    root, split = src.root, src.split
    base = root / split if (root / split).is_dir() else root
    names = read_class_index(src.class_index) if src.class_index else None
    items, names = read_class_folders(base, src.name, class_names=names)
    return items, names, base


def _layout_list(src: DataSource) -> Layout:
    """``list_file`` of "path label" lines; classes from ``class_index`` or the labels seen."""
    if src.list_file is None:
        raise InputError(src.root, "dataset kind 'list' needs list_file")
    source = _need_file(src.list_file, "list file")
    if src.class_index:
        names, base_index = read_class_index_base(src.class_index)
    else:
        names, base_index = _names_from_list(source), 0
    items = read_path_label_list(source, src.video_root or source.parent, names, src.name,
                                 label_base=base_index,
                                 class_source=src.class_index.name if src.class_index else "the class list")
    return items, names, source


def _layout_ucf101(src: DataSource) -> Layout:
    """UCF101 split lists in ``root/splits`` or ``root/ucfTrainTestlist``; the ``videoprobe synth`` output."""
    root = src.root
    sdir = _first_existing(root / "splits", root / "ucfTrainTestlist") or root / "splits"
    vr = src.video_root or _first_existing(root / "videos", root / "UCF-101") or root
    items, names = read_ucf101(sdir, vr, src.name, src.split_id)
    return items, names, sdir


def _layout_hmdb51(src: DataSource) -> Layout:
    """HMDB51 ``<class>_test_split<K>.txt`` files and ``<class>/<video>`` folders."""
    root = src.root
    if src.annotations:
        sdir = src.annotations
    else:
        pattern = f"*_test_split{src.split_id}.txt"
        cands = [d for d in (root / "splits", root / "testTrainMulti_7030_splits", root / "annotations")
                 if d.is_dir() and any(d.glob(pattern))]
        sdir = _one_of("HMDB51 split folder", cands, "data.annotations=<folder>") or root / "splits"
    vr = src.video_root or _first_existing(root / "videos", root / "hmdb51_org") or root
    items, names = read_hmdb51(sdir, vr, src.name, src.split_id)
    return items, names, sdir


def _layout_kinetics(src: DataSource) -> Layout:
    """Kinetics CSVs (classes from ``class_index``, the train CSV or this CSV) and the video folders."""
    root, sp = src.root, src.name
    dirs = [root / "annotations", root]
    hint = "data.annotations=<csv>"

    def csv_of(s: str) -> Path | None:
        stems = {"val": ["val", "validate", "validation"]}.get(s, [s])
        cands = [d / f"{pre}{st}.csv" for d in dirs for pre in ("", "kinetics_") for st in stems]
        return _one_of(f"Kinetics {s} CSV", cands, hint)

    csv_file = src.annotations or (csv_of(sp) or root / "annotations" / f"{sp}.csv")
    if src.class_index:
        names = read_class_index(src.class_index)
    else:
        train_csv = None if sp == "train" else csv_of("train")
        names = read_kinetics_csv(train_csv, root, split="train")[1] if train_csv else None
    vr = src.video_root or _first_existing(root / f"videos_{sp}", root / "videos") or root
    repl = _first_existing(*[base / r for base in (root, vr) for r in REPLACEMENT_DIRS])
    items, names = read_kinetics_csv(csv_file, vr, names, sp, replacements=kinetics_replacements(repl))
    return items, names, csv_file


def _layout_ssv2(src: DataSource) -> Layout:
    """Something-Something v2 JSON files (plain or 20BN names) and the ``.webm`` folder."""
    root, sp = src.root, src.name
    dirs = [root / "labels", root / "annotations", root]
    labels = src.class_index or _ssv2_file(dirs, "labels", "data.class_index=<labels.json>")
    stem = {"train": "train", "val": "validation", "test": "test"}.get(sp, sp)
    ann = src.annotations or _ssv2_file(dirs, stem, "data.annotations=<json>")
    vr = src.video_root or _first_existing(root / "20bn-something-something-v2", root / "videos") or root
    items, names = read_ssv2(labels, ann, vr, sp)
    return items, names, ann


def _layout_diving48(src: DataSource) -> Layout:
    """Diving48 V2 JSON files with the vocabulary and the ``rgb/`` folder; "val" reads the test split."""
    root, sp = src.root, src.name
    dirs = [root / "annotations", root]
    vocab_cands = [d / "Diving48_vocab.json" for d in dirs]
    vocab = src.class_index or (
        _one_of("Diving48 vocabulary", vocab_cands, "data.class_index=<json>") or vocab_cands[0])
    stem = "train" if sp == "train" else "test"
    ann_cands = [d / f"Diving48_V2_{stem}.json" for d in dirs]
    ann = src.annotations or (
        _one_of(f"Diving48 {stem} file", ann_cands, "data.annotations=<json>") or ann_cands[0])
    vr = src.video_root or _first_existing(root / "rgb", root / "videos") or root
    items, names = read_diving48(ann, vocab, vr, sp)
    return items, names, ann


# kind -> layout reader. A new dataset format = one ``(DataSource) -> Layout`` function + one entry here
# (and a line in the README's "Video dataset layouts").
READERS: dict[str, LayoutReader] = {
    "folder": _layout_folder,
    "list": _layout_list,
    "ucf101": _layout_ucf101,
    "synth": _layout_ucf101,  # `videoprobe synth` writes the UCF101 layout
    "hmdb51": _layout_hmdb51,
    "kinetics": _layout_kinetics,
    "ssv2": _layout_ssv2,
    "diving48": _layout_diving48,
}
KINDS = tuple(READERS)


def layout_reader(kind: str) -> LayoutReader:
    """The reader of ``kind``; an unknown kind is a one-line ``ConfigError`` listing the known ones."""
    try:
        return READERS[kind]
    except KeyError:
        known = ", ".join(KINDS)
        raise ConfigError(f"data.kind: unknown dataset kind {kind!r}; known kinds: {known}") from None


def build_video_dataset(kind: str, root: PathArg, split: str = "train", *, split_id: int = 1,
                        video_root: PathArg | None = None, list_file: PathArg | None = None,
                        class_index: PathArg | None = None, annotations: PathArg | None = None,
                        missing: str = "keep") -> tuple[list[VideoItem], list[str]]:
    """Read a dataset split -> ``(items, class_names)``; logs "found N of M listed videos".

    ``kind`` and where files are looked for under ``root`` (``video_root``, ``annotations`` and
    ``class_index`` override; README "Video dataset layouts" has an example of each):

    * "folder": ``root/<split>/<class>/*`` if ``root/<split>`` exists, else ``root/<class>/*``.
    * "list": ``list_file`` ("path label" lines), paths relative to ``video_root`` (default: the list
      file's folder); classes from ``class_index`` (classInd format: integer labels follow its
      numbering, 1-based for ``1 ApplyEyeMakeup`` lines) or else the labels seen (names sorted, or
      integers 0..max).
    * "ucf101" / "synth": splits in ``root/splits`` or ``root/ucfTrainTestlist``; videos in
      ``root/videos``, ``root/UCF-101`` or ``root``; "train" -> trainlist, "test"/"val" -> testlist.
    * "hmdb51": split files (``annotations``, else ``root/splits``, ``root/testTrainMulti_7030_splits``
      or mmaction2's ``root/annotations``); videos in ``root/videos``, ``root/hmdb51_org`` or ``root``;
      "train" -> 1, "test"/"val" -> 2.
    * "kinetics": ``annotations`` or ``<split>.csv`` / mmaction2's ``kinetics_<split>.csv`` in
      ``root/annotations`` or ``root`` (val also as validate.csv); classes from ``class_index`` or the
      train CSV next to it or this CSV; videos in mmaction2's ``root/videos_<split>``, ``root/videos``
      or ``root``; copies in cvdfoundation's ``replacement/replacement_for_corrupted_k400/`` replace
      the corrupted originals.
    * "ssv2": ``labels.json`` (``class_index`` overrides) and ``train.json`` / ``validation.json`` /
      ``test.json``, or the 20BN names ``something-something-v2-{labels,train,validation,test}.json``,
      in ``root/labels``, ``root/annotations`` or ``root``; videos in
      ``root/20bn-something-something-v2``, ``root/videos`` or ``root``.
    * "diving48": ``Diving48_V2_{train,test}.json`` and ``Diving48_vocab.json`` (``class_index``
      overrides) in ``root/annotations`` or ``root``; videos in ``root/rgb``, ``root/videos`` or
      ``root``; "val" -> test.

    ``missing``: what to do with listed files that do not exist: "keep" (decoding reports them per
    item), "skip" (drop with one warning) or "error".
    """
    reader = layout_reader(kind)

    def opt(p: PathArg | None) -> Path | None:
        return Path(p) if p else None

    src = DataSource(Path(root), split, split_id,
                     video_root=None if video_root is None else Path(video_root),
                     list_file=None if list_file is None else Path(list_file), class_index=opt(class_index),
                     annotations=opt(annotations))
    items, names, source = reader(src)
    return _apply_missing(items, missing, source), names


def _names_from_list(list_file: Path) -> list[str]:
    """Classes implied by a "path label" list without a class file: sorted names, or 0..max ints."""
    labels = []
    for n, line in _lines(list_file):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or Path(parts[1]).suffix.lower() in VIDEO_EXTS:
            raise InputError(list_file, f"line {n}: expected 'path label' (or give a class index file)")
        labels.append(parts[1])
    if all(re.fullmatch(r"\d+", t) for t in labels):
        return [str(i) for i in range(max(int(t) for t in labels) + 1)]
    return sorted(set(labels))


# --------------------------------------------------------------------------------------------------
# torch datasets


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over videos, each giving all its views (what ``videoprobe extract`` decodes).

    ``dataset[i]`` -> dict(video=(V, C, T, H, W) float32 in [0, 1] or None, label=int, video_id=str,
    path=str, index=i, frame_indices=(num_clips, clip_len) int64 array or None, info=float64 array
    [num_frames, fps] or None, backend=str or None, error=one-line message or None).  Decode failures
    are returned in ``error`` (``strict=True`` raises the ``InputError`` instead).  Random temporal /
    spatial sampling is seeded by ``(seed, crc32(video_id))``, so a video always gives the same views
    wherever it sits in the list (a resumed or sharded extraction decodes the same clips).
    """

    def __init__(self, items: Sequence[VideoItem], spec: ClipSpec, seed: int = 0, strict: bool = False,
                 num_threads: int = 1):
        self.items = list(items)
        self.spec = spec
        self.seed = seed
        self.strict = strict
        self.num_threads = num_threads

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from videoprobe.data.decode import open_video, sample_clips

        it = self.items[i]
        out: dict[str, Any] = {"video": None, "label": it.label, "video_id": it.video_id, "path": it.path,
                               "index": i, "frame_indices": None, "info": None, "backend": None,
                               "error": None}
        try:
            with open_video(it.path, self.spec.backend, self.num_threads) as reader:
                rng = np.random.default_rng([self.seed, zlib.crc32(it.video_id.encode())])
                video, idx = sample_clips(reader, self.spec, rng, segment=it.segment)
                out.update(video=video, frame_indices=np.asarray(idx, dtype=np.int64), backend=reader.backend,
                           info=np.array([reader.num_frames, reader.fps], dtype=np.float64))
        except InputError as e:
            if self.strict:
                raise
            out["error"] = str(e)
        return out


def collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader ``collate_fn`` for ``ClipDataset``: keep the per-video dicts as a list (views differ
    in number per video only by failures, and a failed item has ``video=None``)."""
    return batch
