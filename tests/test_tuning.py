"""common.tuning: trainable sets, progressive schedule, layer-wise decay, SSF / LoRA merge, MeZO, costs."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.errors import ConfigError
from common.tuning import (
    METHODS,
    SSF,
    LoraOptions,
    MeZO,
    PeakMemory,
    ProgressiveSchedule,
    StepTimer,
    check_adapters_reached,
    inject_lora,
    inject_ssf,
    layerwise_decay_factors,
    layerwise_lr_groups,
    merge_lora,
    merge_ssf,
    prepare_method,
    resolve_blocks,
    select_trainable,
    tune_cost,
    z_seed,
)
from common.tuning.ssf import convs_before_bn

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # spconv's torch.cuda.amp decorators


class Blk(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, c)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(F.gelu(self.qkv(self.norm(x))))


class Net(nn.Module):
    """A small "encoder" (conv stem, 3 blocks, final norm) with a "head"."""

    def __init__(self, c: int = 8, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(4, c, 3, padding=1), nn.BatchNorm1d(c))
        self.blocks = nn.ModuleList(Blk(c) for _ in range(3))
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 4, L)
        h = self.stem(x).transpose(1, 2)  # (B, L, C)
        for b in self.blocks:
            h = b(h)
        return self.head(self.norm(h).mean(1))


def layout(net: Net):
    return [("stem", net.stem), ("b0", net.blocks[0]), ("b1", ["blocks.1"]), ("b2", ["blocks.2", "norm"])]


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 4, 5, generator=g), torch.randint(0, 3, (6,), generator=g)


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def one_step(net: nn.Module, lr: float = 1e-2) -> None:
    """One AdamW step (weight decay on) over ALL parameters: frozen ones have no grad and must not move."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.1)
    opt.zero_grad(set_to_none=True)
    x, y = data()
    F.cross_entropy(net(x), y).backward()
    opt.step()


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def changed(net: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}


HEAD = [n for n, _ in Net().named_parameters() if n.startswith("head.")]
B2 = [n for n, _ in Net().named_parameters() if n.startswith(("blocks.2.", "norm."))]
B1 = [n for n, _ in Net().named_parameters() if n.startswith("blocks.1.")]


# ---------------------------------------------------------------------------------- trainable sets


CASES = [("linear", None), ("decoder", None), ("last_k", None), ("full", None), ("ssf", None), ("lora", None),
         ("mezo", "ssf"), ("mezo", "lora"), ("mezo", "last_k"), ("mezo", "full")]


@pytest.mark.parametrize("method,over", CASES)
def test_each_method_trains_only_what_it_declares(method, over):
    net = make_net()
    net.eval()  # BatchNorm running stats are buffers, but keep the forward deterministic
    prep = prepare_method(net, method, layout(net), k=2, always=["head"], over=over,
                          lora=LoraOptions(rank=2, targets=("qkv", "proj")))
    declared = set(prep.trainable)
    expected = {
        "linear": set(HEAD), "decoder": set(HEAD), "last_k": set(HEAD + B1 + B2),
        "full": {n for n, _ in net.named_parameters()},
    }
    kind = over or method
    if kind in expected:
        assert declared == expected[kind]
    elif kind == "ssf":
        assert declared == set(HEAD) | {n for n, _ in net.named_parameters() if ".ssf_" in n}
        # the stem conv is followed by its BatchNorm: the SSF after the BN stands for both
        assert "stem.1.ssf_scale" in declared and "blocks.0.norm.ssf_shift" in declared
        assert "stem.0.ssf_scale" not in declared
        assert not any(n.startswith("head.") and "ssf" in n for n in declared)  # no adapter in the head
    else:
        assert declared == set(HEAD) | {n for n, _ in net.named_parameters() if ".lora_" in n}
        assert any("blocks.0.qkv.lora_A" in n for n in declared)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == declared
    before = snapshot(net)
    if METHODS[method].zeroth_order:
        x, y = data()
        mezo = MeZO([p for p in net.parameters() if p.requires_grad], lr=1e-2, eps=1e-3, seed=1)
        mezo.step(lambda: F.cross_entropy(net(x), y))
        assert all(p.grad is None for p in net.parameters())
    else:
        one_step(net)
    moved = changed(net, before)
    assert moved <= declared, f"frozen parameters moved: {sorted(moved - declared)}"
    # every declared parameter moved (LoRA's A gets no gradient while B is zero; weight decay moves it)
    assert moved == declared
    assert prep.merge(net) == (0 if kind not in ("ssf", "lora") else len(prep.adapted_modules))


