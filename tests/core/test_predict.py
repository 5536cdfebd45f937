"""predict: equals model.apply on an unpadded batch, committee statistics equal numpy's,
one compile over datasets of any size, clear errors; committee.stats by hand."""
import dataclasses

import jax
import numpy as np
import pytest
from ase.build import molecule

from jaxmat import committee, data, ensemble, graph, potential
from jaxmat.models import SchNetConfig, schnet
from jaxmat.models.coordinate import coordinate_mlp
from jaxmat.core.predict import compile_count, predict
from jaxmat.core.protocol import resolve_spec

CUTOFF = 3.5


def _model():
    cfg = SchNetConfig(n_features=8, n_interactions=1, n_rbf=8, cutoff=CUTOFF)
    return potential.potential(schnet(cfg), stress=False)


def _atoms():
    names = ["H2O", "CH4", "C6H6", "NH3", "CH3CH2OH", "H2", "CO2"]
    rng = np.random.default_rng(0)
    out = []
    for k in range(12):
        a = molecule(names[k % len(names)])
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        out.append(a)
    return out


@pytest.fixture(scope="module")
def setup():
    model = _model()
    atoms = _atoms()
    recs = graph.records_from_atoms(atoms, CUTOFF)
    params = model.init(jax.random.key(0), graph.batch(recs[:1]))
    com = ensemble.init(model, jax.random.key(1), graph.batch(recs[:1]), 3)
    return model, atoms, recs, params, com


def test_predict_equals_apply_on_an_unpadded_batch(setup):
    model, atoms, recs, params, _ = setup
    direct = jax.device_get(jax.jit(model.apply)(params, graph.batch(recs)))
    out = predict(model, params, atoms, batch_size=4)  # several batches of one budget
    assert sorted(out) == ["atomic_energies", "energy", "forces"]
    np.testing.assert_allclose(out["energy"], direct["energy"][:len(recs)], rtol=1e-5, atol=1e-5)
    n = sum(r.n_node for r in recs)
    np.testing.assert_allclose(np.concatenate(out["forces"]), direct["forces"][:n],
                               rtol=1e-5, atol=1e-6)
    assert [f.shape for f in out["forces"]] == [(len(a), 3) for a in atoms]
    by_records = predict(model, params, recs, batch_size=4, keys=("energy",))
    assert list(by_records) == ["energy"]
    np.testing.assert_allclose(by_records["energy"], out["energy"], rtol=1e-6)


