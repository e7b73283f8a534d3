"""Feature cache: per-item feature arrays on disk, keyed by what produced them, safe to resume.

A cache is a folder::

    manifest.json               merged record: format_version, key, feature_dim, dtype, meta, created,
                                items: {item_id: {"n": rows, "arrays": {name: {"file", "shape",
                                "dtype", "nbytes", "file_size", "sha256"}}}}
    manifest.rank{r}.jsonl      per-rank journal while writing: a header line, then one line per
                                finished item (append-only; a torn last line is ignored)
    shards/<bb>/<stem>-<hash>.<array>.npy   one .npy file per item and array (memory-mapped on read)

``<stem>`` is the item id with unsafe characters replaced (ids may hold '/'), ``<hash>`` the first 16
hex digits of the id's sha256 (so distinct ids never share a file) and ``<bb>`` its first two digits
(so no folder holds more than a few thousand files).

Writing is crash-safe: each array goes to a temporary file that is ``os.replace``-d into place, and
only then is the item appended to this rank's journal. A kill at any moment loses at most the item
in progress; a new writer on the same folder skips every recorded item (``has``). With torchrun each
rank writes its own journal; rank 0 calls ``merge_manifests`` after a barrier (a single-process writer
merges on ``close``). A reader also picks up un-merged journals, so an interrupted run stays readable.

The ``CacheKey`` (encoder, checkpoint sha256, config hash, preprocessing, dataset, split) is stored in
the cache; a writer or reader with a different key is refused with a ``CacheError`` naming the field.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import CacheError, InputError
from common.paths import disk_error, disk_errors, sweep_stale_temps
from common.progress import progress as progress_bar

log = logging.getLogger(__name__)

try:  # advisory lock so two writers never share one rank's journal (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "CacheKey",
    "CacheWriter",
    "FeatureCache",
    "FillResult",
    "MissingItemError",
    "fill_cache",
    "is_cache_entry",
    "merge_manifests",
    "check_existing_cache",
    "item_stem",
    "journal_path",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
DTYPES = ("float32", "float16")
_JOURNAL_RE = re.compile(r"^manifest\.rank(\d+)\.jsonl$")
_ENTRY_RE = re.compile(r"^(manifest\.json|manifest\.rank\d+\.jsonl|shards|\..*)$")
_ARRAY_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]+")
_SAFE_FILE_RE = re.compile(r"^shards/[0-9a-f]{2}/[A-Za-z0-9_.-]+\.npy$")  # what _array_relpath writes
_KEY_FIELDS = ("encoder", "checkpoint_sha256", "config_hash", "preprocessing", "dataset", "split")


# --------------------------------------------------------------------------------------------- key


def _canonical(value: Any) -> Any:
    """JSON round trip with sorted keys: tuples become lists, numpy scalars become strings/numbers."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value: Any, limit: int = 16) -> str:
    s = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return s if len(s) <= limit else s[: limit - 4] + ".."


def _flatten(d: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}"))
    return out or {prefix: {}}


@dataclass
class CacheKey:
    """Everything that determines a cache's features; two runs share a cache only if their keys match."""

    encoder: str
    checkpoint_sha256: str
    config_hash: str
    preprocessing: dict = field(default_factory=dict)
    dataset: str = ""
    split: str = ""

    def to_dict(self) -> dict:
        """A JSON-ready dict (preprocessing canonicalised)."""
        d = dataclasses.asdict(self)
        d["preprocessing"] = _canonical(self.preprocessing)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "cache key") -> CacheKey:
        """Parse a stored key; a missing or wrongly typed field is a ``CacheError`` naming ``source``."""
        if not isinstance(d, dict):
            raise CacheError(f"{source}: cache key is not a mapping")
        missing = [f for f in _KEY_FIELDS if f not in d]
        if missing:
            raise CacheError(f"{source}: cache key lacks {', '.join(missing)}")
        if not isinstance(d["preprocessing"], dict):
            raise CacheError(f"{source}: cache key field preprocessing is not a mapping")
        bad = [f for f in _KEY_FIELDS if f != "preprocessing" and not isinstance(d[f], str)]
        if bad:
            raise CacheError(f"{source}: cache key field(s) {', '.join(bad)} are not strings")
        return cls(**{f: d[f] for f in _KEY_FIELDS})

    def diff(self, other: CacheKey) -> list[str]:
        """Names of the fields whose values differ from ``other`` (in field order)."""
        a, b = self.to_dict(), other.to_dict()
        return [f for f in _KEY_FIELDS if a[f] != b[f]]

    def describe_diff(self, other: CacheKey, limit: int = 4) -> list[str]:
        """``["checkpoint_sha256=ab12.. but this run has cd34..", ...]`` with self as the stored key.

        Preprocessing differences are reported per sub-key (``preprocessing.grid_size=0.02 ...``).
        """
        a, b = self.to_dict(), other.to_dict()
        parts: list[str] = []
        for f in self.diff(other):
            if f == "preprocessing":
                fa, fb = _flatten(a[f], f), _flatten(b[f], f)
                for k in sorted(set(fa) | set(fb)):
                    if fa.get(k, "<unset>") != fb.get(k, "<unset>"):
                        va = _short(fa[k]) if k in fa else "<unset>"
                        vb = _short(fb[k]) if k in fb else "<unset>"
                        parts.append(f"{k}={va} but this run has {vb}")
            else:
                parts.append(f"{f}={_short(a[f])} but this run has {_short(b[f])}")
        if len(parts) > limit:
            parts = parts[:limit] + [f"{len(parts) - limit} more difference(s)"]
        return parts


