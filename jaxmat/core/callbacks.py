"""Callbacks of the training loop (:func:`jaxmat.core.engine.run`): early stopping, orbax
checkpoints (save and resume), the CSV metrics log, TensorBoard event files and the progress
display.

Each hook receives the engine's :class:`~jaxmat.core.engine.Run` (mutable state of one fit).
The engine's metric keys (``val_energy_mae``, ...) stay as they are; :func:`unit_name` maps
them to names that carry their unit (``val_energy_mae_eV_per_atom``) for logs read by people.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxmat.core.checkpoint import Checkpointer

if TYPE_CHECKING:
    from jaxmat.core.engine import FitConfig, Run

# units of the stats of jaxmat.core.engine.EnergyForceLoss (energy per atom, force and
# stress components); the loss itself is a weighted sum without one unit
UNITS = {"energy_mae": "eV_per_atom", "forces_mae": "eV_per_A", "stress_mae": "eV_per_A3"}


def unit_name(key: str) -> str:
    """``key`` with its unit appended when it names a stat of
    :class:`~jaxmat.core.engine.EnergyForceLoss` (``train_``, ``val_``, ``val_committee_``
    prefixes and ``_m<k>`` member suffixes kept): ``val_energy_mae`` ->
    ``val_energy_mae_eV_per_atom``, ``train_forces_mae_m2`` -> ``train_forces_mae_eV_per_A_m2``;
    other keys unchanged."""
    base, member = key, ""
    head, _, tail = key.rpartition("_m")
    if head and tail.isdigit():
        base, member = head, f"_m{tail}"
    for stat, unit in UNITS.items():
        if base == stat or base.endswith("_" + stat):
            return f"{base}_{unit}{member}"
    return key


def flat_row(row: dict) -> dict:
    """A history row with per-member lists as ``<name>_m<k>`` entries."""
    flat = {}
    for k, v in row.items():
        flat.update({f"{k}_m{m}": x for m, x in enumerate(v)} if isinstance(v, list) else {k: v})
    return flat


class Callback:
    """Hooks of :func:`run`: ``on_start`` (before the first epoch), ``on_epoch_end`` (after
    the epoch is recorded in ``run.history``; ``run.done`` tells whether it is the last)
    and ``on_end`` (always, also after an error). Set ``run.stop = True`` to end early."""

    def on_start(self, run: Run) -> None:
        pass

    def on_epoch_end(self, run: Run, row: dict) -> None:
        pass

    def on_end(self, run: Run) -> None:
        pass


@dataclasses.dataclass
class EarlyStopping(Callback):
    """Freeze each member after ``patience`` epochs without a better monitored metric."""

    patience: int

    def on_epoch_end(self, run: Run, row: dict) -> None:
        run.stopped |= run.bad_epochs >= self.patience


class Checkpoint(Callback):
    """Orbax checkpoints in ``directory`` every ``every`` epochs and at the last one;
    ``on_start`` resumes from the latest (exactly: arrays, counters, history). With
    ``every_s``, an ``every``-th epoch is saved only when ``every_s`` seconds have passed
    since the last save (a save costs 0.1-1 s: short epochs would otherwise spend more time
    saving than training)."""

    def __init__(self, directory: str, every: int = 10, keep: int = 2,
                 every_s: float | None = None):
        self.ckpt, self.every, self.every_s = Checkpointer(directory, keep), every, every_s
        self.last = time.monotonic()

    def on_start(self, run: Run) -> None:
        from jaxmat.core.committee import first, stack_one

        if self.ckpt.latest_step() is not None:
            _, state, meta = self.ckpt.restore(first(run.state) if run.single else run.state)
            run.load_meta(meta)
            run.state = stack_one(state) if run.single else state

    def on_epoch_end(self, run: Run, row: dict) -> None:
        from jaxmat.core.committee import first

        due = run.epoch % self.every == 0 and (
            self.every_s is None or time.monotonic() - self.last >= self.every_s)
        if due or run.done:
            self.ckpt.save(run.epoch, first(run.state) if run.single else run.state, run.meta())
            self.last = time.monotonic()

    def on_end(self, run: Run) -> None:
        self.ckpt.close()


@dataclasses.dataclass
class CSVLog(Callback):
    """Append one row per epoch to ``path`` (header from the first row written;
    per-member values as ``<name>_m<k>`` columns; with ``units`` the columns are named by
    :func:`unit_name`)."""

    path: str
    units: bool = False
    _started: bool = dataclasses.field(default=False, init=False, repr=False)

    def on_epoch_end(self, run: Run, row: dict) -> None:
        flat = flat_row(run.history[-1])
        if self.units:
            flat = {unit_name(k): v for k, v in flat.items()}
        if not self._started:
            self._drop_from(int(flat["epoch"]))
            self._started = True
        new = not os.path.exists(self.path)
        fields = list(flat)
        if not new:
            with open(self.path) as f:
                fields = f.readline().strip().split(",")
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
            if new:
                w.writeheader()
            w.writerow(flat)

    def _drop_from(self, epoch: int) -> None:
        """Remove rows of ``epoch`` and later: a run resumed from an older checkpoint
        (e.g. after a kill) repeats them."""
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "epoch" not in rows[0]:
            return
        col = rows[0].index("epoch")
        keep = rows[:1] + [r for r in rows[1:] if r and int(float(r[col])) < epoch]
        if len(keep) < len(rows):
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(keep)


class Progress(Callback):
    """Progress over the epochs of this call: a tqdm bar on a terminal; otherwise (logs,
    pipes) one plain line every ``every_s`` seconds and at the end, so a log file does not
    fill with bar redraws. Shown: step of the schedule, learning rate, training and
    validation loss, and the MAEs of the row by their :func:`unit_name` (``keys`` limits
    the MAEs to those entries, e.g. ``("val_energy_mae", "val_forces_mae")``)."""

    def __init__(self, every_s: float = 30.0, stream: Any = None, keys: tuple[str, ...] = ()):
        self.every_s, self.stream, self.keys = every_s, stream, tuple(keys)
        self.bar, self.last, self.pending = None, None, None

    def _values(self, row: dict) -> dict[str, str]:
        want = [unit_name(k) for k in self.keys] if self.keys else [
            k for k in row if k.endswith(tuple(UNITS.values())) and "_mae_" in k
            and (k.startswith("train_") or k.startswith("val_"))]
        shown = {}
        for k in ["train_loss", "val_loss", *want]:
            if k in row and (k.endswith("loss") or k in want):
                shown[k] = " ".join(f"{x:.4g}" for x in np.atleast_1d(row[k]))
        return shown

    def on_epoch_end(self, run: Run, row: dict) -> None:
        stream = self.stream or sys.stderr
        desc = "fit" if run.single else f"fit x{run.n}"
        values = self._values(row)
        if self.bar is None and self.last is None and stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.stop_epoch - run.epoch + 1, unit="epoch", leave=False,
                            desc=desc, mininterval=2.0, file=stream)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(values, refresh=False)
            return
        line = (f"{desc}: epoch {row['epoch']}/{run.stop_epoch} step {row.get('steps', '?')}/"
                f"{run.total_steps} lr {row.get('lr', float('nan')):.3g}")
        line += "".join(f", {k} {v}" for k, v in values.items())
        now = time.monotonic()
        if self.last is None or now - self.last >= self.every_s:
            print(line, file=stream, flush=True)
            self.last, self.pending = now, None
        else:
            self.pending = line

    def on_end(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.pending:  # the last epoch, whatever stopped the run
            print(self.pending, file=self.stream or sys.stderr, flush=True)


def tensorboard_available() -> bool:
    """Whether tensorboardX (the ``logging`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("tensorboardX") is not None


class TensorBoard(Callback):
    """TensorBoard event files in ``logdir``: every numeric entry of each epoch's row as a
    scalar named by :func:`unit_name` (per-member values as ``<name>_m<k>``), step = epoch;
    written to disk every ``flush_s`` seconds and at the end (a flush per epoch cost 7 ms,
    a third of an ammonia SchNet epoch).
    Needs tensorboardX (the ``logging`` extra: ``pip install 'jaxmat[logging]'``); a resumed
    run adds a new event file beside the old ones and continues the epoch count."""

    def __init__(self, logdir: str, flush_s: float = 10.0):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard logging needs tensorboardX, which is not installed; "
                              "install the 'logging' extra: pip install 'jaxmat[logging]'") from None
        self.logdir = os.path.abspath(logdir)
        self.writer = SummaryWriter(self.logdir, flush_secs=flush_s)

    def on_epoch_end(self, run: Run, row: dict) -> None:
        for k, v in flat_row(run.history[-1]).items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) \
                    and np.isfinite(v):
                self.writer.add_scalar(unit_name(k), float(v), run.epoch)

    def on_end(self, run: Run) -> None:
        self.writer.close()


def default_callbacks(cfg: FitConfig, *, checkpoint_every_s: float | None = None,
                      units: bool = False) -> list[Callback]:
    """Early stopping, checkpoints, CSV log and progress bar as ``cfg`` asks (in this order:
    a checkpoint sees whether early stopping ended the run); ``checkpoint_every_s`` and
    ``units`` as for :class:`Checkpoint` and :class:`CSVLog`."""
    cbs: list[Callback] = [EarlyStopping(cfg.patience)] if cfg.patience is not None else []
    if cfg.checkpoint_dir:
        cbs.append(Checkpoint(cfg.checkpoint_dir, cfg.checkpoint_every, cfg.keep,
                              checkpoint_every_s))
    log = cfg.log_path or (os.path.join(os.path.abspath(cfg.checkpoint_dir), "metrics.csv")
                           if cfg.checkpoint_dir else None)
    cbs += [CSVLog(log, units)] if log else []
    return cbs + ([Progress()] if cfg.progress else [])
