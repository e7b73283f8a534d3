"""Frame-accurate video decoding with decord (fast path) and PyAV (fallback), plus clip loading.

Public API::

    reader = open_video(path, backend="auto")       # "auto" | "decord" | "pyav"
    reader.num_frames, reader.fps, reader.height, reader.width, reader.backend
    frames = reader.get_frames([0, 4, 8])            # torch.uint8 (T, H, W, 3), RGB, in the order asked
    clips = load_clips(path, clip_len=16, frame_step=4, num_clips=2, mode="uniform",
                       spatial="three_crop", size=224)   # float (V, C, T, H, W) in [0, 1]

Every problem a user's file can cause (missing, empty, truncated, corrupt, no video stream, zero
frames, an index past the end) raises ``common.errors.InputError(path, problem)`` with a one-line
problem.  ``backend="auto"`` tries decord first and falls back to PyAV when decord cannot open the file
or fails while decoding; ``reader.backend`` says which one produced the frames and
``reader.fallback_reason`` why decord was abandoned (``None`` when it was not).

Rotation metadata (a phone video's display matrix) is applied by both paths, as ffmpeg's player and
decord do: frames come out as displayed (90 / 270 degrees swap height and width).  PyAV reads the
angle from each frame's display-matrix side data (``frame.rotation``, counter-clockwise degrees),
or else from the stream's ``rotate`` tag (clockwise degrees) of older FFmpeg builds.  (decord 0.6
refuses frames of some widths, e.g. 48 pixels, with "The size must exactly match"; ``backend="auto"``
then switches to PyAV.)

decord is used for video only (its known leak is on the audio path); after every ``get_batch`` the
reader calls ``seek(0)``, the workaround reported for its memory growth in long loops.  PyAV indexes
frames by presentation timestamp: at open time it demuxes the packets (no decoding) to list every
frame's pts and the keyframes, then ``get_frames`` seeks to the keyframe before each wanted frame and
decodes forward, matching frames by pts.  Files whose packets carry no pts are decoded sequentially
from the start instead.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import InputError
from videoprobe.data.transforms import ClipSpec, Seed, clip_indices, make_views

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
_SEEK_GAP = 12  # PyAV: decode forward rather than seek when the next keyframe is at most this far ahead


def _one_line(e: BaseException, path: Path | None = None, limit: int = 160) -> str:
    """A short single-line description of a decoder exception (decord messages span many lines);
    the file name (already in the InputError prefix) and errno prefixes are dropped."""
    text = " ".join(str(e).split())
    # decord prefixes messages with "[hh:mm:ss] /github/workspace/src/...cc:123: "
    text = re.sub(r"\[[\d:]+\] \S+\.(cc|h):\d+: ", "", text)
    text = re.sub(r"\[Errno -?\d+\] ", "", text)
    if path is not None:
        text = text.replace(f": '{path}'", "").replace(f"'{path}'", "file").replace(str(path), "file")
    text = text.strip(" .:") or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "video file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, not a video file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")


def _check_indices(path: Path, indices: Sequence[int] | np.ndarray, num_frames: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= num_frames):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise InputError(path, f"frame index {bad} out of range (video has {num_frames} frames)")
    return idx


class VideoReader:
    """Random access to the frames of one video file.

    Attributes: ``path``, ``num_frames``, ``fps`` (average, frames per second), ``height``, ``width``,
    ``backend`` ("decord" or "pyav": the decoder actually used), ``fallback_reason``.
    """

    path: Path
    num_frames: int
    fps: float
    height: int
    width: int
    backend: str
    fallback_reason: str | None = None

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as a uint8 tensor (T, H, W, 3), RGB."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder (also done by garbage collection)."""

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, backend={self.backend!r}, "
                f"frames={self.num_frames}, fps={self.fps:.3g}, size={self.width}x{self.height})")


