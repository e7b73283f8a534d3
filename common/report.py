"""Result tables (markdown + JSON) and figures (PNG, matplotlib Agg backend)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_table", "markdown_table", "bar_chart_png", "confusion_png", "line_plot_png", "slug"]


def slug(text: str, fallback: str = "item") -> str:
    """A file-name-safe form of a display label: runs of anything but letters, digits, ``.``, ``-``
    and ``_`` become one ``_`` (``"sparseunet pre-trained (demo)"`` -> ``"sparseunet_pre-trained_demo"``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_.")
    return s or fallback


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def jsonable(v: Any) -> Any:
    """Numpy / torch / Path values -> plain JSON values; NaN and inf -> None."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if hasattr(v, "detach") and hasattr(v, "tolist"):  # torch tensor
        return jsonable(v.detach().cpu().tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, os.PathLike):
        return str(v)
    return str(v)


def _fmt(v: Any, float_format: str) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, float_format)
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x, float_format) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, float_format: str = ".4g"
) -> str:
    """A GitHub markdown table of ``rows`` (columns: given, else the union of keys in first-seen order)."""
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), float_format) for c in columns) + " |")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_table(
    rows: Sequence[Mapping[str, Any]],
    out_stem: str | Path,
    title: str,
    columns: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    float_format: str = ".4g",
) -> tuple[Path, Path]:
    """Write ``<out_stem>.md`` (title, meta list, table) and ``<out_stem>.json``.

    The JSON holds ``title``, ``columns``, ``rows`` and ``meta`` (encoder, checkpoint sha, config,
    split, ... as given); NaN becomes null. Returns (md_path, json_path).
    """
    out_stem = Path(out_stem)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    md = [f"# {title}", ""]
    for k, v in (meta or {}).items():
        jv = jsonable(v)
        if isinstance(jv, (dict, list)):
            text = json.dumps(jv)
            if len(text) > 100:
                continue  # long values (a whole config) stay in the JSON only
        else:
            text = _fmt(v, float_format)
        md.append(f"- {k}: {text}")
    if meta:
        md.append("")
    md.append(markdown_table(rows, columns, float_format))
    md_path = out_stem.with_name(out_stem.name + ".md")
    json_path = out_stem.with_name(out_stem.name + ".json")
    _atomic_write(md_path, "\n".join(md) + "\n")
    payload = {
        "title": title,
        "columns": list(columns),
        "rows": jsonable(list(rows)),
        "meta": jsonable(meta or {}),
    }
    _atomic_write(json_path, json.dumps(payload, indent=2) + "\n")
    return md_path, json_path


def bar_chart_png(
    values: Mapping[str, float | Sequence[float]],
    path: str | Path,
    title: str = "",
    ylabel: str = "",
    labels: Sequence[str] | None = None,
) -> Path:
    """Bar chart. Scalar values: one bar per key. List values: grouped bars, one group per position
    (x tick ``labels``, e.g. class names) and one colour per key (e.g. per-class IoU of several encoders).
    NaN bars are left empty.
    """
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(values)
    if not keys:
        raise ValueError("bar_chart_png: no values to plot")
    scalar = all(np.ndim(values[k]) == 0 for k in keys)
    if scalar:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(keys) + 2), 4))
        ys = [float(values[k]) for k in keys]
        ax.bar(np.arange(len(keys)), ys, color=[f"C{i % 10}" for i in range(len(keys))])
        ax.set_xticks(np.arange(len(keys)), keys, rotation=45 if len(keys) > 6 else 0, ha="right")
    else:
        arrs = [np.atleast_1d(np.asarray(values[k], dtype=float)) for k in keys]
        n = max(len(a) for a in arrs)
        if any(len(a) != n for a in arrs):
            raise ValueError("bar_chart_png: every series must have the same length")
        xt = list(labels) if labels is not None else [str(i) for i in range(n)]
        if len(xt) != n:
            raise ValueError(f"bar_chart_png: {len(xt)} labels for {n} bars")
        width = 0.8 / len(keys)
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * n * max(1, len(keys)) ** 0.5 + 2), 4.5))
        x = np.arange(n)
        for i, (k, a) in enumerate(zip(keys, arrs)):
            ax.bar(x - 0.4 + width * (i + 0.5), a, width, label=k, color=f"C{i % 10}")
        ax.set_xticks(x, xt, rotation=60 if n > 6 else 0, ha="right" if n > 6 else "center")
        ax.legend(fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_png(
    conf: Any, class_names: Sequence[str] | None, path: str | Path, normalize: bool = True, title: str = ""
) -> Path:
    """Confusion matrix image (rows = target). ``normalize`` divides each row by its sum (recall)."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.asarray(conf.detach().cpu() if hasattr(conf, "detach") else conf, dtype=float)
    k = m.shape[0]
    if normalize:
        s = m.sum(1, keepdims=True)
        m = np.divide(m, s, out=np.zeros_like(m), where=s > 0)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    size = min(16.0, max(4.0, 0.45 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(np.arange(k), names, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("target")
    if k <= 25:
        thr = (m.max() if m.size else 0) / 2
        for i in range(k):
            for j in range(k):
                txt = f"{m[i, j]:.2f}" if normalize else str(int(m[i, j]))
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if m[i, j] > thr else "white",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or ("confusion (row-normalised)" if normalize else "confusion"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def line_plot_png(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
) -> Path:
    """One line per entry of ``series`` against ``xs`` (e.g. accuracy vs label fraction)."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, ys) in enumerate(series.items()):
        if len(ys) != len(xs):
            raise ValueError(f"line_plot_png: series {name!r} has {len(ys)} points for {len(xs)} x values")
        ax.plot(list(xs), [float(y) for y in ys], marker="o", label=name, color=f"C{i % 10}")
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
