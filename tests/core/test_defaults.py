"""Trustworthy defaults: the bundle's training range and σ calibration (saved, loaded,
used by the calculator and predict), per-target recalibration, E0s, and `jaxmat train`
storing them (with a split file, resumed)."""
from __future__ import annotations

import json
import os
import warnings

import jax
import numpy as np
import pytest

import jaxmat
from jaxmat import bundle, data, ensemble, graph, potential
from jaxmat.ase import JaxmatCalculator
from jaxmat.core import calibrate
from jaxmat.core.predict import predict
from jaxmat.models import SchNetConfig, schnet

CUTOFF = 3.0


@pytest.fixture(scope="module")
def records():
    return graph.records_from_atoms(data.load_ammonia()[:8], cutoff=CUTOFF)


@pytest.fixture(scope="module")
def committee(records):
    cfg = SchNetConfig(n_features=8, n_interactions=1, n_rbf=4, cutoff=CUTOFF)
    model = potential.potential(schnet(cfg.with_stats(*potential.energy_stats(records))),
                                stress=False)
    params = ensemble.init(model, jax.random.key(0), graph.batch(records[:2]), n_members=3)
    return model, params


# --------------------------------------------------------------------------- training range
def test_training_summary_gives_the_energy_per_atom_range_by_formula(records):
    t = bundle.training_summary(records, "fit")
    e = np.array([r.targets["energy"] / r.n_node for r in records])
    assert t["n_structures"] == 8 and t["reference_energies"] == "fit"
    assert t["energy_per_atom_eV"] == pytest.approx([e.min(), e.max()])
    assert t["energy_per_atom_by_formula_eV"] == {"H3N": pytest.approx([e.min(), e.max()])}
    with pytest.raises(ValueError, match="structure 0 carries no energy"):
        bundle.training_summary([graph.Record(**{**records[0].__dict__, "targets": {}})])


# --------------------------------------------------------------------------- calibration
def test_fit_targets_scales_sigma_to_the_errors_and_reports_before_after():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, 4000)
    err = 2.5 * sigma * rng.standard_normal(4000)  # σ 2.5x over-confident
    cal = calibrate.fit_targets({"forces": (err, sigma)}, n_structures=40, method="nll")["forces"]
    assert cal["scale"] == pytest.approx(2.5, rel=0.05) and cal["n"] == 40
    assert cal["power"] == 1.0 and "knee" not in cal
    assert cal["before"]["coverage_68"] < 0.4
    assert abs(cal["after"]["coverage_68"] - 0.683) < 0.03
    assert abs(cal["after"]["coverage_95"] - 0.95) < 0.02
    with pytest.warns(UserWarning, match="fitted on 12 validation structures"):
        calibrate.fit_targets({"energy": (err[:12], sigma[:12])}, n_structures=12)
    assert cal["ranks"] and cal["before"]["spearman"] > 0.2


def test_fit_targets_says_when_sigma_does_not_rank_the_errors():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.5, 2.0, 2000)
    err = rng.standard_normal(2000) / sigma  # larger σ, smaller errors: ranks backwards
    with pytest.warns(UserWarning, match=r"σ of energy does not rank the validation errors "
                                         r"\(Spearman -0\.\d\d over 2000 values\)"):
        cal = calibrate.fit_targets({"energy": (err, sigma)}, n_structures=2000)["energy"]
    assert cal["ranks"] is False and cal["before"]["spearman"] < 0


