"""On-device neighbour lists for MD and attacks: a cell list inside ``jit``.

The list holds every pair closer than ``cutoff + skin`` (Å) with the edge conventions of
:mod:`jaxmat.core.graph` (``vec = R[senders] - R[receivers] + shifts @ cell``), padded to a
static ``capacity``. It is rebuilt on the device only when an atom moved more than
``skin / 2`` since the last build (Verlet), so a model with a cutoff at ``cutoff`` sees
every pair it needs at every step. All sizes are static: when the system outgrows them
(more pairs than ``capacity``, more atoms in a cell than ``cell_capacity``, or a cell
that shrank below what the grid assumes) the list sets ``overflow``; the caller then
reallocates outside ``jit`` with :func:`allocate` and repeats the work (the jax-md
``partition`` pattern). The lists are written here rather than taken from jax-md because
the graph format needs integer image shifts (cells smaller than twice the cutoff, slabs),
which jax-md's minimum-image displacement does not give.

Cost is linear in the number of atoms: every atom scans the ``(2 reach + 1)^3`` cells
around its own, ``cell_capacity`` slots each.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.core import graph


# the cell grid is shifted by this fraction of each cell vector, so that the atoms of a
# perfect crystal (fractions 0, 1/4, 1/2, ...) do not sit on the faces of grid cells
GRID_SHIFT = np.array([0.0371, 0.0529, 0.0617])


@dataclasses.dataclass(frozen=True)
class ListSpec:
    """Static sizes of an on-device list (hashable: one compiled program per spec).

    ``grid``: cells along each cell vector (1 along non-periodic ones); ``reach``: cell
    layers scanned on each side (0 along non-periodic ones); ``capacity``: edges;
    ``cell_capacity``: atom slots per cell."""

    n_atoms: int
    cutoff: float
    skin: float
    capacity: int
    grid: tuple[int, int, int]
    reach: tuple[int, int, int]
    cell_capacity: int
    pbc: tuple[bool, bool, bool]

    @property
    def offsets(self) -> np.ndarray:
        """(O, 3) integer cell offsets scanned around an atom's cell."""
        return np.array(list(itertools.product(*[range(-r, r + 1) for r in self.reach])),
                        dtype=np.int32)


class Neighbors(NamedTuple):
    """A device neighbour list (a pytree; stack it for replicas).

    ``senders``/``receivers`` (E,) int32 (padding entries point at atom ``n_atoms``, one past
    the last), ``shifts`` (E, 3) float cell offsets, ``mask`` (E,) bool, ``reference``
    (N, 3) Å positions and ``ref_cell`` (3, 3) Å at the last build, ``complement`` (3, 3)
    unit vectors completing the non-periodic directions, ``overflow`` () bool (sticky),
    ``n_builds`` () int32."""

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array
    reference: jax.Array
    ref_cell: jax.Array
    complement: jax.Array
    overflow: jax.Array
    n_builds: jax.Array


def _heights(cell: np.ndarray) -> np.ndarray:
    vol = abs(np.linalg.det(cell))
    return vol / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)


