"""The integration routine of ``jaxmat md`` (jaxmat.md with any potential): NVE conserves
energy, NVT and NPT run and log, frames go to extxyz or .traj; the command with replicas,
criteria options, the failure report and the summary, and its one-line errors."""
import csv
import json

import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from jaxmat.cli.md import run_md
from jaxmat.core import graph, potential
from jaxmat.models.pair import morse


def argon_model():
    m = potential.potential(morse(D=0.012, a=1.3, r0=3.8, cutoff=6.0))
    at = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    return at, m, m.init(jax.random.key(0), graph.batch(graph.records([at], m, labels=False)))


@pytest.mark.parametrize("ensemble, traj", [("nve", "md.extxyz"), ("nvt", "md.traj"),
                                             ("npt", "md.extxyz")])
def test_run_md_writes_frames_and_log(tmp_path, ensemble, traj):
    atoms, model, params = argon_model()
    path = str(tmp_path / traj)
    rows, res = run_md(atoms, model, params, ensemble=ensemble, temperature_K=60.0,
                       timestep_fs=4.0, steps=40, interval=10, trajectory=path, seed=1,
                       compressibility_per_GPa=0.3)
    assert not res.failed.any()
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40]
    assert [r["time_fs"] for r in rows] == [0.0, 40.0, 80.0, 120.0, 160.0]
    frames = read(path, ":")
    assert len(frames) == 5 and frames[-1].info["step"] == 40
    np.testing.assert_allclose(frames[-1].get_potential_energy(), rows[-1]["epot_eV"])
    etot = np.array([r["etot_eV"] for r in rows])
    if ensemble == "nve":  # velocity Verlet at 4 fs on Morse argon: drift well below 1 meV/atom
        assert np.ptp(etot) / len(atoms) < 1e-3
    assert 10 < rows[0]["temperature_K"] < 150
    if ensemble == "npt":
        assert frames[-1].get_volume() != pytest.approx(atoms.get_volume(), rel=1e-6)


def test_run_md_refuses_npt_without_a_cell(tmp_path):
    from ase.build import molecule

    _, model, params = argon_model()
    with pytest.raises(ValueError, match="npt needs a periodic cell"):
        run_md(molecule("H2O"), model, params, ensemble="npt", steps=1,
               trajectory=str(tmp_path / "x.extxyz"))


def small_bundle(tmp_path):
    """A 2-member SchNet bundle (random init) and an ethanol structure file."""
    from ase.build import molecule
    from ase.io import write

    from jaxmat.core import bundle, ensemble
    from jaxmat.models.schnet import SchNetConfig, schnet

    eth = molecule("CH3CH2OH")
    m = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, cutoff=4.0)))
    params = ensemble.init(m, jax.random.key(0), graph.batch(graph.records([eth], m, labels=False)), 2)
    path = bundle.save(str(tmp_path / "model"), m, params)
    write(str(tmp_path / "eth.xyz"), eth)
    return path, str(tmp_path / "eth.xyz")


def test_md_command_replicas_report_and_errors(tmp_path, monkeypatch, capsys):
    from jaxmat.cli.main import main
    from jaxmat.core import bundle

    model, xyz = small_bundle(tmp_path)
    traj, log = str(tmp_path / "md.extxyz"), str(tmp_path / "md.csv")
    args = ["md", model, xyz, "--steps", "20", "--interval", "10", "--replicas", "3",
            "--temperature", "300", "--trajectory", traj, "--log", log]
    assert main(args) == 0
    out = capsys.readouterr()
    # an old bundle: the criteria it cannot feed are named, off
    assert "no training energy range" in out.err and "energy_range is off" in out.err
    assert "force_sigma is off" in out.err
    assert "0/3" not in out.out and "replicas ran 20 steps without failing" in out.out
    rows = list(csv.DictReader(open(log)))
    assert len(rows) == 3 * 3 and {r["replica"] for r in rows} == {"0", "1", "2"}
    assert float(rows[-1]["forces_std_max_eV_per_A"]) > 0
    assert len(read(str(tmp_path / "md_r2.extxyz"), ":")) == 3
    rep = json.load(open(tmp_path / "md.failures.json"))
    assert rep["n_replicas"] == 3 and {"energy_range", "force_sigma"} <= set(rep["off"])
    assert "topology" in rep["active"] and len(rep["replicas"]) == 3
    # with the bundle's training range and calibration, and a range every frame misses
    real = bundle.load

    def load(path):  # a bundle with its training and calibration sections
        import dataclasses
        return dataclasses.replace(
            real(path), training={"energy_per_atom_eV": [1e3, 2e3]},
            calibration={"forces": {"scale": 2.0}, "energy": {"scale": 1.0}})
    monkeypatch.setattr(bundle, "load", load)
    assert main(args + ["--overwrite", "--off", "topology", "--max-force-sigma", "off"]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err
    rep = json.load(open(tmp_path / "md.failures.json"))
    assert rep["n_failed"] == 3 and set(rep["off"]) == {"topology", "force_sigma",
                                                        "energy_sigma"}
    assert rep["replicas"][0] == {"replica": 0, "status": "failed", "code": 6, "step": 0,
                                  "reason": "energy outside the training range",
                                  "time_fs": 0.0}
    assert "energy outside the training range" in out.out
    # one-line errors
    assert main(args + ["--overwrite", "--off", "topolgy"]) == 1
    err = capsys.readouterr().err
    assert "unknown failure criteria ['topolgy']" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(args + ["--overwrite", "--energy-margin", "-0.1"])
    assert "thresholds must be >= 0, got -0.1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["--pressure", "0.1", "--pressure-gpa", "1"])
