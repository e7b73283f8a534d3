"""Larger-than-RAM probe training: ``pointprobe probe`` on a feature cache bigger than the machine's memory
(ProbeData's streaming window path) against the in-memory path on a cache that fits.

The caches are written straight through ``common.cache.fill_cache`` by a cheap generator (no encoder,
no scenes): float16 rows of ``--dim`` channels drawn from a fixed bank of Gaussian rows (each item a
different rotation of the bank) and labels that a linear probe can learn (the arg-max of 20 fixed
directions, about 5 % unlabelled). Three runs of ``pointprobe probe`` (eval_source=cache), each its own
process so its peak RSS is its own (``ru_maxrss``):

- small cache, in memory (``probe.max_ram_gb`` above its float32 size: ``ProbeData.load``);
- small cache, streamed (``probe.max_ram_gb=0``: ``ProbeData.iter_windows``);
- big cache (larger than RAM), streamed.

rows/s = labelled training rows x epochs / wall seconds of the whole command (normaliser passes,
training, head selection and scoring included), the same for every run. The big cache is deleted as
soon as its run ends; the tool refuses to start when the disk has less than the caches + 10 GB free.

    nice -n 10 python -m tools.bench_probe_memory --big-gb 26 --small-gb 1.5 --work /tmp/bench_probe_memory
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SECTION = "bench_probe_memory"
NUM_CLASSES = 20
MARGIN = 10e9  # disk kept free beyond the caches


def row_bytes(dim: int) -> int:
    """Cache bytes of one row: float16 features and an int64 label."""
    return dim * 2 + 8


def item_rows(rows: int, per_item: int) -> list[int]:
    """Rows of each item for ``rows`` in total, ``per_item`` each (the last one shorter)."""
    return [min(per_item, rows - s) for s in range(0, rows, per_item)]


class RowBank:
    """The cheap "encoder": ``bank_rows`` fixed Gaussian float16 rows of ``dim`` channels; item ``i`` is
    the bank rotated by a seeded offset and tiled to its length; labels = arg-max over 20 fixed
    directions of the first 64 channels (learnable by a linear probe), about 5 % set to -1."""

    def __init__(self, dim: int, bank_rows: int = 16384, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.bank = rng.standard_normal((bank_rows, dim), dtype=np.float32).astype(np.float16)
        self.k = min(dim, 64)  # labels depend on the first k channels (cheap to compute)
        self.directions = rng.standard_normal((self.k, NUM_CLASSES)).astype(np.float32) / self.k ** 0.5
        self.bias = np.linspace(-0.5, 0.5, NUM_CLASSES, dtype=np.float32)

    def item(self, i: int, n: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, i))
        off = int(rng.integers(len(self.bank)))
        reps = -(-(n + off) // len(self.bank))
        feats = np.concatenate([self.bank] * reps)[off : off + n] if reps > 1 else self.bank[off : off + n]
        feats = np.ascontiguousarray(feats)
        labels = np.argmax(feats[:, : self.k].astype(np.float32) @ self.directions + self.bias,
                           axis=1).astype(np.int64)
        labels[rng.random(n) < 0.05] = -1
        return {"features": feats, "labels": labels}


def write_cache(folder: Path, split: str, rows: int, dim: int, per_item: int, seed: int,
                bank: RowBank | None = None) -> dict:
    """A cache of ``rows`` generated rows in items of ``per_item`` at ``folder/split``: (bytes, seconds)."""
    from common.cache import CacheKey, fill_cache

    bank = bank or RowBank(dim, seed=seed)
    sizes = item_rows(rows, per_item)
    names = [f"item{i:05d}" for i in range(len(sizes))]
    key = CacheKey(encoder="generated_rows", checkpoint_sha256="", config_hash=f"dim{dim}-seed{seed}",
                   preprocessing={"bench": SECTION}, dataset=str(folder.resolve()), split=split)
    meta = {"label_set": "segment20", "encoder": {"label": f"generated rows ({dim} dims)"},
            "num_scenes": len(names)}
    t0 = time.perf_counter()
    fill_cache(folder / split, key, dim, "float16", names,
               lambda name: bank.item(int(name[4:]) + (0 if split == "train" else 10**6),
                                      sizes[int(name[4:])]),
               meta=meta, progress=False)
    return {"bytes": _du(folder / split), "seconds": time.perf_counter() - t0}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mem_total() -> int:
    """Bytes of memory of this machine (``/proc/meminfo``; 0 when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_disk(work: Path, need: float, margin: float = MARGIN) -> None:
    """Refuse (SystemExit, one line) when ``work``'s disk has less than ``need`` + ``margin`` free."""
    from common.paths import free_bytes, human_bytes

    free = free_bytes(work)
    if free is not None and free < need + margin:
        raise SystemExit(f"{work}: {human_bytes(free)} free, the caches need {human_bytes(need)} + "
                         f"{human_bytes(margin)} kept free: not starting")


_STEP = re.compile(r"linear probe \(\d+ heads[^)]*\): (\d+)/(\d+)")


def _hwm_kib(pid: int) -> int:
    """Peak resident set (VmHWM, KiB) of a running process (0 when gone)."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    except (OSError, AttributeError):
        return 0


def run_probe(folder: Path, out: Path, log: Path, max_ram_gb: float, epochs: int,
              timeout: float | None = None, batch: int = 4096, poll: float = 1.0) -> dict:
    """``pointprobe probe`` on ``folder`` in its own process: wall seconds, peak RSS, training rows, and
    the training loop's rows/s seen from its progress lines (polled every ``poll`` s). After
    ``timeout`` seconds the run is stopped and reported as unfinished (peak RSS so far, VmHWM)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pointprobe.cli", "probe", f"features=[{folder}]", f"out={out}",
           "eval_source=cache", "max_train_points=0", f"probe.epochs={epochs}", "probe.lrs=[0.01]",
           "probe.wds=[0.0]", "probe.normalize=none", f"probe.max_ram_gb={max_ram_gb}",
           f"probe.batch_size={batch}", "n_boot=10", "device=cpu"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    t0 = time.perf_counter()
    seen: list[tuple[float, int]] = []  # (seconds, training steps done) when the count changed
    hwm = 0
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                now = time.perf_counter() - t0
                steps = [int(m.group(1)) for m in _STEP.finditer(log.read_text(errors="replace"))]
                if steps and (not seen or steps[-1] != seen[-1][1]):
                    seen.append((now, steps[-1]))
                if pid:
                    break
                hwm = max(hwm, _hwm_kib(proc.pid))
                if timeout is not None and now > timeout:
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(poll)
        except BaseException:  # stopped: the child goes too (it holds the cache files open)
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    train_rps = ((seen[-1][1] - seen[0][1]) * batch / (seen[-1][0] - seen[0][0])
                 if len(seen) >= 2 and seen[-1][0] > seen[0][0] else float("nan"))
    res = {"seconds": wall, "peak_rss_mib": max(usage.ru_maxrss, hwm) / 1024, "train_rps": train_rps,
           "steps_done": seen[-1][1] if seen else 0}
    finished = (out / "results.json").is_file()
    if not finished:
        if timeout is None:
            raise SystemExit(f"{' '.join(cmd)}: failed\n{log.read_text()[-3000:]}")
        m = re.search(r"(\d+) labelled points", log.read_text(errors="replace"))
        res.update({"finished": False, "train_rows": int(m.group(1)) if m else 0, "rows_per_s": float("nan"),
                    "mIoU": float("nan")})
        return res
    row = json.loads((out / "results.json").read_text())["rows"][0]
    rows = int(row["train points"])  # labelled rows of the train split (15 % hold-out incl.)
    res.update({"finished": True, "train_rows": rows, "rows_per_s": rows * epochs / wall,
                "mIoU": float(row["mIoU"])})
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-gb", type=float, default=26.0, help="size of the larger-than-RAM cache (GB)")
    ap.add_argument("--small-gb", type=float, default=1.5, help="size of the cache that fits (GB)")
    ap.add_argument("--dim", type=int, default=1232)
    ap.add_argument("--item-rows", type=int, default=131072, help="rows per cache item (a 'scene')")
    ap.add_argument("--val-rows", type=int, default=200_000, help="rows of the evaluation split")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/bench_probe_memory")
    ap.add_argument("--doc", default="docs/benchmarks.md")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--skip-big", action="store_true", help="the small cache only (a quick check)")
    ap.add_argument("--big-timeout", type=float, default=None,
                    help="stop the big run after this many seconds and report it as unfinished")
    ap.add_argument("--doc-only", action="store_true", help="write the section from WORK/results.json")
    ap.add_argument("--note", action="append", default=[], help="a line added to the section's notes")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    from common.paths import human_bytes

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.doc_only:  # the section from WORK/results.json (e.g. of a run stopped after some runs)
        write_section(json.loads((work / "results.json").read_text()), Path(args.doc), args, mem_total(),
                      human_bytes)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still deletes the caches
    rb = row_bytes(args.dim)
    big_rows, small_rows = int(args.big_gb * 1e9 // rb), int(args.small_gb * 1e9 // rb)
    check_disk(work, (big_rows + small_rows + 2 * args.val_rows) * rb)
    runs = []
    bank = RowBank(args.dim, seed=args.seed)
    small, big = work / "small", work / "big"
    written: dict[str, dict] = {}

    def measure(folder: Path, mode: str, ram: float, timeout: float | None = None) -> None:
        tag = f"{folder.name}_{mode.split()[-1]}"
        r = run_probe(folder, work / f"probe_{tag}", work / f"{tag}.log", ram, args.epochs, timeout)
        r.update({"cache": folder.name, "path": mode, "cache_bytes": written[folder.name]["bytes"],
                  "write_s": written[folder.name]["seconds"]})
        print(json.dumps(r), flush=True)
        runs.append(r)
        (work / "results.json").write_text(json.dumps(runs, indent=1) + "\n")

    def write(folder: Path, rows: int) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        written[folder.name] = write_cache(folder, "train", rows, args.dim, args.item_rows, args.seed, bank)
        write_cache(folder, "val", args.val_rows, args.dim, args.item_rows, args.seed, bank)

    # the cache that fits, in memory and streamed; then the big one (deleted as soon as its run ends)
    try:
        write(small, small_rows)
        measure(small, "in memory", 1e6)
        measure(small, "streamed", 0.0)
        shutil.rmtree(small, ignore_errors=True)
        if not args.skip_big:
            write(big, big_rows)
            measure(big, "streamed", 0.0, args.big_timeout)
            shutil.rmtree(big, ignore_errors=True)
    finally:
        for folder in (small, big):
            shutil.rmtree(folder, ignore_errors=True)
    (work / "results.json").write_text(json.dumps(runs, indent=1) + "\n")
    if not args.no_doc:
        write_section(runs, Path(args.doc), args, mem_total(), human_bytes)
    return 0


def write_section(runs: list[dict], doc: Path, args, mem: int, human_bytes) -> None:
    from common.benchdoc import machine_line, update_section

    lines = ["| cache | size on disk | x RAM | path | train rows | finished | wall s | rows/s (command) "
             "| rows/s (training loop) | peak RSS | mIoU |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        fin = "yes" if r.get("finished", True) else f"NO (stopped after {r['steps_done']} steps)"
        loop = r.get("train_rps", float("nan"))
        lines.append(f"| {r['cache']} | {human_bytes(r['cache_bytes'])} | "
                     f"{r['cache_bytes'] / mem if mem else float('nan'):.2f} | {r['path']} | "
                     f"{r['train_rows']:,} | {fin} | {r['seconds']:.0f} | {r['rows_per_s']:,.0f} | "
                     f"{'-' if loop != loop else f'{loop:,.0f}'} | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['mIoU']:.1f} |")
    body = "\n".join([
        f"`pointprobe probe` (linear, one head, {args.epochs} epoch(s), max_train_points=0, "
        "normalize=none, eval_source=cache) on feature caches written by a cheap generator "
        f"({args.dim}-dim float16 rows, labels learnable by a linear probe; see the tool's docstring), "
        f"{human_bytes(mem)} of memory on this machine. `in memory`: `ProbeData.load` "
        "(probe.max_ram_gb above the rows' float32 size); `streamed`: `ProbeData.iter_windows` "
        "(probe.max_ram_gb=0). rows/s = labelled training rows x epochs / wall seconds of the whole "
        "command (one training pass, head selection on 15 % of the items and scoring included; no "
        "normaliser, whose two extra passes over the rows would double a streamed run's reading); "
        "peak RSS is the command's ru_maxrss. The big cache was deleted right after its run.",
        "", f"Command: `python -m tools.bench_probe_memory --big-gb {args.big_gb:g} --small-gb "
        f"{args.small_gb:g} --dim {args.dim} --epochs {args.epochs}`", "", *lines, "",
        "- Before `ProbeData` released the pages it had read (MADV_DONTNEED after each copy), every page "
        "a streamed epoch touched stayed mapped and counted in the resident set (test_probe_memory).",
        "- rows/s (training loop): training steps x batch rows / seconds between the first and last "
        "progress lines of the training loop (read while it runs); the only rate of a stopped run.",
        *[f"- {t}" for t in args.note],
        "", f"Machine: {machine_line()}."])
    update_section(SECTION, body, doc)


if __name__ == "__main__":
    raise SystemExit(main())
