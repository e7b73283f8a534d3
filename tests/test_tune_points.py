"""``pointprobe tune`` (issue 14): the points task of the tuning loop through the command path."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import load_config
from common.errors import ConfigError
from pointprobe.data.scannet import Scene, save_scene

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.tune import PointTuneConfig, PointTuneTask, run_point_tune

ROOT = Path(__file__).resolve().parent.parent


def _scene(seed: int, density: float = 500.0) -> Scene:
    """A small room: floor (class 1), two walls (class 0) and boxes (class 4 / 6), colours, normals."""
    rng = np.random.default_rng(seed)
    pts, nrm, col, lab = [], [], [], []

    def plane(o, u, v, c, y):
        o, u, v = (np.asarray(a, float) for a in (o, u, v))
        k = int(np.linalg.norm(np.cross(u, v)) * density)
        a = rng.random((k, 2))
        pts.append(o + a[:, :1] * u + a[:, 1:] * v)
        n = np.cross(u, v)
        nrm.append(np.repeat((n / np.linalg.norm(n))[None], k, 0))
        col.append(np.clip(np.asarray(c) + rng.normal(0, 10, (k, 3)), 0, 255))
        lab.append(np.full(k, y))

    w, d = rng.uniform(1.4, 1.8, 2)
    plane((0, 0, 0), (w, 0, 0), (0, d, 0), (150, 120, 90), 1)
    plane((0, 0, 0), (w, 0, 0), (0, 0, 1.0), (200, 200, 190), 0)
    plane((0, 0, 0), (0, d, 0), (0, 0, 1.0), (190, 200, 200), 0)
    for j in range(2):
        x, y = rng.uniform(0.2, 1.0, 2)
        c = (200, 40, 40) if j == 0 else (40, 40, 200)
        cls = 4 if j == 0 else 6
        plane((x, y, 0.4), (0.4, 0, 0), (0, 0.4, 0), c, cls)
        plane((x, y, 0), (0.4, 0, 0), (0, 0, 0.4), c, cls)
    y = np.concatenate(lab).astype(np.int64)
    return Scene(f"scene{seed:04d}_00", np.concatenate(pts).astype(np.float32),
                 np.concatenate(col).astype(np.uint8), np.concatenate(nrm).astype(np.float32), y, y,
                 np.zeros_like(y))


def write_rooms(root: Path, n_train: int = 3, n_val: int = 1) -> Path:
    for split, n, off in (("train", n_train, 0), ("val", n_val, 100)):
        for i in range(n):
            sc = _scene(off + i)
            save_scene(sc, root / split / sc.name)
    return root


TINY_SPARSEUNET = ["encoder.name=sparseunet", "encoder.config={channels: [8, 16, 16], depths: [1, 1, 1]}",
                   "aug.max_points=600", "tune.progress=false", "tune.steps=3", "tune.warmup=1",
                   "tune.norm_batches=1", "tune.lrs=[0.01, 0.1]", "tune.wds=[0.0]",
                   "tune.lora_targets=[conv1, conv2]", "batch_size=2", "device=cpu"]


def _cfg(root: Path, out: Path, *extra: str) -> PointTuneConfig:
    return load_config(PointTuneConfig, None, [f"data.root={root}", f"out={out}", *TINY_SPARSEUNET, *extra])


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    return write_rooms(tmp_path_factory.mktemp("rooms") / "data")


def _run_dir(out: Path) -> Path:
    (d,) = list((out / "runs").iterdir())
    return d


def _canonical(name: str) -> str:
    """The encoder's own parameter name of a possibly adapter-wrapped one (SSF ``inner``, peft
    ``base_layer``, kernel-LoRA parametrization)."""
    return name.replace(".inner.", ".").replace(".base_layer.", ".").replace(
        ".parametrizations.weight.original", ".weight")


def _encoder_sd(cfg: PointTuneConfig) -> dict:
    task = PointTuneTask(cfg, torch.device("cpu"))
    enc, _ = task.build_encoder(torch.device("cpu"))
    return {k: v.clone() for k, v in enc.state_dict().items()}


METHODS = [("linear", []), ("decoder", []), ("ssf", []), ("lora", []), ("last_k", ["tune.k=1"]),
           ("progressive", ["tune.progressive_at=[0.3]"]), ("full", []),
           ("mezo", ["tune.over=ssf"])]


@pytest.mark.parametrize("method,extra", METHODS, ids=[m for m, _ in METHODS])
def test_each_method_trains_only_what_it_declares(rooms, tmp_path, method, extra):
    """Through run_point_tune: the row is written, and in the saved checkpoint every encoder parameter
    outside the declared trainable set is bitwise unchanged (and at least one inside it moved)."""
    out = tmp_path / "out"
    cfg = _cfg(rooms, out, f"tune.method={method}", *extra)
    row = run_point_tune(cfg)
    assert row["method"] == (method if method != "mezo" else "mezo-ssf")
    assert 0.0 <= row["mIoU"] <= 100.0 and row["config_hash"] and row["checkpoint_sha256"] == "random:0"
    table = json.loads((out / "tune_results.json").read_text())
    assert [r["method"] for r in table["rows"]] == [row["method"]]
    assert (out / "tune_results.md").is_file() and (out / "ladder.png").is_file()
    run = _run_dir(out)
    assert (run / "config.yaml").is_file() and (out / f"tune_results_{row['method']}.yaml").is_file()
    st = torch.load(run / "last.pth", weights_only=False)
    base = _encoder_sd(cfg)
    saved = {_canonical(n[len("encoder."):]): (n, v) for n, v in st["model"].items()
             if n.startswith("encoder.")}
    trainable = {_canonical(n[len("encoder."):]) for n in st["trainable"] if n.startswith("encoder.")}
    moved = []
    for k, v in base.items():
        name, w = saved[k]
        if k in trainable:
            moved.append(not torch.equal(w, v))
        else:
            assert torch.equal(w, v), f"{method}: {name} changed but is not trainable"
    adapters = {k for k in saved if k not in base}
    if method in ("linear", "decoder"):
        assert not trainable and not adapters
    elif method in ("ssf", "lora", "mezo"):
        assert adapters and trainable == adapters  # only the adapters of the encoder train
    else:
        assert trainable and any(moved), f"{method}: nothing in its trainable set moved"
    if method == "mezo":
        assert st["mezo"]["steps"] == 3 and np.isfinite(st["mezo"]["last_grad"])
    if method == "progressive":
        assert row["trainable_params"] > 0


@pytest.fixture
def one_thread():
    """Bitwise comparisons of two runs in one process: one torch thread (with two, identical runs do not
    always agree bit for bit, depending on what ran before in the process; see test_reliability)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_resume_is_exact(rooms, tmp_path, one_thread):
    """Stop after a checkpoint, rerun: the same final row as an uninterrupted run."""
    extra = ["tune.method=ssf", "tune.steps=4", "tune.save_every=2"]
    full = run_point_tune(_cfg(rooms, tmp_path / "a", *extra))
    part = run_point_tune(_cfg(rooms, tmp_path / "b", *extra), max_steps=2)
    assert part["stopped_at"] == 2
    again = run_point_tune(_cfg(rooms, tmp_path / "b", *extra))
    assert again["resumed"] is True
    assert again["mIoU"] == full["mIoU"]
    a = torch.load(_run_dir(tmp_path / "a") / "last.pth", weights_only=False)
    b = torch.load(_run_dir(tmp_path / "b") / "last.pth", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_batch_size_must_split_over_ranks(rooms, tmp_path):
    task = PointTuneTask(_cfg(rooms, tmp_path, "batch_size=3"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="multiple of the world size"):
        next(task.train_batches(0, 0, 2))


def test_train_batches_are_rank_shards_of_the_global_batch(rooms, tmp_path):
    task = PointTuneTask(_cfg(rooms, tmp_path), torch.device("cpu"))
    one = next(task.train_batches(0, 0, 1))
    r0, r1 = next(task.train_batches(0, 0, 2)), next(task.train_batches(0, 1, 2))
    assert torch.equal(torch.cat([r0.labels, r1.labels]).sort().values, one.labels.sort().values)
    assert set(np.unique(r0.groups)) | set(np.unique(r1.groups)) == set(np.unique(one.groups))


def test_show_config_and_short_keys(capsys):
    from pointprobe.cli import main

    assert main(["tune", "--show-config", "method=ssf", "over=null"]) == 0
    out = capsys.readouterr().out
    assert "method: ssf" in out and "lora_targets" in out


# ----------------------------------------------------------------------------------------------- DDP
_DDP_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
from common.config import load_config
from common import dist
from pointprobe.tune import PointTuneConfig, run_point_tune
cfg = load_config(PointTuneConfig, None, json.loads(sys.argv[1]))
row = run_point_tune(cfg)
if dist.is_main():
    import glob
    st = torch.load(glob.glob(cfg.out + "/runs/*/last.pth")[0], weights_only=False)
    json.dump({"row": row, "loss": [h["loss"] for h in st["history"]],
               "params": {k: v.flatten()[:50].tolist() for k, v in st["model"].items()
                          if v.is_floating_point()}},
              open(sys.argv[2], "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, overrides: list[str], out: Path) -> dict:
    script = out.parent / "ddp_tune.py"
    script.write_text(_DDP_SCRIPT)
    port = _free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, str(script), json.dumps(overrides), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        txt = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, txt[-3000:]
    return json.loads(out.read_text())


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ssf", "linear"])
def test_ddp_two_ranks_match_one_process(rooms, tmp_path, method):
    """2-rank gloo DDP = one process with the same global batch (losses, parameters, mIoU)."""
    ov = [f"data.root={rooms}", *TINY_SPARSEUNET, f"tune.method={method}"]
    one = _launch(1, [*ov, f"out={tmp_path / 'one'}"], tmp_path / "one.json")
    two = _launch(2, [*ov, f"out={tmp_path / 'two'}"], tmp_path / "two.json")
    # linear: the features are standardised with statistics of the first batch, so a class absent from
    # a batch gets a gradient that is float noise around 0, and AdamW's first steps turn any noise into
    # +-lr (measured: 3e-3 relative on the loss after one step); the encoder methods agree to 1e-4
    rtol = 1e-2 if method == "linear" else 1e-4
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=rtol, atol=1e-5)
    for k in one["params"]:
        np.testing.assert_allclose(two["params"][k], one["params"][k], rtol=1e-3, atol=1e-5, err_msg=k)
    if method != "linear":  # linear: the noise above moves the 3-step mIoU of one val scene by ~2 points
        assert two["row"]["mIoU"] == pytest.approx(one["row"]["mIoU"], abs=0.5)


@pytest.mark.parametrize("keys", [["method=nope"], ["method=mezo"], ["method=ssf", "over=lora"]])
def test_a_refused_method_writes_nothing(tmp_path, capsys, keys):
    """An unknown method, a mezo without over= and an over= given to another method are one error line
    (exit 2) before the run folder or any config file is written."""
    from pointprobe.cli import main

    out = tmp_path / "tune"
    assert main(["tune", *keys, f"out={out}"]) == 2
    assert "error: tuning:" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------- method=decoder, PTv3
TINY_PTV3 = ["encoder.name=ptv3_tiny", "encoder.config={}", "aug.max_points=600", "tune.progress=false",
             "tune.steps=2", "tune.warmup=1", "batch_size=2", "device=cpu", "tune.method=decoder",
             "tune.head_lr=0.01"]


def test_decoder_defaults_are_pointcept_dec_configs():
    """``semseg-sonata-v1m1-*-dec``: dec_depths (2,2,2,2), dec_channels (64,96,192,384), heads (4,6,12,24),
    patch 1024; on a 5-stage Sonata-small encoder the release's parameter layout (dec.dec{s}.up /
    block{i})."""
    from pointprobe.models.ptv3 import SONATA_SMALL_CONFIG, PointTransformerV3, PTv3Decoder
    from pointprobe.tune import TuneDecoder

    d = TuneDecoder()  # channels / depths None: the encoder's own (for PTv3 the lists below, see
    # test_ptv3_decoder_lists_default_to_pointcept_dec)
    assert (d.kind, d.depths, d.channels, d.num_head, d.patch_size) == \
        ("auto", None, None, [4, 6, 12, 24], [1024] * 4)
    enc = PointTransformerV3(**SONATA_SMALL_CONFIG)
    dec = PTv3Decoder.for_encoder(enc)
    shapes = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert list(dec.dec) == ["dec3", "dec2", "dec1", "dec0"] and dec.out_channels == 64
    assert shapes["dec.dec3.up.proj.0.weight"] == (384, 512)  # from the deepest encoder stage
    assert shapes["dec.dec3.up.proj_skip.0.weight"] == (384, 256)  # skip: encoder stage 3
    assert shapes["dec.dec0.up.proj.0.weight"] == (64, 96)
    assert shapes["dec.dec0.up.proj_skip.0.weight"] == (64, 32)
    for s, (c, h) in enumerate(zip([64, 96, 192, 384], [4, 6, 12, 24])):
        stage = dec.dec[f"dec{s}"]
        assert stage.depth == 2 and not hasattr(stage, "block2")
        assert stage.block0.attn.num_heads == h and stage.block1.attn.qkv.in_features == c
        assert stage.block0.attn.patch_size == 1024


def test_ptv3_decoder_logits_at_full_resolution(rooms, tmp_path):
    """Every input point of a scene gets logits; the decoded finest level is dec_channels[0] wide with one
    row per encoder input row, and the encoder's own levels keep their features."""
    from pointprobe.tune import PTv3SegDecoder, _point

    task = PointTuneTask(_cfg(rooms, tmp_path, *TINY_PTV3), torch.device("cpu"))
    enc, _ = task.build_encoder(torch.device("cpu"))
    dec = task.decoder(enc, len(task.class_names))
    assert isinstance(dec, PTv3SegDecoder)
    assert list(dec.dec.dec) == ["dec1", "dec0"] and dec.dec.out_channels == 64  # trimmed to 2 poolings
    b = next(task.eval_batches("val", 0, 1))
    z = dec(b.inputs)[b.expand]  # voxel logits copied to every input point
    assert z.shape == (len(b.labels), len(task.class_names)) and torch.isfinite(z).all()
    assert len(b.inputs["coord"]) < len(b.labels)  # the grid sampling merged points
    with torch.no_grad():
        top = enc(_point(b.inputs))
        before = [lvl.feat.clone() for lvl in top.levels()]
        out = dec.dec(top)
    assert out.feat.shape == (len(b.inputs["coord"]), 64)
    assert all(torch.equal(a, lvl.feat) for a, lvl in zip(before, top.levels()))


def test_ptv3_decoder_trains_only_the_decoder(rooms, tmp_path):
    """method=decoder on PTv3: the encoder is bitwise unchanged, every decoder stage and the classifier
    move, and the trainable set is exactly the decoder."""
    out = tmp_path / "out"
    cfg = _cfg(rooms, out, *TINY_PTV3)
    row = run_point_tune(cfg)
    assert row["method"] == "decoder" and row["encoder_trainable_params"] == 0
    st = torch.load(_run_dir(out) / "last.pth", weights_only=False)
    base = _encoder_sd(cfg)
    enc = {k[len("encoder."):]: v for k, v in st["model"].items() if k.startswith("encoder.")}
    assert enc.keys() == base.keys() and all(torch.equal(enc[k], base[k]) for k in base)
    dec = {k: v for k, v in st["model"].items() if k.startswith("decoder.")}
    assert set(st["trainable"]) == set(dec)
    assert {k.split(".")[3] for k in dec if k.startswith("decoder.dec.dec.")} == {"dec0", "dec1"}
    init = PointTuneTask(cfg, torch.device("cpu"))
    torch.manual_seed(cfg.tune.seed + 1)  # the loop builds the decoder under this seed
    fresh = init.decoder(init.build_encoder(torch.device("cpu"))[0], len(init.class_names)).state_dict()
    for name in ("dec.dec.dec1.block0.attn.qkv.weight", "dec.dec.dec0.up.proj_skip.0.weight", "cls.weight"):
        assert not torch.equal(fresh[name], dec[f"decoder.{name}"]), name


# ------------------------------------------------------------------------------------------ preemption
def test_sigterm_saves_at_the_step_boundary_and_the_rerun_resumes_exactly(rooms, tmp_path, monkeypatch,
                                                                          capsys, one_thread):
    """SIGTERM after step 2 of 4 (save_every=4: no checkpoint due): `pointprobe tune` writes last.pth at
    step 2 and exits 3 (as `pretrain`); the same command then finishes with the weights, losses and mIoU of
    an uninterrupted run."""
    import signal

    from common.tuning.loop import Tuner
    from pointprobe.cli import main

    args = ["tune", f"data.root={rooms}", *TINY_SPARSEUNET, "tune.method=ssf", "tune.steps=4",
            "tune.save_every=4"]
    assert main([*args, f"out={tmp_path / 'ref'}"]) == 0
    real = Tuner.train_step

    def train_step(self, micro):
        out = real(self, micro)
        if self.state.step == 1:  # the step in progress is step 2 (counted after train_step returns)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Tuner, "train_step", train_step)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*args, f"out={out}"]) == 3
    assert "interrupted at step 2 (SIGTERM), resumable: rerun the same command" in capsys.readouterr().err
    run = _run_dir(out)
    assert torch.load(run / "last.pth", weights_only=False)["step"] == 2
    assert not (out / "tune_results.json").exists()
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    assert main([*args, f"out={out}"]) == 0
    a = torch.load(_run_dir(tmp_path / "ref") / "last.pth", weights_only=False)
    b = torch.load(run / "last.pth", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    ra = json.loads((tmp_path / "ref" / "tune_results.json").read_text())["rows"][0]
    rb = json.loads((out / "tune_results.json").read_text())["rows"][0]
    assert ra["mIoU"] == rb["mIoU"] and rb["resumed"] is True


# ------------------------------------------------------------------------------------- chunked eval
@pytest.mark.parametrize("method", ["linear", "decoder"])
def test_chunked_evaluation_gives_the_unchunked_confusion(rooms, tmp_path, monkeypatch, method):
    """Points scored in chunks of 97 (tune.eval_chunk) give the confusion of all points at once, and of
    the logits computed at full resolution directly (features copied to every point first); scenes split
    into spatial chunks (eval_max_voxels) score every point once."""
    import common.tuning.loop as loop
    from common.tuning.loop import Tuner

    confs = []
    real = loop.reduce_scorer
    monkeypatch.setattr(loop, "reduce_scorer", lambda s: confs.append(s.conf.clone()) or real(s))
    cfg = _cfg(rooms, tmp_path, f"tune.method={method}", "tune.steps=1")
    task = PointTuneTask(cfg, torch.device("cpu"))
    (tmp_path / "run").mkdir()
    tuner = Tuner(task, cfg.tune, tmp_path / "run", torch.device("cpu"))
    tuner.train(1)
    res = {}
    for chunk in (0, 97):
        tuner.s.eval_chunk = chunk
        res[chunk] = tuner.evaluate("val")
    assert torch.equal(confs[0], confs[1])
    assert [r["mIoU"] for r in res[0]] == [r["mIoU"] for r in res[97]]
    assert int(confs[1].sum()) == sum(int((b.labels >= 0).sum()) for b in task.eval_batches("val", 0, 1)) * (
        tuner.grid.H if tuner.grid is not None else 1)
    # the reference: full-resolution logits in one go (the model given the point -> voxel map itself)
    ref = torch.zeros_like(confs[0])
    C = len(task.class_names)
    with torch.no_grad():
        for b in task.eval_batches("val", 0, 1):
            inputs = dict(b.inputs, inverse=b.expand)
            if tuner.grid is not None:
                z = tuner.grid.logits(tuner.model.head.norm(task.features(tuner.model.encoder, inputs)))
            else:
                z = tuner.model.logits(inputs)[:, None, :]
            keep = b.labels >= 0
            pred = z[keep].argmax(-1)  # (n, H)
            y = b.labels[keep]
            for h in range(pred.shape[1]):
                ref[h * C * C:(h + 1) * C * C] += torch.bincount(y * C + pred[:, h], minlength=C * C)
    assert torch.equal(ref, confs[0])
    # spatial chunks of at most a third of the voxels: with context covering the whole room every chunk
    # sees the scene as it is, so the confusion is the same; with 0.1 m of context every point is still
    # scored exactly once
    m = min(len(b.inputs["coord"]) for b in task.eval_batches("val", 0, 1))
    task.cfg.eval_max_voxels, task.cfg.eval_chunk_margin = m // 3, 100.0
    assert len(list(task.eval_batches("val", 0, 1))) >= 3 * len(task.scenes("val"))
    tuner.evaluate("val")
    assert torch.equal(confs[-1], confs[0])
    task.cfg.eval_chunk_margin = 0.1
    tuner.evaluate("val")
    assert int(confs[-1].sum()) == int(confs[0].sum())


def test_sparseunet_decoder_is_its_own_minkunet_decoder_and_only_it_trains(rooms, tmp_path):
    """method=decoder on a SparseUNet: the architecture's UpBlocks (lent to the frozen encoder per forward,
    never registered under encoder.), logits for every point; decoder.kind=level keeps the MLP fallback."""
    from pointprobe.models.sparseunet import UpBlock
    from pointprobe.tune import LevelDecoder, SparseUNetSegDecoder

    cfg = _cfg(rooms, tmp_path / "out", "tune.method=decoder", "tune.steps=2")
    task = PointTuneTask(cfg, torch.device("cpu"))
    enc, _ = task.build_encoder(torch.device("cpu"))
    dec = task.decoder(enc, len(task.class_names))
    assert isinstance(dec, SparseUNetSegDecoder) and all(isinstance(u, UpBlock) for u in dec.ups)
    assert [u.up.out_channels for u in dec.ups] == [16, 8]  # coarse -> fine: the encoder's levels mirrored
    b = next(task.eval_batches("val", 0, 1))
    z = dec(b.inputs)
    assert z.shape == (len(b.inputs["coord"]), len(task.class_names))
    assert len(enc.ups) == 0 and not any(n.startswith("ups.") for n, _ in enc.named_parameters())
    level = PointTuneTask(_cfg(rooms, tmp_path / "lvl", "tune.method=decoder", "decoder.kind=level"),
                          torch.device("cpu"))
    assert isinstance(level.decoder(enc, len(task.class_names)), LevelDecoder)
    with pytest.raises(ConfigError, match="does not fit"):
        PointTuneTask(_cfg(rooms, tmp_path / "x", "decoder.kind=ptv3"), torch.device("cpu")).decoder(enc, 3)
    row = run_point_tune(cfg)
    assert row["encoder_trainable_params"] == 0
    st = torch.load(_run_dir(tmp_path / "out") / "last.pth", weights_only=False)
    base = _encoder_sd(cfg)
    encs = {k[len("encoder."):]: v for k, v in st["model"].items() if k.startswith("encoder.")}
    assert encs.keys() == base.keys() and all(torch.equal(encs[k], base[k]) for k in base)
    assert set(st["trainable"]) == {k for k in st["model"] if k.startswith("decoder.")}
    assert any(k.startswith("decoder.ups.0.blocks.0.conv1") for k in st["trainable"])


# ------------------------------------------------------------- method=decoder: the encoder's own widths
def _unet_decoder(rooms: Path, tmp_path: Path, *extra: str):
    task = PointTuneTask(_cfg(rooms, tmp_path / "out", "tune.method=decoder", *extra), torch.device("cpu"))
    enc, _ = task.build_encoder(torch.device("cpu"))
    dec = task.decoder(enc, len(task.class_names))
    return [u.up.out_channels for u in dec.ups], [len(u.blocks) for u in dec.ups], dec


def test_sparseunet_decoder_defaults_to_the_encoders_own_widths(rooms, tmp_path):
    """The default decoder of a SparseUNet was built with PTv3's dec lists (64..384, depth 2): 24.95 M
    parameters over the bench's 4.77 M encoder. Default now: the encoder's own decoder_channels /
    decoder_depths when its config has them, else the mirror of the encoder (each up-block as wide and as
    deep as the level it returns to)."""
    widths, depths, _ = _unet_decoder(rooms, tmp_path)  # encoder channels [8, 16, 16], depths [1, 1, 1]
    assert (widths, depths) == ([16, 8], [1, 1])
    own = "encoder.config={channels: [8, 16, 16], depths: [1, 2, 1], decoder_channels: [12, 10], " \
          "decoder_depths: [2, 1]}"
    widths, depths, _ = _unet_decoder(rooms, tmp_path / "own", own)
    assert (widths, depths) == ([12, 10], [2, 1])
    mirror = "encoder.config={channels: [8, 16, 16], depths: [3, 2, 1]}"
    assert _unet_decoder(rooms, tmp_path / "m", mirror)[:2] == ([16, 8], [2, 3])


def test_sparseunet_decoder_explicit_lists_are_honoured(rooms, tmp_path):
    widths, depths, dec = _unet_decoder(rooms, tmp_path, "decoder.channels=[24, 32, 48]",
                                        "decoder.depths=[1, 2, 2]")
    assert (widths, depths) == ([32, 24], [2, 1])  # finest first in the config: reversed, trimmed
    assert dec.cls.in_features == 24
    widths, depths, _ = _unet_decoder(rooms, tmp_path / "c", "decoder.channels=[24, 32]")
    assert (widths, depths) == ([32, 24], [1, 1])  # depths: the encoder's own (mirror)


def test_ptv3_decoder_lists_default_to_pointcept_dec():
    from pointprobe.models.ptv3 import PTV3_DEC_DEFAULTS, SONATA_SMALL_CONFIG, PointTransformerV3
    from pointprobe.tune import TuneDecoder, decoder_lists

    enc = PointTransformerV3(**SONATA_SMALL_CONFIG)
    assert decoder_lists(enc, TuneDecoder()) == (list(PTV3_DEC_DEFAULTS["dec_channels"]),
                                                 list(PTV3_DEC_DEFAULTS["dec_depths"]))
    assert decoder_lists(enc, TuneDecoder(channels=[32, 48, 64, 80], depths=[1, 1, 1, 1])) == \
        ([32, 48, 64, 80], [1, 1, 1, 1])
