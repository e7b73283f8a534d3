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

    e = sub.add_parser("export-twlv", help="write a cache as TWLV-I embedding files",
                       description="Write [id].json, [id]_c.npy (clips x D) and [id]_v.npy (mean of clips) "
                                   "for every video of a cache into OUT/<split>/.")
    e.add_argument("cache", help="feature cache folder")
    e.add_argument("out", help="output folder (files go to OUT/<split>/)")
    e.add_argument("--split", default=None, help="sub-folder name (default: the cache's split)")
    e.set_defaults(func=_export)

    i = sub.add_parser("import-twlv", help="read TWLV-I embedding files into a feature cache",
                       description="Read [id].json ('annotation' = class index or name) and [id]_c.npy "
                                   "of one split folder into a feature cache for `videoprobe probe`.")
    i.add_argument("src", help="folder with [id].json and [id]_c.npy files (one split)")
    i.add_argument("out", help="cache folder to write")
    i.add_argument("--encoder", default="twlv-import", help="encoder name recorded in the cache key")
    i.add_argument("--split", default=None, help="split name (default: the folder name)")
    i.add_argument("--classes", default=None,
                   help="class index file (classInd.txt style) giving the class names")
    i.set_defaults(func=_import)


def _extract(args: argparse.Namespace) -> int:
    from common.cli import load_cli_config
    from videoprobe.extract import ExtractConfig, extract, report_failures

    cfg = load_cli_config(ExtractConfig, args)
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
    from videoprobe.extract import export_twlv

    n = export_twlv(args.cache, args.out, args.split)
    print(f"wrote TWLV-I files of {n} videos under {args.out}")
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
    n = import_twlv(args.src, args.out, encoder=args.encoder, split=args.split, class_names=names)
    print(json.dumps({"imported": n, "cache": args.out}))
    return 0 if n == n_json else 1
