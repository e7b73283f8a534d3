"""common.config: typed schemas, YAML, overrides, unknown keys, saving."""
from __future__ import annotations

from dataclasses import dataclass, field
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
