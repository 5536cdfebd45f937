"""Active learning: train committee → propose → select → label (oracle) → store → retrain.

Generations:

* 0 — the seed structures are labelled by the oracle (or kept with their own labels).
* g ≥ 1 — committee ``C_g`` is trained on every label of generations < g; it proposes
  candidates (``strategy``: ``adversarial`` attacks of :mod:`jaxmat.workflows.adversarial.attack`,
  ``random`` Gaussian displacements, ``normal_modes`` harmonic thermal samples, or ``md``
  committee-driven Langevin replicas stopped at the first frame over a σ threshold or an
  energy cap, on :mod:`jaxmat.md`); the chosen
  ones are written to the store as *pending* in one transaction, then labelled by the
  oracle in ``workers`` local processes (or any ``concurrent.futures.Executor`` given to
  :func:`run`), each label stored by this process as soon as it arrives.
* After the last generation G, ``C_{G+1}`` is trained on everything and returned.

Resuming: everything lives in ``workdir`` — ``labels.db`` (:class:`jaxmat.workflows.adversarial.store.Store`),
``committee/`` (orbax checkpoint of ``C_g`` per generation), ``config.toml`` and
``progress.jsonl``. Rerunning :func:`run` after a crash (even ``kill -9``) restores the
latest committee, skips proposals already written, labels only rows still pending, so no
stored label is lost or stored twice (only calls in flight at the kill are computed again).
Proposals and training are seeded per generation, so a retrained committee equals the lost
one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxmat.core import ensemble, graph, train
from jaxmat.core.checkpoint import Checkpointer
from jaxmat.core.files import write_atomic
from jaxmat.core.protocol import Model, Params, resolve_spec
from jaxmat.workflows.adversarial.active_config import (  # ActiveConfig, STRATEGIES re-exported
    _RESUMABLE_CHANGES, STRATEGIES, ActiveConfig, _seed)
from jaxmat.workflows.adversarial.attack import Boltzmann, attack
from jaxmat.workflows.adversarial import normal_modes
from jaxmat.workflows.adversarial.md_sampling import committee_md, langevin  # noqa: F401
from jaxmat.workflows.adversarial.oracle import Oracle
from jaxmat.workflows.adversarial.select import (committee_predict, select, too_close,
                                                 variance_threshold)
from jaxmat.workflows.adversarial.store import Store


@dataclasses.dataclass
class ActiveResult:
    """``params``: the final committee C_{G+1}; ``reports``: one dict per generation;
    ``store``: the label database; ``workdir``: absolute path of the run."""

    params: Params
    reports: list[dict]
    store: Store
    workdir: str


# --------------------------------------------------------------------------- the loop
class _Loop:
    def __init__(self, cfg: ActiveConfig, model: Model, oracle: Oracle, seeds: Sequence[Any],
                 cutoff: float | None, evaluate: Callable | None, executor: Any = None):
        self.cfg, self.model, self.oracle = cfg, model, oracle
        self.executor, self._pool = executor, None
        self.evaluate = evaluate
        self.workdir = os.path.abspath(cfg.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._check_config()
        self.spec = resolve_spec(model, cutoff)
        self.cutoff = self.spec.cutoff
        self.store = Store(os.path.join(self.workdir, "labels.db"))
        self.ckpt_dir = os.path.join(self.workdir, "committee")
        self.progress_path = os.path.join(self.workdir, "progress.jsonl")
        self.seeds = list(seeds)
        self._records: dict[int, graph.Record] = {}
        self._template = None

    # ------------------------------------------------------------------ bookkeeping
    def _check_config(self) -> None:
        path = os.path.join(self.workdir, "config.toml")
        if os.path.exists(path):
            old = ActiveConfig.from_toml(path, workdir=self.cfg.workdir).to_dict()
            diff = [k for k, v in self.cfg.to_dict().items()
                    if k not in _RESUMABLE_CHANGES | {"workdir"} and old[k] != v]
            if diff:
                raise ValueError(f"{self.workdir} holds a run with different settings {diff}; "
                                 "use a new workdir (existing runs are never overwritten)")
        write_atomic(path, self.cfg.to_toml())

    def log(self, msg: str) -> None:
        if self.cfg.progress:
            print(msg, file=sys.stdout, flush=True)

    def reports(self) -> dict[int, dict]:
        out = {}
        if os.path.exists(self.progress_path):
            with open(self.progress_path) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a blank line or one cut by a kill
                        continue
                    out[int(r["generation"])] = r
        return out

    def _append_report(self, report: dict) -> None:
        with open(self.progress_path, "a") as f:
            f.write(json.dumps(report) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def training_atoms(self, generation: int) -> list:
        """Labelled structures of generations < ``generation`` (below ``max_energy``)."""
        atoms = self.store.labelled(max_generation=generation - 1)
        bad = too_close(atoms, self.cfg.min_distance)
        if bad.any():
            self.log(f"  kept {int(bad.sum())} stored structure(s) with atoms closer than "
                     f"{self.cfg.min_distance} Å out of training (rows "
                     f"{[int(a.info['row_id']) for a, b in zip(atoms, bad) if b]})")
            atoms = [a for a, b in zip(atoms, bad) if not b]
        if self.cfg.max_energy is None or not atoms:
            return atoms
        e = np.array([a.get_potential_energy() / (len(a) if self.cfg.per_atom else 1)
                      for a in atoms])
        keep = e - e.min() <= self.cfg.max_energy
        return [a for a, k in zip(atoms, keep) if k]

    def records(self, atoms: list) -> list[graph.Record]:
        out = []
        for a in atoms:
            rid = a.info["row_id"]
            if rid not in self._records:
                self._records[rid] = graph.atoms_to_record(a, self.spec, name=f"row {rid}")
            out.append(self._records[rid])
        return out

    # ------------------------------------------------------------------ committee
    def template(self, example) -> Params:
        if self._template is None:
            self._template = ensemble.init(self.model, jax.random.key(self.cfg.seed), example,
                                           self.cfg.n_members)
        return self._template

    def committee(self, generation: int) -> tuple[Params, dict]:
        """C_g: restored from its checkpoint, or trained and saved."""
        cfg = self.cfg
        atoms = self.training_atoms(generation)
        if not atoms:
            raise ValueError(f"no labelled structures to train generation {generation} on "
                             "(all seed labels failed?)")
        recs = self.records(atoms)
        example = graph.batch(recs[:1])
        steps = _saved_steps(self.ckpt_dir)
        with Checkpointer(self.ckpt_dir, max_to_keep=None) as ck:
            template = {"params": self.template(example)}
            if generation in steps:
                _, state, meta = ck.restore(template, step=generation)
                return _committed(state["params"]), meta
            warm = cfg.warm_start and generation - 1 in steps
            start = ck.restore(template, step=generation - 1)[1] if warm else template
        t0 = time.perf_counter()
        fit_cfg = dataclasses.replace(cfg.fit, seed=_seed(cfg.seed, generation, 2))
        res = ensemble.fit(self.model, start["params"], recs,
                           loss=train.energy_force_loss(cfg.energy_weight, cfg.forces_weight),
                           config=fit_cfg, bootstrap=cfg.bootstrap)
        last = res.history[-1] if res.history else {}
        meta = {"generation": generation, "n_train": len(recs),
                "train_ids": [int(a.info["row_id"]) for a in atoms],
                "train_seconds": time.perf_counter() - t0,
                "train_forces_mae": _mean(last.get("train_forces_mae_eV_per_A")),
                "train_energy_mae": _mean(last.get("train_energy_mae_eV_per_atom"))}
        with Checkpointer(self.ckpt_dir, max_to_keep=None) as ck:
            ck.save(generation, {"params": res.params}, meta)
        return _committed(res.params), meta

    # ------------------------------------------------------------------ proposals
    def propose(self, generation: int, params: Params) -> tuple[list, np.ndarray, np.ndarray, str, dict]:
        """Candidates of one generation: (atoms, sigma eV/Å, score, origin, stats)."""
        cfg = self.cfg
        train_atoms = self.training_atoms(generation)
        rng = np.random.default_rng(_seed(cfg.seed, generation, 3))
        t0 = time.perf_counter()
        tr = committee_predict(self.model, params, self.records(train_atoms), self.cutoff)
        thr = variance_threshold(tr["forces_var_graph"], cfg.select.percentile)
        stats = {"threshold_sigma": float(np.sqrt(thr)),
                 "train_sigma_median": float(np.sqrt(np.median(tr["forces_var_graph"])))}
        ref = list(train_atoms) if cfg.dedup_against_train else []

        pick = lambda n: rng.choice(len(train_atoms), n, replace=n > len(train_atoms))  # noqa: E731
        if cfg.strategy == "adversarial":
            cands, score, fvar, secs, rebuilds, gains = [], [], [], 0.0, 0, []
            no_fill = dataclasses.replace(cfg.select, fill=False)
            boltz = Boltzmann.from_structures(train_atoms, cfg.kT, cfg.per_atom)
            for batch in range(cfg.attack_batches):  # until the budget is filled
                starts = [train_atoms[k] for k in pick(cfg.n_starts)]
                res = attack(self.model, params, starts, boltz,
                             cfg.attack_config(generation, batch), cutoff=self.cutoff)
                cands += list(res.atoms)
                score = np.concatenate([score, res.objective])
                fv = np.array(res.forces_var_graph, dtype=np.float64)
                fv[too_close(res.atoms, cfg.min_distance)] = np.nan  # never selected
                fvar = np.concatenate([fvar, fv])
                secs, rebuilds = secs + res.seconds, rebuilds + res.n_rebuilds
                gains.append(res.objective / np.maximum(res.objective_start, 1e-30))
                strict = select(cands, fvar, tr["forces_var_graph"], no_fill, score, ref)
                if len(strict) >= cfg.select.max_per_generation:
                    break  # enough distinct candidates above the threshold
            idx = select(cands, fvar, tr["forces_var_graph"], cfg.select, score, ref)
            close = ~np.isfinite(fvar)
            stats.update(attack_seconds=secs, n_rebuilds=rebuilds, attack_batches=batch + 1,
                         objective_gain_median=float(np.median(np.concatenate(gains))))
        elif cfg.strategy in ("random", "normal_modes"):
            if cfg.strategy == "random":
                cands = [train_atoms[k].copy() for k in pick(cfg.n_starts)]  # no calc
                for b in cands:
                    b.positions = b.positions + rng.normal(
                        0.0, cfg.random_sigma, b.positions.shape) * np.isin(np.arange(3),
                                                                            cfg.attack.axes)
            else:
                cands = self._normal_mode_samples(params, train_atoms, rng)
            close = too_close(cands, cfg.min_distance)
            idx = [int(k) for k in np.flatnonzero(~close)[:cfg.select.max_per_generation]]
            fvar = score = self._forces_var(params, cands, idx, 0.0)
        else:
            cands, why = self._md_frames(params, train_atoms, tr, rng,
                                         _seed(cfg.seed, generation, 4))
            close = too_close(cands, cfg.min_distance)  # too close: never selected
            fvar = score = self._forces_var(params, cands, np.flatnonzero(~close), np.nan)
            idx = select(cands, fvar, tr["forces_var_graph"], cfg.select, score, ref)
            stats["md_frames_by_stop"] = {r or "ran to the end": why.count(r)
                                          for r in sorted(set(why))}
        origin = "attack" if cfg.strategy == "adversarial" else cfg.strategy
        stats.update(n_candidates=len(cands), n_above=int(np.sum(np.asarray(fvar) > thr)),
                     n_too_close=int(close.sum()),
                     n_selected=len(idx), propose_seconds=time.perf_counter() - t0)
        chosen = [cands[k] for k in idx]
        for a in chosen:
            a.info = {}
        return (chosen, np.sqrt(np.asarray(fvar, dtype=np.float64)[idx]),
                np.asarray(score, dtype=np.float64)[idx], origin, stats)

    def _forces_var(self, params: Params, cands: list, idx: Any, fill: float) -> np.ndarray:
        """Committee force variance ((eV/Å)²) of ``cands[idx]``, ``fill`` for the others."""
        fvar = np.full(len(cands), fill)
        if len(idx):
            fvar[idx] = committee_predict(self.model, params, [cands[k] for k in idx],
                                          self.cutoff)["forces_var_graph"]
        return fvar

    def _md_frames(self, params: Params, train_atoms: list, train_pred: dict,
                   rng: np.random.Generator, seed: int) -> tuple[list, list[str]]:
        """Frames of committee MD (:func:`committee_md`) from ``md_starts`` training
        geometries whose largest per-atom force σ is below the ``select.percentile`` of the
        training set's (all if none is); each replica stops where σ exceeds it, or beyond
        ``md_energy_margin`` eV/atom outside the committee's energy range over the training
        set."""
        cfg = self.cfg
        sigma_atoms = np.array([np.sqrt(np.max(v)) for v in train_pred["forces_var_atom"]])
        stop = float(np.percentile(sigma_atoms, cfg.select.percentile)) if cfg.md_sigma_stop \
            else None
        calm = np.flatnonzero(sigma_atoms < stop) if stop is not None else np.arange(0)
        pool = calm if len(calm) else np.arange(len(train_atoms))
        starts = [train_atoms[k] for k in rng.choice(pool, cfg.md_starts,
                                                     replace=cfg.md_starts > len(pool))]
        # the cap is on the committee's own energies: its range over the training set
        e = np.asarray(train_pred["energy"]) / np.array([len(a) for a in train_atoms])
        model = dataclasses.replace(self.model, graph=self.spec)  # the loop's cutoff
        return committee_md(model, params, starts, steps=cfg.md_steps,
                            temperature_K=cfg.md_temperature, sigma_stop=stop,
                            energy_range=(float(e.min()), float(e.max())),
                            energy_margin=cfg.md_energy_margin, timestep_fs=cfg.md_timestep,
                            friction_per_fs=cfg.md_friction, log_every=cfg.md_interval,
                            seed=seed)

    def _normal_mode_samples(self, params: Params, train_atoms: list,
                             rng: np.random.Generator) -> list:
        """``n_starts`` harmonic thermal samples at ``nm_temperature`` K around the
        lowest-energy training structure, with the committee's Hessian there."""
        cfg = self.cfg
        ref = train_atoms[int(np.argmin([a.get_potential_energy() for a in train_atoms]))]
        h = normal_modes.hessian(self.model, params, ref)
        return normal_modes.samples(ref, h, cfg.nm_temperature, cfg.n_starts, rng)

    # ------------------------------------------------------------------ driver
    def pool(self) -> Any:
        """The executor that labels: the one given, else ``workers`` local processes
        (started on first use, kept for the run), else None (this process)."""
        if self.executor is None and self._pool is None and self.cfg.workers > 0:
            from jaxmat.workflows.adversarial.oracle import local_pool

            self._pool = local_pool(self.cfg.workers, getattr(self.oracle, "threads", None) or 1)
        return self.executor if self.executor is not None else self._pool

    def label(self, generation: int | None) -> dict[str, int]:
        t0 = time.perf_counter()
        n = self.store.count(status="pending", generation=generation)

        def progress(k, total, label):
            if self.cfg.progress and (k == total or k % 50 == 0):
                self.log(f"  labelled {k}/{total}" + ("" if label.ok else f" (failed: {label.error})"))

        # the loop's own pool gets 2 calls per worker at a time (a kill repeats at most
        # those); a given executor gets every pending row at once
        in_flight = 2 * self.cfg.workers if self.executor is None else None
        counts = (self.store.label_pending(self.oracle, generation, progress, self.pool(),
                                           in_flight) if n else {"done": 0, "failed": 0})
        counts["seconds"] = time.perf_counter() - t0
        return counts

    def run(self) -> ActiveResult:
        """Run or resume; a pool started here is shut down at the end (or on any error,
        without waiting for calculations in flight)."""
        try:
            result = self._run()
        except BaseException:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        return result

    def _run(self) -> ActiveResult:
        cfg, store = self.cfg, self.store
        if store.count(origin="seed") == 0:
            if not self.seeds:
                raise ValueError("no seed structures and an empty store: nothing to train on")
            (store.plan if cfg.relabel_seeds else store.add_labelled)(self.seeds, 0, "seed")
            self.log(f"[{cfg.strategy}] stored {len(self.seeds)} seed structures in {store.path}")
        reports = self.reports()
        c = self.label(None)
        if c["done"] or c["failed"]:
            self.log(f"[{cfg.strategy}] labelled {c['done']} pending structures "
                     f"({c['failed']} failed) in {c['seconds']:.1f} s")
        last_g = cfg.generations + 1 if cfg.train_final else cfg.generations
        for g in range(1, last_g + 1):
            final = g == cfg.generations + 1  # C_{G+1}: trained, evaluated, nothing proposed
            if g in reports and bool(reports[g].get("final")) == final:
                continue  # reported (a final report of a shorter run does not count)
            params, meta = self.committee(g)
            report = {"generation": g, "strategy": cfg.strategy, "n_train": meta["n_train"],
                      "train_seconds": meta.get("train_seconds"),
                      "train_forces_mae": meta.get("train_forces_mae"),
                      **({"final": True} if final else {})}
            if self.evaluate is not None:
                report.update(self.evaluate(g, params, store) or {})
            if not final:
                stats_path = os.path.join(self.workdir, f"proposal_{g}.json")
                if store.count(generation=g) == 0:
                    chosen, sigma, score, origin, stats = self.propose(g, params)
                    if chosen:
                        store.plan(chosen, g, origin, sigma=sigma, score=score)
                    write_atomic(stats_path, json.dumps(stats))
                if os.path.exists(stats_path):
                    with open(stats_path) as f:
                        report.update(json.load(f))
                c = self.label(g)
                report.update(labelled=store.count(generation=g, status="done"),
                              failed=store.count(generation=g, status="failed"),
                              label_seconds=c["seconds"])
            report["oracle_calls"] = store.count() - store.count(status="pending")
            self._append_report(report)
            self.log(_format(report))
        steps = _saved_steps(self.ckpt_dir)
        params = self.committee(max(steps))[0] if steps else None
        out = [r for _, r in sorted(self.reports().items())
               if r["generation"] <= cfg.generations or r.get("final")]
        return ActiveResult(params, out, store, self.workdir)


