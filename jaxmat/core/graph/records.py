"""Records: one structure with its neighbour list and labels, on the host (numpy).

A structure becomes a record in one place, :func:`records`, from the graph spec of the model
that will read it (:class:`jaxmat.core.protocol.GraphSpec`: cutoff, k nearest neighbours,
line graph). Every record carries the spec it was built for, and every consumer (loaders,
``predict``, the calculator, MD, attacks, the CLI) refuses records of another spec
(:func:`check_records`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmat.core.graph.labels import _formula, read_label
from jaxmat.core.graph.linegraph import line_graph
from jaxmat.core.graph.neighborlist import knn_neighbor_list, neighbor_list
from jaxmat.core.graph.structure import MIN_DISTANCE, validate_structure
from jaxmat.core.protocol import GraphSpec, as_spec


@dataclasses.dataclass
class Record:
    """One structure with its neighbour list, on the host (numpy).

    ``targets`` holds graph-level labels (``energy`` eV, ``stress`` eV/Å³ (3, 3), or any
    array); ``node_targets`` holds per-atom labels (``forces`` eV/Å, ...). ``line_senders``/
    ``line_receivers`` (line-graph specs) index pairs of edges that share an atom
    (:func:`jaxmat.core.graph.linegraph.line_graph`). ``spec``: the graph spec the record was
    built for (None for a record assembled by hand).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    node_targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    line_senders: np.ndarray | None = None
    line_receivers: np.ndarray | None = None
    spec: GraphSpec | None = None

    @property
    def n_node(self) -> int:
        return len(self.numbers)

    @property
    def n_edge(self) -> int:
        return len(self.senders)

    @property
    def n_triplet(self) -> int:
        return 0 if self.line_senders is None else len(self.line_senders)


def _graph_spec(spec: Any) -> GraphSpec:
    """The graph-building part of ``spec`` (layouts do not change a record)."""
    s = as_spec(spec)
    if s.cutoff is None:
        raise ValueError("the graph spec has no cutoff (the model reads no atom graph); "
                         "records need a cutoff in Å")
    return GraphSpec(s.cutoff, s.max_neighbors, s.line_graph)


def make_record(
    numbers: Any,
    positions: Any,
    spec: Any,
    cell: Any = None,
    pbc: Any = False,
    targets: dict[str, Any] | None = None,
    node_targets: dict[str, Any] | None = None,
    name: str = "structure",
) -> Record:
    """Validate a structure (Å) and build its graph for ``spec`` (a :class:`GraphSpec`, a
    model or bundle, or a cutoff in Å): every pair within the cutoff, or the nearest
    neighbours (:func:`knn_neighbor_list`, undirected), plus the line graph when asked."""
    spec = _graph_spec(spec)
    numbers, positions, cell, pbc = validate_structure(numbers, positions, cell, pbc, name)
    if spec.max_neighbors is None:
        i, j, shifts, d = neighbor_list(positions, cell, pbc, spec.cutoff)
    else:
        i, j, shifts, d = knn_neighbor_list(positions, cell, pbc, spec.cutoff, spec.max_neighbors)
    if len(d) and d.min() < MIN_DISTANCE:
        e = int(np.argmin(d))
        raise ValueError(
            f"{name}: overlapping atoms {int(i[e])} and {int(j[e])} at {d[e]:.3g} Å "
            f"(< {MIN_DISTANCE} Å)"
        )
    n = len(numbers)
    node_targets = {k: np.asarray(v, dtype=np.float64) for k, v in (node_targets or {}).items()}
    for k, v in node_targets.items():
        if v.shape[0] != n:
            raise ValueError(f"{name}: '{k}' has {v.shape[0]} rows for {n} atoms")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name}: non-finite values in '{k}'")
    targets = {k: np.asarray(v, dtype=np.float64) for k, v in (targets or {}).items()}
    ls = lr = None
    if spec.line_graph:
        ls, lr = line_graph(j, i, shifts, n)
    return Record(numbers, positions, cell, pbc, j, i, shifts, targets, node_targets, ls, lr,
                  spec)


