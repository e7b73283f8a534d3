"""Video storage at Kinetics size: the token budget (refused before anything is written), bytes per video
in the cache meta, and ``videoprobe extract --dry-run`` (estimates, failing videos, nothing written)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.cache import FeatureCache
from common.config import from_dict
from common.errors import ConfigError
from videoprobe.cli import main

torch.set_num_threads(1)
ARGS = ["encoder.name=motion_energy", "views.num_clips=2", "views.clip_len=4", "views.frame_step=1",
        "views.size=32", "progress=false", "fsync=false", "device=cpu"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A list file of 4 good synthetic videos and one broken file (kind ``list``)."""
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("vs")
    data = generate_dataset(root / "synth", SynthConfig(classes=["RedDisc", "MoveLeft"], videos_per_class=2,
                                                         frames=8, size=32), progress=False)
    good = sorted((Path(data) / "videos").rglob("*.mp4"))
    assert len(good) == 4
    bad = root / "zz_broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    (root / "good.txt").write_text("".join(f"{p} {i % 2}\n" for i, p in enumerate(good)))
    (root / "all.txt").write_text((root / "good.txt").read_text() + f"{bad} 1\n")
    return root


def _cfg(videos: Path, out: Path, lst: str = "good.txt", **top):
    from videoprobe.extract import ExtractConfig

    d = {"data": {"kind": "list", "list_file": str(videos / lst)}, "encoder": {"name": "motion_energy"},
         "views": {"num_clips": 2, "clip_len": 4, "frame_step": 1, "size": 32}, "out": str(out),
         "progress": False, "fsync": False, "device": "cpu", **top}
    return from_dict(ExtractConfig, d)


def test_tokens_over_budget_are_refused_before_writing(videos, tmp_path, capsys):
    from videoprobe.extract import extract

    out = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"x 4 videos\), over token_budget_gb=1e-06;"):
        extract(_cfg(videos, out, save_tokens=True, token_budget_gb=1e-6))
    assert not out.exists()
    # the CLI: one line, exit status 2, nothing written
    rc = main(["extract", "data.kind=list", f"data.list_file={videos / 'good.txt'}", f"out={out}",
               "save_tokens=true", "token_budget_gb=0.000001", *ARGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "over token_budget_gb" in err[0], err
    assert not out.exists()


def test_bytes_per_video_in_the_meta(videos, tmp_path):
    from videoprobe.extract import extract

    pooled = tmp_path / "pooled"
    assert not extract(_cfg(videos, pooled)).failures
    tokens = tmp_path / "tokens"  # within the default budget
    assert not extract(_cfg(videos, tokens, save_tokens=True)).failures
    p, t = FeatureCache(pooled), FeatureCache(tokens)
    bp, bt = p.meta["bytes_per_video"], t.meta["bytes_per_video"]
    assert bp["tokens"] == 0 and bp["videos"] == bt["videos"] == 4
    assert bp["pooled"] == bt["pooled"] == sum(p.array_nbytes(p.items()[0]).values())
    item = t.items()[0]
    tok = t.load(item, ["tokens"])["tokens"]
    assert tok.dtype.name == "float16" and bt["tokens"] == tok.nbytes > 0
    assert bt["total"] == bt["pooled"] + bt["tokens"]


def test_dry_run_lists_the_broken_video_and_writes_nothing(videos, tmp_path, capsys):
    out = tmp_path / "never"
    rc = main(["extract", "--dry-run", "data.kind=list", f"data.list_file={videos / 'all.txt'}", f"out={out}",
               "save_tokens=true", *ARGS])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert not out.exists()
    assert "5 videos, 0 already cached, 1 unreadable, 4 to extract" in text
    assert "1 video(s) would fail:" in text and "zz_broken" in text
    assert "estimated cache size" in text and "estimated time" in text


def test_dry_run_estimate_matches_the_real_cache(videos, tmp_path):
    from videoprobe.extract import dry_run, extract

    cfg = _cfg(videos, tmp_path / "c", save_tokens=True)
    est = dry_run(cfg)
    assert len(est.sampled) == 3 and est.seconds_per_video > 0 and not est.unreadable
    assert not (tmp_path / "c").exists()
    extract(cfg)
    cache = FeatureCache(tmp_path / "c")
    real = sum(sum(cache.array_nbytes(i).values()) for i in cache.items())
    assert est.est_bytes == real  # same views and dims per video: exact
    again = dry_run(cfg)
    assert again.cached == 4 and again.to_do == 0 and again.est_seconds == 0
    assert not any("would refuse" in line for line in est.lines(cfg))
    cfg.token_budget_gb = 1e-6
    assert "the token cache is over token_budget_gb=1e-06: extract would refuse" in est.lines(cfg)


def test_scan_with_workers_finds_the_same_broken_video(videos):
    from videoprobe.data.datasets import build_video_dataset
    from videoprobe.extract import scan_videos

    items, _ = build_video_dataset("list", "", "all", list_file=videos / "all.txt")
    one = scan_videos(items, "auto", 0)
    assert list(one) == ["zz_broken"] and scan_videos(items, "auto", 2) == one