def test_dense_layout_gives_the_same_numbers(setup):
    model, atoms, _, params, _ = setup
    sparse = predict(model, params, atoms, batch_size=5)
    dense = predict(model, params, atoms, batch_size=5, layout="dense")
    np.testing.assert_allclose(dense["energy"], sparse["energy"], rtol=1e-5, atol=1e-5)
    for a, b in zip(dense["forces"], sparse["forces"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_committee_statistics_equal_numpy(setup):
    model, atoms, recs, _, com = setup
    b = graph.batch(recs)
    direct = jax.device_get(jax.jit(ensemble.apply, static_argnums=0)(model, com, b))
    e = direct["energy"][:, :len(recs)].astype(np.float64)
    n = sum(r.n_node for r in recs)
    f = direct["forces"][:, :n].astype(np.float64)
    out = predict(model, com, atoms, batch_size=5, members=True)
    np.testing.assert_allclose(out["energy"], e.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["energy_var"], e.var(0), rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(out["energy_members"], e, rtol=1e-5, atol=1e-5)
    cuts = np.cumsum([r.n_node for r in recs])[:-1]
    fv = np.split(f.var(0), cuts)
    for k in range(len(recs)):
        np.testing.assert_allclose(out["forces_var"][k], fv[k], rtol=1e-3, atol=1e-9)
        np.testing.assert_allclose(out["forces_var_atom"][k], fv[k].sum(-1), rtol=1e-3, atol=1e-9)
        assert out["forces_var_graph"][k] == pytest.approx(fv[k].mean(), rel=1e-3, abs=1e-10)
        assert out["forces_members"][k].shape == (3, len(atoms[k]), 3)
    assert np.all(out["forces_var_graph"] > 0)


def test_committee_stats_by_hand():
    rng = np.random.default_rng(0)
    recs = graph.records_from_atoms(_atoms()[:3], CUTOFF)
    b = graph.batch(recs, graph.fixed_budget(recs, 4))
    N, G = b.nodes["mask"].shape[0], b.n_node.shape[0]
    outs = {"energy": rng.normal(size=(4, G)), "forces": rng.normal(size=(4, N, 3))}
    st = jax.device_get(committee.stats(outs, batch=b))
    np.testing.assert_allclose(st["energy_var"], outs["energy"].var(0), rtol=1e-6)
    np.testing.assert_allclose(st["forces_var_atom"], outs["forces"].var(0).sum(-1), rtol=1e-6)
    off = np.cumsum([0] + [r.n_node for r in recs])
    for g in range(3):
        want = outs["forces"][:, off[g]:off[g + 1]].var(0).mean()
        assert st["forces_var_graph"][g] == pytest.approx(want, rel=1e-6)
    assert np.all(st["forces_var_graph"][3:] == 0)  # padding graphs
    with pytest.raises(ValueError, match="no \\['stress'\\]"):
        committee.stats(outs, ("stress",))


def test_one_compile_for_datasets_of_any_size():
    model = _model()  # a fresh model: its own cache
    frames = data.load_ammonia()
    params = model.init(jax.random.key(0), graph.batch(graph.records(frames[:1], model, labels=False)))
    for n in (1, 5, 40, 2, 17):
        out = predict(model, params, frames[:n], batch_size=8)
        assert len(out["energy"]) == n
    assert compile_count(model) == 1
    # a budget grows once for bigger structures, then serves any subset
    mixed = _atoms()
    for n in (12, 1, 2, 9, 7):
        predict(model, params, mixed[:n], batch_size=8)
    assert compile_count(model) == 2


def test_errors_name_the_problem(setup):
    model, atoms, recs, params, com = setup
    with pytest.raises(ValueError, match="no structures"):
        predict(model, params, [])
    with pytest.raises(ValueError, match="gives no \\['charge'\\]"):
        predict(model, params, atoms[:2], keys=("charge",))
    with pytest.raises(ValueError, match="was built for the graph \\(cutoff 7 Å, all neighbours\\) but "
                       "the model reads \\(cutoff 3.5 Å"):
        predict(model, params, graph.records_from_atoms(atoms[2:3], 2 * CUTOFF))
    hand_made = dataclasses.replace(graph.records(atoms[2:3], 2 * CUTOFF)[0], spec=None)
    with pytest.raises(ValueError, match="longer than the model's graph cutoff"):
        predict(model, params, [hand_made])
    with pytest.raises(ValueError, match="members=True needs committee"):
        predict(model, params, atoms[:2], members=True)
    with pytest.raises(ValueError, match="expected ASE Atoms"):
        predict(model, params, [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="disagrees with the graph cutoff"):
        resolve_spec(model, 5.0)
    assert resolve_spec(model).cutoff == CUTOFF == resolve_spec(model, CUTOFF).cutoff
    free = potential.potential(coordinate_mlp(features=(4,)), stress=False)
    with pytest.raises(ValueError, match="declares no graph cutoff"):
        resolve_spec(free)
    with pytest.raises(ValueError, match="declares no graph cutoff"):
        predict(free, None, atoms[:1])
    assert len(graph.records(atoms[:1], resolve_spec(free, 2.0))) == 1
    sparse_only = model.__class__(model.init, model.apply, name="sparse-only")
    with pytest.raises(ValueError, match="supports the batch layouts \\['sparse'\\]"):
        predict(sparse_only, params, recs[:2], layout="dense")


def test_fixed_budget_does_not_depend_on_the_record_count():
    frames = graph.records_from_atoms(data.load_ammonia()[:40], CUTOFF)
    b = graph.fixed_budget(frames, 8)
    assert b == graph.fixed_budget(frames[:3], 8) == graph.fixed_budget(frames[:1], 8)
    n, e = frames[0].n_node, frames[0].n_edge
    assert b.n_graph == 9 and b.n_node == 64 and b.n_node >= 8 * n + n + graph.PAD_NODES
    assert graph.fixed_budget(frames, 1, multiple=16) == graph.Budget(16, 16, 2)  # the largest
    assert graph.fixed_budget(frames, 1, multiple=1, edge_margin=1.5) == graph.Budget(
        n + graph.PAD_NODES, int(np.ceil(1.5 * e)), 2)
    assert graph.estimate_budget(frames[:3], 8) == graph.fixed_budget(frames[:3], 3)
    dense = graph.fixed_budget(frames[:2], 5, layout="dense")
    assert dense == graph.Budget(5 * n, 5 * n * (n // 2), 5)
    with pytest.raises(ValueError, match="empty dataset"):
        graph.fixed_budget([], 4)
