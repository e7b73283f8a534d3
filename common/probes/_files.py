"""Probe files: plain dicts written atomically with ``torch.save`` and read back with ``weights_only``."""
from __future__ import annotations

from pathlib import Path

import torch

from common.errors import CheckpointError


def write_probe_file(payload: dict, path: str | Path) -> Path:
    """Write ``payload`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_probe_file(path: str | Path, fmt: str, kind: str) -> dict:
    """The dict saved in ``path``; ``CheckpointError`` naming the file when it is missing, unreadable or
    not a probesuite ``kind`` probe file (its ``format`` is not ``fmt``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such probe file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: cannot read probe file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise CheckpointError(f"{path}: not a probesuite {kind} probe file")
    return d
