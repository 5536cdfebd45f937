"""Neighbour lists against ASE, batching/padding conventions, input validation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from jaxmat import data, graph


# --------------------------------------------------------------------------- helpers
def ours(atoms: Atoms, cutoff: float) -> set[tuple[int, ...]]:
    i, j, s, d = graph.neighbor_list(atoms.positions, np.asarray(atoms.cell), atoms.pbc, cutoff)
    s_int = np.rint(s).astype(int)
    assert np.array_equal(s, s_int), "shifts must be integers"
    vec = atoms.positions[j] - atoms.positions[i] + s_int @ np.asarray(atoms.cell)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), d, atol=1e-10)
    pairs = {(int(a), int(b), *map(int, c)) for a, b, c in zip(i, j, s_int)}
    assert len(pairs) == len(i), "duplicate pairs"
    return pairs


def reference(atoms: Atoms, cutoff: float) -> set[tuple[int, ...]]:
    i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
    return {(int(a), int(b), *map(int, c)) for a, b, c in zip(i, j, s)}


def heights(cell: np.ndarray) -> np.ndarray:
    vol = abs(np.linalg.det(cell))
    return vol / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)


def small_mlearn(element: str, n: int = 2, max_atoms: int = 24) -> list[Atoms]:
    return [a for a in data.load_mlearn(element, "all") if len(a) <= max_atoms][:n]


def triclinic_pair() -> Atoms:
    cell = np.array([[2.0, 0.0, 0.0], [0.7, 1.9, 0.0], [0.4, 0.5, 2.2]])
    return Atoms("SiC", cell=cell, pbc=True, scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.55, 0.7]])


# --------------------------------------------------------------------------- neighbour lists
@pytest.mark.parametrize("element", ["Si", "Li", "Cu", "Mo"])
@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_pairs_match_ase_on_mlearn_cells(element, cutoff):
    cells = small_mlearn(element)
    assert cells
    for atoms in cells:
        assert reference(atoms, cutoff) == ours(atoms, cutoff)


def test_pairs_match_ase_cutoff_larger_than_cell():
    atoms = triclinic_pair()
    cutoff = 2.5 * heights(np.asarray(atoms.cell)).min()
    assert cutoff > np.linalg.norm(atoms.cell, axis=1).max()  # many images in every direction
    ref = reference(atoms, cutoff)
    assert len(ref) > 100
    assert ref == ours(atoms, cutoff)
    # a 2-atom mlearn Li cell, same ratio
    li = [a for a in data.load_mlearn("Li", "all") if len(a) == 2][0]
    cutoff = 2.5 * heights(np.asarray(li.cell)).min()
    assert reference(li, cutoff) == ours(li, cutoff)


def test_pairs_match_ase_large_rattled_triclinic_cell():
    """A 432-atom sheared, rattled supercell: the cell-list path of the host list."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43) * (6, 6, 6)
    atoms.set_cell(np.asarray(atoms.cell) + [[0, 0, 0], [1.1, 0, 0], [0.7, -0.4, 0]],
                   scale_atoms=True)
    atoms.rattle(0.1, seed=3)
    ref = reference(atoms, 4.6)
    assert len(ref) > 20 * len(atoms)
    assert ref == ours(atoms, 4.6)


def test_pairs_with_unwrapped_positions():
    rng = np.random.default_rng(1)
    atoms = triclinic_pair()
    cutoff = 3.7  # not a lattice length (|2a| = 4 Å would sit exactly on the cutoff)
    moved = atoms.copy()
    moved.positions += rng.integers(-3, 4, size=(2, 3)) @ np.asarray(atoms.cell)
    moved.positions += rng.normal(scale=0.3, size=(2, 3))  # also off the lattice grid
    assert (np.abs(moved.get_scaled_positions(wrap=False)) > 1).any()
    assert reference(moved, cutoff) == ours(moved, cutoff)
    # pure lattice translations leave every distance unchanged
    shifted = atoms.copy()
    shifted.positions += np.array([[2, -1, 3], [-4, 0, 1]]) @ np.asarray(atoms.cell)
    d0 = np.sort(graph.neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)[3])
    d1 = np.sort(graph.neighbor_list(shifted.positions, shifted.cell[:], shifted.pbc, cutoff)[3])
    np.testing.assert_allclose(d0, d1, atol=1e-10)


def test_pairs_molecule_without_cell():
    atoms = data.load_ammonia()[0]
    assert not atoms.pbc.any()
    for cutoff in (1.2, 5.0):
        assert reference(atoms, cutoff) == ours(atoms, cutoff)
    assert len(ours(atoms, 5.0)) == 4 * 3  # all ordered pairs, no self pairs


