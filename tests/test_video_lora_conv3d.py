"""LoRA on the pointwise (1 x 1 x 1) Conv3d layers of a video CNN (x3d's conv_a / conv_c): the merged
model gives the same outputs as the adapted one (peft 0.21's own merge of a 1x1x1 Conv3d fails: it
squeezes only two of the three kernel axes)."""
from __future__ import annotations

import torch
from torch import nn

from common.tuning.lora import LoraOptions, inject_lora, merge_lora


class Pointwise3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv3d(6, 10, 1)
        self.conv_b = nn.Conv3d(10, 10, 3, padding=1)
        self.conv_c = nn.Conv3d(10, 4, 1, bias=False)

    def forward(self, x):
        return self.conv_c(torch.relu(self.conv_b(torch.relu(self.conv_a(x)))))


def test_lora_on_pointwise_conv3d_merges_to_the_same_outputs():
    torch.manual_seed(0)
    net = Pointwise3d()
    names = inject_lora(net, LoraOptions(rank=3, alpha=6.0, targets=("conv_a", "conv_c")))
    assert sorted(names) == ["conv_a", "conv_c"]
    with torch.no_grad():  # lora_B starts at zero: make the adapters do something
        for n, p in net.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    x = torch.randn(2, 6, 3, 5, 5)
    with torch.no_grad():
        before = net(x)
    assert merge_lora(net) == 2
    assert type(net.conv_a) is nn.Conv3d and type(net.conv_c) is nn.Conv3d  # base layers back, no adapters
    assert not any("lora_" in n for n, _ in net.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)
