"""When an MD replica has left physical space: the failure detector.

A replica fails at the first step where any criterion holds; it is then frozen at its last
good state and its step and reason are reported. Codes (``REASONS``; the lowest code wins
when several fire at once): 1 non-finite positions, forces or energy; 2 two atoms closer
than ``min_distance``; 3 a bond of the starting structure stretched beyond ``bond_break``
times the sum of covalent radii; 4 committee force σ (calibrated) above ``max_forces_std``;
5 committee energy σ (calibrated) above ``max_energy_std``; 6 energy per atom outside the
training range by more than ``energy_margin``; 7 the covalent bond graph differs from the
starting one for ``topology_time_fs`` or longer.

Criteria 6 and 4/5 need data from the bundle (``training`` range, ``calibration`` scales,
see :func:`resolve`); without them they are off and :func:`resolve` says so.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from jaxmat.core import calibrate, graph

REASONS = {0: "", 1: "non-finite values", 2: "atoms too close", 3: "bond broken",
           4: "committee force spread too large", 5: "committee energy spread too large",
           6: "energy outside the training range", 7: "covalent topology changed"}
# criterion names (CLI ``--off``, reports) and the FailureCriteria field that switches them
CRITERIA = {"close_contact": "min_distance", "bond_break": "bond_break",
            "force_sigma": "max_forces_std", "energy_sigma": "max_energy_std",
            "energy_range": "energy_margin", "topology": "topology_time_fs"}
CODES = {"non_finite": 1, "close_contact": 2, "bond_break": 3, "force_sigma": 4,
         "energy_sigma": 5, "energy_range": 6, "topology": 7}


@dataclasses.dataclass(frozen=True)
class FailureCriteria:
    """Thresholds of the failure detector; ``None`` switches a criterion off (non-finite
    values always stop a replica).

    ``min_distance`` Å; ``bond_break`` (dimensionless): a bond of the start (pairs closer
    than ``bond_factor`` × the sum of covalent radii) longer than this × that sum;
    ``max_forces_std`` eV/Å: largest per-atom committee force σ, calibrated by the bundle's
    forces calibration; ``max_energy_std`` eV: committee energy σ, calibrated; ``energy_margin``
    eV/atom beyond the training energy-per-atom range (an energy hole below it or a climb
    above it); ``topology_time_fs`` fs: how long the covalent graph (pairs closer than
    ``bond_factor`` × the sum of covalent radii) may differ from the starting one.
    ``energy_margin``, ``topology_time_fs`` and ``max_forces_std`` (in units of the
    default power-law calibration) are the values chosen on the 32 validation replicas of
    ``benchmarks/md_detector.py`` (ethanol, 600 K, a weak and a good committee: most recall
    with at most 5 % false alarms; results/md_detector_power.md); a small sample of one
    molecule."""

    min_distance: float | None = 0.5
    bond_break: float | None = 2.0
    bond_factor: float = 1.2
    max_forces_std: float | None = 0.5
    max_energy_std: float | None = None
    energy_margin: float | None = 0.1
    topology_time_fs: float | None = 5.0

    def __post_init__(self):
        for name in ("min_distance", "bond_break", "max_forces_std", "max_energy_std",
                     "energy_margin", "topology_time_fs"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise ValueError(f"failure criterion {name} must be >= 0 (or None: off), "
                                 f"got {v}")
        if not self.bond_factor > 0:
            raise ValueError(f"bond_factor must be > 0, got {self.bond_factor}")

    def without(self, *names: str) -> "FailureCriteria":
        """These criteria off (names from ``CRITERIA``, e.g. ``"topology"`` for a
        reactive simulation); an unknown name raises."""
        unknown = [n for n in names if n not in CRITERIA]
        if unknown:
            raise ValueError(f"unknown failure criteria {unknown}; known: {list(CRITERIA)}")
        return dataclasses.replace(self, **{CRITERIA[n]: None for n in names})

    def active(self) -> list[str]:
        """Names of the criteria switched on (``non_finite`` always)."""
        return ["non_finite"] + [n for n, f in CRITERIA.items() if getattr(self, f) is not None]


class Detector(NamedTuple):
    """Device data of the detector for one system (built by :func:`detector`):
    ``bonds`` (i, j, shifts, r_cov_sum) of the start, ``radii`` (N,) covalent radii Å,
    ``weights`` (N,) partner weights of the topology signature, ``count0``/``sig0`` (N,)
    starting signature, ``energy_range`` (2,) eV/atom, ``scales`` (2, 3) the σ calibration
    maps ``(scale, power, knee)`` of energy and forces
    (:func:`jaxmat.core.calibrate.apply_map`)."""

    bonds: tuple
    radii: jax.Array
    weights: jax.Array
    count0: jax.Array
    sig0: jax.Array
    energy_range: jax.Array
    scales: jax.Array


def bonds(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
          factor: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Covalent bonds of a structure: ``(i, j, shifts, r_cov_sum)`` for pairs ``i < j``
    closer than ``factor`` × (sum of covalent radii, Å)."""
    rc = covalent_radii[np.asarray(numbers)]
    i, j, s, d = graph.neighbor_list(positions, cell, pbc, factor * 2 * rc.max())
    keep = (i < j) & (d < factor * (rc[i] + rc[j]))
    return i[keep], j[keep], s[keep], (rc[i] + rc[j])[keep]


