"""Robustness of NN-driven MD per oracle label: adversarial sampling vs random displacements
vs committee MD (after Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104, 2021).

    nice -n 10 python benchmarks/robustness.py [--system nh3|alanine] [--seeds 0 1 2]
        [--strategies adversarial random md adversarial@0.3] [--validation] [--quick]

Initial set: GFN2-xTB (tblite) Langevin MD frames at 300 K from the system's start
(NH3: the lowest-energy shipped geometry relabelled; alanine dipeptide: the shipped
structure). Each active-learning generation trains a SchNet committee on every label so
far and proposes ``--per-generation`` labels with the strategy (``adversarial@X``: kT = X
eV). Every committee C_g (trained on the labels of generations < g) then drives
``--replicas`` Langevin replicas from the start at ``--temperature`` K for ``--steps`` ×
0.5 fs (:func:`jaxmat.workflows.adversarial.robustness.robustness`): a replica fails on
atoms closer than 0.6 Å, a covalent bond beyond 1.6 × the sum of covalent radii,
non-finite values, or a GFN2-xTB check every ``--check-every`` steps disagreeing by more
than ``--energy-tol`` eV/atom or ``--forces-tol`` eV/Å (largest per-atom force error).

The replicas' MD seed is 1000 for reported runs; ``--validation`` runs loop seeds 100+
with MD seed 2000 into ``<out>_validation`` (knobs are chosen there, never on the
reported seeds). Runs live in runs/robustness/<system>/ and resume.
Writes benchmarks/results/<out>.json/.md/.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adversarial_ammonia import make_model, md_test_set, n_height  # noqa: E402
from common import RESULTS, device_info, write_results  # noqa: E402

import numpy as np  # noqa: E402

from jaxmat import active, data, oracle  # noqa: E402
from jaxmat.workflows.adversarial import systems  # noqa: E402
from jaxmat.workflows.adversarial.robustness import molecule_criteria, robustness  # noqa: E402

KCAL_MOL = data.KCAL_MOL
MD_SEED = {False: 1000, True: 2000}


def start_structure(system: str, orc) -> object:
    if system == "nh3":
        seeds = data.load_ammonia()
        e = [orc.label(a).energy for a in seeds]
        a = seeds[int(np.argmin(e))].copy()
    else:
        a = systems.alanine_dipeptide()
    a.calc = None
    a.info = {}
    return a


def describe(system: str, atoms) -> dict:
    """Where a structure is: NH3 N height (Å) and longest N-H (Å); alanine φ/ψ (°)."""
    if system == "nh3":
        return {"n_height": n_height(atoms.positions),
                "nh_max": float(max(atoms.get_distance(0, k) for k in (1, 2, 3)))}
    phi, psi = systems.phi_psi(atoms)
    return {"phi": phi, "psi": psi}


def make_evaluator(model, start, orc, args, system: str, md_seed: int):
    def evaluate(g, params, store):
        t = time.perf_counter()
        r = robustness(model, params, start, replicas=args.replicas, steps=args.steps,
                       temperature_K=args.temperature, timestep_fs=0.5,
                       criteria=molecule_criteria(), oracle=orc, check_every=args.check_every,
                       energy_tol=args.energy_tol, forces_tol=args.forces_tol, seed=md_seed)
        failed = [describe(system, a) | {"reason": why, "time_fs": tf}
                  for a, f, why, tf in zip(r["atoms"], r["failed"], r["fail_reason"],
                                           r["fail_time_fs"]) if f]
        return {"eval_success": r["success_fraction"], "success_stderr": r["success_stderr"],
                "fail_reasons": r["reasons"], "failed_replicas": failed,
                "n_oracle_checks": r["n_oracle_checks"],
                "robustness_seconds": time.perf_counter() - t}

    return evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", choices=["nh3", "alanine"], default="nh3")
    ap.add_argument("--strategies", nargs="+", default=["adversarial", "random", "md"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--validation", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--per-generation", type=int, default=24)
    ap.add_argument("--initial", type=int, default=24, help="300 K oracle MD frames")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--interactions", type=int, default=2)
    ap.add_argument("--cutoff", type=float, default=4.0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--starts", type=int, default=64)
    ap.add_argument("--percentile", type=float, default=90.0)
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--temperature", type=float, default=1000.0)
    ap.add_argument("--check-every", type=int, default=200)
    ap.add_argument("--energy-tol", type=float, default=0.1)
    ap.add_argument("--forces-tol", type=float, default=1.0)
    ap.add_argument("--workdir", default="runs/robustness")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.generations, args.epochs, args.replicas, args.steps = 1, 10, 8, 200
        args.initial, args.per_generation, args.starts, args.check_every = 8, 4, 8, 100
    out = args.out or f"robustness_{args.system}" + ("_validation" if args.validation else "") \
        + ("_quick" if args.quick else "")
    orc = oracle.xtb("GFN2-xTB")
    workdir = os.path.abspath(os.path.join(args.workdir, args.system))
    os.makedirs(workdir, exist_ok=True)
    from ase.io import read, write

    init_path = os.path.join(workdir, f"initial_{args.initial}.extxyz")
    start = start_structure(args.system, orc)
    if os.path.exists(init_path):
        initial = read(init_path, ":")
    else:
        t = time.perf_counter()
        every = 20
        n_steps = every * ((args.initial + 1) // 2)
        initial = md_test_set(orc, start, 300.0, n_traj=2, n_steps=n_steps, every=every,
                              seed=7)[:args.initial]
        write(init_path, initial)
        print(f"initial set: {len(initial)} frames of 300 K GFN2-xTB MD in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    model = make_model(initial, args.features, args.interactions, args.cutoff)
    md_seed = MD_SEED[args.validation]
    evaluate = make_evaluator(model, start, orc, args, args.system, md_seed)
    results = {"device": device_info(), "settings": vars(args), "oracle": orc.describe(),
               "md_seed": md_seed, "n_initial": len(initial),
               "start": describe(args.system, start), "runs": {}}
    if args.system == "alanine":
        results["initial_phi_psi"] = [systems.phi_psi(a) for a in initial]
    t_all = time.perf_counter()
    for seed, strat in [(sd, st) for sd in args.seeds for st in args.strategies]:
        kind, _, kT = strat.partition("@")
        name = f"{strat}/seed{seed}"
        runs_dir = os.path.join(workdir, "quick" if args.quick else "",
                                f"{strat}_seed{seed}_p{args.percentile:g}_T{args.temperature:g}")
        cfg = active.ActiveConfig(
            workdir=runs_dir, strategy=kind, generations=args.generations, seed=seed,
            n_members=args.members, fit=dict(epochs=args.epochs, lr=2e-3, batch_size=16),
            energy_weight=1.0, forces_weight=10.0,
            kT=float(kT) if kT else 20 * KCAL_MOL, n_starts=args.starts,
            attack=dict(n_steps=60, lr=0.01, sigma=0.01),
            select=dict(percentile=args.percentile, rmsd=0.05, permute=True,
                        max_per_generation=args.per_generation, fill=True),
            random_sigma=0.1, md_temperature=args.temperature, md_steps=400, md_interval=10,
            md_starts=max(2, args.starts // 16), relabel_seeds=False, workers=0,
            progress=True)
        t = time.perf_counter()
        res = active.run(cfg, model, orc, initial, evaluate=evaluate)
        gens = [{k: r.get(k) for k in ("generation", "n_train", "oracle_calls", "labelled",
                                       "eval_success", "success_stderr", "fail_reasons",
                                       "failed_replicas", "n_oracle_checks",
                                       "train_seconds", "robustness_seconds")}
                for r in res.reports]
        labels = [describe(args.system, r.toatoms()) | {"generation": r.generation}
                  for r in res.store.rows(status="done") if r.generation > 0]
        results["runs"][name] = {"strategy": strat, "seed": seed, "kT_eV": cfg.kT,
                                 "seconds": time.perf_counter() - t, "generations": gens,
                                 "labels": labels}
        print(f"{name}: {time.perf_counter() - t:.0f} s, success "
              f"{[g['eval_success'] for g in gens]}", flush=True)
        results["seconds_total"] = time.perf_counter() - t_all
        _write(out, results, args)


def summary(runs: dict) -> dict:
    """Per strategy: mean and std over seeds of the success fraction per generation, with
    the mean number of training labels."""
    out: dict = {}
    for run in runs.values():
        s = out.setdefault(run["strategy"], {})
        for g in run["generations"]:
            if g.get("eval_success") is None:
                continue
            s.setdefault(g["generation"], []).append((g["n_train"], g["eval_success"]))
    table = {}
    for strat, gens in out.items():
        table[strat] = []
        for g, vals in sorted(gens.items()):
            n, f = np.array(vals, dtype=float).T
            table[strat].append({"generation": g, "n_train": float(n.mean()),
                                 "success_mean": float(f.mean()),
                                 "success_std": float(f.std(ddof=1)) if len(f) > 1 else 0.0,
                                 "n_seeds": len(f)})
    return table


def plot(table: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for strat, rows in table.items():
        ax.errorbar([r["n_train"] for r in rows], [r["success_mean"] for r in rows],
                    yerr=[r["success_std"] for r in rows], marker="o", capsize=3, label=strat)
    ax.set_xlabel("oracle labels in training")
    ax.set_ylabel("successful MD replicas (fraction)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(out: str, results: dict, args) -> None:
    """Write the results, keeping the runs other processes wrote to the same file."""
    path = os.path.join(RESULTS, f"{out}.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        free = {"strategies": None, "seeds": None, "generations": None}  # per run
        if old.get("settings", {}) | free == vars(args) | free:
            results["runs"] = old["runs"] | results["runs"]
    table = summary(results["runs"])
    results["summary"] = table
    title = (f"{args.system}: {args.replicas} replicas, {args.temperature:.0f} K, "
             f"{args.steps * 0.5 / 1000:g} ps")
    plot(table, os.path.join(RESULTS, f"{out}.png"), title)
    lines = [f"System {args.system}; oracle GFN2-xTB (tblite). Initial set: "
             f"{results['n_initial']} frames of 300 K GFN2-xTB Langevin MD. Committee: "
             f"{args.members} SchNet ({args.features} features, {args.interactions} "
             f"interactions, {args.cutoff} Å), {args.epochs} epochs per generation (warm "
             f"start); {args.per_generation} labels per generation. Robustness: "
             f"{args.replicas} Langevin replicas from the start structure at "
             f"{args.temperature:.0f} K for {args.steps} x 0.5 fs (MD seed "
             f"{results['md_seed']}); failure: atoms < 0.6 Å, a bond > 1.6 x covalent, "
             f"non-finite, or a GFN2-xTB check every {args.check_every} steps off by > "
             f"{args.energy_tol} eV/atom or > {args.forces_tol} eV/Å. Generation g: "
             f"committee trained on the labels of generations < g (last row: on all).\n",
             "| strategy | gen | labels in training | success (mean ± std over seeds) | "
             "seeds |", "|---|---|---|---|---|"]
    for strat, rows in table.items():
        for r in rows:
            lines.append(f"| {strat} | {r['generation']} | {r['n_train']:.0f} | "
                         f"{r['success_mean']:.3f} ± {r['success_std']:.3f} | {r['n_seeds']} |")
    lines += ["\nEvery run:\n", "| run | gen | labels | success | ± (binomial) | failures |",
              "|---|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        for g in run["generations"]:
            if g.get("eval_success") is None:
                continue
            fr = ", ".join(f"{k} {v}" for k, v in (g.get("fail_reasons") or {}).items())
            lines.append(f"| {name} | {g['generation']} | {g['n_train']} | "
                         f"{g['eval_success']:.2f} | {g['success_stderr']:.3f} | {fr or '–'} |")
    lines.append(f"\nWall time {results.get('seconds_total', 0):.0f} s on a shared CPU "
                 f"(load average {results['device'].get('loadavg', [0])[0]:.1f}).")
    write_results(out, results, "\n".join(lines))


if __name__ == "__main__":
    main()
