"""XANES models (MPNN, site-resolved head), spectral metrics and the FEFF database loader."""
import enum
import pickle
import sys
import types

import jax
import numpy as np
import pytest

from jaxmat import graph, spectra
from jaxmat.data.xanes import FEFF_GRIDS, feff_grid, load_feff_pickle, parse_xmu, site_records
from jaxmat.models.mpnn import MPNNConfig, mpnn
from jaxmat.models.schnet import SchNetConfig
from jaxmat.models.painn import PaiNNConfig
from jaxmat.models.spectral import painn_site_spectral, schnet_site_spectral, spectrum_loss
from jaxmat.core.protocol import Model

P = 24


def _molecule(numbers, seed):
    r = np.random.default_rng(seed)
    pos = r.normal(size=(len(numbers), 3)) * 1.2
    while np.min(np.linalg.norm(pos[:, None] - pos[None], axis=-1)
                 + 10 * np.eye(len(numbers))) < 0.9:
        pos = r.normal(size=(len(numbers), 3)) * 1.2
    return np.array(numbers), pos


def _records(perm=None, rotation=None):
    recs = []
    for k, numbers in enumerate([[8, 6, 6, 1, 1, 8], [7, 6, 8, 1], [8, 1, 1]]):
        z, pos = _molecule(numbers, k)
        if rotation is not None:  # rotate and translate the molecule
            pos = pos @ rotation.T + np.array([1.0, -2.0, 0.5])
        sites = [a for a in range(len(z)) if z[a] == 8]
        spec = np.random.default_rng([7, k]).random((len(sites), P))  # same on every call
        if perm is not None and k == 0:
            inv = np.argsort(perm)
            z, pos = z[perm], pos[perm]
            sites = [int(inv[a]) for a in sites]
        recs.append(site_records(z, pos, sites, spec, cutoff=4.0, name=f"m{k}"))
    return recs


def _models() -> list[Model]:
    return [mpnn(MPNNConfig(n_out=P, n_features=8, n_steps=2, n_set2set=2, n_rbf=8,
                            edge_hidden=16, readout_hidden=16, cutoff=4.0)),
            schnet_site_spectral(SchNetConfig(n_features=16, n_interactions=2, n_rbf=8,
                                              cutoff=4.0, max_z=10), z=8, n_out=P, hidden=16),
            painn_site_spectral(PaiNNConfig(n_features=16, n_interactions=2, n_rbf=8, cutoff=4.0,
                                            max_z=10), z=8, n_out=P, hidden=16)]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_permutation_invariance(k):
    model = _models()[k]
    base = graph.batch(_records())
    perm = np.array([3, 5, 0, 2, 1, 4])
    params = model.init(jax.random.key(1), base)
    apply = jax.jit(model.apply)
    a = apply(params, base)
    b = apply(params, graph.batch(_records(perm), graph.Budget(*[int(x) for x in
                                                                 (base.n_node.sum(),
                                                                  base.n_edge.sum(),
                                                                  len(base.n_node))])))
    np.testing.assert_allclose(a["xanes"][:3], b["xanes"][:3], rtol=2e-5, atol=1e-6)
    assert np.all(np.asarray(a["xanes"]) >= 0)
    if "xanes_site" in a:  # site outputs follow their atoms
        np.testing.assert_allclose(np.asarray(a["xanes_site"])[perm],
                                   np.asarray(b["xanes_site"])[:6], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2])
def test_site_spectra_invariant_under_rotation_and_translation(k):
    model = _models()[k]
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))
    a, b = graph.batch(_records()), graph.batch(_records(rotation=q))
    assert a.n_edge.sum() == b.n_edge.sum()
    params = model.init(jax.random.key(5), a)
    np.testing.assert_allclose(model.apply(params, b)["xanes_site"][:10],
                               model.apply(params, a)["xanes_site"][:10], rtol=1e-4, atol=1e-6)
    assert float(np.abs(np.asarray(model.apply(params, a)["xanes"])).max()) > 0


def test_site_head_mean_equals_molecule_output():
    model = _models()[1]
    b = graph.batch(_records())
    out = model.apply(model.init(jax.random.key(2), b), b)
    site = np.asarray(out["xanes_site"])
    z = np.asarray(b.nodes["species"])
    g = np.asarray(b.nodes["graph"])
    for m in range(3):
        absorbers = (g == m) & (z == 8)
        np.testing.assert_allclose(site[absorbers].mean(0), np.asarray(out["xanes"][m]),
                                   rtol=1e-5, atol=1e-7)
    assert np.all(site[z != 8] == 0) and np.all(site >= 0)