def test_power_calibration_recovers_a_power_law_and_stays_linear_beyond_the_data():
    rng = np.random.default_rng(1)
    sigma = np.exp(rng.uniform(np.log(0.02), np.log(0.5), 20000))  # eV/Å
    err = 0.4 * sigma**0.4 * rng.standard_normal(sigma.size)  # errors grow slower than σ
    cal = calibrate.fit_targets({"forces": (err, sigma)}, n_structures=400)["forces"]
    assert cal["method"] == "power" and cal["power"] == pytest.approx(0.4, abs=0.03)
    assert cal["scale"] == pytest.approx(0.4, rel=0.1) and cal["knee"] == sigma.max()
    # one scale cannot calibrate both levels; the power law does (fresh data)
    err2 = 0.4 * sigma**0.4 * rng.standard_normal(sigma.size)
    m = calibrate.sigma_map(cal)
    after = calibrate.metrics(err2, calibrate.apply_map(sigma, m))
    assert abs(after["coverage_68"] - 0.683) < 0.02 and abs(after["coverage_95"] - 0.95) < 0.01
    one = calibrate.fit_scale(err, sigma)
    single = calibrate.metrics(err2, one * sigma)
    assert abs(single["coverage_68"] - 0.683) > 0.05
    # the map: continuous at the knee, linear beyond it, monotone; the identity by default
    k = cal["knee"]
    below, at, above = calibrate.apply_map(np.array([0.999 * k, k, 4 * k]), m)
    assert below == pytest.approx(at, rel=1e-3) and above == pytest.approx(4 * at)
    grid = np.geomspace(1e-4, 10.0, 200)
    assert np.all(np.diff(calibrate.apply_map(grid, m)) > 0)
    np.testing.assert_allclose(calibrate.apply_map(grid, calibrate.sigma_map(None)), grid)
    assert calibrate.sigma_map({"scale": 2.0}) == (2.0, 1.0, np.inf)
    # a per-atom σ (root of the xyz-summed variance) maps its per-component RMS
    np.testing.assert_allclose(calibrate.apply_map(grid, m, components=3),
                               np.sqrt(3) * calibrate.apply_map(grid / np.sqrt(3), m))
    for bad in ({"scale": 1.0, "power": 0.0}, {"scale": -1.0}, {"scale": 1.0, "knee": 0.0}):
        with pytest.raises(ValueError, match="scale > 0, power > 0 and knee > 0"):
            calibrate.sigma_map(bad)
    with pytest.raises(ValueError, match="unknown recalibration method 'cubic'"):
        calibrate.fit_targets({"forces": (err, sigma)}, 400, method="cubic")


def test_scale_outputs_scales_variances_only():
    out = {"energy": np.ones(2), "energy_var": np.ones(2), "forces_var": [np.ones((3, 3))],
           "forces_var_atom": [np.ones(3)], "forces": [np.ones((3, 3))]}
    got = calibrate.scale_outputs(out, {"energy": {"scale": 2.0}, "forces": {"scale": 3.0}})
    assert np.all(got["energy_var"] == 4.0) and np.all(got["energy"] == 1.0)
    np.testing.assert_allclose(got["forces_var"][0], 9.0)
    np.testing.assert_allclose(got["forces_var_atom"][0], 9.0)
    assert np.all(got["forces"][0] == 1.0) and np.all(out["energy_var"] == 1.0)
    power = {"scale": 0.5, "power": 0.5, "knee": 4.0}  # σ_c = 0.5 √σ below σ = 4
    got = calibrate.scale_outputs({"forces_var": [np.full((2, 3), 4.0)],
                                   "forces_var_atom": [np.full(2, 12.0)]}, {"forces": power})
    np.testing.assert_allclose(got["forces_var"][0], (0.5 * np.sqrt(2.0)) ** 2)
    np.testing.assert_allclose(got["forces_var_atom"][0], 3 * (0.5 * np.sqrt(2.0)) ** 2)


