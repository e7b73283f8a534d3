"""config_hash ignores where results go (out, progress bars, fsync) but not what changes them."""
from __future__ import annotations

from common.config import config_hash, load_config
from pointprobe.probe import SegProbeConfig
from videoprobe.bench import BenchSuiteConfig
from videoprobe.extract import ExtractConfig
from videoprobe.probe import ProbeConfig


def test_out_does_not_change_the_hash():
    changes = {SegProbeConfig: "seed=3", ProbeConfig: "seed=3", ExtractConfig: "device=cuda",
               BenchSuiteConfig: "seed=3"}
    for schema, change in changes.items():
        a = load_config(schema, None, ["out=runs/a"])
        quiet = ["progress=false"] if schema is not SegProbeConfig else []
        b = load_config(schema, None, ["out=/elsewhere/b", *quiet])
        assert config_hash(a) == config_hash(b), schema.__name__
        c = load_config(schema, None, ["out=runs/a", change])
        assert config_hash(c) != config_hash(a), schema.__name__  # a key that may change the numbers


def test_nested_output_keys_ignored_and_seed_counts():
    a = load_config(BenchSuiteConfig, None, ["out=x", "extract.fsync=true"])
    b = load_config(BenchSuiteConfig, None, ["out=y", "extract.fsync=false"])
    assert config_hash(a) == config_hash(b)
    assert config_hash(load_config(BenchSuiteConfig, None, ["seed=3"])) != config_hash(a)
    # a plain dict is hashed as given (a model config may have any key)
    assert config_hash({"out": 1}) != config_hash({"out": 2})
