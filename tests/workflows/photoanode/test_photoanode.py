"""Photoanode tables: CSV reader and its errors, preprocessing, the simulated library
(determinism, layout, exact gradients vs finite differences, planted direction), the
array loader and the composition + Raman models."""
from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat import interpret, train
from jaxmat.data import photoanode as pa
from jaxmat.data import photoanode_sim as sim
from jaxmat.data.loader import ArrayLoader
from jaxmat.models import photoanode as models
from jaxmat.workflows import photoanode as staged_training


@pytest.fixture(scope="module")
def small():
    return sim.simulate_library(sim.LibraryConfig(n_samples=12, seed=3))


def write_rows(path, header, rows, extra_first=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if extra_first is not None:
            w.writerow(extra_first)
        w.writerow(header)
        w.writerows(rows)


def toy_rows(n=4, shifts=(740.0, 780.0, 800.0, 820.0, 860.0)):
    rng = np.random.default_rng(0)
    header = ["Sample", *pa.ELEMENTS, *[f"{s:.3f}" for s in shifts], "P"]
    rows = []
    for k in range(n):
        x = rng.dirichlet(np.ones(7))
        rows.append([f"s{k}", *x, *rng.random(len(shifts)) + 0.1, rng.random()])
    return header, rows


# --------------------------------------------------------------------------- reader
def test_roundtrip_of_study_layout_with_extra_first_row(tmp_path, small):
    table, _ = small
    path = tmp_path / "lib.csv"
    pa.write_table(table, path, digits=8)
    back = pa.read_photoanode_csv(path)
    assert back.spectrum.shape == (12, pa.N_RAMAN)
    assert back.raman_shift[0] == pytest.approx(78.025)
    assert np.allclose(back.composition, table.composition, atol=1e-7)
    assert np.allclose(back.spectrum, table.spectrum, rtol=1e-6, atol=1e-7)
    assert np.allclose(back.target, table.target, atol=1e-7)
    assert list(back.sample) == list(table.sample)
    # the original file has one extra line above the header
    lines = path.read_text().splitlines()
    path2 = tmp_path / "lib_extra.csv"
    path2.write_text("\n".join(["exported from the JCAP database,,,", *lines]) + "\n")
    back2 = pa.read_photoanode_csv(path2)
    assert np.array_equal(back2.spectrum, back.spectrum)
    with pytest.raises(FileExistsError):
        pa.write_table(table, path)


def test_generic_table_with_declared_columns(tmp_path):
    path = tmp_path / "t.csv"
    write_rows(path, ["id", "A", "B", "r1", "r2", "r3", "y"],
               [["a", 0.3, 0.7, 1, 2, 3, 5.0], ["b", 0.5, 0.5, 2, 2, 1, 6.0]])
    t = pa.read_table(path, ["A", "B"], "y", spectrum=["r1", "r2", "r3"], sample="id",
                      raman_shift=[100.0, 200.0, 300.0])
    assert t.composition.shape == (2, 2) and t.spectrum.shape == (2, 3)
    assert list(t.raman_shift) == [100.0, 200.0, 300.0] and list(t.sample) == ["a", "b"]
    assert list(t.target) == [5.0, 6.0] and t.target_name == "y"
    with pytest.raises(ValueError, match="not a Raman shift"):
        pa.read_table(path, ["A", "B"], "y", sample="id", spectrum=["r1", "r2"])
    with pytest.raises(ValueError, match="not strictly increasing"):
        pa.read_table(path, ["A", "B"], "y", ["r1", "r2"], "id", raman_shift=[5.0, 5.0])
    with pytest.raises(ValueError, match="missing column"):
        pa.read_table(path, ["A", "C"], "y", ["r1"], "id", raman_shift=[1.0])


@pytest.mark.parametrize("problem,match", [
    ("missing", r"missing column\(s\) \['Mo'\]"),
    ("nan", "NaN/missing value in column 'V'"),
    ("text", "non-numeric value 'abc'"),
    ("axis", "not strictly increasing"),
    ("sum", "must sum to 1"),
    ("negative", "negative composition"),
    ("short", "fields"),
    ("empty", "no data rows"),
])
def test_reader_errors(tmp_path, problem, match):
    header, rows = toy_rows()
    if problem == "missing":
        k = header.index("Mo")
        header = header[:k] + header[k + 1:]
        rows = [r[:k] + r[k + 1:] for r in rows]
    elif problem == "nan":
        rows[2][header.index("V")] = ""
    elif problem == "text":
        rows[1][header.index("P")] = "abc"
    elif problem == "axis":
        a, b = header.index("780.000"), header.index("800.000")
        header[a], header[b] = header[b], header[a]
    elif problem == "sum":
        rows[3][header.index("Bi")] += 0.2
    elif problem == "negative":
        rows[0][header.index("W")] = -0.1
    elif problem == "short":
        rows[1] = rows[1][:-1]
    elif problem == "empty":
        rows = []
    path = tmp_path / "bad.csv"
    write_rows(path, header, rows)
    with pytest.raises(ValueError, match=match):
        pa.read_photoanode_csv(path)


def test_reader_tolerance_and_missing_file(tmp_path):
    header, rows = toy_rows()
    rows[0][header.index("Bi")] += 0.005
    path = tmp_path / "ok.csv"
    write_rows(path, header, rows)
    assert len(pa.read_photoanode_csv(path)) == 4  # within the 1e-2 default
    with pytest.raises(ValueError, match="sum to 1"):
        pa.read_photoanode_csv(path, sum_tol=1e-3)
    with pytest.raises(FileNotFoundError):
        pa.read_photoanode_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- preprocessing
def test_normalisation_and_standardizer():
    nu = np.linspace(700, 900, 201)
    spec = np.stack([np.exp(-((nu - 826) / 10) ** 2) * 5 + 20 * (nu > 880),
                     np.exp(-((nu - 800) / 10) ** 2) * 2 + 0.1])
    out = pa.normalize_spectra(spec, nu)
    win = (nu >= 750) & (nu <= 850)
    assert np.allclose(out[:, win].max(1), 1.0)
    assert np.allclose(out[0], spec[0] / 5.0, atol=1e-6)  # the 880+ step does not count
    with pytest.raises(ValueError, match="normalisation window"):
        pa.normalize_spectra(spec, nu + 1000)
    with pytest.raises(ValueError, match="non-positive"):
        pa.normalize_spectra(-spec, nu)
    y = np.array([1.0, 2.0, 4.0, 7.0])
    s = pa.Standardizer.fit(y)
    z = s.transform(y)
    assert np.isclose(z.mean(), 0) and np.isclose(z.std(), 1)
    assert np.allclose(s.inverse(z), y)


# --------------------------------------------------------------------------- simulator
def test_simulator_is_deterministic_and_in_layout(small):
    table, truth = small
    again, truth2 = sim.simulate_library(sim.LibraryConfig(n_samples=12, seed=3))
    other, _ = sim.simulate_library(sim.LibraryConfig(n_samples=12, seed=4))
    assert np.array_equal(table.spectrum, again.spectrum)
    assert np.array_equal(table.target, again.target)
    assert np.array_equal(truth["grad"], truth2["grad"])
    assert not np.allclose(table.composition, other.composition)
    assert table.composition.shape == (12, 7) and table.spectrum.shape == (12, 1015)
    assert table.elements == pa.ELEMENTS
    assert np.allclose(table.composition.sum(1), 1.0, atol=1e-6)
    assert (table.composition >= 0).all()
    assert table.raman_shift[0] == pytest.approx(78.025)
    assert np.all(np.diff(table.raman_shift) > 0)
    # the strongest band sits near 826 cm⁻¹ (minus the W/Mo softening)
    n = pa.normalize_spectra(table.spectrum, table.raman_shift)
    peak = table.raman_shift[np.argmax(np.where(table.raman_shift > 600, n, 0), axis=1)]
    assert np.all((peak > 800) & (peak < 835))


def test_generator_gradient_matches_finite_differences(small):
    table, truth = small
    with jax.enable_x64(True):
        x = jnp.asarray(table.composition, jnp.float64)
        s = jnp.asarray(truth["feature"], jnp.float64)
        g = np.asarray(jax.vmap(jax.grad(lambda xi, si: sim.power(xi[None], si[None])[0]))(x, s))
        h = 1e-6
        for k in range(7):
            e = np.zeros(7)
            e[k] = h
            fd = (np.asarray(sim.power(x + e, s)) - np.asarray(sim.power(x - e, s))) / (2 * h)
            assert np.allclose(fd, g[:, k], rtol=1e-6, atol=1e-6)
    assert np.allclose(truth["grad"], g, rtol=1e-3, atol=1e-3)  # the shipped float32 truth


def test_planted_direction_is_the_generators_best():
    spec, s = sim.spectra_at(sim.REFERENCE_COMPOSITION)
    assert spec.shape == (1, 1015)
    b = {"composition": sim.REFERENCE_COMPOSITION[None].astype(np.float32), "feature": s}
    ranked = interpret.suggest_directions(sim.generator_model(), {}, b, pa.ELEMENTS,
                                          within_hull=False)
    assert (ranked[0]["add"], ranked[0]["remove"]) == sim.PLANTED_DIRECTION
    assert ranked[0]["slope"] > 1.3 * ranked[1]["slope"]  # a clear winner


def test_simulated_gd_relationship_is_missed_by_correlation():
    """Gd's gradient is large and changes sign with Mo; its marginal correlation is weak."""
    table, truth = sim.simulate_library(sim.LibraryConfig(n_samples=400, seed=1))
    gd, mo = pa.ELEMENTS.index("Gd"), pa.ELEMENTS.index("Mo")
    r = np.corrcoef(table.composition[:, gd], table.target)[0, 1]
    dgd = truth["grad"][:, gd] - truth["grad"].mean(1)
    r_grad = np.corrcoef(dgd, table.composition[:, mo])[0, 1]
    assert abs(r) < 0.15 and r_grad > 0.5


# --------------------------------------------------------------------------- loader
def test_array_loader_pads_masks_and_covers():
    arrays = {"a": np.arange(10, dtype=np.float32), "b": np.ones((10, 3))}
    ld = ArrayLoader(arrays, 4, seed=1)
    batches = list(ld.epoch(0))
    assert len(ld) == 3 and len(batches) == 3
    assert all(b["a"].shape == (4,) and b["b"].shape == (4, 3) for b in batches)
    seen = np.concatenate([b["a"][b["mask"]] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert batches[-1]["mask"].sum() == 2
    assert not np.array_equal(np.concatenate([b["a"] for b in ld.epoch(1)]),
                              np.concatenate([b["a"] for b in batches]))
    assert np.array_equal(next(iter(ld.epoch(0)))["a"], batches[0]["a"])
    with pytest.raises(ValueError, match="first dimension"):
        ArrayLoader({"a": np.ones(3), "b": np.ones(4)}, 2)


# --------------------------------------------------------------------------- models
def test_layers_equal_reference_conv_and_flatten_dense():
    from flax import nnx

    conv = models.Conv1DValid(1, 2, 7, nnx.Rngs(0))
    x = np.random.default_rng(0).random((3, 30, 1)).astype(np.float32)
    w = np.asarray(conv.kernel[...])
    ref = np.stack([[np.correlate(x[b, :, 0], w[:, 0, f], "valid") for f in range(2)]
                    for b in range(3)]).transpose(0, 2, 1)
    assert np.allclose(conv(x), ref + np.asarray(conv.bias[...]), atol=1e-5)
    fd = models.FlatDense(24, 2, 5, nnx.Rngs(1))
    h = np.random.default_rng(1).random((3, 24, 2)).astype(np.float32)
    k = np.asarray(fd.kernel[...])  # (F, n, out)
    ref = h.transpose(0, 2, 1).reshape(3, -1) @ k.reshape(-1, 5)
    assert np.allclose(fd(h), ref, atol=1e-5)


def tiny_batch(n=16, points=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(7), n).astype(np.float32)
    spec = rng.random((n, points)).astype(np.float32)
    y = (x @ np.arange(7) + spec[:, 10]).astype(np.float32)
    return {"composition": x, "spectrum": spec, "P": y, "mask": np.ones(n, bool)}


def test_published_net_shapes_dropout_and_staged_training():
    cfg = models.PhotoanodeConfig(n_points=60, spectrum_hidden=(8, 8), composition_hidden=(8, 8),
                                  head_hidden=(8,))
    net = models.photoanode_net(cfg)
    p = net.init(jax.random.key(0), None)
    assert set(p) == {"spectrum", "composition", "head"}
    b = tiny_batch()
    out = net.apply(p, b)
    assert out["P"].shape == (16,) and out["P_spectrum"].shape == (16,)
    # dropout: eval is deterministic, training mode differs between keys
    t1 = net.train_apply(p, b, jax.random.key(1))["P_spectrum"]
    t2 = net.train_apply(p, b, jax.random.key(2))["P_spectrum"]
    assert not np.allclose(t1, t2) and np.allclose(net.apply(p, b)["P"], out["P"])
    # restrict: only the chosen group trains, the rest is frozen
    sub = staged_training.restrict(net, p, ("composition",), "P_composition")
    assert set(sub.init(None)) == {"composition"}
    assert np.allclose(sub.apply(sub.init(None), b)["P"], out["P_composition"])
    cfgfit = train.FitConfig(epochs=2, lr=1e-3, progress=False)
    staged = staged_training.fit_staged(net, p, [b], None, None, cfgfit, finetune=False)
    for group in ("spectrum", "composition", "head"):
        changed = jax.tree_util.tree_map(lambda a, c: not np.allclose(a, c), p[group], staged[group])
        assert any(jax.tree_util.tree_leaves(changed)), group
    with pytest.raises(ValueError, match="unknown parameter groups"):
        staged_training.restrict(net, p, ("nope",))
    with pytest.raises(ValueError, match="merge"):
        models.photoanode_net(merge="sum").init(jax.random.key(0), None)


def test_composition_standardisation_inside_the_model():
    b = tiny_batch()
    base = models.PhotoanodeConfig(n_points=60, spectrum_hidden=(8, 8), composition_hidden=(8, 8),
                                   head_hidden=(8,), merge="features")
    cfg = base.with_composition_stats(b["composition"])
    net, ref = models.photoanode_net(cfg), models.photoanode_net(base)
    p = net.init(jax.random.key(0), None)
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(ref.init(jax.random.key(0)))
    mu, sd = b["composition"].mean(0), b["composition"].std(0)
    z = {**b, "composition": (b["composition"] - mu) / sd}
    assert np.allclose(net.apply(p, b)["P"], ref.apply(p, z)["P"], atol=1e-5)
    # gradients stay with respect to the raw fractions: chain rule through 1/std
    g = np.asarray(interpret.input_gradients(net, p, b))
    gz = np.asarray(interpret.input_gradients(ref, p, z))
    assert np.allclose(g, gz / sd, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="composition must be"):
        base.with_composition_stats(np.ones((4, 3)))


def test_generic_cnn1d_with_side_input():
    net = models.cnn1d(n_points=60, channels=(4, 4), pool=2, hidden=(8,), side=("composition",),
                       n_side=7)
    p = net.init(jax.random.key(0), None)
    b = tiny_batch()
    assert net.apply(p, b)["P"].shape == (16,)
    g = interpret.input_gradients(net, p, b, "composition")
    assert g.shape == (16, 7) and np.abs(np.asarray(g)).sum() > 0
    with pytest.raises(ValueError, match="pooling"):
        models.cnn1d(n_points=8, channels=(2, 2, 2), pool=4).init(jax.random.key(0), None)
