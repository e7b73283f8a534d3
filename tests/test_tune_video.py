"""issue 14, video side: the block layouts of the video encoders and the video tuning task."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from common.tuning.trainable import resolve_blocks
from videoprobe.models import VIDEO_ENCODERS, create_video_encoder


def _build(name: str):
    """Every registry encoder at its real size; on the meta device where the builder allows (fast, no
    memory), else on the CPU (MViT's builder calls ``.item()``)."""
    try:
        with torch.device("meta"):
            return create_video_encoder(name)
    except (RuntimeError, NotImplementedError):
        return create_video_encoder(name)


@pytest.mark.parametrize("name", sorted(VIDEO_ENCODERS))
def test_block_layout_covers_every_parameter_once_in_order(name):
    enc = _build(name)
    layout, fixed = enc.block_layout(), enc.fixed()
    params = [n for n, _ in enc.named_parameters()]
    if not params:
        assert layout == [] and fixed == []
        return
    names = [b for b, _ in layout]
    assert len(layout) >= 3 and len(set(names)) == len(names)
    resolved = resolve_blocks(enc, layout)  # raises on a parameter claimed twice or an empty block
    fixed_names = [n for n in params if any(n == f or n.startswith(f.rstrip(".") + ".") for f in fixed)]
    owner = {n: i for i, (_, ns) in enumerate(resolved) for n in ns}
    assert not set(owner) & set(fixed_names), "a fixed parameter is also in a block"
    stray = sorted(set(params) - set(owner) - set(fixed_names))
    assert not stray, stray[:5]
    seen = [owner[n] for n in params if n in owner]
    assert seen == sorted(seen), "blocks are not in depth (parameter) order"


def test_vjepa_pos_embed_is_fixed_and_videomae_stored_pos_trains():
    vj = create_video_encoder("vjepa_vit_tiny", num_frames=4, img_size=32)
    assert vj.fixed() == ["pos_embed"]
    mae = create_video_encoder("videomae_vit_tiny", num_frames=4, img_size=32, stored_pos=True)
    assert mae.fixed() == [] and "pos_embed" in mae.block_layout()[0][1]
    assert create_video_encoder("videomae_vit_tiny", num_frames=4, img_size=32).fixed() == []


# ------------------------------------------------------------------------------------- the video task
CLASSES = ["BlueSquare", "MoveLeft", "RedDisc"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from videoprobe.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("tune_synth")
    cfg = SynthConfig(CLASSES, videos_per_class=4, seed=3, frames=12, size=32)
    generate_dataset(root, cfg, progress=False)
    return root


def make_task(root, **over):
    from videoprobe.tune import VideoTuneTaskConfig, load_task_config

    args = [f"data.root={root}", "data.kind=synth", "encoder.name=videomae_vit_tiny",
            "encoder.kwargs={num_frames: 4, img_size: 32}", "clips.frame_step=2", "clips.batch_size=2",
            "clips.eval_batch_size=2", "clips.eval_clips=2", "decoder.depth=2"]
    args += [f"{k}={v}" for k, v in over.items()]
    cfg = load_task_config(None, args)
    assert isinstance(cfg, VideoTuneTaskConfig)
    from videoprobe.tune import VideoTuneTask

    return VideoTuneTask(cfg)


def test_tune_yaml_loads_into_the_task_schema():
    from videoprobe.tune import load_task_config

    cfg = load_task_config("configs/video/tune.yaml")
    assert cfg.clips.eval_spatial == "three_crop" and cfg.prompt.label_map == "features"


def test_train_batches_shapes_labels_seeded_augmentation_and_shards(synth_root):
    task = make_task(synth_root)
    enc, record = task.build_encoder(torch.device("cpu"))
    assert record == {"encoder": "videomae_vit_tiny", "checkpoint": None, "checkpoint_sha256": "random:0"}
    assert task.modality == "video" and task.metric == "top1" and task.class_names == sorted(CLASSES)
    items = task._split("train")
    batches = list(task.train_batches(0, 0, 1))
    assert sum(len(b.labels) for b in batches) == len(items) == 6
    for b in batches:
        assert b.inputs.shape == (len(b.labels), 3, 4, 32, 32) and b.inputs.dtype == torch.float32
        assert 0.0 <= float(b.inputs.min()) and float(b.inputs.max()) <= 1.0
        assert b.labels.dtype == torch.int64 and b.groups.dtype == np.int64
        assert b.labels.tolist() == [items[g].label for g in b.groups]
    groups0 = np.concatenate([b.groups for b in batches])
    assert sorted(groups0) == list(range(6))
    again = list(task.train_batches(0, 0, 1))
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, again))  # seeded
    epoch1 = {int(g): x for b in task.train_batches(1, 0, 1) for g, x in zip(b.groups, b.inputs)}
    epoch0 = {int(g): x for b in batches for g, x in zip(b.groups, b.inputs)}
    assert all(not torch.equal(epoch0[g], epoch1[g]) for g in epoch0)  # new crops every epoch
    other = {int(g): x for b in make_task(synth_root, seed=1).train_batches(0, 0, 1)
             for g, x in zip(b.groups, b.inputs)}
    assert any(not torch.equal(epoch0[g], other[g]) for g in epoch0)  # and per seed
    # two ranks: disjoint equal shares; step i of both ranks together is step i of one process
    r0 = list(task.train_batches(0, 0, 2))
    r1 = list(task.train_batches(0, 1, 2))
    g0, g1 = np.concatenate([b.groups for b in r0]), np.concatenate([b.groups for b in r1])
    assert len(r0) == len(r1) == len(batches) == 3 and not set(g0) & set(g1)
    for i, b in enumerate(batches):
        assert set(b.groups) == set(r0[i].groups) | set(r1[i].groups)
        for r in (r0[i], r1[i]):  # the same augmented clip whichever rank decodes it
            for g, x in zip(r.groups, r.inputs):
                assert torch.equal(x, b.inputs[list(b.groups).index(g)])
    with pytest.raises(ConfigError, match="multiple of the world size"):
        next(make_task(synth_root, **{"clips.batch_size": 3}).train_batches(0, 0, 2))
    four = list(make_task(synth_root, **{"clips.batch_size": 4}).train_batches(0, 0, 1))
    assert [len(b.labels) for b in four] == [4]  # full global batches only
    # features and the decoder
    with torch.no_grad():
        f = task.features(enc, batches[0].inputs)
    dec = task.decoder(enc, 3)
    logits = dec(batches[0].inputs)  # clips -> logits through the frozen encoder's tokens
    assert f.shape == (2, task.feature_dim(enc)) == (2, 48)
    assert logits.shape == (2, 3) and dec.pooled(enc(batches[0].inputs)).shape == (2, dec.out_dim) == (2, 48)
    assert len(dec.pool.blocks) == 2
    assert not any(n.startswith("_enc") for n, _ in dec.named_parameters())  # encoder held, not owned
    logits.sum().backward()
    assert all(p.grad is None for p in enc.parameters()) and dec.pool.query.grad is not None
    assert task.blocks(enc) == enc.block_layout() and task.fixed(enc) == []


