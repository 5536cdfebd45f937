"""Structure -> spectrum workflow on XANES records: train (jaxmat.train.fit with the spectrum
loss), predict molecule spectra in record order, and measure inference throughput."""
from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxmat import graph
from jaxmat.models.spectral import spectrum_loss
from jaxmat.protocol import Model, Params
from jaxmat.train import FitConfig, FitResult, fit


def train_spectra(model: Model, train: Sequence[graph.Record], val: Sequence[graph.Record] | None,
                  epochs: int = 100, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                  site_weight: float = 1.0, patience: int | None = None,
                  progress: bool = False) -> tuple[Params, FitResult]:
    """Fit ``model`` to the ``"xanes"`` targets (and per-site targets when the model gives
    ``"xanes_site"``); returns the best parameters (by validation loss) and the fit result."""
    if not train:
        raise ValueError("no training records")
    loader = graph.GraphLoader(train, batch_size, seed=seed)
    val_loader = graph.GraphLoader(val, batch_size, shuffle=False) if val else None
    params = model.init(jax.random.key(seed), next(iter(loader.epoch(0))))
    cfg = FitConfig(epochs=epochs, lr=lr, lr_end=lr / 30, seed=seed, patience=patience,
                    progress=progress)
    res = fit(model, params, loader, val_loader, loss=spectrum_loss(site_weight=site_weight),
              config=cfg)
    return res.params, res


def predict_spectra(model: Model, params: Params, records: Sequence[graph.Record],
                    batch_size: int = 64, key: str = "xanes") -> np.ndarray:
    """Molecule spectra ``(len(records), P)`` in record order."""
    if not records:
        raise ValueError("no records to predict")
    loader = graph.GraphLoader(records, batch_size, shuffle=False)
    apply = jax.jit(model.apply)
    out = []
    for b in loader.epoch(0):
        y = np.asarray(apply(params, b)[key])
        out.append(y[np.asarray(b.globals["mask"])])
    return np.concatenate(out)


def throughput(model: Model, params: Params, records: Sequence[graph.Record],
               batch_size: int = 64, repeats: int = 5) -> dict[str, float]:
    """Inference speed: median spectra per second over ``repeats`` passes through
    ``records`` (batching on the host excluded; compile excluded)."""
    loader = graph.GraphLoader(records, batch_size, shuffle=False)
    batches = [graph.to_device(b) for b in loader.epoch(0)]
    apply = jax.jit(model.apply)
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
