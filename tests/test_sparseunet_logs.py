"""A SparseUNet forward prints nothing from torch.fx (its is_fx_tracing notice is silenced at the call)."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pointprobe.models.sparseunet import create_sparseunet


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_forward_logs_no_fx_tracing_notice():
    import torch.fx._symbolic_trace as fx_trace

    fx_trace.is_fx_tracing_warning.cache_clear()  # the notice is printed once per process: re-arm it
    keep = _Keep()
    fx_log = logging.getLogger(fx_trace.__name__)
    fx_log.addHandler(keep)
    try:
        model = create_sparseunet(channels=(8, 16), depths=(1, 1)).eval()
        rng = np.random.default_rng(0)
        grid = torch.from_numpy(np.unique(rng.integers(0, 20, (300, 3)), axis=0))
        batch = {"coord": grid.float() * 0.02, "grid_coord": grid, "feat": torch.randn(len(grid), 9),
                 "offset": torch.tensor([len(grid)])}
        with torch.no_grad():
            model(batch)
        assert not [r for r in keep.records if "is_fx_tracing" in r.getMessage()]
        # the silencing is narrow: the same notice outside a SparseUNet forward still reaches the logger
        fx_trace.is_fx_tracing_warning.cache_clear()
        fx_trace.is_fx_tracing()
        assert [r for r in keep.records if "is_fx_tracing" in r.getMessage()]
    finally:
        fx_log.removeHandler(keep)
        fx_trace.is_fx_tracing_warning.cache_clear()


def test_ptv3_forward_logs_no_fx_tracing_notice():
    import torch.fx._symbolic_trace as fx_trace

    from pointprobe.models import create_encoder, encode_points

    fx_trace.is_fx_tracing_warning.cache_clear()
    keep = _Keep()
    fx_log = logging.getLogger(fx_trace.__name__)
    fx_log.addHandler(keep)
    try:
        model = create_encoder("ptv3_tiny").eval()
        xyz = np.random.default_rng(0).random((400, 3)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # colour and normals zero-filled
            encode_points(model, xyz)
        assert not [r for r in keep.records if "is_fx_tracing" in r.getMessage()]
    finally:
        fx_log.removeHandler(keep)
        fx_trace.is_fx_tracing_warning.cache_clear()
