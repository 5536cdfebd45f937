"""Losses of the engine: ``loss(outputs, batch) -> (scalar, stats)`` where ``stats`` maps a
metric name to ``(sum, count)``. Built-in losses are frozen dataclasses (equal when their
settings are, so they key the step cache), declare the batch entries they need in
``targets`` and apply padding masks with ``jnp.where``, so NaN/inf in padded entries reach
neither the loss nor its gradient."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Stats = dict[str, tuple[jax.Array, jax.Array]]
Loss = Callable[[dict, Any], tuple[jax.Array, Stats]]
BOOKKEEPING = frozenset({"mask", "positions", "species", "graph", "cell", "pbc", "n_atoms",
                         "dense"})


def penalty(err: jax.Array, kind: str = "mse", delta: float = 1.0) -> jax.Array:
    """Per-component penalty: ``err²`` (``"mse"``) or Huber (``"huber"``): ``err²`` for
    ``|err| <= delta``, ``2·delta·|err| - delta²`` beyond (2x optax's Huber, so both kinds
    agree on small errors); ``delta`` in the units of ``err``."""
    if kind == "huber":
        a = jnp.abs(err)
        return jnp.where(a <= delta, err**2, 2.0 * delta * a - delta**2)
    return err**2


def masked_error(err: jax.Array, mask: jax.Array, kind: str = "mse",
                 delta: float = 1.0) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Mean :func:`penalty` over the entries where ``mask`` (bool, leading axes of ``err``)
    is True, and the ``(sum |err|, count)`` MAE stat; other entries are replaced with
    ``jnp.where``, so NaN/inf there cannot reach the value or its gradient."""
    m = jnp.broadcast_to(jnp.reshape(mask, mask.shape + (1,) * (err.ndim - mask.ndim)), err.shape)
    err = jnp.where(m, err, 0.0)
    count = jnp.sum(m).astype(jnp.float32)
    value = jnp.sum(jnp.where(m, penalty(err, kind, delta), 0.0)) / jnp.maximum(count, 1.0)
    return value, (jnp.sum(jnp.abs(err)), count)


def label_mask(store: dict, name: str) -> jax.Array:
    """Bool mask of real entries of ``store`` that carry label ``name`` (``<name>_mask``)."""
    return jnp.asarray(store["mask"], bool) & jnp.asarray(store.get(f"{name}_mask", True), bool)


def _check_kind(kind: str, delta: float) -> None:
    if kind not in ("mse", "huber"):
        raise ValueError(f"loss kind must be 'mse' or 'huber', got {kind!r}")
    if not delta > 0:
        raise ValueError(f"Huber delta must be positive, got {delta}")


@dataclasses.dataclass(frozen=True)
class EnergyForceLoss:
    """Weighted loss on energy per atom (eV/atom), forces (eV/Å per component) and stress
    (eV/Å³): MSE, or Huber with ``delta`` in each target's units (``kind="huber"``).

    Stats: ``energy_mae``, ``forces_mae``, ``stress_mae``. Labels with a ``<name>_mask``
    (e.g. stress on some structures) count only where True. A target with weight 0 is
    neither needed nor used."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0
    kind: str = "mse"
    delta: float = 0.01

    def __post_init__(self):
        _check_kind(self.kind, self.delta)
        if not self.targets:
            raise ValueError("energy_force_loss needs a non-zero weight on energy, forces "
                             "or stress")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(k for k in ("energy", "forces", "stress") if getattr(self, k))

    def __call__(self, out: dict, batch: Any) -> tuple[jax.Array, Stats]:
        total, stats = 0.0, {}
        for name in self.targets:
            store = batch.nodes if name == "forces" else batch.globals
            err = out[name] - store[name]
            if name == "energy":
                err = err / jnp.maximum(batch.globals["n_atoms"], 1.0)
            value, stats[f"{name}_mae"] = masked_error(err, label_mask(store, name), self.kind,
                                                       self.delta)
            total = total + getattr(self, name) * value
        return total, stats


@dataclasses.dataclass(frozen=True)
class TargetLoss:
    """MSE (or Huber) of ``outputs[key]`` vs a graph-level target ``globals[key]`` (scalar
    or vector; divided by ``n_atoms`` with ``per_atom``). Works for graph batches and plain
    dict batches with a ``mask`` entry. Stats: ``<key>_mae`` (per component)."""

    key: str = "target"
    per_atom: bool = False
    kind: str = "mse"
    delta: float = 1.0

    def __post_init__(self):
        _check_kind(self.kind, self.delta)

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.key,)

    def __call__(self, out: dict, batch: Any) -> tuple[jax.Array, Stats]:
        g = batch.globals if hasattr(batch, "globals") else batch
        err = out[self.key] - g[self.key]
        if self.per_atom:
            err = err / jnp.maximum(g["n_atoms"], 1.0).reshape((-1,) + (1,) * (err.ndim - 1))
        value, stat = masked_error(err, label_mask(g, self.key), self.kind, self.delta)
        return value, {f"{self.key}_mae": stat}


energy_force_loss, target_loss = EnergyForceLoss, TargetLoss  # the lower-case names


def check_targets(loss: Loss, batch: Any, data: str = "training") -> None:
    """Raise ``ValueError`` when ``batch`` lacks a target named in ``loss.targets``, naming
    it and the target keys the batch does carry (``globals`` and ``nodes``)."""
    glob, nodes = (batch.globals, batch.nodes) if hasattr(batch, "globals") else (batch, {})
    missing = [k for k in getattr(loss, "targets", ()) if k not in glob and k not in nodes]
    if missing:
        found = sorted(k for k in {*glob, *nodes}
                       if k not in BOOKKEEPING and not k.endswith("_mask"))
        raise ValueError(f"the loss needs target(s) {missing} but the {data} data carry "
                         f"{found or 'no targets'}")