def test_site_head_on_any_backbone():
    from flax import nnx

    from jaxmat.models.spectral import SiteHeadConfig, site_spectral

    class Lookup(nnx.Module):  # a backbone without message passing: embedding per element
        def __init__(self, rngs):
            self.embed = nnx.Embed(11, 6, rngs=rngs)

        def __call__(self, batch):
            return {"h": self.embed(batch.nodes["species"])}

    model = site_spectral(Lookup, 6, SiteHeadConfig(z=8, n_out=P, hidden=8, feature_key="h",
                                                    smooth=0.0))
    b = graph.batch(_records())
    out = model.apply(model.init(jax.random.key(3), b), b)
    site = np.asarray(out["xanes_site"])
    # without messages every O atom gets the same spectrum, and so does every molecule
    o = np.asarray(b.nodes["species"]) == 8
    np.testing.assert_allclose(site[o], np.broadcast_to(site[o][0], site[o].shape), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["xanes"][:3]),
                               np.broadcast_to(site[o][0], (3, P)), rtol=1e-6)


def test_spectrum_loss_zero_at_targets_and_training_reduces_it():
    b = graph.batch(_records())
    loss = spectrum_loss()
    perfect = {"xanes": b.globals["xanes"], "xanes_site": b.nodes["xanes_site"]}
    value, stats = loss(perfect, b)
    assert float(value) == 0.0 and float(stats["xanes_site_mae"][0]) == 0.0
    assert float(stats["xanes_mae"][1]) == 3 * P
    from jaxmat.core.train import FitConfig, fit

    model = _models()[1]
    params = model.init(jax.random.key(0), b)
    res = fit(model, params, [b], loss=loss,
              config=FitConfig(epochs=40, lr=5e-3, progress=False))
    # the loss plateaus near 0.53x of its start on this three-molecule batch
    assert res.history[-1]["train_loss"] < 0.65 * res.history[0]["train_loss"]


def test_slope_term_of_spectrum_loss_matches_hand_computation():
    """A prediction off by a ramp c*k (k = grid index) costs c^2 (sum k^2 + w P) per row
    and grid point: the squared slope error is c^2 at each of the P-1 steps, scaled to P."""
    b = graph.batch(_records())
    c, w = 0.01, 7.0
    k = np.arange(P, dtype=np.float32)
    out = {"xanes": b.globals["xanes"] + c * k}
    plain, _ = spectrum_loss(site_weight=0.0)(out, b)
    sloped, _ = spectrum_loss(site_weight=0.0, slope_weight=w)(out, b)
    np.testing.assert_allclose(float(plain), c**2 * np.sum(k**2) / P, rtol=1e-5)
    np.testing.assert_allclose(float(sloped), c**2 * (np.sum(k**2) + w * P) / P, rtol=1e-5)


def test_committee_prediction_is_the_member_mean():
    from jaxmat import ensemble
    from jaxmat.workflows.xanes.learn import predict_spectra, train_spectra

    model = _models()[1]
    recs = _records()
    params, res = train_spectra(model, recs, recs[:1], epochs=2, batch_size=2, n_members=2)
    assert ensemble.size(params) == 2 and len(res.history) == 2
    mean = predict_spectra(model, params, recs)
    members = [predict_spectra(model, ensemble.member(params, m), recs) for m in range(2)]
    assert mean.shape == (3, P) and not np.allclose(members[0], members[1])
    np.testing.assert_allclose(mean, 0.5 * (members[0] + members[1]), rtol=1e-5, atol=1e-7)


def test_predict_spectra_and_throughput_use_predict():
    from jaxmat.workflows.xanes.learn import predict_spectra, throughput

    recs = _records()
    for model in _models():
        params = model.init(jax.random.key(0), graph.batch(recs[:1]))
        direct = np.asarray(jax.jit(model.apply)(params, graph.batch(recs))["xanes"])[:3]
        np.testing.assert_allclose(predict_spectra(model, params, recs, batch_size=2), direct,
                                   rtol=1e-5, atol=1e-6)
    speed = throughput(model, params, recs, batch_size=2, repeats=2)
    assert speed["n_spectra"] == 3 and speed["spectra_per_s"] > 0


# --------------------------------------------------------------------------- metrics
def _gauss(grid, centers, heights, width=0.5):
    return sum(h * np.exp(-0.5 * ((grid - c) / width) ** 2) for c, h in zip(centers, heights))