def _complement(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Rows replacing the non-periodic cell vectors by an orthonormal completion."""
    out = np.eye(3)
    if pbc.any() and not pbc.all():
        out[~pbc] = np.linalg.svd(cell[pbc])[2][int(pbc.sum()):]
    return out


def _full_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    return np.where(pbc[:, None], cell, _complement(cell, pbc))


def _round_up(x: float, multiple: int = 64) -> int:
    return int(math.ceil(max(x, 1) / multiple) * multiple)


def _cell_counts(frac: np.ndarray, grid: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Atoms per cell, counting an atom within ``eps`` of a cell face in both cells (the
    device bins in float32, so an atom on a face may land on either side)."""
    lo = np.clip(np.floor(frac * grid - eps).astype(int) % grid, 0, grid - 1)
    hi = np.clip(np.floor(frac * grid + eps).astype(int) % grid, 0, grid - 1)
    ids = []
    for pick in itertools.product((0, 1), repeat=3):
        c3 = np.where(np.array(pick, bool), hi, lo)
        ids.append(((c3[:, 0] * grid[1] + c3[:, 1]) * grid[2] + c3[:, 2]) * len(frac)
                + np.arange(len(frac)))
    cells = np.unique(np.concatenate(ids)) // len(frac)
    return np.bincount(cells, minlength=int(np.prod(grid)))


def plan(positions: np.ndarray, cell: np.ndarray | None, pbc, cutoff: float,
         skin: float = 0.5, margin: float = 1.3, cell_margin: float = 1.0,
         min_cell_capacity: int = 4) -> ListSpec:
    """Static sizes for a system from its current geometry (host side).

    ``positions`` (N, 3) Å, or (R, N, 3) with ``cell`` (R, 3, 3) for replicas (sizes that
    fit all of them). ``margin`` (≥ 1) is the head-room on the edge and cell capacities;
    ``cell_margin`` (≥ 1) makes the grid cells wider than ``cutoff + skin`` so that a cell
    may shrink (NPT) before the grid must change."""
    if margin < 1 or cell_margin < 1:
        raise ValueError(f"margins must be >= 1, got {margin}, {cell_margin}")
    if cutoff <= 0 or skin < 0:
        raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff {cutoff}, skin {skin}")
    pos = np.asarray(positions, np.float64)
    if pos.ndim == 3:
        cells = (np.zeros((len(pos), 3, 3)) if cell is None else
                 np.broadcast_to(np.asarray(cell, np.float64), (len(pos), 3, 3)))
        specs = [plan(p, c, pbc, cutoff, skin, margin, cell_margin, min_cell_capacity)
                 for p, c in zip(pos, cells)]
        return dataclasses.replace(
            specs[0], capacity=max(s.capacity for s in specs),
            cell_capacity=max(s.cell_capacity for s in specs),
            grid=tuple(min(s.grid[d] for s in specs) for d in range(3)),
            reach=tuple(max(s.reach[d] for s in specs) for d in range(3)))
    n = len(pos)
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,)).copy()
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64)
    reach_len = cutoff + skin
    if pbc.any():
        full = _full_cell(cell, pbc)
        h = _heights(full)
        grid = np.where(pbc, np.maximum(1, np.floor(h / (reach_len * cell_margin))), 1)
        grid = grid.astype(int)
        reach = np.where(pbc, np.ceil(reach_len / (h / grid) - 1e-9), 0).astype(int)
        frac = pos @ np.linalg.inv(full)
        frac = np.where(pbc, frac - np.floor(frac + GRID_SHIFT) + GRID_SHIFT, 0.0)
        counts = _cell_counts(frac, grid)
    else:
        grid, reach, counts = np.ones(3, int), np.zeros(3, int), np.array([n])
    single = int(np.prod(grid)) == 1
    cell_cap = n if single else min(n, max(min_cell_capacity,
                                           int(math.ceil(counts.max() * margin)) + 1))
    cap = _round_up(len(graph.neighbor_list(pos, cell, pbc, reach_len)[0]) * margin)
    if not pbc.any():
        cap = min(cap, max(n * (n - 1), 1))
    return ListSpec(n, float(cutoff), float(skin), cap, tuple(int(g) for g in grid),
                    tuple(int(r) for r in reach), int(cell_cap), tuple(bool(p) for p in pbc))


def empty(spec: ListSpec, positions: np.ndarray, cell: np.ndarray | None) -> Neighbors:
    """A list of ``spec``'s sizes with no pairs (build it before use)."""
    n, cap = spec.n_atoms, spec.capacity
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64)
    return Neighbors(
        senders=np.full(cap, n, np.int32), receivers=np.full(cap, n, np.int32),
        shifts=np.zeros((cap, 3), np.float32), mask=np.zeros(cap, bool),
        reference=np.asarray(positions, np.float32), ref_cell=np.asarray(cell, np.float32),
        complement=np.asarray(_complement(cell, np.array(spec.pbc)), np.float32),
        overflow=np.zeros((), bool), n_builds=np.zeros((), np.int32))


