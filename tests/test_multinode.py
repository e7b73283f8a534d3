"""Two torchrun "nodes" on this machine (``--nnodes=2 --rdzv-backend=c10d``, gloo) write the same cache as
one process; a rank killed mid-run loses only its unfinished item and a rerun with world size 1 completes
the cache. Also: file locks on a shared filesystem that does not implement them."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common.cache import CacheWriter, FeatureCache, journal_path
from tests.test_dist import _free_port

REPO = Path(__file__).resolve().parent.parent
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
CLASSES = ["RedDisc", "MoveLeft"]
VIDEO_ARGS = ["data.kind=synth", "encoder.name=motion_energy", "views.num_clips=2", "views.clip_len=4",
              "views.frame_step=1", "views.size=32", "save_tokens=true", "progress=false", "fsync=false",
              "device=cpu"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def two_nodes(target: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Start two torchrun launchers, one worker each, meeting at a c10d rendezvous on 127.0.0.1 (what
    two machines do with ``--rdzv-endpoint=<host of node 0>:PORT``); ``target``: the script / ``-m``
    module and its arguments. Returns both launchers' finished processes."""
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test{port}",
           "--max-restarts=0", *target]
    procs = [subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    done = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        done.append(subprocess.CompletedProcess(cmd, p.returncode, out, ""))
    return done


def _tail(procs: list[subprocess.CompletedProcess]) -> str:
    return "\n".join(f"--- launcher {i} (rc {p.returncode})\n{p.stdout[-2500:]}" for i, p in enumerate(procs))


def same_cache(a: Path, b: Path) -> None:
    """Both caches hold the same items with bitwise equal arrays (files and manifests may differ)."""
    ca, cb = FeatureCache(a, verify=True), FeatureCache(b, verify=True)
    assert ca.items() == cb.items() and ca.key == cb.key
    assert not ca.unmerged_journals and not cb.unmerged_journals
    for item in ca.items():
        names = ca.arrays(item)
        assert names == cb.arrays(item)
        xa, xb = ca.load(item, names), cb.load(item, names)
        for n in names:
            assert xa[n].dtype == xb[n].dtype and np.array_equal(xa[n], xb[n]), (item, n)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("mn") / "synth"
    generate_dataset(root, SynthConfig(classes=CLASSES, videos_per_class=4, frames=8, size=32,
                                       clips_per_group=1, test_fraction=0.5), progress=False)
    return root


def _one_process(root: Path, out: Path) -> None:
    from videoprobe.cli import main

    assert main(["extract", f"data.root={root}", f"out={out}", *VIDEO_ARGS]) == 0


@pytest.mark.dist
@pytest.mark.slow
def test_two_nodes_video_extract_equals_one_process(videos, tmp_path):
    ref = tmp_path / "one"
    _one_process(videos, ref)
    out = tmp_path / "two"
    procs = two_nodes(["-m", "videoprobe.cli", "extract", f"data.root={videos}", f"out={out}", *VIDEO_ARGS])
    assert all(p.returncode == 0 for p in procs), _tail(procs)
    same_cache(ref, out)
    assert len(FeatureCache(out)) == 4 and "tokens" in FeatureCache(out).arrays(FeatureCache(out).items()[0])


# rank 1 is SIGKILLed right after writing its first video (a node lost mid-run)
KILL_RANK1 = textwrap.dedent(
    """
    import os, signal, sys
    import common.cache as cc

    real = cc.CacheWriter.write

    def write(self, *a, **k):
        real(self, *a, **k)
        if self.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    cc.CacheWriter.write = write
    from videoprobe.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.dist
@pytest.mark.slow
def test_lost_rank_items_are_picked_up_on_rerun(videos, tmp_path):
    ref = tmp_path / "one"
    _one_process(videos, ref)
    script = tmp_path / "kill_rank1.py"
    script.write_text(KILL_RANK1)
    out = tmp_path / "two"
    procs = two_nodes([str(script), "extract", f"data.root={videos}", f"out={out}", *VIDEO_ARGS])
    assert any(p.returncode != 0 for p in procs), _tail(procs)
    # rank 1's finished video is in its journal; nothing was merged
    assert journal_path(out, 1).is_file() and not (out / "manifest.json").exists()
    partial = FeatureCache(out)  # readable from the journals
    assert 1 <= len(partial) < 4
    # rerun on one machine, world size 1: the missing videos are extracted, the rest skipped
    from common.config import from_dict
    from videoprobe.extract import ExtractConfig, extract

    cfg = {"data": {"kind": "synth", "root": str(videos)}, "out": str(out),
           "encoder": {"name": "motion_energy"},
           "views": {"num_clips": 2, "clip_len": 4, "frame_step": 1, "size": 32},
           "save_tokens": True, "progress": False, "fsync": False, "device": "cpu"}
    res = extract(from_dict(ExtractConfig, cfg))
    assert not res.failures and res.skipped == len(partial) and res.written == 4 - len(partial)
    same_cache(ref, out)


@pytest.mark.dist
@pytest.mark.slow
def test_two_nodes_point_extract_equals_one_process(tmp_path):
    from pointprobe.cli import main

    raw, data = tmp_path / "raw", tmp_path / "data"
    assert main(["synth", "--out", str(raw), "--scenes", "3", "--seed", "3", "--frames-per-scene", "0",
                 "--no-progress"]) == 0
    assert main(["preprocess", "--raw", str(raw), "--out", str(data)]) == 0
    args = ["encoder.name=raw", "device=cpu"]
    assert main(["extract", f"data.root={data}", f"out={tmp_path / 'one'}", *args]) == 0
    procs = two_nodes(["-m", "pointprobe.cli", "extract", f"data.root={data}", f"out={tmp_path / 'two'}",
                       *args])
    assert all(p.returncode == 0 for p in procs), _tail(procs)
    splits = sorted(p.name for p in (tmp_path / "one").iterdir() if FeatureCache.exists(p))
    assert splits and splits == sorted(p.name for p in (tmp_path / "two").iterdir() if FeatureCache.exists(p))
    for split in splits:
        same_cache(tmp_path / "one" / split, tmp_path / "two" / split)


def test_writer_works_where_the_filesystem_has_no_locks(tmp_path, monkeypatch):
    """NFS without a lock daemon / Lustre without ``-o flock`` answer flock with ENOLCK / ENOSYS: a shared
    cache must still be writable there (each rank has its own journal anyway)."""
    import common.cache as cc

    if cc.fcntl is None:
        pytest.skip("no fcntl on this platform")
    from tests.test_cache import item_data, make_key

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cc.fcntl, "flock", no_locks)
    with CacheWriter(tmp_path / "c", make_key(), 8) as w:
        w.write("a", **item_data("a"))
    assert FeatureCache(tmp_path / "c").items() == ["a"]


def test_a_held_lock_still_refuses_a_second_writer(tmp_path):
    from common.errors import CacheError
    from tests.test_cache import make_key

    with CacheWriter(tmp_path / "c", make_key(), 8):
        with pytest.raises(CacheError, match="another writer with rank 0"):
            CacheWriter(tmp_path / "c", make_key(), 8)


def test_device_follows_the_local_rank_on_a_second_node(monkeypatch):
    """On node 1 of two with one GPU each, global rank 1 is local rank 0: it must use cuda:0."""
    import torch

    from common import dist

    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dist.local_rank() == 0 and dist.env_world_size() == 2
    assert dist.pick_device() == torch.device("cuda", 0)


RESUME_FILL = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from common import dist
    from common.cache import fill_cache
    from tests.test_cache import make_key, item_data

    assert dist.init_from_env()
    items = [f"s{i}" for i in range(8)]
    res = fill_cache(sys.argv[1], make_key(), 8, "float32", items, item_data, progress=False)
    with open(f"{sys.argv[1]}.rank{dist.rank()}.json", "w") as f:
        json.dump({"written": res.written, "skipped": res.skipped}, f)
    dist.cleanup()
    """
)


@pytest.mark.dist
@pytest.mark.slow
def test_rerun_after_a_lost_node_shares_the_rest_evenly(tmp_path):
    """Node 0's strided share is cached, node 1's was lost: the rerun on two nodes gives each rank half
    of what is left (not all of it to rank 1 while rank 0 waits at the barrier, where a long wait hits
    the process group's timeout)."""
    import json

    from common.cache import fill_cache
    from tests.test_cache import item_data, make_key

    path = tmp_path / "cache"
    fill_cache(path, make_key(), 8, "float32", [f"s{i}" for i in range(0, 8, 2)], item_data, progress=False)
    script = tmp_path / "fill.py"
    script.write_text(RESUME_FILL)
    procs = two_nodes([str(script), str(path), str(REPO)])
    assert all(p.returncode == 0 for p in procs), _tail(procs)
    res = [json.loads((tmp_path / f"cache.rank{r}.json").read_text()) for r in range(2)]
    assert [r["written"] for r in res] == [2, 2]
    assert sum(r["skipped"] for r in res) == 4
    cache = FeatureCache(path, expect_key=make_key(), verify=True)
    assert cache.items() == [f"s{i}" for i in range(8)] and not cache.unmerged_journals
