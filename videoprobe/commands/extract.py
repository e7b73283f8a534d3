"""``videoprobe extract`` (videos -> feature cache), ``export-twlv`` and ``import-twlv``."""
from __future__ import annotations

import argparse

LAYOUTS = """\
dataset layouts (data.kind, data.root=R; data.annotations / class_index / video_root / list_file
override the files found; README "Video dataset layouts" has the details):
  ucf101    R/ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt + R/UCF-101/<Class>/v_*.avi
            data.split=train|test, data.split_id=1..3
  hmdb51    R/testTrainMulti_7030_splits/<class>_test_split1.txt ("<video> 1|2|0" lines)
            + R/hmdb51_org/<class>/*.avi (mmaction2: R/annotations/ + R/videos/<class>/);
            names starting with '#' are videos; data.annotations=<split folder>
  kinetics  R/annotations/{train,val,test}.csv (label,youtube_id,time_start,time_end,split; test: no label)
            + R/{train,val,test}/<id>_<start:06d>_<end:06d>.mp4 (flat or <label>/ folders, or under
            R/videos/); R/replacement/replacement_for_corrupted_k400/ copies win; mmaction2:
            R/annotations/kinetics_{train,val}.csv + R/videos_{train,val}/<label_with_underscores>/
  ssv2      R/labels/{labels,train,validation,test}.json or the 20BN names
            something-something-v2-{labels,train,validation,test}.json (R/labels, R/annotations or R)
            + R/20bn-something-something-v2/<id>.webm; data.class_index=<labels json> overrides
  diving48  R/Diving48_V2_{train,test}.json + R/Diving48_vocab.json (or in R/annotations/)
            + R/rgb/<vid_name>.mp4 (mmaction2: R/videos/); frames start_frame..end_frame-1 are
            sampled; class names from the vocabulary; data.split=train|test
  list      data.list_file=train.txt with "path label" lines (label: class name, or an integer numbered
            like data.class_index, 1-based for a UCF101 classInd.txt, else 0-based)
  folder    R/<split>/<class>/*.mp4 or R/<class>/*.mp4
labels in the cache are 0-based indices into the class list (-1 = unlabelled, e.g. Kinetics / SSv2 test).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from common.cli import add_config_args

    p = sub.add_parser(
        "extract", help="extract clip features of a video dataset into a feature cache",
        description="Decode clips x crops views per video, run a frozen video encoder, write pooled features "
                    "(and tokens with save_tokens=true) into a resumable cache. Under torchrun each rank "
                    "extracts its shard. Bad videos are reported and skipped (exit status 1). "
                    "A checkpoint that pickles more than tensors and known harmless classes is refused; "
                    "encoder.trust_checkpoint=true loads it anyway (full unpickling: only for files you "
                    "trust).",
        epilog=LAYOUTS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--dry-run", action="store_true",
                   help="scan the videos, decode and encode three, print the video count, the estimated "
                        "cache size and time on this machine and the videos that would fail; write nothing")
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
    from common.cli import load_cli_config
    from videoprobe.extract import ExtractConfig, extract, report_failures

    cfg = load_cli_config(ExtractConfig, args)
    if getattr(args, "dry_run", False):
        import os

        from videoprobe.extract import dry_run

        report = dry_run(cfg)  # no process group: under torchrun only rank 0 prints
        if os.environ.get("RANK", "0") == "0":
            print("\n".join(report.lines(cfg)))
        return 0
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
    from videoprobe.twlv import TWLV_CLASS_COUNTS, export_twlv, twlv_split_name

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

    from videoprobe.twlv import import_twlv

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
