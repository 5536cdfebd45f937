"""The shipped GFN2-xTB MD datasets (``benchmarks/data/xtb``) and their generator
(``scripts/xtb_md_data.py``): labels present, time splits disjoint and complete in the
``jaxmat train`` format, stored labels reproduced by tblite, and resumed runs equal to
uninterrupted ones."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT



def _script():
    spec = importlib.util.spec_from_file_location(
        "xtb_md_data", os.path.join(ROOT, "scripts", "xtb_md_data.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


gen = _script()


def _shipped() -> list[str]:
    out = []
    for key in gen.DATASETS:
        p = gen.paths(key)
        if os.path.exists(p["split"]) and (os.path.exists(p["xyz"]) or os.path.exists(p["gz"])):
            out.append(key)
    return out


def _frame_file(key: str) -> str:
    p = gen.paths(key)
    return p["gz"] if os.path.exists(p["gz"]) else p["xyz"]


def test_ethanol_600K_is_shipped():
    assert "ethanol_600K" in _shipped()


@pytest.mark.parametrize("key", [  # the 22-atom set reads for 40 s: nightly
    pytest.param(k, marks=pytest.mark.slow) if k.startswith("alanine") else k for k in _shipped()])
def test_labels_and_time_split(key):
    from jaxmat.cli.config import DataConfig
    from jaxmat.cli.train import split as read_split
    from jaxmat.data import read_structures

    spec = gen.DATASETS[key]
    path = _frame_file(key)
    if not path.endswith(".gz"):
        assert os.path.getsize(path) <= gen.GZIP_ABOVE
    frames = read_structures(path)
    assert len(frames) == spec.frames
    for a in frames:
        e = a.get_potential_energy()
        f = a.get_forces()
        assert np.isfinite(e) and f.shape == (len(a), 3) and np.isfinite(f).all()
        assert a.info["temperature_K"] == spec.temperature_K
    # energies are total GFN2-xTB energies (eV): all frames within a few eV of each other
    e = np.array([a.get_potential_energy() for a in frames])
    assert e.max() - e.min() < 0.5 * len(frames[0])
    # split: the format jaxmat train reads, disjoint, covering every frame
    split_file = gen.paths(key)["split"]
    idx = read_split(DataConfig(path=path, split_file=split_file), len(frames), seed=0)
    sets = [set(idx[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == len(frames) and set.union(*sets) == set(range(len(frames)))
    with open(split_file) as fh:
        assert set(json.load(fh)) == {"train", "val", "test"}
    # time split: within every trajectory, train frames precede val frames precede test
    traj = np.array([a.info["traj"] for a in frames])
    step = np.array([a.info["step"] for a in frames])
    for t in np.unique(traj):
        parts = [step[[i for i in idx[k] if traj[i] == t]] for k in ("train", "val", "test")]
        n = sum(map(len, parts))
        assert abs(len(parts[0]) - 0.6 * n) <= 1 and abs(len(parts[1]) - 0.07 * n) <= 1
        assert parts[0].max() < parts[1].min() and parts[1].max() < parts[2].min()
        assert np.all(np.diff(np.sort(step[traj == t])) == gen.STRIDE)
        assert step[traj == t].min() == gen.THERMALISE_STEPS + gen.STRIDE


def test_ethanol_labels_recomputed_with_tblite():
    pytest.importorskip("tblite")
    from ase.io import read

    frames = read(_frame_file("ethanol_600K"), index=":")
    for i in (0, len(frames) - 1):
        a = frames[i]
        ref_e, ref_f = a.info["REF_energy"], a.arrays["REF_forces"]
        a.calc = gen.calculator()
        assert abs(a.get_potential_energy() - ref_e) < 1e-5
        assert np.abs(a.get_forces() - ref_f).max() < 1e-4


def test_time_split_rounding_and_errors():
    trajs = [0] * 10 + [1] * 20
    steps = list(range(10, 110, 10))[::-1] + list(range(10, 210, 10))
    s = gen.time_split(trajs, steps)
    assert [len(s[k]) for k in ("train", "val", "test")] == [6 + 12, 1 + 1, 3 + 7]
    assert s["train"][:6] == [4, 5, 6, 7, 8, 9]   # trajectory 0 is stored in reverse
    with pytest.raises(ValueError, match="repeated steps"):
        gen.time_split([0, 0], [10, 10])
    with pytest.raises(ValueError, match="sum"):
        gen.time_split([0], [10], (0.5, 0.2, 0.2))


def _lj():
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=1.0, epsilon=0.05, rc=4.0)


def test_resume_continues_the_same_trajectories(tmp_path, monkeypatch):
    """Stopping after each turn (and after a crash that left frames past the last state
    save) gives the frames of one uninterrupted run (cheap LJ forces stand in for xTB)."""
    from ase.io import read, write

    monkeypatch.setattr(gen, "THERMALISE_STEPS", 20)
    monkeypatch.setattr(gen, "CHUNK", 2)
    monkeypatch.setattr(gen, "CONFORMERS", 2)
    spec = gen.Spec("ethanol", "CCO", 600.0, 8, 2, "evaluation")
    quiet = lambda msg: None  # noqa: E731
    one = gen.generate(spec, out=str(tmp_path / "one"), log=quiet, make_calc=_lj)
    two_dir = str(tmp_path / "two")
    gen.generate(spec, frames=4, out=two_dir, log=quiet, make_calc=_lj)
    p = gen.paths(spec.key, two_dir)
    # a stopped run appended frames but did not save its state: they are dropped
    extra = read(p["xyz"], index="-1:")
    write(p["xyz"], extra * 3, format="extxyz", append=True)
    two = gen.generate(spec, out=two_dir, log=quiet, make_calc=_lj)
    a, b = read(one, index=":"), read(two, index=":")
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        assert (x.info["traj"], x.info["step"]) == (y.info["traj"], y.info["step"])
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.arrays["REF_forces"], y.arrays["REF_forces"])
    # different trajectories are different
    assert not np.allclose(a[0].positions, a[2].positions)
    with open(p["split"]) as fh:
        s = json.load(fh)
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(8))
