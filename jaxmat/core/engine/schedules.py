"""The learning-rate schedule (Adam, linear warm-up, cosine decay over the run's optimiser
steps) and the default length of a run, set in optimiser steps from the training-set size."""
from __future__ import annotations

import numpy as np
import optax

# The default schedule: DEFAULT_PASSES passes over the training set at DEFAULT_LR with
# DEFAULT_BATCH structures per step (jaxmat.core.ensemble.CommitteeConfig), at least
# DEFAULT_MIN_STEPS and at most DEFAULT_MAX_STEPS optimiser steps. Chosen on the validation
# splits of ammonia and two GFN2-xTB molecules (malonaldehyde, glycine at 600 K;
# benchmarks/defaults.py, results/defaults.md): at 400 passes, lr 3e-3 with batch 8 had the
# least mean ratio to each set's best validation force MAE (1.02; batch 16 at lr 3e-3 1.15,
# at 1e-2 1.21, lr 1e-3 1.71), and longer always helped (ammonia 800 vs 400 passes 12.9 vs
# 17.1 meV/Å at batch 16), hence the floor for small sets. The bounds hold 96k to 640k
# structures seen.
DEFAULT_PASSES = 400
DEFAULT_MIN_STEPS = 12000
DEFAULT_MAX_STEPS = 80000
DEFAULT_LR = 3e-3
DEFAULT_BATCH = 8


def default_steps(steps_per_epoch: int) -> int:
    """Optimiser steps of a run that sets neither ``steps`` nor ``epochs``:
    ``DEFAULT_PASSES`` epochs, clipped to [``DEFAULT_MIN_STEPS``, ``DEFAULT_MAX_STEPS``]."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return int(np.clip(DEFAULT_PASSES * steps_per_epoch, DEFAULT_MIN_STEPS, DEFAULT_MAX_STEPS))


def schedule(lr: float, total_steps: int, lr_end: float = 1e-5,
             warmup_steps: int = 0) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, cosine decay to ``lr_end``."""
    return optax.warmup_cosine_decay_schedule(0.0 if warmup_steps else lr, lr, max(warmup_steps, 1),
                                              max(total_steps, warmup_steps + 1), end_value=lr_end)


def learning_rates(lr: float, total_steps: int, lr_end: float = 1e-5,
                   warmup_steps: int = 0) -> np.ndarray:
    """:func:`schedule` at steps ``0..total_steps`` (float32), computed on the host: no
    device program per run length."""
    warm = max(warmup_steps, 1)
    decay = max(max(total_steps, warmup_steps + 1) - warm, 1)  # no 0/0 for one-step runs
    start = 0.0 if warmup_steps else lr
    t = np.arange(total_steps + 1, dtype=np.float64)
    linear = start + (lr - start) * np.minimum(t, warm) / warm
    c = np.minimum(np.maximum(t - warm, 0.0), decay) / decay
    alpha = lr_end / lr if lr else 0.0
    cosine = lr * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * c)) + alpha)
    return np.where(t < warm, linear, cosine).astype(np.float32)


def make_optimizer(lr: float = 1e-3, total_steps: int = 1000, lr_end: float = 1e-5,
                   warmup_steps: int = 0, clip: float | None = 10.0) -> optax.GradientTransformation:
    """Adam on :func:`schedule`, gradients clipped to global norm ``clip``."""
    return _adam(clip, schedule(lr, total_steps, lr_end, warmup_steps))


def _adam(clip: float | None, lr: optax.Schedule | None = None) -> optax.GradientTransformation:
    """Adam after clipping to global norm ``clip``; without ``lr`` the update is not scaled
    (the compiled step applies each member's learning rate)."""
    adam = optax.scale_by_adam() if lr is None else optax.adam(lr)
    return optax.chain(*([optax.clip_by_global_norm(clip)] if clip else []), adam)
