"""The photoanode workflow (Umehara et al., 2019) from a CSV to interpretation.

:func:`split_library` gives disjoint train / validation / test rows (:class:`Split`);
:func:`fit_committee` trains a committee of :func:`jaxmat.models.photoanode.photoanode_net`
and a composition → spectrum committee, choosing each member's best epoch on the
validation rows; :class:`PhotoanodeCommittee` predicts, ranks alloying directions from a
measured reference row (:func:`reference_batch`), runs the confounding check and draws the
two standard plots. :func:`fit_staged` is the paper's staged training: the spectrum branch,
the composition branch and the head are trained one after another with the others frozen,
then (optionally) all together."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxmat.core import train
from jaxmat.core.protocol import Model, Params
from jaxmat.data import split_indices
from jaxmat.data.loader import ArrayLoader
from jaxmat.data.photoanode import SpectraTable, Standardizer
from jaxmat.models.photoanode import (CompositionSpectrumConfig, PhotoanodeConfig,
                                      composition_spectrum_net, photoanode_net)
from jaxmat.core import interpret


def restrict(model: Model, params: Params, trainable: Sequence[str],
             output: str | None = None, target: str = "P") -> Model:
    """A model whose params are only the top-level entries ``trainable`` of ``params``;
    the rest stay fixed at their given values. With ``output`` its ``target`` output is
    replaced by ``output`` (e.g. a branch prediction), so a plain target loss trains it."""
    frozen = {k: v for k, v in params.items() if k not in trainable}
    missing = [k for k in trainable if k not in params]
    if missing:
        raise ValueError(f"unknown parameter groups {missing}; have {sorted(params)}")

    def _out(o: dict) -> dict:
        return {**o, target: o[output]} if output else o

    def init(key, batch=None):
        return {k: params[k] for k in trainable}

    def apply(p, batch):
        return _out(model.apply({**frozen, **p}, batch))

    def apply_train(p, batch, key):
        return _out(model.train_apply({**frozen, **p}, batch, key))

    return Model(init, apply, apply_train if model.apply_train is not None else None,
                 f"{model.name}[{','.join(trainable)}]", model.graph)


def fit_staged(model: Model, params: Params, train_data: Any, val_data: Any = None,
               loss=None, config=None, target: str = "P", finetune: bool = True) -> Params:
    """The paper's staged training of :func:`photoanode_net`: the spectrum branch on P,
    the composition branch on P, the head with both branches frozen, then (``finetune``)
    everything. Each stage is one :func:`jaxmat.core.train.fit` with ``config``."""
    loss = loss or train.target_loss(target)
    stages = [(("spectrum",), f"{target}_spectrum"), (("composition",), f"{target}_composition"),
              (("head",), None)]
    if finetune:
        stages.append((tuple(params), None))
    for groups, out in stages:
        sub = restrict(model, params, groups, out, target)
        res = train.fit(sub, sub.init(None), train_data, val_data, loss, config)
        params = {**params, **res.params}
    return params


# --------------------------------------------------------------------------- end to end
@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices of one library: ``train`` (fits), ``val`` (best epoch and any other
    choice) and ``test`` (reported once, never used to choose). Disjoint by construction."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self):
        parts = {k: np.asarray(getattr(self, k), np.int64) for k in ("train", "val", "test")}
        for k, v in parts.items():
            if v.ndim != 1 or len(v) == 0:
                raise ValueError(f"split {k!r} must be a non-empty 1-D index array, got shape {v.shape}")
            object.__setattr__(self, k, v)
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = np.intersect1d(parts[a], parts[b])
            if len(both):
                raise ValueError(f"split {a!r} and {b!r} share {len(both)} row(s), e.g. {both[:5].tolist()}")


def split_library(n: int, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> Split:
    """Random train / validation / test rows (:func:`jaxmat.data.split_indices`)."""
    if len(fractions) != 3:
        raise ValueError(f"need three fractions (train, validation, test), got {list(fractions)}")
    return Split(*split_indices(n, fractions, seed))


@dataclasses.dataclass
class PhotoanodeCommittee:
    """A trained committee of :func:`photoanode_net` (``params``, leading member axis) on
    standardised P, with its composition → spectrum committee (``spectrum_params``, paired
    members) for :func:`jaxmat.core.interpret.confounding_check`. ``hull``: the
    training compositions; ``best_epoch``: per member, chosen on the validation rows;
    ``spectrum_fit``: the composition → spectrum committee's fit on the validation rows
    (:func:`interpret.spectrum_fit`); ``flags``: the confounding check on the training rows,
    which :meth:`directions` marks."""

    model: Model
    params: Params
    spectrum_model: Model
    spectrum_params: Params
    scaler: Standardizer
    split: Split
    elements: tuple[str, ...]
    raman_shift: np.ndarray
    hull: np.ndarray
    best_epoch: list[int]
    spectrum_fit: dict | None = None
    flags: "interpret.ConfoundingReport | None" = None

    def batch(self, table: SpectraTable) -> dict:
        """Model inputs of ``table`` (normalised spectra, standardised P)."""
        if table.spectrum.shape[1] != len(self.raman_shift) or tuple(table.elements) != self.elements:
            raise ValueError(f"table has {table.elements} and {table.spectrum.shape[1]} Raman points; "
                             f"the committee was trained on {self.elements} and {len(self.raman_shift)}")
        return table.batch(self.scaler)

    def predict(self, table: SpectraTable) -> tuple[np.ndarray, np.ndarray]:
        """Committee mean and standard deviation of P (mW/cm²) for every row of ``table``."""
        from jaxmat.core import ensemble

        p = np.asarray(ensemble.apply(self.model, self.params, self.batch(table))["P"])
        p = self.scaler.inverse(p)
        return p.mean(0), p.std(0)

    def evaluate(self, table: SpectraTable) -> dict:
        """R² and MAE (mW/cm²) of the committee mean on ``table`` (e.g. the test rows), and
        ``spectrum``: the composition → spectrum committee's fit on the same rows (R² whole
        and per band, :func:`interpret.spectrum_fit`) with its ``warning`` (None when fine)."""
        pred, _ = self.predict(table)
        y = np.asarray(table.target, np.float64)
        fit = self.fit_spectrum(table)
        return {"r2": float(1 - np.mean((pred - y) ** 2) / np.var(y)),
                "mae": float(np.mean(np.abs(pred - y))), "n": len(y),
                "spectrum": {**fit, "warning": interpret.spectrum_fit_warning(fit)}}

    def fit_spectrum(self, table: SpectraTable) -> dict:
        """:func:`interpret.spectrum_fit` of the composition → spectrum committee mean on the
        rows of ``table``, bands weighted by the property committee's mean |∂P/∂I| there."""
        from jaxmat.core import ensemble

        b = self.batch(table)
        pred = np.asarray(ensemble.apply(self.spectrum_model, self.spectrum_params, b)["spectrum"])
        sal = interpret.committee(lambda p: interpret.input_gradients(
            self.model, p, b, "spectrum", "P", self.scaler.std), self.params)
        return interpret.spectrum_fit(pred.mean(0), b["spectrum"], self.raman_shift,
                                      saliency=np.asarray(sal).mean((0, 1)))

    def directions(self, reference: dict, **kwargs) -> "interpret.Directions":
        """:func:`interpret.suggest_directions` from a batch of one (:func:`reference_batch`),
        in mW/cm² per 1 at.% step: ranked by the total effect (the spectrum moving with
        composition through the composition → spectrum committee; ``rank_by="fixed"`` for
        the spectrum held fixed), both shown with their gap, the elements :attr:`flags`
        marks, the in-hull status (steps outside the training hull listed apart) and the
        reference's :meth:`boundary` report."""
        kw = {"scale": self.scaler.std, "hull": self.hull, "spectrum_model": self.spectrum_model,
              "spectrum_params": self.spectrum_params, "confounding": self.flags, **kwargs}
        return interpret.suggest_directions(self.model, self.params, reference, self.elements, **kw)

    def boundary(self, reference: dict, **kwargs) -> "interpret.Boundary":
        """:func:`interpret.boundary_report` of a batch of one (:func:`reference_batch`)
        against the training compositions."""
        x = np.asarray(reference["composition"])
        if x.shape != (1, len(self.elements)):
            raise ValueError(f"need a batch of one composition over {self.elements}, got {x.shape}")
        return interpret.boundary_report(x[0], self.hull, self.elements,
                                         sample=str(reference.get("sample", "")), **kwargs)

    def confounding(self, table: SpectraTable, host: int | None = None
                    ) -> "interpret.ConfoundingReport":
        """:func:`interpret.confounding_check` on the rows of ``table`` (mW/cm² per at.%),
        with the composition → spectrum committee's validation fit (:attr:`spectrum_fit`)."""
        rows = interpret.confounding_check(self.model, self.params, self.spectrum_model,
                                           self.spectrum_params, self.batch(table), self.elements,
                                           scale=self.scaler.std, host=host)
        return interpret.ConfoundingReport(rows, self.spectrum_fit)

    def gradients(self, table: SpectraTable) -> dict[str, np.ndarray]:
        """Per member: ``dilute`` (ΔP per +1 at.% at the expense of the others, (M, n, n_el))
        and ``saliency`` (∂P/∂I, (M, n, L)), mW/cm²."""
        b = self.batch(table)
        g = interpret.committee(lambda p: interpret.input_gradients(
            self.model, p, b, "composition", "P", self.scaler.std), self.params)
        s = interpret.committee(lambda p: interpret.input_gradients(
            self.model, p, b, "spectrum", "P", self.scaler.std), self.params)
        return {"dilute": np.asarray(interpret.simplex_derivatives(g, b["composition"])),
                "saliency": np.asarray(s), "spectrum": b["spectrum"]}

    def bands(self, table: SpectraTable) -> list[dict]:
        """:func:`interpret.band_attribution` (shift vs width per band) on the rows of ``table``."""
        g = self.gradients(table)
        return interpret.band_attribution(g["saliency"], g["spectrum"], self.raman_shift)

    def plots(self, table: SpectraTable, element: str, axes: Sequence[str]):
        """The two standard plots on ``table``: ΔP per +1 at.% of ``element`` over the
        composition slice ``axes`` (2 or 3 element names), and the committee-mean spectrum
        saliency with its spread and the bands found in the mean spectrum. Returns the figure."""
        import matplotlib.pyplot as plt

        if element not in self.elements:
            raise ValueError(f"unknown element {element!r}; elements are {list(self.elements)}")
        g = self.gradients(table)
        k = self.elements.index(element)
        fig, ax = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.6]})
        interpret.plot_composition_map(table.composition, g["dilute"].mean(0)[:, k], self.elements,
                                       axes, ax=ax[0], label=f"ΔP per +1 at.% {element} (mW/cm²)")
        interpret.plot_spectrum_saliency(self.raman_shift, g["saliency"].mean((0, 1)),
                                         g["saliency"].mean(1).std(0), g["spectrum"].mean(0),
                                         ax=ax[1], label="∂P/∂I (mW/cm²)")
        for b in interpret.find_bands(g["spectrum"].mean(0), self.raman_shift):
            ax[1].axvspan(b["centre"] - b["fwhm"] / 2, b["centre"] + b["fwhm"] / 2, color="C0",
                          alpha=0.1, lw=0)
        fig.tight_layout()
        return fig


