"""Jitted molecular dynamics over replicas (``lax.scan`` chunks, ``vmap``-free batching of
replicas as graphs of one batch, on-device neighbour lists, failure detection).

``simulate(model, params, atoms, steps, ensemble="nvt", ...)`` is the entry point;
units are fs, K, eV, Å (and eV/Å³ for pressure). The failure detector
(:class:`FailureCriteria`, on by default) reads a bundle's ``training`` energy range and
``calibration`` σ scales; :mod:`jaxmat.md.audit` measures it against an oracle.
"""
from jaxmat.md.failure import CRITERIA, REASONS, FailureCriteria
from jaxmat.md.integrators import ENSEMBLES, MDState, Settings
from jaxmat.md.run import MDResult, simulate

__all__ = ["simulate", "MDResult", "FailureCriteria", "Settings", "MDState", "REASONS",
           "CRITERIA", "ENSEMBLES"]
