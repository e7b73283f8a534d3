"""Decoding with decord and PyAV against generated ground-truth frames; broken files; clip sampling."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import InputError
from videoprobe.data import decode
from videoprobe.data.decode import load_clips, open_video
from videoprobe.data.synth import write_video
from videoprobe.data.transforms import ClipSpec, clip_indices, make_views, three_crops

T, H, W, FPS = 40, 48, 64, 10
BACKENDS = ["decord", "pyav", "auto"]


def ground_truth() -> np.ndarray:
    """Frames that are easy to tell apart: a moving block and the frame number as a 6-bit bar code."""
    rng = np.random.default_rng(0)
    bg = rng.integers(40, 120, (H // 8, W // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    frames = np.repeat(bg[None], T, 0)
    for t in range(T):
        x = t % (W - 16)
        frames[t, 24:40, x:x + 16] = (230, 60, 40)
        for b in range(6):  # bit b of t as a white/black 8x8 block on the top row
            frames[t, 0:8, 8 * b:8 * b + 8] = 255 if (t >> b) & 1 else 0
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("videos")
    gt = ground_truth()
    write_video(d / "plain.mp4", gt, FPS, crf=12, gop=8)
    write_video(d / "faststart.mp4", gt, FPS, crf=12, gop=8, faststart=True)
    data = (d / "plain.mp4").read_bytes()
    (d / "half.mp4").write_bytes(data[: len(data) // 2])
    fast = (d / "faststart.mp4").read_bytes()
    (d / "half_faststart.mp4").write_bytes(fast[: len(fast) // 2])
    (d / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    noise = np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (d / "bad_index.mp4").write_bytes(data[:-3000] + noise)  # moov (the index, at the end) overwritten
    (d / "bad_header.mp4").write_bytes(noise + fast[3000:])  # ftyp + moov (at the start) overwritten
    (d / "empty.mp4").write_bytes(b"")
    import av

    with av.open(str(d / "zero.mp4"), "w") as c:  # a header and no frames
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        c.start_encoding()
    return {"dir": d, "gt": gt}


def _nearest(frames: torch.Tensor, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each decoded frame: index of the closest ground-truth frame, and its mean abs difference."""
    f = frames.numpy().astype(np.float32)[:, None]
    err = np.abs(f - gt.astype(np.float32)[None]).mean(axis=(2, 3, 4))
    return err.argmin(1), err.min(1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["plain.mp4", "faststart.mp4"])
def test_metadata(videos: dict, backend: str, name: str) -> None:
    with open_video(videos["dir"] / name, backend) as r:
        assert (r.num_frames, r.height, r.width) == (T, H, W)
        assert r.fps == pytest.approx(FPS)
        assert r.backend == ("decord" if backend == "auto" else backend)
        assert r.fallback_reason is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_match_ground_truth(videos: dict, backend: str) -> None:
    idx = [0, 7, 8, 9, 39, 20, 3, 3, 31, 16, 15]  # unsorted, repeated, around keyframes (gop 8)
    with open_video(videos["dir"] / "plain.mp4", backend) as r:
        frames = r.get_frames(idx)
    assert frames.dtype == torch.uint8 and frames.shape == (len(idx), H, W, 3)
    nearest, err = _nearest(frames, videos["gt"])
    assert nearest.tolist() == idx
    assert err.max() < 4.0  # codec tolerance (crf 12)


def test_pyav_matches_sequential_decode(videos: dict) -> None:
    """PyAV's seek-by-pts path against a plain decode of every frame (independent of our reader)."""
    import av

    with av.open(str(videos["dir"] / "faststart.mp4")) as c:
        every = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert len(every) == T
    rng = np.random.default_rng(3)
    with open_video(videos["dir"] / "faststart.mp4", "pyav") as r:
        for _ in range(4):
            idx = rng.integers(0, T, 12)
            assert np.array_equal(r.get_frames(idx).numpy(), every[idx])