def _mismatch_error(path: Path, parts: list[str]) -> CacheError:
    return CacheError(
        f"cache {path} was built with {'; '.join(parts)}; write to another folder (out=...) or delete "
        "this one"
    )


def _check_compatible(path: Path, header: dict, key: CacheKey, feature_dim: int | None, dtype: str | None,
                      source: Path) -> None:
    """Raise a ``CacheError`` naming every part of ``header`` that differs from this run's settings."""
    stored = CacheKey.from_dict(header.get("key"), source)
    parts = stored.describe_diff(key)
    if feature_dim is not None and header.get("feature_dim") != feature_dim:
        parts.append(f"feature_dim={header.get('feature_dim')} but this run has {feature_dim}")
    if dtype is not None and header.get("dtype") != dtype:
        parts.append(f"dtype={header.get('dtype')} but this run has {dtype}")
    if parts:
        raise _mismatch_error(path, parts)


def check_existing_cache(path: str | Path, fields: Mapping[str, Any], feature_dim: int | None = None,
                         dtype: str | None = None) -> None:
    """Refuse early: raise the usual "was built with ..." ``CacheError`` when ``path`` holds a cache whose
    key differs in any of ``fields`` (a subset of the ``CacheKey`` fields; the others are not compared),
    or in ``feature_dim`` / ``dtype`` when given. Reads only; nothing there: no-op.

    Lets a command check what it knows (checkpoint hash, preprocessing, dataset) before it builds its
    encoder or writes anything."""
    path = Path(path)
    if not path.is_dir():
        return
    st = _read_state(path)
    if st.header is None:
        return
    src = st.header_source or path
    stored = CacheKey.from_dict(st.header["key"], src)
    unknown = set(fields) - set(_KEY_FIELDS)
    if unknown:
        raise ValueError(f"not cache key fields: {sorted(unknown)}")
    _check_compatible(path, st.header, dataclasses.replace(stored, **dict(fields)), feature_dim, dtype, src)


# ------------------------------------------------------------------------------------------- paths


def item_stem(item_id: str) -> str:
    """A safe, unique file stem for an item id: ``<sanitised id, at most 64 chars>-<16 hex of sha256>``."""
    if not isinstance(item_id, str) or item_id == "":
        raise CacheError(f"item id {item_id!r} is not a non-empty string")
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem = _UNSAFE_RE.sub("_", item_id).strip("_-")[:64] or "item"
    return f"{stem}-{digest}"


def _array_relpath(item_id: str, name: str, generation: int) -> str:
    stem = item_stem(item_id)
    gen = "" if generation == 0 else f".g{generation}"
    return f"{SHARDS}/{stem[-16:-14]}/{stem}.{name}{gen}.npy"


def journal_path(path: str | Path, rank: int) -> Path:
    """The journal file of ``rank`` inside cache folder ``path``."""
    return Path(path) / f"manifest.rank{rank}.jsonl"


def is_cache_entry(name: str) -> bool:
    """True for a name the cache itself puts in its folder (manifest, rank journals, ``shards``, hidden
    temporaries); anything else in the folder was put there by someone else."""
    return bool(_ENTRY_RE.match(name))


def _journals(path: Path) -> list[tuple[int, Path]]:
    if not path.is_dir():
        return []
    found = []
    for p in path.iterdir():
        m = _JOURNAL_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ read records


@dataclass
class _State:
    header: dict | None = None  # format_version, key, feature_dim, dtype, meta, created
    header_source: Path | None = None
    items: dict[str, dict] = field(default_factory=dict)
    journals: list[Path] = field(default_factory=list)


def _check_header(h: Any, source: Path) -> dict:
    if not isinstance(h, dict):
        raise CacheError(f"{source}: header is not a JSON object")
    for f in ("format_version", "key", "feature_dim", "dtype"):
        if f not in h:
            raise CacheError(f"{source}: corrupt manifest, no {f!r}")
    if not isinstance(h["format_version"], int) or h["format_version"] > FORMAT_VERSION:
        raise CacheError(
            f"{source}: cache format_version {h['format_version']!r} is newer than this code "
            f"understands ({FORMAT_VERSION})"
        )
    if not isinstance(h["feature_dim"], int) or h["feature_dim"] <= 0:
        raise CacheError(f"{source}: corrupt manifest, feature_dim {h['feature_dim']!r}")
    if h["dtype"] not in DTYPES:
        raise CacheError(f"{source}: corrupt manifest, dtype {h['dtype']!r} is not one of {DTYPES}")
    CacheKey.from_dict(h["key"], source)
    return h


