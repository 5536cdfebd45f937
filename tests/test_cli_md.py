"""The integration routine of ``jaxmat md`` (jaxmat.md with any potential): NVE conserves
energy, NVT and NPT run and log, frames go to extxyz or .traj."""
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
    rows = run_md(atoms, model, params, ensemble=ensemble, temperature_K=60.0,
                  timestep_fs=4.0, steps=40, interval=10, trajectory=path, seed=1,
                  compressibility_per_GPa=0.3)
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
