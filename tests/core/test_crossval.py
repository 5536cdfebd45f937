"""k-fold cross-validation: disjoint covering folds; out-of-fold predictions of a learnable
composition target reach it; standardisation returns predictions in target units."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxmat import crossval, graph
from jaxmat.core.protocol import Model


def test_kfold_partitions():
    folds = crossval.kfold(23, 5, seed=1)
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(23))
    with pytest.raises(ValueError):
        crossval.kfold(3, 5)


def mean_embedding() -> Model:
    """Target = mean over atoms of a learned per-element value (a linear composition model)."""

    def init(key, batch=None):
        return {"w": 0.01 * jax.random.normal(key, (119,))}

    def apply(params, batch):
        m = batch.nodes["mask"]
        s = graph.graph_sum(params["w"][batch.nodes["species"]] * m, batch)
        return {"y": s / jnp.maximum(batch.globals["n_atoms"], 1.0)}

    return Model(init, apply, name="mean-embedding")


def test_out_of_fold_predictions_learn_a_composition_target():
    rng = np.random.default_rng(0)
    recs = []
    for _ in range(20):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat((1, 1, 2))
        atoms.numbers[rng.random(len(atoms)) < rng.random()] = 28  # Ni
        frac_ni = np.mean(atoms.numbers == 28)
        atoms.info["target_y"] = 10.0 + 3.0 * frac_ni  # far from 0: needs the de-standardisation
        recs.append(graph.atoms_to_record(atoms, 3.0))
    y = np.array([float(r.targets["y"]) for r in recs])
    pred, fold = crossval.cross_val_predict(mean_embedding(), recs, "y", k=4, epochs=150,
                                            batch_size=5, lr=5e-2)
    assert pred.shape == (20,) and set(fold) == {0, 1, 2, 3}
    mean_baseline = np.mean([abs(y[i] - y[fold != fold[i]].mean()) for i in range(20)])
    assert np.mean(np.abs(pred - y)) < 0.1 * mean_baseline
    with pytest.raises(ValueError, match="no target"):
        crossval.cross_val_predict(mean_embedding(), recs, "missing", k=4)
