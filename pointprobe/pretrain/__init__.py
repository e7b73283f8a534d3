"""Sonata-style self-distillation pre-training of point encoders (student / EMA teacher, prototype heads).

Modules: ``views`` (crops, masks, augmentations, batching), ``heads`` (prototype heads), ``loss``
(Sinkhorn-Knopp, distillation cross-entropy), ``ema`` (teacher update), ``schedules`` (one-cycle lr,
cosine warm-ups), ``config`` (config schema), ``model`` (backbone, heads, layer-wise lr decay groups),
``explora`` (extended pre-training from an encoder file: LoRA / unfrozen blocks / norms, merged export,
the BFP snapshot), ``trainer`` (data plan, training loop, checkpoints, exact resume, ``run_pretrain``),
``train`` (the public names of the three, for the command).
"""