def _write_other(path: Path, codec: str, frames: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = ({"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"}
                     if codec == "libvpx-vp9" else {"qscale": "2"})
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode())


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("codec,name", [("libvpx-vp9", "v.webm"), ("mpeg4", "v.avi")])
def test_other_containers(videos: dict, backend: str, codec: str, name: str) -> None:
    """SSv2-style VP9 webm (no frame count in the header) and MPEG-4 Part 2 avi."""
    path = videos["dir"] / name
    if not path.exists():
        _write_other(path, codec, videos["gt"])
    idx = [0, 7, 8, 39, 20, 3]
    with open_video(path, backend) as r:
        assert r.num_frames == T and r.fps == pytest.approx(FPS)
        nearest, err = _nearest(r.get_frames(idx), videos["gt"])
    assert nearest.tolist() == idx and err.max() < 16.0


def test_backends_agree(videos: dict) -> None:
    idx = list(range(0, T, 3))
    path = videos["dir"] / "plain.mp4"
    with open_video(path, "decord") as a, open_video(path, "pyav") as b:
        fa, fb = a.get_frames(idx), b.get_frames(idx)
    assert (fa.int() - fb.int()).abs().max() <= 2


def test_auto_falls_back_to_pyav(videos: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, path: object, num_threads: int = 1) -> None:
        raise InputError(path, "cannot open with decord: simulated")

    monkeypatch.setattr(decode.DecordReader, "__init__", broken)
    with open_video(videos["dir"] / "plain.mp4", "auto") as r:
        assert r.backend == "pyav" and "simulated" in r.fallback_reason
        nearest, _ = _nearest(r.get_frames([5, 30]), videos["gt"])
    assert nearest.tolist() == [5, 30]


def test_auto_falls_back_when_decord_fails_to_decode(videos: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(self: decode.DecordReader, idx: object) -> None:
        raise InputError(self.path, "decord failed to decode frames: simulated")

    monkeypatch.setattr(decode.DecordReader, "_decode", failing)
    with open_video(videos["dir"] / "plain.mp4", "auto") as r:
        assert r.backend == "decord"
        nearest, _ = _nearest(r.get_frames([2, 33]), videos["gt"])
        assert r.backend == "pyav" and "simulated" in r.fallback_reason
    assert nearest.tolist() == [2, 33]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["missing.mp4", "empty.mp4", "zero.mp4", "half.mp4", "half_faststart.mp4",
                                  "random.mp4", "bad_index.mp4", "bad_header.mp4"])
def test_broken_files_raise_input_error(videos: dict, backend: str, name: str) -> None:
    path = videos["dir"] / name
    with pytest.raises(InputError) as info:
        with open_video(path, backend) as r:
            r.get_frames(np.arange(r.num_frames))
    msg = str(info.value)
    assert msg.startswith(str(path) + ": ") and "\n" not in msg
    assert info.value.path == str(path)


def test_index_out_of_range(videos: dict) -> None:
    with open_video(videos["dir"] / "plain.mp4") as r:
        with pytest.raises(InputError, match="frame index 40 out of range"):
            r.get_frames([0, T])


