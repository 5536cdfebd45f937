"""Active learning loop: configuration, the double-well toy (the attack finds the unsampled
second well), kill -9 and resume with no label lost or computed twice, baselines."""
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmat import active, attack, ensemble
from jaxmat.workflows.adversarial.select import SelectConfig
from jaxmat.workflows.adversarial.store import Store

# A runnable toy: 1-D double well E = 5x^4 - 10x^2 + 1.5x, seeds only where E < -5.5
# (the lower well), a 4-member coordinate-MLP committee. The oracle logs every call
# ("x pid"). Labels in this process unless ``workers`` is given.
TOY = r'''
import functools, json, os, sys, time
import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from jaxmat import active, oracle, potential
from jaxmat.models.coordinate import coordinate_mlp


class Logged(oracle.DoubleWell):
    # logs "x pid" of every call; picklable, so it labels in worker processes too
    def __init__(self, log, delay=0.0, fail_x=None, **kw):
        super().__init__(**kw)
        self.log, self.delay, self.fail_x = log, delay, fail_x

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        x = float(atoms.positions[0, 0])
        with open(self.log, "a") as f:
            f.write(f"{x!r} {os.getpid()}\n")
        time.sleep(self.delay)
        if self.fail_x is not None and abs(x - self.fail_x) < 1e-9:
            raise RuntimeError("SCF not converged (test)")
        super().calculate(atoms, properties, system_changes)


def main(workdir, opts):
    factory = functools.partial(Logged, workdir + "_calls.log", opts.pop("delay", 0.0),
                                opts.pop("fail_x", None))
    orc = oracle.Oracle("analytic:double-well", factory, {"a": 5.0, "b": 10.0, "c": 1.5})
    xs = np.linspace(-1.2, -0.82, 8)
    assert np.all(oracle.double_well_energy(xs) < -5.5)
    seeds = [Atoms("H", [[x, 0.0, 0.0]]) for x in xs]
    model = potential.potential(coordinate_mlp(features=(16, 16), shift=-5.0), stress=False)
    settings = dict(n_members=4, energy_weight=1.0, forces_weight=1.0, kT=3.0, n_starts=64,
                    max_energy=20.0, train_final=False, random_sigma=0.3, md_temperature=3000.0,
                    md_steps=100, md_interval=10, md_starts=2, workers=0,
                    fit=dict(epochs=100, lr=1e-2, batch_size=8),
                    attack=dict(n_steps=40, lr=0.1, sigma=0.2, clamp=1.5, axes=(0,)),
                    select=dict(percentile=50.0, rmsd=0.1, permute=False, align=False,
                                max_per_generation=4))
    for key, value in opts.items():  # nested settings are merged into their section
        settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
    cfg = active.ActiveConfig(workdir=workdir, **settings)
    res = active.run(cfg, model, orc, seeds, cutoff=1.0)  # the coordinate model has no cutoff
    print("RESULT " + json.dumps({"reports": res.reports}))


if __name__ == "__main__":  # worker processes import this file
    main(sys.argv[1], json.loads(sys.argv[2]))
'''


