"""``featviz video``: PCA of a video encoder's patch tokens (fitted over all frames) and a similarity map."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "PCA colours (fitted jointly over all frames) and a query similarity map of video patch tokens"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "video",
        help=HELP,
        description=HELP + "; writes frames.png (rows: input | PCA | "
        "similarity) and an MP4 or GIF of the frames side by side.",
    )
    p.add_argument("video", help="video file (any format the decoders read) or a folder of frames")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--encoder", required=True, help="video encoder name (e.g. videomae_vit_b, motion_energy)")
    p.add_argument("--checkpoint", default=None, help="weights file (default: random init with --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and PCA (default 0)")
    p.add_argument(
        "--frames", type=int, default=None, help="frames per clip (default: the encoder's clip_len)"
    )
    p.add_argument("--frame-step", type=int, default=None, help="frame step (default: the encoder's)")
    p.add_argument("--start", type=int, default=None, help="first frame (default: clip centred in the video)")
    p.add_argument("--size", type=int, default=None, help="crop size in pixels (default: the encoder's)")
    p.add_argument("--query", default=None, help="query token t,y,x on the token grid for a similarity map")
    p.add_argument(
        "--upsample",
        choices=("nearest", "bilinear"),
        default="nearest",
        help="how token maps are enlarged to the frame size (default nearest)",
    )
    p.add_argument("--max-cols", type=int, default=8, help="frames shown in the PNG grid (default 8)")
    p.add_argument(
        "--format", choices=("mp4", "gif", "none"), default="mp4", help="side-by-side video format"
    )
    p.add_argument(
        "--fps", type=float, default=None, help="frame rate of the written video (default: source)"
    )
    p.add_argument("--backend", default="auto", choices=("auto", "decord", "pyav"), help="video decoder")
    p.add_argument("--cmap", default="coolwarm", help="diverging colormap of the similarity map")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from common.errors import ConfigError
    from videoprobe.models import create_video_encoder
    from videoprobe.viz import load_frames, parse_query, prepare_clip, visualize_video

    enc = create_video_encoder(args.encoder, args.checkpoint, seed=args.seed)
    clip_len = args.frames or int(enc.clip_len)
    step = args.frame_step or int(enc.frame_step)
    size = args.size or int(enc.crop_size)
    if clip_len % enc.frames_multiple or size % enc.size_multiple:
        raise ConfigError(
            f"{args.encoder}: --frames must be a multiple of {enc.frames_multiple} and --size of "
            f"{enc.size_multiple} (got {clip_len}, {size})"
        )
    frames = load_frames(args.video, clip_len, step, args.start, args.backend)
    clip = prepare_clip(frames.frames, size)
    query = parse_query(args.query) if args.query else None
    fps = args.fps or max(frames.fps / step, 1.0)
    title = f"{Path(frames.source).name}: {enc.name} ({enc.checkpoint_id[:16]})"
    res = visualize_video(
        clip,
        enc,
        args.out,
        query=query,
        seed=args.seed,
        upsample=args.upsample,
        max_cols=args.max_cols,
        video_format=None if args.format == "none" else args.format,
        fps=fps,
        title=title,
        cmap=args.cmap,
        frame_indices=frames.indices.tolist(),
    )
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out)
    meta = {
        "command": "featviz video",
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "input": {"source": frames.source, "frame_indices": frames.indices.tolist(), "fps": frames.fps},
        "encoder": {**enc.describe(), "seed": args.seed},
        "token_grid": list(res.token_grid),
        "frame_size": list(res.frame_size),
        "query": None if res.query is None else list(res.query),
        "columns": res.columns,
        "warnings": res.warnings,
        "outputs": {"png": res.png.name, "video": None if res.video is None else res.video.name},
    }
    (out / "featviz.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(
        f"{frames.source}: {clip.shape[2]} frames at {size}x{size}, tokens {res.token_grid} ({enc.name}); "
        f"wrote {res.png}" + (f" and {res.video}" if res.video else "")
    )
    return 0
