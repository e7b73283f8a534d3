"""Benchmark suites: encoders x benchmarks x probes in one table, laid out like TWLV-I's table 3.

A suite (``configs/video/<suite>.yaml``, schema ``BenchSuiteConfig``) lists encoders and benchmarks; each
benchmark is a dataset (train and test split) tagged "appearance" or "motion" (optionally a class
subset of it, e.g. the generated dataset's appearance classes). For every encoder and benchmark the
suite extracts both splits into ``<out>/cache/...`` (resumable; benchmarks that share a dataset share
its caches), runs the probes, and writes ``<out>/table.md|json`` (one row per encoder and probe:
top-1 per benchmark, the appearance average, the motion average and the overall average) plus one
PNG chart per probe. Per-cell results are kept in ``<out>/results`` and reused when nothing changed.

Paths (dataset roots, list files, checkpoints) may use environment variables: ``${UCF101_ROOT}`` or
``${VAR:-default}``; ``{split}`` in ``list_file`` / ``annotations`` becomes the split being extracted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.config import config_hash, save_config, to_dict
from common.errors import ConfigError
from common.probes.attentive import AttentiveConfig
from common.probes.knn import KnnConfig
from common.probes.linear import LinearProbeConfig
from videoprobe.extract import DataConfig, EncoderConfig, ExtractConfig, ViewsConfig, extract
from videoprobe.probe import ProbeConfig, attentive_defaults, knn_defaults, run_probes, write_probe_report

log = logging.getLogger(__name__)

GROUPS = ("appearance", "motion", "other")


@dataclass
class BenchEncoderConfig:
    name: str = ""
    label: str = ""  # column label in the table (default: name)
    checkpoint: str | None = None
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)
    clip_len: int = 0  # 0: the suite's views, else the encoder's own recipe
    frame_step: int = 0


@dataclass
class BenchmarkConfig:
    name: str = ""  # e.g. "K400"
    group: str = "appearance"  # appearance | motion | other
    data: DataConfig = field(default_factory=DataConfig)  # data.split is ignored
    train_split: str = "train"
    test_split: str = "test"
    classes: str = "all"  # all | appearance | motion | "A,B,C"
    classes_file: str | None = None


@dataclass
class BenchExtractConfig:
    batch_size: int = 8
    num_workers: int = 0
    device: str = "auto"
    dtype: str = "float32"
    save_tokens: bool = False  # forced on when the attentive probe is requested
    token_grid: list[int] = field(default_factory=lambda: [0, 0, 0])
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast, for CUDA)
    fsync: bool = True


@dataclass
class BenchSuiteConfig:
    name: str = "suite"
    out: str = "runs/video-bench"
    encoders: list[BenchEncoderConfig] = field(default_factory=list)
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    probes: list[str] = field(default_factory=lambda: ["linear", "knn"])
    views: ViewsConfig = field(default_factory=ViewsConfig)
    extract: BenchExtractConfig = field(default_factory=BenchExtractConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KnnConfig = field(default_factory=knn_defaults)
    attentive: AttentiveConfig = field(default_factory=attentive_defaults)
    only_encoders: list[str] = field(default_factory=list)  # run a subset (labels or names)
    only_benchmarks: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"  # probes
    progress: bool = True


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_path(value: str | None, what: str) -> str | None:
    """Replace ``${VAR}`` / ``${VAR:-default}``; an unset variable without default is a ConfigError."""
    if value is None:
        return None

    def sub(m: re.Match) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise ConfigError(f"{what}: environment variable {var} is not set (it gives the dataset path)")

    return _VAR.sub(sub, value)


def _label(enc: BenchEncoderConfig) -> str:
    return enc.label or enc.name


def _folder(label: str) -> str:
    """The folder name of an encoder label (no spaces or parentheses in output paths)."""
    from common.report import slug

    return slug(label, "encoder")


def _data_key(data: DataConfig) -> str:
    blob = json.dumps(to_dict(replace(data, split="")), sort_keys=True)
    return f"{data.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _check(suite: BenchSuiteConfig) -> None:
    if not suite.encoders or not suite.benchmarks:
        raise ConfigError(f"suite {suite.name}: needs at least one encoder and one benchmark")
    labels = [_label(e) for e in suite.encoders]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"suite {suite.name}: encoder labels must be unique, got {labels}")
    folders = [_folder(lb) for lb in labels]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"suite {suite.name}: encoder labels {labels} give the same folder names "
                          f"{folders}; make them differ in letters or digits")
    names = [b.name for b in suite.benchmarks]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"suite {suite.name}: benchmark names must be unique and non-empty, got {names}")
    for b in suite.benchmarks:
        if b.group not in GROUPS:
            raise ConfigError(f"benchmark {b.name}: group must be one of {GROUPS}, not {b.group!r}")


def _selected(suite: BenchSuiteConfig) -> tuple[list[BenchEncoderConfig], list[BenchmarkConfig]]:
    encs = [e for e in suite.encoders if not suite.only_encoders
            or _label(e) in suite.only_encoders or e.name in suite.only_encoders]
    benches = [b for b in suite.benchmarks if not suite.only_benchmarks or b.name in suite.only_benchmarks]
    if not encs or not benches:
        raise ConfigError(f"suite {suite.name}: only_encoders / only_benchmarks select nothing")
    return encs, benches


def _resolve_data(b: BenchmarkConfig) -> DataConfig:
    what = f"benchmark {b.name}"
    data = replace(b.data, root=expand_path(b.data.root, what) or "",
                   list_file=expand_path(b.data.list_file, what),
                   class_index=expand_path(b.data.class_index, what),
                   annotations=expand_path(b.data.annotations, what),
                   video_root=expand_path(b.data.video_root, what))
    if data.root and not Path(data.root).exists():
        raise ConfigError(f"{what}: data.root {data.root} does not exist (set the dataset path in the suite)")
    return data


def _for_split(data: DataConfig, split: str) -> DataConfig:
    fill = lambda p: None if p is None else p.replace("{split}", split)  # noqa: E731
    return replace(data, split=split, list_file=fill(data.list_file), annotations=fill(data.annotations))


def run_suite(suite: BenchSuiteConfig) -> dict[str, Any]:
    """Extract, probe and tabulate every (encoder, benchmark); returns the table rows and failures."""
    _check(suite)
    encs, benches = _selected(suite)
    out = Path(suite.out)
    save_config(suite, out / "suite.yaml")
    want_tokens = suite.extract.save_tokens or "attentive" in suite.probes
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    failures: dict[str, str] = {}
    resolved = {b.name: _resolve_data(b) for b in benches}
    for enc in encs:
        label = _label(enc)
        checkpoint = expand_path(enc.checkpoint, f"encoder {label}")
        for b in benches:
            data = resolved[b.name]
            caches = {}
            for split in (b.train_split, b.test_split):
                cache_dir = out / "cache" / _folder(label) / _data_key(data) / split
                views = replace(suite.views, clip_len=enc.clip_len or suite.views.clip_len,
                                frame_step=enc.frame_step or suite.views.frame_step)
                cfg = ExtractConfig(
                    data=_for_split(data, split),
                    encoder=EncoderConfig(enc.name, checkpoint, enc.seed, dict(enc.kwargs)),
                    views=views, out=str(cache_dir), save_tokens=want_tokens,
                    token_grid=list(suite.extract.token_grid), dtype=suite.extract.dtype,
                    batch_size=suite.extract.batch_size, num_workers=suite.extract.num_workers,
                    precision=suite.extract.precision,
                    device=suite.extract.device, progress=suite.progress, fsync=suite.extract.fsync,
                )
                res = extract(cfg)
                failures.update({f"{label}/{b.name}/{split}/{k}": v for k, v in res.failures.items()})
                caches[split] = cache_dir
            pcfg = ProbeConfig(
                train_cache=str(caches[b.train_split]), test_cache=str(caches[b.test_split]),
                out=str(out / "results" / _folder(label) / _folder(b.name)), probes=list(suite.probes),
                classes=b.classes,
                classes_file=expand_path(b.classes_file, f"benchmark {b.name}"), benchmark=b.name,
                linear=suite.linear, knn=suite.knn, attentive=suite.attentive, seed=suite.seed,
                device=suite.device, progress=suite.progress,
            )
            cells[(label, b.name)] = _probe_cell(pcfg)
    table = tabulate(encs, benches, suite.probes, cells)
    write_bench_report(suite, table, cells, out)
    return {"rows": table, "cells": {f"{k[0]}/{k[1]}": v for k, v in cells.items()}, "failures": failures}


def _probe_cell(pcfg: ProbeConfig) -> dict[str, Any]:
    """Probe results of one (encoder, benchmark), reused from disk when caches and config are unchanged."""
    from common.cache import FeatureCache

    stamp = {"config": config_hash(pcfg), "train": _cache_stamp(FeatureCache(pcfg.train_cache)),
             "test": _cache_stamp(FeatureCache(pcfg.test_cache))}
    memo = Path(pcfg.out) / "cell.json"
    if memo.is_file():
        try:
            saved = json.loads(memo.read_text())
            if saved.get("stamp") == stamp:
                log.info("%s: unchanged, reusing its probe results", pcfg.out)
                return saved["outcome"]
        except (OSError, json.JSONDecodeError):
            pass
    outcome = run_probes(pcfg)
    write_probe_report(pcfg, outcome)
    memo.write_text(json.dumps({"stamp": stamp, "outcome": outcome}, default=str) + "\n")
    return json.loads(json.dumps(outcome, default=str))


def _cache_stamp(cache: Any) -> str:
    blob = json.dumps({"key": cache.key.to_dict(), "items": cache.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def tabulate(encs: list[BenchEncoderConfig], benches: list[BenchmarkConfig], probes: list[str],
             cells: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (encoder, probe): top-1 per benchmark (appearance ones first), group averages, overall."""
    from common.report import checkpoint_id

    order = sorted(benches, key=lambda b: GROUPS.index(b.group))
    rows = []
    for enc in encs:
        label = _label(enc)
        ckpt = checkpoint_id(cells[(label, order[0].name)]["train"]["checkpoint_sha256"])
        for probe in probes:
            row: dict[str, Any] = {"encoder": label, "checkpoint": ckpt, "probe": probe}
            by_group: dict[str, list[float]] = {g: [] for g in GROUPS}
            for b in order:
                top1 = cells[(label, b.name)]["results"][probe]["top1"]
                row[b.name] = round(top1, 2)
                by_group[b.group].append(top1)
            if by_group["appearance"]:
                row["appearance avg"] = round(_mean(by_group["appearance"]), 2)
            if by_group["motion"]:
                row["motion avg"] = round(_mean(by_group["motion"]), 2)
            row["avg"] = round(_mean([v for g in GROUPS for v in by_group[g]]), 2)
            rows.append(row)
    return rows