def _script(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    return str(path)


def _run(tmp_path, workdir, **opts):
    return subprocess.Popen([sys.executable, _script(tmp_path), str(workdir), json.dumps(opts)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), out


def _labels(workdir):
    st = Store(os.path.join(workdir, "labels.db"))
    return st, st.rows()


# --------------------------------------------------------------------------- configuration
def test_config_toml_round_trip_and_errors(tmp_path):
    cfg = active.ActiveConfig(workdir="w", strategy="random", kT=0.25,
                              attack=attack.AttackConfig(axes=(0, 2), clamp=0.5),
                              fit={"epochs": 7, "patience": 3},
                              select=SelectConfig(percentile=70.0, fill=True))
    text = cfg.to_toml()
    assert "[active.fit]\nepochs = 7" in text and "[active.attack]" in text
    path = tmp_path / "c.toml"
    path.write_text(text)
    back = active.ActiveConfig.from_toml(path)
    assert back == cfg and back.attack.axes == (0, 2) and back.fit.patience == 3
    assert isinstance(back.fit, ensemble.CommitteeConfig) and back.fit.lr == 2e-3
    (tmp_path / "top.toml").write_text('strategy = "md"\ngenerations = 2\n[select]\nrmsd = 0.2\n')
    top = active.ActiveConfig.from_toml(tmp_path / "top.toml")
    assert top.strategy == "md" and top.select.rmsd == 0.2
    (tmp_path / "bad.toml").write_text("[active]\nkt = 1.0\n")
    with pytest.raises(ValueError, match="bad.toml: active .ActiveConfig.: unknown keys .'kt'"):
        active.ActiveConfig.from_toml(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text("[active.attack]\nsteps = 10\n")
    with pytest.raises(ValueError, match="active.attack .AttackConfig.: unknown keys .'steps'"):
        active.ActiveConfig.from_toml(tmp_path / "bad2.toml")
    (tmp_path / "bad3.toml").write_text('[active.fit]\nepochs = "ten"\n')
    with pytest.raises(ValueError, match="bad3.toml: active.fit.epochs must be int \\| None, got 'ten'"):
        active.ActiveConfig.from_toml(tmp_path / "bad3.toml")
    with pytest.raises(FileNotFoundError):
        active.ActiveConfig.from_toml(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="strategy"):
        active.ActiveConfig(strategy="greedy")
    with pytest.raises(ValueError, match="kT"):
        active.ActiveConfig(kT=0.0)
    with pytest.raises(ValueError, match="attack.seed is set by the loop"):
        active.ActiveConfig(attack={"seed": 3})
    with pytest.raises(ValueError, match="ActiveConfig.select must be"):
        active.ActiveConfig(select=attack.AttackConfig())
    with pytest.raises(ValueError, match="fit.clip = None cannot be written"):
        active.ActiveConfig(fit={"clip": None}).to_toml()


OLD_FLAT = """[active]
workdir = "w"
strategy = "adversarial"
generations = 3
n_members = 4
epochs = 50
lr = 0.01
lr_end = 1e-05
batch_size = 8
kT = 0.5
attack_steps = 20
attack_lr = 0.05
attack_sigma = 0.01
clamp = 0.5
skin = 0.5
axes = [0]
percentile = 80.0
rmsd = 0.05
permute = true
align = true
max_per_generation = 6
fill = false
"""


def test_old_flat_config_is_migrated(tmp_path):
    (tmp_path / "old.toml").write_text(OLD_FLAT)
    cfg = active.ActiveConfig.from_toml(tmp_path / "old.toml")
    assert (cfg.fit.epochs, cfg.fit.lr, cfg.fit.batch_size) == (50, 0.01, 8)
    assert cfg.attack == attack.AttackConfig(n_steps=20, lr=0.05, sigma=0.01, clamp=0.5,
                                             axes=(0,))
    assert cfg.select == SelectConfig(percentile=80.0, max_per_generation=6)
    (tmp_path / "both.toml").write_text(OLD_FLAT + "[active.fit]\nepochs = 9\n")
    with pytest.raises(ValueError, match="'epochs' is given both flat .* fit.epochs"):
        active.ActiveConfig.from_toml(tmp_path / "both.toml")
    # a workdir holding an old flat config.toml resumes when the settings agree
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.toml").write_text(OLD_FLAT)
    same = dataclasses.replace(cfg, workdir=str(work), generations=5)
    loop = active._Loop(same, _free_model(), None, [], 1.0, None, None)
    assert "[active.select]" in (work / "config.toml").read_text()  # rewritten nested
    assert loop.cfg.select.max_per_generation == 6
    (work / "config.toml").write_text(OLD_FLAT)
    other = dataclasses.replace(same, attack=attack.AttackConfig(n_steps=21, lr=0.05,
                                                                 sigma=0.01, clamp=0.5, axes=(0,)))
    with pytest.raises(ValueError, match=r"different settings \['attack.n_steps'\]"):
        active._Loop(other, _free_model(), None, [], 1.0, None, None)


def _free_model():
    from jaxmat import potential
    from jaxmat.models.coordinate import coordinate_mlp

    return potential.potential(coordinate_mlp(features=(4,)), stress=False)


def test_cutoff_comes_from_the_model(tmp_path):
    from jaxmat import potential
    from jaxmat.models import SchNetConfig, schnet

    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=3.0)), stress=False)
    cfg = active.ActiveConfig(workdir=str(tmp_path / "a"), progress=False)
    assert active._Loop(cfg, model, None, [], None, None, None).cutoff == 3.0
    with pytest.raises(ValueError, match="disagrees with the graph cutoff 3.0"):
        active._Loop(cfg, model, None, [], 4.0, None, None)
    with pytest.raises(ValueError, match="declares no graph cutoff"):
        active._Loop(cfg, _free_model(), None, [], None, None, None)


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    old = active.ActiveConfig(workdir=str(tmp_path), kT=0.5)
    (tmp_path / "config.toml").write_text(old.to_toml())
    new = active.ActiveConfig(workdir=str(tmp_path), kT=0.7, generations=9)
    with pytest.raises(ValueError, match=r"different settings \['kT'\]"):
        active.run(new, model=None, oracle=None, seeds=[], cutoff=1.0)
    assert "kT = 0.5" in (tmp_path / "config.toml").read_text()  # not overwritten


