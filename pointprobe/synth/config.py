"""The config of ``pointprobe synth`` (``SynthConfig``): every flag of the command is also a config key
(``pointprobe synth out=DIR scenes=8 domain=lidar``, or a YAML file given with ``--config``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.errors import ConfigError
from pointprobe.synth.cameras import CAMERA_PATHS
from pointprobe.synth.scenes import DOMAINS

Domain = Literal["rgbd", "lidar"]  # pointprobe.synth.scenes.DOMAINS (a test keeps the two equal)
CameraPath = Literal["walk", "loop"]  # pointprobe.synth.cameras.CAMERA_PATHS


@dataclass
class SynthConfig:
    out: str = ""  # output root (gets scans/, scannetv2_*.txt, the label table and synth_domain.txt)
    scenes: int = 0  # number of generated rooms (>= 1)
    seed: int = 0  # random seed: scenes are deterministic given (seed, index, domain)
    # rgbd: ScanNet-like coloured RGB-D rooms; lidar: offices / conference rooms / kitchens scanned from a
    # tripod, no colour, range noise and density falling off with distance
    domain: Domain = "rgbd"
    frames_per_scene: int = 15  # ray-cast RGB-D frames per scene, 0 for none
    image_size: list[int] = field(default_factory=lambda: [320, 240])  # frame size [width, height]
    camera_path: CameraPath = "walk"  # walk (one lap along the walls) | loop (a small loop at the centre)
    workers: int = 1  # processes


def check_synth_config(cfg: SynthConfig) -> SynthConfig:
    """``cfg`` when it can run; ``ConfigError`` (one line naming the key) otherwise."""
    if cfg.domain not in DOMAINS:  # a SynthConfig built in code, not through load_config
        raise ConfigError(f"config key 'domain': expected one of {list(DOMAINS)}, got {cfg.domain!r}")
    if cfg.camera_path not in CAMERA_PATHS:
        raise ConfigError(f"config key 'camera_path': expected one of {list(CAMERA_PATHS)}, "
                          f"got {cfg.camera_path!r}")
    if not cfg.out:
        raise ConfigError("--out (config key 'out') is empty: give the output folder")
    if cfg.scenes < 1:
        raise ConfigError(f"--scenes must be >= 1 (config key 'scenes'), got {cfg.scenes}")
    if cfg.frames_per_scene < 0:
        raise ConfigError(f"--frames-per-scene must be >= 0 (config key 'frames_per_scene'), "
                          f"got {cfg.frames_per_scene}")
    if len(cfg.image_size) != 2 or min(cfg.image_size) < 8:
        raise ConfigError(f"config key 'image_size' must be [width, height], each >= 8, got {cfg.image_size}")
    if cfg.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (config key 'workers'), got {cfg.workers}")
    return cfg
