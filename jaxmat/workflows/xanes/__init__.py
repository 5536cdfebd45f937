"""K-edge XANES: one call per use, and the dataset tooling behind it.

* :func:`spectrum` — calibrated computed spectrum of a SMILES or ASE Atoms (the dataset's
  transition-potential Hartree-Fock generator, settings recorded; needs pyscf and rdkit),
  all absorbers of a molecule from one computation, cached (:func:`cache_dir`);
* :func:`predict` — predicted molecule and site spectra with committee σ from a model
  bundle (:func:`save_model`, :func:`load_model`) or the one shipped for the element
  (:func:`shipped_model`);
* :mod:`.combine` committee combiners that keep peaks; :mod:`.inverse` the inverse problem
  (functional-group classifier, retrieval among candidates);
* dataset tooling: molecule list (:mod:`.molecules`, :mod:`.enumerate`), generator
  (:mod:`.generate`), broadening (:mod:`.broaden`), packing (:mod:`.pack`), a
  functional-group baseline (:mod:`.baseline`) and train/predict helpers (:mod:`.learn`).

Reading the shipped data needs none of the extras: :func:`jaxmat.data.xanes.load_xanes`.
"""
from __future__ import annotations

from typing import Any

_API = ("spectrum", "predict", "save_model", "load_model", "shipped_model", "cache_dir")


def __getattr__(name: str) -> Any:
    if name in _API:
        from jaxmat.workflows.xanes import api

        return getattr(api, name)
    raise AttributeError(f"module 'jaxmat.workflows.xanes' has no attribute {name!r}")
