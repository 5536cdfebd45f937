"""One call per use: jaxmat.xanes.spectrum, predict, and XANES model bundles."""
import numpy as np
import pytest

import jaxmat
from jaxmat import ensemble
from jaxmat.core.predict import predict as core_predict
from jaxmat.data.xanes import load_xanes
from jaxmat.models.schnet import SchNetConfig
from jaxmat.models.spectral import schnet_site_spectral
from jaxmat.workflows.xanes.learn import train_spectra


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = load_xanes("O", "val", cutoff=4.0)
    model = schnet_site_spectral(SchNetConfig(n_features=16, n_interactions=1, n_rbf=8,
                                              cutoff=4.0, max_z=10),
                                 z=8, n_out=len(data.grid), hidden=16)
    params, _ = train_spectra(model, data.records[:24], data.records[:4], epochs=1,
                              n_members=3, progress=False)
    path = jaxmat.xanes.save_model(tmp_path_factory.mktemp("b") / "xanes_O", model, params, data,
                                   combiner="mean", metadata={"note": "test"})
    return data, model, params, path


def test_bundle_round_trip_and_predict(tiny):
    data, model, params, path = tiny
    b = jaxmat.xanes.load_model(path)
    assert b.n_members == 3 and b.metadata["xanes"]["element"] == "O"
    assert b.metadata["note"] == "test"
    for a, c in zip(jax_leaves(b.params), jax_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    out = jaxmat.xanes.predict(path, "CCO", "O")
    assert out["spectrum"].shape == out["sigma"].shape == (len(data.grid),)
    assert out["site_atoms"].tolist() == [2] and out["members"].shape == (3, len(data.grid))
    np.testing.assert_allclose(out["sigma"], out["members"].std(0), rtol=1e-6)
    np.testing.assert_allclose(out["spectrum"], out["members"].mean(0), rtol=1e-6)
    # one O: the molecule spectrum is the site spectrum; units 1/eV (scale multiplied back)
    np.testing.assert_allclose(out["site_spectra"][0], out["spectrum"], rtol=1e-5)
    from ase import Atoms

    ref = core_predict(model, params, [Atoms(numbers=out["numbers"], positions=out["positions"])],
                       keys=("xanes",))["xanes"][0] * data.scale
    np.testing.assert_allclose(out["spectrum"], ref, rtol=1e-5)
    many = jaxmat.xanes.predict(b, ["CCO", "OCCO"])
    assert len(many) == 2 and many[1]["site_spectra"].shape == (2, len(data.grid))
    np.testing.assert_allclose(many[1]["spectrum"], many[1]["site_spectra"].mean(0), rtol=1e-5)


def test_predict_errors(tiny):
    _, _, _, path = tiny
    with pytest.raises(ValueError, match="O K-edge, not N"):
        jaxmat.xanes.predict(path, "CCN", "N")
    with pytest.raises(ValueError, match="no O atom"):
        jaxmat.xanes.predict(path, "CCC")
    with pytest.raises(ValueError, match="SMILES string or ASE Atoms"):
        jaxmat.xanes.predict(path, 42)


def test_load_model_rejects_other_bundles(tiny, tmp_path):
    _, model, params, _ = tiny
    p = jaxmat.bundle.save(tmp_path / "plain", model, ensemble.member(params, 0))
    with pytest.raises(ValueError, match="not a XANES bundle"):
        jaxmat.xanes.load_model(p)


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


@pytest.mark.slow  # 63 s on 2 cores (tests/workflows/xanes/test_xanes_spectrum.py checks the API with a stub)
def test_spectrum_reproduces_the_shipped_methanol_spectrum():
    pytest.importorskip("pyscf")
    pytest.importorskip("rdkit")
    data = load_xanes("O", "all", normalize=False)
    k = data.smiles.index("CO")  # methanol
    want = data.records[k].targets["xanes"]
    got = jaxmat.xanes.spectrum("CO", "O")
    assert got["settings"]["mode"] == "tp" and got["calibration"]["reference"].startswith("acetone")
    np.testing.assert_allclose(got["grid"], data.grid)
    np.testing.assert_allclose(got["spectrum"], want, atol=1e-3 * want.max())
    # the same geometry given as Atoms gives the same spectrum
    from ase import Atoms

    again = jaxmat.xanes.spectrum(Atoms(numbers=got["numbers"], positions=got["positions"]), "O")
    np.testing.assert_allclose(again["spectrum"], got["spectrum"], atol=1e-4 * want.max())
    with pytest.raises(ValueError, match="no N atom"):
        jaxmat.xanes.spectrum("CO", "N")


def test_committee_training_shows_progress(tiny, capfd):
    data, model, _, _ = tiny
    train_spectra(model, data.records[:8], data.records[:4], epochs=1, n_members=2)
    err = capfd.readouterr().err
    assert "fit x2" in err and "epoch 1/1" in err
