"""One comparison across result folders of the suite: rows side by side, config differences, baselines.

Reads, per folder (the layouts their writers produce):

* ``results.json`` of ``pointprobe probe`` (one row per encoder; metric mIoU; ``meta.config`` and
  ``meta.eval_class_histogram`` from issue 19 on);
* ``probe.json`` of ``videoprobe probe`` (one row per probe; metric top-1; ``meta.test_class_histogram``);
* ``table.json`` of ``videoprobe bench`` (one row per encoder, benchmark and probe; metric top-1; the
  per-cell records in ``meta.cells``).

Each folder's ``config.yaml`` (``suite.yaml`` for a bench suite) gives the config keys; only the keys whose
values differ between the compared runs are shown (``out`` is left out: it is the run folder itself).
Baselines in every row: chance (100 / number of classes) and the majority class (the metric of always
predicting the most frequent class of the evaluation split; "n/a" where the result predates the recorded
class histogram). Values are copied from the source JSON, not recomputed.
"""
from __future__ import annotations

import csv
import html
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common.errors import InputError
from common.metrics import segmentation_metrics
from common.report import checkpoint_id, jsonable, markdown_table
from common.stats import format_spread

log = logging.getLogger(__name__)

NA = "n/a"
BASE_COLUMNS = ["run", "kind", "encoder", "checkpoint", "protocol", "split", "fraction", "seeds", "metric",
                "value", "std", "ci_low", "ci_high", "chance", "majority"]


def majority_baseline(histogram: Sequence[int] | None, metric: str) -> float | None:
    """The metric (percent) of always predicting the most frequent class of ``histogram``."""
    if not histogram or sum(histogram) == 0:
        return None
    hist = np.asarray(histogram, dtype=np.int64)
    if metric == "top5":
        return 100.0 * float(np.sort(hist)[::-1][:5].sum() / hist.sum())
    conf = np.zeros((hist.size, hist.size), dtype=np.int64)
    conf[:, int(np.argmax(hist))] = hist
    seg = segmentation_metrics(conf)
    key = {"top1": "allAcc", "mean_class": "mAcc"}.get(metric, metric)
    return 100.0 * float(seg[key])


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read result JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise InputError(path, "not a result table of the suite (no 'rows' list)")
    return data


def _config(folder: Path) -> dict:
    """The run's saved config: ``config.yaml`` (probes) or ``suite.yaml`` (bench suites); {} if none."""
    path = next((p for p in (folder / "config.yaml", folder / "suite.yaml") if p.is_file()), None)
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(path, f"cannot read the run's config ({e})") from None
    return data if isinstance(data, dict) else {}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _spread(row: dict, metric: str) -> tuple[Any, Any, Any]:
    return row.get(f"{metric} std"), row.get(f"{metric} ci_low"), row.get(f"{metric} ci_high")


def _seeds(row: dict, meta: dict, config: dict) -> list:
    return list(row.get("seeds") or meta.get("seeds") or config.get("seeds") or [config.get("seed", 0)])


def _point_rows(folder: Path, data: dict, config: dict) -> list[dict]:
    meta = data.get("meta") or {}
    k = meta.get("num_classes") or len(config.get("class_names") or []) or None
    if k is None:  # older results: the per-class table lists every class
        per_class = folder / "per_class_iou.json"
        if per_class.is_file():
            k = len(json.loads(per_class.read_text()).get("rows") or []) or None
    hist = meta.get("eval_class_histogram")
    rows = []
    for r in data["rows"]:
        std, lo, hi = _spread(r, "mIoU")
        rows.append({"kind": "point probe", "encoder": r.get("encoder"), "checkpoint": r.get("checkpoint"),
                     "protocol": "cached features, linear probe",
                     "split": f"{meta.get('train split', '?')} -> {meta.get('eval split', '?')}",
                     "fraction": meta.get("setting", NA), "seeds": _seeds(r, meta, config), "metric": "mIoU",
                     "value": r.get("mIoU"), "std": std, "ci_low": lo, "ci_high": hi,
                     "chance": 100.0 / k if k else None, "majority": majority_baseline(hist, "mIoU")})
    return rows


