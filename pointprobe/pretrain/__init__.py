"""Sonata-style self-distillation pre-training of point encoders (student / EMA teacher, prototype heads).

Modules: ``views`` (crops, masks, augmentations, batching), ``heads`` (prototype heads), ``loss``
(Sinkhorn-Knopp, distillation cross-entropy), ``ema`` (teacher update), ``schedules`` (one-cycle lr,
cosine warm-ups), ``train`` (config schema, training loop, checkpoints, exact resume).
"""
