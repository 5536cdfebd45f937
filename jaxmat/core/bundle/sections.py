"""The optional sections of a bundle: ``training`` (:func:`training_summary`, the energy
range of the training structures) and ``calibration`` (per target ``{"scale", "power",
"knee", "method", "n", "before", "after"}``: the committee σ recalibration of
:func:`jaxmat.core.calibrate.fit_targets`, applied by :func:`jaxmat.core.calibrate.apply_map`;
older bundles hold only ``scale``: ``σ_calibrated = scale · σ_raw``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxmat.core.calibrate import sigma_map
from jaxmat.core.config import to_json


def training_summary(records: Any, reference_energies: str | dict | None = None) -> dict:
    """The energy range of the training structures, stored as a bundle's ``training``:
    ``{"n_structures", "energy_per_atom_eV": [min, max], "energy_per_atom_by_formula_eV":
    {formula: [min, max]}}`` (eV/atom = total energy / number of atoms; Hill formulas such
    as ``C2H6O``). ``records``: :class:`jaxmat.core.graph.Record` or ASE Atoms with an
    energy (``targets["energy"]`` or a calculator). ``reference_energies``: how the E0s
    were set (``"fit"``, ``"average"`` or the given dict), recorded as such."""
    every: list[float] = []
    by: dict[str, list[float]] = {}
    for k, r in enumerate(records):
        numbers, energy = _numbers_energy(r, k)
        every.append(energy / len(numbers))
        by.setdefault(_formula(numbers), []).append(every[-1])
    if not every:
        raise ValueError("training_summary needs at least one structure with an energy")
    return {"n_structures": len(every),
            "energy_per_atom_eV": [float(min(every)), float(max(every))],
            "energy_per_atom_by_formula_eV": {k: [float(min(v)), float(max(v))]
                                              for k, v in sorted(by.items())},
            **({} if reference_energies is None else {"reference_energies": reference_energies})}


def _formula(numbers: Any) -> str:
    from ase.data import chemical_symbols
    from ase.formula import Formula

    return Formula("".join(chemical_symbols[int(z)] for z in numbers)).format("hill")


def _numbers_energy(r: Any, k: int) -> tuple[np.ndarray, float]:
    if hasattr(r, "targets") and hasattr(r, "numbers"):
        if "energy" not in r.targets:
            raise ValueError(f"training structure {k} carries no energy; keys found: "
                             f"{sorted(r.targets)}")
        return np.asarray(r.numbers), float(r.targets["energy"])
    if hasattr(r, "get_potential_energy"):
        try:
            return np.asarray(r.numbers), float(r.get_potential_energy())
        except Exception as e:  # noqa: BLE001 — an Atoms without a calculator
            raise ValueError(f"training structure {k} ({r.get_chemical_formula()}) has no "
                             f"energy: {e}") from None
    raise ValueError(f"training structure {k}: expected a Record or ASE Atoms, got "
                     f"{type(r).__name__}")


def _sections(training: Any, calibration: Any, n_members: int | None, where: str = "save") -> dict:
    """The optional ``training`` and ``calibration`` entries of a bundle, checked."""
    out: dict[str, Any] = {}
    if training is not None:
        out["training"] = t = to_json(training, "training")
        if not (isinstance(t, dict) and isinstance(t.get("n_structures"), int) and all(map(
                _is_range, [t.get("energy_per_atom_eV"),
                            *dict(t.get("energy_per_atom_by_formula_eV", {})).values()]))):
            raise ValueError(f"{where}: training must hold n_structures, energy_per_atom_eV "
                             f"[min, max] and energy_per_atom_by_formula_eV, got {training!r}")
    if calibration is not None:
        out["calibration"] = c = to_json(calibration, "calibration")
        if n_members is None:
            raise ValueError(f"{where}: a calibration needs committee params (a single "
                             "model has no σ)")
        if not isinstance(c, dict):
            raise ValueError(f"{where}: calibration must map targets to entries, got {c!r}")
        for k, v in c.items():
            try:
                sigma_map(v if isinstance(v, dict) else {})
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: calibration entry {k!r} needs a positive 'scale' "
                                 f"(and 'power', 'knee' > 0 where given): {e}") from None
    return out


def _is_range(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
            and v[0] <= v[1])
