"""SceneDINO-like 3D feature lifting: 2D image features fused onto 3D points, distilled into a 3D
encoder, and clustered into unsupervised semantics.

- :mod:`pointprobe.lift.image_encoders`: 2D encoders (built-in ``patchstats`` / ``rgb``, DINO / DINOv2
  from a local torch hub, timm ViTs).
- :mod:`pointprobe.lift.project`: projection, visibility and batched multi-view fusion.
- :mod:`pointprobe.lift.lift`: ``pointprobe lift`` (scenes -> lifted-feature caches per split).
- :mod:`pointprobe.lift.distill`: ``pointprobe distill`` (a 3D encoder trained to predict the lifted
  features, so every point gets one).
- :mod:`pointprobe.lift.cluster`: ``pointprobe cluster`` (cosine k-means, optional STEGO-style head,
  Hungarian-matched mIoU).

Submodules are imported on use (torch / spconv are heavy).
"""
