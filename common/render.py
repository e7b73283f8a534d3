"""Render coloured point clouds to images (open3d offscreen, matplotlib fallback) and lay out panels.

open3d's ``OffscreenRenderer`` (Filament) runs headless on the CPU with Mesa's llvmpipe Vulkan driver.
When it cannot start, Filament aborts the whole process instead of raising, so rendering runs in a
child process (``python -m common.render --worker IN OUT``): one start-up renders every colour
set from every viewpoint, and a failure reaches the caller as :class:`RendererUnavailable`.
:func:`render_or_fallback` then prints one line and draws an orthographic top view with matplotlib.
``PROBESUITE_NO_RENDER=1`` skips open3d on purpose (tests, machines without Mesa).

:func:`compose_grid` lays images out in a grid with column / row titles (and an optional legend of
colour swatches) with PIL; :func:`grid_layout` gives its size without drawing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "View",
    "DEFAULT_VIEWS",
    "RendererUnavailable",
    "RenderResult",
    "render_point_clouds",
    "scatter_top_view",
    "render_or_fallback",
    "renderer_disabled",
    "auto_point_size",
    "grid_layout",
    "compose_grid",
    "save_png",
    "to_uint8",
]

NO_RENDER_ENV = "PROBESUITE_NO_RENDER"
_FOV = 40.0  # vertical field of view, degrees


@dataclass(frozen=True)
class View:
    """A camera direction around the cloud's centre: azimuth in the x-y plane from +x, elevation above it."""

    name: str
    azimuth: float
    elevation: float


DEFAULT_VIEWS: tuple[View, ...] = (
    View("top", -90.0, 90.0),
    View("oblique", -60.0, 40.0),
    View("opposite", 120.0, 40.0),
)


class RendererUnavailable(RuntimeError):
    """The offscreen renderer could not start or failed (the message says why, on one line)."""


@dataclass
class RenderResult:
    """Images (C, V, H, W, 3) uint8 for C colour sets and V views, the view names, the backend used
    (``open3d`` or ``matplotlib``) and, after a fallback, why."""

    images: np.ndarray
    views: list[str]
    backend: str
    message: str | None = None
    extra: dict = field(default_factory=dict)


_failure: str | None = None  # why open3d failed earlier in this process (not retried)


def renderer_disabled() -> str | None:
    """Why open3d rendering is off in this process (env var or an earlier failure), else None."""
    if os.environ.get(NO_RENDER_ENV, "").strip() not in ("", "0"):
        return f"disabled by {NO_RENDER_ENV}={os.environ[NO_RENDER_ENV]}"
    return _failure


