"""The system contract: every tool builds a structure's graph from the model's spec, so
predict, the ASE calculator, MD (step 0) and attacks (step 0) give the same energy and
forces; records of another spec are refused; padding cannot poison a model that ignores
cell shifts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, molecule
from flax import nnx

import jaxmat
import jaxmat.md
from jaxmat import data, graph, potential, train
from jaxmat.ase import JaxmatCalculator
from jaxmat.core import committee, neighbors
from jaxmat.core.predict import plan
from jaxmat.core.protocol import GraphSpec, Model
from jaxmat.md import forces as md_forces
from jaxmat.models import ALIGNNConfig, SchNetConfig, alignn, schnet
from jaxmat.workflows.adversarial.attack import AttackConfig, Boltzmann, attack

CUTOFF = 3.0


def no_envelope(cutoff: float = CUTOFF) -> Model:
    """A pair energy ``a Σ exp(-r)`` over the edges it is given, with no cutoff function:
    it counts every edge, so it sees any edge a tool lets through beyond the cutoff."""

    def init(key, batch):
        return {"a": jnp.asarray(1.0)}

    def apply(params, batch):
        r = graph.safe_norm(graph.edge_vectors(batch))
        e = jnp.where(batch.edges["mask"], params["a"] * jnp.exp(-r), 0.0)
        return {"energy": graph.graph_sum(
            jax.ops.segment_sum(e, batch.receivers, graph.n_nodes(batch)), batch)}

    return potential.potential(Model(init, apply, name="no-envelope",
                                     graph=GraphSpec(cutoff=cutoff)), stress=False)


def systems():
    cu = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
    cu.rattle(0.15, seed=1)  # pairs between the cutoff (3 Å) and cutoff + skin (3.5 Å)
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=2)
    return [cu, mol]


def small_schnet() -> Model:
    return potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                   cutoff=CUTOFF)), stress=False)


@pytest.mark.parametrize("make,which", [(no_envelope, 0), (no_envelope, 1), (small_schnet, 0)],
                         ids=["no-envelope-Cu", "no-envelope-ethanol", "schnet-Cu"])
def test_every_tool_gives_the_same_energy(make, which):
    model = make()
    atoms = systems()[which]
    rec = graph.records([atoms], model)[0]
    params = model.init(jax.random.key(0), graph.batch([rec]))
    ref = jaxmat.predict(model, params, [atoms])
    e0, f0 = ref["energy"][0], ref["forces"][0]

    calc = JaxmatCalculator(model, params)
    np.testing.assert_allclose(calc.get_potential_energy(atoms), e0, rtol=1e-6)
    np.testing.assert_allclose(calc.get_forces(atoms), f0, atol=1e-5)

    # MD: the on-device list reaches cutoff + skin; the model sees the cutoff graph only
    skin = 0.5
    pos, cell = atoms.positions[None], np.asarray(atoms.cell)[None]
    spec = neighbors.plan(pos, cell, atoms.pbc, CUTOFF, skin)
    nbrs = neighbors.build_replicas(spec, pos, cell)
    if which == 0:
        assert int(nbrs.mask.sum()) > rec.n_edge  # skin pairs are there to be dropped
    out = md_forces.make_force_fn(model, atoms.numbers, atoms.pbc, False)(
        params, jnp.asarray(pos, jnp.float32), jnp.asarray(cell, jnp.float32), nbrs)
    np.testing.assert_allclose(out["energy"][0], e0, rtol=1e-6)
    np.testing.assert_allclose(out["forces"][0], f0, atol=1e-5)
    run = jaxmat.md.simulate(model, params, atoms, 1, ensemble="nve", log_every=1, skin=skin,
                             temperature_K=10.0)
    np.testing.assert_allclose(run.log["energy"][0, 0], e0, rtol=1e-6)

    # attack, step 0: a committee of two identical members
    pair = committee.stack([params, params])
    res = attack(model, pair, [atoms], Boltzmann(kT=1.0, e_min=e0, log_z=0.0),
                 AttackConfig(n_steps=0, sigma=0.0, skin=skin))
    np.testing.assert_allclose(res.energy_mean[0], e0, rtol=1e-6)


def test_records_of_another_spec_are_refused():
    atoms = [molecule("CH3CH2OH")]
    knn = potential.potential(alignn(ALIGNNConfig(
        n_alignn_layers=1, n_gcn_layers=1, embedding=8, hidden=8, n_bond_rbf=8, n_angle_rbf=8,
        cutoff=4.0, max_neighbors=4, output_key="energy")), stress=False)
    by_cutoff = graph.records_from_atoms(atoms, cutoff=4.0)  # every pair: not the k-NN graph
    with pytest.raises(ValueError, match=r"built for the graph \(cutoff 4 Å, all neighbours\) "
                                         r"but the model reads \(cutoff 4 Å, 4 nearest, line graph\)"):
        graph.GraphLoader(by_cutoff, 1, model=knn)
    own = graph.records(atoms, knn)
    assert own[0].spec.key == (4.0, 4, True) and own[0].n_edge < by_cutoff[0].n_edge
    params = knn.init(jax.random.key(0), graph.batch(own))
    with pytest.raises(ValueError, match="built for the graph"):
        jaxmat.predict(knn, params, by_cutoff)
    np.testing.assert_allclose(jaxmat.predict(knn, params, atoms)["energy"],
                               jaxmat.predict(knn, params, own)["energy"], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown layout 'packed'"):
        graph.GraphLoader(own, 1, layout="packed", model=knn)
    with pytest.raises(ValueError, match="supports the batch layouts \\['sparse'\\], not 'dense'"):
        graph.GraphLoader(own, 1, layout="dense", model=knn)
    with pytest.raises(ValueError, match="declares no graph cutoff"):
        jaxmat.predict(Model(knn.init, knn.apply, name="blind", graph=GraphSpec()), params, atoms)


def test_predict_and_loader_choose_the_same_layout():
    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=5.0)), stress=False)
    recs = graph.records(data.load_ammonia()[:16], model)
    loader = graph.GraphLoader(recs, 8, layout="auto", model=model)
    assert loader.layout == plan(model, recs, 8, "auto").layout == "dense"


class TutorialModel(nnx.Module):
    """What a GNN tutorial writes: raw ``positions[senders] - positions[receivers]`` (no cell
    shifts, no safe norm) and a plain ``jnp.linalg.norm``."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(10, 8, rngs=rngs)
        self.radial = nnx.Linear(1, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, batch):
        pos = batch.nodes["positions"]
        r = jnp.linalg.norm(pos[batch.senders] - pos[batch.receivers], axis=-1, keepdims=True)
        w = jnp.tanh(self.radial(jnp.exp(-r)))
        msg = self.embed(batch.nodes["species"])[batch.senders] * w
        msg = jnp.where(batch.edges["mask"][:, None], msg, 0.0)
        h = jax.ops.segment_sum(msg, batch.receivers, batch.nodes["species"].shape[0])
        e = jnp.where(batch.nodes["mask"], self.out(h)[:, 0], 0.0)
        return {"energy": graph.graph_sum(e, batch)}


def test_padding_cannot_make_a_tutorial_model_nan():
    recs = graph.records(data.load_ammonia()[:24], 5.0)
    b = graph.batch(recs[:3], graph.estimate_budget(recs, 8))
    pad = ~b.edges["mask"]
    vec = b.nodes["positions"][b.senders] - b.nodes["positions"][b.receivers]
    assert pad.any() and np.linalg.norm(vec[pad], axis=1).min() >= graph.PAD_DISTANCE
    model = potential.potential(jaxmat.from_nnx(TutorialModel, graph=GraphSpec(cutoff=5.0)),
                                stress=False)
    loader = graph.GraphLoader(recs, 8, model=model)
    params = model.init(jax.random.key(0), next(iter(loader)))
    res = train.fit(model, params, loader, None, config=train.FitConfig(epochs=3, lr=1e-3))
    assert len(res.history) == 3  # a non-finite loss raises FloatingPointError
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(res.params))


def test_records_keep_the_spec_through_replace():
    rec = graph.records([molecule("H2O")], 3.0)[0]
    assert dataclasses.replace(rec, targets={}).spec == rec.spec == GraphSpec(cutoff=3.0)
