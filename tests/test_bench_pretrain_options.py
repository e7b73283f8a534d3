"""tools/bench_pretrain_options.py: the variant table against the real pre-training schema, the section
rendered from a results.json, resumption, the decision rule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import REPO_ROOT, load_config
from pointprobe.pretrain.train import PretrainConfig
from tools import bench_pretrain_options as bpo


def _resolve(overrides: list[str]) -> PretrainConfig:
    return load_config(PretrainConfig, str(REPO_ROOT / bpo.BASE_CONFIG), overrides)


def test_variant_table_resolves_against_the_config_schema():
    base = _resolve([])
    assert base.model.residual_decay == 1.0 and base.loss.ibot_weight == 0 and base.loss.disjoint_masks == 1
    assert bpo.VARIANTS["baseline"] == []
    accepted = []
    for name, overrides in bpo.VARIANTS.items():
        reason = bpo.check_overrides(overrides)
        if name == "mugs" and reason is not None:  # Mugs not in this tree's schema: refused, named
            assert "mugs_weight" in reason
            continue
        assert reason is None, (name, reason)
        accepted.append(name)
        if name != "baseline":
            assert _resolve(overrides) != base, f"{name} changes nothing"
    cfg = _resolve(["model.residual_decay=0.5"])
    assert cfg.model.residual_decay == 0.5
    cfg = _resolve(bpo.VARIANTS["ibot"])
    assert cfg.loss.ibot_weight == 1.0 and cfg.loss.ibot_shared_head is False
    assert _resolve(bpo.VARIANTS["disjoint_masks"]).loss.disjoint_masks == 2
    combo = bpo.combination_overrides([n for n in accepted if n != "baseline"])
    assert bpo.check_overrides(combo) is None
    cfg = _resolve(combo)
    assert cfg.model.residual_decay == 0.5 and cfg.loss.ibot_weight == 1.0 and cfg.loss.disjoint_masks == 2


def test_an_unknown_key_is_refused_with_its_reason():
    reason = bpo.check_overrides(["loss.no_such_option=1"])
    assert reason is not None and "loss.no_such_option" in reason


def _run(variant: str, seed: int, val: float, test: float, overrides: list[str] | None = None) -> dict:
    return {"variant": variant, "seed": seed, "overrides": overrides or bpo.VARIANTS.get(variant, []),
            "steps": 10, "val_mIoU": val, "test_mIoU": test, "s_per_step": 1.5, "cpu_s_per_step": 2.5,
            "pretrain_s": 20.0, "extract_s": 5.0, "peak_rss_mib": 900.0 + seed, "trainable_backbone": 1000,
            "trainable_heads": 200, "encoder_sha256": f"{variant[:4]}{seed}" + "0" * 60, "date": "x"}


def _results(runs: list[dict], seeds=(0, 1)) -> dict:
    return {"runs": {bpo.run_key(r["variant"], r["seed"]): r for r in runs},
            "skipped": {"mugs": "unknown config key 'loss.mugs_weight'"},
            "info": {"scenes": 8, "data_seed": 1, "steps": 10, "seeds": list(seeds), "set": [],
                     "train_points": 4000, "probe_config": "configs/point/probe.yaml", "probe_set": [],
                     "machine": "test machine", "notes": ["a note"], "argv": ["--steps", "10"],
                     "wall_seconds": 600.0, "invocations": 1}}


def test_section_is_rendered_from_a_results_json(tmp_path: Path):
    combo = bpo.combination_overrides(["residual_decay", "ibot"])
    runs = [_run("baseline", 0, 30, 31), _run("baseline", 1, 32, 33),
            _run("residual_decay", 0, 34, 35), _run("residual_decay", 1, 36, 35),
            _run("ibot", 0, 33, 30), _run("ibot", 1, 33, 31),
            _run("disjoint_masks", 0, 20, 20), _run("disjoint_masks", 1, 22, 21),
            _run(bpo.COMBINATION, 0, 40, 40, combo), _run(bpo.COMBINATION, 1, 40, 42, combo)]
    (tmp_path / "results.json").write_text(json.dumps(_results(runs)))
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- begin other -->\n## other\n\nkept\n<!-- end other -->\n")
    bpo.write_outputs(tmp_path, bpo.load_results(tmp_path), doc)
    text = doc.read_text()
    assert "kept" in text and "<!-- begin bench_pretrain_options -->" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["baseline", "residual_decay", "ibot",
                                                           "disjoint_masks", "combination"]
    base = rows[1].split("|")
    assert base[3].strip() == "0, 1"
    assert base[4].strip() == "31.00 ± 1.41" and base[5].strip() == "32.00 ± 1.41"
    assert base[8].strip() == "901" and base[9].strip() == "1000 + 200"
    assert base[10].strip() == "base00000000, base10000000"  # first 12 hex digits per seed
    assert "mugs: skipped, the config refuses it" in text
    assert "helping on val: residual_decay, ibot" in text
    # combination 41 vs baseline 32 on test: +9 > the larger sd (1.41): becomes the default
    assert "beats the baseline on the held-out test split by +9.00 mIoU" in text
    assert "REDUCED" in text and "- a note" in text and "wall time: 10.0 min" in text
    assert (tmp_path / "results.md").read_text().startswith("## bench_pretrain_options")


def test_decision_keeps_the_default_within_the_seed_spread_or_with_one_seed():
    runs = [_run("baseline", 0, 30, 30), _run("baseline", 1, 30, 36),
            _run("ibot", 0, 31, 33), _run("ibot", 1, 31, 35)]
    line = bpo.decision(bpo.summarize(_results(runs)))
    assert "ibot (the only option helping on val)" in line and "+1.00" in line and "stays" in line
    one = bpo.decision(bpo.summarize(_results([_run("baseline", 0, 30, 30), _run("ibot", 0, 40, 40)], [0])))
    assert "one pre-training seed" in one and "stays" in one
    none = bpo.decision(bpo.summarize(_results([_run("baseline", 0, 30, 30), _run("ibot", 0, 20, 40)], [0])))
    assert "no option raises the mean val mIoU" in none and "stays" in none


def test_a_cut_short_run_compares_on_the_seeds_both_have():
    # baseline seeds 0, 1; ibot only seed 0: helping compares seed 0 with seed 0 (33 > 30, although
    # 33 < the baseline's two-seed mean 35), and one shared seed gives no spread to beat
    runs = [_run("baseline", 0, 30, 30), _run("baseline", 1, 40, 40), _run("ibot", 0, 33, 50)]
    rows = bpo.summarize(_results(runs))
    assert bpo.helping(rows) == ["ibot"]
    line = bpo.decision(rows)
    assert "+20.00 mIoU on one pre-training seed" in line and "stays" in line
    # a combination measured for another set of helping options is not the candidate
    combo = bpo.combination_overrides(["residual_decay", "disjoint_masks"])
    runs += [_run("residual_decay", 0, 31, 30), _run(bpo.COMBINATION, 0, 50, 50, combo)]
    line = bpo.decision(bpo.summarize(_results(runs)))
    assert "their combination is not measured" in line
    md = bpo.render_section(_results([_run("baseline", 0, 30, 30)], seeds=[0, 1]))
    assert "pre-training seeds [0] (one seed: no spread; seed(s) [1] asked for, not run)" in md


def test_two_seeds_run_seed_by_seed_with_the_decision_pair_first(tmp_path: Path, monkeypatch):
    calls = []

    def fake_run(work, data, variant, overrides, seed, args, t0):
        calls.append((variant, seed))
        score = {"baseline": 30.0, "residual_decay": 35.0, "ibot": 34.0, "disjoint_masks": 20.0}[variant] \
            if variant != bpo.COMBINATION else 40.0
        return _run(variant, seed, score + seed, score, list(overrides))

    monkeypatch.setattr(bpo, "run_variant", fake_run)
    monkeypatch.setattr(bpo, "prepare_data", lambda out, scenes, seed, t0: out)
    assert bpo.main(["--out", str(tmp_path), "--steps", "10", "--seeds", "0", "1", "--no-doc",
                     "--variants", "baseline", "residual_decay", "ibot", "disjoint_masks"]) == 0
    assert calls == [("baseline", 0), ("residual_decay", 0), ("ibot", 0), ("disjoint_masks", 0),
                     (bpo.COMBINATION, 0),
                     ("baseline", 1), (bpo.COMBINATION, 1), ("residual_decay", 1), ("ibot", 1),
                     ("disjoint_masks", 1)]


def test_resumption_skips_done_runs_and_refused_variants(tmp_path: Path, monkeypatch):
    calls = []

    def fake_run(work, data, variant, overrides, seed, args, t0):
        calls.append((variant, seed, tuple(overrides)))
        score = {"baseline": 30.0, "residual_decay": 35.0, "ibot": 34.0}.get(variant, 40.0)
        return _run(variant, seed, score, score, list(overrides))

    monkeypatch.setattr(bpo, "run_variant", fake_run)
    monkeypatch.setattr(bpo, "prepare_data", lambda out, scenes, seed, t0: out)
    monkeypatch.setitem(bpo.VARIANTS, "mugs", ["loss.no_such_option=1.0"])
    argv = ["--out", str(tmp_path), "--scenes", "8", "--steps", "10", "--seeds", "0", "--no-doc",
            "--variants", "baseline", "residual_decay", "mugs"]
    assert bpo.main(argv) == 0
    assert calls == [("baseline", 0, ()), ("residual_decay", 0, ("model.residual_decay=0.5",))]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["runs"]) == {"baseline/seed0", "residual_decay/seed0"}
    assert "loss.no_such_option" in res["skipped"]["mugs"]
    calls.clear()  # again with ibot added: only ibot runs, then the combination of the two helping options
    assert bpo.main([*argv, "ibot"]) == 0
    combo = ("model.residual_decay=0.5", "loss.ibot_weight=1.0", "loss.ibot_shared_head=false")
    assert calls == [("ibot", 0, tuple(bpo.VARIANTS["ibot"])),
                     (bpo.COMBINATION, 0, combo)]
    calls.clear()
    assert bpo.main([*argv, "ibot"]) == 0
    assert calls == []
    assert json.loads((tmp_path / "results.json").read_text())["info"]["invocations"] == 3
    res = json.loads((tmp_path / "results.json").read_text())  # ibot no longer helps on val: the stale
    res["runs"]["ibot/seed0"]["val_mIoU"] = 10.0               # combination is dropped, none runs
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert bpo.main([*argv, "ibot"]) == 0
    assert calls == []
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert set(runs) == {"baseline/seed0", "residual_decay/seed0", "ibot/seed0"}
    res["runs"]["ibot/seed0"]["val_mIoU"] = 34.0  # the earlier state back (with its combination run)
    (tmp_path / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="other settings"):
        bpo.main([*argv[:-5], "--steps", "20", "--seeds", "0", "--no-doc"])
    out = bpo.main(["--out", str(tmp_path), "--report-only", "--no-doc"])
    assert out == 0 and "combination" in (tmp_path / "results.md").read_text()
