"""Video data: decoding (decord / PyAV), clip sampling, dataset layouts and the synthetic dataset.

Main entry points::

    from videoprobe.data import open_video, load_clips, ClipSpec, build_video_dataset, ClipDataset

    reader = open_video("v.mp4")                      # backend "auto" | "decord" | "pyav"
    frames = reader.get_frames([0, 2, 4])             # uint8 (T, H, W, 3)
    views = load_clips("v.mp4", clip_len=16, frame_step=4, num_clips=2, spatial="three_crop", size=224)
    # -> float32 (V=6, C=3, T=16, 224, 224) in [0, 1], clip-major
    items, class_names = build_video_dataset("ucf101", "data/synth", "train")
    ds = ClipDataset(items, ClipSpec(clip_len=16, frame_step=2, num_clips=2, size=112))
    sample = ds[0]   # dict(video, label, video_id, path, index, frame_indices, info, backend, error)

Unreadable or inconsistent inputs raise ``common.errors.InputError`` naming the file (``ClipDataset``
returns the message in ``error`` instead, so that extraction can go on).
"""
from videoprobe.data.datasets import (
    KINDS,
    VIDEO_EXTS,
    ClipDataset,
    VideoItem,
    build_video_dataset,
    collate_items,
    read_class_folders,
    read_class_index,
    read_class_index_base,
    read_diving48,
    read_hmdb51,
    read_kinetics_csv,
    read_path_label_list,
    read_ssv2,
    read_ucf101,
)
from videoprobe.data.decode import VideoReader, load_clips, open_video, read_frames, sample_clips
from videoprobe.data.transforms import (
    ClipSpec,
    center_crop,
    clip_indices,
    make_views,
    random_resized_crop,
    resize_short_side,
    spatial_views,
    three_crops,
    to_float_clip,
)

__all__ = [
    "KINDS", "VIDEO_EXTS", "ClipDataset", "ClipSpec", "VideoItem", "VideoReader",
    "build_video_dataset", "center_crop", "clip_indices", "collate_items", "load_clips",
    "make_views", "open_video", "random_resized_crop", "read_class_folders",
    "read_class_index", "read_class_index_base", "read_diving48",
    "read_frames", "read_hmdb51", "read_kinetics_csv", "read_path_label_list",
    "read_ssv2", "read_ucf101", "resize_short_side", "sample_clips", "spatial_views", "three_crops",
    "to_float_clip",
]
