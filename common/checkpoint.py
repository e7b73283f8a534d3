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

Loading weights into a model (:func:`load_state_dict_strict`): exactly the model's keys with the
model's shapes, or one ``CheckpointError`` listing the missing, unexpected and wrongly shaped keys
(never a silent partial load). Key layouts: :func:`strip_prefixes` (``module.``, ``backbone.``, ...)
and :func:`select_prefix` (keep only the ``student.backbone.`` / ``encoder.`` part of a training
file); the model packages only say which prefixes their files use. Fingerprints:
:func:`sha256_file`, recorded with every cache and result.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import hashlib
import logging
import os
import pathlib
import pickle
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    "load_state_dict_strict",
    "previous_path",
    "select_prefix",
    "sha256_file",
    "state_dict_diff",
    "strip_prefixes",
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


def _unpickling_reason(e: BaseException) -> str:
    """What torch's weights-only unpickler found wrong, without its advice to load with
    ``weights_only=False`` (a damaged or foreign file is not a question of trust)."""
    s = str(e)
    tag = "WeightsUnpickler error:"
    if tag in s:
        rest = [ln.strip() for ln in s.split(tag, 1)[1].splitlines() if ln.strip()]
        if rest:
            return f"not a torch checkpoint or damaged: {rest[0][:160]}"
    return f"not a torch checkpoint or damaged: {_first_line(e)}"


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu",
                    hint: str | None = TRUST_HINT, kind: str = "checkpoint") -> Any:
    """``torch.load`` of a checkpoint the safe way (see the module text); errors are one line.

    ``hint`` is how the caller's user opts in (a config key or a command-line flag), named in the
    refusal message; ``None`` where there is no opt-in (files this project writes itself, such as
    probe files). ``kind`` names the file in messages (``checkpoint``, ``probe file``, ``weights``).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such {kind} file (not found)")
    if not p.is_file():
        raise CheckpointError(f"{p}: is not a {kind} file")
    if trust or _is_trusted(p):
        log.warning("%s: loading with full unpickling because you trust this file (%s): it can run any "
                    "code it holds", p, hint)
        try:
            return torch.load(p, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to read is the file's problem
            raise CheckpointError(f"{p}: cannot read {kind} ({_first_line(e)})") from None
    try:
        with torch.serialization.safe_globals(SAFE_CLASSES):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        bad = unsafe_globals(p)
        if not bad:
            raise CheckpointError(f"{p}: cannot read {kind} ({_unpickling_reason(e)})") from None
        names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        opt_in = f"; if you trust this file, pass {hint}" if hint else ""
        raise CheckpointError(
            f"{p}: cannot read {kind} without unpickling {names}, which is not on the list of "
            f"harmless classes (loading it could run code){opt_in}"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, ...
        raise CheckpointError(f"{p}: cannot read {kind} ({type(e).__name__}: {_first_line(e)})") from None


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


# ------------------------------------------------------------------------------------ key layouts
def strip_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Every key without its leading ``prefixes`` (tried in order, repeatedly: ``module.backbone.x``
    with ``("module.", "backbone.")`` -> ``x``); keys without one are kept as they are."""
    prefixes = [p for p in prefixes if p]
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
                    break
        out[k] = v
    return out


def select_prefix(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Only the part under the first of ``prefixes`` that some key has, prefix removed (the
    ``student.backbone.`` of a training file, dropping teacher and heads); unchanged when none has."""
    for prefix in prefixes:
        sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if sub:
            return sub
    return dict(state_dict)


# ------------------------------------------------------------------------------------ strict load
def state_dict_diff(model: torch.nn.Module, state_dict: Mapping[str, Any]) -> tuple[
        list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing, unexpected, wrongly shaped as (key, file shape, model shape)) of ``state_dict``
    against ``model.state_dict()``, in the model's (then the file's) key order."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = {k: tuple(getattr(state_dict[k], "shape", ())) for k in own if k in state_dict}
    wrong = [(k, shape[k], tuple(own[k].shape)) for k in own
             if k in shape and shape[k] != tuple(own[k].shape)]
    return missing, unexpected, wrong


def _listed(items: list[str], n: int, more: str) -> str:
    return ", ".join(items[:n]) + (more.format(len(items) - n) if len(items) > n else "")


# Two wordings of the same diff. "counted" (point encoders): ``1 missing: a; 1 wrongly shaped: k (file
# [7, 64] vs model [128, 64])``; "bracketed" (video encoders): ``missing 1 [a]; wrong shape 1 [k:
# checkpoint (7, 64) vs model (128, 64)]``. Both are matched by users' scripts and the tests.
DIFF_STYLES = ("counted", "bracketed")


def _diff_text(missing: list[str], unexpected: list[str],
               wrong: list[tuple[str, tuple[int, ...], tuple[int, ...]]], style: str) -> str:
    parts = []
    if style == "counted":
        shaped = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in wrong]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", shaped)):
            if keys:
                parts.append(f"{len(keys)} {label}: {_listed(keys, 8, ', ... {} more')}")
    elif style == "bracketed":
        shaped = sorted(f"{k}: checkpoint {a} vs model {b}" for k, a, b in wrong)
        for label, keys, n in (("missing", sorted(missing), 6), ("unexpected", sorted(unexpected), 6),
                               ("wrong shape", shaped, 4)):
            if keys:
                parts.append(f"{label} {len(keys)} [{_listed(keys, n, ', ... (+{} more)')}]")
    else:
        raise ValueError(f"unknown diff style {style!r}; known: {DIFF_STYLES}")
    return "; ".join(parts)


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, Any], path: str | os.PathLike,
                           *, what: str | None = None, sep: str = ": ", style: str = "bracketed",
                           allow_missing: Iterable[str] = ()) -> None:
    """``model.load_state_dict(state_dict)`` when the keys and shapes are exactly the model's, else one
    ``CheckpointError``: ``<path>: <what><sep><the diff>``.

    ``what`` defaults to ``checkpoint does not fit <model class>``; ``style`` is one of
    :data:`DIFF_STYLES`. ``allow_missing``: model keys the file may lack (they keep the model's values).
    """
    missing, unexpected, wrong = state_dict_diff(model, state_dict)
    allowed = set(allow_missing)
    missing = [k for k in missing if k not in allowed]
    if missing or unexpected or wrong:
        what = what if what is not None else f"checkpoint does not fit {type(model).__name__}"
        raise CheckpointError(f"{path}: {what}{sep}{_diff_text(missing, unexpected, wrong, style)}")
    model.load_state_dict(dict(state_dict), strict=not allowed)


# ------------------------------------------------------------------------------------ fingerprints
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (streamed); ``CheckpointError`` naming the file when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    return h.hexdigest()
