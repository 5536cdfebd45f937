"""Structure -> spectrum workflow on XANES records: train (jaxmat.core.train.fit with the spectrum
loss, or a committee with jaxmat.core.ensemble.fit), predict molecule spectra in record order
(committee mean), and measure inference throughput."""
from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxmat.core import ensemble, graph
from jaxmat.models.spectral import spectrum_loss
from jaxmat.core.predict import compiled, plan, predict
from jaxmat.core.protocol import Model, Params
from jaxmat.core.train import FitConfig, FitResult, fit


def train_spectra(model: Model, train: Sequence[graph.Record], val: Sequence[graph.Record] | None,
                  epochs: int = 100, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                  site_weight: float = 1.0, slope_weight: float = 0.0,
                  patience: int | None = None, n_members: int = 1,
                  progress: bool = True) -> tuple[Params, FitResult]:
    """Fit ``model`` to the ``"xanes"`` targets (and per-site targets when the model gives
    ``"xanes_site"``; ``slope_weight``: see :func:`spectrum_loss`); returns the best
    parameters (by validation loss) and the fit result.

    ``n_members > 1`` trains a committee in one vmapped step (:func:`jaxmat.core.ensemble.fit`,
    independent initialisations and data orders, best epoch per member); the returned
    params then carry a leading member axis and :func:`predict_spectra` averages them.
    ``progress``: the engine's progress output (epoch, losses, time; a line every 30 s when
    stderr is not a terminal).
    """
    if not train:
        raise ValueError("no training records")
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    loader = graph.GraphLoader(train, batch_size, seed=seed)
    val_loader = graph.GraphLoader(val, batch_size, shuffle=False) if val else None
    loss = spectrum_loss(site_weight=site_weight, slope_weight=slope_weight)
    example = next(iter(loader.epoch(0)))
    if n_members == 1:
        params = model.init(jax.random.key(seed), example)
        cfg = FitConfig(epochs=epochs, lr=lr, lr_end=lr / 30, seed=seed, patience=patience,
                        progress=progress)
        res = fit(model, params, loader, val_loader, loss=loss, config=cfg)
        return res.params, res
    params = ensemble.init(model, jax.random.key(seed), example, n_members)
    cfg = ensemble.CommitteeConfig(epochs=epochs, lr=lr, lr_end=lr / 30, seed=seed,
                                   patience=patience, progress=progress,
                                   batch_size=batch_size)
    res = ensemble.fit(model, params, loader, val_loader, loss=loss, config=cfg)
    return res.params, res


def predict_spectra(model: Model, params: Params, records: Sequence[graph.Record],
                    batch_size: int = 64, key: str = "xanes") -> np.ndarray:
    """Molecule spectra ``(len(records), P)`` in record order (the committee mean when
    ``params`` hold several members); :func:`jaxmat.core.predict.predict` of ``key``."""
    if not records:
        raise ValueError("no records to predict")
    return predict(model, params, records, batch_size=batch_size, keys=(key,))[key]


def throughput(model: Model, params: Params, records: Sequence[graph.Record],
               batch_size: int = 64, repeats: int = 5, key: str = "xanes") -> dict[str, float]:
    """Inference speed of one model (``params`` of a single member): median spectra per
    second over ``repeats`` passes through ``records`` with the batches and compiled
    function of :func:`jaxmat.core.predict.predict` (host batching and compile excluded)."""
    p = plan(model, records, batch_size)
    batches = [graph.to_device(b) for b in p.batches()]
    apply = compiled(model, params, batches[0], keys=(key,))
    jax.block_until_ready(apply(params, batches[0]))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            jax.block_until_ready(apply(params, b))
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return {"spectra_per_s": len(records) / sec, "seconds_per_pass": sec,
            "n_spectra": len(records), "batch_size": batch_size}