def test_eval_batches_cover_every_view_of_every_video(synth_root):
    task = make_task(synth_root)
    items = task._split("test")
    views = 2 * 3  # eval_clips x three crops
    rows = list(task.eval_batches("test", 0, 1))
    groups = np.concatenate([b.groups for b in rows])
    labels = torch.cat([b.labels for b in rows])
    assert sorted(set(groups)) == list(range(len(items)))
    assert all((groups == g).sum() == views for g in range(len(items)))
    assert all(int(labels[i]) == items[int(g)].label for i, g in enumerate(groups))
    assert all(b.inputs.shape[1:] == (3, 4, 32, 32) for b in rows)
    ranks = [np.concatenate([b.groups for b in task.eval_batches("test", r, 2)]) for r in range(2)]
    assert sorted(np.concatenate(ranks)) == sorted(groups) and not set(ranks[0]) & set(ranks[1])


def _top1(task, enc, head, split):
    scores: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    with torch.no_grad():
        for b in task.eval_batches(split):
            p = head(task.features(enc, b.inputs)).softmax(1)
            for g, y, row in zip(b.groups, b.labels, p):
                scores[int(g)] = scores.get(int(g), 0) + row
                labels[int(g)] = int(y)
    return float(np.mean([int(scores[g].argmax()) == labels[g] for g in scores]))