def write_bench_report(suite: BenchSuiteConfig, rows: list[dict[str, Any]],
                       cells: dict[tuple[str, str], dict[str, Any]], out: Path) -> None:
    """``table.md`` / ``table.json`` and ``table_<probe>.png`` in ``out``."""
    from common.report import bar_chart_png, write_table

    order = sorted(_selected(suite)[1], key=lambda b: GROUPS.index(b.group))
    records = {}
    for (label, bname), c in cells.items():
        records[f"{label}/{bname}"] = {
            "encoder": c["train"]["encoder"], "checkpoint_sha256": c["train"]["checkpoint_sha256"],
            "feature_config_hash": c["train"]["feature_config_hash"], "train_split": c["train"]["split"],
            "test_split": c["test"]["split"], "dataset": c["train"]["dataset"], "classes": c["classes"],
            "results": c["results"], "test_class_histogram": c.get("test_class_histogram"),
        }
    chance = {b.name: 100.0 / len(next(c for (_, n), c in cells.items() if n == b.name)["classes"])
              for b in order}
    notes = [f"{label}/{bname}: {n}" for (label, bname), c in cells.items() for n in c.get("notes", [])]
    meta = {
        "suite": suite.name,
        "metric": "top-1 accuracy (%) on the test split; views combined per video",
        "appearance benchmarks": ", ".join(b.name for b in order if b.group == "appearance") or "none",
        "motion benchmarks": ", ".join(b.name for b in order if b.group == "motion") or "none",
        "probes": ", ".join(suite.probes),
        "chance level (%)": ", ".join(f"{b.name} {chance[b.name]:.2f}" for b in order),
        "suite_config_hash": config_hash(suite),
        "notes": notes,
        "cells": records,
        "config": to_dict(suite),
    }
    footnotes = ["checkpoint: random:<seed> = random weights (a baseline, not a trained encoder), none = no "
                 "weights (a hand-designed encoder), else the first 12 hex digits of the weights' sha256",
                 *notes]
    write_table(rows, out / "table", f"Video probing: {suite.name}", meta=meta, footnotes=footnotes)
    cols = [b.name for b in order] + [c for c in ("appearance avg", "motion avg") if c in rows[0]]
    group_chance = {f"{g} avg": _mean([chance[b.name] for b in order if b.group == g]) for g in GROUPS}
    col_chance = [chance.get(c, group_chance.get(c)) for c in cols]
    for probe in suite.probes:
        values = {f"{r['encoder']} [{r['checkpoint']}]": [r[c] for c in cols] for r in rows
                  if r["probe"] == probe}
        bar_chart_png(values, out / f"table_{probe}.png", title=f"{suite.name}: {probe} probe, top-1 (%)",
                      ylabel="top-1 (%)", labels=cols, chance=col_chance)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table alone (for the terminal)."""
    from common.report import markdown_table

    return markdown_table(rows)