def test_fixed_parameters_never_train():
    net = make_net()
    names = select_trainable(net, "full", fixed=["stem.1"])
    assert "stem.0.weight" in names and not any(n.startswith("stem.1.") for n in names)
    groups = layerwise_lr_groups(net, layout(net), lr=1e-3, decay=0.5, always=["head"], fixed=["stem.1"])
    assert not net.stem[1].weight.requires_grad and net.stem[0].weight.requires_grad
    assert not any(p is net.stem[1].weight for g in groups for p in g["params"])
    sched = ProgressiveSchedule(net, layout(net), [(0.0, "stem", 1e-3)], head_lr=1e-3, fixed=["stem.1"])
    assert set(sched.trainable_at(1, 2)) == {"stem.0.weight", "stem.0.bias"}


def test_blocks_by_module_or_prefix_and_errors():
    net = make_net()
    res = dict(resolve_blocks(net, layout(net)))
    assert res["b0"] == [n for n, _ in net.named_parameters() if n.startswith("blocks.0.")]
    assert set(res["b2"]) == set(B2)
    with pytest.raises(ConfigError, match="in blocks 'b0' and 'again'"):
        resolve_blocks(net, [("b0", net.blocks[0]), ("again", ["blocks.0"])])
    with pytest.raises(ConfigError, match="no parameters"):
        resolve_blocks(net, [("nothing", ["nope"])])
    with pytest.raises(ConfigError, match="not parameters of the model"):
        resolve_blocks(net, [("alien", nn.Linear(2, 2))])
    with pytest.raises(ConfigError, match="k <= 4"):
        select_trainable(net, "last_k", layout(net), k=5)
    with pytest.raises(ConfigError, match="unknown trainable set"):
        select_trainable(net, "everything")
    with pytest.raises(ConfigError, match="no ssf adapters"):
        select_trainable(net, "ssf")
    with pytest.raises(ConfigError, match="over="):
        prepare_method(make_net(), "mezo")
    with pytest.raises(ConfigError, match="needs the encoder's block layout"):
        prepare_method(make_net(), "last_k")


