"""Callbacks of the training loop (:func:`jaxmat.core.engine.run`): early stopping, orbax
checkpoints (save and resume), the CSV metrics log and the progress display.

Each hook receives the engine's :class:`~jaxmat.core.engine.Run` (mutable state of one fit)."""
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
    ``on_start`` resumes from the latest (exactly: arrays, counters, history)."""

    def __init__(self, directory: str, every: int = 10, keep: int = 2):
        self.ckpt, self.every = Checkpointer(directory, keep), every

    def on_start(self, run: Run) -> None:
        from jaxmat.core.engine import first, stack_one

        if self.ckpt.latest_step() is not None:
            _, state, meta = self.ckpt.restore(first(run.state) if run.single else run.state)
            run.load_meta(meta)
            run.state = stack_one(state) if run.single else state

    def on_epoch_end(self, run: Run, row: dict) -> None:
        from jaxmat.core.engine import first

        if run.epoch % self.every == 0 or run.done:
            self.ckpt.save(run.epoch, first(run.state) if run.single else run.state, run.meta())

    def on_end(self, run: Run) -> None:
        self.ckpt.close()


@dataclasses.dataclass
class CSVLog(Callback):
    """Append one row per epoch to ``path`` (header from the first row written;
    per-member values as ``<name>_m<k>`` columns)."""

    path: str

    def on_epoch_end(self, run: Run, row: dict) -> None:
        flat = {}
        for k, v in run.history[-1].items():
            flat.update({f"{k}_m{m}": x for m, x in enumerate(v)} if isinstance(v, list)
                        else {k: v})
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


class Progress(Callback):
    """Progress over the epochs of this call with the monitored metric: a tqdm bar on a
    terminal; otherwise (logs, pipes) one plain line every ``every_s`` seconds and at the end,
    so a log file does not fill with bar redraws."""

    def __init__(self, every_s: float = 30.0, stream: Any = None):
        self.every_s, self.stream = every_s, stream
        self.bar, self.last, self.pending = None, None, None

    def on_epoch_end(self, run: Run, row: dict) -> None:
        stream = self.stream or sys.stderr
        desc = "fit" if run.single else f"fit x{run.n}"
        metric = " ".join(f"{x:.4g}" for x in np.atleast_1d(
            row.get(f"val_{run.config.monitor}", row["train_loss"])))
        if self.bar is None and self.last is None and stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.stop_epoch - run.epoch + 1, unit="epoch", leave=False,
                            desc=desc, mininterval=2.0, file=stream)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({run.config.monitor: metric}, refresh=False)
            return
        line = f"{desc}: epoch {row['epoch']}/{run.stop_epoch} {run.config.monitor} {metric}"
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


def default_callbacks(cfg: FitConfig) -> list[Callback]:
    """Early stopping, checkpoints, CSV log and progress bar as ``cfg`` asks (in this order:
    a checkpoint sees whether early stopping ended the run)."""
    cbs: list[Callback] = [EarlyStopping(cfg.patience)] if cfg.patience is not None else []
    if cfg.checkpoint_dir:
        cbs.append(Checkpoint(cfg.checkpoint_dir, cfg.checkpoint_every, cfg.keep))
    log = cfg.log_path or (os.path.join(os.path.abspath(cfg.checkpoint_dir), "metrics.csv")
                           if cfg.checkpoint_dir else None)
    cbs += [CSVLog(log)] if log else []
    return cbs + ([Progress()] if cfg.progress else [])