class DecordReader(VideoReader):
    """decord backend (video only, accurate ``get_batch`` indexing).  ``seek_after_batch``: call
    ``seek(0)`` after every ``get_batch`` (the reported workaround for decord's memory growth)."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1, seek_after_batch: bool = True):
        import decord

        self.path = Path(path)
        self._seek_after_batch = seek_after_batch
        self.backend = "decord"
        _check_file(self.path)
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except InputError:
            raise
        except Exception as e:  # decord raises RuntimeError / DECORDError with multi-line text
            raise InputError(self.path, f"decord cannot open it: {_one_line(e, self.path)}") from e
        if self.num_frames <= 0:
            raise InputError(self.path, "video stream has zero frames")
        self._hw: tuple[int, int] | None = None  # decord reports no frame size without decoding

    @property
    def height(self) -> int:  # type: ignore[override]
        if self._hw is None:
            self._decode([0])
        return self._hw[0]

    @property
    def width(self) -> int:  # type: ignore[override]
        if self._hw is None:
            self._decode([0])
        return self._hw[1]

    def _decode(self, idx: Sequence[int]) -> torch.Tensor:
        try:
            batch = self._vr.get_batch(list(idx))
            if self._seek_after_batch:
                self._vr.seek(0)  # reported workaround for decord's memory growth in long loops
        except Exception as e:
            text = _one_line(e, self.path)
            if "size must exactly match" in text:
                text = ("decord's frame buffer does not fit this frame size (a decord bug seen with some "
                        f"frame widths); use the pyav or auto backend ({text})")
            raise InputError(self.path, f"decord failed to decode frames: {text}") from e
        # pytorchvideo.data sets decord's global bridge to torch on import; accept both bridges.
        if isinstance(batch, torch.Tensor):
            frames = batch.to(torch.uint8).contiguous()
        else:
            frames = torch.from_numpy(np.ascontiguousarray(batch.asnumpy()))
        self._hw = (int(frames.shape[1]), int(frames.shape[2]))
        return frames

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        idx = _check_indices(self.path, indices, self.num_frames)
        if idx.size == 0:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        uniq, inverse = np.unique(idx, return_inverse=True)  # decode each frame once, in file order
        return self._decode(uniq.tolist())[torch.from_numpy(inverse.reshape(-1))]

    def close(self) -> None:
        self.__dict__.pop("_vr", None)


class PyAVReader(VideoReader):
    """PyAV backend: frame index = rank of the frame's pts among all packets of the video stream."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        import av

        self.path = Path(path)
        self.backend = "pyav"
        self._threads = num_threads
        _check_file(self.path)
        try:
            container = av.open(str(self.path))
        except Exception as e:
            problem = f"cannot open (corrupt, truncated or not a video): {_one_line(e, self.path)}"
            raise InputError(self.path, problem) from e
        try:
            if not container.streams.video:
                raise InputError(self.path, "no video stream (zero-frame or audio-only file)")
            stream = container.streams.video[0]
            pts: list[int | None] = []
            key: list[bool] = []
            n_packets = 0
            try:
                for pkt in container.demux(stream):
                    if pkt.size == 0:  # the demuxer's final flush packet
                        continue
                    n_packets += 1
                    if pkt.is_discard:  # dropped by the decoder (edit lists)
                        continue
                    pts.append(pkt.pts)
                    key.append(bool(pkt.is_keyframe))
            except Exception as e:
                problem = f"cannot read packets (truncated or corrupt): {_one_line(e, self.path)}"
                raise InputError(self.path, problem) from e
            if not pts:
                raise InputError(self.path, "video stream has zero frames")
            if stream.frames and n_packets < stream.frames:  # the index promises more than the file holds
                raise InputError(self.path, f"truncated: header lists {stream.frames} frames, "
                                            f"only {n_packets} are in the file")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(rate) if rate else 0.0
            self.height = int(stream.codec_context.height)
            self.width = int(stream.codec_context.width)
            self._time_base = stream.time_base
            self._tag_turns = _rotate_tag_turns(stream.metadata.get("rotate"))
        finally:
            container.close()
        self.rotation = self._first_frame_turns() * 90  # counter-clockwise degrees applied
        if self.rotation % 180:
            self.height, self.width = self.width, self.height
        self.num_frames = len(pts)
        self._seekable = all(p is not None for p in pts) and len(set(pts)) == len(pts)
        if self._seekable:
            order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
            self._pts = np.asarray(pts, dtype=np.int64)[order]  # pts of frame i (display order)
            self._key_pts = np.sort(np.asarray([p for p, k in zip(pts, key) if k], dtype=np.int64))
            self._pts_to_index = {int(p): i for i, p in enumerate(self._pts)}
        if self.height <= 0 or self.width <= 0:
            raise InputError(self.path, "video stream has no frame size (corrupt header)")

    def _open_stream(self) -> tuple[Any, Any]:
        import av

        container = av.open(str(self.path))
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if self._threads != 1 else "SLICE"
        if self._threads > 0:
            stream.codec_context.thread_count = self._threads
        return container, stream

    def _turns(self, frame: Any) -> int:
        """Quarter turns (counter-clockwise) that display this frame: its display matrix, else the
        stream's ``rotate`` tag."""
        angle = getattr(frame, "rotation", None)
        if angle is None or (angle == 0 and self._tag_turns):
            return self._tag_turns
        return _angle_turns(float(angle))

    def _first_frame_turns(self) -> int:
        try:
            container, stream = self._open_stream()
        except Exception:
            return self._tag_turns
        try:
            for frame in container.decode(stream):
                return self._turns(frame)
        except Exception:  # a broken file is reported by get_frames
            pass
        finally:
            container.close()
        return self._tag_turns

    def _rgb(self, frame: Any) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        k = self._turns(frame)
        return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb

    def _decode_sequential(self, wanted: np.ndarray) -> dict[int, np.ndarray]:
        """Decode from the start, counting frames; keep those in ``wanted`` (sorted unique)."""
        out: dict[int, np.ndarray] = {}
        need = set(int(i) for i in wanted)
        last = int(wanted[-1])
        container, stream = self._open_stream()
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in need:
                    out[i] = self._rgb(frame)
                if i >= last:
                    break
        finally:
            container.close()
        return out

    def _decode_seek(self, wanted: np.ndarray) -> dict[int, np.ndarray] | None:
        """Seek to the keyframe before each run of wanted frames and decode forward, matched by pts.

        Returns None when the decoder's timestamps disagree with the packet index (caller falls back
        to sequential decoding)."""
        out: dict[int, np.ndarray] = {}
        want = set(int(i) for i in wanted)
        container, stream = self._open_stream()
        try:
            frames_iter = None
            pos = -1  # index of the last frame the running decoder produced
            for target in (int(i) for i in wanted):
                if target in out:
                    continue
                tpts = int(self._pts[target])
                k = int(np.searchsorted(self._key_pts, tpts, side="right")) - 1
                key_pts = int(self._key_pts[k]) if k >= 0 else int(self._pts[0])
                key_index = self._pts_to_index.get(key_pts, 0)
                # seek when going back, or when a keyframe lies well ahead of the decoder (skipping
                # a few frames by decoding them is cheaper than a seek and a decoder flush)
                if frames_iter is None or pos >= target or key_index > pos + _SEEK_GAP:
                    container.seek(key_pts, stream=stream, backward=True, any_frame=False)
                    frames_iter = container.decode(stream)
                    pos = -1
                for frame in frames_iter:
                    if frame.pts is None:
                        return None
                    i = self._pts_to_index.get(int(frame.pts))
                    if i is None:
                        return None
                    pos = i
                    if i in want and i not in out:
                        out[i] = self._rgb(frame)
                    if i >= target:
                        break
                if target not in out:
                    return None
        finally:
            container.close()
        return out

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        idx = _check_indices(self.path, indices, self.num_frames)
        if idx.size == 0:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        wanted = np.unique(idx)
        try:
            got = self._decode_seek(wanted) if self._seekable else None
            if got is None:
                got = self._decode_sequential(wanted)
        except InputError:
            raise
        except Exception as e:
            problem = f"cannot decode (corrupt or truncated): {_one_line(e, self.path)}"
            raise InputError(self.path, problem) from e
        missing = [int(i) for i in wanted if int(i) not in got]
        if missing:
            problem = f"truncated: frame {missing[0]} of {self.num_frames} could not be decoded"
            raise InputError(self.path, problem)
        return torch.from_numpy(np.stack([got[int(i)] for i in idx]))


