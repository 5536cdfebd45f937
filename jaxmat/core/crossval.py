"""k-fold cross-validation of graph-target models on the training engine.

:func:`cross_val_predict` trains a fresh model per fold with :func:`jaxmat.core.train.fit` (Adam +
cosine schedule) and returns out-of-fold predictions. All folds share one padding budget
and the engine's cached step, so the whole run compiles once. Targets are standardised
with the training fold's statistics (no information from the held-out fold): the mean
per component (for a vector target such as a spectrum, the mean spectrum) and one overall
spread, so an untrained model starts near the mean predictor.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxmat.core import graph, train
from jaxmat.core.predict import predict
from jaxmat.core.protocol import Model


def kfold(n: int, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint random index sets of near-equal size covering ``range(n)``."""
    if k < 2 or k > n:
        raise ValueError(f"need 2 <= k <= n for k-fold splits, got k={k}, n={n}")
    return [np.sort(f) for f in np.array_split(np.random.default_rng(seed).permutation(n), k)]


def _scaled(records: Sequence[graph.Record], key: str, mean: np.ndarray, std: float):
    return [dataclasses.replace(r, targets={**r.targets, key: (r.targets[key] - mean) / std})
            for r in records]


def cross_val_predict(
    model: Model,
    records: Sequence[graph.Record],
    key: str = "target",
    k: int = 5,
    epochs: int = 30,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    budget: graph.Budget | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions of graph target ``key`` (scalar or vector per structure).

    ``model.apply`` must give ``outputs[key]`` (G, ...); it is trained on standardised
    targets (MSE, :func:`jaxmat.core.train.target_loss`) and its outputs are mapped back to the
    target's units. Returns ``(predictions (n, ...), fold index (n,))``.
    ``epochs``, ``batch_size`` and ``lr`` (Adam, cosine decay to lr/100) apply to every fold.
    """
    records = list(records)
    if not records:
        raise ValueError("cross-validation needs at least one structure")
    missing = [i for i, r in enumerate(records) if key not in r.targets]
    if missing:
        raise ValueError(f"records {missing[:5]} have no target '{key}'")
    folds = kfold(len(records), k, seed)
    budget = budget or graph.estimate_budget(records, batch_size)
    y = np.stack([np.asarray(r.targets[key], np.float64) for r in records])
    pred = np.zeros_like(y)
    fold_of = np.zeros(len(records), int)
    for f, test in enumerate(folds):
        fold_of[test] = f
        tr = np.setdiff1d(np.arange(len(records)), test)
        mean = y[tr].mean(axis=0)
        std = float(np.sqrt(np.mean((y[tr] - mean) ** 2))) or 1.0
        loader = graph.GraphLoader(_scaled([records[i] for i in tr], key, mean, std),
                                   batch_size, budget, seed=seed + f)
        cfg = train.FitConfig(epochs=epochs, lr=lr, lr_end=lr * 1e-2, seed=seed + 1000 + f,
                              progress=False)
        params = train.fit(model, model.init(jax.random.key(seed + f), next(iter(loader))),
                           loader, None, train.target_loss(key), cfg).last_params
        out = predict(model, params, [records[i] for i in test], batch_size=batch_size,
                      keys=(key,))
        pred[test] = np.asarray(out[key]) * std + mean
    return pred, fold_of
