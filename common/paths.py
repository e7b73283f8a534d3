"""Names that become paths, and writes that can fail for lack of space: validated in one place.

* :func:`check_item_name` -- an item name (scene, video id, cache item) used as ONE path component:
  no separators, no ``..``, not absolute, no NUL, not empty. :func:`check_scene_name` additionally
  requires ScanNet's ``sceneXXXX_YY`` pattern.
* :func:`inside_root` -- a relative path from a list file (``ApplyEyeMakeup/v_x.avi``) whose resolved
  location must stay inside the data root.
* :func:`disk_errors` -- ENOSPC / EDQUOT / EROFS / EACCES while writing become one :class:`DiskError`
  line naming the folder, the problem and (where known) the bytes needed and free.
* :func:`sweep_stale_temps` -- temporary files ``.<name>.tmp<pid>`` left by processes that died.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from common.errors import InputError, ProbeSuiteError

log = logging.getLogger(__name__)

__all__ = [
    "DiskError",
    "check_item_name",
    "check_scene_name",
    "inside_root",
    "is_inside",
    "disk_error",
    "disk_errors",
    "free_bytes",
    "human_bytes",
    "pid_alive",
    "sweep_stale_temps",
    "temp_name",
]

SCENE_RE = re.compile(r"^scene\d{4}_\d{2}$")
_TEMP_RE = re.compile(r"\.tmp-?(\d+)(?:-[0-9a-f]+)?$")


# ------------------------------------------------------------------------------------------ names
def check_item_name(name: object, what: str = "item name", source: str | os.PathLike | None = None) -> str:
    """``name`` when it is safe as a single path component; else an ``InputError`` (naming ``source``).

    Refused: not a string, empty, ``.`` / ``..``, a path separator (``/`` or ``\\``), a NUL byte,
    an absolute path or drive (``C:``), or leading/trailing white space.
    """
    problem = None
    if not isinstance(name, str) or name == "":
        problem = "is empty" if name == "" else f"is a {type(name).__name__}, not a string"
    elif "\x00" in name:
        problem = "contains a NUL byte"
    elif name in (".", ".."):
        problem = "is a relative folder reference"
    elif "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        problem = "contains a path separator"
    elif os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        problem = "is an absolute path"
    elif name != name.strip():
        problem = "has leading or trailing white space"
    if problem is not None:
        raise InputError(source, f"{what} {name!r} {problem}; refusing to use it as a file name")
    return name


def check_scene_name(name: object, source: str | os.PathLike | None = None) -> str:
    """A ScanNet scene name: the generic rule plus the ``sceneXXXX_YY`` pattern every real scene has."""
    check_item_name(name, "scene name", source)
    if not SCENE_RE.match(str(name)):
        raise InputError(source, f"scene name {name!r} is not of the form sceneXXXX_YY")
    return str(name)


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` is ``root`` or below it, compared lexically (``..`` collapsed, symlinks NOT
    followed: a data root whose class folders are symlinks elsewhere is still one root)."""
    p, r = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return p == r or r in p.parents


def inside_root(rel: str, root: str | os.PathLike, what: str = "path",
                source: str | os.PathLike | None = None) -> Path:
    """``root / rel`` (normalised) when it stays inside ``root``; else an ``InputError`` naming ``source``."""
    if "\x00" in rel:
        raise InputError(source, f"{what} {rel!r} contains a NUL byte")
    path = Path(os.path.abspath(Path(root) / rel))
    if not is_inside(path, root) or path == Path(os.path.abspath(root)):
        raise InputError(source, f"{what} {rel!r} leads outside {root}; refusing it")
    return path


# ------------------------------------------------------------------------------------- disk space
_DISK_PROBLEMS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for this file system",
}


class DiskError(ProbeSuiteError):
    """A write failed for lack of space, quota or permission (one line, naming the folder)."""

    def __init__(self, folder: str | os.PathLike, problem: str, errno_: int | None = None):
        self.folder = str(folder)
        self.problem = problem
        self.errno = errno_
        super().__init__(f"{folder}: cannot write: {problem}")


def human_bytes(n: float) -> str:
    """``1.5 GB`` style (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes for an unprivileged user on the file system of ``folder`` (its nearest existing
    parent); None when unknown."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def disk_error(e: BaseException, folder: str | os.PathLike, need: int | None = None) -> DiskError | None:
    """A :class:`DiskError` for an ``OSError`` of the space / quota / permission kind (also when it is
    the context of another exception, e.g. torch.save's RuntimeError), else None."""
    seen = 0
    while e is not None and not (isinstance(e, OSError) and e.errno in _DISK_PROBLEMS) and seen < 8:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        seen += 1
    if not isinstance(e, OSError) or e.errno not in _DISK_PROBLEMS:
        return None
    problem = _DISK_PROBLEMS[e.errno]
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(folder)
        facts = []
        if need:
            facts.append(f"this write needs about {human_bytes(need)}")
        if free is not None:
            facts.append(f"{human_bytes(free)} free")
        if facts:
            problem += f" ({', '.join(facts)})"
        problem += "; free some space (or choose another output folder) and run the same command again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem += "; choose an output folder you can write to"
    return DiskError(folder, problem, e.errno)


@contextlib.contextmanager
def disk_errors(folder: str | os.PathLike, need: int | None = None,
                cleanup: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a space / quota / permission ``OSError`` in the block into a :class:`DiskError`; on any
    failure remove the file (or folder) ``cleanup`` (a temporary) first."""
    try:
        yield
    except BaseException as e:
        if cleanup is not None:
            remove_quietly(cleanup)
        err = disk_error(e, folder, need)
        if err is not None:
            raise err from None
        raise


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove a file or folder, ignoring every error (used to clean temporaries after a failure)."""
    p = Path(path)
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


# ----------------------------------------------------------------------------------- temporaries
def temp_name(path: str | os.PathLike) -> Path:
    """``<folder>/.<name>.tmp<pid>``: this process's temporary for ``path`` (same folder: atomic rename)."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (or we cannot tell: then assume it does)."""
    if pid <= 0:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours, or unknown: never sweep it
    return True


def temp_pid(name: str) -> int | None:
    """The pid in a temporary's name ``.<x>.tmp<pid>`` / ``.<x>.tmp-<pid>-<hex>``, else None."""
    if not name.startswith("."):
        return None
    m = _TEMP_RE.search(name)
    return int(m.group(1)) if m else None


def sweep_stale_temps(folder: str | os.PathLike, recursive: bool = True,
                      min_age_s: float = 0.0) -> list[Path]:
    """Remove temporaries ``.<name>.tmp<pid>`` under ``folder`` whose process is no longer alive on
    this machine (and, with ``min_age_s``, not modified for that long: for folders other machines may
    write into). A live writer's file is never touched. Returns the removed paths."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    it = root.rglob(".*") if recursive else root.glob(".*")
    now = time.time()
    for p in it:
        pid = temp_pid(p.name)
        if pid is None or pid_alive(pid):
            continue
        try:
            if min_age_s and now - p.lstat().st_mtime < min_age_s:
                continue
        except OSError:
            continue
        remove_quietly(p)
        removed.append(p)
    if removed:
        log.warning("%s: removed %d temporary file(s) left by processes that died (e.g. %s)",
                    root, len(removed), removed[0].name)
    return removed
