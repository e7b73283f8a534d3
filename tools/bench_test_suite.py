"""The test suite's own cost: wall time, test counts and the disk its temporary files take at peak.

Runs ``python -m pytest -q`` in a subprocess with ``TMPDIR`` pointed at ``<out>/tmp`` (a fresh folder:
every ``tmp_path``, ``tempfile`` folder and torchrun scratch of the suite lands there), measures that
folder's disk usage (allocated blocks, like ``du``) every ``--interval`` seconds while the suite runs, and
writes section ``bench_test_suite`` of docs/benchmarks.md: passed / skipped / failed, wall minutes,
the peak and what was left at the end, against the numbers ``tests/conftest.py`` states
(``SUITE_PEAK_BYTES``) and refuses below (``NEED_FREE_BYTES``). The README's figures come from here.

    python tools/bench_test_suite.py                      # the whole suite (5-17 min on 2 cores)
    python tools/bench_test_suite.py -- tests/test_cache.py -x   # arguments after -- go to pytest

The temporary folder is deleted when the suite passes and kept (for a look) when it does not; the
tool exits with pytest's exit status.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTION = "bench_test_suite"
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def disk_bytes(folder: Path, by_entry: dict[str, int] | None = None) -> int:
    """Bytes allocated on disk under ``folder`` (st_blocks x 512, as ``du``); files that vanish while
    the folder is walked are skipped. ``by_entry`` (optional) gets the bytes per entry: a test's own
    folder for pytest's ``pytest-of-<user>/pytest-<n>/<test>``, else the top-level name."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, onerror=lambda _e: None):
        rel = Path(dirpath).relative_to(folder).parts
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_blocks * 512
            if by_entry is not None:
                parts = (*rel, name)
                key = "/".join(parts[:3] if parts[0].startswith("pytest-of-") else parts[:1])
                by_entry[key] = by_entry.get(key, 0) + st.st_blocks * 512
    return total


def parse_summary(output: str) -> dict[str, int]:
    """Counts of pytest's final summary line (``12 passed, 1 skipped in 3.2s``); ``error`` and ``errors``
    both count as ``errors``."""
    lines = [ln for ln in output.splitlines() if re.search(r"\b(passed|failed|error|errors)\b", ln)
             and re.search(r" in [\d.]+s", ln)]
    counts: dict[str, int] = {}
    if lines:
        for n, kind in _COUNT.findall(lines[-1]):
            kind = "errors" if kind.startswith("error") else kind
            counts[kind] = counts.get(kind, 0) + int(n)
    return counts


