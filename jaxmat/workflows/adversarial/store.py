"""A persistent store of planned and labelled structures: an ASE database (SQLite).

Every row has ``status`` (``pending`` → ``done`` | ``failed``), ``generation``, ``origin``
(``seed`` / ``attack`` / ``random`` / ``md`` / any tag), and once labelled ``oracle``,
``oracle_settings`` (JSON), ``label_seconds`` and, for failures, ``error``. Candidates
may carry ``sigma`` (committee force σ at selection, eV/Å) and ``score``. Labels are
written as soon as they are computed, one transaction per label; a batch of planned
candidates is written in one transaction, so a run killed at any point either has the
whole plan or none of it, and every finished label. Existing rows are never deleted.
Labels may be computed elsewhere (an executor's workers); only the process holding the
store writes to it.
"""
from __future__ import annotations

import functools
import itertools
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
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
                      progress: Callable[[int, int, Label], None] | None = None,
                      executor: Any = None, in_flight: int | None = None) -> dict[str, int]:
        """Label every ``pending`` row (of ``generation``, if given), storing each label as
        soon as it is computed. Returns counts of ``done`` and ``failed``.

        Without ``executor`` the oracle runs here, in id order. With one (any
        ``concurrent.futures.Executor``: :func:`~jaxmat.workflows.adversarial.oracle.local_pool`,
        a thread pool, ``dask.distributed.Client``; anything whose ``submit(fn, arg)``
        returns a future with ``add_done_callback`` and ``result``) at most ``in_flight``
        rows (None: all) are submitted at a time and this process, the single writer,
        stores the labels as their futures complete (completion order; the labels that have
        arrived together in one transaction: a commit costs ~50 ms). A run killed mid-way
        keeps every stored label; rows whose results had not arrived stay pending and are
        labelled on the next call (at most ``in_flight`` calls are then repeated; a pool's
        queue may hold submitted calls that can no longer be cancelled).
        A future that raises (a worker died, the oracle cannot be pickled) cancels the rest
        and raises ``RuntimeError`` naming the row; labels stored before stay.
        """
        rows = self.rows(status=PENDING, generation=generation)
        counts = {DONE: 0, FAILED: 0}

        def store(batch):
            with self.db:  # one transaction
                for row, atoms, label in batch:
                    self.record(row.id, atoms, label)
            for _, _, label in batch:
                counts[DONE if label.ok else FAILED] += 1
                if progress is not None:
                    progress(counts[DONE] + counts[FAILED], len(rows), label)

        if executor is None:
            for row in rows:
                atoms = row.toatoms()
                store([(row, atoms, oracle.label(atoms))])
            return counts
        if in_flight is not None and in_flight < 1:
            raise ValueError(f"in_flight must be >= 1 or None, got {in_flight}")
        finished: queue.Queue = queue.Queue()
        running = {}
        todo = iter(enumerate(rows))

        def submit(n: int) -> None:
            for k, row in itertools.islice(todo, n):
                atoms = row.toatoms()
                fut = executor.submit(oracle.label, atoms)
                running[k] = (row, atoms, fut)
                fut.add_done_callback(functools.partial(_put, finished, k))

        try:
            submit(len(rows) if in_flight is None else in_flight)
            while running:
                keys = [finished.get()]
                while not finished.empty():
                    keys.append(finished.get_nowait())
                batch = []
                for key in keys:
                    row, atoms, fut = running.pop(key)
                    try:
                        batch.append((row, atoms, fut.result()))
                    except (Exception, CancelledError) as err:
                        store(batch)
                        raise RuntimeError(f"labelling row {row.id} failed outside the oracle "
                                           f"({type(err).__name__}: {err}); stored labels are "
                                           "kept, unfinished rows stay pending") from err
                store(batch)
                submit(len(batch))
        finally:
            for _, _, fut in running.values():
                fut.cancel()
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


def _put(q: queue.Queue, key: int, _future: Any) -> None:
    q.put(key)


def _settings_json(settings: dict) -> str:
    import json

    return json.dumps(settings, sort_keys=True)