def test_a_test_only_loop_trains_a_linear_head_on_live_features(synth_root):
    """Until the shared loop lands: a few epochs of a linear head on live augmented features."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    task = make_task(synth_root)
    enc, _ = task.build_encoder(torch.device("cpu"))
    head = torch.nn.Linear(task.feature_dim(enc), len(task.class_names))
    opt = torch.optim.AdamW(head.parameters(), lr=3e-2)

    def train_loss():
        with torch.no_grad():
            bs = list(task.eval_batches("train"))
            return float(F.cross_entropy(head(torch.cat([task.features(enc, b.inputs) for b in bs])),
                                         torch.cat([b.labels for b in bs])))

    before = train_loss()
    for epoch in range(6):
        for b in task.train_batches(epoch):
            with torch.no_grad():
                f = task.features(enc, b.inputs)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(head(f), b.labels).backward()
            opt.step()
    after = train_loss()
    assert after < before
    assert 0.0 <= _top1(task, enc, head, "test") <= 1.0


def test_prompt_through_the_task_trains_only_prompt_and_head(synth_root):
    import torch.nn.functional as F

    from common.tuning import prepare_method
    from common.tuning.prompt import prompt_names

    task = make_task(synth_root, **{"prompt.pad": 4})
    enc, _ = task.build_encoder(torch.device("cpu"))
    assert task.prepare_prompt(enc) is None  # label_map=features: the loop's head is the map
    model = torch.nn.ModuleDict({"encoder": enc, "head": torch.nn.Linear(48, 3)})
    prep = prepare_method(model, "prompt", always=["head"])
    assert set(prep.trainable) == set(prompt_names(model)) | {"head.weight", "head.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    b = next(iter(task.train_batches(0)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    F.cross_entropy(model["head"](task.features(enc, b.inputs)), b.labels).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(prep.trainable)


def test_flm_label_map_from_a_zoo_checkpoint_head(synth_root, tmp_path):
    """A zoo encoder with its Kinetics head in the file: features are source logits, the FLM map picks one
    distinct source class per task class from the prompted encoder's predictions on the training split."""
    from videoprobe.models.zoo import ZOO_SPECS, ZooEncoder

    torch.manual_seed(1)
    net = ZooEncoder("x3d_s", ZOO_SPECS["x3d_s"])
    sd = {f"model.{k}": v for k, v in net.net.state_dict().items()}
    sd[f"model.{net._proj_prefix}weight"] = torch.randn(400, net.embed_dim) * 0.05
    sd[f"model.{net._proj_prefix}bias"] = torch.zeros(400)
    ck = tmp_path / "X3D_S.pyth"
    torch.save({"model_state": sd}, ck)
    task = make_task(synth_root, **{"encoder.name": "x3d_s", "encoder.checkpoint": ck, "encoder.kwargs": "{}",
                                    "clips.clip_len": 4, "clips.size": 32, "clips.eval_clips": 1,
                                    "clips.eval_spatial": "center", "prompt.label_map": "flm",
                                    "prompt.pad": 4})
    enc, record = task.build_encoder(torch.device("cpu"))
    assert record["checkpoint_sha256"] != "none" and record["checkpoint"] == str(ck)
    label_map = task.prepare_prompt(enc)
    assert label_map.kind == "flm" and label_map.mapping.shape == (3,)
    assert len(set(label_map.mapping.tolist())) == 3 and task.feature_dim(enc) == 400
    b = next(iter(task.eval_batches("test")))
    with torch.no_grad():
        logits = label_map(task.features(enc, b.inputs))
    assert logits.shape == (len(b.labels), 3)
    linear = make_task(synth_root, **{"encoder.name": "x3d_s", "encoder.checkpoint": ck,
                                      "encoder.kwargs": "{}", "clips.clip_len": 4, "clips.size": 32,
                                      "prompt.label_map": "linear", "prompt.pad": 4})
    enc2, _ = linear.build_encoder(torch.device("cpu"))
    lm = linear.prepare_prompt(enc2)
    assert lm.kind == "linear" and lm.linear.in_features == 400 and lm.linear.out_features == 3


