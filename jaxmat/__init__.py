"""jaxmat: differentiable modelling for materials science in JAX.

The tree shows the architecture:

* :mod:`jaxmat.core` — knows no paper: the model protocol (``init``/``apply`` over params
  pytrees, graph specs), atom graphs and padded batches, potentials (forces and stress by
  ``jax.grad``), the training engine (a single model is a committee of one), committees,
  one ``predict``, bundles (``jaxmat.load``), checkpoints, calibration, cross-validation.
* :mod:`jaxmat.models` — built-in architectures (SchNet, PaiNN, ALIGNN-style, MPNN,
  spectral heads, photoanode nets).
* :mod:`jaxmat.workflows` — the four published workflows on top of the core:
  interpretation gradients and photoanode staged training, spectra and XANES, and the
  adversarial loop (attack, select, oracle, store, active).
* :mod:`jaxmat.data` (readers, shipped data) and :mod:`jaxmat.ase` (ASE calculator).

Every module is also reachable by its short name (``from jaxmat import graph, attack``).
"""
from __future__ import annotations

import importlib
from typing import Any

from jaxmat.core.bundle import load
from jaxmat.core.predict import predict
from jaxmat.core.protocol import GraphSpec, Model, from_linen, from_nnx

__version__ = "0.1.0"

# short name -> module (imported on first use)
MODULES = {
    **{m: f"jaxmat.core.{m}" for m in (
        "bundle", "calibrate", "checkpoint", "committee", "crossval", "engine", "ensemble",
        "graph", "linegraph", "neighbors", "parallel", "potential", "protocol", "train")},
    "md": "jaxmat.md",
    **{m: f"jaxmat.workflows.{m}" for m in ("interpret", "photoanode", "spectra", "xanes")},
    **{m: f"jaxmat.workflows.adversarial.{m}" for m in (
        "active", "attack", "oracle", "select", "store")},
}

__all__ = ["GraphSpec", "Model", "from_linen", "from_nnx", "load", "predict", *sorted(MODULES)]


def __getattr__(name: str) -> Any:
    if name in MODULES:
        module = importlib.import_module(MODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'jaxmat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(MODULES))