def _committed(params: Params) -> Params:
    """Params placed (committed) on the default device, so restored and freshly trained
    committees hit the same compiled programs."""
    return jax.device_put(params, jax.devices()[0])


def _saved_steps(directory: str) -> list[int]:
    """Finished checkpoint steps (orbax renames a step's folder into place when complete)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def _mean(v: Any) -> float | None:
    return None if v is None else float(np.mean(v))


def _format(r: dict) -> str:
    parts = [f"gen {r['generation']} [{r['strategy']}]: trained on {r['n_train']}"]
    if r.get("train_forces_mae") is not None:
        parts.append(f"train F MAE {r['train_forces_mae']:.3g} eV/Å")
    if "n_candidates" in r:
        parts.append(f"{r['n_candidates']} candidates, {r['n_above']} above σ>"
                     f"{r['threshold_sigma']:.3g} eV/Å, {r['n_selected']} selected")
    if "labelled" in r:
        parts.append(f"labelled {r['labelled']} ({r['failed']} failed)")
    parts.append(f"oracle calls {r['oracle_calls']}")
    extra = [f"{k} {v:.4g}" for k, v in r.items() if k.startswith("eval_") and isinstance(v, float)]
    return " | ".join(parts + extra)


def run(config: ActiveConfig, model: Model, oracle: Oracle, seeds: Sequence[Any],
        cutoff: float | None = None, evaluate: Callable[[int, Params, Store], dict] | None = None,
        executor: Any = None) -> ActiveResult:
    """Run (or resume) an active-learning loop in ``config.workdir``.

    ``model``: a potential (``energy`` eV and ``forces`` eV/Å, e.g.
    :func:`jaxmat.core.potential.potential` of any energy model); ``oracle`` labels structures;
    ``seeds``: the initial ASE structures (relabelled by the oracle unless
    ``relabel_seeds=False``). Neighbour lists follow ``model.graph``; ``cutoff`` (Å) only
    for a model without a graph cutoff (ValueError if it disagrees). ``evaluate(g, params,
    store) -> dict`` is merged into the report of generation ``g`` (keys starting with
    ``eval_`` are printed).
    ``executor``: any ``concurrent.futures.Executor`` (thread pool, ``dask.distributed``
    client, ...) that labels instead of the ``config.workers`` local processes; it is
    not shut down here. With the default process pool the oracle must pickle and a script
    defining its own oracle classes needs an ``if __name__ == "__main__":`` guard.
    """
    return _Loop(config, model, oracle, seeds, cutoff, evaluate, executor).run()
