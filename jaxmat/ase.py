"""ASE calculator for any jaxmat potential or committee of potentials.

``JaxmatCalculator(model, params)`` gives ``energy`` (eV), ``free_energy``,
``forces`` (eV/Å), ``stress`` (eV/Å³, Voigt order, periodic cells only) and, when the model
gives them, per-atom ``energies`` (eV). With committee params (leading member axis, see
:mod:`jaxmat.core.ensemble`) the results are the members' mean, plus the committee spread:
``energy_std`` (eV), ``forces_std`` (N, 3) eV/Å, ``forces_std_atom`` (N,) eV/Å (root of the
xyz-summed variance), ``energy_members`` (M,) eV — σ calibrated by a bundle's stored
recalibration (:func:`jaxmat.core.calibrate.apply_map`) or a given factor.

The graph (cutoff, k nearest neighbours, line graph) is the model's own ``model.graph``;
``JaxmatCalculator.from_bundle(path)`` reads model and params from a bundle
(:mod:`jaxmat.core.bundle`). The neighbour list is rebuilt on the host at every call
through the model's :class:`jaxmat.core.graph.Batcher`: the padded shapes are kept across calls
and grown (with a margin) only when the structure outgrows them, so an MD run or a relaxation
compiles once (``calc.n_compiles``).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxmat.core import calibrate, committee, graph
from jaxmat.core.bundle.files import check_elements
from jaxmat.core.protocol import Model, Params, resolve_spec

STD_KEYS = ("energy_std", "forces_std", "forces_std_atom", "energy_members")
OUT_KEYS = ("energy", "forces", "stress", "atomic_energies")  # what a calculation keeps


class JaxmatCalculator(Calculator):
    """ASE calculator from a potential ``model`` (outputs ``energy`` and ``forces``, e.g.
    :func:`jaxmat.core.potential.potential`) and its ``params`` or committee params.

    The neighbour list follows ``model.graph``; ``cutoff`` (Å) is needed only for a model
    that declares no cutoff, and must otherwise equal it. ``committee=None`` detects a leading
    member axis. ``sigma_scale`` calibrates the committee standard deviations: a factor, or
    a dict ``{"energy": ..., "forces": ...}`` of factors or of a bundle's calibration entries
    (:func:`jaxmat.core.calibrate.sigma_map`; ``forces_std_atom`` maps its per-component RMS).
    ``margin`` is the relative head-room on edges (and ``multiple`` the rounding) when the
    padding budget is (re)allocated; ``dtype`` is the float type of positions fed to the model.
    ``elements`` (atomic numbers; a bundle's ``metadata["elements"]`` of an imported model)
    makes structures with other elements fail with an error instead of a meaningless result.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies",
                              *STD_KEYS]

    def __init__(self, model: Model, params: Params, cutoff: float | None = None,
                 committee: bool | None = None, sigma_scale: float | dict[str, Any] = 1.0,
                 margin: float = 1.25, multiple: int = 16, dtype: Any = np.float32,
                 elements: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.elements = None if elements is None else [int(z) for z in elements]
        if margin < 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        spec = model.graph
        if "sparse" not in spec.layouts:
            raise ValueError(f"model {model.name!r} supports only the layouts "
                             f"{list(spec.layouts)}; the calculator builds sparse batches")
        self.model = model
        self.batcher = graph.Batcher(model, 1, "sparse", multiple, margin,
                                     spec=resolve_spec(model, cutoff))
        self.cutoff = self.batcher.spec.cutoff
        self.params = jax.device_put(params)
        self.committee = committee
        self.dtype = dtype
        self.sigma_map = {}
        for k in ("energy", "forces"):
            s = sigma_scale.get(k, 1.0) if isinstance(sigma_scale, dict) else sigma_scale
            try:
                self.sigma_map[k] = calibrate.sigma_map(s)
            except ValueError as e:
                raise ValueError(f"sigma_scale for {k}: {e}") from None
        self._fn = jax.jit(self._predict)

    @classmethod
    def from_bundle(cls, bundle: Any, calibrated: bool = True,
                    **kwargs: Any) -> "JaxmatCalculator":
        """Calculator of a bundle's model and params (a loaded bundle or the path of one,
        :func:`jaxmat.core.bundle.load`); committee σ scaled by the bundle's stored
        calibration unless ``calibrated=False`` or ``sigma_scale`` is given; ``kwargs`` as
        for the constructor."""
        from jaxmat.core import bundle as bundles

        b = bundles.load(bundle) if isinstance(bundle, (str, os.PathLike)) else bundle
        if calibrated and b.calibration and "sigma_scale" not in kwargs:
            kwargs["sigma_scale"] = b.calibration
        kwargs.setdefault("elements", b.metadata.get("elements"))
        return cls(b.model, b.params, **kwargs)

    # ------------------------------------------------------------------ device side
    def _predict(self, params: Params, batch: graph.Batch) -> dict[str, jax.Array]:
        if not self.committee:
            return {k: v for k, v in self.model.apply(params, batch).items() if k in OUT_KEYS}
        outs = committee.apply(self.model, params, batch)
        keys = tuple(k for k in OUT_KEYS if k in outs)
        st = committee.stats(outs, keys)
        res = {k: st[f"{k}_mean"] for k in keys}
        res["energy_std"] = jnp.sqrt(st["energy_var"])
        res["energy_members"] = outs["energy"]
        if "forces" in outs:
            res["forces_std"] = jnp.sqrt(st["forces_var"])
            res["forces_std_atom"] = jnp.sqrt(st["forces_var_atom"])
        return res

    @property
    def n_compiles(self) -> int:
        """Number of programs compiled so far by this calculator."""
        return int(self._fn._cache_size())

    # ------------------------------------------------------------------ host side
    @property
    def budget(self) -> graph.Budget | None:
        """The padding budget of the batches so far (grown, never shrunk)."""
        return self.batcher.budgets.get("sparse")

    @property
    def n_repads(self) -> int:
        """How often the budget had to grow."""
        return self.batcher.n_grown

    def calculate(self, atoms: Any = None, properties: Any = ("energy",),
                  system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        check_elements(self.elements, atoms.numbers, atoms.get_chemical_formula())
        (rec,), _, budget, _ = self.batcher.prepare([atoms])
        batch = graph.batch([rec], budget, dtype=self.dtype)
        if self.committee is None:
            self.committee = committee.is_committee(self.model, self.params, batch)
            self._fn = jax.jit(self._predict)
        out = jax.device_get(self._fn(self.params, batch))
        if "forces" not in out:
            raise ValueError("the model gives no 'forces'; wrap an energy model with "
                             "jaxmat.core.potential.potential")
        n = rec.n_node
        for k in ("energy", "forces"):
            if not np.all(np.isfinite(out[k])):
                raise ValueError(f"the model predicts non-finite (NaN/inf) {k} for "
                                 f"{atoms.get_chemical_formula()}")
        energy = float(out["energy"][0])
        res: dict[str, Any] = {"energy": energy, "free_energy": energy,
                               "forces": np.asarray(out["forces"][:n], dtype=np.float64)}
        if "atomic_energies" in out:
            res["energies"] = np.asarray(out["atomic_energies"][:n], dtype=np.float64)
        if "stress" in out and np.any(atoms.pbc):
            res["stress"] = full_3x3_to_voigt_6_stress(np.asarray(out["stress"][0], np.float64))
        if self.committee:
            me, mf = self.sigma_map["energy"], self.sigma_map["forces"]
            res["energy_std"] = float(calibrate.apply_map(float(out["energy_std"][0]), me))
            res["energy_members"] = np.asarray(out["energy_members"][:, 0], dtype=np.float64)
            if "forces_std" in out:
                f = np.asarray(out["forces_std"][:n], dtype=np.float64)
                res["forces_std"] = calibrate.apply_map(f, mf)
                res["forces_std_atom"] = calibrate.apply_map(
                    np.asarray(out["forces_std_atom"][:n], dtype=np.float64), mf, components=3)
        self.results = res

