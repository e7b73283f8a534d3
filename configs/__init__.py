"""The configs shipped with the package: ``configs/point/*.yaml`` and ``configs/video/*.yaml``.

A package only so that an installed wheel carries them (package data); ``common.config`` resolves a
relative ``configs/...`` path here through ``importlib.resources``. The dataclass schemas hold the
defaults: each file states only what differs from them (or from the file it names in ``_base_``).
"""
