"""Suite-wide checks that run before any test."""
from __future__ import annotations

import shutil
import tempfile

import pytest

# The suite's files peak at about 0.3 GB in the temporary folder (314 MB measured by
# tools/bench_test_suite.py on 2026-12-01, 1 s samples; pyproject's tmp_path_retention_policy = "failed"
# deletes a passing test's tmp_path at its teardown). Below NEED_FREE_BYTES tests would fail by hundreds
# with "No space left on device" in the middle of writing; one line up front says why instead.
SUITE_PEAK_BYTES = 400_000_000
NEED_FREE_BYTES = 1_000_000_000


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop with one line when the temporary folder's disk cannot hold the suite's files."""
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free
    if free < NEED_FREE_BYTES:
        pytest.exit(f"{tmp}: only {free / 1e9:.2f} GB free; the test suite writes up to about "
                    f"{SUITE_PEAK_BYTES / 1e9:.1f} GB there "
                    f"(needs {NEED_FREE_BYTES / 1e9:.1f} GB free): free some space or point TMPDIR at a "
                    f"larger disk", returncode=1)
