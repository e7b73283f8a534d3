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


# flags that are config keys of pointprobe.synth.config.SynthConfig (--frames-per-scene: frames_per_scene);
# a flag left out keeps the --config file's / the default value
FLAG_KEYS = ("out", "scenes", "seed", "frames_per_scene", "image_size", "camera_path", "domain", "workers")


def register(sub: argparse._SubParsersAction) -> None:
    from common.cli import add_show_config

    p = sub.add_parser(
        "synth",
        help="generate synthetic rooms in the raw ScanNet v2 format, with ray-cast RGB-D frames",
        description="Write N generated rooms (meshes, segs/aggregation labels, label table, split files, "
        "posed RGB-D frames) in the raw ScanNet v2 layout; deterministic given --seed. Every flag is also a "
        "config key (key=value or --config FILE): pointprobe synth out=DIR scenes=8 domain=lidar.",
    )
    p.add_argument("--out", default=None, help="output root (gets scans/, scannetv2_*.txt and the .tsv)")
    p.add_argument("--scenes", type=int, default=None, help="number of scenes")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--frames-per-scene", type=int, default=None,
                   help="RGB-D frames per scene, 0 for none (default: 15)")
    p.add_argument("--image-size", type=_image_size, default=None, help="frame size WxH (default: 320x240)")
    p.add_argument(
        "--camera-path",
        choices=("walk", "loop"),
        default=None,
        help="frame camera path: walk (one lap along the walls looking inwards and across, like a scan) or "
        "loop (a small loop around the centre looking outwards) (default: walk)",
    )
    p.add_argument(
        "--domain",
        choices=("rgbd", "lidar"),
        default=None,
        help="rgbd: ScanNet-like coloured RGB-D rooms; lidar: offices / conference rooms / kitchens scanned "
        "from a tripod, no colour, range noise and density falling off with distance (default: rgbd; "
        "config key domain)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--config", default=None, help="YAML file of config keys (see --show-config)")
    add_show_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config keys, e.g. domain=lidar scenes=8 (a flag and a key=value must agree)")
    p.set_defaults(func=run)


def synth_config(args: argparse.Namespace):
    """The run's ``SynthConfig``: defaults <- ``--config`` file <- flags <- ``key=value``; a flag and a
    ``key=value`` that set one key to different values are refused (ConfigError)."""
    import json

    from common.cli import load_cli_config
    from common.config import parse_overrides
    from common.errors import ConfigError
    from pointprobe.synth.config import SynthConfig, check_synth_config

    given = parse_overrides(list(args.overrides or []))
    flags = []
    for key in FLAG_KEYS:
        value = getattr(args, key)
        if value is None:
            continue
        value = list(value) if isinstance(value, tuple) else value
        if key in given and given[key] != value:
            raise ConfigError(f"synth: --{key.replace('_', '-')} {value} and {key}={given[key]} disagree")
        flags.append(f"{key}={json.dumps(value)}")  # JSON: a YAML scalar, quoted
    cfg = load_cli_config(SynthConfig, args, overrides=[*flags, *(args.overrides or [])])
    return check_synth_config(cfg)


def run(args: argparse.Namespace) -> int:
    from pointprobe.synth import generate_dataset

    cfg = synth_config(args)
    splits = generate_dataset(
        cfg.out,
        cfg.scenes,
        cfg.seed,
        frames_per_scene=cfg.frames_per_scene,
        image_size=tuple(cfg.image_size),
        workers=cfg.workers,
        progress=not args.no_progress,
        camera_path=cfg.camera_path,
        domain=cfg.domain,
    )
    print(
        f"synth: {cfg.scenes} {cfg.domain} scenes -> {cfg.out} (train {len(splits['train'])}, "
        f"val {len(splits['val'])}, test {len(splits['test'])})"
    )
    return 0
