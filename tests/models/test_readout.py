"""graph_target: mean-pooled atomic terms of any energy model as a graph target."""
from __future__ import annotations

import jax
import numpy as np
from ase.build import bulk

from jaxmat import graph, train
from jaxmat.models import SchNetConfig, graph_target, schnet


def test_graph_target_is_energy_per_atom_and_trains():
    recs = [graph.atoms_to_record(bulk("Si", "diamond", 5.43), 3.0),
            graph.atoms_to_record(bulk("Cu", "fcc", 3.6, cubic=True), 3.0)]
    recs[0].targets["gap"] = np.array(1.1)
    recs[1].targets["gap"] = np.array(0.0)
    b = graph.to_device(graph.batch(recs, graph.Budget(8, 128, 3)))
    base = schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8, cutoff=3.0, shift=0.5))
    model = graph_target(base, key="gap")
    params = model.init(jax.random.key(0), b)
    out = jax.jit(model.apply)(params, b)
    np.testing.assert_allclose(out["gap"][:2], out["energy"][:2] / np.array([2, 4]), rtol=1e-6)
    assert out["gap"][2] == 0.0  # padding graph
    opt = train.make_optimizer(3e-2, 40)
    step = jax.jit(train.make_step(model, train.target_loss("gap"), opt))
    st = opt.init(params)
    for k in range(40):
        params, st, value, _ = step(params, st, b, jax.random.key(k))
    out = model.apply(params, b)
    np.testing.assert_allclose(out["gap"][:2], [1.1, 0.0], atol=0.05)
