"""jaxmat.xanes.spectrum: one computation per molecule for all absorbers, cached; bad input
gives one-line errors naming the molecule and the element (no quantum chemistry run here)."""
import numpy as np
import pytest

pytest.importorskip("rdkit")

from jaxmat.workflows.xanes import api, generate  # noqa: E402


def _fake_result(smiles, settings, sites=None, geometry=None):
    """A raw generator result for OCC#N-like molecules (one O, one N site) without pyscf."""
    _, numbers, positions, _ = generate.embed(smiles, settings.seed)
    site_atoms = np.flatnonzero(np.isin(numbers, (7, 8))).astype(np.int32)
    e = np.concatenate([[530.0 + k, 536.0 + k] for k in range(len(site_atoms))]) - 10.0
    return {"smiles": np.array(smiles), "numbers": numbers, "positions": positions,
            "classes": np.arange(len(numbers), dtype=np.int32), "site_atoms": site_atoms,
            "site_edge": np.full(len(site_atoms), 530.0),
            "stick_energy": e.astype(np.float32),
            "stick_strength": np.full(len(e), 0.01, np.float32),
            "stick_offsets": np.arange(0, len(e) + 1, 2, dtype=np.int64),
            "time_total": np.array(1.0)}


@pytest.fixture
def fake(monkeypatch):
    calls = []

    def compute(smiles, settings=generate.Settings(), sites=None, geometry=None):
        calls.append(smiles)
        return _fake_result(smiles, settings)

    monkeypatch.setattr(generate, "compute_molecule", compute)
    monkeypatch.setattr(api, "_MEMORY", {})
    return calls


def test_one_computation_for_all_absorbers_and_cached(fake, tmp_path):
    both = api.spectrum("OCC#N", elements=("O", "N"), cache=tmp_path)
    assert set(both) == {"O", "N"} and len(fake) == 1
    assert both["O"]["smiles"] == both["N"]["smiles"] == "N#CCO"  # computed canonical
    assert both["O"]["grid"][0] == 526.0 and both["N"]["grid"][0] == 395.0
    # another spelling of the same molecule, one element: from memory, same numbers
    o = api.spectrum("N#CCO", "O", cache=tmp_path)
    assert len(fake) == 1
    np.testing.assert_array_equal(o["spectrum"], both["O"]["spectrum"])
    # a fresh process (memory cleared) reads the disk cache
    api._MEMORY.clear()
    n = api.spectrum("OCC#N", "N", cache=tmp_path)
    assert len(fake) == 1 and len(list(tmp_path.glob("*.npz"))) == 1
    np.testing.assert_array_equal(n["site_spectra"], both["N"]["site_spectra"])
    # other settings are another entry; cache=False always computes
    api.spectrum("OCC#N", "O", cache=False)
    api.spectrum("OCC#N", "O", cache=False)
    assert len(fake) == 3


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXMAT_CACHE_DIR", str(tmp_path))
    assert api.cache_dir() == str(tmp_path / "xanes")
    monkeypatch.delenv("JAXMAT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert api.cache_dir() == str(tmp_path / "x" / "jaxmat" / "xanes")


@pytest.mark.parametrize("args, match", [
    (("CCO", "C"), r"^'CCO', element C: no XANES model"),
    (("CCC", "O"), r"^'CCC', element O: the molecule has no O atom"),
    (("CCO", "N"), r"^'CCO', element N: the molecule has no N atom"),
    (("C1CC", "O"), r"^'C1CC', element O: RDKit cannot parse"),
    (("[NH4+]", "N"), r"^'\[NH4\+\]', element N: net charge \+1"),
    (("CC(=O)[O-]", "O"), r"element O: net charge -1"),
    (("C[O]", "O"), r"^'C\[O\]', element O: 1 radical electron"),
    (("ClCCO", "O"), r"^'ClCCO', element O: atomic numbers \[17\] are outside"),
])
def test_bad_input_one_line_errors(fake, args, match):
    with pytest.raises(ValueError, match=match) as info:
        api.spectrum(*args)
    assert "\n" not in str(info.value)
    assert fake == []  # rejected before any computation


def test_bad_input_several_elements_and_atoms(fake):
    from ase import Atoms

    with pytest.raises(ValueError, match=r"^'CCN', element O: the molecule has no O atom"):
        api.spectrum("CCN", elements=("N", "O"))
    with pytest.raises(ValueError, match=r"^Atoms CH3O, element O: odd number of electrons"):
        api.spectrum(Atoms("CH3O", positions=np.eye(5, 3) * 1.5), "O")
    with pytest.raises(ValueError, match=r"^Atoms H2S, element O: .*\[16\]"):
        api.spectrum(Atoms("H2S", positions=np.eye(3) * 1.5), elements=("O",))
    with pytest.raises(ValueError, match="settings compute only"):
        api.spectrum("CCN", "N", settings=generate.Settings(elements=("O",)))
    assert fake == []


def test_embedding_failure_names_the_molecule(monkeypatch, tmp_path):
    def fail(smiles, seed=0):
        raise RuntimeError(f"ETKDG embedding failed for {smiles}")

    monkeypatch.setattr(generate, "embed", fail)
    monkeypatch.setattr(api, "_MEMORY", {})
    with pytest.raises(ValueError, match=r"^'OCC#N': RDKit cannot embed this SMILES"):
        api.spectrum("OCC#N", "O", cache=tmp_path)
    with pytest.raises(ValueError, match=r"^'OCC#N': RDKit cannot embed this SMILES"):
        api.structure("OCC#N")


def test_predict_without_a_shipped_model_names_molecule_and_element(monkeypatch, tmp_path):
    import jaxmat.data

    monkeypatch.setattr(api, "_SHIPPED", {})
    monkeypatch.setattr(jaxmat.data, "data_path", lambda *p: str(tmp_path.joinpath(*p)))
    with pytest.raises(ValueError, match=r"^'CCN', element N: no shipped XANES model for N"):
        api.predict("CCN", "N")
    with pytest.raises(ValueError, match=r"^'CCO', element C: no XANES model"):
        api.predict("CCO", "C")
    with pytest.raises(ValueError, match=r"^'\[NH4\+\]', element N: net charge"):
        api.predict("[NH4+]", "N")
    with pytest.raises(ValueError, match="give the absorbing element"):
        api.predict("CCO")