def test_committee_bundle_keeps_training_and_calibration(committee, records, tmp_path):
    model, params = committee
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 structures: the few-structures warning
        cal = calibrate.fit_committee(model, params, records)
    assert set(cal) == {"energy", "forces"}
    path = bundle.save(tmp_path / "c", model, params, calibration=cal,
                       training=bundle.training_summary(records))
    b = jaxmat.load(path)
    assert b.calibration["forces"]["scale"] == pytest.approx(cal["forces"]["scale"])
    assert b.training["energy_per_atom_eV"] == pytest.approx(
        bundle.training_summary(records)["energy_per_atom_eV"])
    raw = predict(b.model, b.params, records[:2])
    scaled = predict(b.model, b.params, records[:2], calibration=b.calibration)
    m = calibrate.sigma_map(b.calibration["forces"])
    assert b.calibration["forces"]["power"] == cal["forces"]["power"] != 1.0
    np.testing.assert_allclose(scaled["forces_var"][0], calibrate.apply_map(
        np.sqrt(raw["forces_var"][0]), m) ** 2, rtol=1e-5)
    atoms = data.load_ammonia()[0]
    calc = JaxmatCalculator.from_bundle(b)
    raw_calc = JaxmatCalculator.from_bundle(b, calibrated=False)
    std, raw_std = (c.get_property("forces_std", atoms) for c in (calc, raw_calc))
    np.testing.assert_allclose(std, calibrate.apply_map(raw_std, m), rtol=1e-5)
    np.testing.assert_allclose(calc.get_property("forces_std_atom", atoms), calibrate.apply_map(
        raw_calc.get_property("forces_std_atom", atoms), m, components=3), rtol=1e-5)
    with pytest.raises(ValueError, match="calibration entry 'forces' needs a positive 'scale'"):
        bundle.save(tmp_path / "bad", model, params,
                    calibration={"forces": {"scale": 1.0, "power": -0.5}})


def test_single_model_bundle_has_no_sections_and_refuses_a_calibration(records, tmp_path):
    cfg = SchNetConfig(n_features=8, n_interactions=1, n_rbf=4, cutoff=CUTOFF)
    model = potential.potential(schnet(cfg), stress=False)
    params = model.init(jax.random.key(0), graph.batch(records[:2]))
    b = jaxmat.load(bundle.save(tmp_path / "s", model, params))
    assert b.training is None and b.calibration is None  # and older bundles load the same
    with open(os.path.join(b.path, "bundle.json")) as f:
        assert "training" not in json.load(f)
    with pytest.raises(ValueError, match="a calibration needs committee params"):
        bundle.save(tmp_path / "t", model, params, calibration={"forces": {"scale": 2.0}})
    with pytest.raises(ValueError, match="training must hold n_structures"):
        bundle.save(tmp_path / "u", model, params, training={"energy_per_atom_eV": [1, 0]})


# --------------------------------------------------------------------------- E0s
def test_reference_energies_fit_average_and_given(records):
    refs, shift = potential.reference_energies(records, "average")
    e_atom = sum(r.targets["energy"] for r in records) / sum(r.n_node for r in records)
    assert refs[1] == refs[7] == pytest.approx(e_atom) and shift == 0.0
    given = {"H": -13.6, "N": -1485.0}
    refs, shift = potential.reference_energies(records, given)
    assert refs[1] == -13.6 and refs[7] == -1485.0
    resid = [(r.targets["energy"] - (-1485.0 - 3 * 13.6)) / 4 for r in records]
    assert shift == pytest.approx(np.mean(resid))
    with pytest.raises(ValueError, match=r"gives no E0 for \['N'\], which the data contain"):
        potential.reference_energies(records, {"H": -13.6})
    with pytest.warns(UserWarning, match=r"E0s for \['C'\], which are not in the training data"):
        potential.reference_energies(records, {**given, "C": -1000.0})
    with pytest.raises(ValueError, match="must be one of"):
        potential.reference_energies(records, "mean")


