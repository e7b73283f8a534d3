"""Class colours for label pictures and labelled PLY files (ScanNet 20-class benchmark palette)."""
from __future__ import annotations

import numpy as np

# The colours of the ScanNet benchmark's 20-class visualisations (nyu40 palette entries of each class).
SCANNET20_RGB = np.array([
    (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
    (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189),
    (196, 156, 148), (23, 190, 207), (247, 182, 210), (219, 219, 141), (255, 127, 14),
    (158, 218, 229), (44, 160, 44), (112, 128, 144), (227, 119, 194), (82, 84, 163),
], dtype=np.uint8)
IGNORE_RGB = np.array([0, 0, 0], dtype=np.uint8)


def label_colors(labels: np.ndarray, num_classes: int = 20) -> np.ndarray:
    """(N,) class ids (-1 = ignore) -> (N, 3) uint8 colours; more than 20 classes use a hashed palette."""
    labels = np.asarray(labels).astype(np.int64)
    if num_classes <= len(SCANNET20_RGB):
        table = SCANNET20_RGB
    else:
        rng = np.random.default_rng(12345)
        table = rng.integers(40, 256, size=(num_classes, 3)).astype(np.uint8)
        table[: len(SCANNET20_RGB)] = SCANNET20_RGB
    out = np.empty((labels.shape[0], 3), dtype=np.uint8)
    valid = labels >= 0
    out[valid] = table[labels[valid] % len(table)]
    out[~valid] = IGNORE_RGB
    return out