def _check_entry(item_id: Any, entry: Any, source: Path) -> None:
    ok = (
        isinstance(item_id, str)
        and isinstance(entry, dict)
        and isinstance(entry.get("n"), int)
        and isinstance(entry.get("arrays"), dict)
        and "features" in entry["arrays"]
        and all(
            isinstance(a, dict) and isinstance(a.get("file"), str) and isinstance(a.get("shape"), list)
            and isinstance(a.get("dtype"), str) and isinstance(a.get("file_size"), int)
            for a in entry["arrays"].values()
        )
    )
    if not ok:
        raise CacheError(f"{source}: corrupt manifest entry for item {item_id!r}")
    for a in entry["arrays"].values():
        if not _SAFE_FILE_RE.match(a["file"]) or ".." in a["file"].split("/"):
            raise CacheError(f"{source}: manifest entry for item {item_id!r} names file {a['file']!r} "
                             f"outside {SHARDS}/; refusing it")


def _read_manifest(mpath: Path) -> tuple[dict, dict[str, dict]]:
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{mpath}: corrupt manifest ({type(e).__name__}: {e})") from None
    header = _check_header(data, mpath)
    items = data.get("items")
    if not isinstance(items, dict):
        raise CacheError(f"{mpath}: corrupt manifest, 'items' is not a mapping")
    for k, v in items.items():
        _check_entry(k, v, mpath)
    return header, items


