"""jaxmat: differentiable modelling for materials science in JAX.

The tree shows the architecture:

* :mod:`jaxmat.core` — knows no paper: the model protocol (``init``/``apply`` over params
  pytrees, graph specs), atom graphs and padded batches, potentials (forces and stress by
  ``jax.grad``), the training engine (a single model is a committee of one), committees,
  one ``predict``, bundles (``jaxmat.load``), checkpoints, calibration, cross-validation.
* :mod:`jaxmat.models` — built-in architectures (SchNet, PaiNN, ALIGNN-style, MPNN,
  spectral heads, photoanode nets); each registers itself for bundles.
* :mod:`jaxmat.workflows` — the four published workflows on top of the core:
  interpretation gradients and photoanode staged training, spectra and XANES, and the
  adversarial loop (attack, select, oracle, store, active).
* :mod:`jaxmat.data` (readers, shipped data), :mod:`jaxmat.md` (batched on-device MD) and
  :mod:`jaxmat.ase` (ASE calculator).

Every module is also reachable by its short name, as an attribute (``from jaxmat import
graph, attack``) and as an import statement (``import jaxmat.xanes``). ``import jaxmat``
loads only the model protocol; everything else is imported on first use.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from jaxmat.core import host_memory
from jaxmat.core.protocol import GraphSpec, Model, from_linen, from_nnx
from jaxmat.version import __version__

# with JAXMAT_HOST_MEMORY=keep, XLA's large host buffers stay mapped between jitted calls
# (no page faults per step; jaxmat.core.host_memory)
host_memory.keep()

# short name -> module (imported on first use)
MODULES = {
    **{m: f"jaxmat.core.{m}" for m in (
        "bundle", "calibrate", "checkpoint", "committee", "crossval", "engine", "ensemble",
        "graph", "host_memory", "interpret", "neighbors", "parallel", "potential", "predict",
        "protocol", "spectra", "train")},
    "linegraph": "jaxmat.core.graph.linegraph",
    "md": "jaxmat.md",
    **{m: f"jaxmat.workflows.{m}" for m in ("photoanode", "xanes")},
    **{m: f"jaxmat.workflows.adversarial.{m}" for m in (
        "active", "attack", "oracle", "select", "store")},
}
_FUNCTIONS = {"load": ("jaxmat.core.bundle", "load"), "predict": ("jaxmat.core.predict", "predict")}

__all__ = ["GraphSpec", "Model", "__version__", "from_linen", "from_nnx", *sorted(_FUNCTIONS),
           *sorted(MODULES)]


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in MODULES:
        value = importlib.import_module(MODULES[name])
    else:
        raise AttributeError(f"module 'jaxmat' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(MODULES) | set(_FUNCTIONS))


class _ShortNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import jaxmat.<short name>`` gives the module itself (not a copy)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        short = fullname[len("jaxmat."):] if fullname.startswith("jaxmat.") else ""
        if MODULES.get(short, fullname) != fullname:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(MODULES[spec.name[len("jaxmat."):]])
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        # the import machinery stamped the alias spec on the real module: give its own back
        module.__spec__ = self.own_spec


if not any(isinstance(f, _ShortNames) for f in sys.meta_path):
    sys.meta_path.append(_ShortNames())
