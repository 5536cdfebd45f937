"""Settings of the active-learning loop (:class:`ActiveConfig`): defaults, checks, TOML
reading and writing, and the migration of keys of older versions (flat keys before the
``fit``/``attack``/``select`` tables, obsolete settings)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np

from jaxmat.core import config, ensemble
from jaxmat.workflows.adversarial.attack import AttackConfig
from jaxmat.workflows.adversarial.select import SelectConfig

STRATEGIES = ("adversarial", "random", "normal_modes", "md")
# settings that may change between a run and its resumption
_RESUMABLE_CHANGES = {"generations", "progress", "train_final", "fit.progress", "workers"}
# settings of older versions that no longer exist and never changed results: dropped on reading
_OBSOLETE = {"compile_cache": "the training step is now compiled once per model and reused"}
# nested settings the loop sets itself (per generation); they must keep their defaults
_LOOP_OWNED = ("fit.seed", "fit.checkpoint_dir", "attack.seed")
# flat keys of configs written before the nesting -> (section, key)
_FLAT_KEYS = {
    "epochs": ("fit", "epochs"), "lr": ("fit", "lr"), "lr_end": ("fit", "lr_end"),
    "batch_size": ("fit", "batch_size"), "attack_steps": ("attack", "n_steps"),
    "attack_lr": ("attack", "lr"), "attack_sigma": ("attack", "sigma"),
    "clamp": ("attack", "clamp"), "skin": ("attack", "skin"), "axes": ("attack", "axes"),
    **{k: ("select", k) for k in ("percentile", "rmsd", "permute", "align",
                                  "max_per_generation", "fill")},
}


def _default_fit() -> ensemble.CommitteeConfig:
    return ensemble.CommitteeConfig(epochs=200, lr=2e-3, lr_end=1e-5, batch_size=32,
                                    progress=False)


_SECTIONS = {"fit": ensemble.CommitteeConfig, "attack": AttackConfig, "select": SelectConfig}


@dataclasses.dataclass
class ActiveConfig:
    """Settings of :func:`run` (units: kT eV, distances Å, temperature K, time fs).

    Training: ``n_members`` committee members trained per generation with ``fit``
    (:class:`jaxmat.core.ensemble.CommitteeConfig`: ``epochs``, ``lr`` → ``lr_end``,
    ``batch_size``, ...; its seed is derived from ``seed`` per generation), loss
    ``energy_weight``·(eV/atom)² + ``forces_weight``·(eV/Å)², warm-started from the previous
    generation's committee (``warm_start``).
    Adversarial: ``n_starts`` training geometries attacked with ``attack``
    (:class:`jaxmat.workflows.adversarial.attack.AttackConfig`: steps, lr, δ₀ ~ N(0, sigma²), clamp, skin, axes;
    seed derived per generation), Boltzmann factor at ``kT`` (``per_atom`` energies
    optional); while fewer than ``select.max_per_generation`` distinct candidates exceed
    the selection threshold, new starts are attacked (at most ``attack_batches`` batches;
    then ``select.fill`` tops up). Selection: ``select`` (:class:`jaxmat.workflows.adversarial.select.SelectConfig`: committee force
    variance above a ``percentile`` of the training set's, RMSD dedup, at most
    ``max_per_generation``), deduplicated also against the training set with
    ``dedup_against_train``. Candidates with two atoms closer than ``min_distance`` (Å) are
    never labelled; stored labels that close (from older runs) are kept out of training.
    Random baseline: ``n_starts`` training geometries displaced by N(0, ``random_sigma``²)
    along ``attack.axes``, the first ``select.max_per_generation`` labelled. Normal-mode
    baseline: ``n_starts`` harmonic Boltzmann samples at ``nm_temperature`` K around the
    lowest-energy training structure (the committee's Hessian,
    :mod:`jaxmat.workflows.adversarial.normal_modes`), the first ones labelled. MD baseline:
    ``md_starts`` committee-driven Langevin replicas (:func:`jaxmat.md.simulate`) of
    ``md_steps`` steps of ``md_timestep`` fs at ``md_temperature`` K from training
    geometries, each stopped at the first frame (checked every ``md_interval`` steps) whose
    largest per-atom force σ exceeds the ``select.percentile`` of the training set's
    (``md_sigma_stop``), or whose energy leaves the committee's energy range over the
    training set by more than ``md_energy_margin`` eV/atom (the energy cap), or that
    breaks; the frames up to each stop then go through the same selection as the attack.

    Labelling: ``workers`` local processes (:func:`jaxmat.workflows.adversarial.oracle.local_pool`,
    the oracle's ``threads`` OpenMP threads each, default 1) label the pending structures
    in parallel; 0 labels in this process, one after another. An executor given to
    :func:`run` replaces the pool. Labels do not depend on where they are computed, so
    ``workers`` may change when a run resumes.

    ``train_final`` trains C_{G+1} on all labels after the last generation (else the result
    is C_G). ``max_energy`` (eV above the lowest label; eV/atom with ``per_atom``) keeps
    higher-energy labels in the store but out of training. The per-generation retraining
    reuses one compiled step (:mod:`jaxmat.core.engine`).

    ``fit``, ``attack`` and ``select`` may be given as dicts. In TOML they are the tables
    ``[active.fit]``, ``[active.attack]``, ``[active.select]``; a flat file written before
    the nesting is migrated (``epochs`` → ``fit.epochs``, ``attack_steps`` →
    ``attack.n_steps``, ``percentile`` → ``select.percentile``, ...).
    """

    workdir: str = "runs/active"
    strategy: str = "adversarial"
    generations: int = 5
    seed: int = 0
    relabel_seeds: bool = True
    progress: bool = True
    train_final: bool = True
    max_energy: float | None = None
    workers: int = 1
    # committee training
    n_members: int = 4
    fit: ensemble.CommitteeConfig = dataclasses.field(default_factory=_default_fit)
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    warm_start: bool = True
    bootstrap: bool = False
    # proposals and selection
    kT: float = 0.5
    per_atom: bool = False
    n_starts: int = 128
    attack_batches: int = 4
    attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    dedup_against_train: bool = True
    min_distance: float = 0.5
    # baselines
    random_sigma: float = 0.1
    md_temperature: float = 1000.0
    md_timestep: float = 0.5
    md_friction: float = 0.01
    md_steps: int = 1000
    md_interval: int = 5
    md_starts: int = 32
    md_sigma_stop: bool = True
    md_energy_margin: float = 0.25
    nm_temperature: float = 1000.0

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if isinstance(value := getattr(self, name), dict):
                value = config.from_dict(cls, value, f"active.{name}", base=_default_of(name))
                setattr(self, name, value)
            if not isinstance(value, cls):
                raise ValueError(f"ActiveConfig.{name} must be a {cls.__module__}."
                                 f"{cls.__name__} or a dict, got {type(value).__name__}")
        for key in _LOOP_OWNED:
            if self.to_dict()[key] != _default_of(key):
                raise ValueError(f"{key} is set by the loop per generation (from "
                                 f"ActiveConfig.seed and workdir); leave it at its default")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not self.kT > 0:
            raise ValueError(f"kT must be positive (eV), got {self.kT}")
        if self.generations < 0 or self.n_members < 1 or self.fit.epochs < 1:
            raise ValueError("need generations >= 0, n_members >= 1 and fit.epochs >= 1")
        if not self.min_distance >= 0:
            raise ValueError(f"min_distance must be >= 0 Å, got {self.min_distance}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: label in this process), got {self.workers}")
        if not self.nm_temperature > 0 or not self.md_temperature > 0:
            raise ValueError(f"nm_temperature and md_temperature must be positive (K), got "
                             f"{self.nm_temperature}, {self.md_temperature}")
        if not (np.isfinite(self.md_energy_margin) and self.md_energy_margin >= 0):
            raise ValueError(f"md_energy_margin must be a finite value >= 0 eV/atom, got "
                             f"{self.md_energy_margin}")
        if self.md_steps < 1 or self.md_starts < 1 or not 1 <= self.md_interval <= self.md_steps:
            raise ValueError(f"need md_steps >= 1, md_starts >= 1 and 1 <= md_interval <= "
                             f"md_steps, got {self.md_steps}, {self.md_starts}, "
                             f"{self.md_interval}")
        if self.n_starts < 1 or self.select.max_per_generation < 0 or self.attack_batches < 1:
            raise ValueError("need n_starts >= 1, attack_batches >= 1 and "
                             "select.max_per_generation >= 0")

    def attack_config(self, generation: int, batch: int = 0) -> AttackConfig:
        """``attack`` with the seed of ``generation`` (and of a further ``batch``)."""
        seed = _seed(self.seed, generation, 1) if batch == 0 else \
            _seed(self.seed, generation, 1, batch)
        return dataclasses.replace(self.attack, seed=seed)

    # ------------------------------------------------------------------ TOML
    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides: Any) -> "ActiveConfig":
        """Read a TOML file (keys at top level or in an ``[active]`` table)."""
        import tomllib

        if not os.path.exists(path):
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path, "rb") as f:
            data = tomllib.load(f)
        data = {**data.get("active", data), **overrides}
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, data: dict) -> "ActiveConfig":
        """Settings from a (nested) dict; flat keys of the old layout are migrated."""
        data = {k: dict(v) if k in _SECTIONS and isinstance(v, dict) else v
                for k, v in data.items()}
        for old, (name, key) in _FLAT_KEYS.items():
            if old in data:
                section = data.setdefault(name, {})
                if not isinstance(section, dict) or key in section:
                    raise ValueError(f"setting {old!r} is given both flat (old layout) and "
                                     f"as {name}.{key}; keep only {name}.{key}")
                section[key] = data.pop(old)
        for old, why in _OBSOLETE.items():
            if data.pop(old, None) is not None:
                print(f"active: setting {old!r} is obsolete and ignored ({why})", file=sys.stderr)
        return config.from_dict(cls, data, "active")

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{"name" or "section.name": value}`` of every setting."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out.update({f"{f.name}.{g.name}": getattr(v, g.name) for g in dataclasses.fields(v)}
                       if f.name in _SECTIONS else {f.name: v})
        return out

    def to_toml(self) -> str:
        tables: dict[str, list[str]] = {"active": []}
        for key, v in self.to_dict().items():
            *table, name = ["active", *key.split(".")]
            if v is None:
                if _default_of(key) is not None:
                    raise ValueError(f"{key} = None cannot be written to TOML (no null) and "
                                     f"would read back as its default {_default_of(key)!r}")
                continue  # absent means the default None
            try:
                text = json.dumps(list(v) if isinstance(v, tuple) else v)
            except TypeError:
                raise ValueError(f"{key} = {v!r} cannot be written to TOML") from None
            tables.setdefault(".".join(table), []).append(f"{name} = {text}")
        return "\n".join(f"[{t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items())


def _default_of(key: str) -> Any:
    """The default of setting ``key`` (``"name"`` or ``"section.name"``; a section's name gives
    a fresh section with the loop's defaults)."""
    name, _, field = key.partition(".")
    f = {f.name: f for f in dataclasses.fields(ActiveConfig)}[name]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return getattr(default, field) if field else default


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
