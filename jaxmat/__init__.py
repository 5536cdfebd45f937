"""jaxmat: differentiable modelling for materials science in JAX.

Models are ``init``/``apply`` pairs over params pytrees (:mod:`jaxmat.protocol`);
graphs and padded batches live in :mod:`jaxmat.graph`; forces and stress come from
``jax.grad`` in :mod:`jaxmat.potential`; training in :mod:`jaxmat.train`; committees
in :mod:`jaxmat.ensemble` and their uncertainty calibration in :mod:`jaxmat.calibrate`;
input gradients, simplex directions and attributions in :mod:`jaxmat.interpret`;
the ASE calculator in :mod:`jaxmat.ase` (imported on demand); trained models are saved
as bundles (:mod:`jaxmat.bundle`) and read back with :func:`jaxmat.load`.
"""
from jaxmat import bundle, calibrate, ensemble, graph, interpret, potential, protocol, train
from jaxmat.bundle import load
from jaxmat.protocol import Model, from_linen, from_nnx

__version__ = "0.1.0"
__all__ = ["Model", "bundle", "calibrate", "ensemble", "from_linen", "from_nnx", "graph", "interpret",
           "load", "potential", "protocol", "train"]
