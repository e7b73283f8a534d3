"""The three console scripts answer --help, and errors become one line with exit code 2."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import run_cli
from common.errors import InputError


@pytest.mark.parametrize("module", ["pointprobe.cli", "videoprobe.cli", "common.featviz.cli"])
def test_help(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_error_is_one_line_exit_2(capsys):
    parser = argparse.ArgumentParser()

    def boom(args):
        raise InputError("/data/scene0000_00.ply", "truncated: header promises 10 vertices, file holds 3")

    parser.set_defaults(func=boom)
    assert run_cli(parser, []) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: /data/scene0000_00.ply: truncated: header promises 10 vertices, file holds 3"


# ------------------------------------------------------------------------------------------ --show-config
SHOW_CONFIG_CASES = [
    ("pointprobe", ["extract", "data.root=/nonexistent/scannet", "encoder.seed=3"], "pointprobe.extract",
     "ExtractConfig", "configs/point/extract.yaml"),
    ("pointprobe", ["probe", "features=[/nonexistent/a]", "probe.epochs=3"], "pointprobe.probe",
     "SegProbeConfig", "configs/point/probe.yaml"),
    ("pointprobe", ["pretrain", "--config", "configs/point/pretrain_demo.yaml", "train.steps=7"],
     "pointprobe.pretrain.train", "PretrainConfig", "configs/point/pretrain_demo.yaml"),
    ("pointprobe", ["cluster", "features=[/nonexistent/a]"], "pointprobe.lift.cluster", "ClusterConfig",
     "configs/point/cluster.yaml"),
    ("pointprobe", ["lift", "data.raw=/nonexistent/raw"], "pointprobe.lift.lift", "LiftConfig",
     "configs/point/lift.yaml"),
    ("pointprobe", ["distill", "data.lifted=/nonexistent/lifted"], "pointprobe.lift.distill", "DistillConfig",
     "configs/point/distill.yaml"),
    ("pointprobe", ["demo", "scenes=3"], "pointprobe.demo", "PointDemoConfig", None),
    ("videoprobe", ["extract", "data.root=/nonexistent/ucf", "encoder.name=x3d_m"], "videoprobe.extract",
     "ExtractConfig", None),
    ("videoprobe", ["probe", "train_cache=/nonexistent/a", "test_cache=/nonexistent/b"], "videoprobe.probe",
     "ProbeConfig", None),
    ("videoprobe", ["bench", "--suite", "configs/video/synth.yaml", "seed=5"], "videoprobe.bench",
     "BenchSuiteConfig", "configs/video/synth.yaml"),
]


def _cli_main(prog: str):
    import importlib

    return importlib.import_module(f"{prog}.cli").main


@pytest.mark.parametrize("prog,argv,module,schema,config", SHOW_CONFIG_CASES,
                         ids=[f"{c[0]}-{c[1][0]}" for c in SHOW_CONFIG_CASES])
def test_show_config_prints_resolved_config_and_exits_0(prog, argv, module, schema, config, tmp_path,
                                                       monkeypatch, capsys):
    """--show-config: the resolved config (defaults <- file <- overrides) as YAML with help comments;
    nothing is run and no file is written."""
    import importlib

    import yaml

    from common.config import from_dict, load_config

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = [argv[0], "--show-config", *argv[1:], f"out={out}"]
    assert _cli_main(prog)(argv) == 0
    text = capsys.readouterr().out
    cls = getattr(importlib.import_module(module), schema)
    overrides = [a for a in argv[1:] if "=" in a]
    expected = load_config(cls, config, overrides)
    assert from_dict(cls, yaml.safe_load(text)) == expected  # the text is a config file of the same values
    assert text.startswith(f"# {prog} {argv[0]}: resolved config (defaults")
    assert f"out: {out}" in text
    assert sum("  # " in line for line in text.splitlines()) >= 3  # help comments
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_show_config_names_the_overlay_chain(capsys):
    from common.config import resolve_config_path
    from pointprobe.cli import main

    argv = ["probe", "--show-config", "--config", "configs/point/probe_demo.yaml", "probe.epochs=1"]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    base, demo = (resolve_config_path(f"configs/point/{n}.yaml") for n in ("probe", "probe_demo"))
    assert first.endswith(f"(defaults <- {base} <- {demo} <- probe.epochs=1)"), first


def test_show_config_help_of_main_schemas(capsys):
    """Every top-level key of the main schemas has a help comment."""
    import dataclasses

    from common.config import field_help
    from pointprobe.extract import ExtractConfig as PointExtract
    from pointprobe.pretrain.train import PretrainConfig
    from pointprobe.probe import SegProbeConfig
    from videoprobe.extract import ExtractConfig as VideoExtract
    from videoprobe.probe import ProbeConfig

    for schema in (PointExtract, SegProbeConfig, PretrainConfig, VideoExtract, ProbeConfig):
        helps = field_help(schema)
        names = [f.name for f in dataclasses.fields(schema)]
        assert [n for n in names if n not in helps and n not in ("seed",)] == [], schema.__name__
    assert "one cache each" in field_help(PointExtract().data.__class__)["splits"]


def test_field_help_metadata_and_comments():
    import dataclasses

    from common.config import field_help, show_config

    @dataclasses.dataclass
    class Inner:
        a: int = 1  # the a
        # the b, said above
        # over two lines
        b: list[str] = dataclasses.field(default_factory=lambda: ["x", "y # z"])

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner, metadata={"help": "a section"})
        name: str = ""
        c: float = 0.5  # the c

    assert field_help(Inner) == {"a": "the a", "b": "the b, said above over two lines"}
    assert field_help(Outer) == {"inner": "a section", "c": "the c"}
    text = show_config(Outer(), "title")
    assert text.splitlines() == [
        "# title", "inner:  # a section", "  a: 1  # the a",
        "  b: [x, 'y # z']  # the b, said above over two lines", "name: ''", "c: 0.5  # the c",
    ]


@pytest.mark.parametrize("module,first,last", [
    ("pointprobe.cli", "synth", "demo"), ("videoprobe.cli", "synth", "demo"),
    ("common.featviz.cli", "points", "report"), ("common.compare_cli", "compare", "compare"),
])
def test_commands_are_an_explicit_stage_ordered_list(module, first, last):
    """Each front end lists its sub-commands explicitly (COMMANDS), and the parser keeps that order."""
    import importlib

    cli = importlib.import_module(module)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict))
    names = list(sub.choices)
    assert names[0] == first and names[-1] == last
    assert len(cli.COMMANDS) == len(set(cli.COMMANDS))
    if module == "pointprobe.cli":
        assert names.index("extract") < names.index("probe") < names.index("label")
    if module == "videoprobe.cli":
        assert names[:4] == ["synth", "encoders", "extract", "export-twlv"]


def test_layering_common_knows_no_modality_and_the_modalities_not_each_other():
    """``common`` imports neither modality; ``pointprobe`` and ``videoprobe`` never import each other
    (import statements anywhere in the module, lazy ones included)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    forbidden = {"common": ("pointprobe", "videoprobe"), "pointprobe": ("videoprobe",),
                 "videoprobe": ("pointprobe",)}
    bad = []
    for pkg, banned in forbidden.items():
        for f in sorted((root / pkg).rglob("*.py")):
            for n in ast.walk(ast.parse(f.read_text())):
                names = ([n.module] if isinstance(n, ast.ImportFrom) and n.module
                         else [a.name for a in n.names] if isinstance(n, ast.Import) else [])
                bad += [f"{f.relative_to(root)}: {m}" for m in names if m.split(".")[0] in banned]
    assert not bad, bad
