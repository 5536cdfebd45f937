"""Line graphs: bond angles vs direct geometry (periodic images included), k-NN graphs,
padding/batching of triplets, and finite gradients at degenerate angles."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from jaxmat import graph, linegraph


def triclinic() -> Atoms:
    """3 atoms in a small skewed cell: the cutoff reaches several periodic images."""
    cell = np.array([[3.1, 0.0, 0.0], [0.9, 2.8, 0.0], [0.4, 0.7, 3.3]])
    frac = np.array([[0.0, 0.0, 0.0], [0.31, 0.52, 0.18], [0.77, 0.23, 0.61]])
    return Atoms("SiCO", scaled_positions=frac, cell=cell, pbc=True)


def reference_angles(atoms: Atoms, cutoff: float) -> dict[int, np.ndarray]:
    """cos θ at each centre atom for every ordered pair of distinct neighbours (ASE list)."""
    i, D = ase_neighbor_list("iD", atoms, cutoff)
    out = {}
    for c in range(len(atoms)):
        vecs = D[i == c]
        u = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        cos = u @ u.T
        off = ~np.eye(len(u), dtype=bool)
        out[c] = np.sort(cos[off])
    return out


def model_angles(rec: graph.Record) -> tuple[np.ndarray, np.ndarray]:
    b = graph.batch([rec], dtype=np.float64)
    cos = np.asarray(linegraph.bond_cosines(b))
    centre = rec.receivers[rec.line_senders]  # the shared atom
    return cos, centre


@pytest.mark.parametrize("make,cutoff", [(triclinic, 4.0), (lambda: bulk("Si", "diamond", 5.43), 4.0),
                                         (lambda: bulk("Cu", "fcc", 3.6, cubic=True), 3.0)])
def test_angles_match_direct_geometry_with_images(make, cutoff):
    atoms = make()
    rec = linegraph.add_line_graph(graph.atoms_to_record(atoms, cutoff))
    assert (rec.receivers[rec.line_senders] == rec.senders[rec.line_receivers]).all()
    cos, centre = model_angles(rec)
    ref = reference_angles(atoms, cutoff)
    for c in range(len(atoms)):
        np.testing.assert_allclose(np.sort(cos[centre == c]), ref[c], atol=1e-6)
    # n (n - 1) ordered pairs per atom without backtracking, n^2 with it
    deg = np.bincount(rec.receivers, minlength=len(atoms))
    assert rec.n_triplet == int(np.sum(deg * (deg - 1)))
    back = linegraph.add_line_graph(graph.atoms_to_record(atoms, cutoff), backtracking=True)
    assert back.n_triplet == int(np.sum(deg**2))


def test_diamond_angles_are_tetrahedral():
    rec = linegraph.add_line_graph(graph.atoms_to_record(bulk("Si", "diamond", 5.43), 2.5))
    cos, _ = model_angles(rec)
    assert rec.n_triplet == 2 * 4 * 3
    np.testing.assert_allclose(cos, -1.0 / 3.0, atol=1e-6)


def test_knn_matches_brute_force_and_is_symmetric():
    atoms = triclinic()
    k, cutoff = 5, 6.0
    i, j, s, d = graph.knn_neighbor_list(atoms.positions, np.asarray(atoms.cell), atoms.pbc, cutoff, k)
    ia, da = ase_neighbor_list("id", atoms, cutoff)
    for c in range(len(atoms)):
        kth = np.sort(da[ia == c])[k - 1]
        mine = np.sort(d[i == c])
        # every neighbour up to the k-th distance is present (ties included) ...
        np.testing.assert_allclose(mine[: np.sum(da[ia == c] <= kth + 1e-4)],
                                   np.sort(da[(ia == c) & (da <= kth + 1e-4)]), atol=1e-9)
        # ... and anything farther is only there as the reverse of someone's neighbour
        assert len(mine) >= k
    fwd = {(a, b, *np.rint(x).astype(int)) for a, b, x in zip(i, j, s)}
    assert all((b, a, *(-np.array(x))) in fwd for a, b, *x in fwd)
    vec = atoms.positions[j] - atoms.positions[i] + s @ np.asarray(atoms.cell)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), d, atol=1e-9)


def test_knn_graph_records_and_alignn_defaults():
    atoms = bulk("Cu", "fcc", 3.6)  # 1 atom: 12 nearest neighbours at a/sqrt(2), 6 next
    rec = linegraph.records_from_atoms([atoms])[0]
    assert rec.n_edge == 12
    np.testing.assert_allclose(np.linalg.norm(
        rec.shifts @ np.asarray(atoms.cell), axis=1), 3.6 / np.sqrt(2), atol=1e-9)
    assert rec.n_triplet == 12 * 11
    full = linegraph.records_from_atoms([atoms], cutoff=4.0, max_neighbors=None)[0]
    assert full.n_edge == 18
    with pytest.raises(ValueError, match="max_neighbors"):
        graph.knn_neighbor_list(atoms.positions, np.asarray(atoms.cell), atoms.pbc, 4.0, 0)


def test_batched_triplets_are_offset_and_padding_is_masked():
    recs = [linegraph.add_line_graph(graph.atoms_to_record(a, 3.5))
            for a in (triclinic(), bulk("Si", "diamond", 5.43), bulk("Cu", "fcc", 3.6))]
    singles = [model_angles(r)[0] for r in recs]
    budget = graph.estimate_budget(recs, batch_size=3)
    assert budget.n_triplet >= sum(r.n_triplet for r in recs)
    b = graph.batch(recs, budget, dtype=np.float64)
    line = b.edges["line"]
    assert line["senders"].shape == (budget.n_triplet,)
    n_real = sum(r.n_triplet for r in recs)
    assert line["mask"].sum() == n_real
    assert (line["senders"][n_real:] == budget.n_edge - 1).all()
    cos = np.asarray(linegraph.bond_cosines(b))
    np.testing.assert_allclose(cos[:n_real], np.concatenate(singles), atol=1e-6)
    assert np.isfinite(cos).all()
    # packing respects the triplet budget
    small = graph.Budget(budget.n_node, budget.n_edge, budget.n_graph, max(r.n_triplet for r in recs))
    groups = graph.pack(recs, small)
    assert all(sum(recs[k].n_triplet for k in g) <= small.n_triplet for g in groups)
    with pytest.raises(ValueError, match="line graphs"):
        graph.batch([recs[0], graph.atoms_to_record(triclinic(), 3.5)])
    with pytest.raises(ValueError, match="budget"):
        graph.batch(recs, small)


def test_gradients_finite_at_degenerate_angles_and_match_differences():
    # a straight chain (θ = 180°) in a box, plus padding edges of zero length
    atoms = Atoms("C3", positions=[[0, 0, 0], [1.3, 0, 0], [2.6, 0, 0]], cell=[10, 10, 10], pbc=False)
    rec = linegraph.add_line_graph(graph.atoms_to_record(atoms, 1.5))
    b = graph.batch([rec], graph.Budget(8, rec.n_edge + 4, 2, rec.n_triplet + 4), dtype=np.float32)
    cos = np.asarray(linegraph.bond_cosines(b))
    m = np.asarray(b.edges["line"]["mask"])
    np.testing.assert_allclose(np.sort(cos[m]), [-1.0, -1.0], atol=1e-6)

    def f(pos):
        c = linegraph.bond_cosines(b._replace(nodes={**b.nodes, "positions": pos}))
        return jnp.sum(jnp.where(b.edges["line"]["mask"], c**2 + c, 0.0))

    g = jax.grad(f)(jnp.asarray(b.nodes["positions"]))
    assert np.isfinite(np.asarray(g)).all()
    # bent chain: gradient vs central differences (float32 tolerance)
    pos = np.asarray(b.nodes["positions"]).copy()
    pos[2] = [2.4, 0.5, 0.2]
    g = np.asarray(jax.grad(f)(jnp.asarray(pos)))
    h = 1e-2
    for a in range(3):
        for x in range(3):
            dp = np.zeros_like(pos)
            dp[a, x] = h
            fd = (f(jnp.asarray(pos + dp)) - f(jnp.asarray(pos - dp))) / (2 * h)
            np.testing.assert_allclose(g[a, x], fd, atol=2e-3)
