"""Atom graphs: validation, neighbour lists (cutoff, PBC), padded batches, masks.

Conventions (every model and tool relies on them):

* An edge ``e`` joins ``senders[e] = j`` to ``receivers[e] = i``; its vector
  points from atom ``i`` to the periodic image of ``j``::

      vec_e = R[j] - R[i] + shifts[e] @ cell[graph(e)]          (Å)

  ``shifts`` are integer cell offsets stored as floats, so the same batch
  serves for strain derivatives (stress).
* A batch is a :class:`jraph.GraphsTuple` padded to a fixed :class:`Budget`.
  The last graph is a padding graph that owns every padding node and edge;
  ``nodes["mask"]``, ``edges["mask"]`` and ``globals["mask"]`` are ``True`` for
  real entries. Padding edges join the last (padding) node to its own periodic image
  :data:`PAD_DISTANCE` away (shift (1, 0, 0) in the padding graph's cell of
  ``PAD_DISTANCE`` · I), so no edge has zero length and a plain ``jnp.linalg.norm``
  of :func:`edge_vectors` has a finite gradient; padding atom slots of the dense layout
  sit ``PAD_DISTANCE`` apart on the x axis for the same reason. The padding graph's
  ``pbc`` is False, so it has no stress.
* ``nodes``: ``positions`` (N, 3) Å, ``species`` (N,) atomic numbers (0 for
  padding), ``graph`` (N,) graph index, ``mask``; optional ``forces`` (eV/Å).
  ``edges``: ``shifts`` (E, 3), ``mask``. ``globals``: ``cell`` (G, 3, 3) Å,
  ``pbc`` (G, 3), ``n_atoms`` (G,), ``mask``; optional ``energy`` (eV),
  ``stress`` (eV/Å³, ASE sign convention) and any other graph targets.

Two layouts share these names (``layout=`` in :func:`batch` and :class:`GraphLoader`):

* ``"sparse"`` (default): the padded edge list above, for any structure. Edge lists are
  symmetric (every edge ``(i, j, s)`` has its reverse ``(j, i, -s)``; :func:`batch` checks
  it), so a model whose edge weights are the same in both directions computes them once per
  pair (:func:`pair_list`).
* ``"dense"``: for small non-periodic molecules. Every graph owns a block of
  ``n_max`` atom slots (node ``g * n_max + a``; slots past the molecule's size are
  padding nodes with ``mask`` False, so there is no separate padding node) and
  ``K = n_max // 2`` pair slots per atom: slot ``(g, a, k)``, edge index
  ``(g * n_max + a) * K + (k - 1)``, joins receiver ``a`` to sender ``(a + k) % n_max``
  of the same block, for ``k = 1..K``. Each *unordered* pair appears exactly once
  (for even ``n_max`` the duplicated slots ``k = n_max/2, a >= n_max/2`` are masked),
  and ``edges["mask"]`` is True exactly for the pairs of the sparse neighbour list,
  so both layouts hold the same edges. Graph ``g``'s real atoms come first in
  its block; ``n_node[g] = n_max``, ``n_edge[g] = n_max * K``; graphs beyond the
  data are padding graphs (``globals["mask"]`` False). The layout is flagged by
  the key ``globals["dense"]`` ((G,) int32, = n_max); a key is static under ``jit``.
  Pair vectors, sums over graphs and the filter convolution become reshapes, rolls
  and broadcasts (no gather or scatter), and every pair's filter is computed once
  instead of once per direction. Use the helpers :func:`edge_vectors`,
  :func:`convolve` and :func:`graph_sum`, which accept both layouts; a model that
  indexes ``senders``/``receivers`` itself must only be given sparse batches.
  Molecules are independent, so a dense batch also splits into equal chunks of graphs
  (:func:`split_dense`, :func:`merge_chunks`); :func:`jaxmat.core.potential.potential` maps
  over such chunks so that every chunk's edge arrays stay in cache.

Optional line graph (bond graph, :mod:`jaxmat.core.linegraph`; sparse layout only): when the
records carry one, ``edges["line"]`` holds ``senders``/``receivers`` (T,) edge indices and
``mask`` (T,) for T triplets (T = ``Budget.n_triplet``). Padding triplets join the last
edge to itself and are masked. Batches without line graphs are unchanged.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import vesin

MIN_DISTANCE = 0.1  # Å; closer atoms are rejected as overlapping
PAD_DISTANCE = 100.0  # Å; length of padding edges, beyond any cutoff
MAX_Z = 118

Batch = jraph.GraphsTuple


# --------------------------------------------------------------------------- validation
def validate_structure(
    numbers: Any, positions: Any, cell: Any = None, pbc: Any = False, name: str = "structure"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check and normalise one structure; raise ``ValueError`` naming the problem.

    Returns ``(numbers int32 (n,), positions float64 (n, 3) Å, cell (3, 3) Å, pbc (3,) bool)``.
    """
    numbers = np.asarray(numbers)
    positions = np.asarray(positions, dtype=np.float64)
    if numbers.ndim != 1:
        raise ValueError(f"{name}: atomic numbers must be 1-D, got shape {numbers.shape}")
    if numbers.shape[0] == 0:
        raise ValueError(f"{name}: empty structure (no atoms)")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{name}: positions must have shape (n_atoms, 3), got {positions.shape}")
    if positions.shape[0] != numbers.shape[0]:
        raise ValueError(
            f"{name}: mismatched lengths: {numbers.shape[0]} atomic numbers but "
            f"{positions.shape[0]} positions"
        )
    if not np.issubdtype(numbers.dtype, np.integer):
        if not np.all(np.equal(np.mod(numbers, 1), 0)):
            raise ValueError(f"{name}: atomic numbers must be integers")
    numbers = numbers.astype(np.int32)
    bad = (numbers < 1) | (numbers > MAX_Z)
    if bad.any():
        raise ValueError(f"{name}: unknown element with atomic number {int(numbers[bad][0])}")
    if not np.all(np.isfinite(positions)):
        idx = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise ValueError(f"{name}: non-finite (NaN/inf) position for atom {idx}")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"{name}: cell must have shape (3, 3), got {cell.shape}")
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"{name}: non-finite cell")
    if pbc.any():
        # only the periodic cell vectors must span a lattice; vectors along non-periodic
        # directions may be zero or arbitrary (slabs, wires)
        per = cell[pbc]
        norms = np.linalg.norm(per, axis=1)
        gram = abs(np.linalg.det(per @ per.T))  # squared volume spanned by the periodic vectors
        if norms.min() < 1e-12 or np.sqrt(gram) / np.prod(norms) < 1e-8:
            raise ValueError(f"{name}: singular cell (periodic cell vectors {per.tolist()} Å are "
                             "zero or linearly dependent) with periodic boundaries")
    return numbers, positions, cell, pbc


