"""The integration routine of ``jaxmat md`` (any ASE calculator): NVE conserves energy,
NVT and NPT run and log, frames go to extxyz or .traj."""
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from jaxmat.cli.md import run_md


@pytest.mark.parametrize("ensemble, traj", [("nve", "md.extxyz"), ("nvt", "md.traj"),
                                             ("npt", "md.extxyz")])
def test_run_md_writes_frames_and_log(tmp_path, ensemble, traj):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    path = str(tmp_path / traj)
    rows = run_md(atoms, EMT(), ensemble=ensemble, temperature_K=300.0, timestep_fs=2.0,
                  steps=40, interval=10, trajectory=path, seed=1)
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40]
    assert [r["time_fs"] for r in rows] == [0.0, 20.0, 40.0, 60.0, 80.0]
    frames = read(path, ":")
    assert len(frames) == 5 and frames[-1].info["step"] == 40
    np.testing.assert_allclose(frames[-1].get_potential_energy(), rows[-1]["epot_eV"])
    etot = np.array([r["etot_eV"] for r in rows])
    if ensemble == "nve":  # velocity Verlet at 2 fs on EMT copper: drift well below 1 meV/atom
        assert np.ptp(etot) / len(atoms) < 1e-3
    assert 50 < rows[0]["temperature_K"] < 600
    if ensemble == "npt":
        assert frames[-1].get_volume() != pytest.approx(atoms.get_volume(), rel=1e-12)


def test_run_md_refuses_npt_without_a_cell(tmp_path):
    from ase.build import molecule

    with pytest.raises(ValueError, match="npt needs a periodic cell"):
        run_md(molecule("H2O"), EMT(), ensemble="npt", steps=1,
               trajectory=str(tmp_path / "x.extxyz"))
