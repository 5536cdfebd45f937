"""Import of MACE models from mace-torch and mlip. The fixtures were made once in the
optional peer environments (``benchmarks/peers/mace_torch_fixture.py``, mace-torch 0.3.16;
``benchmarks/peers/mace_mlip_fixture.py``, mlip 0.2.5): two models of each library, their
extracts and the library's own energies and forces (and stresses: mace-torch). The default
suite checks the conversion against them without torch or mlip; the readers
(``benchmarks/peers/mace_*_extract.py``) run where those are installed."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from ase import Atoms

pytest.importorskip("cuequivariance_jax")

from jaxmat import bundle, committee, ensemble, graph, potential  # noqa: E402
from jaxmat.models import mace_import  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PEERS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "peers")


def reader(name):
    """A reader module of benchmarks/peers (imported only where its library is installed)."""
    import importlib
    import sys
    sys.path.insert(0, os.path.abspath(PEERS))
    return importlib.import_module(name)
HERE = os.path.join(FIXTURES, "mace_torch")
NAMES = ("small", "lmax3")
CASES = [("mace_torch", "small"), ("mace_torch", "lmax3"), ("mace_mlip", "default"),
         ("mace_mlip", "residual")]


def structures(name, where=HERE):
    with open(os.path.join(where, f"{name}.json")) as f:
        ref = json.load(f)
    for s in ref["structures"]:
        yield Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"],
                    pbc=s["pbc"]), s


def predict(model, params, atoms, dtype):
    pot = potential.potential(model)
    rec = graph.atoms_to_record(atoms, model.graph.cutoff)
    b = graph.to_device(graph.batch([rec], graph.Budget(32, 1024, 2), dtype=dtype))
    out = jax.jit(pot.apply)(params, b)
    return {k: np.asarray(v) for k, v in out.items()}


def voigt_to_matrix(v):
    return np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])


@pytest.mark.parametrize("source,name", CASES)
def test_build_equals_the_source_library_in_float64(x64, source, name):
    """Energies within 2e-8 relative (float32 weights of the mlip fixtures: 1e-8 relative
    noise there), forces within 1e-6 eV/Å + 3e-7 of the largest force."""
    where = os.path.join(FIXTURES, source)
    model, params = mace_import.build(mace_import.load_extract(os.path.join(where, f"{name}.npz")))
    for atoms, ref in structures(name, where):
        out = predict(model, params, atoms, np.float64)
        n = len(atoms)
        fmax = np.abs(ref["forces"]).max()
        assert abs(out["energy"][0] - ref["energy"]) < 2e-8 * abs(ref["energy"])
        np.testing.assert_allclose(out["forces"][:n], ref["forces"], atol=1e-6 + 3e-7 * fmax)
        assert fmax > 0.3  # the comparison is not of zeros
        if "stress_voigt" in ref:
            np.testing.assert_allclose(out["stress"][0], voigt_to_matrix(ref["stress_voigt"]),
                                       atol=1e-8)


def test_converted_bundle_in_float32(tmp_path):
    """convert() from the extract writes a float32 bundle; energies agree within float32
    noise of ~ -4000 eV totals and forces within 1e-4 eV/Å."""
    path = mace_import.convert(os.path.join(HERE, "small.npz"), tmp_path / "imported")
    b = bundle.load(path)
    assert b.metadata["imported_from"] == "mace-torch 0.3.16 ScaleShiftMACE"
    assert b.model.graph.cutoff == 4.0
    for atoms, ref in structures("small"):
        rec = graph.atoms_to_record(atoms, b.model.graph.cutoff)
        batch = graph.to_device(graph.batch([rec], graph.Budget(32, 1024, 2)))
        out = {k: np.asarray(v) for k, v in jax.jit(b.model.apply)(b.params, batch).items()}
        n = len(atoms)
        assert abs(out["energy"][0] - ref["energy"]) < 2e-3
        np.testing.assert_allclose(out["forces"][:n], ref["forces"], atol=1e-4)
    # an element the source model was not made for is refused, not predicted
    from ase.build import molecule
    from jaxmat.ase import JaxmatCalculator
    nh3 = molecule("NH3")
    nh3.calc = JaxmatCalculator.from_bundle(path)
    with pytest.raises(ValueError, match="H3N has N, which .* not made for .*knows H, C, O"):
        nh3.get_potential_energy()
    # imported models of one architecture stack into a committee (σ, attacks, detector)
    other = jax.tree_util.tree_map(lambda a: a * 1.01, b.params)
    com = committee.stack([b.params, other])
    both = jax.jit(lambda p, x: ensemble.apply(b.model, p, x))(com, batch)
    np.testing.assert_allclose(both["energy"][0], out["energy"], rtol=1e-6)
    assert abs(both["energy"][1, 0] - out["energy"][0]) > 1e-4


def test_unsupported_extracts_are_refused(tmp_path):
    ex = mace_import.load_extract(os.path.join(HERE, "lmax3.npz"))
    ex["config"]["layers"][1]["correlation"] = 3
    with pytest.raises(ValueError, match="one correlation order"):
        mace_import.build(ex)
    ex = mace_import.load_extract(os.path.join(HERE, "small.npz"))
    ex["config"]["hidden_irreps"] = "8x0e+8x1e"
    with pytest.raises(ValueError, match="natural parity.*8x1e"):
        mace_import.build(ex)
    with pytest.raises(ValueError, match="max_z=5 is below.*8"):
        mace_import.build(mace_import.load_extract(os.path.join(HERE, "small.npz")), max_z=5)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a MACE extract.*__config__"):
        mace_import.load_extract(other)


def test_a_model_file_is_refused_with_the_reader_to_run(tmp_path):
    """jaxmat never imports torch or mlip: a .model or .zip names the peer script to run."""
    for name in (os.path.join(HERE, "small.model"),
                 os.path.join(FIXTURES, "mace_mlip", "default.zip")):
        with pytest.raises(ValueError, match="not a MACE extract.*mace_torch_extract.py.*"
                                             "mace_mlip_extract.py"):
            mace_import.convert(name, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no MACE extract at 'nothing.npz'"):
        mace_import.convert("nothing.npz", tmp_path / "y")
    assert not os.path.exists(tmp_path / "x")


def test_mlip_extract_of_the_zip_equals_the_fixture():
    """Where mlip is installed: extracting the saved zip again gives the committed extract."""
    pytest.importorskip("mlip")
    mace_mlip = reader("mace_mlip_extract")
    where = os.path.join(FIXTURES, "mace_mlip")
    for name in ("default", "residual"):
        new = mace_mlip.extract(os.path.join(where, f"{name}.zip"))
        old = mace_import.load_extract(os.path.join(where, f"{name}.npz"))
        assert new["config"]["layers"] == old["config"]["layers"]
        for k, v in old["arrays"].items():
            np.testing.assert_allclose(new["arrays"][k], v, atol=1e-12, err_msg=k)


def test_extract_of_the_model_file_equals_the_fixture():
    """Where torch and mace-torch are installed: extracting the saved model again gives the
    committed extract (the part of the import that needs torch)."""
    pytest.importorskip("torch")
    pytest.importorskip("mace")
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    mace_torch = reader("mace_torch_extract")
    for name in NAMES:
        new = mace_torch.extract(os.path.join(HERE, f"{name}.model"))
        old = mace_import.load_extract(os.path.join(HERE, f"{name}.npz"))
        assert new["config"]["layers"] == old["config"]["layers"]
        for k, v in old["arrays"].items():
            np.testing.assert_allclose(new["arrays"][k], v, atol=1e-12, err_msg=k)
