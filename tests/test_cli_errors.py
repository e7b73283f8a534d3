"""Failures reach stderr in the same form for both CLIs, and every hint in an error message names a flag
or config key that exists."""
from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(prog: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{prog}.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("prog,args", [
    ("videoprobe", ["extract", "data.root=/nonexistent/ucf", "out=o"]),
    ("videoprobe", ["probe", "train_cache=/nonexistent/a", "test_cache=/nonexistent/b", "out=o"]),
    ("videoprobe", ["extract", "encoder.nmae=x3d_s"]),
    ("pointprobe", ["extract", "data.root=/nonexistent/scannet", "encoder.name=raw", "out=o"]),
])
def test_failing_command_writes_one_error_line_to_stderr(prog, args, tmp_path):
    r = _run(prog, *args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert r.stdout == ""


def test_videoprobe_per_video_failures_go_to_stderr(tmp_path):
    """A list of two videos, one of them broken: the broken one is named on stderr, exit status 1."""
    from videoprobe.data.synth import SynthConfig, generate_dataset

    cfg = SynthConfig(classes=["RedDisc", "BlueSquare"], videos_per_class=2, frames=8, size=32)
    data = generate_dataset(tmp_path / "synth", cfg, progress=False)
    videos = sorted((Path(data) / "videos").rglob("*.mp4"))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    lst = tmp_path / "list.txt"
    lst.write_text(f"{videos[0]} 0\n{bad} 1\n")
    r = _run("videoprobe", "extract", "data.kind=list", f"data.list_file={lst}", "encoder.name=frame_stats",
             "views.size=32", "out=cache", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "broken" in r.stderr and "broken" not in r.stdout
    assert "1 of 2 videos failed" in r.stderr
    assert "\r" not in r.stderr
    assert (tmp_path / "cache" / "manifest.json").is_file()


# ------------------------------------------------------------------------------------ hints in messages
_TOKEN = re.compile(r"(?<![\w.-])(--[a-z][a-z0-9-]*|[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+=)")
_EXTERNAL_FLAGS = {"--nproc_per_node", "--nproc", "--no-build-isolation", "--worker"}  # torchrun, pip, ...


def _messages(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the string constants inside every ``raise XError(...)`` / ``XError(...)`` call."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")
            if name.endswith("Error"):
                text = "".join(s.value for s in ast.walk(node)
                               if isinstance(s, ast.Constant) and isinstance(s.value, str))
                out.append((node.lineno, text))
    return out


def _flags(prog: str) -> set[str]:
    import importlib

    cli = "common.featviz.cli" if prog == "featviz" else f"{prog}.cli"
    parser = importlib.import_module(cli).build_parser()
    flags: set[str] = set()

    def walk(p) -> None:
        for a in p._actions:
            flags.update(o for o in a.option_strings if o.startswith("--"))
            if isinstance(a.choices, dict):
                for sub in a.choices.values():
                    walk(sub)

    walk(parser)
    return flags


def _config_keys() -> set[str]:
    """Every dotted key path (and every tail of one starting at a section) of the CLI schemas."""
    from pointprobe.demo import PointDemoConfig
    from pointprobe.extract import ExtractConfig as PointExtract
    from pointprobe.lift.cluster import ClusterConfig
    from pointprobe.lift.distill import DistillConfig
    from pointprobe.lift.lift import LiftConfig
    from pointprobe.pretrain.train import PretrainConfig
    from pointprobe.probe import SegProbeConfig
    from pointprobe.tune import PointTuneConfig
    from videoprobe.bench import BenchSuiteConfig
    from videoprobe.extract import ExtractConfig as VideoExtract
    from videoprobe.probe import ProbeConfig
    from videoprobe.tune import VideoTuneTaskConfig

    keys: set[str] = set()

    def walk(schema: type, prefix: list[str]) -> None:
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            path = [*prefix, f.name]
            for i in range(len(path)):
                keys.add(".".join(path[i:]))
            tp = hints[f.name]
            inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            if dataclasses.is_dataclass(tp):
                walk(tp, path)
            for a in inner:  # list[BenchEncoderConfig], X | None
                walk(a, path)

    for schema in (PointExtract, SegProbeConfig, PretrainConfig, ClusterConfig, LiftConfig, DistillConfig,
                   PointDemoConfig, VideoExtract, ProbeConfig, BenchSuiteConfig, PointTuneConfig,
                   VideoTuneTaskConfig):
        walk(schema, [])
    return keys


def test_hints_name_real_flags_and_keys():
    """``--flag`` in a message of pointprobe / videoprobe / common code is a flag of those CLIs (featviz
    code may name featviz flags); every ``section.key=`` is a key of a command's config."""
    point_video = _flags("pointprobe") | _flags("videoprobe") | _EXTERNAL_FLAGS
    featviz = _flags("featviz") | point_video
    keys = _config_keys()
    bad = []
    files = [p for d in ("common", "pointprobe", "videoprobe", "tools")
             for p in sorted((ROOT / d).rglob("*.py"))]
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        is_featviz = rel.endswith(("/viz.py", "/featviz.py")) or rel.startswith("common/featviz/")
        allowed = featviz if is_featviz else point_video
        for line, text in _messages(path):
            for tok in _TOKEN.findall(text):
                if tok.startswith("--"):
                    if tok not in allowed:
                        bad.append(f"{rel}:{line}: flag {tok} does not exist")
                elif tok[:-1] not in keys:
                    bad.append(f"{rel}:{line}: config key {tok[:-1]} does not exist")
    assert bad == []
    assert "encoder.checkpoint" in keys and "attentive.num_heads" in keys  # the walk found nested keys


def test_cache_mismatch_hint_uses_out(tmp_path):
    from common.cache import CacheKey, CacheWriter
    from common.errors import CacheError

    key = CacheKey(encoder="raw", checkpoint_sha256="none", config_hash="0" * 16, dataset="d", split="train")
    with CacheWriter(tmp_path / "c", key, feature_dim=2):
        pass
    other = dataclasses.replace(key, encoder="sonata")
    with pytest.raises(CacheError, match=r"out=") as e:
        CacheWriter(tmp_path / "c", other, feature_dim=2)
    assert "--cache" not in str(e.value)


def test_missing_release_checkpoint_hint_uses_encoder_checkpoint(tmp_path, monkeypatch):
    import sys as _sys

    from common.errors import CheckpointError
    from pointprobe.models import load

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(_sys.modules, "huggingface_hub", None)  # not installed: no network either
    with pytest.raises(CheckpointError) as e:
        load.resolve_checkpoint("sonata")
    msg = str(e.value)
    assert "encoder.checkpoint=/path/sonata.pth" in msg and "and pass --checkpoint" not in msg
