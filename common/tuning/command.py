"""The body of ``pointprobe tune`` / ``videoprobe tune``: short keys, config, run, one-row summary.

Both modalities' command modules register their own parser (help, examples, default config) and call
:func:`run_tune_command` with their config class, run function and metric column.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

SHORT_KEYS = ("method", "over", "steps")


def expand_short_keys(overrides: list[str]) -> list[str]:
    """``method=ssf`` -> ``tune.method=ssf`` (also ``over=``, ``steps=``)."""
    return [f"tune.{o}" if o.split("=", 1)[0] in SHORT_KEYS else o for o in overrides]


def run_tune_command(args: argparse.Namespace, config_class: type, run: Callable[[Any], dict],
                     metric: str) -> int:
    """Load the config (short keys expanded), run one method, print its row and where the table is."""
    from common.cli import load_cli_config
    from common.report import markdown_table

    cfg = load_cli_config(config_class, args, overrides=expand_short_keys(list(args.overrides or [])))
    row = run(cfg)
    if row.get("interrupted"):
        import sys

        from common import dist

        if dist.is_main():
            print(f"interrupted at step {row['stopped_at']} ({row['interrupted']}), resumable: rerun the "
                  f"same command (checkpoint {row['run_dir']}/last.pth)", file=sys.stderr)
        return dist.INTERRUPTED_EXIT
    show = {k: row.get(k) for k in ("method", "encoder", metric, "trainable_params", "trainable_pct",
                                    "peak_memory_mb", "step_time_s", "total_time_s")}
    print(markdown_table([show], float_format=".4g"))
    print(f"\nresults: {cfg.out}/tune_results.md (+ .json, ladder.png)")
    return 0
