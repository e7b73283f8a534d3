"""The offline video demo: generated data -> two hand-designed encoders -> probes -> the table.

1. ``videoprobe.data.synth.generate_dataset``: a UCF101-style folder whose classes are either
   appearance classes (what the object looks like; its motion is random) or motion classes (how it
   moves; its look is random), with time-reversal pairs among the motion classes.
2. Extraction with two parameter-free encoders (no downloaded weights exist on this machine):
   ``motion_energy`` (block-matching motion statistics, blind to colour and shape) and
   ``frame_stats`` (per-frame colour / gradient statistics averaged over time, blind to frame order).
3. Linear and kNN probes (and the attentive probe with ``attentive=True``) on the appearance subset and
   the motion subset, reported as two benchmarks, like TWLV-I's appearance / motion split.

Expected outcome: frame_stats wins on appearance and is near chance on motion; motion_energy the
reverse. Neither is a learned model: they only make the split visible without weights.
"""
from __future__ import annotations

import time
from pathlib import Path

from common.probes.linear import LinearProbeConfig
from videoprobe.bench import (
    BenchEncoderConfig,
    BenchExtractConfig,
    BenchmarkConfig,
    BenchSuiteConfig,
    format_table,
    run_suite,
)
from videoprobe.extract import DataConfig, ViewsConfig
from videoprobe.probe import attentive_defaults, knn_defaults


def demo_suite(out: Path, synth_root: Path, attentive: bool = False) -> BenchSuiteConfig:
    """The suite the demo runs (also a template for the generated-data suite YAML)."""
    data = DataConfig(kind="synth", root=str(synth_root))
    probes = ["linear", "knn"] + (["attentive"] if attentive else [])
    return BenchSuiteConfig(
        name="synthetic appearance vs motion (demo)",
        out=str(out),
        encoders=[
            BenchEncoderConfig(name="frame_stats", label="frame_stats (frame-wise)", clip_len=8,
                               frame_step=4),
            BenchEncoderConfig(name="motion_energy", label="motion_energy", clip_len=16, frame_step=2),
        ],
        benchmarks=[
            BenchmarkConfig(name="synth-appearance", group="appearance", data=data, classes="appearance"),
            BenchmarkConfig(name="synth-motion", group="motion", data=data, classes="motion"),
        ],
        probes=probes,
        views=ViewsConfig(num_clips=2, spatial="center", size=64, short_side=64),
        extract=BenchExtractConfig(batch_size=16, device="cpu", fsync=False),
        linear=LinearProbeConfig(epochs=30, batch_size=64, val_fraction=0.2),
        knn=knn_defaults(ks=[20], standardize=True),
        attentive=attentive_defaults(epochs=50, batch_size=16),
    )


def run_demo(out: str | Path, videos_per_class: int = 16, seed: int = 0, attentive: bool = False,
             progress: bool = True) -> dict:
    """Generate, extract, probe, tabulate under ``out``; returns ``run_suite``'s result."""
    from videoprobe.data.synth import SynthConfig, generate_dataset

    out = Path(out)
    t0 = time.perf_counter()
    synth = out / "synth"
    if not (synth / "classes.json").is_file():
        print(f"[1/3] generating the synthetic dataset in {synth}")
        # one video per group: every test video has its own background (independent test samples)
        scfg = SynthConfig(videos_per_class=videos_per_class, seed=seed, clips_per_group=1)
        generate_dataset(synth, scfg, progress=progress)
    else:
        print(f"[1/3] reusing the synthetic dataset in {synth}")
    print("[2/3] extracting features (motion_energy, frame_stats) and [3/3] probing")
    result = run_suite(demo_suite(out, synth, attentive))
    print()
    print(format_table(result["rows"]))
    secs = time.perf_counter() - t0
    print(f"\ntable: {out / 'table.md'}  chart: {out / 'table_linear.png'}  ({secs:.0f} s)")
    return result