@pytest.mark.parametrize("third", [[0.0, 0.0, 0.0], [0.3, 0.2, 9.0]])
def test_pairs_partially_periodic(third):
    """Slab (pbc in two directions), with a zero or a vacuum third cell vector."""
    rng = np.random.default_rng(2)
    cell = np.array([[3.1, 0.0, 0.0], [1.2, 2.8, 0.0], third])
    pos = rng.uniform(0, 1, size=(4, 3)) @ np.array([[3.1, 0, 0], [1.2, 2.8, 0], [0, 0, 4.0]])
    atoms = Atoms("Si4", positions=pos, cell=cell, pbc=[True, True, False])
    for cutoff in (3.0, 7.0):
        assert reference(atoms, cutoff) == ours(atoms, cutoff)
    graph.atoms_to_record(atoms, 3.0)  # accepted: the periodic vectors span a lattice


def test_record_edges_and_edge_vectors():
    atoms = small_mlearn("Si", 1)[0]
    rec = graph.atoms_to_record(atoms, 4.0)
    vec = np.asarray(graph.edge_vectors(graph.to_device(graph.batch([rec]))))
    ref = (atoms.positions[rec.senders] - atoms.positions[rec.receivers]
           + rec.shifts @ np.asarray(atoms.cell))
    np.testing.assert_allclose(vec[: rec.n_edge], ref, atol=1e-4)
    assert np.linalg.norm(ref, axis=1).max() < 4.0


# --------------------------------------------------------------------------- batching
def ammonia_records(n: int = 10, cutoff: float = 4.0) -> list[graph.Record]:
    return graph.records_from_atoms(data.load_ammonia()[:n], cutoff)


def test_batch_padding_and_masks():
    recs = ammonia_records(3) + graph.records_from_atoms(small_mlearn("Li", 1), 3.0)
    n_real = sum(r.n_node for r in recs)
    e_real = sum(r.n_edge for r in recs)
    budget = graph.Budget(n_real + 7, e_real + 11, len(recs) + 3)
    b = graph.batch(recs, budget)
    N, E, G = budget.n_node, budget.n_edge, budget.n_graph
    assert b.nodes["positions"].shape == (N, 3) and b.edges["shifts"].shape == (E, 3)
    assert b.globals["cell"].shape == (G, 3, 3) and b.n_node.shape == (G,)
    assert b.n_node.sum() == N and b.n_edge.sum() == E
    assert b.nodes["mask"].sum() == n_real and b.edges["mask"].sum() == e_real
    assert b.globals["mask"].sum() == len(recs)
    assert list(b.n_node[: len(recs)]) == [r.n_node for r in recs]
    np.testing.assert_array_equal(b.globals["n_atoms"], [r.n_node for r in recs] + [0] * 3)
    # padding nodes: species 0, PAD_DISTANCE apart on the x axis, in the last (padding) graph
    pad = ~b.nodes["mask"]
    assert (b.nodes["species"][pad] == 0).all()
    np.testing.assert_array_equal(b.nodes["positions"][pad][:, 0],
                                  graph.PAD_DISTANCE * np.arange(1, 8))
    assert (b.nodes["graph"][pad] == G - 1).all()
    # padding edges join the last two padding nodes (never a zero-length edge)
    assert (b.senders[~b.edges["mask"]] == N - 1).all()
    assert (b.receivers[~b.edges["mask"]] == N - 2).all()
    # real edges stay inside their own graph
    g_s = b.nodes["graph"][b.senders[b.edges["mask"]]]
    g_r = b.nodes["graph"][b.receivers[b.edges["mask"]]]
    assert (g_s == g_r).all()
    # the first structure's edges are unchanged, the second's offset by its node count
    r0, r1 = recs[0], recs[1]
    np.testing.assert_array_equal(b.senders[: r0.n_edge], r0.senders)
    np.testing.assert_array_equal(b.senders[r0.n_edge: r0.n_edge + r1.n_edge], r1.senders + r0.n_node)
    # targets: energy on every structure, forces on every atom
    np.testing.assert_allclose(b.globals["energy"][: len(recs)],
                               [r.targets["energy"] for r in recs], rtol=1e-6)
    assert "energy_mask" not in b.globals
    assert (b.nodes["forces"][pad] == 0).all()


def test_padded_entries_are_masked_in_sums():
    recs = ammonia_records(2)
    small = graph.batch(recs)
    big = graph.batch(recs, graph.Budget(64, 128, 5))
    for b in (small, big):
        x = jnp.where(b.nodes["mask"], 1.0, 123.0) * b.nodes["mask"]
        np.testing.assert_array_equal(np.asarray(graph.graph_sum(x, b))[:2], [4.0, 4.0])
        assert float(graph.graph_sum(x, b)[-1]) == 0.0


def test_partial_targets_get_masks():
    recs = ammonia_records(2)
    recs[1].targets = {}
    b = graph.batch(recs, graph.Budget(16, 32, 4))
    np.testing.assert_array_equal(b.globals["energy_mask"], [True, False, False, False])
    assert b.globals["energy"][1] == 0.0


