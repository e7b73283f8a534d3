"""Probe rows held as chunks (:class:`ProbeData`): cached features that need not fit in memory.

``ProbeData`` is one *training source* of the probe engine (see :mod:`common.probes.engine`): it loads
its labelled rows at once (:meth:`ProbeData.load`) or streams shuffled windows of them
(:meth:`ProbeData.iter_windows`: chunks are cut into pieces of at most ``unit_rows`` rows, the pieces
are shuffled, gathered into windows of ``window_rows`` rows and the rows of each window shuffled
again). Rows labelled ``-1`` are ignored.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError, InputError

__all__ = ["IGNORE_INDEX", "ProbeData"]

IGNORE_INDEX = -1


@dataclass
class _Chunk:
    features: Any  # (n, *shape) numpy array or memmap
    labels: np.ndarray  # (n,) int64
    groups: np.ndarray  # (n,) int64
    rows: np.ndarray  # sorted int64 indices of the rows in use (labelled, in this split)
    name: str


def _release_pages(a: Any, start: int, stop: int) -> None:
    """Unmap the pages of rows ``start:stop`` of a memory-mapped array from this process once they are
    copied out (``MADV_DONTNEED``; the file's data stays in the page cache). Without it every page a
    streamed epoch touches stays mapped and counts in the resident set: a cache larger than RAM
    showed up as the whole machine's memory. Not a memmap, or no madvise: nothing happens."""
    mm = getattr(a, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED") or a.ndim < 1:
        return
    if a.strides[0] <= 0 or not a.flags.c_contiguous:
        return
    try:
        base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    except (TypeError, ValueError):  # a closed map
        return
    lo = a.__array_interface__["data"][0] - base + start * a.strides[0]
    hi = lo + (stop - start) * a.strides[0]
    page = mmap.PAGESIZE
    lo, hi = (lo // page) * page, min(len(mm), -(-hi // page) * page)
    if 0 <= lo < hi:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _as_numpy(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if isinstance(a, np.ndarray):  # includes np.memmap: keep it lazy
        return a
    return np.asarray(a)


class ProbeData:
    """Training / evaluation rows for a probe, held as chunks that need not fit in memory.

    ``chunks``: sequence of ``(features (n_i, ...), labels (n_i,) or scalar)``; features may be numpy
    arrays, memmaps (float16 / float32) or tensors. ``groups``: per chunk an int (the whole chunk is one
    group, e.g. one scene or one video) or an (n_i,) int array (e.g. video id per clip); groups are used
    to hold out validation data by group and, for classification, to average predictions over a
    video's views. Without groups every row is its own group. ``names`` label chunks in error messages.
    Rows whose label is ``-1`` are dropped.
    """

    def __init__(
        self,
        chunks: Sequence[tuple[Any, Any]],
        groups: Sequence[int | Any] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if len(chunks) == 0:
            raise InputError(None, "no feature chunks given")
        if groups is not None and len(groups) != len(chunks):
            raise InputError(None, f"{len(groups)} group entries for {len(chunks)} chunks")
        self.has_groups = groups is not None
        self._chunks: list[_Chunk] = []
        shape = None
        offset = 0
        for i, (x, y) in enumerate(chunks):
            name = str(names[i]) if names is not None else f"chunk {i}"
            x = _as_numpy(x)
            if x.ndim < 2:
                raise InputError(name, f"features must be (n, dim), got shape {x.shape}")
            if shape is None:
                shape = x.shape[1:]
            elif x.shape[1:] != shape:
                raise InputError(name, f"feature shape {x.shape[1:]} differs from the first chunk's {shape}")
            if not (np.issubdtype(x.dtype, np.floating)):
                raise InputError(name, f"features must be floating point, got {x.dtype}")
            n = x.shape[0]
            y = np.asarray(_as_numpy(y)).reshape(-1)
            if y.size == 1 and n != 1:
                y = np.full(n, y[0])
            if y.size != n:
                raise InputError(name, f"{y.size} labels for {n} feature rows")
            if y.size and not np.issubdtype(y.dtype, np.integer):
                if np.all(np.mod(y, 1) == 0):
                    y = y.astype(np.int64)
                else:
                    raise InputError(name, f"labels must be integer class ids, got {y.dtype}")
            y = y.astype(np.int64, copy=False)
            if y.size and y.min() < IGNORE_INDEX:
                raise InputError(name, f"label {int(y.min())} is negative (only -1 = ignore is allowed)")
            if groups is None:
                g = np.arange(offset, offset + n, dtype=np.int64)
            else:
                gi = groups[i]
                if np.ndim(gi) == 0:
                    g = np.full(n, int(gi), dtype=np.int64)
                else:
                    g = np.asarray(_as_numpy(gi)).reshape(-1).astype(np.int64)
                    if g.size != n:
                        raise InputError(name, f"{g.size} group ids for {n} feature rows")
            offset += n
            rows = np.flatnonzero(y != IGNORE_INDEX).astype(np.int64)
            self._chunks.append(_Chunk(x, y, g, rows, name))
        self.feature_shape: tuple[int, ...] = tuple(shape)

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(cls, features: Any, labels: Any, groups: Any | None = None) -> ProbeData:
        """One in-memory chunk (``groups``: optional (n,) ids)."""
        return cls([(features, labels)], None if groups is None else [groups])

    @classmethod
    def from_cache(
        cls,
        cache: Any,
        items: Sequence[str] | None = None,
        feature_key: str = "features",
        label_key: str = "labels",
    ) -> ProbeData:
        """Chunks from a ``common.cache.FeatureCache`` (memory-mapped, not loaded); each item is a group."""
        items = list(cache.items()) if items is None else list(items)
        if not items:
            raise InputError(getattr(cache, "path", None), "the feature cache has no items")
        chunks = []
        for it in items:
            arrays = cache[it]
            if feature_key not in arrays:
                raise InputError(it, f"cache item has no {feature_key!r} array")
            if label_key not in arrays or arrays[label_key] is None:
                raise InputError(it, f"cache item has no {label_key!r} array (labels are needed to probe)")
            chunks.append((arrays[feature_key], arrays[label_key]))
        return cls(chunks, groups=list(range(len(items))), names=[str(i) for i in items])

    def _with_rows(self, rows: list[np.ndarray]) -> ProbeData:
        new = object.__new__(ProbeData)
        new.has_groups = self.has_groups
        new.feature_shape = self.feature_shape
        new._chunks = [dataclasses.replace(c, rows=r) for c, r in zip(self._chunks, rows)]
        return new

    # ------------------------------------------------------------------------------- properties
    @property
    def num_rows(self) -> int:
        """Number of labelled rows in use."""
        return int(sum(len(c.rows) for c in self._chunks))

    @property
    def dim(self) -> int:
        return int(self.feature_shape[-1])

    @property
    def nbytes_float32(self) -> int:
        return self.num_rows * int(np.prod(self.feature_shape)) * 4

    def labels(self) -> np.ndarray:
        """Labels of the rows in use, in storage order."""
        return np.concatenate([c.labels[c.rows] for c in self._chunks])

    def groups(self) -> np.ndarray:
        """Group ids of the rows in use, in storage order."""
        return np.concatenate([c.groups[c.rows] for c in self._chunks])

    @property
    def num_classes(self) -> int:
        y = self.labels()
        return int(y.max()) + 1 if y.size else 0

    # ----------------------------------------------------------------------------------- splits
    def split(self, val_fraction: float, seed: int = 0) -> tuple[ProbeData, ProbeData]:
        """Hold out ``val_fraction`` of the groups (of the rows when there are no groups)."""
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        g = self.groups()
        uniq = np.unique(g)
        if len(uniq) < 2:
            raise InputError(self._chunks[0].name, "cannot hold out validation data: only one group")
        rng = np.random.default_rng(seed)
        n_val = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
        val_groups = rng.choice(uniq, size=n_val, replace=False)
        tr, va = [], []
        for c in self._chunks:
            in_val = np.isin(c.groups[c.rows], val_groups)
            tr.append(c.rows[~in_val])
            va.append(c.rows[in_val])
        return self._with_rows(tr), self._with_rows(va)

    # ---------------------------------------------------------------------------------- loading
    def _read(self, c: _Chunk, rows: np.ndarray) -> np.ndarray:
        if len(rows) == c.features.shape[0]:
            a = np.asarray(c.features[:])
        elif len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            a = np.asarray(c.features[rows[0] : rows[-1] + 1])
        else:
            a = np.asarray(c.features[rows])
        a = a.astype(np.float32, copy=False)
        if len(rows):
            _release_pages(c.features, int(rows[0]), int(rows[-1]) + 1)
        if not np.isfinite(a).all():
            raise InputError(c.name, "features contain NaN or inf")
        return a

    def load(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """All rows in use as (float32 features, int64 labels, group ids)."""
        n = self.num_rows
        x = torch.empty((n, *self.feature_shape), dtype=torch.float32)
        xn = x.numpy()  # shares memory; a numpy copy also accepts read-only memmaps without a warning
        i = 0
        for c in self._chunks:
            if len(c.rows):
                xn[i : i + len(c.rows)] = self._read(c, c.rows)
                i += len(c.rows)
        return x.to(device), torch.from_numpy(self.labels()).to(device), self.groups()

    def batches(
        self,
        batch_size: int,
        rng: np.random.Generator | None = None,
        window_rows: int = 262144,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """The engine's training source: ``(x float32, y int64, group)`` batches of ``batch_size`` rows
        (the last of each window shorter), read window by window (shuffled with ``rng``; without:
        storage order)."""
        for xw, yw, gw in self.iter_windows(window_rows, rng):
            xt, yt = torch.from_numpy(xw).to(device), torch.from_numpy(yw).to(device)
            for s in range(0, len(yw), batch_size):
                yield xt[s : s + batch_size], yt[s : s + batch_size], gw[s : s + batch_size]

    def iter_windows(
        self, window_rows: int, rng: np.random.Generator | None = None, unit_rows: int = 8192
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (features float32, labels, groups) windows of about ``window_rows`` rows.

        With ``rng``: pieces of at most ``unit_rows`` rows are visited in random order and the rows of
        each window shuffled; without: storage order.
        """
        units = [
            (ci, c.rows[s : s + unit_rows])
            for ci, c in enumerate(self._chunks)
            for s in range(0, len(c.rows), unit_rows)
        ]
        if rng is not None:
            units = [units[i] for i in rng.permutation(len(units))]
        buf: list[tuple[int, np.ndarray]] = []
        size = 0
        for u in units:
            buf.append(u)
            size += len(u[1])
            if size >= window_rows:
                yield self._gather(buf, rng)
                buf, size = [], 0
        if buf:
            yield self._gather(buf, rng)

    def _gather(self, units: list[tuple[int, np.ndarray]], rng: np.random.Generator | None):
        """One window: the units' rows read straight into their (shuffled) places of one float32
        array. The same rows in the same order as concatenating the units and permuting, without the two
        window-sized copies that needed (a streamed probe's peak was about three windows)."""
        sizes = [len(rows) for _, rows in units]
        n = int(sum(sizes))
        y = np.concatenate([self._chunks[ci].labels[rows] for ci, rows in units])
        g = np.concatenate([self._chunks[ci].groups[rows] for ci, rows in units])
        dest = None
        if rng is not None:
            p = rng.permutation(n)
            dest = np.empty_like(p)
            dest[p] = np.arange(n)  # row j of the concatenation goes to dest[j]
            y, g = y[p], g[p]
        x = np.empty((n, *self.feature_shape), dtype=np.float32)
        o = 0
        for (ci, rows), k in zip(units, sizes):
            block = self._read(self._chunks[ci], rows)
            if dest is None:
                x[o : o + k] = block
            else:
                x[dest[o : o + k]] = block
            o += k
        return x, y, g

