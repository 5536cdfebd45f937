"""The label store (ASE SQLite database): round trip, failures, atomic plans; labelling
through executors (serial, threads, worker processes) with the store as the only writer."""
import functools
import json
import os
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import all_changes

from jaxmat import oracle
from jaxmat.workflows.adversarial.store import Store


def _points(xs):
    return [Atoms("H", [[x, 0.0, 0.0]]) for x in xs]


def test_round_trip_labels_and_metadata(tmp_path):
    st = Store(tmp_path / "labels.db")
    xs = [-1.1, -0.9, 0.3]
    ids = st.plan(_points(xs), generation=2, origin="attack", sigma=[0.1, 0.2, 0.3],
                  score=[1.0, 2.0, 3.0])
    assert st.summary() == {"pending": 3, "done": 0, "failed": 0}
    orc = oracle.double_well()
    counts = st.label_pending(orc)
    assert counts == {"done": 3, "failed": 0}
    # reopen from disk
    st2 = Store(tmp_path / "labels.db")
    got = st2.labelled()
    assert [a.info["row_id"] for a in got] == ids
    for a, x, s in zip(got, xs, [0.1, 0.2, 0.3]):
        ref = orc.label(Atoms("H", [[x, 0, 0]]))
        assert a.positions[0, 0] == x
        assert a.get_potential_energy() == pytest.approx(ref.energy, abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), ref.forces, atol=1e-12)
        assert a.info["generation"] == 2 and a.info["origin"] == "attack"
        assert a.info["sigma"] == pytest.approx(s) and a.info["status"] == "done"
        assert a.info["oracle"] == "analytic:double-well"
        assert json.loads(a.info["oracle_settings"]) == {"a": 5.0, "b": 10.0, "c": 1.5}
    assert st2.labelled(max_generation=1) == []
    assert st2.count(origin="attack", status="done") == 3


def test_failed_label_is_recorded_not_dropped(tmp_path):
    st = Store(tmp_path / "labels.db")
    st.plan(_points([0.0, 1.0]), generation=0, origin="seed")

    def fails_on_positive(atoms):
        lab = oracle.double_well().label(atoms)
        if atoms.positions[0, 0] > 0.5:
            return oracle.Label(False, error="SCF not converged", oracle="x", settings={})
        return lab

    class Fake:
        label = staticmethod(fails_on_positive)

    assert st.label_pending(Fake()) == {"done": 1, "failed": 1}
    rows = st.rows(status="failed")
    assert len(rows) == 1 and rows[0].error == "SCF not converged"
    assert rows[0].toatoms().positions[0, 0] == 1.0
    assert len(st.labelled()) == 1 and len(st) == 2


def test_plan_is_all_or_nothing(tmp_path):
    st = Store(tmp_path / "labels.db")
    bad = _points([0.1, 0.2]) + ["not a structure"]
    with pytest.raises(Exception):
        st.plan(bad, generation=1, origin="attack")
    assert len(st) == 0
    st.plan(_points([0.1]), generation=1, origin="attack")
    assert len(st) == 1


def test_add_labelled_keeps_given_labels(tmp_path):
    st = Store(tmp_path / "s.db")
    a = oracle.double_well().label(Atoms("H", [[0.5, 0, 0]])).attach(Atoms("H", [[0.5, 0, 0]]))
    st.add_labelled([a], generation=0, origin="seed", oracle="given")
    (b,) = st.labelled()
    assert b.get_potential_energy() == a.get_potential_energy()
    with pytest.raises(ValueError, match="no energy label"):
        st.add_labelled(_points([0.1]), generation=0, origin="seed")


# --------------------------------------------------------------------------- executors
class _Logged(oracle.DoubleWell):
    """Double well that appends ``x pid`` to ``log`` at every call (picklable)."""

    def __init__(self, log, delay=0.0, **kw):
        super().__init__(**kw)
        self.log, self.delay = log, delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        with open(self.log, "a") as f:
            f.write(f"{float(atoms.positions[0, 0])!r} {os.getpid()}\n")
        time.sleep(self.delay)
        super().calculate(atoms, properties, system_changes)


class _Inline(Executor):
    """The smallest executor: runs each call at submission."""

    def submit(self, fn, /, *args, **kwargs):
        fut = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


@pytest.fixture(scope="module")
def pool():
    with oracle.local_pool(2) as ex:
        yield ex


def _labels_of(st):
    return {r.id: (r.toatoms().positions[0, 0], r.energy, r.toatoms().get_forces().tolist())
            for r in st.rows()}


def test_same_labels_serially_in_threads_and_processes(tmp_path, pool):
    xs = np.linspace(-1.5, 1.5, 9)
    orc = oracle.double_well()
    got = {}
    for name, ex in [("serial", None), ("inline", _Inline()), ("threads", ThreadPoolExecutor(3)),
                     ("processes", pool)]:
        st = Store(tmp_path / f"{name}.db")
        st.plan(_points(xs), generation=0, origin="seed")
        assert st.label_pending(orc, executor=ex) == {"done": 9, "failed": 0}
        got[name] = _labels_of(st)
    for name in ("inline", "threads", "processes"):
        assert got[name] == got["serial"], name
    e = [got["serial"][k][1] for k in sorted(got["serial"])]
    np.testing.assert_allclose(e, oracle.double_well_energy(xs), atol=1e-12)


