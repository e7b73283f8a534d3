"""``videoprobe synth``: write the generated appearance-vs-motion action dataset (UCF101 layout)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic action dataset (appearance and motion classes) as mp4 files",
        description=(
            "Write DIR/videos/<Class>/v_<Class>_gXX_cYY.mp4, "
            "DIR/splits/{classInd,trainlist01,testlist01}.txt and DIR/classes.json "
            "(kind of each class: appearance or motion). Read it back with dataset "
            "kind 'ucf101' (or 'synth')."
        ),
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", nargs="+", default=["default"], metavar="NAME",
                   help="class names, or the groups 'default', 'appearance', 'motion', 'all' "
                        "(see --list-classes; default: %(default)s)")
    p.add_argument("--videos-per-class", type=int, default=20, help="videos per class (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="frame width = height, even (default: %(default)s)")
    p.add_argument("--fps", type=int, default=10, help="frame rate (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="fraction of each class's groups in the test list (default: %(default)s)")
    p.add_argument("--list-classes", action="store_true", help="print the class catalogue and exit")
    p.set_defaults(func=run)


def expand_classes(names: list[str]) -> list[str]:
    """Expand the group names 'default', 'appearance', 'motion', 'all'; keep order, drop repeats."""
    from videoprobe.data.synth import APPEARANCE_CLASSES, CATALOGUE, DEFAULT_CLASSES, MOTION_CLASSES

    groups = {"default": DEFAULT_CLASSES, "appearance": APPEARANCE_CLASSES, "motion": MOTION_CLASSES,
              "all": list(CATALOGUE)}
    out: list[str] = []
    for n in names:
        for c in groups.get(n, [n]):
            if c not in out:
                out.append(c)
    return out


def run(args: argparse.Namespace) -> int:
    """Handler of ``videoprobe synth``."""
    import time

    from videoprobe.data.synth import CATALOGUE, SynthConfig, class_kind, generate_dataset

    if args.list_classes:
        for name, c in CATALOGUE.items():
            print(f"{name:24s} {class_kind(name):10s} {c.description}")
        return 0
    cfg = SynthConfig(classes=expand_classes(args.classes), videos_per_class=args.videos_per_class,
                      seed=args.seed, frames=args.frames, size=args.size, fps=args.fps,
                      test_fraction=args.test_fraction)
    t0 = time.perf_counter()
    out = generate_dataset(args.out, cfg)
    n = len(cfg.classes) * cfg.videos_per_class
    dt = time.perf_counter() - t0
    print(f"wrote {n} videos of {len(cfg.classes)} classes to {out} in {dt:.1f} s "
          f"({dt / n * 1000:.0f} ms/video)")
    return 0
