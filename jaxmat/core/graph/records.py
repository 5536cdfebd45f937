"""Records: one structure with its neighbour list and labels, on the host (numpy)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmat.core.graph.neighborlist import knn_neighbor_list, neighbor_list
from jaxmat.core.graph.structure import MIN_DISTANCE, validate_structure


@dataclasses.dataclass
class Record:
    """One structure with its neighbour list, on the host (numpy).

    ``targets`` holds graph-level labels (``energy`` eV, ``stress`` eV/Å³ (3, 3), or any
    array); ``node_targets`` holds per-atom labels (``forces`` eV/Å, ...). ``line_senders``/
    ``line_receivers`` (optional, from :func:`jaxmat.core.linegraph.add_line_graph`) index pairs
    of edges that share an atom.
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

    @property
    def n_node(self) -> int:
        return len(self.numbers)

    @property
    def n_edge(self) -> int:
        return len(self.senders)

    @property
    def n_triplet(self) -> int:
        return 0 if self.line_senders is None else len(self.line_senders)


def make_record(
    numbers: Any,
    positions: Any,
    cutoff: float,
    cell: Any = None,
    pbc: Any = False,
    targets: dict[str, Any] | None = None,
    node_targets: dict[str, Any] | None = None,
    name: str = "structure",
    max_neighbors: int | None = None,
) -> Record:
    """Validate a structure and build its neighbour list (cutoff in Å).

    With ``max_neighbors`` the graph keeps only the nearest neighbours of each atom
    (:func:`knn_neighbor_list`, undirected); the default keeps every pair within the cutoff.
    """
    numbers, positions, cell, pbc = validate_structure(numbers, positions, cell, pbc, name)
    if max_neighbors is None:
        i, j, shifts, d = neighbor_list(positions, cell, pbc, cutoff)
    else:
        i, j, shifts, d = knn_neighbor_list(positions, cell, pbc, cutoff, max_neighbors)
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
    return Record(numbers, positions, cell, pbc, j, i, shifts, targets, node_targets)


def _formula(atoms: Any) -> str:
    """Chemical formula for messages; unknown atomic numbers or no atoms give "structure"."""
    try:
        return atoms.get_chemical_formula() or "structure"
    except (IndexError, KeyError):
        return "structure"


# label names tried in order when no key is given: ASE calculator results first, then the
# common extxyz conventions of potential-training codes (``atoms.info`` / ``atoms.arrays``)
LABEL_KEYS = {
    "energy": ("energy", "REF_energy", "dft_energy", "DFT_energy", "total_energy", "Energy"),
    "forces": ("forces", "REF_forces", "dft_forces", "DFT_forces", "force", "Forces"),
    "stress": ("stress", "REF_stress", "dft_stress", "DFT_stress", "Stress"),
}


def _label_sources(atoms: Any) -> list[tuple[str, dict]]:
    calc = getattr(atoms, "calc", None)
    res = getattr(calc, "results", None) or {}
    return [("calculator", dict(res)), ("info", atoms.info), ("arrays", atoms.arrays)]


def label_keys_found(atoms: Any) -> list[str]:
    """Every label-like key a structure carries (calculator results, info, arrays)."""
    skip = {"numbers", "positions"}
    return sorted({k for _, src in _label_sources(atoms) for k in src if k not in skip})


def read_label(atoms: Any, kind: str, key: str | None = None,
               name: str = "structure") -> np.ndarray | None:
    """The ``kind`` label (``energy`` eV, ``forces`` eV/Å, ``stress`` eV/Å³ as (3, 3)) of a
    structure, from ``key`` when given (``ValueError`` naming the keys found if absent), else
    from the first of :data:`LABEL_KEYS` present; None when none is."""
    if kind not in LABEL_KEYS:
        raise ValueError(f"unknown label kind {kind!r}; choose from {sorted(LABEL_KEYS)}")
    keys = (key,) if key else LABEL_KEYS[kind]
    for k in keys:
        for where, src in _label_sources(atoms):
            if where == "calculator" and k != kind:
                continue  # calculator results use ASE's own names only
            if k in src and src[k] is not None:
                return _as_label(kind, src[k], k, name)
    if key:
        raise ValueError(f"{name}: no {kind} label under the key {key!r}; keys found: "
                         f"{label_keys_found(atoms)}")
    return None


def _as_label(kind: str, value: Any, key: str, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if kind == "energy" and v.size != 1:
        raise ValueError(f"{name}: energy label {key!r} has shape {v.shape}, expected a scalar")
    if kind == "stress":
        from ase.stress import voigt_6_to_full_3x3_stress

        if v.shape == (6,):
            v = voigt_6_to_full_3x3_stress(v)
        elif v.shape == (9,):
            v = v.reshape(3, 3)
        if v.shape != (3, 3):
            raise ValueError(f"{name}: stress label {key!r} has shape {v.shape}, "
                             "expected 6 (Voigt), 9 or (3, 3)")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: non-finite values in the {kind} label {key!r}")
    return v.reshape(()) if kind == "energy" else v


def atoms_to_record(atoms: Any, cutoff: float, name: str | None = None,
                    max_neighbors: int | None = None, energy_key: str | None = None,
                    forces_key: str | None = None, stress_key: str | None = None) -> Record:
    """ASE ``Atoms`` -> :class:`Record` with its labels.

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
    return make_record(
        atoms.numbers,
        atoms.positions,
        cutoff,
        cell=np.asarray(atoms.cell),
        pbc=atoms.pbc,
        targets=targets,
        node_targets=node_targets,
        name=name,
        max_neighbors=max_neighbors,
    )


def records_from_atoms(atoms_list: Sequence[Any], cutoff: float,
                       max_neighbors: int | None = None, energy_key: str | None = None,
                       forces_key: str | None = None,
                       stress_key: str | None = None) -> list[Record]:
    """Convert many ASE structures (labels as in :func:`atoms_to_record`); errors name the
    structure's index."""
    return [atoms_to_record(a, cutoff, name=f"structure {k} ({_formula(a)})",
                            max_neighbors=max_neighbors, energy_key=energy_key,
                            forces_key=forces_key, stress_key=stress_key)
            for k, a in enumerate(atoms_list)]
