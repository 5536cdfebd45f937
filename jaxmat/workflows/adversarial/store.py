"""A persistent store of planned and labelled structures: an ASE database (SQLite).

Every row has ``status`` (``pending`` → ``done`` | ``failed``), ``generation``, ``origin``
(``seed`` / ``attack`` / ``random`` / ``md`` / any tag), and once labelled ``oracle``,
``oracle_settings`` (JSON), ``label_seconds`` and, for failures, ``error``. Candidates
may carry ``sigma`` (committee force σ at selection, eV/Å) and ``score``. Labels are
written as soon as they are computed, one transaction per label; a batch of planned
candidates is written in one transaction, so a run killed at any point either has the
whole plan or none of it, and every finished label. Existing rows are never deleted.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxmat.workflows.adversarial.oracle import Label, Oracle

PENDING, DONE, FAILED = "pending", "done", "failed"


def _kvp(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            v = v.item()
        if isinstance(v, float) and not np.isfinite(v):
            continue
        out[k] = v
    return out


class Store:
    """``Store(path)`` opens (or creates) an ASE SQLite database at ``path``."""

    def __init__(self, path: str | os.PathLike):
        import ase.db

        self.path = os.path.abspath(os.fspath(path))
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.db = ase.db.connect(self.path, type="db", append=True)

    # ------------------------------------------------------------------ writing
    def plan(self, structures: Sequence[Any], generation: int, origin: str,
             sigma: Sequence[float] | None = None, score: Sequence[float] | None = None,
             **extra: Any) -> list[int]:
        """Write candidates as ``pending`` rows in ONE transaction; returns their ids."""
        ids = []
        with self.db:
            for k, atoms in enumerate(structures):
                a = atoms.copy()
                a.calc = None
                kv = dict(status=PENDING, generation=int(generation), origin=str(origin), seq=k,
                          sigma=None if sigma is None else float(sigma[k]),
                          score=None if score is None else float(score[k]), **extra)
                ids.append(self.db.write(a, **_kvp(kv)))
        return ids

    def record(self, row_id: int, atoms: Any, label: Label) -> None:
        """Store the outcome of one oracle call on row ``row_id`` (one transaction)."""
        kv = dict(status=DONE if label.ok else FAILED, oracle=label.oracle,
                  oracle_settings=_settings_json(label.settings), label_seconds=label.seconds,
                  error=None if label.ok else (label.error or "unknown error"))
        self.db.update(int(row_id), atoms=label.attach(atoms), **_kvp(kv))

    def add_labelled(self, structures: Sequence[Any], generation: int, origin: str,
                     oracle: str = "given", settings: dict | None = None) -> list[int]:
        """Store structures that already carry labels (attached calculator) as ``done``."""
        ids = []
        with self.db:
            for k, atoms in enumerate(structures):
                if atoms.calc is None or "energy" not in atoms.calc.results:
                    raise ValueError(f"structure {k} carries no energy label")
                ids.append(self.db.write(atoms, **_kvp(dict(
                    status=DONE, generation=int(generation), origin=str(origin), seq=k,
                    oracle=oracle, oracle_settings=_settings_json(settings or {})))))
        return ids

    # ------------------------------------------------------------------ labelling
    def label_pending(self, oracle: Oracle, generation: int | None = None,
                      progress: Callable[[int, int, Label], None] | None = None) -> dict[str, int]:
        """Label every ``pending`` row (of ``generation``, if given) in id order, storing each
        label as soon as it is computed. Returns counts of ``done`` and ``failed``."""
        rows = self.rows(status=PENDING, generation=generation)
        counts = {DONE: 0, FAILED: 0}
        for k, row in enumerate(rows):
            atoms = row.toatoms()
            label = oracle.label(atoms)
            self.record(row.id, atoms, label)
            counts[DONE if label.ok else FAILED] += 1
            if progress is not None:
                progress(k + 1, len(rows), label)
        return counts

    # ------------------------------------------------------------------ reading
    def rows(self, **query: Any) -> list:
        """Rows matching key-value ``query`` (``None`` values ignored), in id order."""
        q = {k: v for k, v in query.items() if v is not None}
        return sorted(self.db.select(**q), key=lambda r: r.id)

    def count(self, **query: Any) -> int:
        q = {k: v for k, v in query.items() if v is not None}
        return self.db.count(**q)

    def labelled(self, max_generation: int | None = None, origin: str | None = None) -> list:
        """``done`` structures as ASE Atoms with their labels (and the row's key-value pairs
        in ``atoms.info``), optionally only up to ``max_generation``."""
        out = []
        for row in self.rows(status=DONE, origin=origin):
            if max_generation is not None and row.generation > max_generation:
                continue
            a = row.toatoms(add_additional_information=False)
            a.info.update(row.key_value_pairs)
            a.info["row_id"] = row.id
            out.append(a)
        return out

    def __iter__(self) -> Iterator:
        return iter(self.rows())

    def __len__(self) -> int:
        return self.db.count()

    def summary(self) -> dict[str, int]:
        return {s: self.count(status=s) for s in (PENDING, DONE, FAILED)}


def _settings_json(settings: dict) -> str:
    import json

    return json.dumps(settings, sort_keys=True)