class DiskSampler:
    """Samples ``disk_bytes(folder)`` every ``interval`` seconds in a thread; keeps the peak and when."""

    def __init__(self, folder: Path, interval: float):
        self.folder, self.interval = folder, interval
        self.peak, self.peak_at, self.samples = 0, 0.0, 0
        self.peak_entry, self.peak_entry_bytes = "", 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        by_entry: dict[str, int] = {}
        used = disk_bytes(self.folder, by_entry)
        self.samples += 1
        if used > self.peak:
            self.peak, self.peak_at = used, time.monotonic() - self._t0
            if by_entry:
                self.peak_entry, self.peak_entry_bytes = max(by_entry.items(), key=lambda kv: kv[1])
        return used

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_suite(out: Path, pytest_args: list[str], interval: float) -> dict:
    """Run pytest with TMPDIR = ``out/tmp``; its output goes to the terminal and to ``out/pytest.log``."""
    tmp = out / "tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # an earlier run's kept folder, inside the output folder
    tmp.mkdir(parents=True)
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    log_path = out / "pytest.log"
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    lines: list[str] = []
    with DiskSampler(tmp, interval) as sampler, open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
        rc = proc.wait()
    wall = time.monotonic() - t0
    left = sampler.sample()
    result = {
        "rc": rc, "wall_s": wall, "counts": parse_summary("".join(lines)), "peak_bytes": sampler.peak,
        "peak_at_s": sampler.peak_at,
        "peak_entry": sampler.peak_entry, "peak_entry_bytes": sampler.peak_entry_bytes,
        "left_bytes": left, "samples": sampler.samples,
        "load_start": load0, "load_end": os.getloadavg()[0],
    }
    if rc == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def section(result: dict, command: str, interval: float) -> str:
    """The markdown of section bench_test_suite for one run."""
    from common.benchdoc import machine_line

    spec = importlib.util.spec_from_file_location("suite_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    SUITE_PEAK_BYTES, NEED_FREE_BYTES = conftest.SUITE_PEAK_BYTES, conftest.NEED_FREE_BYTES
    c = result["counts"]
    counts = ", ".join(f"{c[k]} {k}" for k in ("passed", "skipped", "failed", "errors", "deselected",
                                                "xfailed", "xpassed") if c.get(k)) or "no summary line"
    mb = 1e6
    peak = result["peak_bytes"]
    status = "passed" if result["rc"] == 0 else f"FAILED (pytest exit {result['rc']})"
    return "\n".join([
        f"Machine: {machine_line()}.",
        "",
        f"Command: `{command}` (pytest in a subprocess with TMPDIR a fresh folder of its own; that folder's "
        f"allocated bytes sampled every {interval:g} s, {result['samples']} samples).",
        "",
        "| suite | tests | wall min | temp peak MB | at min | left at the end MB | load (start / end) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        f"| {status} | {counts} | {result['wall_s'] / 60:.1f} | {peak / mb:.0f} | "
        f"{result['peak_at_s'] / 60:.1f} | {result['left_bytes'] / mb:.0f} | "
        f"{result['load_start']:.1f} / {result['load_end']:.1f} |",
        "",
        f"- the largest entry at the peak: `{result['peak_entry'] or '-'}` "
        f"({result['peak_entry_bytes'] / mb:.0f} MB; a test's tmp_path is named after the test)",
        f"- temp peak / the figure tests/conftest.py states (SUITE_PEAK_BYTES, "
        f"{SUITE_PEAK_BYTES / mb:.0f} MB): {peak / SUITE_PEAK_BYTES:.2f}",
        f"- temp peak below the free space the suite insists on (NEED_FREE_BYTES, "
        f"{NEED_FREE_BYTES / mb:.0f} MB): "
        f"{'met' if peak < NEED_FREE_BYTES else 'NOT met: raise NEED_FREE_BYTES'}",
        "- left at the end: what the suite did not delete (pytest keeps the tmp_path of failed tests, "
        "pyproject's tmp_path_retention_policy); the tool deletes the folder when the suite passes",
        "- wall time includes collection and the slowest tests (`make test` prints the 15 slowest); "
        "a fresh clone adds the virtual environment's set-up (about 6 min on 2 cores, 2026-12-01)",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    tool_args = [a for a in argv if a != "--no-doc"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="arguments after -- are passed to pytest (default: the whole suite)")
    ap.add_argument("--out", default="runs/bench-test-suite",
                    help="folder for the suite's temporary files (out/tmp) and its log (out/pytest.log)")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between disk samples")
    ap.add_argument("--doc", default=None, help="benchmarks document (default docs/benchmarks.md)")
    ap.add_argument("--no-doc", action="store_true", help="print the section instead of writing it")
    args = ap.parse_args(argv)
    if args.interval <= 0:
        ap.error(f"--interval must be > 0 (got {args.interval:g})")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = run_suite(out, pytest_args, args.interval)
    passed_on = ["--", *pytest_args] if pytest_args else []
    shown = " ".join(["python tools/bench_test_suite.py", *tool_args, *passed_on])
    md = section(result, shown, args.interval)
    if args.no_doc:
        print(md)
    else:
        from common.benchdoc import update_section

        path = update_section(SECTION, md, args.doc)
        print(f"bench_test_suite: section written to {path}")
    print(f"bench_test_suite: {result['wall_s'] / 60:.1f} min, "
          f"temp peak {result['peak_bytes'] / 1e6:.0f} MB, pytest exit {result['rc']}")
    return result["rc"]


if __name__ == "__main__":
    raise SystemExit(main())