# --------------------------------------------------------------------------- the toy
def test_double_well_attack_finds_the_second_well(tmp_path):
    """Seeds only in the lower well (x < -0.79); within a few generations the attack labels
    points past the barrier (x = 0.075) in the unsampled upper well (minimum x = 0.96)."""
    workdir = tmp_path / "dw"
    res, out = _finish(_run(tmp_path, workdir, generations=4))
    st, rows = _labels(str(workdir))
    first = {}
    for r in rows:
        x = r.toatoms().positions[0, 0]
        if r.status == "done" and x > 0.5 and r.energy < -1.5:
            first.setdefault("gen", r.generation)
    assert first, f"second well not reached: {sorted(r.toatoms().positions[0, 0] for r in rows)}"
    assert first["gen"] <= 4
    assert all(r.origin == "attack" for r in rows if r.generation >= 1)
    assert [r["generation"] for r in res["reports"]] == [1, 2, 3, 4]
    assert "gen 1 [adversarial]" in out  # progress per generation


def _calls(workdir) -> list[tuple[float, int]]:
    """(x, pid) of every oracle call of the toy run in ``workdir``."""
    path = str(workdir) + "_calls.log"
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(float(x), int(pid)) for x, pid in (ln.split() for ln in f if ln.strip())]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("workers,resume_workers", [
    (0, 0), pytest.param(2, 1, marks=pytest.mark.slow)])  # the pool variant: 66 s
def test_kill_minus_nine_then_resume_loses_and_repeats_no_label(tmp_path, workers,
                                                                 resume_workers):
    """kill -9 while generation 1 is labelled (in this process, or by 2 worker processes),
    resume (the pooled run with 1 worker): every planned structure is stored exactly once,
    only calls in flight at the kill are repeated, and the workers die with the loop."""
    workdir = tmp_path / "kill"
    db = os.path.join(workdir, "labels.db")
    proc = _run(tmp_path, workdir, generations=2, delay=0.4, fail_x=-1.2, workers=workers,
                select={"max_per_generation": 6})
    planned = None
    t0 = time.time()
    try:
        while time.time() - t0 < 400:  # kill while generation 1 is being labelled
            time.sleep(0.2)
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be killed:\n" + proc.stdout.read())
            if not os.path.exists(db):
                continue
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    n_done = con.execute(
                        "select count(*) from systems where key_value_pairs like '%\"generation\": 1%'"
                        " and key_value_pairs like '%\"status\": \"done\"%'").fetchone()[0]
                    planned = con.execute(
                        "select count(*) from systems where key_value_pairs like "
                        "'%\"generation\": 1%'").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if n_done >= 2 and planned > n_done:
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            pytest.fail("generation 1 never started labelling")
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    workers_pids = {pid for _, pid in _calls(workdir)} - {proc.pid}
    assert len(workers_pids) == workers
    t0 = time.time()
    while any(_alive(p) for p in workers_pids) and time.time() - t0 < 15:
        time.sleep(0.2)
    orphans = [p for p in workers_pids if _alive(p)]
    for p in orphans:  # our own test's workers: clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not orphans, "worker processes outlived the killed loop"
    st, rows = _labels(str(workdir))
    assert st.count(generation=1) == planned and st.count(status="pending") > 0
    done_before = {r.id: (r.toatoms().positions[0, 0], r.energy) for r in rows if r.status == "done"}

    res, out = _finish(_run(tmp_path, workdir, generations=2, fail_x=-1.2, workers=resume_workers,
                            select={"max_per_generation": 6}))
    st, rows = _labels(str(workdir))
    assert st.count(status="pending") == 0
    assert st.count(generation=1) == planned  # the plan was not redone
    # every finished label survived unchanged
    for r in rows:
        if r.id in done_before:
            assert (r.toatoms().positions[0, 0], r.energy) == done_before[r.id]
    # each stored structure was computed once; only the calls in flight at the kill repeat
    calls = [x for x, _ in _calls(workdir)]
    stored = [r.toatoms().positions[0, 0] for r in rows]
    assert len(set(stored)) == len(stored)
    assert sorted(set(calls)) == sorted(stored)
    assert len(calls) - len(stored) <= max(2 * workers, 1)  # the calls in flight
    # the failing seed is recorded as failed, never trained on, and did not stop the loop
    failed = st.rows(status="failed")
    assert len(failed) == 1 and "SCF not converged" in failed[0].error
    assert failed[0].origin == "seed"
    assert [r["generation"] for r in res["reports"]] == [1, 2]
    assert res["reports"][0]["n_train"] == 7
    with open(os.path.join(workdir, "progress.jsonl")) as f:
        assert [json.loads(x)["generation"] for x in f] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "md"])
