"""The label store (ASE SQLite database): round trip, failures, atomic plans."""
import json

import numpy as np
import pytest
from ase import Atoms

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