def atoms_to_record(atoms: Any, spec: Any, name: str | None = None,
                    energy_key: str | None = None, forces_key: str | None = None,
                    stress_key: str | None = None) -> Record:
    """ASE ``Atoms`` -> :class:`Record` of ``spec`` with its labels.

    Energy (eV), forces (eV/Å) and stress (eV/Å³) are read by :func:`read_label`: from the
    given ``*_key`` (an error names the keys found when it is absent), else from the
    calculator's results or the first of :data:`LABEL_KEYS` in ``atoms.info``/``atoms.arrays``
    (``REF_energy``, ``dft_forces``, ...). Other graph labels come from ``atoms.info`` keys
    ``target_<name>``.
    """
    name = name or _formula(atoms)
    targets, node_targets = {}, {}
    for kind, key in (("energy", energy_key), ("forces", forces_key), ("stress", stress_key)):
        value = read_label(atoms, kind, key, name)
        if value is not None:
            (node_targets if kind == "forces" else targets)[kind] = value
    for key, value in atoms.info.items():
        if key.startswith("target_"):
            targets[key[len("target_"):]] = np.asarray(value, dtype=np.float64)
    return make_record(atoms.numbers, atoms.positions, spec, cell=np.asarray(atoms.cell),
                       pbc=atoms.pbc, targets=targets, node_targets=node_targets, name=name)


def records(data: Sequence[Any], spec: Any, *, labels: bool = True,
            energy_key: str | None = None, forces_key: str | None = None,
            stress_key: str | None = None) -> list[Record]:
    """The one way structures become records: ``data`` (ASE Atoms, or records already built,
    which are checked) for ``spec`` (a :class:`GraphSpec`, a model or bundle that declares
    one, or a cutoff in Å). ``labels=False`` drops the labels (prediction). Errors name the
    structure's index."""
    if len(data) == 0:
        raise ValueError("no structures given")
    spec = _graph_spec(spec)
    out = []
    for k, s in enumerate(data):
        if isinstance(s, Record):
            r = check_records([s], spec, f"structure {k}")[0]
        elif hasattr(s, "numbers") and hasattr(s, "get_positions"):
            r = atoms_to_record(s, spec, name=f"structure {k} ({_formula(s)})",
                                energy_key=energy_key, forces_key=forces_key,
                                stress_key=stress_key)
        else:
            raise ValueError(f"structure {k}: expected ASE Atoms or a jaxmat Record, got "
                             f"{type(s).__name__}")
        out.append(r if labels else dataclasses.replace(r, targets={}, node_targets={}))
    return out


def records_from_atoms(atoms_list: Sequence[Any], spec: Any = None, *,
                       cutoff: float | None = None, max_neighbors: int | None = None,
                       energy_key: str | None = None, forces_key: str | None = None,
                       stress_key: str | None = None) -> list[Record]:
    """:func:`records` of ASE structures with their labels; ``cutoff``/``max_neighbors``
    (Å) stand for ``GraphSpec(cutoff, max_neighbors)`` when no ``spec`` is given."""
    if (spec is None) == (cutoff is None):
        raise ValueError("give the graph spec (a model, bundle or GraphSpec) or a cutoff in Å, "
                         "not both or neither")
    if spec is not None and max_neighbors is not None:
        raise ValueError("max_neighbors is part of the graph spec; set it there")
    return records(atoms_list, spec or GraphSpec(cutoff=cutoff, max_neighbors=max_neighbors),
                   energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)


def check_records(recs: Sequence[Record], spec: Any, name: str = "model") -> list[Record]:
    """``recs`` if they were built for ``spec`` (its cutoff, neighbours and line graph),
    else ``ValueError`` naming both specs. Records without a spec (assembled by hand) pass
    when no edge is longer than the cutoff; they get a line graph when the spec needs one.
    A spec without a cutoff (a model that declares no graph) takes the records' own graphs."""
    spec = as_spec(spec)
    want = GraphSpec(spec.cutoff, spec.max_neighbors, spec.line_graph)
    out = []
    for k, r in enumerate(recs):
        if r.spec is not None:
            if spec.cutoff is not None and r.spec.key != want.key:
                raise ValueError(
                    f"{name}: record {k} was built for the graph ({r.spec.describe()}) but the "
                    f"model reads ({want.describe()}); build records with "
                    "jaxmat.core.graph.records(structures, model)")
            out.append(r)
            continue
        if spec.cutoff is not None and r.n_edge:
            d = np.linalg.norm(r.positions[r.senders] - r.positions[r.receivers]
                               + r.shifts @ r.cell, axis=1)
            if d.max() > spec.cutoff + 1e-6:
                raise ValueError(f"{name}: record {k} has edges up to {d.max():.3f} Å, longer "
                                 f"than the model's graph cutoff {spec.cutoff:g} Å; build "
                                 "records with jaxmat.core.graph.records(structures, model)")
        if spec.line_graph and r.line_senders is None:
            ls, lr = line_graph(r.senders, r.receivers, r.shifts, r.n_node)
            r = dataclasses.replace(r, line_senders=ls, line_receivers=lr)
        out.append(r)
    return out
