"""ScanNet-sized point pipeline: disk, peak RSS and wall time of extract + probe at N generated scenes.

Scenes are sampled cheaply over simple room geometry (floor, four walls, a few boxes of furniture) with
ScanNet's point-count spread (log-normal, median 1.2e5, clipped to [2e4, 5.5e5]); the encoder is
``randproj`` (a fixed random projection of the 9 input channels to 1,232 dims: the data path is what
is measured). Each stage runs in its own process (``pointprobe extract`` with a subsampled training
split and ``storage val: none``, then ``pointprobe probe eval_source=stream``) so its peak RSS is its
own. Numbers for N beyond the measured ones are a log-log least-squares extrapolation, said so.

The scenes are generated once into a pool (``WORK/scenes``; scene i is in the val split when
``i * 312 mod 1513 < 312``, so the first N scenes of the pool are the N-scene dataset for every
N and the largest N is ScanNet's 1,201 / 312 split); the N-scene dataset ``WORK/dataN`` links them.
Resumable: a second launch skips the N already in ``WORK/results.json`` and continues a half-done
extraction (finished scenes are kept by the cache; ``resumed`` in the row says its extract time is of
the last launch only).

    nice -n 10 python -m tools.bench_scale_points --scenes 100 400 1513 --work /tmp/bench_scale_points
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SECTION = "bench_scale_points"
FULL_SIZE = 1513  # ScanNet v2 scans (train 1,201 + val 312)
DIM = 1232  # Sonata's up-cast feature width
VAL_FRACTION = 312 / 1513


def _randproj_class():
    import torch

    from pointprobe.models.structure import PointEncoder

    class RandProj(PointEncoder):
        """A fixed random projection of the 9 input channels (xyz, rgb, normal) to ``out_dim`` dims: a
        cheap deterministic encoder, so the data path around it is what the bench measures."""

        arch = "randproj"

        def __init__(self, in_channels: int = 9, out_dim: int = DIM, seed: int = 0):
            super().__init__()
            self.config = {"in_channels": in_channels, "out_dim": out_dim, "seed": seed}
            self.in_channels, self.out_dim = in_channels, out_dim
            g = torch.Generator().manual_seed(seed)
            w = torch.randn(in_channels, out_dim, generator=g) / in_channels ** 0.5
            self.register_buffer("weight", w)

        def feature_dim(self, levels: int | None = None) -> int:
            return self.out_dim

        def encode(self, point, levels: int | None = None):
            return point.feat.float() @ self.weight

        def forward(self, point):
            point.feat = self.encode(point)
            return point

    return RandProj


def register_randproj() -> None:
    """Add ``randproj`` to ``pointprobe.models.ENCODERS`` in this process (the bench's stages only)."""
    from pointprobe.models.registry import ENCODERS, EncoderSpec

    ENCODERS.setdefault("randproj", EncoderSpec("randproj", _randproj_class()))


def scene_sizes(n: int, seed: int = 0, median: float = 1.2e5, sigma: float = 0.45) -> np.ndarray:
    """Point counts of ``n`` scenes: log-normal around ScanNet's median, clipped to its range."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), sigma, n), 2e4, 5.5e5).astype(np.int64)


def room_scene(n_points: int, seed: int) -> dict[str, np.ndarray]:
    """One room of ``n_points`` surface points: arrays of the preprocessed ScanNet layout.

    Floor (class 1), walls (class 0) and 3-6 boxes of random furniture classes; about 5 % of the points
    unlabelled (-1); colours by class plus noise; normals of the sampled faces."""
    rng = np.random.default_rng(seed)
    w, d, h = rng.uniform(3.0, 8.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 3.0)
    # surfaces: (origin, u axis, v axis, normal, class)
    surf = [((0, 0, 0), (w, 0, 0), (0, d, 0), (0, 0, 1), 1),
            ((0, 0, 0), (w, 0, 0), (0, 0, h), (0, 1, 0), 0), ((0, d, 0), (w, 0, 0), (0, 0, h), (0, -1, 0), 0),
            ((0, 0, 0), (0, d, 0), (0, 0, h), (1, 0, 0), 0), ((w, 0, 0), (0, d, 0), (0, 0, h), (-1, 0, 0), 0)]
    for _ in range(int(rng.integers(3, 7))):
        bx, by, bz = rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.2)
        x0, y0 = rng.uniform(0, w - bx), rng.uniform(0, d - by)
        c = int(rng.integers(2, 20))
        surf += [((x0, y0, bz), (bx, 0, 0), (0, by, 0), (0, 0, 1), c),
                 ((x0, y0, 0), (bx, 0, 0), (0, 0, bz), (0, -1, 0), c),
                 ((x0, y0 + by, 0), (bx, 0, 0), (0, 0, bz), (0, 1, 0), c),
                 ((x0, y0, 0), (0, by, 0), (0, 0, bz), (-1, 0, 0), c),
                 ((x0 + bx, y0, 0), (0, by, 0), (0, 0, bz), (1, 0, 0), c)]
    o, u, v, nrm, cls = (np.array([s[i] for s in surf], dtype=np.float64) for i in range(5))
    area = np.linalg.norm(np.cross(u, v), axis=1)
    which = rng.choice(len(surf), size=n_points, p=area / area.sum())
    a, b = rng.random(n_points)[:, None], rng.random(n_points)[:, None]
    coord = (o[which] + a * u[which] + b * v[which] + rng.normal(0, 0.005, (n_points, 3))).astype(np.float32)
    label = cls[which].astype(np.int64)
    palette = np.random.default_rng(1234).integers(30, 225, (20, 3))
    color = np.clip(palette[label] + rng.normal(0, 12, (n_points, 3)), 0, 255).astype(np.uint8)
    label[rng.random(n_points) < 0.05] = -1
    return {"coord": coord, "color": color, "normal": nrm[which].astype(np.float32),
            "segment20": label, "segment200": label.copy(), "instance": np.full(n_points, -1, np.int64)}


def write_scene(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """The scene's arrays as ``folder/<key>.npy``; labels as int16 (ScanNet's ids fit), written to a
    temporary folder renamed at the end, so a killed run never leaves a half-written scene."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    for k, a in arrays.items():
        np.save(tmp / f"{k}.npy", a.astype(np.int16) if a.dtype == np.int64 else a)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def split_of(i: int) -> str:
    """Split of pool scene ``i``: val at ScanNet's rate, spread evenly (scene 0 first; exactly 312 of
    the first 1,513, as 312 and 1,513 are coprime)."""
    return "val" if (i * 312) % FULL_SIZE < 312 else "train"


