"""The three console scripts answer --help, and errors become one line with exit code 2."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from common.cli import run_cli
from common.errors import InputError


@pytest.mark.parametrize("module", ["pointprobe.cli", "videoprobe.cli", "tools.featviz"])
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