def allocate(positions: np.ndarray, cell: np.ndarray | None, pbc, cutoff: float,
             skin: float = 0.5, **kwargs) -> tuple[ListSpec, Neighbors]:
    """:func:`plan` and a first :func:`build` for one system (``kwargs`` as for :func:`plan`)."""
    spec = plan(positions, cell, pbc, cutoff, skin, **kwargs)
    c = np.zeros((3, 3)) if cell is None else np.asarray(cell)
    return spec, build_jit(spec, empty(spec, positions, c), jnp.asarray(positions, jnp.float32),
                           jnp.asarray(c, jnp.float32))


def build(spec: ListSpec, nbrs: Neighbors, positions: jax.Array, cell: jax.Array) -> Neighbors:
    """Rebuild the list of one system at ``positions`` (N, 3) Å in ``cell`` (3, 3) Å (jit-able)."""
    n, m, cap = spec.n_atoms, spec.cell_capacity, spec.capacity
    pbc = np.array(spec.pbc)
    grid = np.array(spec.grid, np.int32)
    dtype = positions.dtype
    if pbc.any():
        full = jnp.where(pbc[:, None], cell, nbrs.complement.astype(dtype))
        frac = positions @ jnp.linalg.inv(full)
        k = jnp.where(pbc, jnp.floor(frac + GRID_SHIFT), 0.0)
        frac = frac - k
        wrapped = positions - k @ full
        c3 = jnp.clip(jnp.floor((frac + GRID_SHIFT) * grid).astype(jnp.int32), 0, grid - 1)
        h = jnp.abs(jnp.linalg.det(full)) / jnp.linalg.norm(
            jnp.cross(full[jnp.array([1, 2, 0])], full[jnp.array([2, 0, 1])]), axis=1)
        too_small = jnp.any(pbc & (h / grid * np.array(spec.reach) < spec.cutoff + spec.skin))
    else:
        full = jnp.eye(3, dtype=dtype)
        k = jnp.zeros_like(positions)
        wrapped = positions
        c3 = jnp.zeros((n, 3), jnp.int32)
        too_small = jnp.zeros((), bool)
    cid = (c3[:, 0] * grid[1] + c3[:, 1]) * grid[2] + c3[:, 2]
    n_cells = int(np.prod(grid))
    order = jnp.argsort(cid)
    scid = cid[order]
    start = jnp.searchsorted(scid, jnp.arange(n_cells, dtype=cid.dtype))
    slot = jnp.arange(n) - start[scid]
    table = jnp.full((n_cells, m), n, jnp.int32).at[scid, slot].set(order.astype(jnp.int32),
                                                                 mode="drop")
    cell_over = jnp.max(slot) >= m

    offs = jnp.asarray(spec.offsets)  # (O, 3)
    nb3 = c3[:, None, :] + offs[None]  # (N, O, 3)
    img = jnp.floor_divide(nb3, grid)
    nb3 = nb3 - img * grid
    nb = (nb3[..., 0] * grid[1] + nb3[..., 1]) * grid[2] + nb3[..., 2]
    j = table[nb]  # (N, O, M)
    img = img.astype(dtype)
    valid = j < n
    jj = jnp.where(valid, j, 0)
    vec = wrapped[jj] + (img @ full)[:, :, None, :] - wrapped[:, None, None, :]
    d2 = jnp.sum(vec * vec, axis=-1)
    self_pair = (jj == jnp.arange(n)[:, None, None]) & jnp.all(img == 0, axis=-1)[:, :, None]
    keep = (valid & ~self_pair & (d2 < (spec.cutoff + spec.skin) ** 2)).reshape(n, -1)
    found = jnp.sum(keep)
    ii, cc = jnp.nonzero(keep, size=cap, fill_value=0)
    mask = jnp.arange(cap) < found
    senders = jnp.where(mask, j.reshape(n, -1)[ii, cc], n).astype(jnp.int32)
    receivers = jnp.where(mask, ii, n).astype(jnp.int32)
    sj = jnp.where(mask, senders, 0)
    shifts = jnp.where(mask[:, None], img[ii, cc // m] + k[ii] - k[sj], 0.0)
    # the list keeps its own float dtype (float32) whatever the positions' (MD in float64)
    return Neighbors(senders, receivers, shifts.astype(nbrs.shifts.dtype), mask,
                     positions.astype(nbrs.reference.dtype), cell.astype(nbrs.ref_cell.dtype),
                     nbrs.complement,
                     nbrs.overflow | cell_over | too_small | (found > cap),
                     nbrs.n_builds + 1)


build_jit = jax.jit(build, static_argnums=0)
build_many = jax.jit(jax.vmap(build, in_axes=(None, 0, 0, 0)), static_argnums=0)
"""``build`` for replicas (stacked lists, positions (R, N, 3), cells (R, 3, 3))."""


def build_replicas(spec: ListSpec, positions: np.ndarray, cells: np.ndarray) -> Neighbors:
    """Stacked lists of R replicas (positions (R, N, 3) Å, cells (R, 3, 3) Å), built."""
    pos, cells = np.asarray(positions), np.asarray(cells)
    lists = [empty(spec, p, c) for p, c in zip(pos, cells)]
    stacked = jax.tree_util.tree_map(lambda *x: np.stack(x), *lists)
    return build_many(spec, stacked, pos.astype(np.float32), cells.astype(np.float32))


def needs_rebuild(spec: ListSpec, nbrs: Neighbors, positions: jax.Array,
                  cell: jax.Array) -> jax.Array:
    """True when some atom moved more than ``skin / 2`` (Å) since the last build, counting
    a cell change as the displacement it causes at the far corner of the cell."""
    disp = jnp.max(jnp.linalg.norm(positions - nbrs.reference, axis=-1))
    strain = jnp.max(jnp.abs(cell - nbrs.ref_cell)) * 3 * (max(spec.reach) + 1)
    return disp + strain > 0.5 * spec.skin


def update(spec: ListSpec, nbrs: Neighbors, positions: jax.Array, cell: jax.Array) -> Neighbors:
    """Rebuild when :func:`needs_rebuild`, else keep the list (jit-able, one system)."""
    return jax.lax.cond(needs_rebuild(spec, nbrs, positions, cell),
                        lambda: build(spec, nbrs, positions, cell), lambda: nbrs)


def update_all(spec: ListSpec, nbrs: Neighbors, positions: jax.Array,
               cell: jax.Array) -> Neighbors:
    """:func:`update` for replicas (leading axis on every argument but ``spec``): all are
    rebuilt together when any needs it, so the build runs only on those steps even under
    ``vmap`` (where a per-replica ``cond`` would run it every step)."""
    need = jax.vmap(lambda b, p, c: needs_rebuild(spec, b, p, c))(nbrs, positions, cell)
    return jax.lax.cond(jnp.any(need),
                        lambda: jax.vmap(lambda b, p, c: build(spec, b, p, c))(
                            nbrs, positions, cell),
                        lambda: nbrs)


def pair_sets(nbrs: Neighbors, cutoff: float | None = None,
              positions: np.ndarray | None = None, cell: np.ndarray | None = None) -> set:
    """The list as a set of ``(i, j, s0, s1, s2)`` (host side, for tests); with ``cutoff``
    and the geometry, only pairs closer than ``cutoff`` (Å)."""
    m = np.asarray(nbrs.mask)
    i, j = np.asarray(nbrs.receivers)[m], np.asarray(nbrs.senders)[m]
    s = np.rint(np.asarray(nbrs.shifts)[m]).astype(int)
    if cutoff is not None:
        vec = positions[j] - positions[i] + s @ np.asarray(cell)
        keep = np.linalg.norm(vec, axis=1) < cutoff
        i, j, s = i[keep], j[keep], s[keep]
    return {(int(a), int(b), *map(int, c)) for a, b, c in zip(i, j, s)}
