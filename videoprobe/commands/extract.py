"""``videoprobe extract`` (videos -> feature cache), ``export-twlv`` and ``import-twlv``."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from common.cli import add_config_args

    p = sub.add_parser(
        "extract", help="extract clip features of a video dataset into a feature cache",
        description="Decode clips x crops views per video, run a frozen video encoder, write pooled features "
                    "(and tokens with save_tokens=true) into a resumable cache. Under torchrun each rank "
                    "extracts its shard. Bad videos are reported and skipped (exit status 1).",
    )
    add_config_args(p)
    p.set_defaults(func=_extract)

    e = sub.add_parser(
        "export-twlv", help="write a cache as TWLV-I embedding files",
        description="Write [id].json, [id]_c.npy (clips x D) and [id]_v.npy (mean of clips, 1-D as the "
                    "framework needs) for every video of a cache into OUT/<split>/. The TWLV-I evaluation "
                    "framework (twelvelabs-io/video-embeddings-evaluation-framework) reads only OUT/train "
                    "and OUT/val: a train cache goes to OUT/train, any other (test, val) to OUT/val; pass "
                    "--embeddings_dir OUT there. Its --dataset_name fixes the class count (Diving48 48, "
                    "sthsth-v2 174, MomentsInTime 305, Kinetics400 400): pick one with at least as many "
                    "classes as the cache. \"annotation\" is the 0-based class index (the json says "
                    "label_base 0) and label_name its class name.")
    e.add_argument("cache", help="feature cache folder")
    e.add_argument("out", help="output folder, the framework's --embeddings_dir (files go to OUT/<split>/)")
    e.add_argument("--split", default=None,
                   help="sub-folder name (default: train for a train cache, val for any other; the "
                        "framework reads no other name)")
    e.set_defaults(func=_export)

    i = sub.add_parser(
        "import-twlv", help="read TWLV-I embedding files into a feature cache",
        description="Read [id].json ('annotation' = 0-based class index or a class name) and [id]_c.npy of "
                    "one split folder into a feature cache for `videoprobe probe`. Class names: --classes, "
                    "else the files' label_name (written by export-twlv), else class_0 .. class_<K-1> "
                    "(K = --num-classes or the largest annotation + 1; give the same K to every split). "
                    "Re-running into the same folder updates what differs (videos, labels, class names); "
                    "a cache of another source or encoder is refused.")
    i.add_argument("src", help="folder with [id].json and [id]_c.npy files (one split, e.g. DIR/train)")
    i.add_argument("out", help="cache folder to write")
    i.add_argument("--encoder", default="twlv-import", help="encoder name recorded in the cache key")
    i.add_argument("--split", default=None, help="split name (default: the folder name)")
    i.add_argument("--classes", default=None,
                   help="class index file (classInd.txt style, class i on line i+1) giving the class names")
    i.add_argument("--num-classes", type=int, default=None,
                   help="class count when neither --classes nor label_name gives names (e.g. 400 for "
                        "Kinetics400), so that splits lacking the top classes get the same names")
    i.set_defaults(func=_import)


def _extract(args: argparse.Namespace) -> int:
    from common.config import load_config
    from videoprobe.extract import ExtractConfig, extract, report_failures

    cfg = load_config(ExtractConfig, args.config, args.overrides)
    res = extract(cfg)
    from common import dist

    if dist.is_main():
        total = res.written + res.skipped + len(res.failures)
        print(f"{res.out}: wrote {res.written} videos, {res.skipped} already cached, "
              f"{len(res.failures)} failed; {res.clips_per_s:.1f} views/s")
        report_failures(res.failures, total)
    dist.cleanup()
    return 1 if res.failures else 0


def _export(args: argparse.Namespace) -> int:
    from common.cache import FeatureCache
    from videoprobe.extract import TWLV_CLASS_COUNTS, export_twlv, twlv_split_name

    n = export_twlv(args.cache, args.out, args.split)
    cache = FeatureCache(args.cache)
    folder = args.split or twlv_split_name(cache.key.split)
    k = len(cache.meta.get("class_names") or [])
    fits = [f"{name} ({c})" for name, c in TWLV_CLASS_COUNTS.items() if c >= k]
    print(f"wrote TWLV-I files of {n} videos under {args.out}/{folder} (annotation: 0-based class index of "
          f"{k} classes); for the framework: --embeddings_dir {args.out}, --dataset_name one of "
          f"{', '.join(fits) or 'none (more classes than any)'}")
    return 0


def _import(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from videoprobe.extract import import_twlv

    names = None
    if args.classes:
        from videoprobe.data.datasets import read_class_index

        names = read_class_index(args.classes)
    n_json = len(list(Path(args.src).glob("*.json"))) if Path(args.src).is_dir() else 0
    stats: dict = {}
    n = import_twlv(args.src, args.out, encoder=args.encoder, split=args.split, class_names=names,
                    num_classes=args.num_classes, stats=stats)
    print(json.dumps({"imported": n, "cache": args.out, **stats}))
    return 0 if n == n_json else 1