def test_a_corrupt_video_stops_training_and_is_skipped_in_evaluation(synth_root, tmp_path):
    import shutil

    from common.errors import InputError

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    task = make_task(root)
    bad_train = task._split("train")[0]
    bad_test = task._split("test")[0]
    for it in (bad_train, bad_test):
        Path(it.path).write_bytes(b"not a video")
    with pytest.raises(InputError, match=Path(bad_train.path).name):
        list(task.train_batches(0, 0, 1))
    groups = np.concatenate([b.groups for b in task.eval_batches("test", 0, 1)])
    assert 0 not in set(groups) and set(groups) == set(range(1, len(task._split("test"))))
    assert bad_test.video_id in task.failures


# ------------------------------------------------------------------------ `videoprobe tune` end to end
TINY_VIT = ["data.kind=synth", "encoder.name=videomae_vit_tiny",
            "encoder.kwargs={num_frames: 4, img_size: 32}", "clips.frame_step=2", "clips.batch_size=2",
            "clips.eval_batch_size=4", "clips.eval_clips=1", "clips.eval_spatial=center",
            "tune.progress=false", "tune.steps=2", "tune.warmup=1", "tune.norm_batches=1",
            "tune.lrs=[0.01, 0.1]", "tune.wds=[0.0]", "tune.select_split=test", "tune.eval_split=test",
            "device=cpu", "prompt.pad=4"]
LADDER = [("linear", []), ("ssf", []), ("lora", []), ("prompt", []), ("mezo", ["over=ssf"])]


def _canonical(name: str) -> str:
    """The encoder's own parameter name of an adapter-wrapped one (SSF ``inner``, peft ``base_layer``)."""
    return name.replace(".inner.", ".").replace(".base_layer.", ".").replace(
        ".parametrizations.weight.original", ".weight")


def _declared_only(cfg, st: dict, method: str) -> None:
    """In the saved checkpoint every encoder parameter outside the method's trainable set is bitwise the
    freshly built encoder's, and the encoder parameters that train are exactly the method's adapters."""
    from videoprobe.tune import VideoTuneTask

    base, _ = VideoTuneTask(cfg).build_encoder(torch.device("cpu"))
    base_sd = base.state_dict()
    saved = {_canonical(n[len("encoder."):]): v for n, v in st["model"].items() if n.startswith("encoder.")}
    trainable = {_canonical(n[len("encoder."):]) for n in st["trainable"] if n.startswith("encoder.")}
    for k, v in base_sd.items():
        assert k not in trainable and torch.equal(saved[k], v), f"{method}: {k} changed or trains"
    adapters = {k for k in saved if k not in base_sd}
    if method == "linear":
        assert not trainable and not adapters
    else:
        assert adapters and trainable == adapters  # only the method's adapters / prompt train
    if method == "prompt":
        assert trainable and all(k.startswith("input_prompt.") for k in trainable)


def test_videoprobe_tune_runs_the_ladder_end_to_end(synth_root, tmp_path, capsys):
    """`videoprobe tune` (the CLI, short keys) runs linear, ssf, lora, prompt and mezo on a tiny ViT on CPU
    into one OUT: one row per method in tune_results.{md,json}, each method training only what it
    declares."""
    import json

    from common.config import load_config
    from videoprobe.cli import main
    from videoprobe.tune import VideoTuneConfig

    out = tmp_path / "out"
    rows = []
    for method, extra in LADDER:
        args = [f"data.root={synth_root}", f"out={out}", *TINY_VIT, f"method={method}", *extra]
        assert main(["tune", *args]) == 0
        assert "top1" in capsys.readouterr().out
        cfg = load_config(VideoTuneConfig, "configs/video/tune.yaml",
                          [a if not a.startswith(("method=", "over=")) else f"tune.{a}" for a in args])
        tag = method if method != "mezo" else "mezo-ssf"
        (run,) = [d for d in (out / "runs").iterdir() if d.name.startswith(tag + "-")]
        st = torch.load(run / "last.pth", weights_only=False)
        _declared_only(cfg, st, method)
        if method == "mezo":
            assert st["mezo"]["steps"] == 2 and np.isfinite(st["mezo"]["last_grad"])
        rows = json.loads((out / "tune_results.json").read_text())["rows"]
        row = [r for r in rows if r["method"] == tag][0]
        assert 0.0 <= row["top1"] <= 100.0 and row["checkpoint_sha256"] == "random:0"
        assert row["split"] == "test" and row["encoder"] == "videomae_vit_tiny"
        if method != "linear":
            assert 0.0 < row["trainable_pct"] < 100.0
    assert [r["method"] for r in rows] == ["linear", "ssf", "lora", "prompt", "mezo-ssf"]
    md = (out / "tune_results.md").read_text()
    assert all(m in md for m in ("linear", "ssf", "lora", "prompt", "mezo-ssf"))
    assert (out / "ladder.png").is_file()


