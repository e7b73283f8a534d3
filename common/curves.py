"""Training curves: scalars of a run as ``<name>.csv`` and a ``<name>.png`` of the curves (one panel per
scalar group), plus TensorBoard event files when the optional ``tensorboard`` package is importable."""
from __future__ import annotations

import csv
import io
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# scalars that are bookkeeping, not curves: kept in the CSV, left out of the picture
_NOT_PLOTTED = ("epoch", "step", "elapsed", "effective_batch", "collapse_warning")


def _scalar(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    return float(v)


def scalar_records(records: Iterable[Mapping], x: str = "step") -> list[dict]:
    """Numeric fields of ``records`` that carry ``x``, one row per ``x`` (a later record with the same ``x``
    replaces the earlier one: a run resumed before its last logged step repeats those steps), by ``x``."""
    rows: dict[float, dict] = {}
    for r in records:
        if _scalar(r.get(x)) is None:
            continue
        row = {}
        for k, v in r.items():
            if isinstance(v, bool):
                row[k] = int(v)
            elif v is None or _scalar(v) is not None:
                row[k] = v
        rows[float(r[x])] = row
    return [rows[k] for k in sorted(rows)]


# a key ending in one of these words joins that word's panel (``mask_loss``, ``loss`` -> ``loss``)
_SUFFIX_GROUPS = ("loss", "pairs", "kl", "entropy")


def scalar_groups(keys: Iterable[str], x: str = "step") -> dict[str, list[str]]:
    """Keys grouped into panels: by a last word of ``_SUFFIX_GROUPS`` (``mask_loss``, ``loss`` -> ``loss``),
    else by their first ``_``-separated word (``val_mIoU``, ``val_mAcc`` -> ``val``); ``x`` and
    bookkeeping fields are left out."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        if k == x or k in _NOT_PLOTTED:
            continue
        last = k.rsplit("_", 1)[-1]
        groups.setdefault(last if last in _SUFFIX_GROUPS else k.split("_", 1)[0], []).append(k)
    return groups


def _write_csv(rows: list[dict], path: Path, x: str) -> list[str]:
    from common.report import atomic_write_text

    cols = [x] + sorted({k for r in rows for k in r} - {x})
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols, restval="")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in cols if k in r})
    atomic_write_text(path, buf.getvalue())
    return cols


def read_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a curves CSV as floats (empty cells left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def _plot(rows: list[dict], groups: dict[str, list[str]], path: Path, x: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [g for g, ks in groups.items() if any(_finite(r.get(k)) for r in rows for k in ks)]
    n = max(len(names), 1)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, g in zip(axes.flat, names):
        for k in groups[g]:
            pts = [(float(r[x]), float(r[k])) for r in rows if _finite(r.get(k))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, lw=1.2, label=k)
        ax.set_title(g, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if not names:
        axes.flat[0].text(0.5, 0.5, "no scalars recorded", ha="center", va="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.0 * nrows)))
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _finite(v: Any) -> bool:
    f = _scalar(v)
    return f is not None and math.isfinite(f)


def _tensorboard(rows: list[dict], groups: dict[str, list[str]], out: Path, name: str, x: str) -> Path | None:
    """Event files under ``out/tensorboard/<name>`` when ``tensorboard`` is importable; None otherwise."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # the optional package is absent (torch's writer needs it)
        return None
    logdir = out / "tensorboard" / name
    writer = SummaryWriter(str(logdir))
    try:
        for r in rows:
            for g, ks in groups.items():
                for k in ks:
                    if _finite(r.get(k)):
                        writer.add_scalar(f"{g}/{k}", float(r[k]), int(r[x]))
    finally:
        writer.close()
    return logdir


def write_curves(records: list[dict], out_dir: str | os.PathLike, name: str, x: str = "step",
                 groups: Mapping[str, list[str]] | None = None, title: str | None = None) -> dict[str, str]:
    """Write ``out_dir/<name>.csv`` (every numeric field, one row per ``x``) and ``out_dir/<name>.png``
    (one panel per scalar group: ``groups`` or :func:`scalar_groups`); TensorBoard event files too when
    the package is importable. The files are rewritten whole from ``records``, so a caller passing the
    whole log of a resumed run gets each step once. Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = scalar_records(records, x)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    grp = {g: [k for k in ks if k in keys] for g, ks in (groups or scalar_groups(keys, x)).items()}
    grp = {g: ks for g, ks in grp.items() if ks}
    paths = {"csv": out / f"{name}.csv", "png": out / f"{name}.png"}
    _write_csv(rows, paths["csv"], x)
    _plot(rows, grp, paths["png"], x, title or name)
    tb = _tensorboard(rows, grp, out, name, x)
    if tb is not None:
        paths["tensorboard"] = tb
    return {k: str(v) for k, v in paths.items()}


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL log; a torn last line (a run killed mid-write) is skipped."""
    import json

    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping a line that is not JSON", p)
    return out


def write_probe_curves(history: list[dict], out_dir: str | os.PathLike, name: str,
                       title: str | None = None) -> dict[str, str]:
    """A linear probe's per-epoch curve (``LinearProbeResult.meta["history"]``: the chosen head's
    training and validation loss, and its validation metric) as ``<name>.csv`` / ``<name>.png``; nothing
    without one."""
    if not history:
        return {}
    keys = {k for r in history for k in r}
    groups = {"loss": [k for k in ("train_loss", "val_loss") if k in keys],
              "validation metric": sorted(k for k in keys if k.startswith("val_") and k != "val_loss")}
    return write_curves(history, out_dir, name, x="epoch", groups=groups, title=title or name)