def _video_rows(folder: Path, data: dict, config: dict) -> list[dict]:
    meta = data.get("meta") or {}
    k = meta.get("num_classes") or len(meta.get("classes") or []) or None
    hist = meta.get("test_class_histogram")
    classes = config.get("classes", "all")
    rows = []
    for r in data["rows"]:
        std, lo, hi = _spread(r, "top1")
        rows.append({"kind": "video probe", "encoder": meta.get("encoder"), "checkpoint": r.get("checkpoint"),
                     "protocol": f"cached features, {r.get('probe')} probe",
                     "split": f"{meta.get('train', '?')} -> {meta.get('test', '?')}",
                     "fraction": f"all training videos, classes: {classes}", "seeds": _seeds(r, meta, config),
                     "metric": "top1", "value": r.get("top1"), "std": std, "ci_low": lo, "ci_high": hi,
                     "chance": 100.0 / k if k else None, "majority": majority_baseline(hist, "top1")})
    return rows


def _bench_rows(folder: Path, data: dict, config: dict) -> list[dict]:
    meta = data.get("meta") or {}
    cells = meta.get("cells") or {}
    skip = {"encoder", "checkpoint", "probe", "appearance avg", "motion avg", "avg"}
    rows = []
    for r in data["rows"]:
        for bench in [c for c in (data.get("columns") or list(r)) if c not in skip and c in r]:
            cell = cells.get(f"{r.get('encoder')}/{bench}") or {}
            res = (cell.get("results") or {}).get(r.get("probe")) or {}
            spread = (res.get("spread") or {}).get("top1") or {}
            ci = spread.get("ci") or [None, None]
            k = len(cell.get("classes") or []) or None
            rows.append({"kind": "video bench", "encoder": r.get("encoder"),
                         "checkpoint": r.get("checkpoint"),
                         "protocol": f"cached features, {r.get('probe')} probe",
                         "split": f"{bench}: {cell.get('dataset', '?')} [{cell.get('test_split', '?')}]",
                         "fraction": "all training videos",
                         "seeds": res.get("seeds") or [config.get("seed", 0)],
                         "metric": "top1", "value": r.get(bench), "std": spread.get("std"), "ci_low": ci[0],
                         "ci_high": ci[1], "chance": 100.0 / k if k else None,
                         "majority": majority_baseline(cell.get("test_class_histogram"), "top1")})
    return rows