def generate(root: Path, n: int, seed: int = 0, sizes: np.ndarray | None = None,
             pool: Path | None = None) -> dict[str, int]:
    """``n`` scenes under ``root/{train,val}/sceneXXXX_00`` (about ScanNet's val share); returns points.

    With ``pool`` the scenes are written once to ``pool/sceneXXXX_00`` (kept between sizes and runs)
    and ``root`` holds links to them; scenes already in the pool are not generated again."""
    sizes = scene_sizes(n, seed) if sizes is None else sizes
    out = {}
    for i, k in enumerate(sizes):
        split, name = split_of(i), f"scene{i:04d}_00"
        folder = root / split / name
        src = folder if pool is None else pool / name
        if not (src / "instance.npy").exists():
            write_scene(src, room_scene(int(k), seed * 100_003 + i))
        if pool is not None and not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.symlink_to(src.resolve(), target_is_directory=True)
        out[f"{split}/{name}"] = int(k)
    return out


def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (links to scene folders followed: the data they point to)."""
    total = 0
    for dirpath, _, files in os.walk(path, followlinks=True):
        total += sum(os.stat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def _stage(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one stage in a child process: wall seconds, that child's own peak RSS (``os.wait4``) and the
    machine's mean 1-minute load average while it ran (sampled every 10 s: other jobs slow a stage)."""
    import threading

    t0 = time.perf_counter()
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10.0):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}\n{log.read_text()[-3000:]}")
    return {"seconds": wall, "peak_rss_kib": usage.ru_maxrss,  # KiB on Linux
            "load": float(np.mean(loads)) if loads else os.getloadavg()[0]}


