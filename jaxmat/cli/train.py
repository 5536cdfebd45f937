"""``jaxmat train CONFIG``: labelled structures + a config file -> a model bundle.

The recipe is the README Quickstart's, in library functions: :func:`read_data` (structures
and their split), :func:`prepare` (records, fitted references, model, loss, loaders),
:func:`init_params` and :func:`fit` (``train.fit`` for one model, ``ensemble.fit`` for a
committee), and :func:`run`, which adds the run directory::

    <output>/config.toml        the resolved config (every default written out)
    <output>/split.json         structure indices of the train/val/test split
    <output>/checkpoints/       orbax checkpoints: rerunning resumes from them (at most one
                                per minute by default, and at the last epoch)
    <output>/metrics.csv        one row per epoch, metric names with units
    <output>/tensorboard/       TensorBoard event files (with tensorboardX installed)
    <output>/model/             the bundle (jaxmat.load, jaxmat eval/md/info)
    <output>/metrics.json       validation and test errors of the best epoch
    <output>/parity.png, learning_curve.png   (with matplotlib installed)

Nothing is written before the config and the data have been checked; an existing run
directory is resumed when its config agrees (only :data:`jaxmat.cli.config.RESUMABLE`
settings may change), and a finished one (``model/`` present) or a foreign directory is
never written over unless ``overwrite``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import warnings
from typing import Any, TextIO

import numpy as np

from jaxmat import data as jdata
from jaxmat.cli import config as cli_config
from jaxmat.cli.config import DataConfig, TrainConfig
from jaxmat.cli.eval import errors, parity_plot, pyplot
from jaxmat.core import bundle, calibrate, callbacks, engine, ensemble, graph, potential, train
from jaxmat.core.files import write_atomic
from jaxmat.core.protocol import Model, Params
from jaxmat.models import mace, painn, schnet
from jaxmat.models.mace import mean_neighbors

BUILDERS = {"schnet": schnet, "painn": painn, "mace": mace}
FILES = ("config.toml", "split.json", "checkpoints", "metrics.csv", "tensorboard", "model",
         "metrics.json", "parity.png", "learning_curve.png")


# --------------------------------------------------------------------------- data
def read_atoms(cfg: DataConfig, path: str | None = None) -> list:
    """The structures of ``path`` (default ``cfg.path``; ``cfg.index`` and the label keys
    applied by :func:`jaxmat.data.read_structures`) or of the shipped ``cfg.dataset``."""
    if path is None and cfg.dataset is not None:
        if cfg.dataset == "ammonia":
            return jdata.load_ammonia()
        return jdata.load_mlearn(cfg.dataset.split("-", 1)[1], "train")
    return jdata.read_structures(path or cfg.path, cfg.index, cfg.energy_key, cfg.forces_key,
                                 cfg.stress_key)


def split(cfg: DataConfig, n: int, seed: int, n_test_file: int = 0) -> dict[str, list[int]]:
    """Indices of the train/val/test structures: from ``cfg.split_file``, else random
    fractions ``cfg.split`` with ``seed`` (:func:`jaxmat.data.split_indices`). With a
    separate test file the test indices refer to it (``n_test_file`` structures)."""
    if cfg.split_file is not None:
        if not os.path.isfile(cfg.split_file):
            raise FileNotFoundError(f"data.split_file not found: {cfg.split_file}")
        try:
            with open(cfg.split_file) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"data.split_file {cfg.split_file} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or not {"train", "val"} <= set(raw) \
                or set(raw) - {"train", "val", "test"}:
            raise ValueError(f"data.split_file {cfg.split_file} must hold the lists 'train', "
                             f"'val' and optionally 'test', got keys {sorted(raw)}")
        out = {k: raw.get(k, []) for k in ("train", "val", "test")}
        for k, idx in out.items():
            bound = n_test_file if (k == "test" and cfg.test_path) else n
            if not isinstance(idx, list) or not all(isinstance(i, int) and 0 <= i < bound
                                                    for i in idx):
                raise ValueError(f"data.split_file {cfg.split_file}: {k!r} must be a list of "
                                 f"structure indices in 0..{bound - 1}")
        if set(out["train"]) & set(out["val"]):
            raise ValueError(f"data.split_file {cfg.split_file}: train and val overlap")
    else:
        parts = jdata.split_indices(n, cfg.split, seed=seed)
        out = {k: [int(i) for i in idx] for k, idx in zip(("train", "val", "test"), parts)}
    if cfg.test_path is not None and cfg.split_file is None:
        out["test"] = list(range(n_test_file))
    for k in ("train", "val"):
        if not out[k]:
            raise ValueError(f"the {k} split is empty ({n} structures, split {list(cfg.split)})")
    return out


def read_data(cfg: DataConfig, seed: int) -> tuple[dict[str, list], dict[str, list[int]]]:
    """``({"train": atoms, "val": atoms, "test": atoms}, split indices)``; errors name the
    ``data`` setting they come from."""
    try:
        atoms = read_atoms(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"data.{'path' if cfg.path else 'dataset'}: {e}") from None
    try:
        test_file = read_atoms(cfg, cfg.test_path) if cfg.test_path else []
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"data.test_path: {e}") from None
    idx = split(cfg, len(atoms), seed, len(test_file))
    test_src = test_file if cfg.test_path else atoms
    parts = {k: [(test_src if k == "test" else atoms)[i] for i in v] for k, v in idx.items()}
    return parts, idx


# --------------------------------------------------------------------------- model + fit
@dataclasses.dataclass
class Prepared:
    """What a fit needs: the model (references, scale and, for MACE, the mean neighbour count
    fitted on ``records["train"]``),
    records per split, the loss and the loaders."""

    model: Model
    records: dict[str, list[graph.Record]]
    loss: engine.EnergyForceLoss
    loader: graph.GraphLoader
    val_loader: graph.GraphLoader


def prepare(cfg: TrainConfig, parts: dict[str, list]) -> Prepared:
    """Records of the model's graph spec, model with ``energy_stats`` of the training records,
    loaders (``fit.batch_size``, shuffled with ``seed``; validation in ``data.val_batch_size``),
    and a check that the data carry every target the loss needs."""
    mcfg = cfg.model.config
    spec = BUILDERS[cfg.model.name](mcfg).graph  # the graph does not depend on the statistics
    records = {k: graph.records(v, spec) if v else [] for k, v in parts.items()}
    e0 = cfg.data.reference_energies
    if isinstance(e0, dict):  # every element of every split needs its E0
        from ase.data import chemical_symbols

        seen = {chemical_symbols[int(z)] for v in records.values() for r in v for z in r.numbers}
        missing = sorted(seen - set(e0))
        if missing:
            raise ValueError(f"data.reference_energies gives no E0 for {missing}, which the "
                             f"data contain (given: {sorted(e0)})")
    try:
        mcfg = mcfg.with_stats(*potential.output_stats(records["train"], e0))
    except ValueError as e:
        raise ValueError(f"data.reference_energies: {e}") from None
    if hasattr(mcfg, "avg_num_neighbors"):  # MACE's message normalisation, from the data
        mcfg = dataclasses.replace(mcfg, avg_num_neighbors=mean_neighbors(
            records["train"]))
    model = potential.potential(BUILDERS[cfg.model.name](mcfg), stress=cfg.model.stress)
    loader = graph.GraphLoader(records["train"], batch_size=cfg.fit.batch_size,
                               layout=cfg.data.layout, model=model, seed=cfg.seed)
    val_loader = graph.GraphLoader(records["val"], cfg.data.val_batch_size, shuffle=False,
                                   layout=cfg.data.layout, model=model)
    engine.check_targets(cfg.loss, next(iter(loader)), "training")
    engine.check_targets(cfg.loss, next(iter(val_loader)), "validation")
    return Prepared(model, records, cfg.loss, loader, val_loader)


def init_params(cfg: TrainConfig, p: Prepared) -> Params:
    """Initial params from ``seed`` (a committee of ``cfg.committee`` for more than one)."""
    import jax

    key, example = jax.random.key(cfg.seed), next(iter(p.loader))
    if cfg.committee == 1:
        return p.model.init(key, example)
    return ensemble.init(p.model, key, example, n_members=cfg.committee)


def fit(cfg: TrainConfig, p: Prepared, params: Params, cbs: tuple = (),
        max_epochs: int | None = None):
    """``train.fit`` (one model) or ``ensemble.fit`` (committee) with ``cfg.fit`` and the
    run's seed; ``cbs`` (callbacks) come first. Returns the library's fit result (best
    params in ``.params``)."""
    fcfg = dataclasses.replace(cfg.fit, seed=cfg.seed)
    if cfg.committee == 1:
        return train.fit(p.model, params, p.loader, p.val_loader, p.loss, fcfg,
                         max_epochs=max_epochs, callbacks=cbs)
    return ensemble.fit(p.model, params, p.loader, p.val_loader, p.loss, fcfg,
                        max_epochs=max_epochs, callbacks=cbs)


# --------------------------------------------------------------------------- run directory
def claim(cfg: TrainConfig, overwrite: bool) -> bool:
    """Make ``cfg.output`` ready; True when an earlier run there is resumed. Refuses (before
    writing anything) a directory that is not a jaxmat run, a finished run and a run with
    other settings, unless ``overwrite`` (then the run's own files are removed)."""
    out = cfg.output
    if os.path.lexists(out) and not os.path.isdir(out):
        raise FileExistsError(f"output {out} exists and is not a directory")
    entries = os.listdir(out) if os.path.isdir(out) else []
    if not entries:
        return False
    cfg_file = os.path.join(out, "config.toml")
    if not os.path.isfile(cfg_file):
        raise FileExistsError(f"output {out} is not empty and holds no jaxmat run (no "
                              "config.toml); choose another output directory")
    if overwrite:
        for name in FILES:
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        return False
    if os.path.exists(os.path.join(out, "model")):
        raise FileExistsError(f"output {out} holds a finished run (model/); pass --overwrite "
                              "to train again from scratch there, or choose another output")
    changed = [k for k in cli_config.differences(cli_config.load(cfg_file), cfg)
               if k not in cli_config.RESUMABLE]
    if changed:
        raise ValueError(f"output {out} holds a run with other settings {changed}; resume "
                         "with the same config, pass --overwrite, or choose another output")
    return True


def run(cfg: TrainConfig, overwrite: bool = False, max_epochs: int | None = None,
        log_every_s: float = 30.0, tensorboard: bool = True,
        checkpoint_every_s: float | None = 60.0, stream: TextIO | None = None,
        where: str = "config") -> dict[str, Any]:
    """Train as ``cfg`` says and write the run directory (see the module docstring).
    ``max_epochs`` caps the epochs of this call (the schedule follows the plan; rerun
    to continue). Checkpoints: every ``fit.checkpoint_every`` epochs but at most one per
    ``checkpoint_every_s`` seconds, and at the end. Returns the summary written to
    ``metrics.json``, or, when the run stopped at ``max_epochs`` before the schedule ends,
    ``{"finished": False, ...}``. Errors in the data are prefixed with ``where`` (the
    config file)."""
    stream = stream or sys.stderr
    t0 = time.perf_counter()
    try:
        parts, idx = read_data(cfg.data, cfg.seed)
        p = prepare(cfg, parts)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{where}: {e}") from None
    if tensorboard and not callbacks.tensorboard_available():
        print("jaxmat train: TensorBoard files skipped: tensorboardX is not installed "
              "(pip install 'jaxmat[logging]')", file=stream)
        tensorboard = False
    resumed = claim(cfg, overwrite)
    out = cfg.output
    split_file = os.path.join(out, "split.json")
    if resumed and os.path.isfile(split_file):
        with open(split_file) as f:
            if json.load(f) != idx:
                raise ValueError(f"output {out} was trained on another split of the data "
                                 "(split.json differs: has the data file changed?); pass "
                                 "--overwrite or choose another output")
    os.makedirs(out, exist_ok=True)
    write_atomic(os.path.join(out, "config.toml"), cli_config.to_toml(cfg))
    write_atomic(split_file, json.dumps(idx) + "\n")
    n = {k: len(v) for k, v in p.records.items()}
    print(f"jaxmat train: {n['train']} train / {n['val']} validation / {n['test']} test "
          f"structures; {cfg.model.name}{'' if cfg.committee == 1 else f' x{cfg.committee}'}; "
          f"{'resuming' if resumed else 'writing'} {out}", file=stream, flush=True)
    keys = tuple(f"val_{s}" if cfg.committee == 1 else f"val_committee_{s}"
                 for s in (f"{t}_mae" for t in cfg.loss.targets))
    # the engine's own callbacks, built here with the CLI's options (checkpoint throttle,
    # unit names); the config handed to the engine then asks for none of them itself
    full = dataclasses.replace(cfg.fit, checkpoint_dir=os.path.join(out, "checkpoints"),
                               log_path=os.path.join(out, "metrics.csv"), progress=False)
    cbs = callbacks.default_callbacks(full, checkpoint_every_s=checkpoint_every_s, units=True)
    if cfg.fit.progress:
        cbs.append(callbacks.Progress(every_s=log_every_s, stream=stream, keys=keys))
    if tensorboard:
        cbs.append(callbacks.TensorBoard(os.path.join(out, "tensorboard")))
    engine_cfg = dataclasses.replace(cfg, fit=dataclasses.replace(
        full, patience=None, checkpoint_dir=None, log_path=None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", engine.NotConvergedWarning)
        res = fit(engine_cfg, p, init_params(cfg, p), tuple(cbs), max_epochs)
    for w in caught:  # through the run's stream, as the other lines
        print(f"jaxmat train: warning: {w.message}", file=stream, flush=True)
    epochs = len(res.history)
    if res.convergence is None and not _stopped(res) and max_epochs is not None:
        print(f"jaxmat train: stopped after epoch {epochs} (--max-epochs); rerun the same "
              "command to continue", file=stream)
        return {"finished": False, "epochs_run": epochs}
    summary = finish(cfg, p, res, idx, time.perf_counter() - t0)
    print(f"jaxmat train: saved {os.path.join(out, 'model')}", file=stream)
    return summary


def _stopped(res: Any) -> bool:
    s = res.stopped_early
    return bool(np.all(s)) if isinstance(s, list) else bool(s)


def finish(cfg: TrainConfig, p: Prepared, res: Any, idx: dict, seconds: float) -> dict:
    """Errors of the best params on validation and test, plots, the bundle."""
    out = cfg.output
    summary: dict[str, Any] = {
        "finished": True, "epochs_run": len(res.history),
        "best_epoch": res.best_epoch, "timed_out": res.timed_out, "train_seconds": res.seconds,
        "n_structures": {k: len(v) for k, v in idx.items()},
        "convergence": res.convergence}
    calibration = None
    if cfg.committee > 1:  # σ recalibrated on the validation split, stored in the bundle
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            calibration = calibrate.fit_committee(p.model, res.params, p.records["val"],
                                                  batch_size=cfg.data.val_batch_size)
        for w in caught:
            print(f"jaxmat train: warning: {w.message}", file=sys.stderr, flush=True)
        summary["calibration"] = calibration
    arrays = {}
    for k in ("val", "test"):
        if p.records[k]:
            summary[k], arrays[k] = errors(p.model, res.params, p.records[k],
                                           cfg.data.val_batch_size, calibration)
    write_atomic(os.path.join(out, "metrics.json"), json.dumps(summary, indent=1) + "\n")
    which = "test" if "test" in arrays else "val"
    parity_plot(os.path.join(out, "parity.png"), arrays[which],
                f"{cfg.model.name}: {which} split ({len(p.records[which])} structures)")
    learning_curve(os.path.join(out, "learning_curve.png"), res.history)
    bundle.save(os.path.join(out, "model"), p.model, res.params,
                metadata={"config": cli_config.to_dict(cfg), "metrics": summary,
                          "wall_seconds": seconds},
                training=bundle.training_summary(p.records["train"], cfg.data.reference_energies),
                calibration=calibration)
    return summary


def learning_curve(path: str, history: list[dict]) -> bool:
    """Training loss and validation MAEs (units in the legend) per epoch, log scale."""
    plt = pyplot()
    if plt is None or not history:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    for key in history[0]:
        if key == "train_loss" or (key.startswith("val_") and key.endswith("_mae")):
            y = np.array([np.mean(r[key]) for r in history], dtype=float)
            ax.plot(epochs, y, label=callbacks.unit_name(key))
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