# --------------------------------------------------------------------------- neighbour lists
def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff`` (Å), including periodic images (vesin, O(N)).

    Returns ``(i, j, shifts, d)``: receivers, senders, integer cell offsets (E, 3)
    and distances, such that ``R[j] - R[i] + shifts @ cell`` has length ``d``; sorted
    by ``i`` then ``j``. Works for any triclinic cell, mixed boundaries (slabs, wires),
    atoms outside the cell and cutoffs larger than the cell (many images).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    box = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    if (len(positions) < 2 and not pbc.any()) or cutoff <= 0:
        return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3)), np.zeros(0))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True, sorted=True)
    i, j, shifts, d = nl.compute(positions, box, [bool(p) for p in pbc], quantities="ijSd")
    return (i.astype(np.int32), j.astype(np.int32), shifts.astype(np.float64),
            d.astype(np.float64))


def knn_neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, k: int,
    symmetric: bool = True, tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every atom within ``cutoff`` (Å), periodic images included.

    Neighbours tied with the k-th distance (within ``tol`` Å) are all kept, so the graph does
    not depend on the atom order. With ``symmetric`` the result is made undirected: a pair
    kept in one direction is kept in both. Atoms with fewer than ``k`` neighbours inside the
    cutoff keep all of them. Same return convention as :func:`neighbor_list`.
    """
    if k < 1:
        raise ValueError(f"max_neighbors must be >= 1, got {k}")
    i, j, shifts, d = neighbor_list(positions, cell, pbc, cutoff)
    n = len(positions)
    if len(d) == 0:
        return i, j, shifts, d
    order = np.lexsort((d, i))  # by receiver, then distance
    i_s, d_s = i[order], d[order]
    start = np.searchsorted(i_s, np.arange(n))
    count = np.bincount(i_s, minlength=n)
    kth = np.full(n, np.inf)
    has = count > 0
    kth[has] = d_s[start[has] + np.minimum(count[has], k) - 1]
    keep = d <= kth[i] + tol
    if symmetric:
        fwd = _edge_keys(i, j, shifts, n)
        rev = _edge_keys(j, i, -shifts, n)
        kept = np.sort(fwd[keep])
        pos = np.clip(np.searchsorted(kept, rev), 0, len(kept) - 1)
        keep = keep | (kept[pos] == rev)
    return i[keep], j[keep], shifts[keep], d[keep]


# --------------------------------------------------------------------------- records
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


# --------------------------------------------------------------------------- budgets
def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(max(x, 1) / multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Fixed batch shape: total nodes, edges and graphs (including the padding graph), and
    line-graph triplets (0 for batches without line graphs)."""

    n_node: int
    n_edge: int
    n_graph: int
    n_triplet: int = 0

    def fits(self, n_node: int, n_edge: int, n_graph: int, n_triplet: int = 0) -> bool:
        return (n_node < self.n_node and n_edge <= self.n_edge and n_graph < self.n_graph
                and n_triplet <= self.n_triplet)