def test_budget_and_pack_give_fixed_shapes():
    recs = ammonia_records(20) + graph.records_from_atoms(small_mlearn("Si", 2), 3.5)
    budget = graph.estimate_budget(recs, batch_size=4, multiple=32)
    assert budget.n_node % 32 == 0 and budget.n_edge % 32 == 0 and budget.n_graph == 5
    assert all(budget.fits(r.n_node, r.n_edge, 1) for r in recs)
    groups = graph.pack(recs, budget)
    assert sorted(k for g in groups for k in g) == list(range(len(recs)))
    for g in groups:
        assert sum(recs[k].n_node for k in g) < budget.n_node
        assert sum(recs[k].n_edge for k in g) <= budget.n_edge
        assert len(g) < budget.n_graph
    loader = graph.GraphLoader(recs, batch_size=4, budget=budget, seed=3)
    shapes = None
    for epoch in range(2):
        seen = []
        for b in loader.epoch(epoch):
            s = jax.tree_util.tree_map(np.shape, b)
            shapes = shapes or s
            assert s == shapes
            seen += list(b.globals["energy"][b.globals["mask"]])
        assert len(seen) == len(recs)
    # reproducible order per epoch, different between epochs
    assert np.array_equal(loader.order(1), graph.GraphLoader(recs, 4, budget, seed=3).order(1))
    assert not np.array_equal(loader.order(0), loader.order(1))


def test_budget_overflow_raises():
    recs = ammonia_records(3)
    with pytest.raises(ValueError, match="budget"):
        graph.batch(recs, graph.Budget(12, 100, 4))  # 12 atoms need 13 node slots
    with pytest.raises(ValueError, match="exceeds the budget"):
        graph.pack(recs, graph.Budget(4, 100, 3))
    with pytest.raises(ValueError, match="empty"):
        graph.batch([])
    with pytest.raises(ValueError, match="empty"):
        graph.estimate_budget([], 4)


def test_batch_without_budget_is_minimal():
    recs = ammonia_records(3)
    b = graph.batch(recs)
    assert b.nodes["mask"].shape == (12 + graph.PAD_NODES,) and b.edges["mask"].all()
    assert b.globals["mask"].tolist() == [True, True, True, False]


# --------------------------------------------------------------------------- safe_norm
def test_safe_norm_value_and_gradient():
    x = jnp.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(graph.safe_norm(x), [5.0, 0.0])
    g = jax.grad(lambda v: graph.safe_norm(v).sum())(x)
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_allclose(g[0], [0.6, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(g[1], 0.0)
    # second derivative is finite at zero too (forces of forces, e.g. in training)
    h = jax.hessian(lambda v: graph.safe_norm(v))(jnp.zeros(3))
    assert np.isfinite(np.asarray(h)).all()


# --------------------------------------------------------------------------- bad input
WATER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


@pytest.mark.parametrize(
    "numbers, positions, kw, match",
    [
        ([8, 1, 1], WATER * np.array([[1], [np.nan], [1]]), {}, "NaN"),
        ([8, 1, 1], WATER + np.array([[0, 0, 0], [0, 0, 0], [np.inf, 0, 0]]), {}, "non-finite"),
        ([8, 1, 1], np.array([[0, 0, 0], [0.05, 0, 0], [2, 0, 0]]), {}, "overlapping"),
        ([8, 1, 0], WATER, {}, "unknown element.*0"),
        ([8, 1, 200], WATER, {}, "unknown element.*200"),
        ([], np.zeros((0, 3)), {}, "empty"),
        ([8, 1], WATER, {}, "mismatched lengths"),
        ([8, 1, 1], WATER[:, :2], {}, "shape"),
        ([8, 1, 1], WATER, dict(cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True), "singular cell"),
        ([8, 1, 1], WATER, dict(cell=np.zeros((3, 3)), pbc=True), "singular cell"),
        ([8, 1, 1], WATER, dict(cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True), "singular cell"),
        ([8, 1, 1], WATER, dict(node_targets={"forces": np.zeros((2, 3))}), "forces"),
    ],
)
def test_bad_input_raises_value_error(numbers, positions, kw, match):
    with pytest.raises(ValueError, match=match):
        graph.make_record(numbers, positions, 3.0, **kw)


def test_overlap_with_periodic_image_raises():
    # atom 1 sits 0.05 Å from the image of atom 0 in the next cell
    with pytest.raises(ValueError, match="overlapping"):
        graph.make_record([14, 14], [[0.0, 0.0, 0.0], [2.95, 0.0, 0.0]], 3.0,
                          cell=np.eye(3) * 3.0, pbc=True)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Atoms("H2O", positions=WATER * np.array([[1], [1], [np.nan]])), "NaN"),
        (lambda: Atoms("H2", positions=[[0, 0, 0], [0.0, 0.0, 0.09]]), "overlapping"),
        (lambda: Atoms(numbers=[8, 0, 1], positions=WATER), "unknown element.*0"),
        (lambda: Atoms(numbers=[8, 200, 1], positions=WATER), "unknown element.*200"),
        (lambda: Atoms(), "empty"),
        (lambda: Atoms("H2O", positions=WATER, cell=[[2, 0, 0], [2, 0, 0], [0, 0, 2]], pbc=True),
         "singular cell"),
    ],
)
def test_bad_atoms_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        graph.atoms_to_record(make(), 3.0)
    with pytest.raises(ValueError, match=f"structure 0.*{match}"):
        graph.records_from_atoms([make()], 3.0)
