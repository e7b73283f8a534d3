"""tools/bench_test_suite.py: the suite's counts, wall time and temp-disk peak, measured on a tiny suite."""
from __future__ import annotations

import os
import textwrap

from tools.bench_test_suite import disk_bytes, main, parse_summary

TINY_SUITE = textwrap.dedent('''
    import time

    import pytest


    def test_writes_eight_megabytes(tmp_path):
        (tmp_path / "blob.bin").write_bytes(b"\\1" * 8_000_000)   # real blocks, not a sparse file
        time.sleep(0.6)                                           # long enough for several samples


    def test_quick():
        assert 1 + 1 == 2


    @pytest.mark.skip(reason="shows up as skipped")
    def test_skipped():
        pass
''')


def test_parse_summary_reads_the_last_summary_line():
    out = "tests/a.py ..F\n= 1 failed, 10 passed, 2 skipped, 1 error in 3.25s =\n"
    assert parse_summary(out) == {"failed": 1, "passed": 10, "skipped": 2, "errors": 1}
    assert parse_summary("994 passed, 8 skipped in 1017.31s (0:16:57)\n") == {"passed": 994, "skipped": 8}
    assert parse_summary("collected 0 items\n") == {}


def test_disk_bytes_counts_allocated_blocks(tmp_path):
    assert disk_bytes(tmp_path) < 100_000
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.bin").write_bytes(os.urandom(3_000_000))
    big = tmp_path / "pytest-of-me" / "pytest-7" / "test_big0"
    big.mkdir(parents=True)
    (big / "g.bin").write_bytes(os.urandom(5_000_000))
    by_entry: dict[str, int] = {}
    assert 8_000_000 <= disk_bytes(tmp_path, by_entry) < 8_400_000
    assert max(by_entry, key=by_entry.get) == "pytest-of-me/pytest-7/test_big0"
    assert 3_000_000 <= by_entry["sub"] < 3_200_000


def test_the_tool_measures_a_tiny_suite_and_writes_its_section(tmp_path, capsys):
    suite = tmp_path / "suite" / "test_tiny.py"
    suite.parent.mkdir()
    suite.write_text(TINY_SUITE)
    # the repository's pyproject setting, for a suite outside the repository
    (suite.parent / "pytest.ini").write_text("[pytest]\ntmp_path_retention_policy = failed\n")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- begin other -->\n## other\n\nkept\n<!-- end other -->\n")
    out = tmp_path / "out"
    rc = main(["--out", str(out), "--interval", "0.05", "--doc", str(doc), "--", str(suite)])
    assert rc == 0
    text = doc.read_text()
    assert "## other\n\nkept" in text                     # another tool's section untouched
    row = next(ln for ln in text.splitlines() if ln.startswith("| passed |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2 passed, 1 skipped"
    peak_mb = float(cells[3])
    assert 8 <= peak_mb < 20                              # the 8 MB file was seen, nothing much else
    assert float(cells[5]) < 1                            # the passing test's tmp_path was deleted (ini)
    assert not (out / "tmp").exists()                     # the tool removes its folder after a pass
    assert "tests/conftest.py states" in text and "met" in text
    assert f"`python tools/bench_test_suite.py --out {out} --interval 0.05 --doc {doc} -- {suite}`" in text
    assert "/test_writes_eight_megabytes0` (8 MB" in text  # the test behind the peak is named
    assert (out / "pytest.log").read_text().count("passed") >= 1


def test_a_failing_suite_keeps_its_temp_folder_and_returns_pytests_status(tmp_path):
    suite = tmp_path / "suite" / "test_fail.py"
    suite.parent.mkdir()
    suite.write_text("def test_fails(tmp_path):\n    (tmp_path / 'x').write_text('x')\n    assert False\n")
    doc = tmp_path / "benchmarks.md"
    out = tmp_path / "out"
    rc = main(["--out", str(out), "--interval", "0.05", "--doc", str(doc), "--", str(suite)])
    assert rc == 1
    assert "FAILED (pytest exit 1) | 1 failed |" in doc.read_text()
    assert (out / "tmp").is_dir()                         # kept for a look at the failed test's files
