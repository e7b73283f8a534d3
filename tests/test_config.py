"""common.config: typed schemas, YAML, overrides, unknown keys, saving."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from common.config import config_hash, load_config, parse_overrides, save_config, to_dict
from common.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    epochs: int = 10
    kind: Literal["adamw", "sgd"] = "adamw"


@dataclass
class Cfg:
    name: str = "run"
    seed: int = 0
    levels: list[int] = field(default_factory=lambda: [1, 2])
    checkpoint: str | None = None
    verbose: bool = False
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\noptim:\n  lr: 1e-2\n  kind: sgd\n")
    cfg = load_config(Cfg, p, ["optim.epochs=3", "levels=[4,5,6]", "checkpoint=/x.pth", "verbose=true"])
    assert cfg.name == "a" and cfg.seed == 0
    assert cfg.optim.lr == pytest.approx(0.01) and cfg.optim.kind == "sgd" and cfg.optim.epochs == 3
    assert cfg.levels == [4, 5, 6] and cfg.checkpoint == "/x.pth" and cfg.verbose is True


@pytest.mark.parametrize(
    "override, words",
    [
        ("optim.lrr=1", ["optim.lrr", "did you mean 'optim.lr'"]),
        ("nam=x", ["'nam'", "name"]),
        ("seed=abc", ["'seed'", "integer"]),
        ("optim.kind=adam", ["optim.kind", "adamw"]),
        ("verbose=3", ["verbose", "true/false"]),
        ("levels=[1,x]", ["levels[1]"]),
        ("noequals", ["key=value"]),
    ],
)
def test_bad_keys_and_types_named(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, [override])
    for w in words:
        assert w in str(e.value)


def test_unknown_key_in_file_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  epochs: 2\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match="optim.momentun"):
        load_config(Cfg, p)


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(Cfg, bad)


def test_save_roundtrip_and_hash(tmp_path):
    cfg = load_config(Cfg, None, ["optim.lr=0.5"])
    path = save_config(cfg, tmp_path / "out")
    assert path.name == "config.yaml"
    again = load_config(Cfg, path)
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Cfg, None, ["optim.lr=0.4"])) != config_hash(cfg)
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == 0.5


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_default_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    from common.config import REPO_ROOT, resolve_config_path

    monkeypatch.chdir(tmp_path)
    p = resolve_config_path("configs/point/probe.yaml")
    assert p.is_file() and p == REPO_ROOT / "configs/point/probe.yaml"
    assert str(resolve_config_path("configs/nope.yaml")) == "configs/nope.yaml"


@dataclass
class WithDict:
    backbone: str = "sparseunet"
    backbone_config: dict = field(default_factory=dict)


def test_dict_override_merges_and_empty_dict_clears(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("backbone_config:\n  channels: [8, 16]\n  depths: [1, 1]\n")
    merged = load_config(WithDict, p, ["backbone_config.depths=[2,2]"])
    assert merged.backbone_config == {"channels": [8, 16], "depths": [2, 2]}
    cleared = load_config(WithDict, p, ["backbone=sonata_small", "backbone_config={}"])
    assert cleared.backbone == "sonata_small" and cleared.backbone_config == {}


# ------------------------------------------------------------------------------------------ overlays
def test_base_overlay_resolves_relative_to_the_including_file(tmp_path, monkeypatch):
    base = tmp_path / "base" / "probe.yaml"
    base.parent.mkdir()
    base.write_text("name: base\nseed: 3\noptim:\n  lr: 0.1\n  epochs: 5\n")
    demo = tmp_path / "base" / "demo.yaml"
    demo.write_text("_base_: probe.yaml\noptim:\n  epochs: 2\n")
    monkeypatch.chdir(tmp_path)  # the base is found next to demo.yaml, not in the working directory
    cfg = load_config(Cfg, "base/demo.yaml")
    assert (cfg.name, cfg.seed, cfg.optim.lr, cfg.optim.epochs) == ("base", 3, 0.1, 2)
    # overrides go on top of the overlay
    cfg = load_config(Cfg, demo, ["optim.epochs=7", "name=x"])
    assert (cfg.name, cfg.seed, cfg.optim.lr, cfg.optim.epochs) == ("x", 3, 0.1, 7)
    # the saved resolved config is complete: no _base_, every key, and it loads back to the same config
    saved = save_config(cfg, tmp_path / "run")
    data = yaml.safe_load(saved.read_text())
    assert "_base_" not in data and data["optim"] == {"lr": 0.1, "epochs": 7, "kind": "adamw"}
    assert load_config(Cfg, saved) == cfg


def test_base_list_merged_in_order_and_nested(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nseed: 2\nverbose: true\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("optim:\n  kind: sgd\n")
    top = tmp_path / "top.yaml"
    top.write_text("_base_: [b.yaml, sub/c.yaml]\nlevels: [9]\n")
    cfg = load_config(Cfg, top)
    assert (cfg.name, cfg.seed, cfg.verbose, cfg.optim.kind, cfg.levels) == ("a", 2, True, "sgd", [9])
    from common.config import config_files

    assert [f.resolve() for f in config_files(top)] == [
        (tmp_path / n).resolve() for n in ("a.yaml", "b.yaml", "sub/c.yaml", "top.yaml")]


def test_base_cycle_and_bad_base_are_one_line_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml") as e:
        load_config(Cfg, tmp_path / "a.yaml")
    assert "\n" not in str(e.value)
    (tmp_path / "self.yaml").write_text("_base_: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Cfg, tmp_path / "self.yaml")
    (tmp_path / "gone.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(Cfg, tmp_path / "gone.yaml")
    (tmp_path / "num.yaml").write_text("_base_: 3\n")
    with pytest.raises(ConfigError, match="_base_ must be a file name"):
        load_config(Cfg, tmp_path / "num.yaml")


def test_every_shipped_config_is_package_data(tmp_path, monkeypatch):
    """An installed wheel carries every YAML of configs/ (pyproject package-data of the ``configs``
    package) and the relative ``configs/...`` paths resolve through importlib.resources."""
    import fnmatch
    import tomllib
    from importlib.resources import files

    from common.config import REPO_ROOT, resolve_config_path

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    assert any(fnmatch.fnmatch("configs", pat) for pat in tool["packages"]["find"]["include"])
    globs = tool["package-data"]["configs"]
    shipped = sorted(p.relative_to(REPO_ROOT / "configs").as_posix()
                     for p in (REPO_ROOT / "configs").rglob("*.yaml"))
    assert shipped and all(any(fnmatch.fnmatch(rel, g) for g in globs) for rel in shipped)
    monkeypatch.chdir(tmp_path)
    for rel in shipped:
        p = resolve_config_path(f"configs/{rel}")
        assert p.is_file() and p == Path(str(files("configs").joinpath(rel)))


def test_shipped_overlays_state_only_what_differs():
    """probe_demo.yaml is probe.yaml with a shorter run; sonata_small.yaml is sonata_base.yaml with the
    small PTv3; pretrain_demo.yaml is pretrain_bench_cpu.yaml with 60 steps."""
    from dataclasses import replace

    from pointprobe.pretrain.train import PretrainConfig
    from pointprobe.probe import SegProbeConfig

    probe, demo = load_config(SegProbeConfig, "configs/point/probe.yaml"), load_config(
        SegProbeConfig, "configs/point/probe_demo.yaml")
    assert demo == replace(probe, max_train_points=150000, probe=replace(probe.probe, epochs=2))
    base, small = (load_config(PretrainConfig, f"configs/point/sonata_{n}.yaml") for n in ("base", "small"))
    assert small == replace(base, model=replace(base.model, backbone="sonata_small"))
    bench, pdemo = (load_config(PretrainConfig, f"configs/point/pretrain_{n}.yaml")
                    for n in ("bench_cpu", "demo"))
    assert pdemo == replace(bench, views=replace(bench.views, max_points=5000),
                            train=replace(bench.train, steps=60, log_every=5, save_every=0))


SHIPPED = {
    "point/cluster.yaml": "pointprobe.lift.cluster:ClusterConfig",
    "point/distill.yaml": "pointprobe.lift.distill:DistillConfig",
    "point/extract.yaml": "pointprobe.extract:ExtractConfig",
    "point/lift.yaml": "pointprobe.lift.lift:LiftConfig",
    "point/pretrain_bench_cpu.yaml": "pointprobe.pretrain.train:PretrainConfig",
    "point/pretrain_demo.yaml": "pointprobe.pretrain.train:PretrainConfig",
    "point/pretrain_explora.yaml": "pointprobe.pretrain.train:PretrainConfig",
    "point/sonata_base.yaml": "pointprobe.pretrain.train:PretrainConfig",
    "point/sonata_small.yaml": "pointprobe.pretrain.train:PretrainConfig",
    "point/probe.yaml": "pointprobe.probe:SegProbeConfig",
    "point/probe_demo.yaml": "pointprobe.probe:SegProbeConfig",
    "point/tune.yaml": "pointprobe.tune:PointTuneConfig",
    "point/tune_bench_cpu.yaml": "pointprobe.tune:PointTuneConfig",
    "video/extract.yaml": "videoprobe.extract:ExtractConfig",
    "video/probe.yaml": "videoprobe.probe:ProbeConfig",
    "video/tune.yaml": "videoprobe.tune:VideoTuneTaskConfig",
    "video/attentive_online.yaml": "videoprobe.tune:VideoTuneTaskConfig",
    **{f"video/{n}.yaml": "videoprobe.bench:BenchSuiteConfig"
       for n in ("diving48", "hmdb51", "kinetics400", "ssv2", "synth", "twlv", "ucf101")},
}


def test_every_shipped_config_loads_with_its_schema():
    import importlib

    from common.config import REPO_ROOT

    assert sorted(SHIPPED) == sorted(p.relative_to(REPO_ROOT / "configs").as_posix()
                                     for p in (REPO_ROOT / "configs").rglob("*.yaml"))
    for rel, target in SHIPPED.items():
        module, name = target.split(":")
        load_config(getattr(importlib.import_module(module), name), f"configs/{rel}")
    from videoprobe.bench import BenchSuiteConfig

    ucf = load_config(BenchSuiteConfig, "configs/video/ucf101.yaml")
    for n in ("diving48", "hmdb51", "kinetics400", "ssv2"):
        suite = load_config(BenchSuiteConfig, f"configs/video/{n}.yaml")
        assert suite.encoders == ucf.encoders and suite.linear == ucf.linear and len(suite.benchmarks) == 1
        assert suite.benchmarks[0].data.kind != "ucf101"
