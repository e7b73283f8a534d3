"""Zero-shot visualisation of video features: PCA of patch tokens fitted jointly over all frames (so a
colour means the same thing in every frame), upsampled to the frame size, plus a similarity map to one
query token; written as a frame-grid PNG (rows: input | PCA | similarity) and an MP4 (or GIF) with the
input frames beside the colour maps.

Used by ``featviz video`` and the video demo: :func:`load_frames` (a video file or a folder of frames),
:func:`encode_tokens`, :func:`visualize_video`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "Frames",
    "load_frames",
    "prepare_clip",
    "encode_tokens",
    "token_time_index",
    "token_pca_colors",
    "token_similarity_colors",
    "upsample_maps",
    "frame_grid",
    "write_video_file",
    "VideoVizResult",
    "visualize_video",
    "parse_query",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Frames:
    """Decoded frames (T, H, W, 3) uint8, their indices in the source, its frame rate and path."""

    frames: torch.Tensor
    indices: np.ndarray
    fps: float
    source: str


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def load_frames(
    path: str | os.PathLike,
    clip_len: int = 16,
    frame_step: int = 4,
    start: int | None = None,
    backend: str = "auto",
) -> Frames:
    """``clip_len`` frames every ``frame_step`` of a video file or a folder of images (sorted by name,
    numbers in natural order). ``start=None`` centres the clip; a short video repeats its last frame."""
    from videoprobe.data.transforms import clip_indices

    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such video file or frame folder")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise InputError(path, f"folder holds no frames ({', '.join(IMAGE_SUFFIXES)})")
        n, fps = len(files), 10.0
    else:
        from videoprobe.data.decode import open_video

        reader = open_video(path, backend=backend)
        n, fps = reader.num_frames, float(reader.fps or 10.0)
    if start is None:
        idx = clip_indices(n, clip_len, frame_step, 1, "uniform")[0]
    else:
        if not 0 <= start < n:
            raise InputError(path, f"start frame {start} outside the {n} frames")
        idx = np.minimum(start + np.arange(clip_len) * frame_step, n - 1)
    if path.is_dir():
        from PIL import Image

        imgs = []
        for i in idx:
            try:
                with Image.open(files[i]) as im:
                    imgs.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise InputError(files[i], f"cannot read image ({e})") from None
        if len({im.shape for im in imgs}) != 1:
            raise InputError(path, f"frames differ in size: {sorted({im.shape[:2] for im in imgs})}")
        frames = torch.from_numpy(np.stack(imgs))
    else:
        with reader:
            frames = reader.get_frames(idx)
    return Frames(frames, np.asarray(idx, dtype=np.int64), fps, str(path))


def prepare_clip(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (1, 3, T, size, size) in [0, 1]: short side to ``size``, centre crop."""
    from videoprobe.data.transforms import center_crop, resize_short_side, to_float_clip

    clip = center_crop(resize_short_side(to_float_clip(frames), size), size)
    return clip[None].contiguous()


def encode_tokens(encoder: Any, clip: torch.Tensor) -> torch.Tensor:
    """Patch tokens (T', H', W', D) of one clip (1, 3, T, H, W); ``ConfigError`` when the encoder gives
    pooled features only."""
    with torch.no_grad():
        out = encoder(clip)
    name = getattr(encoder, "name", type(encoder).__name__)
    if out.tokens is None:
        raise ConfigError(
            f"video encoder '{name}' gives no spatial tokens (pooled features only): "
            "there is nothing to visualise per patch; choose an encoder with tokens"
        )
    tok = out.tokens[0].float()
    if tok.ndim != 4:
        raise ConfigError(
            f"video encoder '{name}' returned tokens of shape {tuple(out.tokens.shape)}, "
            "expected (B, T', H', W', D)"
        )
    return tok