def _x3d_checkpoint(path: Path) -> Path:
    """x3d_s with random weights and a random 400-class Kinetics head, in the zoo's file layout."""
    from videoprobe.models.zoo import ZOO_SPECS, ZooEncoder

    torch.manual_seed(1)
    net = ZooEncoder("x3d_s", ZOO_SPECS["x3d_s"])
    sd = {f"model.{k}": v for k, v in net.net.state_dict().items()}
    sd[f"model.{net._proj_prefix}weight"] = torch.randn(400, net.embed_dim) * 0.05
    sd[f"model.{net._proj_prefix}bias"] = torch.zeros(400)
    torch.save({"model_state": sd}, path)
    return path


X3D = ["encoder.name=x3d_s", "encoder.kwargs={}", "clips.clip_len=4", "clips.size=32"]


def test_zoo_cnn_linear_and_flm_prompt_through_the_loop(synth_root, tmp_path):
    """x3d_s from a file: method=linear trains no encoder parameter; method=prompt with the FLM label map
    trains only the prompt, and the head is the map on unstandardised source logits (no FeatureNorm)."""
    from common.config import load_config
    from common.tuning.loop import FeatureNorm, Tuner
    from common.tuning.prompt import LabelMap
    from videoprobe.tune import VideoTuneConfig, VideoTuneTask, run_video_tune

    ck = _x3d_checkpoint(tmp_path / "X3D_S.pyth")
    out = tmp_path / "out"
    base = [f"data.root={synth_root}", f"out={out}", *TINY_VIT, *X3D, f"encoder.checkpoint={ck}"]
    cfg = load_config(VideoTuneConfig, None, [*base, "tune.method=linear"])
    row = run_video_tune(cfg)
    assert row["method"] == "linear" and row["encoder"] == "x3d_s" and row["trainable_pct"] == 0.0
    assert row["checkpoint_sha256"] not in ("none", "random:0") and 0.0 <= row["top1"] <= 100.0
    (run,) = list((out / "runs").iterdir())
    _declared_only(cfg, torch.load(run / "last.pth", weights_only=False), "linear")

    pcfg = load_config(VideoTuneConfig, None, [*base, "tune.method=prompt", "prompt.label_map=flm"])
    tuner = Tuner(VideoTuneTask(pcfg), pcfg.tune, tmp_path / "flm", torch.device("cpu"))
    assert isinstance(tuner.model.head, LabelMap) and tuner.model.head.kind == "flm"
    assert all(n.startswith("encoder.input_prompt.") for n in tuner.trainable) and tuner.trainable
    tuner.estimate_norm()  # a no-op: the FLM map reads the source logits as they are
    assert tuner.norm_ready and not any(isinstance(m, FeatureNorm) for m in tuner.model.modules())
    prompt = tuner.model.encoder.input_prompt
    assert tuner.cost().trainable_params == sum(p.numel() for p in prompt.parameters())


def test_prompt_is_refused_for_a_task_without_input_prompts():
    """The points task has no ``prepare_prompt``: method=prompt stops with one ConfigError line."""
    from common.tuning.loop import Tuner, TuneSettings

    class NoPromptTask:
        modality = "points"
        metric = "miou"
        class_names = ["a", "b"]

        def build_encoder(self, device):
            return torch.nn.Linear(3, 4), {"encoder": "toy"}

    with pytest.raises(ConfigError, match="method=prompt is not supported by the points task") as e:
        Tuner(NoPromptTask(), TuneSettings(method="prompt"), "unused", torch.device("cpu"))
    assert "\n" not in str(e.value)


def test_prompt_parameters_are_not_counted_as_encoder_size():
    from common.tuning import inject_prompt, trainable_counts

    enc = create_video_encoder("videomae_vit_tiny", num_frames=4, img_size=32)
    size = sum(p.numel() for p in enc.parameters())
    enc.requires_grad_(False)
    prompt = inject_prompt(enc, 32, 4)
    total, enc_train, base = trainable_counts(enc)
    assert base == size and enc_train == total == sum(p.numel() for p in prompt.parameters())
