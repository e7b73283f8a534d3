"""issue 14, video side: the block layouts of the video encoders and the video tuning task."""
from __future__ import annotations

import pytest
import torch

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
