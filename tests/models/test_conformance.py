"""One conformance suite for every registered model (x64): the contract of
:mod:`jaxmat.core.protocol` and :mod:`jaxmat.core.graph` checked the same way for each.

Every model: its declared layouts give the same outputs; outputs do not depend on padding or
on the other structures of a batch; graph outputs are invariant under rotation, translation
and atom permutation. Potentials (energy models wrapped by ``potential``): forces = −∇E by
central differences, forces rotate with the structure, stress equals the finite-strain
derivative. A newly registered builder fails :func:`test_every_registered_model_is_covered`
until it has a case here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import jaxmat.models  # noqa: F401  (registers the built-in models)
import jaxmat.models.coordinate  # noqa: F401
import jaxmat.models.mpnn  # noqa: F401
import jaxmat.models.spectral  # noqa: F401
from conftest import ammonia, si_cell
from jaxmat import graph, potential
from jaxmat.core import bundle
from jaxmat.models import (ALIGNNConfig, MACEConfig, PaiNNConfig, SchNetConfig, alignn, mace,
                           painn, schnet)
from jaxmat.models.mpnn import MPNNConfig, mpnn
from jaxmat.models.spectral import (painn_site_spectral, schnet_site_spectral,
                                    schnet_transition_spectral)

pytestmark = pytest.mark.usefixtures("x64")

C = 3.5  # Å
SCHNET = SchNetConfig(n_features=8, n_interactions=2, n_rbf=8, cutoff=C)
PAINN = PaiNNConfig(n_features=8, n_interactions=2, n_rbf=8, cutoff=C)

# builder -> (model factory, is a potential)
CASES = {
    "schnet": (lambda: potential.potential(schnet(SCHNET)), True),
    "painn": (lambda: potential.potential(painn(PAINN)), True),
    "alignn": (lambda: potential.potential(alignn(ALIGNNConfig(
        n_alignn_layers=1, n_gcn_layers=1, embedding=8, hidden=8, n_bond_rbf=8, n_angle_rbf=8,
        cutoff=C, max_neighbors=6, output_key="energy"))), True),
    "mpnn": (lambda: mpnn(MPNNConfig(n_out=6, n_features=8, n_steps=2, n_rbf=8, edge_hidden=8,
                                     readout_hidden=8, cutoff=C)), False),
    "schnet_site_spectral": (lambda: schnet_site_spectral(SCHNET, z=7, n_out=6, hidden=8), False),
    "painn_site_spectral": (lambda: painn_site_spectral(PAINN, z=7, n_out=6, hidden=8), False),
    "mace": (lambda: potential.potential(mace(MACEConfig(
        n_channels=8, radial_features=8, radial_layers=2, readout_features=8, n_rbf=4,
        cutoff=C))), True),
    "schnet_transition_spectral": (lambda: schnet_transition_spectral(
        SCHNET, z=7, grid=(400.0, 410.0, 6), n_transitions=4, hidden=8), False),
}
WRAPPERS = {"potential", "graph_target"}  # exercised through the cases above
SLOW = {"mace"}  # compiles for minutes on 2 cores; tests/models/test_mace.py covers it by default
NO_GRAPH = {"coordinate_mlp"}  # reads raw coordinates, declares no atom graph


def test_every_registered_model_is_covered():
    missing = set(bundle._REGISTRY) - set(CASES) - WRAPPERS - NO_GRAPH
    assert not missing, f"registered models without a conformance case: {sorted(missing)}"


@pytest.fixture(scope="module", params=[
    pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in sorted(CASES)])
def case(request, x64):
    make, is_potential = CASES[request.param]
    model = make()
    structures = [ammonia(), si_cell()] if is_potential else [ammonia()]
    recs = graph.records(structures, model)
    budget = graph.fixed_budget(recs, 3)
    params = model.init(jax.random.key(0), graph.batch(recs, budget))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
    return model, params, structures, budget, is_potential, jax.jit(model.apply)


def run(case, atoms_list, budget=None, layout="sparse"):
    model, params, _, default, _, apply = case
    recs = graph.records(atoms_list, model)
    b = graph.batch(recs, budget or default, dtype=np.float64, layout=layout)
    out = apply(params, graph.to_device(b))
    n = sum(len(a) for a in atoms_list)
    real = np.asarray(b.nodes["mask"])
    return {k: (np.asarray(v)[real][:n] if np.shape(v)[0] == len(real)
                else np.asarray(v)[:len(atoms_list)]) for k, v in out.items()}


def close(a, b, tol=1e-8):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=tol, rtol=tol, err_msg=k)


def test_declared_layouts_agree(case):
    model, _, structures, *_ = case
    mol = [structures[0]]
    ref = run(case, mol)
    assert "sparse" in model.graph.layouts and all(np.all(np.isfinite(v)) for v in ref.values())
    for layout in model.graph.layouts:
        if layout != "sparse":
            close(run(case, mol, graph.Budget(4, 8, 1), layout), ref)


def test_padding_and_batch_neighbours_change_nothing(case):
    _, _, structures, budget, *_ = case
    for k, target in enumerate(structures):
        alone = run(case, [target])
        padded = run(case, [target], graph.Budget(budget.n_node + 64, budget.n_edge + 512,
                                                   budget.n_graph + 3, budget.n_triplet + 900))
        close(alone, padded)
        if len(structures) > 1:
            both = run(case, structures)
            off = sum(len(a) for a in structures[:k])
            for key, v in alone.items():
                got = both[key][k] if v.shape[0] == 1 else both[key][off:off + len(target)]
                np.testing.assert_allclose(got, v[0] if v.shape[0] == 1 else v, atol=1e-8)


def _per_graph(out, n_graphs):
    return {k: v for k, v in out.items() if v.shape[0] == n_graphs}


def test_invariant_under_rotation_translation_permutation(case):
    _, _, structures, _, is_potential, _ = case
    rot = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    for atoms in structures:
        ref = run(case, [atoms])
        turned = atoms.copy()
        turned.positions = atoms.positions @ rot.T + np.array([3.3, -7.1, 12.9])
        turned.cell = np.asarray(atoms.cell) @ rot.T
        out = run(case, [turned])
        for k in ("energy", "xanes"):
            if k in ref and ref[k].shape[0] == 1:
                np.testing.assert_allclose(out[k], ref[k], atol=1e-8, rtol=1e-8, err_msg=k)
        if is_potential:
            np.testing.assert_allclose(out["forces"], ref["forces"] @ rot.T, atol=1e-8)
            np.testing.assert_allclose(out["stress"][0], rot @ ref["stress"][0] @ rot.T, atol=1e-8)
        perm = np.random.default_rng(4).permutation(len(atoms))
        shuffled = run(case, [atoms[perm]])
        close(_per_graph(shuffled, 1), _per_graph(ref, 1))
        if is_potential:
            np.testing.assert_allclose(shuffled["forces"], ref["forces"][perm], atol=1e-8)


def test_forces_and_stress_are_energy_derivatives(case):
    model, params, structures, budget, is_potential, _ = case
    if not is_potential:
        pytest.skip("not a potential")
    inner = model.config["model"]
    for atoms in structures:
        rec = graph.records([atoms], model)[0]
        b = graph.to_device(graph.batch([rec], budget, dtype=np.float64))
        out = run(case, [atoms])

        @jax.jit
        def energy(pos, b=b):
            return inner.apply(params, b._replace(nodes={**b.nodes, "positions": pos}))["energy"][0]

        pos0 = np.asarray(b.nodes["positions"])
        h = 1e-5
        for a, c in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
            plus, minus = pos0.copy(), pos0.copy()
            plus[a, c] += h
            minus[a, c] -= h
            fd = -(float(energy(plus)) - float(energy(minus))) / (2 * h)
            assert abs(fd - out["forces"][a, c]) < 1e-7 + 1e-6 * abs(fd), (a, c)
        if not atoms.pbc.any():
            assert np.all(out["stress"] == 0.0)
            continue
        vol = atoms.get_volume()

        def strained(eps):
            s = atoms.copy()
            s.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
            return run(case, [s])["energy"][0]

        for i, j in [(0, 0), (0, 1), (2, 1)]:
            eps = np.zeros((3, 3))
            eps[i, j] += h / 2
            eps[j, i] += h / 2
            fd = (strained(eps) - strained(-eps)) / (2 * h * vol)
            np.testing.assert_allclose(out["stress"][0][i, j], fd, atol=1e-8)