# --------------------------------------------------------------------------- jaxmat train
def test_cli_committee_with_split_file_resumes_and_stores_calibration(tmp_path):
    from jaxmat.cli import config as cli_config
    from jaxmat.cli import train as cli_train

    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": list(range(24)), "val": list(range(24, 48)),
                                 "test": list(range(48, 56))}))
    (tmp_path / "t.toml").write_text(
        'output = "run"\ncommittee = 2\n[data]\ndataset = "ammonia"\nsplit_file = "split.json"\n'
        'reference_energies = "average"\n[fit]\nepochs = 2\nbatch_size = 8\n'
        '[model.schnet]\nn_features = 8\nn_interactions = 1\nn_rbf = 4\ncutoff = 3.0\n')
    cfg = cli_config.load(str(tmp_path / "t.toml"))
    first = cli_train.run(cfg, max_epochs=1, tensorboard=False, checkpoint_every_s=None)
    assert first == {"finished": False, "epochs_run": 1}
    again = cli_config.load(str(tmp_path / "run" / "config.toml"))  # readable: no split too
    assert again.data.split_file == str(split)
    summary = cli_train.run(cfg, tensorboard=False, checkpoint_every_s=None)
    assert summary["epochs_run"] == 2 and summary["convergence"]["epochs"] == 2
    b = jaxmat.load(tmp_path / "run" / "model")
    assert b.calibration["forces"]["n"] == 24
    assert b.calibration["forces"]["scale"] == pytest.approx(summary["calibration"]["forces"]["scale"])
    assert b.training["n_structures"] == 24 and b.training["reference_energies"] == "average"
    assert summary["test"]["calibration"]["forces_eV_per_A"]["scale"] == pytest.approx(
        b.calibration["forces"]["scale"])
    assert "calibration_raw" in summary["test"]
    with open(tmp_path / "run" / "metrics.json") as f:
        assert json.load(f)["convergence"]["total_steps"] == 6
    # the stored power law is what eval applied to the test σ, and `jaxmat info` shows it
    c = b.calibration["forces"]
    assert summary["test"]["calibration"]["forces_eV_per_A"]["power"] == pytest.approx(c["power"])
    from jaxmat.cli.info import describe, format_info
    text = format_info(describe(str(tmp_path / "run" / "model")))
    assert (f"σ forces      calibrated = {c['scale']:.3g} σ^{c['power']:.2f}, linear beyond"
            in text)
    assert "fitted on 24 structures" in text and "training      24 structures" in text
    for target, entry in b.calibration.items():  # a σ that does not rank errors says so
        line = next(ln for ln in text.splitlines() if ln.startswith(f"σ {target}"))
        assert ("does not rank validation errors" in line) == (entry["ranks"] is False)


def test_eval_prints_sigma_raw_and_calibrated():
    from jaxmat.cli.eval import format_metrics

    m = {"nll": 1.0, "spearman": 0.5, "miscalibration_area": 0.1, "coverage_68": 0.4,
         "coverage_95": 0.7, "rmse": 2.0, "mean_sigma": 1.0}
    text = format_metrics({"n_structures": 3, "n_atoms": 12,
                           "calibration": {"forces_eV_per_A": {**m, "coverage_68": 0.68,
                                                               "mean_sigma": 2.0, "scale": 2.0}},
                           "calibration_raw": {"forces_eV_per_A": m}})
    lines = text.splitlines()
    assert "σ forces_eV_per_A raw:" in lines[1] and "coverage 68/95 % 40.0/70.0" in lines[1]
    assert "RMSE/mean σ 2" in lines[1]
    assert "σ forces_eV_per_A calibrated (x2):" in lines[2] and "RMSE/mean σ 1" in lines[2]
    power = {**m, "scale": 0.3, "power": 0.4, "knee": 0.2}
    text = format_metrics({"n_structures": 3, "n_atoms": 12,
                           "calibration": {"forces_eV_per_A": power},
                           "calibration_raw": {"forces_eV_per_A": m}})
    assert "calibrated (0.3 σ^0.40, linear beyond σ 0.2):" in text


def test_fitted_e0s_of_one_composition_stay_near_the_mean_energy_per_atom(records):
    refs, _ = potential.reference_energies(records, "fit")
    e_atom = sum(r.targets["energy"] for r in records) / sum(r.n_node for r in records)
    assert refs[1] == pytest.approx(e_atom, abs=0.05) and refs[7] == pytest.approx(e_atom, abs=0.05)
    # what counts, the total of a structure, is the least-squares one
    total = refs[7] + 3 * refs[1]
    assert total == pytest.approx(np.mean([r.targets["energy"] for r in records]), abs=1e-6)
    two = [*records, graph.Record(**{**records[0].__dict__, "numbers": np.array([1, 1, 1, 1]),
                                     "targets": {"energy": -60.0}})]
    refs2, _ = potential.reference_energies(two, "fit")  # determined: plain least squares
    plain, _ = potential.fit_energy_stats([r.numbers for r in two],
                                          [r.targets["energy"] for r in two])
    np.testing.assert_allclose(refs2[[1, 7]], plain[[1, 7]], rtol=1e-9)