def _angle_turns(angle: float) -> int:
    """Counter-clockwise degrees -> quarter turns 0..3; angles that are not a multiple of 90 are not
    applied (as ffmpeg does not)."""
    k = round(angle / 90.0)
    return k % 4 if abs(angle - 90.0 * k) < 1.0 else 0


def _rotate_tag_turns(tag: str | None) -> int:
    """The legacy ``rotate`` stream tag (clockwise degrees) -> counter-clockwise quarter turns."""
    try:
        return _angle_turns(-float(tag)) if tag else 0
    except ValueError:
        return 0


class AutoReader(VideoReader):
    """decord first; PyAV when decord cannot open the file or fails while decoding."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        self.path = Path(path)
        _check_file(self.path)
        self._threads = num_threads
        self._inner: VideoReader
        try:
            self._inner = DecordReader(self.path, num_threads)
        except InputError as e:
            self._switch(e)

    def _switch(self, err: InputError) -> None:
        log.debug("%s: decord failed (%s), trying PyAV", self.path, err.problem)
        try:
            self._inner = PyAVReader(self.path, self._threads)
        except InputError as e2:
            raise InputError(self.path, f"{e2.problem}; {err.problem}") from e2
        self._inner.fallback_reason = err.problem

    num_frames = property(lambda self: self._inner.num_frames)  # type: ignore[assignment]
    fps = property(lambda self: self._inner.fps)  # type: ignore[assignment]
    height = property(lambda self: self._inner.height)  # type: ignore[assignment]
    width = property(lambda self: self._inner.width)  # type: ignore[assignment]
    backend = property(lambda self: self._inner.backend)  # type: ignore[assignment]
    fallback_reason = property(lambda self: self._inner.fallback_reason)  # type: ignore[assignment]

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        _check_indices(self.path, indices, self.num_frames)
        try:
            return self._inner.get_frames(indices)
        except InputError as e:
            if self._inner.backend != "decord":
                raise
            self._switch(e)
            return self._inner.get_frames(indices)

    def close(self) -> None:
        self._inner.close()


def open_video(path: str | os.PathLike, backend: str = "auto", num_threads: int = 1) -> VideoReader:
    """Open a video for frame-accurate random access.

    ``backend``: "auto" (decord, PyAV on failure), "decord" or "pyav".  ``num_threads``: decoder
    threads per reader (1 suits DataLoader workers; 0 = let the decoder choose).
    Raises ``InputError(path, problem)`` for missing, empty, corrupt, truncated or zero-frame files.
    """
    if backend == "auto":
        return AutoReader(path, num_threads)
    if backend == "decord":
        return DecordReader(path, num_threads)
    if backend == "pyav":
        return PyAVReader(path, num_threads)
    raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray | None = None,
                backend: str = "auto") -> torch.Tensor:
    """Convenience: open, decode ``indices`` (all frames when None) as uint8 (T, H, W, 3), close."""
    with open_video(path, backend) as r:
        return r.get_frames(np.arange(r.num_frames) if indices is None else indices)


def clip_span(spec: ClipSpec) -> int:
    """Frames one clip of ``spec`` spans: ``(clip_len - 1) * frame_step + 1``."""
    return (spec.clip_len - 1) * spec.frame_step + 1


def is_padded(indices: np.ndarray) -> bool:
    """True when a clip of ``indices`` (num_clips, clip_len) repeats a frame: the video (or segment)
    was shorter than the clip span and its last frame was repeated."""
    idx = np.asarray(indices).reshape(-1, np.asarray(indices).shape[-1])
    return bool(idx.shape[1] > 1 and (np.diff(idx, axis=1) == 0).any())


def sample_clips(reader: VideoReader, spec: ClipSpec, rng: Seed = None,
                 segment: tuple[int, int | None] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Views (V, C, T, H, W) float in [0, 1] of an open video, and the frame indices
    (num_clips, clip_len) they were cut from.  All frames are decoded in one ``get_frames`` call.
    ``segment``: ``(start, end)`` frame bounds (end exclusive, None or past the end = the last frame):
    clips are placed inside it."""
    g = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    start, n = 0, reader.num_frames
    if segment is not None:
        s, e = int(segment[0]), reader.num_frames if segment[1] is None else min(int(segment[1]), n)
        if not 0 <= s < e:
            raise InputError(reader.path, f"segment {segment[0]}..{segment[1]} is outside the video "
                                          f"({reader.num_frames} frames)")
        start, n = s, e - s
    idx = start + clip_indices(n, spec.clip_len, spec.frame_step, spec.num_clips, spec.mode, g,
                               str(reader.path))
    frames = reader.get_frames(idx.reshape(-1))
    return make_views(frames, idx, spec, g), idx


def load_clips(path: str | os.PathLike, clip_len: int = 16, frame_step: int = 4, num_clips: int = 1,
               mode: str = "uniform", spatial: str = "center", size: int = 224,
               short_side: int | None = None, backend: str = "auto", rng: Seed = None) -> torch.Tensor:
    """Decode ``num_clips`` clips of ``clip_len`` frames (every ``frame_step``) and cut spatial views.

    Returns float32 (V, C, T, H, W) in [0, 1], V = num_clips x crops (3 for "three_crop", else 1),
    clip-major.  See ``ClipSpec`` for the meaning of the arguments.  Raises ``InputError`` for any
    unreadable file.
    """
    spec = ClipSpec(clip_len, frame_step, num_clips, mode, spatial, size, short_side, backend)
    with open_video(path, backend) as reader:
        return sample_clips(reader, spec, rng)[0]