def fit_committee(table: SpectraTable, split: Split, members: int = 4, epochs: int = 60,
                  lr: float = 5e-3, batch_size: int = 16, seed: int = 0,
                  config: PhotoanodeConfig | None = None,
                  spectrum_config: CompositionSpectrumConfig | None = None) -> PhotoanodeCommittee:
    """Train a committee of :func:`photoanode_net` (``config``, default
    :class:`PhotoanodeConfig`) on ``split.train`` and its composition → spectrum committee
    (``spectrum_config``), each member's best epoch chosen on ``split.val``; ``split.test``
    is not read. P is standardised and compositions are standardised inside the models with
    training statistics; spectra are normalised as published. The composition → spectrum
    fit is measured on ``split.val`` and the confounding check run on ``split.train``."""
    from jaxmat.core import ensemble

    n = len(table)
    if max(int(v.max()) for v in (split.train, split.val, split.test)) >= n:
        raise ValueError(f"split indexes rows beyond the table's {n}")
    tr, va = table.subset(split.train), table.subset(split.val)
    scaler = Standardizer.fit(tr.target)
    btr, bva = tr.batch(scaler), va.batch(scaler)
    L = table.spectrum.shape[1]
    n_el = len(table.elements)
    cfg = dataclasses.replace(config or PhotoanodeConfig(), n_points=L, n_elements=n_el)
    cfg = cfg.with_composition_stats(tr.composition)
    scfg = dataclasses.replace(spectrum_config or CompositionSpectrumConfig(), n_points=L,
                               n_elements=n_el).with_stats(tr.composition, btr["spectrum"])
    model, smodel = photoanode_net(cfg), composition_spectrum_net(scfg)
    key_p, key_s = jax.random.split(jax.random.key(seed))
    batches = list(ArrayLoader(btr, batch_size, seed=seed).epoch(0))
    fit_cfg = ensemble.CommitteeConfig(epochs=epochs, lr=lr, seed=seed, progress=False)
    res = ensemble.fit(model, ensemble.init(model, key_p, None, members), batches, [bva],
                       train.target_loss("P"), fit_cfg)
    sres = ensemble.fit(smodel, ensemble.init(smodel, key_s, None, members), batches, [bva],
                        train.target_loss(scfg.output), fit_cfg)
    fit = PhotoanodeCommittee(model, res.params, smodel, sres.params, scaler, split,
                              tuple(table.elements), np.asarray(table.raman_shift),
                              np.asarray(tr.composition), list(res.best_epoch))
    fit.spectrum_fit = fit.fit_spectrum(va)
    fit.flags = fit.confounding(tr)
    return fit


def reference_batch(table: SpectraTable, sample: str | int = "best") -> dict:
    """A batch of one measured row of ``table`` (its composition and normalised spectrum)
    for :func:`interpret.suggest_directions`: ``sample`` is a sample name, a row index, or
    ``"best"`` (the row with the highest measured P)."""
    if isinstance(sample, str) and sample == "best":
        k = int(np.argmax(table.target))
    elif isinstance(sample, str):
        hits = np.flatnonzero(np.asarray(table.sample) == sample)
        if len(hits) == 0:
            raise ValueError(f"no sample named {sample!r} in the table ({len(table)} rows)")
        k = int(hits[0])
    else:
        k = int(sample)
        if not -len(table) <= k < len(table):
            raise ValueError(f"row {k} out of range for a table of {len(table)} rows")
    b = table.subset(np.array([k])).batch()
    return {"composition": b["composition"], "spectrum": b["spectrum"], "mask": b["mask"],
            "sample": str(table.sample[k])}