def to_uint8(colors: np.ndarray) -> np.ndarray:
    """Colours in [0, 1] (float) or [0, 255] (integers) -> uint8."""
    c = np.asarray(colors)
    if c.dtype == np.uint8:
        return c
    if c.dtype.kind in "iu":
        return np.clip(c, 0, 255).astype(np.uint8)
    return np.clip(np.rint(np.nan_to_num(c.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)


def auto_point_size(n: int, size: tuple[int, int]) -> float:
    """A point size in pixels that roughly covers the image for ``n`` points: 1.5 - 7 px."""
    w, h = size
    return float(np.clip(1.3 * math.sqrt(w * h * 0.5 / max(n, 1)), 1.5, 7.0))


def _check(coord: np.ndarray, colors: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    xyz = np.asarray(coord, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise ValueError(f"coord must be a non-empty (N, 3) array, got shape {xyz.shape}")
    cols = [to_uint8(c) for c in colors]
    for c in cols:
        if c.shape != xyz.shape:
            raise ValueError(f"colours must have shape {xyz.shape}, got {c.shape}")
    if not cols:
        raise ValueError("no colour sets to render")
    return xyz, cols


def _camera(
    coord: np.ndarray, view: View, size: tuple[int, int]
) -> tuple[list[float], list[float], list[float]]:
    """(center, eye, up) looking at the bounding-box centre from ``view``, distance chosen so that the
    whole bounding box fits the image (``size`` = (width, height))."""
    lo, hi = coord.min(axis=0), coord.max(axis=0)
    center = (lo + hi) / 2
    az, el = math.radians(view.azimuth), math.radians(view.elevation)
    direction = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    up = np.array([0.0, 1.0, 0.0]) if abs(view.elevation) > 85 else np.array([0.0, 0.0, 1.0])
    right = np.cross(-direction, up)
    right /= max(np.linalg.norm(right), 1e-9)
    cam_up = np.cross(right, -direction)
    tan_v = math.tan(math.radians(_FOV) / 2)
    tan_h = tan_v * size[0] / size[1]
    corners = (
        np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]) - center
    )
    depth = corners @ direction
    need = np.maximum(np.abs(corners @ right) / tan_h, np.abs(corners @ cam_up) / tan_v) + depth
    dist = max(float(need.max()) * 1.04, float(np.linalg.norm(hi - lo)) * 0.05, 1e-3)
    return center.tolist(), (center + dist * direction).tolist(), up.tolist()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _worker_command(inp: Path, out: Path) -> list[str]:
    """The child process that renders (``python -m common.render --worker IN OUT``)."""
    return [sys.executable, "-m", "common.render", "--worker", str(inp), str(out)]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # prefer Filament / open3d's own explanation over its start-up chatter
    for key in ("reason:", "Error", "error", "what():", "failed"):
        hits = [ln for ln in lines if key in ln]
        if hits:
            return hits[-1][:200]
    return lines[-1][:200] if lines else "no output"


def render_point_clouds(
    coord: np.ndarray,
    colors: Sequence[np.ndarray],
    views: Sequence[View] = DEFAULT_VIEWS,
    size: tuple[int, int] = (640, 480),
    point_size: float | None = None,
    markers: np.ndarray | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    timeout: float = 900.0,
) -> np.ndarray:
    """Render each colour set (N, 3) of the points ``coord`` (N, 3) from each view with open3d.

    Returns uint8 images (C, V, H, W, 3); ``size`` is (width, height). ``markers`` (M, 3): positions
    drawn as small black spheres (a query point). Raises :class:`RendererUnavailable` when the
    renderer cannot start or fails (also when disabled, see :func:`renderer_disabled`).
    """
    global _failure
    reason = renderer_disabled()
    if reason:
        raise RendererUnavailable(reason)
    xyz, cols = _check(coord, colors)
    w, h = int(size[0]), int(size[1])
    ps = float(point_size) if point_size else auto_point_size(len(xyz), (w, h))
    cameras = [_camera(xyz, v, (w, h)) for v in views]
    config = {
        "size": [w, h],
        "point_size": ps,
        "background": [float(b) for b in background] + [1.0],
        "cameras": cameras,
        "fov": _FOV,
        "marker_radius": 0.012 * float(np.linalg.norm(xyz.max(0) - xyz.min(0))),
    }
    with tempfile.TemporaryDirectory(prefix="render-") as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        mk = np.zeros((0, 3)) if markers is None else np.asarray(markers, dtype=np.float64).reshape(-1, 3)
        np.savez(inp, coord=xyz, colors=np.stack(cols), markers=mk, config=np.array(json.dumps(config)))
        cmd = _worker_command(inp, out)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env())
        except subprocess.TimeoutExpired:
            _failure = f"open3d renderer timed out after {timeout:.0f} s"
            raise RendererUnavailable(_failure) from None
        if r.returncode != 0 or not out.is_file():
            code = f"signal {-r.returncode}" if r.returncode < 0 else f"exit code {r.returncode}"
            _failure = f"open3d offscreen renderer failed ({code}: {_last_line(r.stderr + r.stdout)})"
            raise RendererUnavailable(_failure)
        with np.load(out) as d:
            images = d["images"]
    if images.std() == 0:
        raise RendererUnavailable("open3d rendered blank images")
    return images


def scatter_top_view(
    coord: np.ndarray,
    colors: Sequence[np.ndarray],
    size: tuple[int, int] = (640, 480),
    point_size: float | None = None,
    markers: np.ndarray | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Matplotlib fallback: an orthographic top view (x right, y up; highest points drawn last).

    Returns uint8 images (C, 1, H, W, 3).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    xyz, cols = _check(coord, colors)
    w, h = int(size[0]), int(size[1])
    dpi = 100
    ps = float(point_size) if point_size else auto_point_size(len(xyz), (w, h))
    order = np.argsort(xyz[:, 2], kind="stable")
    lo, hi = xyz.min(0), xyz.max(0)
    mid = (lo[:2] + hi[:2]) / 2
    half = np.maximum((hi[:2] - lo[:2]) / 2 * 1.04, 1e-3)
    if half[0] / half[1] < w / h:  # widen the x or y range so that one unit is as long on both axes
        half[0] = half[1] * w / h
    else:
        half[1] = half[0] * h / w
    out = []
    for c in cols:
        fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi, facecolor=tuple(background))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_facecolor(tuple(background))
        ax.scatter(
            xyz[order, 0], xyz[order, 1], c=c[order] / 255.0, s=(ps * 72 / dpi) ** 2, marker="s", linewidths=0
        )
        if markers is not None and len(markers):
            m = np.asarray(markers).reshape(-1, 3)
            ax.scatter(m[:, 0], m[:, 1], c="k", s=(ps * 6 * 72 / dpi) ** 2, marker="x", linewidths=2)
        ax.set_xlim(mid[0] - half[0], mid[0] + half[0])
        ax.set_ylim(mid[1] - half[1], mid[1] + half[1])
        ax.axis("off")
        fig.canvas.draw()
        img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
        out.append(img[None])
    return np.stack(out)


def render_or_fallback(
    coord: np.ndarray,
    colors: Sequence[np.ndarray],
    views: Sequence[View] = DEFAULT_VIEWS,
    size: tuple[int, int] = (640, 480),
    point_size: float | None = None,
    markers: np.ndarray | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    quiet: bool = False,
) -> RenderResult:
    """open3d renders from ``views``; if the renderer is unavailable, one line on stderr and a matplotlib
    top view instead (``backend="matplotlib"``, ``message`` says why)."""
    try:
        images = render_point_clouds(coord, colors, views, size, point_size, markers, background)
        return RenderResult(images, [v.name for v in views], "open3d")
    except RendererUnavailable as e:
        msg = f"3D renderer unavailable ({e}); drawing a matplotlib top view instead"
        if not quiet:
            print(f"warning: {msg}", file=sys.stderr)
        images = scatter_top_view(coord, colors, size, point_size, markers, background)
        return RenderResult(images, ["top (matplotlib)"], "matplotlib", msg)


# ----------------------------------------------------------------------------------------- panels
_PAD = 6


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_width(text: str, font) -> int:
    if not text:
        return 0
    box = font.getbbox(text)
    return int(box[2] - box[0])


def grid_layout(
    rows: int,
    cols: int,
    cell: tuple[int, int],
    col_titles: bool = False,
    row_titles: Sequence[str] | None = None,
    title: bool = False,
    font_size: int = 16,
) -> tuple[int, int, int, int]:
    """(height, width, top, left) of a :func:`compose_grid` image without legend; ``cell`` is (h, w);
    ``top`` / ``left`` are the offsets of the first cell."""
    ch, cw = cell
    band = font_size + 2 * _PAD
    top = (band if title else 0) + (band if col_titles else 0) + _PAD
    left = _PAD
    if row_titles:
        f = _font(font_size)
        left += max(_text_width(t, f) for t in row_titles) + _PAD
    height = top + rows * ch + rows * _PAD
    width = left + cols * cw + cols * _PAD
    return height, width, top, left


@dataclass
class ColorBar:
    """A colour scale drawn by :func:`compose_grid` under the panels: ``label`` above a horizontal
    gradient of the matplotlib colormap ``cmap`` over [0, 1], and ``ticks`` = (position in [0, 1],
    text) below it (e.g. the similarity values at those colours)."""

    label: str
    cmap: str
    ticks: Sequence[tuple[float, str]] = ()
    width: int = 360
    height: int = 14

    def band_height(self, font_size: int) -> int:
        return _PAD + font_size + 2 + self.height + 4 + font_size + _PAD


def similarity_colorbar(sim: np.ndarray, cmap: str, label: str) -> ColorBar:
    """The colour bar of the similarity panel: the colours run through ``similarity_heat`` (not linear
    in the similarity), so the ticks name the similarity at the minimum, the median, the top-10 %
    threshold and the maximum, placed where their colours are."""
    from common.pca import similarity_heat

    sim = np.asarray(sim, dtype=np.float32).reshape(-1)
    heat = similarity_heat(sim)
    order = np.argsort(sim, kind="stable")
    ticks: list[tuple[float, str]] = []
    for q in (0.0, 0.5, 0.9, 1.0):
        i = order[min(int(round(q * (len(sim) - 1))), len(sim) - 1)]
        pos = float(heat[i])
        if not ticks or pos - ticks[-1][0] > 0.12:  # keep tick labels apart
            ticks.append((pos, f"{float(sim[i]):.2f}"))
    return ColorBar(label, cmap, ticks)


def _wrap_text(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (a word wider than that is
    cut between characters)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(lines[-1] + " " + word, font) <= width:
            lines[-1] += " " + word
            continue
        while _text_width(word, font) > width and len(word) > 1:
            cut = 1
            while cut < len(word) and _text_width(word[: cut + 1], font) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def _draw_colorbar(draw, canvas, bar: ColorBar, y: int, width: int, font, font_size: int) -> None:
    import matplotlib
    from PIL import Image

    bw = max(60, min(bar.width, width - 2 * _PAD - 40))
    x0 = _PAD + 20
    draw.text((x0, y), bar.label, fill=(0, 0, 0), font=font)
    y += font_size + 2
    ramp = matplotlib.colormaps[bar.cmap](np.linspace(0.0, 1.0, bw))[:, :3]
    strip = np.repeat(to_uint8(ramp.astype(np.float32))[None], bar.height, axis=0)
    canvas.paste(Image.fromarray(strip), (x0, y))
    draw.rectangle((x0 - 1, y - 1, x0 + bw, y + bar.height), outline=(0, 0, 0))
    y += bar.height
    for pos, text in bar.ticks:
        x = x0 + int(round(float(np.clip(pos, 0.0, 1.0)) * (bw - 1)))
        draw.line((x, y, x, y + 4), fill=(0, 0, 0))
        tw = _text_width(text, font)
        draw.text((min(max(x - tw // 2, 0), width - tw - 1), y + 4), text, fill=(0, 0, 0), font=font)


def compose_grid(
    cells: Sequence[Sequence[np.ndarray]],
    out_path: str | os.PathLike | None = None,
    col_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    legend: Sequence[tuple[str, Sequence[float]]] | None = None,
    font_size: int = 16,
    background: Sequence[int] = (255, 255, 255),
    colorbar: ColorBar | None = None,
) -> np.ndarray:
    """Lay out images (rows x cols, each (h, w, 3) uint8, all the same size) with titles.

    ``legend``: (name, rgb in [0, 1]) swatches in a band below the grid. ``colorbar``: a labelled
    colour scale below that (see :class:`ColorBar`). A title wider than the grid wraps onto more
    lines. Writes ``out_path`` (PNG) when given and returns the composed image (H, W, 3) uint8.
    """
    from PIL import Image, ImageDraw

    rows = len(cells)
    cols = max((len(r) for r in cells), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("compose_grid: no images")
    first = next(np.asarray(c) for r in cells for c in r)
    ch, cw = first.shape[:2]
    for r in cells:
        for c in r:
            if np.asarray(c).shape[:2] != (ch, cw):
                raise ValueError(
                    f"compose_grid: images differ in size ({np.asarray(c).shape[:2]} vs {(ch, cw)})"
                )
    height, width, top, left = grid_layout(
        rows, cols, (ch, cw), bool(col_titles), row_titles, bool(title), font_size
    )
    font = _font(font_size)
    title_lines = _wrap_text(title, font, width - left - _PAD) if title else []
    extra_title = max(0, len(title_lines) - 1) * (font_size + _PAD // 2)
    top += extra_title
    height += extra_title
    legend_rows: list[list[tuple[str, Sequence[float]]]] = []
    if legend:
        line: list[tuple[str, Sequence[float]]] = []
        x = _PAD
        for name, rgb in legend:
            wdt = font_size + 4 + _text_width(name, font) + 3 * _PAD
            if line and x + wdt > width:
                legend_rows.append(line)
                line, x = [], _PAD
            line.append((name, rgb))
            x += wdt
        legend_rows.append(line)
    line_h = font_size + _PAD
    legend_h = len(legend_rows) * line_h + (_PAD if legend_rows else 0)
    bar_h = colorbar.band_height(font_size) if colorbar is not None else 0
    canvas = Image.new("RGB", (width, height + legend_h + bar_h), tuple(background))
    draw = ImageDraw.Draw(canvas)
    y0 = _PAD
    if title:
        for k, line_text in enumerate(title_lines):
            draw.text((left, y0 + k * (font_size + _PAD // 2)), line_text, fill=(0, 0, 0), font=font)
        y0 += font_size + 2 * _PAD + extra_title
    for j in range(cols):
        if col_titles and j < len(col_titles):
            x = left + j * (cw + _PAD) + (cw - _text_width(col_titles[j], font)) // 2
            draw.text((max(x, left + j * (cw + _PAD)), y0), col_titles[j], fill=(0, 0, 0), font=font)
    for i, r in enumerate(cells):
        y = top + i * (ch + _PAD)
        if row_titles and i < len(row_titles):
            draw.text((_PAD, y + ch // 2 - font_size // 2), row_titles[i], fill=(0, 0, 0), font=font)
        for j, img in enumerate(r):
            canvas.paste(Image.fromarray(to_uint8(np.asarray(img))[..., :3]), (left + j * (cw + _PAD), y))
    y = height
    for line in legend_rows:
        x = _PAD
        for name, rgb in line:
            col = tuple(int(v) for v in to_uint8(np.asarray(rgb, dtype=np.float32)))
            draw.rectangle((x, y, x + font_size, y + font_size), fill=col, outline=(0, 0, 0))
            draw.text((x + font_size + 4, y), name, fill=(0, 0, 0), font=font)
            x += font_size + 4 + _text_width(name, font) + 3 * _PAD
        y += line_h
    if colorbar is not None:
        _draw_colorbar(draw, canvas, colorbar, height + legend_h + _PAD, width, font, font_size)
    arr = np.asarray(canvas)
    if out_path is not None:
        save_png(arr, out_path)
    return arr


def save_png(img: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) image as PNG (atomically); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(to_uint8(np.asarray(img))[..., :3]).save(tmp)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------- worker
def _worker(inp: str, out: str) -> int:
    """Child process: render every colour set from every camera; write ``images`` (C, V, H, W, 3)."""
    import open3d as o3d
    from open3d.visualization import rendering

    with np.load(inp) as d:
        coord, colors, markers = d["coord"], d["colors"], d["markers"]
        cfg = json.loads(str(d["config"]))
    w, h = cfg["size"]
    renderer = rendering.OffscreenRenderer(int(w), int(h))
    scene = renderer.scene
    scene.set_background(np.asarray(cfg["background"], dtype=np.float32))
    scene.view.set_post_processing(False)  # no tone mapping: pixels keep the colours given
    mat = rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    mat.point_size = float(cfg["point_size"])
    mk_mat = rendering.MaterialRecord()
    mk_mat.shader = "defaultUnlit"
    mk_mat.base_color = [0.0, 0.0, 0.0, 1.0]
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord))
    images = np.zeros((len(colors), len(cfg["cameras"]), int(h), int(w), 3), np.uint8)
    for ci, col in enumerate(colors):
        scene.clear_geometry()
        pcd.colors = o3d.utility.Vector3dVector(col.astype(np.float64) / 255.0)
        scene.add_geometry("points", pcd, mat)
        for mi, m in enumerate(markers):
            sphere = o3d.geometry.TriangleMesh.create_sphere(radius=max(cfg["marker_radius"], 1e-3))
            sphere.translate(m)
            scene.add_geometry(f"marker{mi}", sphere, mk_mat)
        for vi, (center, eye, up) in enumerate(cfg["cameras"]):
            renderer.setup_camera(float(cfg["fov"]), center, eye, up)
            images[ci, vi] = np.asarray(renderer.render_to_image())[..., :3]
    np.savez(out, images=images)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through render_point_clouds
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2], sys.argv[3]))
    print("usage: python -m common.render --worker IN.npz OUT.npz", file=sys.stderr)
    sys.exit(2)
