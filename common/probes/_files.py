"""Probe files: plain dicts written and read through :mod:`common.checkpoint` (atomic ``torch.save``,
``weights_only`` read with no opt-in to unpickle: a probe file is always this project's own)."""
from __future__ import annotations

from pathlib import Path

from common.checkpoint import load_checkpoint, save_checkpoint
from common.errors import CheckpointError


def write_probe_file(payload: dict, path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically (``common.checkpoint.save_checkpoint``)."""
    return save_checkpoint(payload, path)


def read_probe_file(path: str | Path, fmt: str, kind: str) -> dict:
    """The dict saved in ``path``; ``CheckpointError`` naming the file when it is missing, unreadable or
    not a probesuite ``kind`` probe file (its ``format`` is not ``fmt``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such probe file")
    d = load_checkpoint(path, hint=None, kind="probe file")
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise CheckpointError(f"{path}: not a probesuite {kind} probe file")
    return d