def _read_journal(jpath: Path) -> tuple[dict | None, list[tuple[str, dict]]]:
    """(header or None if the journal is empty, [(item_id, entry), ...] in order).

    The segment after the last newline is a torn write (the writer was killed mid-line) and is
    ignored; an unreadable complete line is corruption and raises.
    """
    try:
        raw = jpath.read_bytes()
    except OSError as e:
        raise CacheError(f"{jpath}: cannot read journal ({e})") from None
    lines = raw.split(b"\n")[:-1]  # drop the torn (or empty) tail
    header: dict | None = None
    items: list[tuple[str, dict]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CacheError(f"{jpath}: corrupt journal line {lineno}") from None
        kind = rec.get("type") if isinstance(rec, dict) else None
        if header is None:
            if kind != "header":
                raise CacheError(f"{jpath}: corrupt journal, line {lineno} comes before the header")
            header = _check_header(rec, jpath)
        elif kind == "item":
            entry = {"n": rec.get("n"), "arrays": rec.get("arrays")}
            _check_entry(rec.get("id"), entry, jpath)
            items.append((rec["id"], entry))
        else:
            raise CacheError(f"{jpath}: corrupt journal line {lineno} (type {kind!r})")
    return header, items


def _same_setup(a: dict, b: dict) -> list[str]:
    parts = CacheKey.from_dict(a["key"]).describe_diff(CacheKey.from_dict(b["key"]))
    for f in ("feature_dim", "dtype"):
        if a[f] != b[f]:
            parts.append(f"{f}={a[f]} but this run has {b[f]}")
    return parts


def _read_state(path: Path) -> _State:
    """Merged view of ``manifest.json`` and every rank journal (later records win)."""
    st = _State()
    mpath = path / MANIFEST
    if mpath.exists():
        st.header, items = _read_manifest(mpath)
        st.header_source = mpath
        st.items.update(items)
    for _, jpath in _journals(path):
        header, items = _read_journal(jpath)
        if header is None:
            continue
        if st.header is None:
            st.header, st.header_source = header, jpath
        else:
            parts = _same_setup(st.header, header)
            if parts:
                raise CacheError(
                    f"{jpath}: journal disagrees with {st.header_source.name} "
                    f"(it has {'; '.join(p.replace(' but this run has ', ' vs ') for p in parts)})"
                )
            if header.get("created", "~") < st.header.get("created", "~"):
                st.header = {**st.header, "created": header["created"]}
        st.items.update(items)
        st.journals.append(jpath)
    return st


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with disk_errors(path.parent, need=len(text.encode("utf-8")), cleanup=tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


_LOCK_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_warned_no_locks = False


def _try_lock(fd: int) -> bool:
    """Take the journal's advisory lock: False when another process holds it. A filesystem that does not
    implement locks (NFS without a lock daemon, Lustre without ``-o flock``: ENOLCK, ENOSYS, EOPNOTSUPP)
    counts as unlocked, with one warning: each rank writes its own journal, so ranks never share one."""
    global _warned_no_locks
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _LOCK_HELD:
            return False
        if not _warned_no_locks:
            _warned_no_locks = True
            log.warning("this filesystem does not support file locks (%s); the cache cannot detect two "
                        "writers of the same rank, so run one extraction per cache folder at a time",
                        os.strerror(e.errno) if e.errno else e)
    return True


def merge_manifests(path: str | Path, remove_journals: bool = True) -> Path:
    """Merge ``manifest.json`` and every rank journal into ``manifest.json`` (atomically); return it.

    Call it on rank 0 after a barrier (every rank closed its writer). Merged journals are removed,
    except one still held open by a live writer, whose later items a later merge picks up.
    """
    path = Path(path)
    st = _read_state(path)
    if st.header is None:
        raise CacheError(f"{path}: nothing to merge (no {MANIFEST} and no manifest.rank*.jsonl)")
    h = st.header
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": h["key"],
        "feature_dim": h["feature_dim"],
        "dtype": h["dtype"],
        "meta": h.get("meta", {}),
        "created": h.get("created", _now()),
        "merged": _now(),
        "items": {k: st.items[k] for k in sorted(st.items)},
    }
    out = path / MANIFEST
    _atomic_write_text(out, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    if remove_journals:
        for jpath in st.journals:
            try:
                fd = os.open(jpath, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                if _try_lock(fd):  # nobody is writing it: everything in it is now in manifest.json
                    jpath.unlink(missing_ok=True)
            finally:
                os.close(fd)
    return out


def update_meta(path: str | Path, **fields: Any) -> Path:
    """Merge the journals (``merge_manifests``) and set ``fields`` in the cache's ``meta`` (atomically);
    for facts known only after writing, e.g. how many videos were padded.  Call it with no writer open."""
    out = merge_manifests(path)
    manifest = json.loads(out.read_text(encoding="utf-8"))
    manifest["meta"] = {**(manifest.get("meta") or {}), **_canonical(fields)}
    _atomic_write_text(out, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return out


# ------------------------------------------------------------------------------------------ writer


class _HashingFile:
    """A write-only file wrapper that hashes every byte written (numpy writes the .npy through it)."""

    def __init__(self, f: Any):
        self.f = f
        self.h = hashlib.sha256()

    def write(self, b: bytes | memoryview) -> int:
        self.h.update(b)
        return self.f.write(b)


def _all_finite(a: np.ndarray, block: int = 1 << 24) -> bool:
    """True when no value of ``a`` is NaN or inf. float16 is read by its exponent bits, in blocks:
    numpy's float16 ``isfinite`` is emulated per element and the writer checked every (N, 1232) float16
    item twice with it (seconds per ScanNet-sized scene, most of the time of writing a large cache)."""
    if a.dtype.kind != "f":
        return True
    if a.dtype == np.float16 and a.flags.c_contiguous:
        bits = a.reshape(-1).view(np.uint16)
        return not any(((bits[s : s + block] & 0x7C00) == 0x7C00).any() for s in range(0, bits.size, block))
    return bool(np.isfinite(a).all())


def _to_numpy(x: Any, what: str, item_id: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise CacheError(f"item {item_id!r}: {what} has dtype {a.dtype}, expected a numeric array")
    return a


class CacheWriter:
    """Writes items into a cache folder; one writer per rank, resumable after a crash.

    ``CacheWriter(path, key, feature_dim, dtype="float32", rank=0, world_size=1, meta=None)`` creates
    the folder if needed. If the folder already holds a cache whose key, feature_dim or dtype differ,
    a ``CacheError`` names the differing fields. ``meta`` is a free JSON-able dict (the resolved config,
    the code version...) kept with the first writer's record. Writes are safe against a killed process
    either way; ``fsync=True`` also makes each item durable against a power loss, at the cost of three
    fsyncs per item (measured in docs/benchmarks.md, "Notes moved from docstrings").
    """

    def __init__(
        self,
        path: str | Path,
        key: CacheKey,
        feature_dim: int,
        dtype: str = "float32",
        rank: int = 0,
        world_size: int = 1,
        meta: Mapping[str, Any] | None = None,
        fsync: bool = False,
    ):
        if dtype not in DTYPES:
            raise CacheError(f"cache dtype {dtype!r} is not one of {DTYPES}")
        if not isinstance(feature_dim, int | np.integer) or feature_dim <= 0:
            raise CacheError(f"feature_dim {feature_dim!r} is not a positive integer")
        if world_size < 1 or not 0 <= rank < world_size:
            raise CacheError(f"rank {rank} is not in [0, {world_size})")
        if not isinstance(key, CacheKey):
            raise CacheError(f"key must be a CacheKey, not {type(key).__name__}")
        self.path = Path(path)
        self.key = key
        self.feature_dim = int(feature_dim)
        self.dtype = dtype
        self.rank = rank
        self.world_size = world_size
        self.meta = _canonical(dict(meta or {}))
        self.fsync = fsync
        self._fd: int | None = None
        if self.path.exists() and not self.path.is_dir():
            raise CacheError(f"{self.path}: exists and is not a folder")
        with disk_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)

        self.journal = journal_path(self.path, rank)
        created = not self.journal.exists()
        fd = os.open(self.journal, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise CacheError(f"{self.journal}: another writer with rank {rank} has this cache open")
        self._fd = fd
        try:
            st = _read_state(self.path)
            if st.header is not None:
                _check_compatible(self.path, st.header, key, self.feature_dim, dtype,
                                  st.header_source or self.path)
            self._items: dict[str, dict] = dict(st.items)
            self._files: dict[str, str] = {
                a["file"]: item for item, e in self._items.items() for a in e["arrays"].values()
            }
            own_header, _ = _read_journal(self.journal)
            self._repair_journal(own_header is not None)
            # temporaries of writers that died (disk full, kill -9) hold space: remove them; with ranks
            # on several machines a pid cannot be checked remotely, so only long-untouched ones go
            local_ws = int(os.environ.get("LOCAL_WORLD_SIZE") or world_size)
            sweep_stale_temps(self.path, min_age_s=0.0 if local_ws >= world_size else 3600.0)
        except BaseException:
            self._release()
            if created and self.journal.exists() and self.journal.stat().st_size == 0:
                self.journal.unlink()  # a refused writer leaves no trace
            raise
        self.n_written = 0

    # -- journal

    def _repair_journal(self, has_header: bool) -> None:
        """Cut a torn last line left by a killed writer; write the header if the journal has none."""
        assert self._fd is not None
        raw = self.journal.read_bytes()
        if not has_header:
            os.ftruncate(self._fd, 0)
            self._append({
                "type": "header",
                "format_version": FORMAT_VERSION,
                "key": self.key.to_dict(),
                "feature_dim": self.feature_dim,
                "dtype": self.dtype,
                "meta": self.meta,
                "created": _now(),
                "rank": self.rank,
                "world_size": self.world_size,
            })
        elif not raw.endswith(b"\n"):
            os.ftruncate(self._fd, raw.rfind(b"\n") + 1)

    def _append(self, record: dict) -> None:
        assert self._fd is not None
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(data)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # no torn line for a later append to run into
            err = disk_error(e, self.path, need=len(data))
            if err is not None:
                raise err from None
            raise

    # -- items

    def has(self, item_id: str) -> bool:
        """True when ``item_id`` is completely written and recorded (by any rank, at open or since)."""
        return item_id in self._items

    def items(self) -> list[str]:
        """Sorted ids of every recorded item."""
        return sorted(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _write_array(self, rel: str, arr: np.ndarray) -> dict:
        final = self.path / rel
        with disk_errors(self.path):
            final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        arr = np.ascontiguousarray(arr)
        with disk_errors(final.parent, need=int(arr.nbytes), cleanup=tmp):
            with open(tmp, "wb") as f:
                hf = _HashingFile(f)
                np.lib.format.write_array(hf, arr, allow_pickle=False)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        return {
            "file": rel,
            "shape": list(arr.shape),
            "dtype": arr.dtype.str,
            "nbytes": int(arr.nbytes),
            "file_size": final.stat().st_size,
            "sha256": hf.h.hexdigest(),
        }

    def write(self, item_id: str, features: Any, labels: Any = None, overwrite: bool = False,
              **extra_arrays: Any) -> None:
        """Write one item atomically: ``features`` (n, feature_dim), optional ``labels`` (n, ...), extras.

        Features are checked (shape, finite values) and cast to the cache dtype; labels and extras keep
        their dtype. Writing an item already recorded raises unless ``overwrite=True``.
        """
        if self._fd is None:
            raise CacheError(f"{self.path}: writer is closed")
        stem = item_stem(item_id)  # validates the id
        if item_id in self._items and not overwrite:
            raise CacheError(f"item {item_id!r} is already in cache {self.path} (pass overwrite=True)")
        feats = _to_numpy(features, "features", item_id)
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise CacheError(
                f"item {item_id!r}: features have shape {tuple(feats.shape)}, "
                f"expected (n, {self.feature_dim})"
            )
        if not _all_finite(feats):
            bad = np.argwhere(~np.isfinite(feats))
            raise CacheError(
                f"item {item_id!r}: features contain {len(bad)} NaN/inf value(s) (first at row "
                f"{bad[0][0]}); refusing to cache them"
            )
        with np.errstate(over="ignore"):
            out = feats.astype(self.dtype, copy=False)
        if self.dtype == "float16" and out is not feats and not _all_finite(out):
            raise CacheError(
                f"item {item_id!r}: features exceed the float16 range (max |x| = "
                f"{float(np.abs(feats).max()):.3g}); use dtype float32"
            )
        n = int(out.shape[0])
        arrays: dict[str, np.ndarray] = {"features": out}
        if labels is not None:
            lab = _to_numpy(labels, "labels", item_id)
            if lab.ndim == 0 or lab.shape[0] != n:
                raise CacheError(
                    f"item {item_id!r}: labels have shape {tuple(lab.shape)}, expected ({n}, ...) "
                    "to match the features"
                )
            arrays["labels"] = lab
        for name, value in extra_arrays.items():
            if not _ARRAY_NAME_RE.match(name):
                raise CacheError(f"item {item_id!r}: array name {name!r} is not an identifier")
            if value is None:
                continue
            arrays[name] = _to_numpy(value, name, item_id)

        old = self._items.get(item_id)
        gen = 0
        if old is not None:
            gen = 1 + max(int(m.group(1)) if (m := re.search(r"\.g(\d+)\.npy$", a["file"])) else 0
                          for a in old["arrays"].values())
        entry_arrays: dict[str, dict] = {}
        for name, arr in arrays.items():
            rel = _array_relpath(item_id, name, gen)
            owner = self._files.get(rel)
            if owner is not None and owner != item_id:  # only if two ids share sanitised name + 64-bit hash
                raise CacheError(f"item {item_id!r} and {owner!r} map to the same file {rel} ({stem})")
            entry_arrays[name] = self._write_array(rel, arr)
        entry = {"n": n, "arrays": entry_arrays}
        self._append({"type": "item", "id": item_id, **entry})
        self._items[item_id] = entry
        for a in entry_arrays.values():
            self._files[a["file"]] = item_id
        self.n_written += 1
        if old is not None:  # the new files are recorded: the old generation can go
            for a in old["arrays"].values():
                if self._files.get(a["file"]) == item_id and a["file"] not in {
                    b["file"] for b in entry_arrays.values()
                }:
                    self._files.pop(a["file"], None)
                    (self.path / a["file"]).unlink(missing_ok=True)

    def fill(
        self,
        items: Iterable[str],
        compute: Callable[[str], Mapping[str, Any]],
        progress: bool = True,
        desc: str = "extract",
    ) -> dict[str, str]:
        """Write every item of ``items`` not yet recorded, with arrays from ``compute(item_id)``.

        ``compute`` returns ``{"features": ..., "labels": ..., <extras>}``. An ``InputError`` (or a
        ``CacheError`` about the item's data) is recorded and the loop goes on; returns
        ``{item_id: message}`` of the failures.
        """
        if self._fd is None:
            raise CacheError(f"{self.path}: writer is closed")
        todo = [i for i in items if not self.has(i)]
        return _fill_items(self, todo, compute, progress=progress, desc=desc)

    # -- closing

    def _release(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)  # also drops the flock
            finally:
                self._fd = None

    def close(self, merge: bool | None = None) -> None:
        """Close the journal. ``merge`` (default: only when world_size == 1) merges into manifest.json.

        With several ranks: every rank closes, then ``barrier()``, then rank 0 calls ``merge_manifests``.
        """
        was_open = self._fd is not None
        self._release()
        if merge is None:
            merge = self.world_size == 1
        if merge and was_open:
            merge_manifests(self.path)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # leave the journal as it is: every recorded item stays readable and resumable
            self._release()

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"CacheWriter({str(self.path)!r}, rank={self.rank}/{self.world_size}, "
                f"items={len(self._items)}, dtype={self.dtype}, feature_dim={self.feature_dim})")


# ------------------------------------------------------------------------------------------ reader


class MissingItemError(CacheError, KeyError):
    """``cache[item]`` for an item the cache does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FeatureCache:
    """Read-only view of a cache folder; arrays are memory-mapped.

    ``FeatureCache(path, expect_key=None, verify=False)``: a missing or corrupt manifest, a key that
    differs from ``expect_key``, or a missing / truncated array file raises a ``CacheError`` naming the
    file (and the item). ``verify=True`` also checks every file's sha256. Items recorded only in
    un-merged rank journals (an interrupted run) are included.
    """

    def __init__(self, path: str | Path, expect_key: CacheKey | None = None, verify: bool = False):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CacheError(f"{self.path}: cache folder does not exist")
        st = _read_state(self.path)
        if st.header is None:
            raise CacheError(f"{self.path / MANIFEST}: missing (not a feature cache, or nothing written yet)")
        h = st.header
        self.key = CacheKey.from_dict(h["key"], st.header_source or self.path)
        if expect_key is not None:
            parts = self.key.describe_diff(expect_key)
            if parts:
                raise _mismatch_error(self.path, parts)
        self.feature_dim: int = h["feature_dim"]
        self.dtype: str = h["dtype"]
        self.meta: dict = h.get("meta", {}) or {}
        self.created: str | None = h.get("created")
        self.format_version: int = h["format_version"]
        self.unmerged_journals: list[Path] = list(st.journals)
        self._items = st.items
        self._check_files(verify)

    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when ``path`` holds a feature cache: a merged manifest, or the rank journal(s) of a run
        that is under way or was interrupted (readable too). Reads no record; opening may still fail
        on a corrupt one."""
        p = Path(path)
        return (p / MANIFEST).is_file() or bool(_journals(p))

    def _check_files(self, verify: bool) -> None:
        entries = [(item, name, a) for item, e in self._items.items() for name, a in e["arrays"].items()]
        it: Iterable = entries
        if verify:
            it = progress_bar(entries, desc=f"verify {self.path.name}", unit="file")
        for item, name, a in it:
            f = self.path / a["file"]
            try:
                size = f.stat().st_size
            except FileNotFoundError:
                raise CacheError(f"{f}: missing ({name} of item {item!r})") from None
            if size != a["file_size"]:
                raise CacheError(
                    f"{f}: truncated or corrupt ({size} bytes, manifest says {a['file_size']}; "
                    f"{name} of item {item!r})"
                )
            if verify and a.get("sha256"):
                h = hashlib.sha256()
                with open(f, "rb") as fh:
                    while block := fh.read(1 << 22):
                        h.update(block)
                if h.hexdigest() != a["sha256"]:
                    raise CacheError(f"{f}: sha256 mismatch, file is corrupt ({name} of item {item!r})")

    # -- mapping interface

    def items(self) -> list[str]:
        """Sorted item ids."""
        return sorted(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.items())

    def _entry(self, item_id: str) -> dict:
        try:
            return self._items[item_id]
        except KeyError:
            raise MissingItemError(f"{self.path}: no item {item_id!r} in the cache") from None

    def n(self, item_id: str) -> int:
        """Number of feature rows of ``item_id``."""
        return int(self._entry(item_id)["n"])

    def arrays(self, item_id: str) -> list[str]:
        """Names of the arrays stored for ``item_id`` (``features`` first)."""
        return list(self._entry(item_id)["arrays"])

    def array_nbytes(self, item_id: str) -> dict[str, int]:
        """``{array name: bytes of its data}`` for ``item_id`` (from the manifest, no file is read)."""
        return {name: int(a["nbytes"]) for name, a in self._entry(item_id)["arrays"].items()}

    def item_bytes(self, item_id: str) -> int:
        """Bytes of an item's files on disk (every array, as the manifest records them)."""
        return int(sum(a["file_size"] for a in self._entry(item_id)["arrays"].values()))

    @property
    def total_rows(self) -> int:
        """Sum of feature rows over every item."""
        return sum(int(e["n"]) for e in self._items.values())

    def load(self, item_id: str, arrays: Iterable[str] | None = ("features",)) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of ``item_id`` (``arrays=None``: all of them)."""
        entry = self._entry(item_id)
        names = list(entry["arrays"]) if arrays is None else list(arrays)
        out: dict[str, np.ndarray] = {}
        for name in names:
            a = entry["arrays"].get(name)
            if a is None:
                raise CacheError(
                    f"{self.path}: item {item_id!r} has no array {name!r} (has {', '.join(entry['arrays'])})"
                )
            f = self.path / a["file"]
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise CacheError(f"{f}: corrupt array file ({name} of item {item_id!r}: {e})") from None
            if list(arr.shape) != a["shape"] or arr.dtype.str != a["dtype"]:
                raise CacheError(
                    f"{f}: corrupt array file ({name} of item {item_id!r} has shape {list(arr.shape)} "
                    f"{arr.dtype.str}, manifest says {a['shape']} {a['dtype']})"
                )
            out[name] = arr
        return out

    def __getitem__(self, item_id: str) -> dict[str, np.ndarray]:
        return self.load(item_id, arrays=None)

    def concat(self, items: Iterable[str] | None = None,
               arrays: Iterable[str] = ("features", "labels")) -> dict[str, np.ndarray]:
        """Concatenate ``arrays`` of ``items`` (default all, sorted) along rows into memory."""
        ids = self.items() if items is None else list(items)
        names = list(arrays)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for item_id in ids:
            loaded = self.load(item_id, names)
            for n in names:
                parts[n].append(loaded[n])
        empty = {"features": np.zeros((0, self.feature_dim), dtype=self.dtype)}
        return {n: (np.concatenate(v) if v else empty.get(n, np.zeros((0,)))) for n, v in parts.items()}

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, items={len(self)}, feature_dim={self.feature_dim}, "
                f"dtype={self.dtype}, encoder={self.key.encoder!r})")


# -------------------------------------------------------------------------------------------- filling


def _as_id(item: Any) -> str:
    return item


def _fill_items(writer: CacheWriter, todo: Sequence[Any], compute: Callable[[Any], Mapping[str, Any]], *,
                item_id: Callable[[Any], str] = _as_id,
                prefetch: Callable[[list[Any]], Iterable[Any]] | None = None, progress: bool = True,
                desc: str = "extract", unit: str = "item", print_failures: bool = False) -> dict[str, str]:
    """Write ``compute(input)`` of every item of ``todo`` (inputs: the items, or ``prefetch(todo)`` in
    the same order); an ``InputError`` / ``CacheError`` is recorded as ``{item_id: message}``."""
    from common.progress import progress_write

    failures: dict[str, str] = {}
    inputs = list(todo) if prefetch is None else prefetch(list(todo))
    with progress_bar(total=len(todo), desc=desc, unit=unit, disable=not progress) as bar:
        for item, value in zip(todo, inputs, strict=True):
            bar.update(1)
            iid = item_id(item)
            try:
                arrays = dict(compute(value))
                if "features" not in arrays:
                    raise CacheError(f"item {iid!r}: compute() returned no 'features'")
                writer.write(iid, **arrays)
            except (InputError, CacheError) as e:
                failures[iid] = str(e)
                if print_failures:
                    progress_write(f"skipped {iid}: {e}")
    return failures


@dataclass
class FillResult:
    """What ``fill_cache`` did: the failures of every rank, and this rank's counts and loop time."""

    failures: dict[str, str]  # {item_id: one-line message}, gathered from every rank
    written: int  # items this rank wrote
    skipped: int  # items already in the cache, counted over this rank's strided slice of all items
    seconds: float = 0.0  # this rank's time in the item loop (without opening, closing, merging)


def fill_cache(
    path: str | Path,
    key: CacheKey,
    feature_dim: int,
    dtype: str,
    items: Sequence[Any],
    compute: Callable[[Any], Mapping[str, Any]],
    *,
    meta: Mapping[str, Any] | None = None,
    item_id: Callable[[Any], str] | None = None,
    prefetch: Callable[[list[Any]], Iterable[Any]] | None = None,
    fsync: bool = False,
    progress: bool = True,
    progress_desc: str = "extract",
    progress_unit: str = "item",
    print_failures: bool = False,
) -> FillResult:
    """The extraction skeleton: fill the cache at ``path`` with every item of ``items`` on all ranks.

    This rank takes its shard of the items not yet cached (``common.dist.shard`` of them: every rank
    must pass the same ``items`` in the same order, and reads the cache before any rank writes), opens
    its ``CacheWriter`` (a cache of another key is refused there, before anything
    is written), skips items already recorded, and writes ``compute(x)`` (``{"features": (n, D),
    "labels": ..., <extra arrays>}``) of the others; then closes, waits at a barrier, rank 0 merges
    the journals into the manifest, and the failures of all ranks are gathered on every rank.

    ``item_id(item)`` is the item's id in the cache (default: the item, a string). ``prefetch(todo)``
    (optional) yields compute's input for each item still to do, in order (e.g. a ``DataLoader``
    decoding in worker processes); by default compute gets the item. An ``InputError`` or
    ``CacheError`` of an item is recorded in ``failures`` (and printed with ``print_failures``) and the
    loop goes on; any other exception leaves the journal as it is (every finished item stays recorded
    and a rerun resumes) and propagates.
    """
    from common import dist

    path = Path(path)
    item_id = item_id or _as_id
    rank, world = dist.rank(), dist.world_size()
    items = list(items)
    # the items still to do are shared out, not all items: after a lost rank or node, a rerun with any
    # world size splits the rest evenly (no rank idles at the final barrier for the others' backlog).
    # Every rank reads the cache before any rank writes, so all see the same list.
    cached = set(_read_state(path).items) if path.is_dir() else set()
    dist.barrier()
    skipped = sum(item_id(it) in cached for it in dist.shard(items))  # the ranks' counts add up
    mine = dist.shard([it for it in items if item_id(it) not in cached])
    with CacheWriter(path, key, feature_dim, dtype, rank=rank, world_size=world, meta=meta,
                     fsync=fsync) as writer:
        todo = [it for it in mine if not writer.has(item_id(it))]
        if skipped:
            log.info("%s: %d %ss already in the cache, skipping them", path, skipped, progress_unit)
        t0 = time.perf_counter()
        failures = _fill_items(writer, todo, compute, item_id=item_id, prefetch=prefetch, progress=progress,
                               desc=progress_desc, unit=progress_unit, print_failures=print_failures)
        seconds = time.perf_counter() - t0
        written = writer.n_written
        # leaving the block closes the journal (a single process also merges); on an exception or
        # Ctrl-C it only releases it: every finished item stays recorded and the next run resumes
    dist.barrier()
    if world > 1 and dist.is_main():
        merge_manifests(path)
    gathered: dict[str, str] = {}
    for part in dist.all_gather_object(failures):
        gathered.update(part)
    return FillResult(gathered, written, skipped, seconds)
