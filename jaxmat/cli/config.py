"""The train config of ``jaxmat train``: nested dataclasses read from TOML (or YAML).

Only the sections the library lacks live here (:class:`DataConfig`, :class:`ModelConfig`
and the top level :class:`TrainConfig`); the others are the library's own dataclasses with
their defaults: ``[loss]`` is :class:`jaxmat.core.engine.EnergyForceLoss`, ``[fit]`` is
:class:`jaxmat.core.ensemble.CommitteeConfig` (the engine's ``FitConfig`` plus
``batch_size``), ``[model.schnet]`` / ``[model.painn]`` / ``[model.mace]`` are
:class:`~jaxmat.models.SchNetConfig` / :class:`~jaxmat.models.PaiNNConfig` /
:class:`~jaxmat.models.MACEConfig`. Values are
checked by :func:`jaxmat.core.config.from_dict`: an unknown key or a wrong type raises
``ValueError`` naming the dotted key and the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from jaxmat.core.config import from_dict, to_json
from jaxmat.core.engine import EnergyForceLoss
from jaxmat.core.ensemble import CommitteeConfig
from jaxmat.models.mace import MACEConfig
from jaxmat.models.painn import PaiNNConfig
from jaxmat.models.schnet import SchNetConfig

MODELS = {"schnet": SchNetConfig, "painn": PaiNNConfig, "mace": MACEConfig}
SHIPPED = ("ammonia", "mlearn-Cu", "mlearn-Ge", "mlearn-Li", "mlearn-Mo", "mlearn-Ni",
           "mlearn-Si")
LAYOUTS = ("auto", "sparse", "dense")
# model fields not set by users: fitted on the training split (or fixed by jaxmat train)
FITTED = ("atom_refs", "scale", "shift", "return_features", "avg_num_neighbors")
# set by `jaxmat train` itself (from `seed` and the output directory)
CLI_OWNED = {"fit": ("seed", "checkpoint_dir", "log_path", "mesh")}
# settings that may change when a run is resumed in the same output directory
RESUMABLE = {"fit.epochs", "fit.steps", "fit.max_minutes", "fit.progress", "fit.checkpoint_every",
             "fit.keep", "output"}


@dataclasses.dataclass
class DataConfig:
    """Labelled structures and their split.

    ``path``: any ASE-readable file (extxyz, ASE db, ...; ASE infers the format from the
    name; ``index`` an ASE index such as ``":"`` or ``"::2"``), or
    ``dataset``: a shipped dataset (``ammonia``, ``mlearn-Cu``, ...). Labels (energy eV,
    forces eV/Å, stress eV/Å³) come from ``energy_key``/``forces_key``/``stress_key`` when
    given (a structure without the key is an error), else from the file's calculator or a
    conventional key (``REF_energy``, ...). Split: ``split`` fractions (train, validation,
    test) with the run's seed; or ``split_file``, a JSON file ``{"train": [...], "val":
    [...], "test": [...]}`` of structure indices; ``test_path`` a separate test file (then
    the test fraction of ``split`` must be 0). ``val_batch_size``: structures per
    validation batch; ``layout``: batch layout (``auto`` picks among the model's).
    ``reference_energies``: the per-element E0s (eV) under the model's energies: ``"fit"``
    (least squares on the training split), ``"average"`` (the mean energy per atom for
    every element) or a table ``{H = -13.6, C = -1029.8, ...}`` covering every element of
    the data (:func:`jaxmat.core.potential.reference_energies`); stored in the bundle."""

    path: str | None = None
    dataset: str | None = None
    index: str = ":"
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_file: str | None = None
    test_path: str | None = None
    val_batch_size: int = 32
    layout: str = "auto"
    reference_energies: str | dict[str, float] = "fit"

    def __post_init__(self):
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'path' (a structure file) and 'dataset' "
                             f"(shipped: {list(SHIPPED)})")
        if self.dataset is not None and self.dataset not in SHIPPED:
            raise ValueError(f"dataset must be one of {list(SHIPPED)}, got {self.dataset!r}")
        file_only = [f for f in ("energy_key", "forces_key", "stress_key") if getattr(self, f)]
        if self.dataset is not None and (file_only or self.index != ":"):
            raise ValueError(f"{file_only or ['index']} apply to a 'path', not to the shipped "
                             f"dataset {self.dataset!r}")
        if any(f < 0 for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {list(self.split)}")
        if self.split_file is None and not self.split[1] > 0:
            raise ValueError("split needs a validation fraction > 0 (the best epoch is chosen "
                             "on validation data)")
        if self.test_path is not None and self.split[2] != 0:
            raise ValueError("with test_path the test fraction of split must be 0, e.g. "
                             "split = [0.9, 0.1, 0.0]")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        e0 = self.reference_energies
        if isinstance(e0, str) and e0 not in ("fit", "average"):
            raise ValueError(f"reference_energies must be 'fit', 'average' or a table of eV "
                             f"per element, got {e0!r}")
        if isinstance(e0, dict) and (not e0 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in e0.values())):
            raise ValueError(f"reference_energies must map element symbols to energies in eV, "
                             f"got {e0!r}")
        if not isinstance(e0, (str, dict)):
            raise ValueError(f"reference_energies must be 'fit', 'average' or a table of eV "
                             f"per element, got {e0!r}")
        if self.val_batch_size < 1:
            raise ValueError(f"val_batch_size must be >= 1, got {self.val_batch_size}")


@dataclasses.dataclass
class ModelConfig:
    """The potential: built-in model ``name`` with its settings in the table of that name
    (``[model.schnet]``: ``n_features``, ``n_interactions``, ``n_rbf``, ``cutoff`` Å, ...);
    ``stress``: also predict the stress (eV/Å³, needed by ``loss.stress`` and NPT). The
    reference energies and scale (``atom_refs``, ``scale``, ``shift``) are fitted on the
    training split and cannot be set."""

    name: str = "schnet"
    stress: bool = False
    schnet: SchNetConfig = dataclasses.field(default_factory=SchNetConfig)
    painn: PaiNNConfig = dataclasses.field(default_factory=PaiNNConfig)
    mace: MACEConfig = dataclasses.field(default_factory=MACEConfig)

    def __post_init__(self):
        if self.name not in MODELS:
            raise ValueError(f"name must be one of {list(MODELS)}, got {self.name!r}")
        default = MODELS[self.name]()
        for f in FITTED:
            if hasattr(default, f) and getattr(self.config, f) != getattr(default, f):
                raise ValueError(f"{self.name}.{f} is not a setting: it is fitted on the "
                                 "training split")

    @property
    def config(self) -> Any:
        """The settings of the chosen model (a ``SchNetConfig``, ``PaiNNConfig``, ...)."""
        return getattr(self, self.name)


@dataclasses.dataclass
class TrainConfig:
    """Everything ``jaxmat train`` needs. ``output``: the run directory (model bundle,
    checkpoints, logs, plots); ``seed``: split, initialisation, data order and dropout;
    ``committee``: number of members (1: a single model). ``loss``: weights of energy per
    atom, forces and stress, ``kind`` ``"mse"`` or ``"huber"`` (``delta`` in each target's
    unit). ``fit``: the schedule's length as ``steps`` or ``epochs`` (neither: from the
    training-set size, :func:`jaxmat.core.engine.default_steps`) and ``max_minutes`` (the
    schedule shrinks to fit it), learning rate ``lr`` → ``lr_end`` (Adam, cosine,
    ``warmup_epochs``), ``batch_size``, ``clip``, ``patience``, ``monitor``, ``ema_decay``,
    ``converge_tol``, ``checkpoint_every``, ``keep``, ``progress``. A committee's σ is
    recalibrated on the validation split and stored in the bundle."""

    data: DataConfig
    output: str = "runs/train"
    seed: int = 0
    committee: int = 1
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: EnergyForceLoss = dataclasses.field(default_factory=EnergyForceLoss)
    fit: CommitteeConfig = dataclasses.field(default_factory=CommitteeConfig)

    def __post_init__(self):
        if self.committee < 1:
            raise ValueError(f"committee must be >= 1 members, got {self.committee}")
        default = CommitteeConfig()
        for section, fields in CLI_OWNED.items():
            for f in fields:
                if getattr(getattr(self, section), f) != getattr(default, f):
                    raise ValueError(f"{section}.{f} is set by jaxmat train (from 'seed' and "
                                     "'output'); leave it out")
        if self.fit.batch_size < 1:
            raise ValueError(f"fit.batch_size must be >= 1, got {self.fit.batch_size}")
        if self.loss.stress and not self.model.stress:
            raise ValueError("loss.stress > 0 needs model.stress = true")
        monitors = ["loss", *(f"{t}_mae" for t in self.loss.targets)]
        if self.fit.monitor not in monitors:
            raise ValueError(f"fit.monitor must be one of {monitors} (with these loss "
                             f"weights), got {self.fit.monitor!r}")


# --------------------------------------------------------------------------- reading
def read_file(path: str) -> dict:
    """The raw dict of a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError("YAML configs need PyYAML (pip install pyyaml); or write the "
                              "config as TOML") from None
        with open(path, encoding="utf-8") as f:
            try:
                raw = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"{path} is not valid YAML: {e}") from None
        raw = {} if raw is None else raw
    else:
        import tomllib

        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path} is not valid TOML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a table of settings, got {raw!r}")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``raw`` with ``"dotted.key=value"`` settings applied (value in TOML syntax; a bare
    word is a string)."""
    import tomllib

    raw = json.loads(json.dumps(raw))  # a deep copy of plain values
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE (e.g. fit.epochs=10), got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        *parents, last = key.strip().split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is not a table")
        node[last] = value
    return raw


def load(path: str, overrides: list[str] = ()) -> TrainConfig:
    """The :class:`TrainConfig` of the file at ``path`` (plus ``--set`` ``overrides``);
    relative paths in it are taken relative to the file's directory and made absolute.
    ``ValueError`` names the file and the dotted key of any bad setting."""
    raw = apply_overrides(read_file(path), list(overrides))
    try:
        cfg = parse(raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    base = os.path.dirname(os.path.abspath(path))
    absolute = (lambda p: p if p is None else os.path.normpath(os.path.join(base, p)))
    cfg.output = absolute(cfg.output)
    for f in ("path", "split_file", "test_path"):
        setattr(cfg.data, f, absolute(getattr(cfg.data, f)))
    return cfg


def parse(raw: dict) -> TrainConfig:
    """:class:`TrainConfig` from a raw dict (checks that need the raw keys first)."""
    model = raw.get("model", {})
    if isinstance(model, dict):
        name = model.get("name", ModelConfig.name)
        other = [k for k in MODELS if k in model and k != name]
        if other:
            raise ValueError(f"config.model.{other[0]} is given but model.name is {name!r}; "
                             f"settings of {name!r} go in [model.{name}]")
    data = raw.get("data")
    if data is None:
        raise ValueError("config: the [data] table is missing (data.path or data.dataset)")
    if isinstance(data, dict) and "split" in data and "split_file" in data:
        raise ValueError("config.data: give split or split_file, not both")
    return from_dict(TrainConfig, raw, "config")


# --------------------------------------------------------------------------- writing
def to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict of ``cfg`` (None values and the unused model tables left out)."""
    raw = to_json(cfg)
    if cfg.data.split_file is not None:  # the split comes from the file; writing both
        raw["data"].pop("split", None)   # would make the written config unreadable
    raw["model"] = {k: v for k, v in raw["model"].items()
                    if k not in MODELS or k == cfg.model.name}
    for k in FITTED:
        raw["model"][cfg.model.name].pop(k, None)
    for section, fields in CLI_OWNED.items():
        for k in fields:
            raw[section].pop(k, None)
    return _drop_none(raw)


def _drop_none(d: dict) -> dict:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items()
            if v is not None}


def to_toml(cfg: TrainConfig) -> str:
    """``cfg`` as TOML text that :func:`load` reads back to an equal config."""
    lines: list[str] = []

    def table(name: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if name:
            lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)

    table("", to_dict(cfg))
    return "\n".join(lines).lstrip("\n") + "\n"


def differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(to_json(old)), flat(to_json(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
