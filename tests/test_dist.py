"""common.dist: single-process behaviour, and a real 2-process torchrun / gloo run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from common import dist
from common.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: Path, args: list[str], nproc: int = 2, timeout: float = 120) -> None:
    """Run ``script`` under ``torchrun --nproc_per_node=nproc`` on the CPU; fail with its output."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{tail}"


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)


def test_single_process_defaults(no_torchrun_env):
    assert not dist.launched_by_torchrun()
    assert dist.init_from_env() is False
    assert not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.local_rank()) == (0, 1, 0)
    assert dist.is_main()
    dist.barrier()  # no-op
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object("x") == "x"
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_tensor(t, "sum"), torch.tensor([1.0, 2.0]))
    assert torch.equal(dist.all_reduce_tensor(t, "mean"), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        dist.all_reduce_tensor(t, "prod")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert dist.device_for_rank().type == expected
    dist.cleanup()  # safe without a group
    assert dist.shard(list(range(5))) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n_items,ws", [(0, 2), (1, 3), (10, 3), (11, 2), (7, 7), (5, 8)])
def test_shard_disjoint_and_covering(n_items, ws):
    items = [f"scene{i:04d}" for i in range(n_items)]
    shards = [dist.shard(items, r, ws) for r in range(ws)]
    flat = [x for s in shards for x in s]
    assert sorted(flat) == items and len(flat) == len(set(flat))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced
    assert shards == [dist.shard(items, r, ws) for r in range(ws)]  # deterministic
    with pytest.raises(ValueError):
        dist.shard(items, ws, ws)


def test_env_errors(monkeypatch, no_torchrun_env):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        dist.init_from_env()
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK"):
        dist.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        dist.init_from_env()
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dist.local_rank() == 3
    assert not dist.is_distributed()


WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from common import dist

    out = sys.argv[1]
    assert dist.launched_by_torchrun()
    assert dist.init_from_env() is True
    assert dist.init_from_env() is True  # idempotent
    r, ws = dist.rank(), dist.world_size()
    items = [f"scans/scene{i:04d}_00" for i in range(11)]
    mine = dist.shard(items)
    gathered = dist.all_gather_object({"rank": r, "items": mine})
    s = dist.all_reduce_tensor(torch.tensor([r + 1.0, 10.0 * (r + 1)]), "sum")
    m = dist.all_reduce_tensor(torch.tensor([r + 1]), "mean")  # int -> float
    mx = dist.all_reduce_tensor(torch.tensor([float(r)]), "max")
    mn = dist.all_reduce_tensor(torch.tensor([float(r)]), "min")
    b = dist.broadcast_object({"from": r}, src=0)
    dist.barrier()
    res = dict(rank=r, world_size=ws, local_rank=dist.local_rank(), is_main=dist.is_main(),
               distributed=dist.is_distributed(), device=str(dist.device_for_rank()), mine=mine,
               gathered=gathered, sum=s.tolist(), mean=m.tolist(), max=mx.tolist(), min=mn.tolist(),
               bcast=b)
    with open(f"{out}/rank{r}.json", "w") as f:
        json.dump(res, f)
    dist.cleanup()
    assert not dist.is_distributed() and dist.world_size() == 1
    """
)


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _torchrun(script, [str(tmp_path)])
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    items = [f"scans/scene{i:04d}_00" for i in range(11)]
    assert [x["rank"] for x in res] == [0, 1]
    assert all(x["world_size"] == 2 and x["distributed"] for x in res)
    assert [x["local_rank"] for x in res] == [0, 1]
    assert [x["is_main"] for x in res] == [True, False]
    assert all(x["device"] == "cpu" for x in res)
    # shards: disjoint, covering, strided
    a, b = res[0]["mine"], res[1]["mine"]
    assert not set(a) & set(b) and sorted(a + b) == items
    assert a == items[0::2] and b == items[1::2]
    # gather: every rank sees every rank's object, in rank order
    expected = [{"rank": 0, "items": a}, {"rank": 1, "items": b}]
    assert res[0]["gathered"] == expected and res[1]["gathered"] == expected
    for x in res:
        assert x["sum"] == [3.0, 30.0]
        assert x["mean"] == [1.5]
        assert x["max"] == [1.0] and x["min"] == [0.0]
        assert x["bcast"] == {"from": 0}


EXIT_WORKER = textwrap.dedent(
    """
    import sys

    import torch
    import torch.distributed as tdist

    from common import dist

    out = sys.argv[1]
    real_destroy = tdist.destroy_process_group


    def recording_destroy(*a, **k):
        open(f"{out}/destroyed{dist.rank()}", "w").close()
        real_destroy(*a, **k)


    tdist.destroy_process_group = recording_destroy
    dist.init_from_env()
    dist.all_reduce_tensor(torch.ones(1))
    # no dist.cleanup(): the process ends with its gloo group alive
    """
)


@pytest.mark.dist
@pytest.mark.slow
def test_the_group_is_destroyed_at_exit_when_the_caller_forgets(tmp_path):
    """A gloo process leaving with its group alive can abort at interpreter teardown (exit -6, seen in
    the suite's 2-rank tune test); init_from_env registers cleanup() with atexit."""
    script = tmp_path / "worker.py"
    script.write_text(EXIT_WORKER)
    _torchrun(script, [str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("destroyed*")) == ["destroyed0", "destroyed1"]


def test_pick_device(monkeypatch, no_torchrun_env):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.pick_device() == torch.device("cpu")  # auto without CUDA
    assert dist.pick_device("auto") == torch.device("cpu")
    assert dist.pick_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"device '{name}' asked for but CUDA is not available"):
            dist.pick_device(name)
    with pytest.raises(ConfigError, match="'gpu0' is not a device name"):
        dist.pick_device("gpu0")
    # with CUDA: auto is this rank's device, a name is taken as given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.pick_device() == torch.device("cuda", 1)
    assert dist.pick_device("cuda") == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match="LOCAL_RANK=2 but only 2 CUDA device"):
        dist.pick_device()
