"""Make the mlip import fixtures (run once in the optional mlip peer environment).

    bash benchmarks/peers/setup_mlip.sh
    .venv-mlip/bin/python benchmarks/peers/mace_mlip_fixture.py

Builds two small mlip MACE models (mlip 0.2.5, float64 evaluation of the float32 weights
it initialises), saves each with mlip's ``save_model_to_zip`` (``NAME.zip``), its extract
(``NAME.npz``, read without mlip by :func:`jaxmat.models.mace_import.load_extract`) and
mlip's own energies and forces (its ASE calculator) on the structures of the
mace-torch fixtures (``NAME.json``) into ``tests/models/fixtures/mace_mlip/``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mace_mlip_extract as mace_mlip  # noqa: E402

OUT = os.path.join(ROOT, "tests", "models", "fixtures", "mace_mlip")
MODELS = {
    # mlip's defaults but sizes: no residual in the first layer, node features to l_max
    "default": dict(num_layers=2, num_channels=8, l_max=2, correlation=3,
                    readout_irreps=("8x0e", "0e"), num_rbf=6, radial_mlp_hidden=[16, 16],
                    cutoff=4.0, avg=5.3, mean=0.1, std=0.7),
    # residual first layer, node features to l = 1 below l_max 3, correlation 2, 3 layers
    "residual": dict(num_layers=3, num_channels=4, l_max=3, node_symmetry=1, correlation=2,
                     readout_irreps=("6x0e", "0e"), num_rbf=5, radial_mlp_hidden=[8, 8, 8],
                     residual_connection_first_layer=True, cutoff=3.5, avg=4.1, mean=-0.2,
                     std=1.3),
}


def build(spec: dict, seed: int):
    from mlip.data import DatasetInfo
    from mlip.models import ForceField, Mace
    from mlip.models.mace.config import MaceConfig
    from mlip.typing.properties import Properties

    spec = dict(spec)
    ds = DatasetInfo(atomic_energies_map={1: -13.6, 6: -1029.8, 8: -2041.9},
                     graph_cutoff_angstrom=spec.pop("cutoff"), avg_num_neighbors=spec.pop("avg"),
                     avg_r_min_angstrom=1.1, scaling_mean=spec.pop("mean"),
                     scaling_stdev=spec.pop("std"))
    ff = ForceField.from_mlip_network(Mace(config=MaceConfig(**spec), dataset_info=ds),
                                      required_properties=Properties(stress=True), seed=seed)
    # random weights of order one everywhere (the symmetric contraction starts small)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda a: jax.numpy.asarray(np.asarray(a) + 0.3 * rng.normal(size=np.shape(a)).astype(np.asarray(a).dtype)),
        ff.params)
    return dataclasses.replace(ff, params=params)


def main() -> None:
    from import_structures import write_references
    from mlip.models.model_io import save_model_to_zip
    from mlip.simulation.ase.mlip_ase_calculator import MLIPForceFieldASECalculator

    warnings.filterwarnings("ignore")
    os.makedirs(OUT, exist_ok=True)
    for k, (name, spec) in enumerate(MODELS.items()):
        ff = build(spec, seed=k)
        path = os.path.join(OUT, f"{name}.zip")
        save_model_to_zip(path, ff)
        mace_mlip.save_extract(path, os.path.join(OUT, f"{name}.npz"))
        # mlip's ASE calculator gives no stress; jaxmat's stress of imported models is
        # checked against mace-torch's
        write_references(os.path.join(OUT, f"{name}.json"),
                         lambda atoms: MLIPForceFieldASECalculator(atoms, 2.0, ff), spec,
                         stress=False)


if __name__ == "__main__":
    main()
