"""``videoprobe encoders``: the table videoprobe.models.VIDEO_ENCODERS with dims, clip and weights."""
from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encoders",
        help="list the video encoders: dims, clip length, crop, token grid, where weights come from",
        description="Every name of videoprobe.models.VIDEO_ENCODERS (use it as encoder.name=...), described "
        "from the model the name builds (random init, no weights allocated): pooled and token dims, the "
        "input recipe (frames x step, crop), the token grid of one clip, parameters and weights. Also "
        "accepted: frame_timm:<model> (any timm image model, when timm is installed).",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _token_grid(enc: Any, device: Any) -> str:
    """(T', H', W') of the tokens of one clip of the encoder's own size."""
    import torch

    grid = getattr(enc, "grid", None)
    if isinstance(grid, tuple | list) and len(grid) == 3:
        return "x".join(str(int(g)) for g in grid)
    if device.type != "meta":
        return "-"  # not built on the meta device: a real forward would cost seconds
    try:
        with torch.no_grad():
            out = enc(torch.zeros(1, 3, enc.clip_len, enc.crop_size, enc.crop_size, device=device))
    except Exception:  # an op without a meta kernel: leave the column empty
        return "-"
    if out.tokens is None:
        return "-"
    return "x".join(str(int(s)) for s in out.tokens.shape[1:4])


def encoder_rows() -> list[dict[str, Any]]:
    """One row per entry of ``videoprobe.models.VIDEO_ENCODERS``, derived from the model it builds."""
    from common.cli import build_without_weights
    from videoprobe.models import VIDEO_ENCODERS, create_video_encoder
    from videoprobe.models.zoo import ZOO_SPECS

    rows = []
    for name in VIDEO_ENCODERS:
        enc, device = build_without_weights(create_video_encoder, name)
        d = enc.describe()
        params = sum(p.numel() for p in enc.parameters())
        if d["checkpoint_sha256"] == "none":
            weights, random_init = "none (hand-designed, no parameters)", "-"
        else:
            weights = "encoder.checkpoint=FILE" + (" or hub (torch.hub cache / online)" if name in ZOO_SPECS
                                                    else "")
            random_init = "yes (encoder.seed; random:<seed>)"
        rows.append({
            "name": name,
            "dim": d["embed_dim"],
            "token dim": d["token_dim"],
            "clip (frames x step)": f"{d['clip_len']} x {d['frame_step']}",
            "crop": d["crop_size"],
            "token grid": _token_grid(enc, device),
            "params": f"{params / 1e6:.1f}M",
            "random init": random_init,
            "weights": weights,
        })
    return rows


FOOTER = ("clip: frames per clip x frame step of the encoder's recipe (views.clip_len / views.frame_step "
          "override it);\nvideos shorter than frames x step are padded by repeating the last frame.")


def run(args: argparse.Namespace) -> int:
    from common.cli import print_rows

    return print_rows(encoder_rows(), args.json, FOOTER)