def test_clip_indices_against_loop() -> None:
    def reference(n: int, clip_len: int, step: int, starts: list[int]) -> np.ndarray:
        return np.array([[min(s + j * step, n - 1) for j in range(clip_len)] for s in starts])

    span = 7 * 4 + 1  # (clip_len - 1) * step + 1
    assert np.array_equal(clip_indices(100, 8, 4, 1, "uniform"), reference(100, 8, 4, [(100 - span) // 2]))
    assert np.array_equal(clip_indices(100, 8, 4, 3, "uniform"), reference(100, 8, 4, [0, 36, 100 - span]))
    # shorter than the span: start at 0, repeat the last frame
    assert np.array_equal(clip_indices(10, 8, 2, 2, "uniform"), reference(10, 8, 2, [0, 0]))
    rnd = clip_indices(100, 8, 4, 50, "random", 0)
    assert rnd.min() >= 0 and rnd.max() <= 99 and (np.diff(rnd, axis=1) == 4).all()
    assert np.array_equal(rnd, clip_indices(100, 8, 4, 50, "random", 0))
    assert len(set(rnd[:, 0].tolist())) > 10


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_load_clips_views(videos: dict, backend: str) -> None:
    path = videos["dir"] / "plain.mp4"
    v = load_clips(path, clip_len=4, frame_step=3, num_clips=2, spatial="three_crop", size=32,
                   backend=backend)
    assert v.shape == (6, 3, 4, 32, 32) and v.dtype == torch.float32
    assert 0.0 <= v.min() and v.max() <= 1.0
    # independent computation: the same clips from the ground truth, resized / cropped the same way
    idx = clip_indices(T, 4, 3, 2, "uniform")
    gt = torch.from_numpy(videos["gt"][idx.reshape(-1)])
    ref = make_views(gt, idx, ClipSpec(4, 3, 2, spatial="three_crop", size=32))
    assert (v - ref).abs().mean() < 4 / 255
    full = load_clips(path, clip_len=4, frame_step=3, num_clips=1, spatial="none", backend=backend)
    assert full.shape == (1, 3, 4, H, W)
    nearest, _ = _nearest((full[0].permute(1, 2, 3, 0) * 255).round().to(torch.uint8), videos["gt"])
    assert nearest.tolist() == clip_indices(T, 4, 3, 1, "uniform")[0].tolist()


def test_three_crops_positions() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 1, 4, 12).repeat(1, 2, 1, 1)[..., :4, :]
    crops = three_crops(x, 4)
    assert len(crops) == 3 and crops[0].shape == (1, 2, 4, 4)
    assert torch.equal(crops[0], x[..., 0:4]) and torch.equal(crops[1], x[..., 4:8])
    assert torch.equal(crops[2], x[..., 8:12])


def test_random_resized_same_crop_for_all_frames(videos: dict) -> None:
    clip = torch.rand(3, 1, H, W).repeat(1, 5, 1, 1)
    out = make_views((clip.permute(1, 2, 3, 0) * 255).to(torch.uint8), np.zeros((1, 5), dtype=np.int64),
                     ClipSpec(5, 1, 1, spatial="random_resized", size=24), rng=0)
    assert out.shape == (1, 3, 5, 24, 24)
    assert torch.equal(out[0, :, 0], out[0, :, 4])


def test_no_stray_files(videos: dict) -> None:
    assert not (videos["dir"] / "missing.mp4").exists()
    assert os.path.getsize(videos["dir"] / "empty.mp4") == 0


# ------------------------------------------------------------------------------------------ rotation


def _pattern(h: int, w: int, n: int = 6) -> np.ndarray:
    """Frames with a red block at the top-left corner and a blue block at the bottom-right one."""
    f = np.full((n, h, w, 3), 90, np.uint8)
    f[:, :8, :16] = (230, 30, 30)
    f[:, -8:, -8:] = (30, 30, 230)
    return f


def _write_rotated(path: Path, frames: np.ndarray, degrees: int) -> None:
    """H.264 mp4 whose display matrix says: rotate by ``degrees`` counter-clockwise to display (what a
    phone writes; ffmpeg's ``-display_rotation`` sets the same matrix)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "8"}
        s.set_display_rotation(degrees)
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize("shape", [(32, 32), (32, 64)])
def test_rotation_metadata_is_applied_by_every_backend(tmp_path: Path, degrees: int,
                                                       shape: tuple[int, int]) -> None:
    frames = _pattern(*shape)
    path = tmp_path / f"rot{degrees}.mp4"
    _write_rotated(path, frames, degrees)
    expected = np.rot90(frames[0], degrees // 90).astype(np.float32)  # displayed = turned counter-clockwise
    got = {}
    for backend in ("pyav", "decord", "auto"):
        with open_video(path, backend) as r:
            got[backend] = r.get_frames([0, 3]).numpy().astype(np.float32)
            assert (r.height, r.width) == expected.shape[:2]
    for backend, f in got.items():
        assert f.shape[1:] == expected.shape, backend
        assert np.abs(f[0] - expected).mean() < 4.0, backend
    assert np.abs(got["decord"] - got["pyav"]).max() <= 3.0  # both decoders give the displayed frames


def test_rotate_tag_and_angles() -> None:
    assert [decode._angle_turns(a) for a in (0, 90, -90, 180, -180, 270, 45)] == [0, 1, 3, 2, 2, 3, 0]
    assert [decode._rotate_tag_turns(t) for t in (None, "90", "180", "270", "x")] == [0, 3, 2, 1, 0]