def read_run(folder: str | Path) -> list[dict]:
    """The comparison rows of one result folder (InputError naming it when it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    config = _config(folder)
    if (folder / "results.json").is_file():
        data = _read_json(folder / "results.json")
        if "eval split" not in (data.get("meta") or {}):
            raise InputError(folder / "results.json", "not a `pointprobe probe` results table")
        rows = _point_rows(folder, data, config)
    elif (folder / "probe.json").is_file():
        rows = _video_rows(folder, _read_json(folder / "probe.json"), config)
    elif (folder / "table.json").is_file():
        rows = _bench_rows(folder, _read_json(folder / "table.json"), config)
    else:
        raise InputError(folder, "not a result folder of the suite "
                                 "(no results.json, probe.json or table.json)")
    for r in rows:
        r["run"] = str(folder)
    return rows


def differing_keys(configs: Sequence[dict]) -> list[str]:
    """Flattened config keys whose values differ between the configs (absent counts as a value)."""
    flat = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    out = []
    for k in keys:
        if k == "out":
            continue
        vals = {json.dumps(jsonable(f[k]), sort_keys=True) if k in f else "<absent>" for f in flat}
        if len(vals) > 1:
            out.append(k)
    return out


def compare_runs(folders: Iterable[str | Path], out: str | Path) -> dict:
    """Read every result folder, write ``compare.md|csv|json|html`` in ``out``; returns the table.

    A folder that is not a result folder is skipped with one warning line naming it; none readable is
    an error."""
    rows, skipped = [], []
    configs: dict[str, list[dict]] = {}  # per kind of run: their configs share one schema
    for folder in folders:
        try:
            run_rows = read_run(folder)
        except InputError as e:
            log.warning("skipped %s", e)
            skipped.append(str(e))
            continue
        cfg = _config(Path(folder))
        configs.setdefault(run_rows[0]["kind"], []).append(cfg)
        for r in run_rows:
            r["_config"] = flatten(cfg)
        rows += run_rows
    if not rows:
        first = f" ({skipped[0]})" if skipped else ""
        raise InputError(None, "no result folder among the given paths" + first)
    keys_by_kind = {kind: differing_keys(cfgs) if len(cfgs) > 1 else [] for kind, cfgs in configs.items()}
    keys: list[str] = []
    for kk in keys_by_kind.values():
        keys += [k for k in kk if k not in keys]
    table = []
    for r in rows:
        cfg = r.pop("_config")
        row = {c: r.get(c) for c in BASE_COLUMNS}
        for k in keys:  # "": the key is not compared for this kind of run
            row[f"config: {k}"] = cfg.get(k, "<absent>") if k in keys_by_kind[r["kind"]] else ""
        table.append(row)
    columns = list(table[0])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"columns": columns, "rows": jsonable(table), "differing_config_keys": keys, "skipped": skipped,
               "notes": NOTES}
    (out / "compare.json").write_text(json.dumps(payload, indent=2) + "\n")
    with open(out / "compare.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in table:
            w.writerow(["" if row[c] is None else _cell(row[c]) for c in columns])
    md_rows = [display_row(row) for row in table]
    md = ["# Comparison of runs", "", markdown_table(md_rows, float_format=".2f"), "", "Notes:", ""]
    md += [f"- {n}" for n in NOTES] + [f"- skipped: {s}" for s in skipped]
    (out / "compare.md").write_text("\n".join(md) + "\n")
    (out / "compare.html").write_text(_html(md_rows, skipped))
    return {"rows": table, "columns": columns, "differing_config_keys": keys, "skipped": skipped,
            "out": str(out)}


NOTES = [
    "value: the run's metric (percent), copied from its result JSON; mean over seeds when there are several",
    "value column (markdown / HTML): mean ± std over seeds (ddof=1) [95 % bootstrap interval over the "
    "evaluation scenes / videos]; std, ci_low, ci_high are separate fields in the CSV / JSON",
    "chance: 100 / number of classes; majority: the metric of always predicting the most frequent class of "
    "the evaluation split (n/a: the result predates the recorded class histogram)",
    "config: only the keys whose values differ between the compared runs of one kind (point probes, video "
    "probes, bench suites: each kind has its own config schema), from their config.yaml / suite.yaml; out is "
    "left out; empty: the key is not compared for that kind of run",
]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(jsonable(v))
    return str(v)


def display_row(row: dict) -> dict:
    """A table row for reading: the value as ``mean ± std [low, high]``, baselines rounded."""
    d: dict[str, Any] = {"run": Path(row["run"]).name}
    for c, v in row.items():
        if c in ("run", "std", "ci_low", "ci_high"):
            continue
        if c == "value":
            d[c] = NA if v is None else format_spread(float(v), row["std"], (row["ci_low"], row["ci_high"])
                                                      if row["ci_low"] is not None else None)
        elif c in ("chance", "majority"):
            d[c] = NA if v is None else f"{v:.2f}"
        elif c == "checkpoint":
            d[c] = checkpoint_id(v) if v and len(str(v)) == 64 else v
        elif c == "seeds":
            d[c] = ",".join(str(s) for s in v or [])
        else:
            d[c] = v if not isinstance(v, (list, dict)) else json.dumps(jsonable(v))
    return d


def _html(rows: list[dict], skipped: list[str]) -> str:
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    nowrap = {"value", "chance", "majority", "seeds", "checkpoint", "metric"}

    def td(r: dict, c: str) -> str:
        cls = ' class="nowrap"' if c in nowrap else ""
        return f"<td{cls}>{html.escape(str(r.get(c, '')))}</td>"

    body = "\n".join("<tr>" + "".join(td(r, c) for c in cols) + "</tr>" for r in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in NOTES + [f"skipped: {s}" for s in skipped])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Comparison of runs</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; max-width: 18em; }}
td.nowrap {{ white-space: nowrap; max-width: none; }}
th {{ background: #f0f0f0; position: sticky; top: 0; }}
tr:nth-child(even) td {{ background: #fafafa; }}
</style></head>
<body><h1>Comparison of runs</h1>
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<h2>Notes</h2><ul>{notes}</ul>
</body></html>
"""