def test_peak_metrics_on_hand_made_spectra():
    g = np.linspace(525, 555, 301)
    true = _gauss(g, [531.0, 535.0, 541.0, 548.0], [1.0, 0.5, 0.3, 0.04])
    e, h, prom = spectra.find_peaks(g, true, prominence=0.1)
    np.testing.assert_allclose(e, [531.0, 535.0, 541.0], atol=0.05)  # 0.04 bump not prominent
    np.testing.assert_allclose(h, [1.0, 0.5, 0.3], atol=1e-3)
    close = _gauss(g, [531.5, 534.4, 542.5], [0.9, 0.5, 0.3])  # shifts +0.5, -0.6, +1.5 eV
    s = spectra.peak_scores(g, true, close, tol=1.0)
    assert s["n_ref"] == 3 and s["n_pred"] == 3 and s["n_within"] == 2
    np.testing.assert_allclose(sorted(s["shifts"]), [-0.6, 0.5], atol=0.05)
    assert s["first_within"] is True  # 531.0 -> 531.5
    late = _gauss(g, [532.2, 535.0, 541.0], [1.0, 0.5, 0.3])  # first peak 1.2 eV off
    assert spectra.peak_scores(g, true, late, tol=1.0)["first_within"] is False
    ev = spectra.evaluate_spectra(g, np.stack([true, true]), np.stack([close, late]))
    assert ev["first_peak_within_tol"] == 0.5 and ev["n_peaks"] == 6
    np.testing.assert_allclose(sorted(s["height_errors"]), [0.0, 0.1], atol=2e-3)
    ev = spectra.evaluate_spectra(g, np.stack([true, true]), np.stack([true, close]))
    assert ev["n_peaks"] == 6 and ev["peaks_within_tol"] == pytest.approx(5 / 6)
    # a wiggly prediction finds every reference peak but most of its peaks are spurious
    wiggly = true + 0.3 * (1 + np.sin(2 * np.pi * g / 0.8))
    w = spectra.peak_scores(g, true, wiggly)
    assert w["n_within"] == 3 and w["n_pred"] > 20
    ev_w = spectra.evaluate_spectra(g, true[None], wiggly[None])
    assert ev_w["peaks_within_tol"] == 1.0 and ev_w["pred_peaks_within_tol"] < 0.15
    assert ev["per_spectrum_cosine"][0] == pytest.approx(1.0)
    assert ev["per_spectrum_mae"][0] == 0.0
    assert spectra.cosine_similarity(true, 3 * true) == pytest.approx(1.0)
    assert spectra.spectral_mae(true, true + 0.25) == pytest.approx(0.25)
    assert spectra.rank_examples(np.array([0.2, 0.9, 0.5])) == {"best": 1, "median": 2,
                                                                "worst": 0}
    # one-to-one matching: two reference peaks cannot share one predicted peak
    assert spectra.match_peaks(np.array([1.0, 1.4]), np.array([1.2])) == [(0, 0, pytest.approx(0.2))]
    with pytest.raises(ValueError):
        spectra.cosine_similarity(true, true[:-1])


def test_plot_examples_runs():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    g = np.linspace(0, 10, 50)
    y = np.stack([_gauss(g, [c], [1.0]) for c in (3, 5, 7)])
    fig = spectra.plot_examples(g, y, y[::-1], labels=["a", "b", "c"])
    assert len(fig.axes) == 3 and fig.axes[0].get_title().startswith("best: b")


# --------------------------------------------------------------------------- FEFF loader
def _xmu_text(e0, n=120):
    e = np.linspace(e0 - 10, e0 + 70, n)
    mu = 1.0 / (1.0 + np.exp(-(e - e0))) + 0.5 * np.exp(-0.5 * ((e - e0 - 5) / 2) ** 2)
    rows = "\n".join(f"{a:.4f} {a - e0:.4f} 0.0 {m:.6f} {m:.6f} 0.0" for a, m in zip(e, mu))
    arr = np.loadtxt(rows.splitlines())
    return "# FEFF xmu.dat\n#  omega e k mu mu0 chi\n" + rows + "\n", arr[:, 0], arr[:, 3]


def _fake_pymatgen():
    """Minimal stand-ins with pymatgen's module paths and pickled state layout."""
    names = ["pymatgen", "pymatgen.core", "pymatgen.core.periodic_table",
             "pymatgen.core.composition", "pymatgen.core.sites", "pymatgen.core.structure"]
    mods = {n: types.ModuleType(n) for n in names}

    class Element(enum.Enum):
        H = "H"
        C = "C"
        N = "N"
        O = "O"  # noqa: E741

    class Composition:
        def __init__(self, el):
            self._data = {el: 1.0}
            self._n_atoms = 1.0

    class Site:
        def __init__(self, el, xyz):
            self._species = Composition(el)
            self.coords = np.asarray(xyz, dtype=float)
            self.properties = {}

    class Molecule:
        def __init__(self, symbols, coords):
            self._sites = [Site(Element(s), c) for s, c in zip(symbols, coords)]
            self._charge = 0

    for cls, mod in ((Element, "pymatgen.core.periodic_table"),
                     (Composition, "pymatgen.core.composition"),
                     (Site, "pymatgen.core.sites"), (Molecule, "pymatgen.core.structure")):
        cls.__module__ = mod
        cls.__qualname__ = cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    return mods, Molecule