def run_one(n: int, work: Path, seed: int = 0, max_train_points: int = 2_000_000) -> dict:
    """Generate ``n`` scenes (or reuse the pool's), extract (train subsampled, val not stored), probe
    (streamed eval). A cache left by an interrupted launch is continued (extraction resumes per scene)."""
    root = work / f"data{n}"
    t0 = time.perf_counter()
    points = generate(root, n, seed, pool=work / "scenes")
    gen_s = time.perf_counter() - t0
    feats, probe_out = work / f"feat{n}", work / f"probe{n}"
    resumed = (feats / "train").exists()
    shutil.rmtree(probe_out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    py = [sys.executable, "-m", "tools.bench_scale_points", "--stage"]
    ex = _stage(py + ["extract", f"data.root={root}", f"out={feats}", "encoder.name=randproj",
                      "storage={train: subsample, val: none}", f"max_train_points={max_train_points}",
                      "device=cpu"], env, work / f"extract{n}.log")
    disk = _du(feats)
    pr = _stage(py + ["probe", f"features=[{feats}]", f"out={probe_out}", "eval_source=stream",
                      f"max_train_points={max_train_points}", "probe.epochs=2", "probe.wds=[0.0]",
                      "n_boot=100", "device=cpu"], env, work / f"probe{n}.log")
    res = json.loads((probe_out / "results.json").read_text())
    n_train = sum(k.startswith("train/") for k in points)
    return {"scenes": n, "points": int(sum(points.values())), "max_train_points": max_train_points,
            "train_scenes": n_train, "val_scenes": n - n_train,
            "train_points": int(sum(v for k, v in points.items() if k.startswith("train/"))),
            "generate_s": gen_s, "extract_s": ex["seconds"], "extract_rss_mib": ex["peak_rss_kib"] / 1024,
            "probe_s": pr["seconds"], "probe_rss_mib": pr["peak_rss_kib"] / 1024, "disk_bytes": disk,
            "extract_load": ex["load"], "probe_load": pr["load"],
            "data_bytes": _du(root), "mIoU": res["rows"][0]["mIoU"], "resumed": resumed,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def loglog_fit(rows: list[dict], y_key: str, x_key: str = "scenes") -> tuple[float, float]:
    """(slope, intercept) of the least-squares line of log ``y_key`` against log ``x_key`` (1 = linear)."""
    x = np.log([max(r[x_key], 1) for r in rows])
    y = np.log([max(r[y_key], 1e-9) for r in rows])
    slope, icpt = np.polyfit(x, y, 1)
    return float(slope), float(icpt)


def extrapolate(rows: list[dict], key: str, n: int) -> float:
    """log-log least-squares fit of ``key`` against scenes, evaluated at ``n`` (an extrapolation)."""
    slope, icpt = loglog_fit(rows, key)
    return float(np.exp(icpt + slope * np.log(n)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--stage"]:  # one stage in its own process, with randproj registered
        register_randproj()
        from pointprobe.cli import main as cli

        return cli(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--work", default="/tmp/bench_scale_points")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", default="docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and caches")
    ap.add_argument("--max-train-points", type=int, default=2_000_000,
                    help="the probe's cap (also sizes the training subsample: cap / training scenes)")
    ap.add_argument("--no-doc", action="store_true", help="print the rows only, leave docs/benchmarks.md")
    ap.add_argument("--note", action="append", default=[], help="a line added to the section's notes")
    ap.add_argument("--doc-only", action="store_true", help="write the section from WORK/results.json only")
    ap.add_argument("--redo", action="store_true", help="measure sizes already in WORK/results.json again")
    ap.add_argument("--keep-data", action="store_true", help="keep the generated scene pool at the end")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res_file = work / "results.json"  # rows of earlier runs (other N, same settings) are kept
    old = json.loads(res_file.read_text()) if res_file.exists() else []
    merged = {r["scenes"]: r for r in old if r.get("max_train_points") == args.max_train_points}
    if args.doc_only:  # the section from WORK/results.json, nothing run
        rows = [merged[k] for k in sorted(merged)]
        write_section(rows, Path(args.doc), " ".join(str(r["scenes"]) for r in rows), args.max_train_points,
                      todo=_todo(args, merged), work=args.work, extra=args.note)
        return 0
    for n in args.scenes:
        if n in merged and not args.redo:
            print(f"{n} scenes: measured before ({res_file}), skipped (--redo measures it again)", flush=True)
            continue
        r = run_one(n, work, args.seed, args.max_train_points)
        print(json.dumps(r), flush=True)
        merged[n] = r
        rows = [merged[k] for k in sorted(merged)]
        res_file.write_text(json.dumps(rows, indent=1) + "\n")  # each N as it finishes: a rerun resumes
        if not args.keep:
            for sub in (f"feat{n}", f"probe{n}"):
                shutil.rmtree(work / sub, ignore_errors=True)
        if not args.no_doc:
            write_section(rows, Path(args.doc), " ".join(str(r["scenes"]) for r in rows),
                          args.max_train_points, todo=_todo(args, merged), work=args.work)
    if not args.keep:  # the pool is kept while sizes are missing: --keep-data to keep it anyway
        if not args.keep_data:
            shutil.rmtree(work / "scenes", ignore_errors=True)
        for n in args.scenes:
            shutil.rmtree(work / f"data{n}", ignore_errors=True)
    return 0


def _todo(args, measured: dict) -> str:
    """The command that completes the sizes asked for (empty when all are measured)."""
    left = [n for n in sorted(set(args.scenes) | {FULL_SIZE}) if n not in measured]
    if not left:
        return ""
    return (f"python -m tools.bench_scale_points --scenes {' '.join(map(str, left))} "
            f"--max-train-points {args.max_train_points} --work {args.work}")


def _load(r: dict) -> str:
    """Mean load average of a row's two stages (``-`` for rows measured before it was recorded)."""
    if "extract_load" not in r:
        return "-"
    return f"{r['extract_load']:.1f} / {r['probe_load']:.1f}"


def write_section(rows: list[dict], doc: Path, scenes: str, max_train_points: int,
                  todo: str = "", work: str = "/tmp/bench_scale_points",
                  extra: list[str] | None = None) -> None:
    """The docs/benchmarks.md section: measured rows, the full size extrapolated (said so) when it
    was not measured, the targets checked, per-stage rates and their growth, the log-log plot.
    ``todo``: the command that completes the run."""
    from common.benchdoc import machine_line, update_section
    from common.paths import human_bytes

    lines = ["| scenes (train / val) | points | extract s | probe s | extract s / train scene | "
             "probe s / val scene | cache on disk | scenes on disk | peak RSS extract | peak RSS probe | "
             "load extract / probe | mIoU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['scenes']} ({r['train_scenes']} / {r['val_scenes']}; measured"
                     f"{', resumed' if r.get('resumed') else ''}) | {r['points']:,} | {r['extract_s']:.0f} | "
                     f"{r['probe_s']:.0f} | {r['extract_s'] / r['train_scenes']:.2f} | "
                     f"{r['probe_s'] / r['val_scenes']:.2f} | {human_bytes(r['disk_bytes'])} | "
                     f"{human_bytes(r['data_bytes'])} | {r['extract_rss_mib']:.0f} MiB | "
                     f"{r['probe_rss_mib']:.0f} MiB | {_load(r)} | {r['mIoU']:.1f} |")
    big = rows[-1]
    if big["scenes"] < FULL_SIZE:
        f = FULL_SIZE / big["scenes"]
        lines.append(f"| **{FULL_SIZE} (EXTRAPOLATED, linear from {big['scenes']})** | "
                     f"~{big['points'] * f:.3g} | {big['extract_s'] * f:.0f} | {big['probe_s'] * f:.0f} | "
                     "- | - | "
                     f"{human_bytes(big['disk_bytes'])} (capped) | {human_bytes(big['data_bytes'] * f)} | "
                     "- | - | - | - |")
    row_bytes = DIM * 2 + 16  # float16 features + int64 label + int64 index
    notes = []
    if big["scenes"] == FULL_SIZE:
        rss = max(big["extract_rss_mib"], big["probe_rss_mib"])
        notes.append(
            f"- Targets at {FULL_SIZE} scenes (measured): cache on disk {human_bytes(big['disk_bytes'])} "
            f"(target <= 20 GB: {'met' if big['disk_bytes'] <= 20e9 else 'MISSED'}; with the scenes "
            f"themselves {human_bytes(big['disk_bytes'] + big['data_bytes'])}), peak RSS "
            f"{rss / 1024:.2f} GiB (target <= 8 GB: {'met' if rss * 2**20 <= 8e9 else 'MISSED'}), "
            f"extract + probe {(big['extract_s'] + big['probe_s']) / 60:.1f} min.")
    if len(rows) >= 2:
        sx = loglog_fit(rows, "extract_s", "train_scenes")[0]
        sp = loglog_fit(rows, "probe_s", "val_scenes")[0]
        s_rx, s_rp = loglog_fit(rows, "extract_rss_mib")[0], loglog_fit(rows, "probe_rss_mib")[0]
        notes.append(
            f"- Growth (log-log slope over the measured sizes; 1 = linear): extract time vs training scenes "
            f"{sx:.2f}, probe time vs validation scenes {sp:.2f}, peak RSS extract "
            f"{s_rx:.2f}, probe {s_rp:.2f}, cache on disk {loglog_fit(rows, 'disk_bytes')[0]:.2f}. "
            "A slope below 1 is the fixed start-up "
            "(imports, the encoder, the probe's training on the capped rows) spread over more scenes.")
    if len(rows) >= 3:  # linear in scenes = a fixed start-up plus a constant cost per scene
        fits = []
        for key, x_key, what in (("extract_s", "train_scenes", "training"),
                                 ("probe_s", "val_scenes", "validation")):
            x = np.array([r[x_key] for r in rows], dtype=float)
            y = np.array([r[key] for r in rows], dtype=float)
            b, a = np.polyfit(x, y, 1)
            dev = np.max(np.abs(a + b * x - y) / y) * 100
            fits.append(f"{key[:-2]} = {a:.0f} s + {b:.2f} s x {what} scenes (largest deviation {dev:.0f} %)")
        notes.append("- Linear in scenes (least-squares line through the measured sizes: start-up + cost per "
                     "scene): " + "; ".join(fits) + ".")
    notes += [
        "- Extract: only the training split (its labelled subsample, `points_per_scene` = max_train_points / "
        "training scenes, drawn with a fixed seed); `encode_points(rows=)` gathers, up-casts and copies only "
        "the kept rows of each scene. The encoder still runs on every voxel of the scene.",
        "- Probe: training reads the capped subsample (streamed in windows when its float32 rows exceed "
        "`probe.max_ram_gb`); the validation split is evaluated by streaming (`eval_source=stream`): each "
        "scene encoded, the trained head applied, the confusion matrix accumulated; nothing written. This "
        "stage therefore grows with the validation scenes.",
        f"- Disk: the training cache is capped at max_train_points rows in all ({max_train_points:,} x "
        f"{row_bytes} B = {human_bytes(max_train_points * row_bytes)} computed), so it does not grow with "
        "scenes, and validation writes nothing. The generated scenes (coord / normal float32, colour uint8, "
        "labels int16: 33 B per point) are the dataset, counted separately.",
        "- Peak RSS is set by the largest scene (the encoder's (M, 1232) float32 output) and by the probe's "
        "training window, not by the number of scenes.",
        "- Scenes are generated once into a pool shared by every size (generation is not a stage here: about "
        "0.05 s per scene).",
        "- load: the machine's mean 1-minute load average during each stage (2 cores; other jobs ran beside "
        "this one): times at a load above 2 are slowed by them.",
        "- mIoU is of a random projection probed linearly: a check that the path works, not a result.",
        *[f"- {t}" for t in extra or []]]
    png = doc.parent / "img" / "bench_scale_points.png"
    _plot(rows, png)
    body = "\n".join([
        "ScanNet-sized point run on this machine (2 CPU cores): generated rooms with ScanNet's "
        "point-count spread (log-normal, median 1.2e5 points, clipped to [2e4, 5.5e5]; validation at "
        "ScanNet's 312 / 1,513 share), encoder `randproj` (fixed random projection of the 9 input channels "
        f"to {DIM} dims, so the data path is what is measured), `pointprobe extract` with "
        "`storage={train: subsample, val: none}` and `pointprobe probe eval_source=stream` "
        f"(max_train_points = {max_train_points:,}). Each stage is its own process; peak RSS is that "
        "process's ru_maxrss. Rows marked measured are measurements; a row marked EXTRAPOLATED is not.", "",
        f"Command: `python -m tools.bench_scale_points --scenes {scenes} "
        f"--max-train-points {max_train_points} --work {work}`",
        *([f"To complete (resumes: measured sizes are skipped, the scene pool is reused): `{todo}`"]
          if todo else []),
        "", *lines, "", *notes, "",
        f"![scaling](img/{png.name})", "", f"Machine: {machine_line()}."])
    update_section(SECTION, body, doc)


def _plot(rows: list[dict], png: Path) -> None:
    """Log-log growth: stage times with a linear reference (left), disk and peak RSS (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png.parent.mkdir(parents=True, exist_ok=True)
    n = np.array([r["scenes"] for r in rows], dtype=float)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
    for k, lab in (("extract_s", "extract (s)"), ("probe_s", "probe (s)")):
        y = np.array([r[k] for r in rows], dtype=float)
        (line,) = ax[0].loglog(n, y, "o-", label=lab)
        ax[0].loglog(n, y[0] * n / n[0], ":", color=line.get_color(), alpha=0.6,
                     label=f"{lab.split()[0]}: linear from {int(n[0])}")
    ax[0].set_ylabel("wall seconds")
    for k, lab, f in (("disk_bytes", "feature cache", 2**-20), ("data_bytes", "scenes (dataset)", 2**-20),
                      ("extract_rss_mib", "peak RSS extract", 1), ("probe_rss_mib", "peak RSS probe", 1)):
        ax[1].loglog(n, [r[k] * f for r in rows], "o-", label=lab)
    ax[1].set_ylabel("MiB")
    for a, title in zip(ax, ("time per stage", "disk and memory")):
        a.set_xlabel("scenes")
        a.set_title(title)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.suptitle("bench_scale_points: growth with scenes (log-log)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
