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

__all__ = ["write_table", "markdown_table", "bar_chart_png", "confusion_png", "line_plot_png", "slug",
           "checkpoint_id", "warn_random_weights"]


def warn_random_weights(encoder: str, seed: int, logger: Any = None) -> str:
    """Log (once per encoder build) that ``encoder`` has random weights; returns the message."""
    import logging

    msg = (f"encoder '{encoder}' was built without a checkpoint: its weights are random (seed {seed}); "
           f"its features and every score on them are a random-init baseline, recorded as random:{seed}")
    (logger or logging.getLogger(__name__)).warning(msg)
    return msg


def checkpoint_id(sha: str | None) -> str:
    """The checkpoint column of every result table: ``random:<seed>`` (random weights), ``none`` (no
    weights: hand-designed or raw features) or the first 12 hex digits of the weights' sha256."""
    if not sha:
        return "none"
    s = str(sha)
    return s if s.startswith("random:") or s == "none" else s[:12]


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary named by this process, then rename it over ``path`` (two writers in
    one folder never move each other's temporary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_table(
    rows: Sequence[Mapping[str, Any]],
    out_stem: str | Path,
    title: str,
    columns: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    float_format: str = ".4g",
    footnotes: Sequence[str] | None = None,
    md_rows: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Write ``<out_stem>.md`` (title, meta list, table, footnotes) and ``<out_stem>.json``.

    ``md_rows``: other rows for the markdown table only (e.g. ``43.5 ± 0.4 [42.1, 44.8]`` cells where
    the JSON keeps separate numeric fields); its columns are its own keys.

    The JSON holds ``title``, ``columns``, ``rows``, ``meta`` (encoder, checkpoint sha, config,
    split, ... as given) and ``footnotes``; NaN becomes null. Returns (md_path, json_path).
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
    md.append(markdown_table(rows, columns, float_format) if md_rows is None
              else markdown_table(md_rows, None, float_format))
    if footnotes:
        md += ["", "Notes:", ""] + [f"- {note}" for note in footnotes]
    md_path = out_stem.with_name(out_stem.name + ".md")
    json_path = out_stem.with_name(out_stem.name + ".json")
    atomic_write_text(md_path, "\n".join(md) + "\n")
    payload = {
        "title": title,
        "columns": list(columns),
        "rows": jsonable(list(rows)),
        "meta": jsonable(meta or {}),
        "footnotes": list(footnotes or []),
    }
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    return md_path, json_path


def _fit_title(fig: Any, ax: Any, title: str, fontsize: float = 12.0) -> None:
    """Set the axes title, wrapped until it fits inside the figure (never cut off at the edges), and
    lay the figure out again."""
    import textwrap

    ax.set_title(title, fontsize=fontsize)
    fig.tight_layout()
    if not title:
        return
    renderer = fig.canvas.get_renderer()
    chars = len(title)
    for _ in range(8):
        box = ax.title.get_window_extent(renderer)
        if box.x0 >= fig.bbox.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1:
            return
        chars = max(12, int(chars * min(0.9, fig.bbox.width / max(box.width, 1.0))))
        ax.set_title("\n".join(textwrap.wrap(title, chars)), fontsize=fontsize)
        fig.tight_layout()


def _ticks_collide(fig: Any, ax: Any, gap: float = 3.0) -> bool:
    """Whether neighbouring (unrotated) x tick labels overlap or nearly touch."""
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    return any(a.x1 > b.x0 - gap for a, b in zip(boxes, boxes[1:]))


def bar_chart_figure(
    values: Mapping[str, float | Sequence[float]],
    title: str = "",
    ylabel: str = "",
    labels: Sequence[str] | None = None,
    chance: float | Sequence[float] | None = None,
    absent: Sequence[bool] | None = None,
    absent_note: str = "hatched: class absent from the evaluation split",
) -> Any:
    """The matplotlib figure of :func:`bar_chart_png` (the caller closes it).

    Layout rules: the title wraps to the figure width; x labels are rotated 45 degrees and anchored
    at their tick when they would not fit side by side; the legend sits right of the axes, off the
    bars; ``chance`` draws a dashed line (one value for the whole chart, or one per bar group).
    ``absent`` marks positions with a hatched grey band and "(absent)" in the tick label.
    """
    plt = _plt()
    keys = list(values)
    if not keys:
        raise ValueError("bar_chart_png: no values to plot")
    scalar = all(np.ndim(values[k]) == 0 for k in keys)
    if scalar:
        arrs = None
        xt = list(keys)
        n = len(keys)
    else:
        arrs = [np.atleast_1d(np.asarray(values[k], dtype=float)) for k in keys]
        n = max(len(a) for a in arrs)
        if any(len(a) != n for a in arrs):
            raise ValueError("bar_chart_png: every series must have the same length")
        xt = list(labels) if labels is not None else [str(i) for i in range(n)]
        if len(xt) != n:
            raise ValueError(f"bar_chart_png: {len(xt)} labels for {n} bars")
    absent_mask = np.zeros(n, dtype=bool) if absent is None else np.asarray(absent, dtype=bool)
    if absent_mask.shape != (n,):
        raise ValueError(f"bar_chart_png: {absent_mask.size} absent flags for {n} bars")
    xt = [f"{t} (absent)" if a else str(t) for t, a in zip(xt, absent_mask)]
    n_series = 1 if scalar else len(keys)
    width_in = min(22.0, max(5.0, 0.32 * n * max(1, n_series) ** 0.5 + 2.5 + (0 if scalar else 1.8)))
    fig, ax = plt.subplots(figsize=(width_in, 4.8))
    x = np.arange(n)
    if scalar:
        ys = [float(values[k]) for k in keys]
        ax.bar(x, ys, color=[f"C{i % 10}" for i in range(n)])
    else:
        bw = 0.8 / len(keys)
        for i, (k, a) in enumerate(zip(keys, arrs)):
            ax.bar(x - 0.4 + bw * (i + 0.5), a, bw, label=k, color=f"C{i % 10}")
    for i in np.nonzero(absent_mask)[0]:
        ax.axvspan(i - 0.45, i + 0.45, facecolor="0.92", edgecolor="0.6", hatch="//", lw=0, zorder=0)
    if chance is not None:
        ch = np.broadcast_to(np.asarray(chance, dtype=float), (n,))
        if np.allclose(ch, ch[0]):
            ax.axhline(ch[0], color="0.25", ls="--", lw=1.2, label=f"chance ({ch[0]:.3g})", zorder=3)
        else:
            ax.hlines(ch, x - 0.45, x + 0.45, colors="0.25", linestyles="--", lw=1.2, label="chance",
                      zorder=3)
    ax.set_xticks(x, xt)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    if absent_mask.any():
        fig.text(0.01, 0.01, absent_note, fontsize=8, color="0.35", ha="left", va="bottom")
    _fit_title(fig, ax, title)
    # x labels that do not fit side by side: wrapped at spaces / hyphens onto two lines, and if that is
    # not enough rotated 45 degrees (anchored at their tick); then laid out again
    if _ticks_collide(fig, ax):
        import textwrap

        width = max(6, max(len(t) for t in xt) // 2 + 1)  # words are never cut, only lines broken
        ax.set_xticks(x, ["\n".join(textwrap.wrap(t, width, break_long_words=False)) or t for t in xt])
        fig.tight_layout()
        if _ticks_collide(fig, ax):
            ax.set_xticks(x, xt)
            for t in ax.get_xticklabels():
                t.set_rotation(45)
                t.set_ha("right")
                t.set_rotation_mode("anchor")
        _fit_title(fig, ax, title)
    if absent_mask.any():
        fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.0) + 0.04)
    for t, a in zip(ax.get_xticklabels(), absent_mask):
        if a:
            t.set_color("0.45")
            t.set_fontstyle("italic")
    return fig


def bar_chart_png(
    values: Mapping[str, float | Sequence[float]],
    path: str | Path,
    title: str = "",
    ylabel: str = "",
    labels: Sequence[str] | None = None,
    chance: float | Sequence[float] | None = None,
    absent: Sequence[bool] | None = None,
) -> Path:
    """Bar chart. Scalar values: one bar per key. List values: grouped bars, one group per position
    (x tick ``labels``, e.g. class names) and one colour per key (e.g. per-class IoU of several encoders).
    NaN bars are left empty. ``chance``: a dashed chance line; ``absent``: positions to mark absent
    (see :func:`bar_chart_figure`).
    """
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = bar_chart_figure(values, title, ylabel, labels, chance, absent)
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