def _write_feff(path, entries_fn):
    mods, Molecule = _fake_pymatgen()
    saved = {n: sys.modules.get(n) for n in mods}
    sys.modules.update(mods)
    try:
        data = entries_fn(Molecule)
        with open(path, "wb") as fh:
            pickle.dump(data, fh)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return data


def test_feff_loader_reads_pymatgen_pickle_without_pymatgen(tmp_path, monkeypatch):
    text_o, e_o, mu_o = _xmu_text(535.0)
    path = tmp_path / "feff.pkl"

    def entries(Molecule):
        water = Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        form = Molecule(["C", "O", "N", "H"], [[0, 0, 0], [1.2, 0, 0], [-0.7, 1.2, 0],
                                               [-0.6, -0.9, 0]])
        arr = np.loadtxt(text_o.splitlines()[2:])
        return {"000001": {"molecule": water, "spectra": {0: text_o}},
                "000002": (form, {1: arr, 2: _xmu_text(402.0)[0]})}

    _write_feff(path, entries)
    for name in ("pymatgen", "pymatgen.core", "monty"):  # as if pymatgen were not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        import pymatgen.core  # noqa: F401  (the loader works without it)
    data = load_feff_pickle(path, "O", cutoff=4.0)
    assert data.mol_id == ["000001", "000002"] and data.grid.shape == (200,)
    np.testing.assert_allclose(data.grid[[0, -1]], FEFF_GRIDS["O"][:2])
    expect = np.interp(feff_grid("O"), e_o, mu_o)
    np.testing.assert_allclose(data.records[0].targets["xanes"], expect, rtol=1e-5)
    np.testing.assert_allclose(data.records[1].node_targets["xanes_site"][1], expect, rtol=1e-5)
    assert data.records[1].numbers.tolist() == [6, 8, 7, 1]
    assert data.records[1].node_targets["xanes_absorber"].tolist() == [0, 1, 0, 0]
    n_data = load_feff_pickle(path, "N")
    assert n_data.mol_id == ["000002"]
    with pytest.raises(ValueError, match="no C K-edge"):
        load_feff_pickle(path, "C")


def test_feff_loader_accepts_dict_molecules(tmp_path):
    text, e, mu = _xmu_text(400.0)
    mol = {"species": ["N", "H", "H", "H"],
           "coords": [[0, 0, 0], [1.0, 0, 0], [-0.3, 0.95, 0], [-0.3, -0.3, 0.9]]}
    path = tmp_path / "nh3.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"nh3": {"molecule": mol, "spectra": {"0": text}}}, fh)
    data = load_feff_pickle(path, "N")
    np.testing.assert_allclose(data.records[0].targets["xanes"],
                               np.interp(feff_grid("N"), e, mu), rtol=1e-5)


def _bad(tmp_path, obj, name="bad.pkl"):
    path = tmp_path / name
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path


def test_feff_loader_errors(tmp_path):
    text, _, _ = _xmu_text(535.0)
    water = {"species": ["O", "H", "H"], "coords": [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]}
    with pytest.raises(FileNotFoundError):
        load_feff_pickle(tmp_path / "missing.pkl")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_feff_pickle(garbage)
    with pytest.raises(ValueError, match="dict keyed by molecule id"):
        load_feff_pickle(_bad(tmp_path, [1, 2]))
    with pytest.raises(ValueError, match="empty"):
        load_feff_pickle(_bad(tmp_path, {}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": water, "spectra": {0: text},
                                               "x": types.SimpleNamespace(a=1)}}))
    with pytest.raises(ValueError, match="'molecule' and per-site 'spectra'"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": water}}))
    with pytest.raises(ValueError, match="out of range"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": water, "spectra": {7: text}}}))
    with pytest.raises(ValueError, match="unknown element"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": {**water, "species": ["O", "Xx", "H"]},
                                               "spectra": {0: text}}}))
    rows = np.loadtxt(text.splitlines()[2:])
    with pytest.raises(ValueError, match="strictly increasing"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": water, "spectra": {0: rows[::-1]}}}))
    with pytest.raises(ValueError, match="6 columns"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": water, "spectra": {0: rows[:, :3]}}}))
    bad_rows = rows.copy()
    bad_rows[5, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": water, "spectra": {0: bad_rows}}}))
    with pytest.raises(ValueError, match="unreadable"):
        parse_xmu("# header\n1.0 2.0 abc\n")
    with pytest.raises(ValueError, match="unknown absorbing element"):
        load_feff_pickle(_bad(tmp_path, {"m": {"molecule": water, "spectra": {0: text}}}), "S")
