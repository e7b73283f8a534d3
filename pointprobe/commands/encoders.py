"""``pointprobe encoders``: the encoder table (pointprobe.models.ENCODERS) with dims and weights."""
from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encoders",
        help="list the point encoders: feature dim, input, grid, parameters, where weights come from",
        description="Every name of pointprobe.models.ENCODERS (use it as encoder.name=...), described from "
        "the model the name builds: feature dim of all up-cast levels (levels=null) and of the deepest "
        "level alone (levels=0), input features, down-sampling, parameters and weights. `raw` (input "
        "features, no model) is accepted by `pointprobe extract` too.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def encoder_rows() -> list[dict[str, Any]]:
    """One row per entry of ``pointprobe.models.ENCODERS``, derived from the model it builds."""
    import math

    from common.cli import build_without_weights
    from pointprobe.extract import ExtractConfig
    from pointprobe.models import ENCODERS, create_encoder
    from pointprobe.models.load import HUB_FILES, HUB_REPO

    grid = ExtractConfig().grid_size
    rows = []
    for name in ENCODERS:
        m, _ = build_without_weights(create_encoder, name)
        cfg = getattr(m, "config", {}) or {}
        strides = cfg.get("stride") or cfg.get("strides") or []
        if name in HUB_FILES:
            weights = (f"release {HUB_FILES[name]} ({HUB_REPO}): encoder.checkpoint={name} or a file; "
                       "without one: random init")
        else:
            weights = "encoder.checkpoint=FILE (e.g. a pretrain encoder.pth); without one: random init"
        rows.append({
            "name": name,
            "arch": m.arch,
            "dim (all levels)": m.feature_dim(None),
            "dim (deepest)": m.feature_dim(0),
            "input": "+".join(m.feat_keys),
            "grid": f"{grid:g} m" + (f", /{math.prod(strides)}" if strides else ""),
            "params": f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M",
            "random init": "yes (encoder.seed)",
            "weights": weights,
        })
    return rows


FOOTER = ("raw: the input features themselves (encoder.name=raw, no model, dim = input channels).\n"
          "grid: the voxel size pointprobe extract uses (grid_size=...), then the encoder's total "
          "down-sampling.\nRandom weights are recorded as random:<seed> in every cache and table.")


def run(args: argparse.Namespace) -> int:
    from common.cli import print_rows

    return print_rows(encoder_rows(), args.json, FOOTER)