def estimate_budget(records: Sequence[Record], batch_size: int, multiple: int = 64) -> Budget:
    """Budget for ``batch_size`` graphs per batch, from the data's size statistics
    (:func:`fixed_budget` for ``min(batch_size, len(records))`` graphs)."""
    if not records:
        raise ValueError("cannot estimate a padding budget from an empty dataset")
    return fixed_budget(records, min(batch_size, len(records)), multiple=multiple)


def fixed_budget(records: Sequence[Record], batch_size: int, layout: str = "sparse",
                 multiple: int = 64, edge_margin: float = 1.0) -> Budget:
    """A budget for ``batch_size`` graphs per batch that does not depend on how many
    records there are (only on their sizes), so calls on more or fewer structures of the
    same kind reuse one compiled program; every single record fits.

    Sparse: ``batch_size + 1`` graphs; nodes, edges (times ``edge_margin``, head-room for
    neighbour lists that grow) and line-graph triplets are the mean per record times
    ``batch_size`` plus the largest record (for ``batch_size`` 1: the largest record),
    rounded up to ``multiple``. Dense: ``batch_size`` graphs of ``n_max`` atom slots (the
    largest record).
    """
    if not records:
        raise ValueError("cannot estimate a padding budget from an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if layout == "dense":
        _check_dense(records)
        n_max = max(r.n_node for r in records)
        return Budget(batch_size * n_max, batch_size * n_max * (n_max // 2), batch_size)
    if layout != "sparse":
        raise ValueError(f"fixed_budget needs layout 'sparse' or 'dense', got {layout!r}")

    def size(counts, margin=1.0, extra=0):
        c = np.asarray(counts, dtype=float)
        if batch_size == 1:  # one record per batch: no room needed for packing
            return _round_up(margin * c.max() + extra, multiple)
        return _round_up(margin * batch_size * c.mean() + c.max() + extra, multiple)

    n_triplet = 0
    if any(r.line_senders is not None for r in records):
        n_triplet = size([r.n_triplet for r in records])
    return Budget(size([r.n_node for r in records], extra=1),
                  size([r.n_edge for r in records], edge_margin), batch_size + 1, n_triplet)


LAYOUTS = ("sparse", "dense", "auto")


def dense_budget(records: Sequence[Record], batch_size: int) -> Budget:
    """Budget of the dense layout: ``batch_size`` graphs of ``n_max`` atom slots
    (the largest structure) and ``n_max // 2`` pair slots per atom."""
    if not records:
        raise ValueError("cannot estimate a padding budget from an empty dataset")
    _check_dense(records)
    n_max = max(r.n_node for r in records)
    g = max(1, min(batch_size, len(records)))
    return Budget(g * n_max, g * n_max * (n_max // 2), g)


def _check_dense(records: Sequence[Record]) -> None:
    for k, r in enumerate(records):
        if np.any(r.pbc):
            raise ValueError(
                f"record {k}: the dense layout is for non-periodic molecules; "
                "periodic structures need layout='sparse'")


def dense_shape(budget: Budget) -> tuple[int, int, int]:
    """``(n_graph, n_max, K)`` of a dense budget; ValueError if it is not one."""
    g = budget.n_graph
    n_max = budget.n_node // g if g else 0
    if g < 1 or n_max * g != budget.n_node or budget.n_edge != g * n_max * (n_max // 2):
        raise ValueError(f"{budget} is not a dense budget (n_graph * n_max atom slots, "
                         "n_graph * n_max * (n_max // 2) pair slots)")
    return g, n_max, n_max // 2


def choose_layout(records: Sequence[Record], batch_size: int = 32,
                  layouts: Sequence[str] = ("sparse",)) -> str:
    """Among the model's ``layouts`` (its ``model.graph.layouts``; default sparse only):
    ``"dense"`` when allowed, every structure is a non-periodic molecule and the dense pair
    slots cost at most 1.5x the neighbour list's unordered pairs, else ``"sparse"``."""
    if "dense" not in layouts or not records or any(np.any(r.pbc) for r in records):
        if "sparse" not in layouts:
            raise ValueError(f"no layout of {list(layouts)} fits these structures "
                             "(the dense layout is for non-periodic molecules)")
        return "sparse"
    n_max = max(r.n_node for r in records)
    pairs = sum(r.n_edge for r in records) / 2
    return "dense" if len(records) * n_max * (n_max // 2) <= 1.5 * max(pairs, 1) else "sparse"


def pack(records: Sequence[Record], budget: Budget, order: Sequence[int] | None = None,
         layout: str = "sparse") -> list[list[int]]:
    """Group record indices (in ``order``) into batches that fit ``budget``: greedily
    by atoms/edges (sparse) or ``n_graph`` at a time (dense)."""
    order = range(len(records)) if order is None else order
    if layout == "dense":
        g, n_max, _ = dense_shape(budget)
        order = list(order)
        for k in order:
            if records[k].n_node > n_max:
                raise ValueError(f"record {k} ({records[k].n_node} atoms) exceeds the "
                                 f"dense budget's {n_max} atom slots")
        return [order[s:s + g] for s in range(0, len(order), g)]
    groups: list[list[int]] = []
    cur: list[int] = []
    nn = ne = nt = 0
    for k in order:
        r = records[k]
        if not budget.fits(r.n_node, r.n_edge, 1, r.n_triplet):
            raise ValueError(
                f"record {k} ({r.n_node} atoms, {r.n_edge} edges, {r.n_triplet} triplets) "
                f"exceeds the budget {budget}"
            )
        if not budget.fits(nn + r.n_node, ne + r.n_edge, len(cur) + 1, nt + r.n_triplet):
            groups.append(cur)
            cur, nn, ne, nt = [], 0, 0, 0
        cur.append(k)
        nn += r.n_node
        ne += r.n_edge
        nt += r.n_triplet
    if cur:
        groups.append(cur)
    return groups


def batch(records: Sequence[Record], budget: Budget | None = None, dtype=np.float32,
          layout: str = "sparse") -> Batch:
    """Concatenate records into one padded :data:`Batch` (numpy leaves).

    Without a budget, a sparse batch is padded by one node, one graph and no extra
    edges; a dense one has one graph per record and ``n_max`` = the largest record.
    Targets present on only some records are zero-filled with a ``<name>_mask``.
    ``layout`` is ``"sparse"``, ``"dense"`` or ``"auto"`` (see the module docstring; here
    ``"auto"`` is always sparse: :class:`GraphLoader` with ``model=`` can choose dense).
    Records with line graphs give ``edges["line"]`` (all records must have one).
    """
    if not records:
        raise ValueError("cannot batch an empty list of structures")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    if layout == "auto":
        layout = choose_layout(records)
    with_line = [r.line_senders is not None for r in records]
    if any(with_line) and not all(with_line):
        raise ValueError("cannot batch records with and without line graphs together")
    if layout == "dense":
        if any(with_line):
            raise ValueError("line graphs need layout='sparse'")
        return _batch_dense(records, budget, dtype)
    return _batch_sparse(records, budget, dtype)


def _edge_keys(receivers: np.ndarray, senders: np.ndarray, shifts: np.ndarray,
               n: int) -> np.ndarray:
    """One int64 per directed edge ``(i, j, shift)`` of an ``n``-atom structure."""
    s = np.rint(shifts).astype(np.int64)
    span = int(np.abs(s).max()) + 1 if len(s) else 1
    base = 2 * span + 1
    code = ((s[:, 0] + span) * base + (s[:, 1] + span)) * base + (s[:, 2] + span)
    return (receivers.astype(np.int64) * n + senders) * base**3 + code


def check_symmetric(record: Record, name: str = "structure") -> None:
    """ValueError unless every edge ``(i, j, s)`` has its reverse ``(j, i, -s)`` (true of
    every cutoff list; :func:`pair_list` relies on it)."""
    fwd = _edge_keys(record.receivers, record.senders, record.shifts, record.n_node)
    rev = _edge_keys(record.senders, record.receivers, -record.shifts, record.n_node)
    fwd_s, rev_s = np.sort(fwd), np.sort(rev)
    if not np.array_equal(fwd_s, rev_s):
        bad = np.flatnonzero(~np.isin(rev, fwd_s))
        e = int(bad[0]) if len(bad) else 0
        raise ValueError(
            f"{name}: the edge list is not symmetric: edge {e} ({int(record.receivers[e])} <- "
            f"{int(record.senders[e])}, shift {record.shifts[e].tolist()}) has no reverse edge")


def _batch_sparse(records: Sequence[Record], budget: Budget | None, dtype) -> Batch:
    """The sparse layout (module docstring): concatenated edge lists, one padding graph."""
    for k, r in enumerate(records):
        check_symmetric(r, f"record {k}")
    n_real_nodes = sum(r.n_node for r in records)
    n_real_edges = sum(r.n_edge for r in records)
    n_real_trip = sum(r.n_triplet for r in records)
    if budget is None:
        budget = Budget(n_real_nodes + 1, n_real_edges, len(records) + 1, n_real_trip)
    if not budget.fits(n_real_nodes, n_real_edges, len(records), n_real_trip):
        raise ValueError(
            f"{len(records)} structures ({n_real_nodes} atoms, {n_real_edges} edges, "
            f"{n_real_trip} triplets) do not fit the budget {budget}"
        )
    N, E, G = budget.n_node, budget.n_edge, budget.n_graph
    g = len(records)
    n_node = np.zeros(G, np.int32)
    n_edge = np.zeros(G, np.int32)
    n_node[:g] = [r.n_node for r in records]
    n_edge[:g] = [r.n_edge for r in records]
    n_node[-1] = N - n_real_nodes
    n_edge[-1] = E - n_real_edges
    offsets = np.concatenate([[0], np.cumsum(n_node[:g])])[:-1]

    positions = np.zeros((N, 3), dtype)
    positions[:n_real_nodes] = np.concatenate([r.positions for r in records])
    species = np.zeros(N, np.int32)
    species[:n_real_nodes] = np.concatenate([r.numbers for r in records])
    node_graph = np.repeat(np.arange(G, dtype=np.int32), n_node)
    senders = np.full(E, N - 1, np.int32)
    receivers = np.full(E, N - 1, np.int32)
    senders[:n_real_edges] = np.concatenate([r.senders + o for r, o in zip(records, offsets)])
    receivers[:n_real_edges] = np.concatenate([r.receivers + o for r, o in zip(records, offsets)])
    shifts = np.zeros((E, 3), dtype)
    shifts[:n_real_edges] = np.concatenate([r.shifts for r in records])
    shifts[n_real_edges:, 0] = 1.0  # padding edges: PAD_DISTANCE long (module docstring)
    cell = np.zeros((G, 3, 3), dtype)
    cell[:g] = [r.cell for r in records]
    cell[g:] = PAD_DISTANCE * np.eye(3)
    pbc = np.zeros((G, 3), bool)
    pbc[:g] = [r.pbc for r in records]

    nodes = {
        "positions": positions,
        "species": species,
        "graph": node_graph,
        "mask": np.arange(N) < n_real_nodes,
    }
    edges = {"shifts": shifts, "mask": np.arange(E) < n_real_edges}
    if records[0].line_senders is not None:
        edges["line"] = _line_edges(records, n_edge[:g], E, budget.n_triplet)
    globals_ = {
        "cell": cell,
        "pbc": pbc,
        "n_atoms": n_node.astype(dtype) * (np.arange(G) < g),
        "mask": np.arange(G) < g,
    }
    _fill_targets(records, nodes, globals_, offsets, G, dtype)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, senders=senders, receivers=receivers,
        globals=globals_, n_node=n_node, n_edge=n_edge,
    )


def _line_edges(records: Sequence[Record], n_edge: np.ndarray, E: int, T: int) -> dict:
    """Bond-graph triplets of a sparse batch; padding triplets join the last edge to itself."""
    n_real = sum(r.n_triplet for r in records)
    e_off = np.concatenate([[0], np.cumsum(n_edge)])[:-1]
    l_send = np.full(T, E - 1, np.int32)
    l_recv = np.full(T, E - 1, np.int32)
    if n_real:
        l_send[:n_real] = np.concatenate([r.line_senders + o for r, o in zip(records, e_off)])
        l_recv[:n_real] = np.concatenate([r.line_receivers + o for r, o in zip(records, e_off)])
    return {"senders": l_send, "receivers": l_recv, "mask": np.arange(T) < n_real}


def _fill_targets(records: Sequence[Record], nodes: dict, globals_: dict,
                  offsets: Sequence[int], G: int, dtype) -> None:
    """Add graph targets (``globals``) and node targets (``nodes``) with masks."""
    N = nodes["mask"].shape[0]
    g = len(records)
    for key in sorted({k for r in records for k in r.targets}):
        have = [key in r.targets for r in records]
        shape = next(np.shape(r.targets[key]) for r in records if key in r.targets)
        arr = np.zeros((G, *shape), dtype)
        for a, r in enumerate(records):
            if key in r.targets:
                arr[a] = r.targets[key]
        globals_[key] = arr
        if not all(have):
            globals_[f"{key}_mask"] = np.array(have + [False] * (G - g))
    for key in sorted({k for r in records for k in r.node_targets}):
        shape = next(r.node_targets[key].shape[1:] for r in records if key in r.node_targets)
        arr = np.zeros((N, *shape), dtype)
        have = np.zeros(N, bool)
        for r, o in zip(records, offsets):
            if key in r.node_targets:
                arr[o:o + r.n_node] = r.node_targets[key]
                have[o:o + r.n_node] = True
        nodes[key] = arr
        if not have[nodes["mask"]].all():
            nodes[f"{key}_mask"] = have


def _batch_dense(records: Sequence[Record], budget: Budget | None, dtype) -> Batch:
    """The dense layout (module docstring): per-graph atom blocks and pair slots."""
    _check_dense(records)
    if budget is None:
        n_max = max(r.n_node for r in records)
        budget = Budget(len(records) * n_max, len(records) * n_max * (n_max // 2), len(records))
    G, n, K = dense_shape(budget)
    g = len(records)
    if g > G or any(r.n_node > n for r in records):
        raise ValueError(
            f"{g} structures (largest {max(r.n_node for r in records)} atoms) do not fit "
            f"the dense budget of {G} graphs x {n} atom slots")
    N, E = G * n, G * n * K
    sizes = np.zeros(G, np.int32)
    sizes[:g] = [r.n_node for r in records]
    offsets = np.arange(g) * n
    positions = np.zeros((G, n, 3), dtype)
    positions[..., 0] = PAD_DISTANCE * np.arange(1, n + 1)  # padding slots, far apart
    species = np.zeros((G, n), np.int32)
    adj = np.zeros((G, n, n), bool)  # adj[g, i, j]: j is a neighbour of i
    for a, r in enumerate(records):
        positions[a, :r.n_node] = r.positions
        species[a, :r.n_node] = r.numbers
        adj[a, r.receivers, r.senders] = True
    node_mask = np.arange(n)[None, :] < sizes[:, None]
    i = np.arange(n)[:, None]
    k = np.arange(1, K + 1)[None, :]
    j = (i + k) % n  # (n, K) sender slot of pair slot (i, k)
    unique = ~((2 * k == n) & (i >= n // 2))
    edge_mask = adj[:, i, j] & unique[None]
    base = (np.arange(G) * n)[:, None, None]
    receivers = np.broadcast_to(base + i[None], (G, n, K)).reshape(E).astype(np.int32)
    senders = np.broadcast_to(base + j[None], (G, n, K)).reshape(E).astype(np.int32)
    cell = np.zeros((G, 3, 3), dtype)
    nodes = {
        "positions": positions.reshape(N, 3),
        "species": species.reshape(N),
        "graph": np.repeat(np.arange(G, dtype=np.int32), n),
        "mask": node_mask.reshape(N),
    }
    edges = {"shifts": np.zeros((E, 3), dtype), "mask": edge_mask.reshape(E)}
    globals_ = {
        "cell": cell,
        "pbc": np.zeros((G, 3), bool),
        "n_atoms": sizes.astype(dtype),
        "mask": np.arange(G) < g,
        "dense": np.full(G, n, np.int32),
    }
    _fill_targets(records, nodes, globals_, offsets, G, dtype)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, senders=senders, receivers=receivers, globals=globals_,
        n_node=np.full(G, n, np.int32), n_edge=np.full(G, n * K, np.int32),
    )


def _partial_targets(records: Sequence[Record]) -> tuple[dict, dict]:
    """Graph and node target names (with per-entry shapes) that only some records have."""
    out: tuple[dict, dict] = ({}, {})
    for attr, found in zip(("targets", "node_targets"), out):
        for key in sorted({k for r in records for k in getattr(r, attr)}):
            have = [getattr(r, attr)[key] for r in records if key in getattr(r, attr)]
            if len(have) < len(records):
                shape = np.shape(have[0])
                found[key] = shape if attr == "targets" else shape[1:]
    return out


def _same_targets(b: Batch, partial: tuple[dict, dict]) -> Batch:
    """Give a batch every target in ``partial`` (zero-filled where missing) with its
    ``<name>_mask``, so that all batches of a dataset have the same keys (one compile)."""
    if not (partial[0] or partial[1]):
        return b
    glob, nodes = dict(b.globals), dict(b.nodes)
    dtype = b.nodes["positions"].dtype
    for store, found in ((glob, partial[0]), (nodes, partial[1])):
        real = np.asarray(store["mask"])
        for key, shape in found.items():
            if key not in store:
                store[key] = np.zeros((len(real), *shape), dtype)
                store[f"{key}_mask"] = np.zeros(len(real), bool)
            elif f"{key}_mask" not in store:
                store[f"{key}_mask"] = real.copy()
    return b._replace(globals=glob, nodes=nodes)


class GraphLoader:
    """Padded batches of records with fixed shapes; reshuffled per epoch, reproducibly.

    ``loader.epoch(k)`` yields the batches of epoch ``k`` (order from ``seed`` and ``k``).
    A target that only some records carry is in every batch, with its ``<name>_mask``.
    ``layout`` is ``"sparse"``, ``"dense"`` (small molecules) or ``"auto"``
    (:func:`choose_layout` among the layouts ``model.graph`` declares; sparse without a
    ``model``); every batch of a loader has the same shapes. With ``model`` an explicit
    layout the model does not declare raises here, before any batch is built.
    """

    def __init__(
        self,
        records: Sequence[Record],
        batch_size: int = 32,
        budget: Budget | None = None,
        shuffle: bool = True,
        seed: int = 0,
        layout: str = "sparse",
        model: Any = None,
    ):
        if not records:
            raise ValueError("GraphLoader needs at least one structure")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
        self.records = list(records)
        self.batch_size = batch_size
        allowed = model.graph.layouts if model is not None else ("sparse",)
        if layout == "auto":
            layout = choose_layout(self.records, batch_size, allowed)
        elif model is not None and layout not in allowed:
            raise ValueError(f"{model.name} supports the batch layouts {list(allowed)}, "
                             f"not {layout!r}")
        self.layout = layout
        if self.layout == "dense":
            self.budget = budget or dense_budget(self.records, batch_size)
        else:
            self.budget = budget or estimate_budget(self.records, batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self._partial = _partial_targets(self.records)
        self._fixed: list[Batch] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.records))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        if not self.shuffle:
            if self._fixed is None:
                self._fixed = [self._batch(grp) for grp in self._groups(None)]
            yield from self._fixed
            return
        for grp in self._groups(self.order(epoch)):
            yield self._batch(grp)

    def _groups(self, order) -> list[list[int]]:
        return pack(self.records, self.budget, order, self.layout)

    def _batch(self, grp: list[int]) -> Batch:
        return _same_targets(batch([self.records[k] for k in grp], self.budget, layout=self.layout),
                             self._partial)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def __len__(self) -> int:
        return len(self._groups(self.order(0)))


# --------------------------------------------------------------------------- device-side helpers
def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """Euclidean norm whose gradient is finite (zero) at x = 0."""
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def is_dense(batch: Batch) -> bool:
    """True for the dense layout (a static property: the key ``globals["dense"]``)."""
    return isinstance(batch.globals, dict) and "dense" in batch.globals


def _dense_dims(batch: Batch) -> tuple[int, int, int]:
    G = n_graphs(batch)
    n = n_nodes(batch) // G
    return G, n, n // 2


def _rolled(x: jax.Array, K: int) -> jax.Array:
    """(G, n, ...) -> (G, n, K, ...) with ``out[:, a, k-1] = x[:, (a + k) % n]``."""
    n = x.shape[1]
    if K == 0:
        return jnp.zeros(x.shape[:2] + (0,) + x.shape[2:], x.dtype)
    xx = jnp.concatenate([x, x[:, :K]], axis=1)
    return jnp.stack([xx[:, k:k + n] for k in range(1, K + 1)], axis=2)


def edge_vectors(batch: Batch) -> jax.Array:
    """Edge vectors R[j] - R[i] + shift @ cell (Å), shape (E, 3), j = sender, i = receiver."""
    pos = batch.nodes["positions"]
    if is_dense(batch):
        G, n, K = _dense_dims(batch)
        p = pos.reshape(G, n, 3)
        return (_rolled(p, K) - p[:, :, None, :]).reshape(-1, 3)
    return _vectors(batch, batch.senders, batch.receivers, batch.edges["shifts"])


def _vectors(batch: Batch, senders: jax.Array, receivers: jax.Array,
             shifts: jax.Array) -> jax.Array:
    """R[senders] - R[receivers] + shifts @ cell of the receiver's graph (Å)."""
    pos = batch.nodes["positions"]
    cell = batch.globals["cell"][batch.nodes["graph"][receivers]]
    return pos[senders] - pos[receivers] + jnp.einsum("ek,ekl->el", shifts, cell)


class Pairs(NamedTuple):
    """Each unordered neighbour pair of a batch once (see :func:`pair_list`): ``receivers``
    i, ``senders`` j (P,), integer cell ``shifts`` (P, 3) and ``mask`` (P,)."""

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array


def pair_list(batch: Batch) -> Pairs:
    """The unordered pairs of a batch, for models whose edge weights are the same in both
    directions (functions of the distance: SchNet's filters).

    Dense: the pair slots. Sparse: the edge list is symmetric (every edge ``(i, j, s)`` has
    its reverse ``(j, i, -s)``, as every cutoff list; :func:`batch` checks it), and the
    direction kept is ``i < j``, or for an atom and its own image the one whose first
    non-zero shift component is positive. ``P = ceil(E / 2)``; slots past the pairs are
    masked copies of the last edge. Use with :func:`pair_vectors` and ``convolve(...,
    pairs=)``: half the per-edge work of the directed list.
    """
    if is_dense(batch):
        return Pairs(batch.senders, batch.receivers, batch.edges["shifts"], batch.edges["mask"])
    s, r, sh = batch.senders, batch.receivers, batch.edges["shifts"]
    E = s.shape[0]
    first = jnp.where(sh[:, 0] != 0, sh[:, 0], jnp.where(sh[:, 1] != 0, sh[:, 1], sh[:, 2]))
    keep = batch.edges["mask"] & ((r < s) | ((r == s) & (first > 0)))
    P = (E + 1) // 2
    idx = jnp.nonzero(keep, size=P, fill_value=E - 1)[0]
    mask = jnp.arange(P) < jnp.sum(keep)
    return Pairs(s[idx], r[idx], sh[idx], mask)


def pair_vectors(batch: Batch, pairs: Pairs) -> jax.Array:
    """Vectors R[j] - R[i] + shift @ cell (Å), shape (P, 3), of :func:`pair_list`'s pairs."""
    if is_dense(batch):
        return edge_vectors(batch)
    return _vectors(batch, pairs.senders, pairs.receivers, pairs.shifts)


def convolve(h: jax.Array, w: jax.Array, batch: Batch, pairs: Pairs | None = None) -> jax.Array:
    """Continuous-filter convolution ``out_i = sum_{j in N(i)} w_ij * h_j``.

    ``h`` (N, F) node features, ``w`` edge weights that are the same for both directions
    of a pair (a function of the distance, as SchNet's filters), zero on masked edges:
    (E, F) on the batch's edges, or (P, F) on ``pairs`` (:func:`pair_list`), each of which
    sends ``h_j`` to ``i`` and ``h_i`` to ``j``. Sparse: gathers + ``segment_sum``; dense
    (where the pairs are the edges): rolls of the atom blocks.
    """
    if not is_dense(batch):
        n = h.shape[0]
        if pairs is None:
            return jax.ops.segment_sum(h[batch.senders] * w, batch.receivers, n)
        return (jax.ops.segment_sum(h[pairs.senders] * w, pairs.receivers, n)
                + jax.ops.segment_sum(h[pairs.receivers] * w, pairs.senders, n))
    G, n, K = _dense_dims(batch)
    F = h.shape[1:]
    h3 = h.reshape(G, n, *F)
    if K == 0:
        return jnp.zeros_like(h)
    w4 = w.reshape(G, n, K, *F)
    out = jnp.sum(_rolled(h3, K) * w4, axis=2)  # i <- j = i + k
    # messages from i to j = i + k, stored at slot (i, k); split (whose transpose is a
    # concatenation) rather than K slices (whose transposes are K full-size pads)
    back = jnp.split(h3[:, :, None] * w4, K, axis=2)
    for k in range(1, K + 1):
        out = out + jnp.roll(back[k - 1][:, :, 0], k, axis=1)
    return out.reshape(h.shape)


def n_graphs(batch: Batch) -> int:
    return batch.n_node.shape[0]


def n_nodes(batch: Batch) -> int:
    return batch.nodes["species"].shape[0]


def graph_sum(x: jax.Array, batch: Batch) -> jax.Array:
    """Sum per-node values into their graphs (padding nodes must already be zero)."""
    if is_dense(batch):
        G = n_graphs(batch)
        return x.reshape(G, -1, *x.shape[1:]).sum(axis=1)
    return jax.ops.segment_sum(x, batch.nodes["graph"], n_graphs(batch))


def to_device(b: Batch) -> Batch:
    return jax.tree_util.tree_map(jnp.asarray, b)


# --------------------------------------------------------------------------- dense chunks
def dense_chunks(batch: Batch, max_slots: int = 2048) -> int:
    """Number of equal chunks of graphs to process a dense batch in, so that each chunk
    has at most ``max_slots`` pair slots (its edge arrays stay in cache); 1 for sparse
    batches, small batches, or when the graph count has no fitting divisor."""
    if not is_dense(batch):
        return 1
    G = n_graphs(batch)
    per_graph = max(batch.senders.shape[0] // G, 1)
    bound = max_slots // per_graph
    if bound >= G:
        return 1
    size = max((d for d in range(1, bound + 1) if G % d == 0), default=1)
    return G // size if 4 * size >= bound and size > 0 else 1


def split_dense(batch: Batch, n_chunks: int) -> Batch:
    """A dense batch as ``n_chunks`` stacked dense batches of ``G / n_chunks`` graphs
    (a leading chunk axis on every leaf); :func:`merge_chunks` undoes it for outputs."""
    if not is_dense(batch):
        raise ValueError("split_dense needs a dense batch")
    G = n_graphs(batch)
    if n_chunks < 1 or G % n_chunks:
        raise ValueError(f"cannot split {G} graphs into {n_chunks} equal chunks")
    n_local = n_nodes(batch) // n_chunks

    def r(x):
        return x.reshape(n_chunks, x.shape[0] // n_chunks, *x.shape[1:])

    return batch._replace(
        nodes={k: r(v) for k, v in batch.nodes.items()},
        edges={k: r(v) for k, v in batch.edges.items()},
        globals={k: r(v) for k, v in batch.globals.items()},
        senders=r(batch.senders) % n_local, receivers=r(batch.receivers) % n_local,
        n_node=r(batch.n_node), n_edge=r(batch.n_edge))


def merge_chunks(tree: Any) -> Any:
    """Per-chunk outputs (leading chunk axis) -> outputs of the whole dense batch."""
    return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
