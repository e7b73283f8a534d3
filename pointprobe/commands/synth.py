"""``pointprobe synth``: generate synthetic ScanNet-like scenes (raw format + posed RGB-D frames)."""

from __future__ import annotations

import argparse


def _image_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 320x240, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"image size {w}x{h} is too small")
    return w, h


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate synthetic rooms in the raw ScanNet v2 format, with ray-cast RGB-D frames",
        description="Write N generated rooms (meshes, segs/aggregation labels, label table, split files, "
        "posed RGB-D frames) in the raw ScanNet v2 layout; deterministic given --seed.",
    )
    p.add_argument("--out", required=True, help="output root (gets scans/, scannetv2_*.txt and the .tsv)")
    p.add_argument("--scenes", type=int, required=True, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--frames-per-scene",
        type=int,
        default=15,
        help="RGB-D frames per scene, 0 for none (default: %(default)s)",
    )
    p.add_argument(
        "--image-size", type=_image_size, default=(320, 240), help="frame size WxH (default: 320x240)"
    )
    p.add_argument(
        "--camera-path",
        choices=("walk", "loop"),
        default="walk",
        help="frame camera path: walk (one lap along the walls looking inwards and across, like a scan) or "
        "loop (a small loop around the centre looking outwards) (default: %(default)s)",
    )
    p.add_argument(
        "--domain",
        choices=("rgbd", "lidar"),
        default="rgbd",
        help="rgbd: ScanNet-like coloured RGB-D rooms; lidar: offices / conference rooms / kitchens scanned "
        "from a tripod, no colour, range noise and density falling off with distance (default: %(default)s)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from common.errors import ConfigError
    from pointprobe.synth import generate_dataset

    if args.scenes < 1:
        raise ConfigError(f"--scenes must be >= 1, got {args.scenes}")
    if args.frames_per_scene < 0:
        raise ConfigError(f"--frames-per-scene must be >= 0, got {args.frames_per_scene}")
    splits = generate_dataset(
        args.out,
        args.scenes,
        args.seed,
        frames_per_scene=args.frames_per_scene,
        image_size=args.image_size,
        workers=max(1, args.workers),
        progress=not args.no_progress,
        camera_path=args.camera_path,
        domain=args.domain,
    )
    print(
        f"synth: {args.scenes} {args.domain} scenes -> {args.out} (train {len(splits['train'])}, "
        f"val {len(splits['val'])}, test {len(splits['test'])})"
    )
    return 0
