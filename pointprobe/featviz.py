"""``featviz points``: PCA / similarity / k-means / label colours of a point encoder's features on a scene."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "PCA, similarity, k-means and label colours of per-point features (PLY files + rendered panels)"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 480x360, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small (at least 16x16)")
    return w, h


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "points",
        help=HELP,
        description=HELP + ". Features come from a checkpoint, a named "
        "encoder with random weights, the raw inputs, or an existing feature cache.",
    )
    p.add_argument("scene", help="preprocessed scene folder, raw ScanNet scene folder, .ply, .npy or .npz")
    p.add_argument("--out", required=True, help="output folder")
    enc = p.add_argument_group("features (one of)")
    enc.add_argument("--checkpoint", help="encoder checkpoint file (or release name sonata / sonata_small)")
    enc.add_argument(
        "--encoder",
        help="encoder name: with --random-init a randomly initialised one; "
        "a release name (sonata, sonata_small) loads its weights; 'raw' uses the input features",
    )
    enc.add_argument("--random-init", action="store_true", help="random weights for --encoder (seeded)")
    enc.add_argument("--cache", help="feature cache folder (with --item)")
    enc.add_argument("--item", help="item id in --cache")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights, PCA and k-means (default 0)")
    p.add_argument("--levels", type=int, default=None, help="up-cast levels (default: all)")
    p.add_argument(
        "--grid-size", type=float, default=0.02, help="grid sampling size in metres (default 0.02)"
    )
    p.add_argument(
        "--grid-align", choices=("world", "min"), default="world",
        help="voxel borders: world = at multiples of the grid size after the centre shift, as the Sonata "
        "release (default); min = from the scene minimum (as caches made before world was the default)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    q = p.add_mutually_exclusive_group()
    q.add_argument(
        "--query",
        help="similarity query position x,y,z (nearest point); default: the point "
        "nearest the scene's bounding-box centre",
    )
    q.add_argument("--query-index", type=int, help="similarity query point index")
    p.add_argument("--kmeans", type=int, default=0, metavar="K", help="also colour K cosine k-means segments")
    p.add_argument("--pred", help=".npy of predicted labels (N,) to show beside the ground truth")
    p.add_argument(
        "--size", type=_size, default=(480, 360), help="size of each render, WxH (default 480x360)"
    )
    p.add_argument("--point-size", type=float, default=None, help="point size in pixels (default: automatic)")
    p.add_argument("--cmap", default="coolwarm", help="diverging colormap of the similarity map")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from common.errors import ConfigError, InputError
    from pointprobe.data.points import load_points
    from pointprobe.viz import (
        cache_features,
        load_point_encoder,
        parse_xyz,
        point_features,
        visualize_points,
        zscored_input_features,
    )

    sources = [bool(args.checkpoint), bool(args.encoder), bool(args.cache)]
    if sum(sources) != 1:
        raise ConfigError(
            "give exactly one of --checkpoint FILE, --encoder NAME [--random-init] / --encoder raw, "
            "--cache DIR --item ID"
        )
    if args.cache and not args.item:
        raise ConfigError("--cache needs --item ID")
    if args.random_init and not args.encoder:
        raise ConfigError("--random-init needs --encoder NAME")
    pts = load_points(args.scene)
    labels = pts.labels
    if args.cache:
        feats, cache_labels, record = cache_features(args.cache, args.item, pts)
        labels = labels if labels is not None else cache_labels
    else:
        model, record = load_point_encoder(
            args.checkpoint, args.encoder, args.random_init, args.seed, args.device
        )
        feats = (
            zscored_input_features(pts)
            if model is None
            else point_features(model, pts, args.levels, args.grid_size, args.device, align=args.grid_align)
        )
    pred = None
    if args.pred:
        try:
            pred = np.load(args.pred, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise InputError(args.pred, f"cannot read predicted labels ({e})") from None
    query = parse_xyz(args.query) if args.query else args.query_index
    title = f"{pts.name}: {record['encoder']} ({record['checkpoint_sha256'][:16]})"
    res = visualize_points(
        pts.coord,
        pts.color,
        feats,
        args.out,
        labels=labels,
        pred=pred,
        query=query,
        kmeans=args.kmeans,
        title=title,
        seed=args.seed,
        size=args.size,
        point_size=args.point_size,
        cmap=args.cmap,
    )
    out = Path(args.out)
    meta = {
        "command": "featviz points",
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "scene": {
            "name": pts.name,
            "source": pts.source,
            "n_points": len(pts),
            "has_labels": labels is not None,
        },
        "encoder": record,
        "feature_dim": int(feats.shape[1]),
        "query_index": res.query_index,
        "query_point": pts.coord[res.query_index].tolist(),
        "panels": res.panels,
        "views": res.views,
        "render_backend": res.backend,
        "render_message": res.message,
        "outputs": {"png": res.png.name, "ply": {k: v.name for k, v in res.plys.items()}},
    }
    (out / "featviz.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(
        f"{pts.name}: {len(pts)} points, {feats.shape[1]}-dim features ({record['encoder']}); "
        f"query point {res.query_index}; rendered with {res.backend}"
    )
    print(f"wrote {res.png}, {len(res.plys)} PLY files and {out / 'featviz.json'}")
    return 0
