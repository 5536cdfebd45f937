"""Molecular dynamics for sampling: ASE Langevin dynamics (the ``md`` baseline of the active
loop, and MD data sets) and the default committee calculator that drives it."""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxmat.core.protocol import Model, Params


def langevin(atoms: Any, temperature_K: float, timestep_fs: float, friction_per_fs: float,
             rng: np.random.Generator):
    """ASE Langevin dynamics with Maxwell–Boltzmann initial momenta and (for more than one
    atom) a fixed centre of mass (``temperature_K`` K, ``timestep_fs`` fs,
    ``friction_per_fs`` 1/fs)."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    if not atoms.constraints and len(atoms) > 1:
        atoms.set_constraint(FixCom())
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                    friction=friction_per_fs / units.fs, fixcm=False,
                    rng=np.random.default_rng(rng.integers(2**31)))


def _default_md_calculator(model: Model, params: Params, cutoff: float):
    from jaxmat.ase import JaxmatCalculator

    return JaxmatCalculator(model, params, cutoff=cutoff)
