"""``pointprobe preprocess``: raw ScanNet v2 folder -> Pointcept's preprocessed layout."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="raw ScanNet v2 scenes -> {split}/{scene}/{coord,color,normal,segment*,instance}.npy",
        description="Convert raw ScanNet v2 scenes (scans/ + split files + label table) into Pointcept's "
        "preprocessed layout (label arrays int64, as Pointcept writes them). When the raw root has no "
        "scannetv2_{train,val,test}.txt / scannetv2-labels.combined.tsv, the official ScanNet v2 files "
        "shipped with pointprobe are used (and only the listed scenes present on disk are processed). "
        "Scenes on disk that no list names are reported, not processed. Resumable: complete scenes are "
        "skipped. Bad scenes are reported and skipped; the exit status is 1 if any failed.",
    )
    p.add_argument("--raw", required=True,
                   help="raw ScanNet root (holds scans/ and scans_test/; optionally scannetv2_*.txt "
                        "and the .tsv)")
    p.add_argument("--out", required=True, help="output root for {train,val,test}/sceneXXXX_YY/*.npy")
    p.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (default: %(default)s)"
    )
    p.add_argument("--splits", default=None,
                   help="comma-separated splits, each of which must be present (default: every split that "
                        "is present; the others are named as skipped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pointprobe.data.scannet_preprocess import preprocess_dataset

    splits = None if args.splits is None else [s.strip() for s in args.splits.split(",") if s.strip()]
    results = preprocess_dataset(
        args.raw,
        args.out,
        splits,
        workers=max(1, args.workers),
        progress=not args.no_progress,
        log=lambda m: print(m, file=sys.stderr),
    )
    counts = {k: sum(r.status == k for r in results) for k in ("done", "skipped", "failed")}
    points = sum(r.n_points for r in results)
    print(
        f"preprocess: {counts['done']} written ({points} points), {counts['skipped']} already complete, "
        f"{counts['failed']} failed -> {args.out}"
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} scene(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.split}/{r.name}: {r.message}", file=sys.stderr)
        return 1
    return 0
