"""Shared fixtures: double precision for gradient checks, and small test structures. The test
tree mirrors the package (tests/core/graph for jaxmat/core/graph, ...); ``TESTS`` is on
``sys.path`` (pytest's ``pythonpath``), so test modules import helpers from here."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from ase import Atoms

from jaxmat import data

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)  # the repository
README = os.path.join(ROOT, "README.md")


@pytest.fixture(scope="module")
def x64():
    """Double precision for the tests of one module (request it with
    ``pytestmark = pytest.mark.usefixtures("x64")``); restored afterwards."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def si_cell(rattle: float = 0.05) -> Atoms:
    """A 16-atom mlearn Si cell, rattled so that forces and stress are non-trivial."""
    atoms = [a for a in data.load_mlearn("Si", "all") if len(a) == 16][0].copy()
    atoms.calc = None
    atoms.positions += np.random.default_rng(0).normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def ammonia() -> Atoms:
    """One shipped NH3 geometry, without its labels."""
    atoms = data.load_ammonia()[5].copy()
    atoms.calc = None
    return atoms


def random_molecules(sizes, cutoff: float, seed: int = 0, spread: float = 1.4) -> list:
    """Random compact molecules (atoms >= 1 Å apart, H/C/N/O) with energy/force labels."""
    from jaxmat.core import graph

    rng = np.random.default_rng(seed)
    recs = []
    for n in sizes:
        pos = []
        while len(pos) < n:
            p = rng.normal(size=3) * spread
            if all(np.linalg.norm(p - q) > 1.0 for q in pos):
                pos.append(p)
        z = rng.choice([1, 6, 7, 8], size=n)
        recs.append(graph.make_record(z, np.array(pos), cutoff,
                                      targets={"energy": float(rng.normal())},
                                      node_targets={"forces": rng.normal(size=(n, 3))}))
    return recs
