"""The one place checkpoints are read and written.

Reading (:func:`load_checkpoint`): always ``torch.load(weights_only=True)`` -- tensors, containers and
plain values only -- with a short allow-list of harmless classes that real releases pickle
(:data:`SAFE_CLASSES`: ``argparse.Namespace`` in VideoMAE / DINO / iBOT training files, numpy scalars,
dtypes and arrays, pure paths). A file that needs any other class is refused with a
``CheckpointError`` naming the file, the class and the opt-in (``trust_checkpoint=true``); with the
opt-in (``trust=True``, or a path registered with :func:`trusted`) it is loaded with full unpickling
and a warning -- which runs whatever code the file carries, so only for files you trust.

Writing (:func:`save_checkpoint`): a temporary in the same folder, fsync, ``os.replace`` (a reader
sees the old file or the new one, never half of one); the temporary is removed on failure and a full
disk is one line (:class:`common.paths.DiskError`). ``keep_previous=True`` keeps the file it replaces
as ``<stem>.prev<suffix>`` so :func:`load_latest` can fall back to it when the newest one turns out
truncated or corrupt.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import logging
import os
import pathlib
import pickle
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import CheckpointError
from common.paths import disk_errors, remove_quietly, temp_name

log = logging.getLogger(__name__)

__all__ = [
    "SAFE_CLASSES",
    "TRUST_HINT",
    "load_checkpoint",
    "save_checkpoint",
    "load_latest",
    "previous_path",
    "trusted",
    "unsafe_globals",
]

TRUST_HINT = "trust_checkpoint=true"


def _safe_classes() -> list[Any]:
    """(object, pickled name) pairs torch may reconstruct without running foreign code."""
    core = np._core if hasattr(np, "_core") else np.core  # type: ignore[attr-defined]
    ma = core.multiarray
    out: list[Any] = [argparse.Namespace, np.dtype, np.ndarray,
                      pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath]
    # numpy 1 wrote numpy.core.multiarray.*, numpy 2 writes numpy._core.multiarray.*: allow both names
    for modname in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((ma.scalar, f"{modname}.scalar"))
        out.append((ma._reconstruct, f"{modname}._reconstruct"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles some dtypes by their class
        for name in ("BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
                     "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType", "Float32DType",
                     "Float64DType", "LongDType", "ULongDType", "LongLongDType", "ULongLongDType",
                     "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType", "UIntDType"):
            cls = getattr(dtypes, name, None)
            if cls is not None:
                out.append((cls, f"numpy.dtypes.{name}"))
    return out


SAFE_CLASSES: list[Any] = _safe_classes()

# paths (resolved) that a caller was told to trust, for loaders deep inside encoder factories
_TRUSTED: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("trusted_checkpoints",
                                                                          default=frozenset())


@contextlib.contextmanager
def trusted(paths: Iterable[str | os.PathLike | None], enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`load_checkpoint` of any of ``paths`` behaves as ``trust=True``."""
    if not enabled:
        yield
        return
    add = {str(Path(p).resolve()) for p in paths if p}
    token = _TRUSTED.set(_TRUSTED.get() | add)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _is_trusted(path: Path) -> bool:
    return str(path.resolve()) in _TRUSTED.get()


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """Classes / functions the pickle in ``path`` needs that are neither torch's nor on our list."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - an unreadable file has no list
        return []
    allowed = {name if isinstance(name, str) else f"{name.__module__}.{name.__qualname__}"
               for name in (c[1] if isinstance(c, tuple) else c for c in SAFE_CLASSES)}
    return [g for g in found if g not in allowed]


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu",
                    hint: str = TRUST_HINT) -> Any:
    """``torch.load`` of a checkpoint the safe way (see the module text); errors are one line.

    ``hint`` is how the caller's user opts in (a config key or a command-line flag), named in the
    refusal message.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file (not found)")
    if not p.is_file():
        raise CheckpointError(f"{p}: is not a checkpoint file")
    if trust or _is_trusted(p):
        log.warning("%s: loading with full unpickling because you trust this file (%s): it can run any "
                    "code it holds", p, hint)
        try:
            return torch.load(p, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to read is the file's problem
            raise CheckpointError(f"{p}: cannot read checkpoint ({_first_line(e)})") from None
    try:
        with torch.serialization.safe_globals(SAFE_CLASSES):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        bad = unsafe_globals(p)
        if not bad:
            raise CheckpointError(f"{p}: cannot read checkpoint ({_first_line(e)})") from None
        names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{p}: cannot read checkpoint without unpickling {names}, which is not on the list of "
            f"harmless classes (loading it could run code); if you trust this file, pass {hint}"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, ...
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def previous_path(path: str | os.PathLike) -> Path:
    """``last.pth`` -> ``last.prev.pth``: where :func:`save_checkpoint` keeps the replaced file."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(obj: Any, path: str | os.PathLike, *, keep_previous: bool = False,
                    fsync: bool = True) -> Path:
    """Write ``obj`` with ``torch.save`` atomically (temp in the same folder, fsync, ``os.replace``).

    ``keep_previous``: the file being replaced stays as :func:`previous_path` (a hard link, or a
    rename where links are not supported), so there is always a complete older copy to fall back to.
    """
    path = Path(path)
    folder = path.parent
    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with disk_errors(folder, cleanup=tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        size = tmp.stat().st_size
    with disk_errors(folder, need=size, cleanup=tmp):
        if keep_previous and path.is_file():
            prev = previous_path(path)
            ptmp = temp_name(prev)
            remove_quietly(ptmp)
            try:
                os.link(path, ptmp)
                os.replace(ptmp, prev)
            except OSError:
                remove_quietly(ptmp)
                os.replace(path, prev)  # no hard links here: the old file moves (path is absent briefly)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(folder)
    return path


def load_latest(candidates: Sequence[str | os.PathLike], *, check: Any = None, **kw: Any) -> tuple[Any, Path]:
    """Load the first of ``candidates`` that reads (and passes ``check(obj, path)``, which raises
    ``CheckpointError`` to reject it); a bad one is named in a warning and the next one tried.

    Raises the first file's error when none loads; ``FileNotFoundError`` when none exists.
    """
    errors: list[CheckpointError] = []
    seen: set[tuple[int, int]] = set()
    existing = [Path(c) for c in candidates if Path(c).is_file()]
    if not existing:
        raise FileNotFoundError(", ".join(str(c) for c in candidates))
    for p in existing:
        try:
            st = p.stat()
            ident = (st.st_dev, st.st_ino)
        except OSError:
            continue
        if ident in seen:  # a hard link of a file that already failed
            continue
        seen.add(ident)
        try:
            obj = load_checkpoint(p, **kw)
            if check is not None:
                check(obj, p)
        except CheckpointError as e:
            errors.append(e)
            log.warning("%s; trying the previous checkpoint", e)
            continue
        if errors:
            log.warning("resuming from %s instead (the newer checkpoint is damaged: %s)", p, errors[0])
        return obj, p
    raise errors[0]
