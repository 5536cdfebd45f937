"""Oracles: analytic double well, GFN2-xTB (tblite), PySCF, failures recorded as labels."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from jaxmat import oracle
from jaxmat.data import load_ammonia


def _fd_forces(orc, atoms, h=1e-4):
    f = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            e = []
            for s in (h, -h):
                a = atoms.copy()
                a.positions[i, k] += s
                e.append(orc.label(a).energy)
            f[i, k] = -(e[0] - e[1]) / (2 * h)
    return f


def test_double_well_matches_formula_and_finite_differences():
    orc = oracle.double_well()
    x = np.array([-1.0355, 0.3, 0.96])
    atoms = Atoms("H3", positions=np.c_[x, [0.1, 0.2, 0.3], [0, 0, 1.0]])
    lab = orc.label(atoms)
    assert lab.ok and lab.oracle == "analytic:double-well"
    assert lab.settings == {"a": 5.0, "b": 10.0, "c": 1.5}
    assert lab.energy == pytest.approx(float(np.sum(5 * x**4 - 10 * x**2 + 1.5 * x)), abs=1e-12)
    np.testing.assert_allclose(lab.forces, _fd_forces(orc, atoms), atol=1e-6)
    assert np.all(lab.forces[:, 1:] == 0)
    # the two wells: lower near x = -1.036 (E = -6.527), upper near 0.960 (E = -3.529)
    xs = np.linspace(-2, 2, 400001)
    e = oracle.double_well_energy(xs)
    assert xs[np.argmin(e)] == pytest.approx(-1.0356, abs=1e-3)
    assert e.min() == pytest.approx(-6.5271, abs=1e-3)
    right = xs > 0.2
    assert xs[right][np.argmin(e[right])] == pytest.approx(0.9602, abs=1e-3)


def test_xtb_labels_ammonia_silently_with_settings(capfd):
    orc = oracle.xtb()
    a = load_ammonia()[0]
    lab = orc.label(a)
    out = capfd.readouterr()
    assert "iter" not in out.out.lower() and "scf" not in out.out.lower(), "tblite printed its SCF table"
    assert lab.ok and lab.error is None
    assert lab.oracle == "tblite:GFN2-xTB"
    assert lab.settings["method"] == "GFN2-xTB" and lab.settings["accuracy"] == 1.0
    assert "tblite_version" in lab.settings
    assert -125 < lab.energy < -115  # GFN2-xTB total energy of NH3 (eV)
    fd = _fd_forces(orc, a, h=2e-4)
    np.testing.assert_allclose(lab.forces, fd, atol=2e-3)
    np.testing.assert_allclose(lab.forces.sum(0), 0.0, atol=1e-6)  # no net force


def test_xtb_unconverged_scf_is_a_failed_label():
    lab = oracle.xtb(max_iterations=2).label(load_ammonia()[0])
    assert not lab.ok
    assert "not converged" in lab.error
    assert lab.energy is None and lab.oracle == "tblite:GFN2-xTB"
    assert lab.attach(load_ammonia()[0]).calc is None


class _Broken(Calculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self, mode, **kw):
        super().__init__(**kw)
        self.mode = mode

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.mode == "raise":
            raise RuntimeError("boom")
        self.results = {"energy": float("nan"), "forces": np.zeros((len(self.atoms), 3))}


@pytest.mark.parametrize("mode,msg", [("raise", "RuntimeError: boom"), ("nan", "non-finite energy")])
def test_any_failure_becomes_a_failed_label(mode, msg):
    orc = oracle.Oracle("broken", lambda: _Broken(mode), {"mode": mode})
    lab = orc.label(Atoms("H2", [[0, 0, 0], [0, 0, 0.7]]))
    assert not lab.ok and msg in lab.error
    assert lab.settings == {"mode": mode} and orc.calls == 1


def test_from_calculator_records_parameters():
    from ase.calculators.lj import LennardJones

    orc = oracle.Oracle.from_calculator(LennardJones(sigma=1.1, epsilon=0.2))
    lab = orc.label(Atoms("Ar2", [[0, 0, 0], [0, 0, 1.3]]))
    assert lab.ok and lab.oracle == "LennardJones"
    assert lab.settings["sigma"] == 1.1 and lab.settings["epsilon"] == 0.2
    assert '"sigma": 1.1' in orc.settings_json


class _Slow(Calculator):
    """E = Σ z·x of the positions, F = −z per atom; sleeps inside ``calculate`` so that two
    threads sharing the instance would interleave."""
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import time

        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions[:, 0].copy()
        time.sleep(0.002)
        forces = np.zeros((len(x), 3))
        forces[:, 0] = -x
        self.results = {"energy": float(x.sum()), "forces": forces}


def test_a_shared_calculator_labels_one_structure_at_a_time_under_threads():
    from concurrent.futures import ThreadPoolExecutor

    orc = oracle.Oracle.from_calculator(_Slow(), "slow")
    structs = [Atoms("H2", [[0.1 * k, 0, 0], [0.1 * k + 1.0, 0, 0]]) for k in range(40)]
    with ThreadPoolExecutor(4) as pool:
        labels = list(pool.map(orc.label, structs))
    for a, lab in zip(structs, labels):
        x = a.positions[:, 0]
        assert lab.ok and lab.energy == pytest.approx(x.sum())
        np.testing.assert_allclose(lab.forces[:, 0], -x)  # its own structure's forces


def test_pyscf_h2_energy_and_forces():
    pytest.importorskip("pyscf")
    orc = oracle.pyscf(xc=None, basis="sto-3g")
    h2 = Atoms("H2", [[0, 0, 0], [0, 0, 0.74]])
    lab = orc.label(h2)
    assert lab.ok and lab.oracle == "pyscf:HF/sto-3g"
    # RHF/STO-3G total energy of H2 at 0.74 Å is -1.1167 Hartree
    assert lab.energy / 27.211386 == pytest.approx(-1.1167, abs=2e-4)
    fd = _fd_forces(orc, h2, h=1e-3)
    np.testing.assert_allclose(lab.forces, fd, atol=1e-3)
    assert lab.settings["basis"] == "sto-3g" and "pyscf_version" in lab.settings


def test_thread_cap_and_bad_threads():
    orc = oracle.xtb()
    assert orc.threads == 1
    with orc.limit_threads():
        lab = orc.label(load_ammonia()[1])
    assert lab.ok
    assert oracle.double_well().threads is None
    with pytest.raises(ValueError, match="threads"):
        oracle.Oracle("x", oracle.DoubleWell, threads=0)


def test_oracles_pickle_for_worker_processes():
    import pickle

    from ase.calculators.lj import LennardJones

    nh3 = load_ammonia()[0]
    h2 = Atoms("H2", [[0, 0, 0], [0, 0, 0.74]])
    cases = [(oracle.xtb(), nh3), (oracle.double_well(), h2),
             (oracle.Oracle.from_calculator(LennardJones(sigma=1.1)), h2)]
    try:
        import pyscf  # noqa: F401
        cases.append((oracle.pyscf(xc=None, basis="sto-3g"), h2))
    except ImportError:
        pass
    for orc, atoms in cases:
        with orc.limit_threads():  # a thread controller in use is not part of the pickle
            pass
        back = pickle.loads(pickle.dumps(orc))
        assert (back.name, back.settings, back.threads) == (orc.name, orc.settings, orc.threads)
        a, b = orc.label(atoms), back.label(atoms)
        assert a.ok and b.ok and a.energy == b.energy, orc.name
        np.testing.assert_array_equal(a.forces, b.forces)
    with pytest.raises(Exception, match="pickle"):
        pickle.dumps(oracle.Oracle("local", lambda: oracle.DoubleWell()))