def test_xtb_labels_the_same_in_worker_processes(tmp_path, pool):
    from jaxmat.data import load_ammonia

    orc = oracle.xtb()
    ref = [orc.label(a) for a in load_ammonia()[:4]]
    st = Store(tmp_path / "xtb.db")
    st.plan(load_ammonia()[:4], generation=0, origin="seed")
    assert st.label_pending(orc, executor=pool) == {"done": 4, "failed": 0}
    assert orc.calls == 4  # the pool's calls were made elsewhere
    for row, lab in zip(st.rows(), ref):
        assert row.energy == pytest.approx(lab.energy, abs=1e-9)
        np.testing.assert_allclose(row.toatoms().get_forces(), lab.forces, atol=1e-9)
        assert row.oracle == "tblite:GFN2-xTB"


class _Probe(oracle.DoubleWell):
    """Reports where it ran: energy = pid, forces[0] = (OMP_NUM_THREADS, OpenMP threads
    in effect after loading tblite, 0)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import tblite.ase  # noqa: F401  (loads the OpenMP runtime tblite uses)
        from threadpoolctl import threadpool_info

        omp = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
        self.results = {"energy": float(os.getpid()), "forces": np.zeros((len(atoms), 3))}
        self.results["forces"][0, :2] = [float(os.environ.get("OMP_NUM_THREADS", "-1")), max(omp)]


def test_workers_are_other_processes_with_one_thread(tmp_path, pool):
    st = Store(tmp_path / "probe.db")
    st.plan(_points([0.0, 0.1, 0.2, 0.3]), generation=0, origin="seed")
    st.label_pending(oracle.Oracle("probe", _Probe, threads=1), executor=pool)
    pids = {int(r.energy) for r in st.rows()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    for r in st.rows():
        np.testing.assert_array_equal(r.toatoms().get_forces()[0, :2], [1.0, 1.0])


def test_interrupted_pool_labelling_resumes_with_every_label_once(tmp_path, pool):
    """Labelling by 2 worker processes (2 calls in flight) stops after 3 stored labels (the
    main process raises in the progress report); a second call labels the rest. Each row is written exactly once;
    the only repeated calls are those in flight at the interruption."""
    st = Store(tmp_path / "labels.db")
    xs = np.linspace(-1.2, 1.2, 10)
    ids = st.plan(_points(xs), generation=1, origin="attack")
    log = str(tmp_path / "calls.log")
    orc = oracle.Oracle("analytic:double-well", functools.partial(_Logged, log, 0.2))
    writes = []
    record = st.record
    st.record = lambda row_id, atoms, label: (writes.append(row_id), record(row_id, atoms, label))

    def stop_after_three(k, total, label):
        if k == 3:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        st.label_pending(orc, progress=stop_after_three, executor=pool, in_flight=2)
    n = st.count(status="done")  # 3, or 4 when two labels arrived together
    assert n in (3, 4) and st.summary() == {"pending": 10 - n, "done": n, "failed": 0}
    assert st.label_pending(orc, executor=pool) == {"done": 10 - n, "failed": 0}
    assert sorted(writes) == ids  # every row written exactly once
    ref = Store(tmp_path / "serial.db")
    ref.plan(_points(xs), generation=1, origin="attack")
    ref.label_pending(oracle.double_well())
    assert [r.energy for r in st.rows()] == [r.energy for r in ref.rows()]
    with open(log) as f:
        calls = [float(ln.split()[0]) for ln in f]
    assert sorted(set(calls)) == sorted(xs.tolist())
    assert len(calls) - len(xs) <= 2


def test_a_call_that_cannot_run_names_the_row_and_keeps_it_pending(tmp_path, pool):
    st = Store(tmp_path / "labels.db")
    ids = st.plan(_points([0.1, 0.2]), generation=0, origin="seed")
    unpicklable = oracle.Oracle("local", lambda: oracle.DoubleWell())
    with pytest.raises(RuntimeError, match=f"labelling row {ids[0]} failed outside the oracle"):
        st.label_pending(unpicklable, executor=pool)
    assert st.summary() == {"pending": 2, "done": 0, "failed": 0}
    with pytest.raises(ValueError, match="workers >= 1"):
        oracle.local_pool(0)
    with pytest.raises(ValueError, match="in_flight must be >= 1"):
        st.label_pending(oracle.double_well(), executor=pool, in_flight=0)


def test_a_dask_client_labels_unchanged(tmp_path):
    """``dask.distributed``: the client itself and its ``concurrent.futures`` view."""
    distributed = pytest.importorskip("distributed")
    xs = np.linspace(-1.5, 1.5, 7)
    orc = oracle.double_well()
    ref = Store(tmp_path / "serial.db")
    ref.plan(_points(xs), generation=0, origin="seed")
    ref.label_pending(orc)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        for name, ex in [("client", client), ("executor", client.get_executor())]:
            st = Store(tmp_path / f"{name}.db")
            st.plan(_points(xs), generation=0, origin="seed")
            assert st.label_pending(orc, executor=ex) == {"done": 7, "failed": 0}
            assert _labels_of(st) == _labels_of(ref), name
