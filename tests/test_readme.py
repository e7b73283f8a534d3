"""The README's Python examples run as written, and the commands it names exist."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_a_python_example():
    blocks = _blocks("python")
    assert blocks, "README.md has no ```python block"
    text = "\n".join(blocks)
    for name in ("load_encoder", "encode_points", "create_video_encoder", "FeatureCache"):
        assert name in text


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs(index, tmp_path):
    """Each ```python block runs in a fresh interpreter (no network: offline hub settings)."""
    code = _blocks("python")[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path),
           "PROBESUITE_PROGRESS_SECONDS": "3600"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, f"README python block {index} failed:\n{code}\n--- stderr\n{r.stderr[-3000:]}"


def test_readme_commands_exist():
    """Sub-commands and flags the 'running the commands yourself' section uses are real."""
    import importlib

    text = README.read_text()
    section = text.split("## After `make demo`", 1)[1].split("\n## ", 1)[0]
    assert "source .venv/bin/activate" in section and ".venv/bin/pointprobe" in section
    for prog in ("pointprobe", "videoprobe"):
        parser = importlib.import_module(f"{prog}.cli").build_parser()
        sub = next(a for a in parser._actions if isinstance(a.choices, dict))
        for cmd, flag in re.findall(rf"{prog} ([a-z][a-z-]*)(?: (--[a-z-]+))?", section):
            assert cmd in sub.choices, f"{prog} {cmd}"
            if flag:
                assert flag in sub.choices[cmd]._option_string_actions, f"{prog} {cmd} {flag}"


def test_make_says_what_each_pip_step_installs(tmp_path):
    """The quiet pip installs of `make demo` / `make test` are each announced by an echo line first."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    r = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", "setup-dev"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    pip = [i for i, line in enumerate(lines) if "pip install" in line]
    assert len(pip) == 3
    for i in pip:
        assert lines[i - 1].startswith("echo "), lines[i - 1]
    assert "torch" in lines[pip[0] - 1] and "first time" in lines[pip[0] - 1]
