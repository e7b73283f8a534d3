"""issue 14: the AutoVP-style visual prompt (padding border + output label mapping)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError
from common.tuning import METHODS, prepare_method
from common.tuning.prompt import LabelMap, PadPrompt, flm_mapping, inject_prompt, prompt_names, remove_prompt


def tiny_vit():
    from videoprobe.models import create_video_encoder

    return create_video_encoder("videomae_vit_tiny", num_frames=4, img_size=32)


def test_pad_prompt_frames_the_resized_input():
    p = PadPrompt(size=32, pad=4)
    with torch.no_grad():
        p.top.fill_(3.0)
    x = torch.rand(2, 3, 4, 20, 28)  # a clip of another size: resized to 24 x 24 inside the border
    out = p(x)
    assert out.shape == (2, 3, 4, 32, 32)
    inner = F.interpolate(x.permute(0, 2, 1, 3, 4).reshape(8, 3, 20, 28), size=(24, 24), mode="bilinear",
                          align_corners=False).reshape(2, 4, 3, 24, 24).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(out[..., 4:28, 4:28], inner)
    top = torch.sigmoid(torch.tensor(3.0)).item()
    torch.testing.assert_close(out[..., :4, :], torch.full_like(out[..., :4, :], top))
    torch.testing.assert_close(out[..., 4:28, :4], torch.full_like(out[..., 4:28, :4], 0.5))  # zeros init
    assert p(torch.rand(5, 3, 24, 24)).shape == (5, 3, 32, 32)  # images too
    n_border = 3 * (32 * 32 - 24 * 24)
    assert sum(q.numel() for q in p.parameters()) == n_border
    with pytest.raises(ConfigError, match="pad"):
        PadPrompt(size=8, pad=4)


def test_only_the_prompt_and_label_map_train_after_a_step():
    torch.manual_seed(0)
    enc = tiny_vit()
    inject_prompt(enc, size=32, pad=4)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = enc
            self.head = LabelMap("linear", enc.embed_dim, 3)

        def forward(self, x):
            return self.head(self.encoder(x).pooled)

    model = Model()
    prep = prepare_method(model, "prompt", always=["head"])
    assert METHODS["prompt"].adapters == "prompt" and prep.adapters == "prompt"
    declared = set(prep.trainable)
    assert declared == set(prompt_names(model)) | {"head.linear.weight", "head.linear.bias"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == declared
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.rand(4, 3, 4, 24, 24), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(x), y).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == declared  # every prompt pixel gets a gradient; the encoder stays bitwise unchanged
    assert prep.merge(model) == 0
    # removing the prompt restores the plain encoder; a deep copy keeps its own prompt and hook
    clip = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad():
        prompted = enc(clip).pooled
        twin = copy.deepcopy(enc)
        remove_prompt(twin)
        assert not prompt_names(twin) and not torch.allclose(twin(clip).pooled, prompted)
        torch.testing.assert_close(enc(clip).pooled, prompted)  # the original still prompts its input
        remove_prompt(enc)
        torch.testing.assert_close(enc(clip).pooled, twin(clip).pooled)


def test_prompt_method_needs_an_injected_prompt():
    with pytest.raises(ConfigError, match="inject_prompt"):
        prepare_method(nn.Sequential(nn.Linear(2, 2)), "prompt")
    enc = tiny_vit()
    inject_prompt(enc, 32, 4)
    with pytest.raises(ConfigError, match="already"):
        inject_prompt(enc, 32, 4)


def test_flm_mapping_on_a_hand_made_prediction_matrix():
    # 3 target classes, 5 source classes. Counts C[k, s]:
    #   k=0: s1 x3, s2 x1        k=1: s1 x4, s3 x2        k=2: s4 x2, s0 x1
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, -1]
    preds = [1, 1, 1, 2, 1, 1, 1, 1, 3, 3, 4, 4, 0, 1]
    # plain argmax: both 0 and 1 -> source 1
    assert flm_mapping(np.array(preds), labels, 3, num_source=5, unique=False).tolist() == [1, 1, 4]
    # one-to-one greedy: (k1, s1)=4 first (row 1 and column 1 leave), then (k2, s4)=2, then (k0, s2)=1
    assert flm_mapping(torch.tensor(preds), torch.tensor(labels), 3, num_source=5).tolist() == [2, 1, 4]
    logits = F.one_hot(torch.tensor(preds), 5).float()  # source logits: argmax = preds
    assert flm_mapping(logits, labels, 3).tolist() == [2, 1, 4]
    with pytest.raises(ConfigError, match="source classes"):
        flm_mapping(torch.tensor([0, 1]), [0, 1], 3, num_source=2)


def test_label_map_shapes():
    src = torch.randn(6, 5)
    flm = LabelMap("flm", 5, 3, torch.tensor([2, 1, 4]))
    assert not list(flm.parameters())
    torch.testing.assert_close(flm(src), src[:, [2, 1, 4]])
    lin = LabelMap("linear", 5, 3)
    assert lin(src).shape == (6, 3)
    with pytest.raises(ConfigError, match="outside"):
        LabelMap("flm", 5, 3, torch.tensor([2, 1, 7]))
