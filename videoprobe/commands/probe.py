"""``videoprobe probe``: linear / kNN / attentive probes on a train cache and a test cache."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from common.cli import add_config_args

    p = sub.add_parser(
        "probe", help="train and evaluate probes on cached video features",
        description="Linear (lr x wd multi-head sweep), kNN (TWLV-I recipe) and attentive (V-JEPA style) "
                    "probes; top-1 / top-5 / mean-class accuracy with views combined per video. Writes "
                    "OUT/probe.md, OUT/probe.json and the resolved OUT/config.yaml. seeds=[0,1,2]: "
                    "mean ± std over seeds [95 % bootstrap interval over test videos]. eval_source=stream: "
                    "the test split (eval_split) is decoded and encoded on the fly with the training cache's "
                    "encoder and every probe applied to it, no test cache (torchrun: videos sharded).",
    )
    add_config_args(p)
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> int:
    from common import dist
    from common.cli import load_cli_config
    from common.report import checkpoint_id, markdown_table
    from common.stats import format_spread
    from videoprobe.probe import ProbeConfig, run_probes, write_probe_report

    cfg = load_cli_config(ProbeConfig, args)
    outcome = run_probes(cfg)
    if not dist.is_main():  # streamed under torchrun: rank 0 writes the report
        return 0
    md, _ = write_probe_report(cfg, outcome)
    ckpt = checkpoint_id(outcome["train"]["checkpoint_sha256"])
    rows = [{"probe": k, "checkpoint": ckpt,
             **{m: (format_spread(v[m], v["spread"][m]["std"], v["spread"][m]["ci"]) if "spread" in v
                    else round(v[m], 2)) for m in ("top1", "top5", "mean_class")}}
            for k, v in outcome["results"].items()]
    print(markdown_table(rows))
    print(f"report: {md}")
    return 0
