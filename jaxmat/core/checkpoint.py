"""Orbax checkpoints: a pytree of arrays plus a JSON metadata dict per step.

Paths are made absolute (orbax requires it); managers are closed after use.
Existing checkpoints are never deleted except by orbax's ``max_to_keep`` rotation.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
    """Numbered checkpoints in ``directory``; ``save(step, state, meta)``, ``restore(template)``."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._mgr = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        self._mgr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta or {})),
            force=True,
        )
        self._mgr.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """Restore ``step`` (default latest) shaped like ``template``; returns (step, state, meta)."""
        step = self._step(step)
        out = self._mgr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(template),
                                    meta=ocp.args.JsonRestore()),
        )
        return step, out["state"], dict(out["meta"] or {})

    def state_keys(self, step: int | None = None) -> list[str]:
        """Top-level keys of the saved state tree (e.g. ``params``, ``opt_state``, ``best_params``)."""
        step = self._step(step)
        handler = ocp.StandardCheckpointHandler()
        try:
            tree = handler.metadata(epath.Path(self.directory) / str(step) / "state")
            return sorted(tree.keys())
        finally:
            handler.close()

    def restore_item(self, key: str, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore only ``state[key]`` (shaped like ``template``) and the metadata."""
        step = self._step(step)
        keys = self.state_keys(step)
        if key not in keys:
            raise ValueError(f"checkpoint {step} in {self.directory} has no {key!r}; it holds {keys}")
        item = {key: template}
        args = ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)
        out = self._mgr.restore(step, args=ocp.args.Composite(state=args,
                                                              meta=ocp.args.JsonRestore()))
        return out["state"][key], dict(out["meta"] or {})

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return step

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_params(directory: str | os.PathLike, params: Any, meta: dict | None = None) -> str:
    """Save one params pytree (e.g. a trained model) with metadata; returns the absolute path."""
    with Checkpointer(directory, max_to_keep=None) as ck:
        step = (ck.latest_step() or 0) + 1
        ck.save(step, {"params": params}, meta)
        return ck.directory


def load_params(directory: str | os.PathLike, template: Any,
                key: str | None = None) -> tuple[Any, dict]:
    """Load the latest params saved by :func:`save_params` or :func:`jaxmat.core.train.fit`.

    ``key`` picks the saved tree: by default ``"best_params"`` when present (a directory
    written by ``fit``), else ``"params"``; ``key="params"`` gives ``fit``'s last params.
    Only that tree is read, so ``template`` needs no optimiser state.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    with Checkpointer(directory, max_to_keep=None) as ck:
        if key is None:
            key = "best_params" if "best_params" in ck.state_keys() else "params"
        return ck.restore_item(key, template)