def test_baselines_label_the_same_budget(tmp_path, strategy):
    workdir = tmp_path / strategy
    # md: 16 replicas start below the median training σ and stop when they rise above it
    md = {"select": {"fill": True, "percentile": 50.0}, "md_starts": 16, "md_interval": 1}
    res, _ = _finish(_run(tmp_path, workdir, generations=2, strategy=strategy,
                          **(md if strategy == "md" else
                             {"select": {"fill": True, "percentile": 0.0}})))
    st, rows = _labels(str(workdir))
    for g in (1, 2):
        assert st.count(generation=g, status="done") == 4
        assert all(r.origin == ("random" if strategy == "random" else "md")
                   for r in rows if r.generation == g)


@pytest.mark.slow
def test_repeated_kills_at_random_moments(tmp_path):
    """kill -9 at random moments (training, attack, checkpointing, labelling) until the run
    completes: every planned structure ends up labelled exactly once.  The first attempts
    are killed 0-2 s after the oracle has made fresh progress, so that the kills land mid-run
    whatever the machine's speed; later attempts run to completion."""
    workdir = tmp_path / "chaos"
    rng = np.random.default_rng(7)
    opts = dict(generations=3, delay=0.05, select={"max_per_generation": 5})

    def n_calls() -> int:
        return len(_calls(workdir))

    kills = 0
    for attempt in range(8):
        proc = _run(tmp_path, workdir, **opts)
        if attempt < 4:
            start, t0 = n_calls(), time.monotonic()
            while proc.poll() is None and n_calls() <= start and time.monotonic() - t0 < 300:
                time.sleep(0.02)
            time.sleep(float(rng.uniform(0.0, 2.0)))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
        break
    else:
        pytest.fail("the run never completed")
    assert kills >= 2
    st, rows = _labels(str(workdir))
    assert st.count(status="pending") == 0 and st.count(status="failed") == 0
    stored = [r.toatoms().positions[0, 0] for r in rows]
    assert len(set(stored)) == len(stored)
    calls = [x for x, _ in _calls(workdir)]
    assert sorted(set(calls)) == sorted(stored)
    assert len(calls) - len(stored) <= kills  # at most the call in flight at each kill
    for g in (1, 2, 3):
        assert 0 < st.count(generation=g) <= 5


def test_stored_overlapping_labels_stay_out_of_training(tmp_path):
    """A label with atoms squeezed together (stored by an older run) must not crash
    retraining: it stays in the store but out of the training set."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    def labelled(pos):
        a = Atoms("NH3", positions=pos)
        a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((4, 3)))
        return a

    good = np.array([[0.0, 0.0, 0.38], [0.94, 0.0, 0.0], [-0.47, 0.81, 0.0], [-0.47, -0.81, 0.0]])
    bad = good.copy()
    bad[3] = bad[2] + [0.03, 0.0, 0.0]  # two H atoms 0.03 Å apart
    from jaxmat import potential
    from jaxmat.models.coordinate import coordinate_mlp

    cfg = active.ActiveConfig(workdir=str(tmp_path), progress=False)
    model = potential.potential(coordinate_mlp(features=(4,)), stress=False)
    loop = active._Loop(cfg, model, None, [], 1.0, None, None)
    loop.store.add_labelled([labelled(good), labelled(bad), labelled(good + 0.1)], 0, "seed")
    kept = loop.training_atoms(1)
    assert [a.info["row_id"] for a in kept] == [1, 3]
    assert loop.store.count(status="done") == 3  # nothing deleted


def test_workers_setting_and_executor_choice(tmp_path):
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    cfg = active.ActiveConfig(workdir=str(tmp_path / "w"), workers=3, progress=False)
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    assert active.ActiveConfig.from_toml(tmp_path / "c.toml").workers == 3
    assert active.ActiveConfig().workers == 1  # a local process pool by default
    with pytest.raises(ValueError, match="workers must be >= 0"):
        active.ActiveConfig(workers=-1)
    with pytest.raises(ValueError, match="active.workers must be int"):
        active.ActiveConfig.from_dict({"workers": "two"})
    loop = active._Loop(cfg, _free_model(), None, [], 1.0, None)
    pool = loop.pool()  # started lazily: no process runs before the first label
    assert isinstance(pool, ProcessPoolExecutor) and pool._max_workers == 3
    assert loop.pool() is pool
    pool.shutdown()
    # the worker count may change when a run resumes; an executor replaces the pool
    serial = dataclasses.replace(cfg, workers=0)
    assert active._Loop(serial, _free_model(), None, [], 1.0, None).pool() is None
    with ThreadPoolExecutor(2) as ex:
        assert active._Loop(serial, _free_model(), None, [], 1.0, None, ex).pool() is ex
