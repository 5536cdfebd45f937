"""Photoanode workflow: reader import paths, disjoint train/validation/test splits on the
objects the code produces, the total derivative through chained models against finite
differences, the confounding flag on an analytic case, per-band attribution, the planted
confounder of the simulated library, suggestions split by the training hull."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat import interpret
from jaxmat.core.protocol import Model
from jaxmat.models import photoanode as models
from jaxmat.workflows import photoanode as pw


# --------------------------------------------------------------------------- import paths
def test_reader_import_paths():
    import jaxmat.data as data
    from jaxmat.data import photoanode, read_photoanode_csv, read_table  # noqa: F401

    assert data.photoanode is photoanode
    assert data.read_photoanode_csv is photoanode.read_photoanode_csv
    assert data.photoanode_sim.CONFOUNDER == "Dy"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        data.nope  # noqa: B018


def test_shipped_csv_reads_and_regenerates(tmp_path):
    from jaxmat.data import data_path, read_photoanode_csv

    t = read_photoanode_csv(data_path("photoanode", "simulated_library.csv.gz"))
    assert len(t) == 360 and t.composition.shape == (360, 7)
    assert t.raman_shift[0] == pytest.approx(78.025) and t.spectrum.shape[1] == 203
    assert np.allclose(t.composition.sum(1), 1.0, atol=1e-3)


# --------------------------------------------------------------------------- splits
def test_split_objects_keep_test_rows_out_of_validation(monkeypatch):
    split = pw.split_library(1379, (0.7, 0.1, 0.2), seed=0)
    assert not set(split.test.tolist()) & set(split.val.tolist())
    assert not set(split.test.tolist()) & set(split.train.tolist())
    assert not set(split.val.tolist()) & set(split.train.tolist())
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(1379))
    assert (len(split.train), len(split.val), len(split.test)) == (965, 138, 276)
    with pytest.raises(ValueError, match="'val' and 'test' share 1 row"):
        pw.Split(np.arange(5), np.array([5, 6]), np.array([6, 7]))
    with pytest.raises(ValueError, match="three fractions"):
        pw.split_library(10, (0.8, 0.2))


def test_fit_committee_validates_on_val_rows_only(monkeypatch):
    """The rows handed to training as validation are exactly split.val (never a test row)."""
    from jaxmat.core import ensemble
    from jaxmat.data import photoanode_sim as sim

    import dataclasses

    table, _ = sim.simulate_library(sim.LibraryConfig(n_samples=60, seed=2))
    table = dataclasses.replace(table, raman_shift=table.raman_shift[::10],
                                spectrum=table.spectrum[:, ::10])  # 102 points: a faster test
    split = pw.split_library(len(table), seed=1)
    seen = []
    real_fit = ensemble.fit

    def spy(model, params, train_data, val_data, loss, config):
        seen.append((np.concatenate([b["composition"][b["mask"]] for b in train_data]),
                     np.concatenate([b["composition"][b["mask"]] for b in val_data])))
        return real_fit(model, params, train_data, val_data, loss, config)

    monkeypatch.setattr(ensemble, "fit", spy)
    fit = pw.fit_committee(table, split, members=2, epochs=1,
                           config=models.PhotoanodeConfig(spectrum_hidden=(4, 4),
                                                          composition_hidden=(4, 4), head_hidden=(4,)),
                           spectrum_config=models.CompositionSpectrumConfig(hidden=(4,)))
    assert len(seen) == 2  # property committee and composition -> spectrum committee
    rows = {tuple(np.round(x, 6)): k for k, x in enumerate(table.composition)}
    for tr_x, va_x in seen:
        val_rows = {rows[tuple(np.round(x, 6))] for x in va_x}
        train_rows = {rows[tuple(np.round(x, 6))] for x in tr_x}
        assert val_rows == set(split.val.tolist())
        assert train_rows == set(split.train.tolist())
        assert not val_rows & set(split.test.tolist()) and not train_rows & set(split.test.tolist())
    assert fit.split is split and len(fit.hull) == len(split.train)
    mean, std = fit.predict(table.subset(split.test))
    assert mean.shape == (len(split.test),) and np.all(std >= 0)


# --------------------------------------------------------------------------- total derivative
def _chained(n_el=4, n_pts=6):
    """A nonlinear property model P(x, s) and a nonlinear spectrum model ŝ(x)."""
    def apply(p, b):
        h = jnp.tanh(b["composition"] @ p["A"] + b["spectrum"] @ p["B"])
        return {"P": h @ p["v"] + jnp.sum(b["spectrum"] ** 2, 1) * p["c"]}

    def init(key, b=None):
        k = jax.random.split(key, 4)
        return {"A": jax.random.normal(k[0], (n_el, 5)), "B": jax.random.normal(k[1], (n_pts, 5)),
                "v": jax.random.normal(k[2], (5,)), "c": jax.random.normal(k[3], ())}

    def s_apply(q, b):
        return {"spectrum": jnp.sin(b["composition"] @ q["W"]) + q["b"]}

    def s_init(key, b=None):
        return {"W": 3 * jax.random.normal(key, (n_el, n_pts)), "b": jnp.ones((n_pts,))}

    return Model(init, apply, name="P"), Model(s_init, s_apply, name="S")


def test_total_derivative_equals_finite_differences_through_chained_models():
    with jax.enable_x64(True):
        model, smodel = _chained()
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(0)))
        q = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), smodel.init(jax.random.key(1)))
        rng = np.random.default_rng(0)
        x = rng.dirichlet(np.ones(4), 5)
        s_obs = rng.random((5, 6))
        b = {"composition": x, "spectrum": s_obs, "mask": np.ones(5, bool)}
        g = np.asarray(interpret.total_gradients(model, p, smodel, q, b, scale=2.0))
        s0 = np.asarray(smodel.apply(q, b)["spectrum"])

        def P(xx):  # the measured spectrum moves by the spectrum model's change
            s = s_obs + np.asarray(smodel.apply(q, {"composition": xx})["spectrum"]) - s0
            return 2.0 * np.asarray(model.apply(p, {"composition": xx, "spectrum": s})["P"])

        h = 1e-6
        for j in range(4):
            e = np.zeros(4)
            e[j] = h
            fd = (P(x + e) - P(x - e)) / (2 * h)
            assert np.allclose(g[:, j], fd, rtol=1e-6, atol=1e-8)
        # and it differs from the conditional gradient by ∂P/∂s · ds/dx
        cond = np.asarray(interpret.input_gradients(model, p, b, scale=2.0))
        assert np.abs(g - cond).max() > 1e-2


def test_confounding_flag_on_analytic_linear_case():
    """P = a·x + v·s, s = C x: conditional a, total a + Cᵀv (per member, known exactly)."""
    a = jnp.array([0.0, 1.0, 0.5, 0.0])
    C = jnp.zeros((4, 3)).at[3].set(jnp.array([2.0, 0.0, 0.0]))  # element 3 moves band 0
    v = jnp.array([-1.0, 0.0, 0.0])
    members = 3
    jitter = jnp.array([-0.01, 0.0, 0.01])
    params = {"a": a[None] + jitter[:, None], "v": jnp.tile(v, (members, 1))}
    sparams = {"C": jnp.tile(C, (members, 1, 1))}
    model = Model(lambda k, b=None: {}, lambda p, b: {"P": b["composition"] @ p["a"]
                                                       + b["spectrum"] @ p["v"]}, name="lin")
    smodel = Model(lambda k, b=None: {}, lambda q, b: {"spectrum": b["composition"] @ q["C"]},
                   name="slin")
    x = np.random.default_rng(0).dirichlet(np.ones(4), 8).astype(np.float32)
    b = {"composition": x, "spectrum": x @ np.asarray(C), "mask": np.ones(8, bool)}
    rows = interpret.confounding_check(model, params, smodel, sparams, b, ["A", "B", "C", "D"],
                                       host=0, per=1.0)
    by = {r["element"]: r for r in rows}
    # replacing A by D: conditional a_D - a_A = 0 (± the jitter), total = 0 + 2·(-1) = -2
    assert by["D"]["conditional"] == pytest.approx(0.0, abs=1e-6)
    assert by["D"]["total"] == pytest.approx(-2.0, abs=1e-5)
    assert by["D"]["flagged"] and by["D"]["reason"] == "size"
    assert by["B"]["conditional"] == pytest.approx(1.0, abs=1e-5)
    assert by["B"]["total"] == pytest.approx(1.0, abs=1e-5)
    assert not by["B"]["flagged"] and not by["C"]["flagged"]
    # every member moves by the same gap: beyond the noise however the members disagree
    rows = interpret.flag_confounding(np.full((2, 5, 1), 0.01), np.full((2, 5, 1), -0.01), ["X"])
    assert rows[0]["flagged"] and rows[0]["reason"] == "sign" and rows[0]["sign_differs"] == 1.0
    noisy = np.stack([np.full((5, 1), -0.05), np.full((5, 1), 0.07)])  # spread 0.06, mean 0.01
    rows = interpret.flag_confounding(noisy, noisy - 0.02, ["X"])  # +0.01 against -0.01, paired
    assert rows[0]["flagged"] and rows[0]["reason"] == "sign" and rows[0]["gap_spread"] == 0.0
    # the members disagree on the gap (-0.05 and +0.01: gap -0.02 ± 0.03, z 0.67): noise
    paired = noisy + np.stack([np.full((5, 1), -0.05), np.full((5, 1), 0.01)])
    rows = interpret.flag_confounding(noisy, paired, ["X"])
    assert rows[0]["gap"] == pytest.approx(-0.02) and rows[0]["gap_spread"] == pytest.approx(0.03)
    assert rows[0]["z"] == pytest.approx(2 / 3) and not rows[0]["flagged"]
    assert interpret.flag_confounding(noisy, paired, ["X"], z=0.5)[0]["flagged"]
    # a consistent gap that is small next to the largest effect is not material
    two = np.stack([np.full((5, 2), 1.0), np.full((5, 2), 1.2)]) * np.array([1.0, 0.1])
    rows = interpret.flag_confounding(two, two + np.array([0.0, 0.01]), ["A", "B"], min_share=0.05)
    assert rows[1]["share"] == pytest.approx(0.01 / 1.1) and not rows[1]["flagged"]
    assert interpret.flag_confounding(two, two + np.array([0.0, 0.01]), ["A", "B"],
                                      min_share=0.005)[1]["flagged"]
    assert interpret.gap_verdict(0.1, 0.02, 1.0, z=4.0, min_share=0.05) == "size"
    assert interpret.gap_verdict(-0.1, 0.02, 1.0, opposite=True, z=4.0, min_share=0.05) == "sign"
    assert interpret.gap_verdict(0.1, 0.03, 1.0, z=4.0, min_share=0.05) == ""
    assert interpret.gap_verdict(0.1, 0.0, 1.0, z=4.0, min_share=0.2) == ""
    with pytest.raises(ValueError, match="gap thresholds must be >= 0, got z=-1"):
        interpret.flag_confounding(noisy, paired, ["X"], z=-1.0)
    with pytest.raises(ValueError, match="members, samples"):
        interpret.flag_confounding(np.ones((2, 5)), np.ones((2, 5)), ["X"])
    with pytest.raises(ValueError, match="needs a committee"):
        interpret.flag_confounding(np.ones((1, 5, 1)), np.ones((1, 5, 1)), ["X"])


def test_simulated_confounder_acts_only_through_the_spectrum():
    from jaxmat.data import photoanode_sim as sim

    table, truth = sim.simulate_library(sim.LibraryConfig(n_samples=300, seed=5))
    x = table.composition
    el = list(table.elements)
    dy, bi = el.index("Dy"), el.index("Bi")
    # replacing Bi by Dy at fixed spectrum changes nothing; with the spectrum moving it hurts
    cond = truth["grad"][:, dy] - truth["grad"][:, bi]
    tot = truth["grad_total"][:, dy] - truth["grad_total"][:, bi]
    assert np.abs(cond).max() < 1e-5
    assert tot.mean() < -2.0 and np.all(tot <= 1e-5)
    # every other element's total effect equals its conditional one
    others = [k for k in range(7) if k != dy]
    assert np.allclose(truth["grad_total"][:, others], truth["grad"][:, others], atol=1e-4)
    # the feature s rises with Dy
    s = np.asarray(sim.disorder_feature(jnp.asarray(x), jnp.asarray(truth["u"])))
    assert np.allclose(s, truth["feature"], atol=1e-5)


# --------------------------------------------------------------------------- bands
def _band(nu, c, w, h=1.0):
    return h * np.exp(-4 * np.log(2) * (nu - c) ** 2 / w**2)


def test_band_attribution_separates_shift_from_width():
    nu = np.linspace(600, 1000, 801)
    rng = np.random.default_rng(0)
    c = 826 + rng.normal(0, 2, 20)
    w = 20 + rng.normal(0, 2, 20)
    spec = np.stack([_band(nu, ci, wi) + _band(nu, 700, 30, 0.4) for ci, wi in zip(c, w)])
    # a "model" that reads only the width of the 826 band: P = -0.1 w  →  ∂P/∂I is the
    # width operator's dual; check with finite changes instead: saliency of P = Σ g(ν) I(ν)
    g_wings = np.where(np.abs(nu - 826) > 12, -1.0, 0.0) * (np.abs(nu - 826) < 40)
    sal = np.tile(g_wings, (20, 1))
    rows = interpret.band_attribution(sal, spec, nu)
    assert [round(r["centre"]) for r in rows] == [700, 826]
    b = rows[1]
    assert b["fwhm"] == pytest.approx(20, abs=1.5)
    # broadening puts intensity on the wings: dP/dwidth < 0, and a shift changes little
    dP_dw = (np.sum(g_wings * (_band(nu, 826, 20.5) - _band(nu, 826, 19.5))))
    assert np.sign(b["d_width"]) == np.sign(dP_dw) == -1
    assert abs(b["d_shift"]) < 0.2 * abs(b["d_width"])
    assert b["centre_share"] < 0.2  # the saliency sits on the wings
    # a centre-reading model: dP/dshift dominates for an antisymmetric saliency
    g_shift = np.where(np.abs(nu - 826) < 10, np.sign(nu - 826), 0.0)
    rows = interpret.band_attribution(np.tile(g_shift, (20, 1)), spec, nu,
                                      bands=[{"centre": 826.0, "fwhm": 20.0}])
    assert rows[0]["d_shift"] > 5 * abs(rows[0]["d_width"]) and rows[0]["centre_share"] > 0.9
    with pytest.raises(ValueError, match="disagree"):
        interpret.band_attribution(sal[:, :10], spec, nu)


# --------------------------------------------------------------------------- suggestions
def test_suggestions_inside_hull_by_default():
    w = np.array([0.0, 1.0, 2.0, -1.0])
    m = Model(lambda k, b=None: {}, lambda p, b: {"P": b["composition"] @ jnp.asarray(w)},
              name="lin")
    hull = np.array([[0.5, 0.5, 0.0, 0.0], [0.4, 0.5, 0.1, 0.0], [0.5, 0.4, 0.0, 0.1],
                     [0.45, 0.45, 0.05, 0.05]])
    b = {"composition": np.array([[0.45, 0.45, 0.05, 0.05]]), "mask": np.ones(1, bool)}
    with pytest.raises(ValueError, match="within_hull=True needs hull"):
        interpret.suggest_directions(m, {}, b, "ABCD")
    d = interpret.suggest_directions(m, {}, b, "ABCD", hull=hull)
    assert all(c["outside_hull"] is False for c in d.ranked)
    assert all(c["outside_hull"] is True for c in d.outside) and d.outside
    assert (d[0]["add"], d[0]["remove"]) == ("C", "B") or d[0]["outside_hull"] is False
    every = interpret.suggest_directions(m, {}, b, "ABCD", hull=hull, within_hull=False)
    assert len(every) == len(d.ranked) + len(d.outside) and not every.outside
    assert every[0]["slope"] >= d[0]["slope"]
    assert "outside the training hull" in d.table()


def test_reference_batch_from_a_table():
    from jaxmat.data import photoanode_sim as sim

    table, _ = sim.simulate_library(sim.LibraryConfig(n_samples=10, seed=0))
    best = pw.reference_batch(table)
    k = int(np.argmax(table.target))
    assert best["sample"] == table.sample[k]
    assert np.allclose(best["composition"][0], table.composition[k])
    assert best["spectrum"].shape == (1, 1015) and best["spectrum"][0].max() >= 1.0 - 1e-6
    assert pw.reference_batch(table, "sim0003")["sample"] == "sim0003"
    assert pw.reference_batch(table, 2)["sample"] == table.sample[2]
    with pytest.raises(ValueError, match="no sample named"):
        pw.reference_batch(table, "xyz")
    with pytest.raises(ValueError, match="out of range"):
        pw.reference_batch(table, 10)


def test_width_operator_matches_the_simulators_broadening():
    """The broadening the attribution projects on equals the simulator's exact change of the
    normalised spectrum with the 826 cm⁻¹ FWHM (finite difference in the latent disorder)."""
    from jaxmat.data import photoanode as pa
    from jaxmat.data import photoanode_sim as sim

    nu = sim.RAMAN_SHIFT
    x = sim.REFERENCE_COMPOSITION[None]

    def spec(u):
        s, f = sim.spectra_at(x, u=u)
        return pa.normalize_spectra(s, nu)[0], float(f[0])

    (sp, fp), (sm, fm), (s0, _) = spec(0.01), spec(-0.01), spec(0.0)
    exact = (sp - sm) / (5 * (fp - fm))  # d(normalised I)/d(FWHM), per cm⁻¹
    band = min(interpret.find_bands(s0, nu), key=lambda b: abs(b["centre"] - 826))
    # a saliency equal to the exact change reads dP/dwidth = |exact|² per cm⁻¹ of FWHM
    row = interpret.band_attribution(exact[None], s0[None], nu, [band])[0]
    assert row["d_width"] == pytest.approx(np.dot(exact, exact), rel=0.05)
    assert abs(row["d_shift"]) < 0.1 * row["d_width"]


# --------------------------------------------------------------------------- total-effect directions
def _linear_confounded():
    """P = a·x + v·s and s = C x (as above): element D acts only through band 0."""
    a = jnp.array([0.0, 1.0, 0.5, 0.0])
    C = jnp.zeros((4, 3)).at[3].set(jnp.array([2.0, 0.0, 0.0]))
    v = jnp.array([-1.0, 0.0, 0.0])
    jitter = jnp.array([-0.01, 0.0, 0.01])
    params = {"a": a[None] + jitter[:, None], "v": jnp.tile(v, (3, 1))}
    sparams = {"C": jnp.tile(C, (3, 1, 1))}
    model = Model(lambda k, b=None: {}, lambda p, b: {"P": b["composition"] @ p["a"]
                                                       + b["spectrum"] @ p["v"]}, name="lin")
    smodel = Model(lambda k, b=None: {}, lambda q, b: {"spectrum": b["composition"] @ q["C"]},
                   name="slin")
    return model, params, smodel, sparams, np.asarray(C)


def test_directions_rank_by_total_effect_and_mark_flags():
    model, params, smodel, sparams, C = _linear_confounded()
    x = np.array([[0.4, 0.3, 0.2, 0.1]], np.float32)
    ref = {"composition": x, "spectrum": x @ C, "mask": np.ones(1, bool)}
    lib = np.random.default_rng(1).dirichlet(np.ones(4), 40).astype(np.float32)
    rows = interpret.confounding_check(model, params, smodel, sparams,
                                       {"composition": lib, "spectrum": lib @ C,
                                        "mask": np.ones(40, bool)}, "ABCD", host=0, per=1.0)
    d = interpret.suggest_directions(model, params, ref, "ABCD", within_hull=False,
                                     spectrum_model=smodel, spectrum_params=sparams,
                                     confounding=rows)
    assert d.rank_by == "total"
    by = {(c["add"], c["remove"]): c for c in d}
    # add D for A: 0 at fixed spectrum, −2 per unit with the band moving (per 1 at.%: −0.02)
    da = by[("D", "A")]
    assert da["slope_fixed"] == pytest.approx(0.0, abs=1e-6)
    assert da["slope_total"] == pytest.approx(-0.02, abs=1e-6)
    assert da["gap"] == pytest.approx(-0.02, abs=1e-6) and da["gap_flag"] == "size"
    assert da["std_gap"] == pytest.approx(0.0, abs=1e-6)
    assert da["flagged"] == ["D"] and da["slope"] == da["slope_total"]
    # add A for D: the fixed view calls it neutral, the total view ranks it near the top
    assert by[("A", "D")]["slope_total"] == pytest.approx(0.02, abs=1e-6)
    totals = [c["slope_total"] for c in d]
    assert totals == sorted(totals, reverse=True)
    fixed = interpret.suggest_directions(model, params, ref, "ABCD", within_hull=False,
                                         spectrum_model=smodel, spectrum_params=sparams,
                                         rank_by="fixed")
    assert [c["slope_fixed"] for c in fixed] == sorted((c["slope_fixed"] for c in fixed), reverse=True)
    assert [(c["add"], c["remove"]) for c in fixed][:3] != [(c["add"], c["remove"]) for c in d][:3]
    table = d.table(top=40)
    assert "ΔP total" in table and "at fixed spectrum" in table and "D*" in table
    assert by[("B", "C")]["flagged"] == [] and not by[("B", "C")]["gap_flag"]
    with pytest.raises(ValueError, match="rank_by='total' needs spectrum_model"):
        interpret.suggest_directions(model, params, ref, "ABCD", within_hull=False, rank_by="total")


def test_confounding_table_shows_every_gap_and_the_spectrum_fit():
    rows = interpret.flag_confounding(
        np.stack([np.full((5, 3), 0.10), np.full((5, 3), 0.14)]),
        np.stack([np.full((5, 3), 0.07), np.full((5, 3), 0.07)]) + np.array([0.0, -0.2, 0.08]),
        ["X", "Y", "W"], z=2.0, min_share=0.4)
    fit = {"r2": 0.09, "r2_read": 0.05, "n": 20,
           "bands": [{"centre": 826.0, "fwhm": 20.0, "r2": 0.05, "weight": 1.0}]}
    text = interpret.confounding_table(interpret.ConfoundingReport(rows, fit))
    lines = text.splitlines()
    assert "z > 2 and share > 0.4" in lines[0]
    line = {ln.split()[0]: ln for ln in lines[1:4]}
    # X: gap -0.050 ± 0.020 paired (z 2.5), share 0.05 / 0.15 (W total): beyond the noise, small
    assert "-0.050" in line["X"] and "0.020" in line["X"] and "2.5" in line["X"]
    assert "too small to matter" in line["X"]
    assert "-0.250" in line["Y"] and "FLAG: opposite signs" in line["Y"]   # +0.12 vs -0.13
    assert "+0.030" in line["W"] and "within the noise" in line["W"]       # z 1.5
    assert "826: 0.05" in text and "WARNING: composition explains little" in text
    good = dict(fit, r2_read=0.99, r2=0.95)
    assert "WARNING" not in interpret.confounding_table(rows, spectrum_fit=good)
    size = interpret.flag_confounding(np.stack([np.full((5, 1), 0.1), np.full((5, 1), 0.12)]),
                                      np.stack([np.full((5, 1), 0.3), np.full((5, 1), 0.33)]), ["Z"])
    assert "FLAG: gap beyond the noise" in interpret.confounding_table(size)


def test_spectrum_fit_per_band_against_hand_computed_r2():
    nu = np.linspace(700, 900, 201)
    rng = np.random.default_rng(0)
    w = 20 + 4 * rng.normal(size=30)
    obs = np.stack([_band(nu, 826, wi) + _band(nu, 740, 25, 0.5) for wi in w])
    pred = np.stack([_band(nu, 826, 20.0) + _band(nu, 740, 25, 0.5) for _ in w])  # misses the width
    sal = np.where(np.abs(nu - 826) < 30, 1.0, 0.0)
    fit = interpret.spectrum_fit(pred, obs, nu, saliency=sal)
    bands = {round(b["centre"]): b for b in fit["bands"]}
    win = np.abs(nu - 826) <= bands[826]["fwhm"]
    r2 = 1 - ((pred - obs)[:, win] ** 2).sum() / ((obs - obs.mean(0))[:, win] ** 2).sum()
    assert bands[826]["r2"] == pytest.approx(r2, rel=1e-9) and r2 < 0.5
    assert bands[740]["weight"] < 0.05 and fit["r2_read"] == pytest.approx(bands[826]["r2"], abs=0.05)
    assert interpret.spectrum_fit_warning(fit, min_r2=0.9) and not interpret.spectrum_fit_warning(fit, -10)
    with pytest.raises(ValueError, match="need predicted and observed"):
        interpret.spectrum_fit(pred[:, :5], obs, nu)


def test_simulated_structures_plant_other_confounders_and_hulls():
    from jaxmat.data import photoanode_sim as sim

    cfg = sim.LibraryConfig(n_samples=300, seed=7, broadening=(("Tb", 150.0), ("W", 100.0)),
                            v_site_max=0.06, b_site_max=0.12, crystallinity=0.4)
    table, truth = sim.simulate_library(cfg)
    assert truth["confounders"] == ("Tb", "W") == cfg.confounders
    gap = np.abs(truth["grad_total"] - truth["grad"]).mean(0)
    el = list(table.elements)
    assert gap[el.index("Tb")] > 1.0 and gap[el.index("W")] > 1.0
    others = [k for k, e in enumerate(el) if e not in ("Tb", "W")]
    assert gap[others].max() < 1e-4  # Dy is no longer a confounder
    x = table.composition
    assert x[:, [2, 5]].max() <= 0.06 + 1e-6 and x[:, [3, 4, 6]].max() > 0.1
    # total gradients match finite differences of P with the band width moving (c fixed)
    k = int(np.argmax(x[:, el.index("Tb")]))
    xk, uk, ck = x[k].astype(np.float64), truth["u"][k], truth["crystallinity"][k]

    def p(xx):
        s = sim.disorder_feature(jnp.asarray(xx[None], jnp.float32), jnp.asarray([uk]), cfg,
                                 jnp.asarray([ck]))
        return float(sim.power(jnp.asarray(xx[None], jnp.float32), s)[0])

    e = np.zeros(7)
    e[el.index("Tb")], e[0] = 1e-3, -1e-3
    fd = (p(xk + e) - p(xk - e)) / 2e-3
    exact = truth["grad_total"][k] @ (e / 1e-3)
    assert fd == pytest.approx(exact, rel=0.05, abs=0.05)
    with pytest.raises(ValueError, match="unknown element"):
        sim.LibraryConfig(broadening=(("Xx", 1.0),))