def test_layerwise_decay_factors_and_groups():
    assert layerwise_decay_factors(4, 0.5) == [0.0625, 0.125, 0.25, 0.5]
    net = make_net().double()  # float64: the lr * grad check below subtracts nearby weights
    for p in net.parameters():
        p.requires_grad_(False)
    groups = layerwise_lr_groups(net, layout(net), lr=1e-3, decay=0.5, always=["head"])
    assert [g["name"] for g in groups] == ["stem", "b0", "b1", "b2", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * f for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1)])
    assert all(p.requires_grad for p in net.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    with pytest.raises(ConfigError, match="in no declared block"):
        layerwise_lr_groups(net, layout(net)[1:], lr=1e-3, decay=0.5, always=["head"])
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        layerwise_decay_factors(3, 0.0)
    # an optimizer built from the groups applies the decayed lr: with SGD the step is lr * grad
    opt = torch.optim.SGD(groups, lr=1.0)
    before = snapshot(net)
    x, y = data()
    F.cross_entropy(net(x.double()), y).backward()
    opt.step()
    for name, f in (("blocks.0.qkv.weight", 1 / 8), ("head.weight", 1.0)):
        p = dict(net.named_parameters())[name]
        torch.testing.assert_close(before[name] - p, 1e-3 * f * p.grad, rtol=1e-4, atol=1e-9)


def test_progressive_schedule_unfreezes_at_fractions_with_their_lrs():
    net = make_net()
    net.eval()
    stages = [(0.25, "b2", 1e-2), (0.5, ["b1"], 5e-3), (0.75, ["b0", "stem"], 1e-3)]
    sched = ProgressiveSchedule(net, layout(net), stages, head_lr=2e-2, always=["head"])
    total = 8
    expect = {0: ["head"], 1: ["head"], 2: ["head", "b2"], 3: ["head", "b2"], 4: ["head", "b2", "b1"],
              6: ["head", "b2", "b1", "b0+stem"], 8: ["head", "b2", "b1", "b0+stem"]}
    for step, names in expect.items():
        groups = sched.param_groups_at(step, total)
        assert [g["name"] for g in groups] == names
    lrs = {g["name"]: g["lr"] for g in sched.param_groups_at(8, 8)}
    assert lrs == {"head": 2e-2, "b2": 1e-2, "b1": 5e-3, "b0+stem": 1e-3}
    assert select_trainable(net, "progressive", schedule=sched) == HEAD
    opt = torch.optim.AdamW(sched.optimizer_groups(weight_decay=0.1))
    assert [g["lr"] for g in opt.param_groups] == [2e-2, 1e-2, 5e-3, 1e-3]
    x, y = data()
    for step in range(total):
        trainable = set(sched.apply(step, total))
        before = snapshot(net)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        assert changed(net, before) == trainable, step
    assert set(sched.trainable_at(1, total)) == set(HEAD)
    assert set(sched.trainable_at(2, total)) == set(HEAD + B2)
    with pytest.raises(ConfigError, match="unknown block 'b9'"):
        ProgressiveSchedule(net, layout(net), [(0.5, "b9", 1e-3)], head_lr=1e-3)
    with pytest.raises(ConfigError, match="two progressive stages"):
        ProgressiveSchedule(net, layout(net), [(0.2, "b1", 1e-3), (0.5, "b1", 1e-3)], head_lr=1e-3)
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        ProgressiveSchedule(net, layout(net), [(1.0, "b1", 1e-3)], head_lr=1e-3)


# ---------------------------------------------------------------------------------- SSF


def randomize_batchnorm(net: nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_ssf_merge_equals_unmerged_on_mlp_norm_conv_model():
    net = make_net().eval()
    randomize_batchnorm(net)
    ref = copy.deepcopy(net)
    wrapped = inject_ssf(net, exclude=["head"], generator=torch.Generator().manual_seed(0),
                         conv_before_bn=True)
    assert set(wrapped) >= {"stem.0", "stem.1", "blocks.0.norm", "blocks.0.qkv", "blocks.2.proj", "norm"}
    assert isinstance(net.stem[0], SSF) and not any(n.startswith("head") for n in wrapped)
    scales = torch.cat([m.ssf_scale.detach() for m in net.modules() if isinstance(m, SSF)])
    assert abs(float(scales.mean()) - 1.0) < 0.02 and 0.01 < float(scales.std()) < 0.03
    x, _ = data(1)
    with torch.no_grad():
        assert not torch.allclose(net(x), ref(x))  # the adapters act
        before = net(x)
    assert merge_ssf(net) == len(wrapped)
    assert not any(isinstance(m, SSF) for m in net.modules())
    assert list(net.state_dict()) == list(ref.state_dict())  # original layout and names
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)


def test_ssf_skips_a_conv_followed_by_its_batchnorm_and_still_merges():
    """conv -> BN (eval: a per-channel affine) -> SSF spans what conv -> SSF -> BN -> SSF does; the conv
    of a conv-BN pair gets no SSF by default, a conv not followed by a BN (or by one of other width)
    keeps its SSF; ``conv_before_bn=True`` wraps every conv."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
                        nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Conv2d(5, 6, 1), nn.BatchNorm2d(5)).eval()
    assert convs_before_bn(net) == {"0"}
    ref = copy.deepcopy(net)
    assert inject_ssf(copy.deepcopy(net), conv_before_bn=True) == ["0", "1.0", "2", "4", "5"]
    assert inject_ssf(net, generator=torch.Generator().manual_seed(1)) == ["1.0", "2", "4", "5"]
    x = torch.randn(2, 3, 6, 6)
    run = nn.Sequential(*list(net)[:5])  # the last BN (width 5) is not on the path
    with torch.no_grad():
        before = run(x)
        assert not torch.allclose(before, nn.Sequential(*list(ref)[:5])(x))
        merge_ssf(net)
        torch.testing.assert_close(nn.Sequential(*list(net)[:5])(x), before, rtol=1e-5, atol=1e-6)


def test_ssf_merge_adds_missing_bias_and_affine():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.LayerNorm(6, elementwise_affine=False),
                        nn.Conv1d(1, 3, 3, bias=False)).eval()

    def run(m, x):
        return m[2](m[1](m[0](x)).unsqueeze(1))

    inject_ssf(net)
    x = torch.randn(5, 4)
    with torch.no_grad():
        before = run(net, x)
        merge_ssf(net)
        torch.testing.assert_close(run(net, x), before, rtol=1e-5, atol=1e-6)
    assert net[0].bias is not None and net[1].weight is not None and net[2].bias is not None


def test_ssf_keeps_the_autocast_dtype():
    """Under bf16 autocast a Linear returns bf16; its SSF must not promote the stream to float32."""
    m = nn.Linear(4, 4)
    m_parent = nn.Sequential(m)
    inject_ssf(m_parent)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m_parent(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert m_parent[0].ssf_scale.grad is not None and m_parent[0].ssf_scale.grad.dtype == torch.float32


def tiny_points(n: int = 300, seed: int = 0):
    from pointprobe.models import PointBatch

    g = torch.Generator().manual_seed(seed)
    gc = torch.unique(torch.randint(0, 24, (n, 3), generator=g), dim=0)
    coord = gc.float() * 0.04
    feat = torch.cat([coord, torch.rand(len(gc), 6, generator=g)], 1)
    return PointBatch.create(coord, gc, feat)


@pytest.fixture(scope="module")
def ptv3():
    from pointprobe.models import create_encoder

    torch.manual_seed(0)
    return create_encoder("ptv3_tiny").eval()


def test_ssf_merge_equals_unmerged_on_ptv3(ptv3):
    enc = copy.deepcopy(ptv3)
    keys = list(enc.state_dict())
    wrapped = inject_ssf(enc, generator=torch.Generator().manual_seed(1))
    assert "enc.enc0.block0.cpe.0" in wrapped  # the sparse-conv position encoding
    assert {"enc.enc0.block0.attn.qkv", "enc.enc0.block0.attn.proj", "enc.enc1.block0.mlp.0.fc1",
            "enc.enc0.block0.norm1.0", "enc.enc1.down.proj"} <= set(wrapped)
    point = tiny_points()
    with torch.no_grad():
        unmerged = enc.encode(point)
        assert not torch.allclose(unmerged, ptv3.encode(point), atol=1e-4)
    merge_ssf(enc)
    assert list(enc.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(enc.encode(point), unmerged, rtol=1e-4, atol=1e-5)


def test_ssf_and_lora_merge_on_sparseunet():
    """SparseUNet's convs are bias-free spconv convs: a merged SSF shift would need a bias, which spconv
    refuses on the CPU in eval mode, so SSF skips them (norms and linears still get SSF); LoRA uses the
    kernel delta on every conv, the strided and inverse ones included."""
    from pointprobe.models.sparseunet import create_sparseunet

    torch.manual_seed(0)
    base = create_sparseunet(channels=(8, 16, 24), depths=(1, 1, 1), norm="bn", decoder_channels=[8, 8],
                             decoder_depths=[1, 1]).eval()
    randomize_batchnorm(base)
    point = tiny_points()
    with torch.no_grad():
        ref = base.encode(point)
    for kind in ("ssf", "lora"):  # BatchNorm (eval, random running stats): the harder fold; LN is in PTv3
        enc = copy.deepcopy(base)
        keys = list(enc.state_dict())
        if kind == "ssf":
            wrapped = inject_ssf(enc, generator=torch.Generator().manual_seed(1))
            convs = [n for n, m in base.named_modules() if type(m).__module__.startswith("spconv")]
            assert convs and not set(convs) & set(wrapped)
            assert any(n.endswith("norm1") or ".norm" in n for n in wrapped)
        else:
            wrapped = inject_lora(enc, LoraOptions(rank=2, targets=("conv1", "conv2", "conv", "up")))
            assert {"levels.0.0.conv1", "downs.0.conv", "ups.0.up"} <= set(wrapped)
            randomize_lora_b(enc)
        check_adapters_reached(enc, lambda e=enc: e.encode(point))
        with torch.no_grad():
            unmerged = enc.encode(point)
            assert not torch.allclose(unmerged, ref, atol=1e-4)
            (merge_ssf if kind == "ssf" else merge_lora)(enc)
            merged = list(enc.state_dict())
            if kind == "lora":
                assert merged == keys
            else:  # bias-free Linears (the skip projections) gain the folded shift as a bias
                assert set(keys) <= set(merged) and all(k.endswith(".bias") for k in set(merged) - set(keys))
            torch.testing.assert_close(enc.encode(point), unmerged, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- LoRA


def randomize_lora_b(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_on_ptv3_qkv_trains_and_merges(ptv3):
    enc = copy.deepcopy(ptv3)
    keys = list(enc.state_dict())
    adapted = inject_lora(enc, LoraOptions(rank=2, alpha=4, targets=("qkv",)))
    assert adapted == [f"enc.enc{s}.block0.attn.qkv" for s in range(3)]
    names = select_trainable(enc, "lora")
    assert names and all(".lora_" in n for n in names)
    point = tiny_points()
    check_adapters_reached(enc, lambda: enc.encode(point))
    randomize_lora_b(enc)
    with torch.no_grad():
        unmerged = enc.encode(point)
        assert not torch.allclose(unmerged, ptv3.encode(point), atol=1e-4)
    assert merge_lora(enc) == 3
    assert list(enc.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(enc.encode(point), unmerged, rtol=1e-4, atol=1e-5)


def test_lora_leaves_the_always_trained_head_without_adapters():
    net = make_net()
    prep = prepare_method(net, "lora", always=["blocks.2"], lora=LoraOptions(rank=2, targets=("qkv",)))
    assert prep.adapted_modules == ["blocks.0.qkv", "blocks.1.qkv"]
    assert not any(".lora_" in n for n, _ in net.blocks[2].named_parameters())
    assert {n for n in prep.trainable if not n.startswith("blocks.2.")} == {
        n for n, _ in net.named_parameters() if ".lora_" in n}
    assert all(p.requires_grad for p in net.blocks[2].parameters())


def test_lora_on_ptv3_sparse_conv_position_encoding_merges(ptv3):
    """peft has no spconv layer: the CPE SubMConv3d gets the own low-rank kernel delta."""
    enc = copy.deepcopy(ptv3)
    keys = list(enc.state_dict())
    adapted = inject_lora(enc, LoraOptions(rank=2, alpha=4, targets=("cpe.0", "qkv")))
    assert "enc.enc0.block0.cpe.0" in adapted and "enc.enc0.block0.attn.qkv" in adapted
    names = select_trainable(enc, "lora")
    assert "enc.enc0.block0.cpe.0.parametrizations.weight.0.lora_A" in names
    assert not any(n.endswith("parametrizations.weight.original") for n in names)  # the kernel stays frozen
    point = tiny_points()
    check_adapters_reached(enc, lambda: enc.encode(point))
    randomize_lora_b(enc)
    with torch.no_grad():
        unmerged = enc.encode(point)
        assert not torch.allclose(unmerged, ptv3.encode(point), atol=1e-4)
    # gradients reach the sparse-conv adapters
    enc.encode(point).square().mean().backward()
    lora_b = dict(enc.named_parameters())["enc.enc0.block0.cpe.0.parametrizations.weight.0.lora_B"]
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0
    assert merge_lora(enc) == 6
    assert list(enc.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(enc.encode(point), unmerged, rtol=1e-4, atol=1e-5)


def test_lora_refuses_bad_options_and_unknown_targets(ptv3):
    with pytest.raises(ConfigError, match="dropout"):
        inject_lora(copy.deepcopy(ptv3), LoraOptions(targets=("cpe.0",), dropout=0.1))
    with pytest.raises(ConfigError, match="no module of the model is named"):
        inject_lora(make_net(), LoraOptions(targets=("nope",)))
    with pytest.raises(ConfigError, match="rank"):
        LoraOptions(rank=0)


def video_vit(family: str):
    from videoprobe.models.vit import create_video_vit

    return create_video_vit("t", family, "tiny", num_frames=4, img_size=32).eval()


def test_lora_on_video_vit_merges():
    vit = video_vit("vjepa")
    ref = copy.deepcopy(vit)
    keys = list(vit.state_dict())
    targets = ("qkv", "attn.proj", "fc1", "fc2", "patch_embed.proj")  # the last one a Conv3d
    inject_lora(vit, LoraOptions(rank=4, alpha=8, dropout=0.1, targets=targets))
    assert not any(m.training for m in vit.modules())  # the new dropout modules follow the eval model
    prep_names = select_trainable(vit, "lora")
    assert len(prep_names) == 2 * (4 * 2 + 1)  # (A, B) x (4 targets x 2 blocks + patch embedding)
    clip = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    check_adapters_reached(vit, lambda: vit.encode(clip))
    randomize_lora_b(vit)
    with torch.no_grad():
        unmerged = vit.encode(clip).pooled
        assert not torch.allclose(unmerged, ref.encode(clip).pooled, atol=1e-4)
    merge_lora(vit)
    assert list(vit.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(vit.encode(clip).pooled, unmerged, rtol=1e-4, atol=1e-5)


def test_lora_reaches_videomae_split_qkv_bias():
    """VideoMAE's attention adds its split q/v bias after calling qkv (it used to call F.linear on qkv.weight
    itself, so a LoRA on qkv never ran): the adapters are reached and the merged model gives the same
    output."""
    torch.manual_seed(0)
    vit = video_vit("videomae").eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    inject_lora(vit, LoraOptions(rank=2, targets=("qkv",)))
    check_adapters_reached(vit, lambda: vit.encode(clip))
    for n, p in vit.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        before = vit.encode(clip).pooled
        merge_lora(vit)
        after = vit.encode(clip).pooled
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_adapters_bypassed_by_a_module_are_reported():
    """A module that reads an adapted layer's .weight itself bypasses the adapter: check_adapters_reached
    names it instead of training nothing."""

    class Bypass(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.qkv.weight, self.qkv.bias)

    net = Bypass()
    inject_lora(net, LoraOptions(rank=2, targets=("qkv",)))
    with pytest.raises(ConfigError, match=r"never called .*qkv"):
        check_adapters_reached(net, lambda: net(torch.randn(2, 8)))


# ---------------------------------------------------------------------------------- MeZO


def test_mezo_step_equals_hand_computed_spsa():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    tuned = ["0.weight", "0.bias"]
    select_trainable(net, "full")
    for n, p in net.named_parameters():
        p.requires_grad_(n in tuned)
    theta = {n: p.detach().clone() for n, p in net.named_parameters()}
    lr, eps, seed = 0.05, 1e-2, 7

    def loss_at(params: dict[str, torch.Tensor]) -> float:
        return float(F.mse_loss(functional_call(net, params, (x,)), y))

    # hand computation, z drawn independently from the documented per-(step, parameter) seeds
    expected = dict(theta)
    for step in range(2):
        zs = {}
        for i, n in enumerate(tuned):
            g = torch.Generator().manual_seed(z_seed(seed, step, i))
            zs[n] = torch.randn(theta[n].shape, generator=g)
        plus = {n: expected[n] + eps * zs[n] if n in zs else expected[n] for n in expected}
        minus = {n: expected[n] - eps * zs[n] if n in zs else expected[n] for n in expected}
        grad = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        expected = {n: expected[n] - lr * grad * zs[n] if n in zs else expected[n] for n in expected}

    opt = MeZO([p for p in net.parameters() if p.requires_grad], lr=lr, eps=eps, seed=seed)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        return F.mse_loss(net(x), y)

    opt.step(closure)
    state = opt.state_dict()
    resumed = MeZO([p for p in net.parameters() if p.requires_grad], lr=1.0, eps=1.0, seed=0)
    resumed.load_state_dict(state)  # exact resume: the second step uses step 1's directions
    resumed.step(closure)
    assert calls == [False] * 4  # two forward passes per step, no autograd
    for n, p in net.named_parameters():
        if n in tuned:
            torch.testing.assert_close(p.detach(), expected[n], rtol=0, atol=2e-6)
            assert not torch.equal(p, theta[n])
        else:
            assert torch.equal(p, theta[n])  # bitwise
    assert all(p.grad is None for p in net.parameters())  # no gradient buffers


def test_mezo_weight_decay_and_seed_independence():
    p = nn.Parameter(torch.full((3,), 2.0))
    opt = MeZO([p], lr=0.1, eps=1e-3, seed=3, weight_decay=0.5)
    opt.step(lambda: torch.tensor(1.0))  # flat loss: projected gradient 0, only the decay acts
    assert opt.last_grad == 0.0
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)), rtol=0, atol=1e-6)
    assert len({z_seed(0, s, i) for s in range(50) for i in range(50)}) == 2500
    assert z_seed(0, 1, 0) != z_seed(1, 1, 0)


def test_mezo_argument_errors():
    with pytest.raises(ConfigError, match="no parameters"):
        MeZO([], lr=1e-3)
    with pytest.raises(ConfigError, match="lr and eps"):
        MeZO([nn.Parameter(torch.zeros(1))], lr=0.0)


# ---------------------------------------------------------------------------------- costs


def test_tune_cost_counts_adapters_against_the_encoder_base():
    net = make_net().eval()
    enc_base = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("head."))
    prepare_method(net, "ssf", always=["head"])
    adapters = sum(p.numel() for n, p in net.named_parameters() if ".ssf_" in n)
    head = sum(p.numel() for n, p in net.named_parameters() if n.startswith("head."))
    mem, timer = PeakMemory("cpu"), StepTimer("cpu")
    mem.start()
    for _ in range(3):
        with timer:
            one_step(net)
    cost = tune_cost("ssf", net, memory=mem, timer=timer)
    # net holds its head here: the head's parameters count in the encoder columns of this toy model
    assert cost.encoder_params == enc_base + head
    assert cost.trainable_params == cost.encoder_trainable_params == adapters + head
    assert cost.trainable_pct == pytest.approx(100 * (adapters + head) / (enc_base + head))
    assert cost.steps == 3 and cost.step_time_s > 0 and cost.total_time_s >= cost.step_time_s
    assert cost.memory_kind in ("cpu_peak_rss_train", "cpu_max_rss_process")
    assert cost.peak_memory_bytes > 10 * 2**20
    assert set(cost.as_dict()) >= {"method", "trainable_pct", "peak_memory_bytes", "step_time_s"}
