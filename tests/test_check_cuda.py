"""tools/check_cuda.py on a machine without CUDA: a clear refusal, and re-rendering a GPU run's JSON."""
from __future__ import annotations

import json

import pytest
import torch

from tools import check_cuda


def test_refuses_without_cuda(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_cuda.main(["--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_check_records_numbers_and_failures():
    check_cuda.RESULTS.clear()

    @check_cuda.check("passes")
    def good():
        return {"rel diff": 1e-7, "cosine": 0.9999123, "points": 218064, "ok": True}

    @check_cuda.check("raises")
    def bad():
        raise RuntimeError("no kernel image is available")

    good()
    bad()
    assert [r["ok"] for r in check_cuda.RESULTS] == [True, False]
    assert "no kernel image" in check_cuda.RESULTS[1]["error"]
    md = check_cuda.markdown(check_cuda.RESULTS)
    assert "| passes | yes | rel diff: 1e-07; cosine: 0.999912; points: 218,064;" in md
    assert "| raises | **NO** | error: RuntimeError: no kernel image is available;" in md
    check_cuda.RESULTS.clear()


def test_render_json_from_a_gpu_machine(tmp_path):
    results = [{"check": "environment", "ok": True, "machine": "x86_64, 16 CPU cores, NVIDIA H200",
                "gpu": "NVIDIA H200"},
               {"check": "spconv", "ok": True, "subm rel diff": 2.8e-7}]
    src = tmp_path / "check_cuda.json"
    src.write_text(json.dumps(results))
    assert check_cuda.main(["--render", str(src), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "check_cuda.md").read_text()
    assert md.startswith("Machine: x86_64, 16 CPU cores, NVIDIA H200.")
    assert "| spconv | yes | subm rel diff: 2.8e-07 |" in md


@pytest.mark.parametrize("value, text", [(True, "True"), (3, "3"), (0.5, "0.5"), (0.99999, "0.999990")])
def test_number_format(value, text):
    assert check_cuda._fmt(value) == text


def test_dry_run_imports_and_runs_the_gpu_path_cpu_parts(tmp_path, capsys):
    """``--dry-run`` (no GPU): the issue-15 checks run on the CPU with small data; device preprocessing
    gives the numpy path's encoder inputs; without fetched sources the builds say so and are skipped."""
    assert check_cuda.main(["--dry-run", "--only", "gpu_path", "--out", str(tmp_path),
                            "--sources", str(tmp_path / "none")]) == 0
    results = json.loads((tmp_path / "check_cuda_dry.json").read_text())
    by = {r["check"].split(" ")[0]: r for r in results}
    parity = by["device"]
    assert parity["ok"] and parity["canonical: inputs identical"] and parity["test: inputs identical"]
    enc = by["encode_points"]
    assert enc["ok"] and "after (device preprocess, pinned copy) / network" in enc
    assert by["extraction"]["caches identical"]
    assert "--fetch-sources" in by["torch-scatter"]["status"]
    assert "--fetch-sources" in by["flash-attn"]["status"]
    assert "5 checks ran on the CPU, 0 failed" in capsys.readouterr().out
    check_cuda.RESULTS.clear()


def test_a_partial_run_has_its_own_section(tmp_path, monkeypatch):
    """``--only gpu_path --doc`` writes section check_cuda_gpu_path and leaves the full table alone."""
    from common import benchdoc

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# b\n\n<!-- begin check_cuda -->\n## check_cuda\n\nfull table\n<!-- end check_cuda -->\n")
    monkeypatch.setattr(benchdoc, "DOC", doc)
    src = tmp_path / "check_cuda.json"
    src.write_text(json.dumps([{"check": "encode_points / network", "ok": True, "after / network": 0.8}]))
    assert check_cuda.section_name("") == "check_cuda"
    assert check_cuda.main(["--render", str(src), "--only", "gpu_path", "--doc", "--out", str(tmp_path)]) == 0
    text = doc.read_text()
    assert "full table" in text and "<!-- begin check_cuda_gpu_path -->" in text
    assert "`python tools/check_cuda.py --only gpu_path --sources .gpusrc`" in text


@pytest.mark.slow
def test_dry_run_of_the_tune_check_finishes_every_method_on_the_cpu(tmp_path, capsys):
    """``--dry-run --only tune`` (issue 14): every ``pointprobe tune`` method (SparseUNet) and every
    ``videoprobe tune`` method (VideoMAE-layout ViT from a file) runs one step on the CPU in this process,
    each with a finished row carrying its metric and costs; the CPU-vs-device agreement figures are there
    (CPU vs CPU here: equal)."""
    assert check_cuda.main(["--dry-run", "--only", "tune", "--out", str(tmp_path)]) == 0
    (rec,) = json.loads((tmp_path / "check_cuda_dry.json").read_text())
    assert rec["ok"] and rec["finished"] == rec["of"] == 13
    runs = {r["run"]: r for r in rec["runs"]}
    points = [f"points sparseunet {m}" for m, _ in check_cuda.TUNE_POINT_METHODS]
    video = [f"video videomae_vit_tiny {m}" for m, _ in check_cuda.TUNE_VIDEO_METHODS]
    assert list(runs) == points + video
    for name, r in runs.items():
        assert r["finished"] is True, name
        assert r["metric"] == ("mIoU" if name.startswith("points") else "top1")
        assert 0.0 <= r["value"] <= 100.0 and r["trainable_params"] > 0 and r["step_time_s"] > 0
        assert r["memory_kind"] in ("cpu_peak_rss_train", "cpu_max_rss_process") and r["peak_memory_mb"] > 0
        assert r["autocast_bf16"] is False  # bf16 autocast is for CUDA only
    assert runs["points sparseunet mezo"]["method"] == "mezo-ssf"
    assert runs["video videomae_vit_tiny mezo"]["method"] == "mezo-ssf"
    assert runs["points sparseunet full"]["trainable_pct"] == 100.0
    assert rec["linear fp32 first-step loss rel diff"] == 0.0
    assert rec["linear standardisation rel diff"] == 0.0
    md = check_cuda.markdown([rec])
    assert "points sparseunet lora: mIoU" in md and "runs:" not in md
    assert "1 checks ran on the CPU, 0 failed" in capsys.readouterr().out
    check_cuda.RESULTS.clear()


def test_only_tune_runs_the_tune_check_alone_on_cuda(monkeypatch, tmp_path):
    """``--only tune`` on a GPU machine: the generated scenes, then only the tune check, on cuda with 3
    steps per method (2 with ``--quick``); nothing else runs. CUDA and the check itself are stubbed."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(check_cuda, "scenes", lambda root, n: calls.append(("scenes", n)) or root)
    monkeypatch.setattr(check_cuda, "first_scene", lambda data: None)
    monkeypatch.setattr(check_cuda, "machine_line", lambda: "stub machine")
    monkeypatch.setattr(check_cuda, "check_tune",
                        lambda data, tmp, dev, steps: calls.append(("tune", dev, steps)))
    for name in [n for n in dir(check_cuda) if n.startswith("check_") and n != "check_tune"] + ["gpu_path"]:
        monkeypatch.setattr(check_cuda, name, lambda *a, _n=name, **k: calls.append(_n))
    check_cuda.RESULTS.clear()
    assert check_cuda.main(["--only", "tune", "--out", str(tmp_path)]) == 0
    assert check_cuda.main(["--only", "tune", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == [("scenes", 5), ("tune", "cuda", 3), ("scenes", 5), ("tune", "cuda", 2)]
    assert check_cuda.section_name("tune") == "check_cuda_tune"