def token_time_index(num_frames: int, token_frames: int) -> np.ndarray:
    """For each of ``num_frames`` input frames, the token time step covering it (tubelets, frame pairs)."""
    return np.minimum((np.arange(num_frames) * token_frames) // max(num_frames, 1), token_frames - 1)


def token_pca_colors(tokens: torch.Tensor, seed: int = 0, brightness: float = 1.2) -> np.ndarray:
    """(T', H', W', 3) PCA colours of tokens (T', H', W', D), fitted once over all time steps."""
    from common.pca import PCAColorMap

    flat = tokens.reshape(-1, tokens.shape[-1])
    cmap = PCAColorMap.fit(flat, brightness=brightness, seed=seed)
    return cmap(flat).reshape(*tokens.shape[:3], 3)


def token_similarity_colors(
    tokens: torch.Tensor, query: Sequence[int], cmap: str = "coolwarm"
) -> tuple[np.ndarray, np.ndarray]:
    """(colours (T', H', W', 3), cosine similarity (T', H', W')) of every token to the token
    ``query`` = (t, y, x)."""
    from common.pca import similarity, similarity_colors

    t, y, x = (int(v) for v in query)
    tt, hh, ww = tokens.shape[:3]
    if not (0 <= t < tt and 0 <= y < hh and 0 <= x < ww):
        raise ConfigError(f"--query {t},{y},{x} is outside the token grid (t < {tt}, y < {hh}, x < {ww})")
    flat = tokens.reshape(-1, tokens.shape[-1])
    sim = similarity(flat, (t * hh + y) * ww + x)
    return similarity_colors(sim, cmap=cmap).reshape(tt, hh, ww, 3), sim.reshape(tt, hh, ww)


def upsample_maps(maps: np.ndarray, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """(T', h, w, 3) colour maps in [0, 1] -> (T', H, W, 3) uint8 at ``size`` = (H, W)."""
    import torch.nn.functional as F

    if mode not in ("nearest", "bilinear"):
        raise ConfigError(f"upsample mode must be nearest or bilinear, got {mode!r}")
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).permute(0, 3, 1, 2)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    y = F.interpolate(x, size=tuple(size), mode=mode, **kw).clamp(0, 1)
    return (y.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def _box(
    img: np.ndarray, top: int, left: int, bottom: int, right: int, color=(0, 0, 0), width: int = 2
) -> None:
    h, w = img.shape[:2]
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, h), min(right, w)
    img[top : top + width, left:right] = color
    img[max(bottom - width, 0) : bottom, left:right] = color
    img[top:bottom, left : left + width] = color
    img[top:bottom, max(right - width, 0) : right] = color


def frame_grid(
    rows: Sequence[tuple[str, np.ndarray]],
    columns: Sequence[int],
    out_path: str | os.PathLike,
    col_titles: Sequence[str] | None = None,
    title: str | None = None,
    colorbar: Any = None,
) -> np.ndarray:
    """A PNG grid: one row per (name, frames (T, H, W, 3) uint8), the frames ``columns`` side by side;
    ``colorbar``: a ``common.render.ColorBar`` under it."""
    from common.render import compose_grid

    cells = [[frames[c] for c in columns] for _, frames in rows]
    return compose_grid(cells, out_path, col_titles=col_titles, row_titles=[r[0] for r in rows], title=title,
                        colorbar=colorbar)


def write_video_file(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Write uint8 frames (T, H, W, 3) as ``.mp4`` (H.264 with PyAV; odd sizes padded) or ``.gif`` (PIL).

    An ``.mp4`` that PyAV cannot write falls back to a ``.gif`` next to it; the path written is returned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if path.suffix.lower() == ".mp4":
        t, h, w, _ = frames.shape
        ph, pw = h + h % 2, w + w % 2
        if (ph, pw) != (h, w):
            padded = np.full((t, ph, pw, 3), 255, np.uint8)
            padded[:, :h, :w] = frames
            frames = padded
        try:
            import av

            with av.open(str(path), "w") as container:
                stream = container.add_stream("libx264", rate=max(1, round(fps)))
                stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
                stream.options = {"crf": "20", "preset": "veryfast", "threads": "1"}
                for frame in frames:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
            return path
        except Exception as e:  # no libx264, codec errors: keep the result as a GIF
            log.warning("cannot write %s (%s); writing a GIF instead", path, e)
            path.unlink(missing_ok=True)
            path = path.with_suffix(".gif")
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=max(20, int(1000 / max(fps, 1))), loop=0
    )
    return path


def parse_query(text: str) -> tuple[int, int, int]:
    """``"t,y,x"`` -> token-grid coordinates; ``ConfigError`` otherwise."""
    try:
        v = tuple(int(s) for s in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"--query must be three integers t,y,x (token grid), got {text!r}") from None
    if len(v) != 3:
        raise ConfigError(f"--query must be three integers t,y,x (token grid), got {text!r}")
    return v  # type: ignore[return-value]


@dataclass
class VideoVizResult:
    """What :func:`visualize_video` wrote: the grid PNG, the video file, the token grid and the query."""

    png: Path
    video: Path | None
    token_grid: tuple[int, int, int]
    frame_size: tuple[int, int]
    query: tuple[int, int, int] | None
    columns: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def visualize_video(
    clip: torch.Tensor,
    encoder: Any,
    out_dir: str | os.PathLike,
    query: Sequence[int] | None = None,
    seed: int = 0,
    upsample: str = "nearest",
    max_cols: int = 8,
    video_format: str | None = "mp4",
    fps: float = 8.0,
    title: str | None = None,
    cmap: str = "coolwarm",
    frame_indices: Sequence[int] | None = None,
) -> VideoVizResult:
    """Encode ``clip`` (1, 3, T, H, W) in [0, 1] and write ``frames.png`` (rows: input | PCA [| similarity],
    up to ``max_cols`` evenly spaced frames) and ``frames.mp4`` / ``.gif`` (all T frames side by side;
    ``video_format=None``: none). ``query`` = (t, y, x) on the token grid. ``frame_indices``: the
    frames' numbers in the source, for the column titles."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if clip.ndim != 5 or clip.shape[0] != 1 or clip.shape[1] != 3:
        raise ValueError(f"clip must be (1, 3, T, H, W), got {tuple(clip.shape)}")
    _, _, t, h, w = clip.shape
    tokens = encode_tokens(encoder, clip)
    tt, hh, ww = (int(s) for s in tokens.shape[:3])
    warnings: list[str] = []
    name = getattr(encoder, "name", type(encoder).__name__)
    if hh * ww == 1:
        warnings.append(
            f"video encoder '{name}' gives one token per time step (1x1 grid): the PCA colours "
            "change over time only, there is no spatial map"
        )
    frames_in = (clip[0].permute(1, 2, 3, 0).numpy() * 255 + 0.5).astype(np.uint8)  # (T, H, W, 3)
    tidx = token_time_index(t, tt)
    pca = upsample_maps(token_pca_colors(tokens, seed=seed), (h, w), upsample)[tidx]
    rows: list[tuple[str, np.ndarray]] = [("input", frames_in), ("PCA", pca)]
    q = None
    colorbar = None
    if query is not None:
        from common.render import similarity_colorbar

        q = tuple(int(v) for v in query)
        sim_col, sim_raw = token_similarity_colors(tokens, q, cmap=cmap)
        colorbar = similarity_colorbar(sim_raw.reshape(-1), cmap, f"cosine similarity to token (t, y, x) = "
                                       f"({q[0]}, {q[1]}, {q[2]}), boxed")
        sim = upsample_maps(sim_col, (h, w), upsample)[tidx]
        ph, pw = h / hh, w / ww
        box = (int(q[1] * ph), int(q[2] * pw), int((q[1] + 1) * ph), int((q[2] + 1) * pw))
        frames_in = frames_in.copy()
        for f in np.nonzero(tidx == q[0])[0]:
            _box(frames_in[f], *box)
            _box(sim[f], *box)
        rows = [("input", frames_in), ("PCA", pca), ("similarity", sim)]
    columns = np.unique(np.round(np.linspace(0, t - 1, min(max_cols, t))).astype(int)).tolist()
    png = out_dir / "frames.png"
    frame_grid(
        rows,
        columns,
        png,
        col_titles=[f"frame {int(frame_indices[c]) if frame_indices is not None else c}" for c in columns],
        title=title,
        colorbar=colorbar,
    )
    video = None
    if video_format:
        side = np.concatenate([r[1] for r in rows], axis=2)  # (T, H, n_rows * W, 3)
        video = write_video_file(out_dir / f"frames.{video_format}", side, fps)
    return VideoVizResult(png, video, (tt, hh, ww), (h, w), q, columns, warnings)