def pair_lengths(positions: jax.Array, cell: jax.Array, i: jax.Array, j: jax.Array,
                 shifts: jax.Array) -> jax.Array:
    """Lengths (R, P) Å of pairs ``(i, j, shifts)`` in every replica (positions (R, N, 3))."""
    vec = positions[:, j] - positions[:, i] + jnp.einsum("pk,rkl->rpl", shifts, cell)
    return jnp.linalg.norm(vec, axis=-1)


def topology_signature(radii: jax.Array, weights: jax.Array, factor: float,
                       senders: jax.Array, receivers: jax.Array, mask: jax.Array,
                       lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per atom (R, N): the number of covalent partners and the sum of their weights, over
    a replica-stacked neighbour list (senders/receivers/mask/lengths (R, E)). Equal
    signatures mean the same bonded partners (weights are generic reals)."""
    R, N = senders.shape[0], radii.shape[0]
    s, r = jnp.minimum(senders, N - 1), jnp.minimum(receivers, N - 1)
    bonded = mask & (lengths < factor * (radii[s] + radii[r]))
    rows = jnp.broadcast_to(jnp.arange(R)[:, None], s.shape)
    b = bonded.astype(radii.dtype)
    count = jnp.zeros((R, N), radii.dtype).at[rows, r].add(b)
    sig = jnp.zeros((R, N), radii.dtype).at[rows, r].add(b * weights[s])
    return count, sig


def topology_changed(det: Detector, factor: float, nbrs, lengths: jax.Array) -> jax.Array:
    """(R,) bool: some atom's covalent partners differ from the start."""
    count, sig = topology_signature(det.radii, det.weights, factor, nbrs.senders,
                                    nbrs.receivers, nbrs.mask, lengths)
    return jnp.any((count != det.count0) | (jnp.abs(sig - det.sig0) > 1e-3), axis=-1)


def detector(criteria: FailureCriteria, numbers: np.ndarray, positions: np.ndarray,
             cell: np.ndarray, pbc: np.ndarray, nbrs, lengths: jax.Array,
             energy_range: tuple[float, float] | None, scales: tuple,
             dtype) -> Detector:
    """The detector's device data; ``nbrs``/``lengths`` are the replicas' starting
    neighbour lists and their pair lengths (the starting covalent graph of replica 0
    is everyone's reference: replicas are the same molecule)."""
    numbers = np.asarray(numbers)
    i, j, s, r0 = bonds(numbers, positions, cell, pbc, criteria.bond_factor)
    radii = jnp.asarray(covalent_radii[numbers], dtype)
    weights = jnp.asarray(1.0 + np.random.default_rng(12345).random(len(numbers)), dtype)
    count0, sig0 = topology_signature(radii, weights, criteria.bond_factor, nbrs.senders[:1],
                                      nbrs.receivers[:1], nbrs.mask[:1], lengths[:1])
    lo, hi = energy_range if energy_range is not None else (-np.inf, np.inf)
    return Detector((jnp.asarray(i), jnp.asarray(j), jnp.asarray(s, dtype),
                     jnp.asarray(r0, dtype)), radii, weights, count0[0], sig0[0],
                    jnp.asarray([lo, hi], dtype), jnp.asarray(scales, dtype))


def failure_codes(criteria: FailureCriteria, det: Detector, out: dict, positions: jax.Array,
                  cell: jax.Array, nbrs, lengths: jax.Array, topo_steps: jax.Array,
                  dt_fs: float) -> tuple[jax.Array, jax.Array]:
    """(R,) int32 failure code of every replica (0 = fine) and the updated (R,) count of
    consecutive steps with a changed covalent graph; ``lengths`` (R, E) Å are the
    listed pair lengths."""
    finite = (jnp.all(jnp.isfinite(positions), axis=(1, 2))
              & jnp.all(jnp.isfinite(out["forces"]), axis=(1, 2)) & jnp.isfinite(out["energy"]))
    checks = {1: ~finite}
    if criteria.min_distance is not None:
        min_pair = jnp.min(jnp.where(nbrs.mask, lengths, jnp.inf), axis=-1)
        checks[2] = min_pair < criteria.min_distance
    if criteria.bond_break is not None and det.bonds[0].shape[0]:
        i, j, s, r0 = det.bonds
        d = pair_lengths(positions, cell, i, j, s)
        checks[3] = jnp.any(d > criteria.bond_break * r0, axis=-1)
    if criteria.max_forces_std is not None:
        checks[4] = calibrate.apply_map(out["forces_std_max"], det.scales[1], jnp,
                                        components=3) > criteria.max_forces_std
    if criteria.max_energy_std is not None:
        checks[5] = calibrate.apply_map(out["energy_std"], det.scales[0],
                                        jnp) > criteria.max_energy_std
    if criteria.energy_margin is not None:
        e = out["energy"] / positions.shape[1]
        checks[6] = ((e < det.energy_range[0] - criteria.energy_margin)
                     | (e > det.energy_range[1] + criteria.energy_margin))
    if criteria.topology_time_fs is not None:
        changed = topology_changed(det, criteria.bond_factor, nbrs, lengths)
        topo_steps = jnp.where(changed, topo_steps + 1, 0)
        checks[7] = (topo_steps > 0) & ((topo_steps - 1) * dt_fs >= criteria.topology_time_fs)
    codes = jnp.zeros(finite.shape, jnp.int32)
    for code in sorted(checks, reverse=True):  # the lowest code wins
        codes = jnp.where(checks[code], code, codes)
    return codes, topo_steps


def resolve(criteria: FailureCriteria, formula: str, committee: bool,
            training: dict | None, calibration: dict | None
            ) -> tuple[FailureCriteria, tuple[float, float] | None, tuple, list[str]]:
    """The criteria a run can apply, from the bundle's ``training`` summary (energy per atom
    range, by formula where the bundle has this formula) and ``calibration`` (σ maps).

    Returns ``(criteria, energy_range eV/atom or None, (energy map, forces map), notes)``
    (maps: :func:`jaxmat.core.calibrate.sigma_map`); a criterion whose data are missing is
    switched off and a note says what is missing (σ criteria are simply off for a single
    model)."""
    notes, off = [], []
    energy_range = None
    if criteria.energy_margin is not None:
        by_formula = (training or {}).get("energy_per_atom_by_formula_eV") or {}
        rng = by_formula.get(formula) or (training or {}).get("energy_per_atom_eV")
        if rng is None:
            off.append("energy_range")
            notes.append("no training energy range (bundle.training['energy_per_atom_eV'])"
                         ": criterion energy_range is off")
        else:
            lo, hi = (float(x) for x in rng)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise ValueError(f"training energy range must be finite [min, max] eV/atom, "
                                 f"got {rng}")
            energy_range = (lo, hi)
    scales = [calibrate.IDENTITY, calibrate.IDENTITY]
    for k, (target, name, field) in enumerate((("energy", "energy_sigma", "max_energy_std"),
                                               ("forces", "force_sigma", "max_forces_std"))):
        if getattr(criteria, field) is None:
            continue
        if not committee:
            off.append(name)
            continue
        entry = (calibration or {}).get(target)
        if entry is None:
            off.append(name)
            notes.append(f"no calibrated {target} σ (bundle.calibration['{target}'])"
                         f": criterion {name} is off")
        else:
            try:
                scales[k] = calibrate.sigma_map(entry)
            except (KeyError, ValueError) as e:
                raise ValueError(f"calibration of {target}: {e}") from None
            if isinstance(entry, dict) and "power" not in entry:
                notes.append(f"the bundle's {target} σ calibration is one scale (an older "
                             f"bundle); the default thresholds are in units of the power-law "
                             f"calibration (calibrate.fit_committee): refit it or set "
                             f"{field} yourself")
    return criteria.without(*off), energy_range, (scales[0], scales[1]), notes
