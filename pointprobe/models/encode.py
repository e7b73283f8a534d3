"""Per-point features of a scene with the official Sonata preprocessing.

The recipe is one value, :class:`Preprocessing` (grid size, sampling, voxel alignment; the fixed centre
shift, colour scaling and input feature keys), passed to ``encode_points`` and recorded in feature
cache keys (``Preprocessing.key``), so what encodes a scene and what a cache says about it cannot drift.

``encode_points``: CenterShift (x, y centred on the bounding-box middle, min z -> 0), grid sampling at
0.02 m, colour / 255, feature = concat(coord, color, normal) (as many as the encoder's
``in_channels`` asks for), encoder forward, up-cast, then the grid-sampling inverse gives a feature to
every input point. Large scenes are encoded in overlapping spatial chunks so memory stays bounded.

GPU path (``device_preprocess``: ``auto`` = on CUDA): the centre shift, grid sampling, canonical
index, feature assembly and the up-cast gather run with torch on the model's device
(``common.sampling.grid_sample_torch``, :func:`canonical_index_torch`), with the same kept points, order,
inverse and input features as the numpy path; features come back through pinned memory with a
non-blocking copy and one synchronisation per scene.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from common.errors import ConfigError, InputError
from common.progress import progress as progress_bar
from common.sampling import (
    Align,
    grid_sample,
    grid_sample_test,
    grid_sample_test_torch,
    grid_sample_torch,
)

from .structure import PointBatch, PointEncoder

Sampling = Literal["canonical", "first", "train", "test"]
# where encode_points preprocesses: "auto" = on the model's device when it is CUDA, else numpy on the CPU
DevicePreprocess = Literal["auto", "cpu", "device"]
DEVICE_PREPROCESS = ("auto", "cpu", "device")
# Voxelisation of every point encoder run on a scene (encode_points: extract, featviz, label, distill
# predictions): the Sonata release's GridSample, voxel borders at multiples of the grid size
# after the centre shift (``floor(c / g) - min(floor(c / g))``). "min" (``floor((c - min) / g)``) moves
# every border and so the serialization codes and patches: release weights then give other features.
DEFAULT_ALIGN: Align = "world"


@dataclass(frozen=True)
class Preprocessing:
    """How a scene's points become an encoder's input batch (the Sonata release's recipe).

    Options: ``grid_size`` (voxel size, metres), ``sampling`` (which point represents a voxel:
    ``canonical`` | ``first`` | ``train`` (random, ``seed``) | ``test`` (Pointcept's k passes)),
    ``align`` (voxel borders: ``world`` = multiples of the grid after the centre shift, as the release;
    ``min`` = ``floor((c - min) / g)``, caches made before "world" became the default). Fixed parts,
    recorded in :meth:`key`: the centre shift (x, y on the bounding-box middle, min z -> 0, computed in
    the points' own dtype), colour / 255, input features taken from ``coord, color, normal`` in the
    order and number the encoder's ``feat_keys`` ask for.
    """

    grid_size: float = 0.02
    sampling: Sampling = "canonical"
    align: Align = DEFAULT_ALIGN
    seed: int = 0  # of sampling="train" only

    CENTER_SHIFT: ClassVar[str] = "input dtype"  # computed in the dtype of the coordinates given
    COLOR_SCALE: ClassVar[float] = 255.0
    FEAT_KEYS: ClassVar[tuple[str, ...]] = ("coord", "color", "normal")

    def key(self, raw: bool = False) -> dict[str, Any]:
        """The cache-key fields of this recipe. ``raw``: the key of input features without an encoder
        (``pointprobe.extract.raw_features``: centre shift in float64, no voxels, so no alignment)."""
        out: dict[str, Any] = {"center_shift": True if raw else self.CENTER_SHIFT,
                               "grid_size": self.grid_size, "color": f"/{self.COLOR_SCALE:g}",
                               "sampling": self.sampling, "feat": ",".join(self.FEAT_KEYS)}
        if not raw:  # recorded for every encoder: a cache made before it was (origin "min") is refused
            out["grid_align"] = self.align
        return out

    @classmethod
    def of(cls, prep: Preprocessing | None = None, **recipe: Any) -> Preprocessing:
        """``prep``, or the default recipe with the options in ``recipe`` (not both)."""
        unknown = sorted(set(recipe) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"preprocessing: unknown option(s) {unknown}; known: "
                              f"{[f.name for f in fields(cls)]}")
        if prep is not None and recipe:
            raise ConfigError(f"preprocessing: give prep or the options {sorted(recipe)}, not both")
        return prep if prep is not None else cls(**recipe)


# Chunk origins are moved by multiples of this many voxels, so pooling cells (any power-of-two stride
# product up to 256) fall where they would in the whole scene.
_ALIGN = 256


def _as_array(x, name: str, n: int | None, source: str | None) -> np.ndarray | None:
    if x is None:
        return None
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2 or a.shape[1] != 3 or (n is not None and a.shape[0] != n):
        want = "(N, 3)" if n is None else f"({n}, 3)"
        raise InputError(source, f"{name} must have shape {want}, got {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(source, f"{name} must be numeric, got dtype {a.dtype}")
    # coordinates keep float32 (the release's arithmetic for float32 clouds), anything else -> float64
    a = a.astype((a.dtype if a.dtype == np.float32 else np.float64) if name == "coord" else np.float32)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a).all(axis=1)).sum())
        raise InputError(source, f"{name} contains NaN or inf ({bad} of {a.shape[0]} points)")
    return a


def center_shift(coord: np.ndarray) -> np.ndarray:
    """Release CenterShift(apply_z=True): x, y centred on the bounding-box middle, z minimum at 0.

    Computed in the dtype of ``coord``, as the release does (its transform works on the array it is
    given): for float32 points the shift and the shifted coordinates are rounded to float32, and that
    rounding decides the voxel of a point lying on a voxel border (doing it in float64 moved 19 of
    78k points of a generated room to the neighbouring voxel, and features then differ by O(1))."""
    lo, hi = coord.min(axis=0), coord.max(axis=0)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=coord.dtype)
    return coord - shift


def canonical_index(inverse: np.ndarray, m: int, feat: np.ndarray) -> np.ndarray:
    """One row per voxel chosen independently of the input order: the lexicographically smallest
    (coord, color, normal) row of the voxel (the lowest row among identical ones); ``index[v]`` is the
    row of voxel ``v``. Only voxels holding several points are sorted (at 2 cm most hold one: on a
    218k-point room this took 241 ms as one lexsort of every row)."""
    inverse = np.asarray(inverse, dtype=np.int64)
    counts = np.bincount(inverse, minlength=m)
    if counts.shape[0] != m or (counts == 0).any():
        raise ValueError(f"canonical_index: inverse does not cover exactly {m} voxels")
    index = np.empty(m, dtype=np.int64)
    single = counts[inverse] == 1
    rows = np.flatnonzero(single)
    index[inverse[rows]] = rows
    multi = np.flatnonzero(~single)
    if multi.size:
        keys = [feat[multi, j] for j in range(feat.shape[1] - 1, -1, -1)] + [inverse[multi]]
        order = multi[np.lexsort(keys)]  # stable: identical rows keep the input order
        first = np.ones(order.shape[0], dtype=bool)
        first[1:] = inverse[order[1:]] != inverse[order[:-1]]
        index[inverse[order[first]]] = order[first]
    return index


def center_shift_torch(coord: torch.Tensor) -> torch.Tensor:
    """:func:`center_shift` with torch on ``coord``'s device, in its dtype (the same values)."""
    lo, hi = coord.min(dim=0).values, coord.max(dim=0).values
    return coord - torch.stack([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])


def canonical_index_torch(inverse: torch.Tensor, m: int, feat: torch.Tensor) -> torch.Tensor:
    """:func:`canonical_index` with torch on the tensors' device (the same rows): the lexicographic
    order of the rows of multi-point voxels as stable sorts, last feature column first, voxel last."""
    counts = torch.bincount(inverse, minlength=m)
    if counts.shape[0] != m or bool((counts == 0).any()):
        raise ValueError(f"canonical_index: inverse does not cover exactly {m} voxels")
    index = torch.empty(m, dtype=torch.int64, device=inverse.device)
    single = counts[inverse] == 1
    rows = torch.nonzero(single).squeeze(1)
    index[inverse[rows]] = rows
    multi = torch.nonzero(~single).squeeze(1)
    if multi.numel():
        # -0.0 -> +0.0: numpy's comparison sort ties them, a radix sort (CUDA) would order them
        keys = feat[multi] + 0.0
        inv = inverse[multi]
        order = torch.arange(multi.numel(), device=inverse.device)
        for j in range(feat.shape[1] - 1, -1, -1):
            order = order[torch.sort(keys[order, j], stable=True).indices]
        order = order[torch.sort(inv[order], stable=True).indices]
        inv = inv[order]
        first = torch.ones(order.shape[0], dtype=torch.bool, device=inverse.device)
        first[1:] = inv[1:] != inv[:-1]
        index[inv[first]] = multi[order[first]]
    return index


def spatial_chunks(coord: np.ndarray, max_points: int, margin: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split points into chunks: (rows, is_core) where rows = core + every point within ``margin`` of
    the core's bounding box; cores partition the points; each chunk has at most ``max_points`` rows
    unless its core is already down to ``max_points // 4`` points (then core + margin)."""

    def context(core: np.ndarray) -> np.ndarray:
        lo = coord[core].min(axis=0) - margin
        hi = coord[core].max(axis=0) + margin
        return np.flatnonzero(((coord >= lo) & (coord <= hi)).all(axis=1))

    out: list[tuple[np.ndarray, np.ndarray]] = []
    stack = [np.arange(coord.shape[0])]
    min_core = max(1, max_points // 4)
    while stack:
        core = stack.pop()
        rows = context(core)
        if rows.shape[0] <= max_points or core.shape[0] <= min_core:
            is_core = np.zeros(coord.shape[0], dtype=bool)
            is_core[core] = True
            out.append((rows, is_core[rows]))
            continue
        c = coord[core]
        axis = int(np.argmax(c.max(axis=0) - c.min(axis=0)))
        order = np.argsort(c[:, axis], kind="stable")
        half = core.shape[0] // 2
        stack += [core[order[half:]], core[order[:half]]]
    return out


def _autocast_ctx(autocast: str | torch.dtype | None,
                  device: torch.device) -> contextlib.AbstractContextManager:
    if autocast == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext()
        autocast = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if autocast in (None, "none", False):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast, autocast)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"autocast must be 'auto', None, 'bf16', 'fp16' or a torch dtype, got {autocast!r}")
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU: from CUDA into pinned memory with a non-blocking copy and one synchronisation
    (pinned buffers come from torch's caching host allocator, so scenes reuse them); a CPU tensor as is."""
    if t.device.type != "cuda":
        return t.cpu()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host


class _HostCopies:
    """Chunk results started back to the CPU without waiting (each into its own pinned buffer), one
    synchronisation at the end, then written into the output."""

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.cuda = False

    def add(self, dst: torch.Tensor, value: torch.Tensor) -> None:
        if value.device.type == "cuda":
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            value, self.cuda = host, True
        self.pending.append((dst, value))

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            torch.cuda.synchronize()
        for dst, value in self.pending:
            out[dst] = value
        self.pending.clear()
        return out


def use_device_preprocess(mode: str, device: torch.device) -> bool:
    """Whether ``encode_points`` preprocesses on ``device`` (``mode``: auto | cpu | device)."""
    if mode not in DEVICE_PREPROCESS:
        raise ConfigError(f"device_preprocess: expected one of {list(DEVICE_PREPROCESS)}, got {mode!r}")
    return mode == "device" or (mode == "auto" and device.type == "cuda")


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def encode_sampled(model: PointEncoder, coord: np.ndarray, grid_coord: np.ndarray, feat: np.ndarray,
                   levels: int | None, device: torch.device, autocast, max_points: int | None,
                   margin: float, progress: bool = False, inverse: np.ndarray | None = None,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Features (``out_dtype``, on the CPU) of M grid-sampled points, chunked when M > max_points:
    (M, D), or with ``inverse`` (N,) (voxel of each input point) directly (N, D) per input point,
    without an (M, D) intermediate. Rows are gathered on the model's device before the copy back
    (pinned, non-blocking, one synchronisation: :func:`_to_host`, :class:`_HostCopies`)."""
    m = coord.shape[0]
    if max_points is None or m <= max_points:
        chunks: list[tuple[np.ndarray, np.ndarray]] = [(np.arange(m), np.ones(m, dtype=bool))]
    else:
        chunks = spatial_chunks(coord, max_points, margin)
    n_out = m if inverse is None else inverse.shape[0]
    out = torch.empty(n_out, model.feature_dim(levels), dtype=out_dtype)
    local = np.full(m, -1, dtype=np.int64)  # voxel -> row in the current chunk (core voxels only)
    copies = _HostCopies()
    it: Iterator = iter(chunks)
    if progress or len(chunks) > 1:
        it = progress_bar(chunks, desc="encode chunks", unit="chunk", leave=False,
                          disable=not progress and len(chunks) < 4)
    for rows, core in it:
        gc = grid_coord[rows]
        gc = gc - (gc.min(axis=0) // _ALIGN) * _ALIGN
        point = PointBatch.create(
            torch.from_numpy(coord[rows].astype(np.float32)).to(device),
            torch.from_numpy(gc).to(device),
            torch.from_numpy(feat[rows]).to(device),
        )
        with torch.inference_mode(), _autocast_ctx(autocast, device):
            f = model.encode(point, levels)
        if inverse is None:
            copies.add(torch.from_numpy(rows[core]), f[torch.from_numpy(core).to(f.device)].to(out_dtype))
            continue
        if len(chunks) == 1:  # gather where the features are: one (N, D) copy back, no CPU gather
            return _to_host(f[torch.from_numpy(inverse).to(f.device)].to(out_dtype))
        local[:] = -1
        local[rows[core]] = np.flatnonzero(core)
        src = local[inverse]
        dst = np.flatnonzero(src >= 0)
        copies.add(torch.from_numpy(dst), f[torch.from_numpy(src[dst]).to(f.device)].to(out_dtype))
    return copies.finish(out)


def encode_points(model: PointEncoder, coord, color=None, normal=None, levels: int | None = None,
                  prep: Preprocessing | None = None, device: str | torch.device | None = None,
                  autocast: str | torch.dtype | None = "auto", max_points: int | None = 400_000,
                  chunk_margin: float = 1.0, source: str | None = None, progress: bool = False,
                  out_dtype: torch.dtype = torch.float32, device_preprocess: DevicePreprocess = "auto",
                  rows: np.ndarray | None = None,
                  **recipe: Any) -> torch.Tensor:
    """Features (N, D) on the CPU for the N input points of one scene (float32, or ``out_dtype``:
    float16 halves the copy back from a GPU and the memory, e.g. for a float16 feature cache).
    ``rows``: only these input points' features, (len(rows), D) in that order (a subsampled cache):
    the encoder still sees the whole scene, but the up-cast gather, the per-point assembly and the
    copy back are of the kept rows only; each row equals that row of the full result bit for bit.
    ``prep``: the :class:`Preprocessing` recipe (default: the release's); its options may instead be
    given as keywords (``grid_size=``, ``sampling=``, ``align=``, ``seed=``). ``align``: voxel borders,
    as the Sonata release's GridSample puts them after its CenterShift, at multiples of ``grid_size``
    (``"world"``, default: release checkpoints give the release's features) or at
    ``floor((c - min) / grid_size)`` (``"min"``: reproduces caches and probes made before "world"
    became the default).

    coord (N, 3) metres; color (N, 3) in [0, 255]; normal (N, 3); numpy arrays or tensors. Inputs the
    encoder expects but that are not given (``model.feat_keys``) are zero-filled with a warning.
    ``levels``: up-cast levels (None = all; Sonata: 4 -> 1232 channels). ``sampling``: which point
    represents each 0.02 m voxel - ``"canonical"`` (default: the lexicographically smallest point,
    independent of the input order), ``"first"`` (lowest input row), ``"train"`` (random, ``seed``) or
    ``"test"`` (Pointcept test mode: every point is encoded in one of k passes; points kept in
    several passes get the mean). ``device`` defaults to the model's (the model is moved if needed);
    ``autocast="auto"`` means bf16 (fp16 without bf16 support) on CUDA and float32 on the CPU.
    Scenes with more than ``max_points`` voxels are encoded in spatial chunks with ``chunk_margin``
    metres of context (None: always in one pass). NaN/inf or empty input raises ``InputError``.
    ``device_preprocess``: where the centre shift, grid sampling, canonical index, feature assembly and
    up-cast gather run - ``"cpu"`` (numpy), ``"device"`` (torch on ``device``; the same points, order
    and input features) or ``"auto"`` (``device`` on CUDA, else ``cpu``).
    """
    prep = Preprocessing.of(prep, **recipe)
    grid_size, sampling, align, seed = prep.grid_size, prep.sampling, prep.align, prep.seed
    xyz = _as_array(coord, "coord", None, source)
    n = xyz.shape[0]
    if n == 0:
        raise InputError(source, "point cloud is empty (0 points)")
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise InputError(source, f"rows must index the {n} input points, got range "
                                     f"[{rows.min()}, {rows.max()}]")
    rgb = _as_array(color, "color", n, source)
    nrm = _as_array(normal, "normal", n, source)
    given = {"color": rgb, "normal": nrm}
    dev = torch.device(device) if device is not None else _model_device(model)
    if use_device_preprocess(device_preprocess, dev):
        return _encode_points_device(model, xyz, given, levels, prep, dev, autocast, max_points,
                                     chunk_margin, source, progress, out_dtype, rows)
    parts = []
    xyz = center_shift(xyz)
    for key in model.feat_keys:
        if key == "coord":
            parts.append(xyz.astype(np.float32))
            continue
        value = given[key]
        if value is None:
            warnings.warn(f"{source or 'encode_points'}: the encoder expects {key} but none was given; "
                          f"using zeros", stacklevel=2)
            value = np.zeros((n, 3), dtype=np.float32)
        elif key == "color":
            value = value / Preprocessing.COLOR_SCALE
        parts.append(value.astype(np.float32))
    feat = np.concatenate(parts, axis=1)

    if _model_device(model) != dev:
        model.to(dev)
    was_training = model.training
    model.eval()
    try:
        kwargs = dict(levels=levels, device=dev, autocast=autocast, max_points=max_points,
                      margin=chunk_margin, progress=progress, out_dtype=out_dtype)
        if sampling == "test":
            passes = grid_sample_test(xyz, grid_size, source=source, align=align)
            acc = torch.zeros(n, model.feature_dim(levels), dtype=torch.float32)
            cnt = torch.zeros(n, dtype=torch.float32)
            for gs in progress_bar(passes, desc="test passes", unit="pass", leave=False,
                                   disable=not progress):
                f = encode_sampled(model, xyz[gs.index], gs.grid_coord, feat[gs.index],
                                   **{**kwargs, "out_dtype": torch.float32})
                idx = torch.from_numpy(gs.index)
                acc.index_add_(0, idx, f)
                cnt.index_add_(0, idx, torch.ones(idx.shape[0]))
            if rows is not None:
                acc, cnt = acc[torch.from_numpy(rows)], cnt[torch.from_numpy(rows)]
            return (acc / cnt[:, None]).to(out_dtype)
        if sampling == "canonical":
            gs = grid_sample(xyz, grid_size, mode="first", source=source, align=align)
            index = canonical_index(gs.inverse, len(gs), feat)
        elif sampling in ("first", "train"):
            gs = grid_sample(xyz, grid_size, mode=sampling, seed=seed, source=source, align=align)
            index = gs.index
        else:
            raise ValueError(f"sampling must be canonical, first, train or test, got {sampling!r}")
        inverse = gs.inverse if rows is None else np.asarray(gs.inverse)[rows]  # kept rows' voxels only
        return encode_sampled(model, xyz[index], gs.grid_coord, feat[index], inverse=inverse, **kwargs)
    finally:
        model.train(was_training)


def _encode_sampled_device(model: PointEncoder, coord: torch.Tensor, grid_coord: torch.Tensor,
                           feat: torch.Tensor, inverse: torch.Tensor | None, levels: int | None,
                           device: torch.device, autocast, max_points: int | None, margin: float,
                           progress: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """:func:`encode_sampled` of tensors on ``device``; the features stay there (one pass). A sample of
    more than ``max_points`` voxels goes through :func:`encode_sampled`'s spatial chunks: its features
    come back on the CPU (already copied back)."""
    if max_points is not None and coord.shape[0] > max_points:
        return encode_sampled(model, coord.cpu().numpy(), grid_coord.cpu().numpy(), feat.cpu().numpy(),
                              levels, device, autocast, max_points, margin, progress,
                              inverse=None if inverse is None else inverse.cpu().numpy(), out_dtype=out_dtype)
    gc = grid_coord - grid_coord.min(dim=0).values.div(_ALIGN, rounding_mode="floor") * _ALIGN
    point = PointBatch.create(coord.to(torch.float32), gc, feat)
    with torch.inference_mode(), _autocast_ctx(autocast, device):
        f = model.encode(point, levels)
    return (f if inverse is None else f[inverse]).to(out_dtype)


def _encode_points_device(model: PointEncoder, xyz: np.ndarray, given: dict[str, np.ndarray | None],
                          levels: int | None, prep: Preprocessing, dev: torch.device, autocast,
                          max_points: int | None, margin: float, source: str | None, progress: bool,
                          out_dtype: torch.dtype, rows: np.ndarray | None = None) -> torch.Tensor:
    """``encode_points`` with its preprocessing on ``dev`` (torch): the same shift, voxels, kept rows,
    input features and gather as the numpy path, then one pinned, non-blocking copy back. ``rows``:
    only these input points' features (gathered on the device)."""
    sel = None if rows is None else torch.from_numpy(rows).to(dev)
    n = xyz.shape[0]
    coord = center_shift_torch(torch.from_numpy(xyz).to(dev))
    parts = []
    for key in model.feat_keys:
        if key == "coord":
            parts.append(coord.to(torch.float32))
            continue
        value = given[key]
        if value is None:
            warnings.warn(f"{source or 'encode_points'}: the encoder expects {key} but none was given; "
                          f"using zeros", stacklevel=3)
            parts.append(torch.zeros((n, 3), dtype=torch.float32, device=dev))
            continue
        t = torch.from_numpy(value).to(dev)
        if key == "color":  # a (1,)-tensor divisor: CUDA divides a tensor by a python scalar as a * (1 / b)
            t = t / torch.full((1,), Preprocessing.COLOR_SCALE, dtype=t.dtype, device=dev)
        parts.append(t.to(torch.float32))
    feat = torch.cat(parts, dim=1)
    if _model_device(model) != dev:
        model.to(dev)
    was_training = model.training
    model.eval()
    try:
        kwargs = dict(levels=levels, device=dev, autocast=autocast, max_points=max_points, margin=margin,
                      progress=progress)
        if prep.sampling == "test":
            passes = grid_sample_test_torch(coord, prep.grid_size, align=prep.align)
            acc = torch.zeros(n, model.feature_dim(levels), dtype=torch.float32, device=dev)
            cnt = torch.zeros(n, dtype=torch.float32, device=dev)
            for gs in progress_bar(passes, desc="test passes", unit="pass", leave=False,
                                   disable=not progress):
                f = _encode_sampled_device(model, coord[gs.index], gs.grid_coord, feat[gs.index], None,
                                           out_dtype=torch.float32, **kwargs)
                acc.index_add_(0, gs.index, f.to(dev))
                cnt.index_add_(0, gs.index, torch.ones(gs.index.shape[0], device=dev))
            if sel is not None:
                acc, cnt = acc[sel], cnt[sel]
            return _to_host((acc / cnt[:, None]).to(out_dtype))
        if prep.sampling == "canonical":
            gs = grid_sample_torch(coord, prep.grid_size, mode="first", align=prep.align)
            index = canonical_index_torch(gs.inverse, len(gs), feat)
        elif prep.sampling in ("first", "train"):
            gs = grid_sample_torch(coord, prep.grid_size, mode=prep.sampling, seed=prep.seed,
                                   align=prep.align)
            index = gs.index
        else:
            raise ValueError(f"sampling must be canonical, first, train or test, got {prep.sampling!r}")
        inverse = gs.inverse if sel is None else gs.inverse[sel]  # kept rows' voxels only
        return _to_host(_encode_sampled_device(model, coord[index], gs.grid_coord, feat[index], inverse,
                                               out_dtype=out_dtype, **kwargs))
    finally:
        model.train(was_training)
