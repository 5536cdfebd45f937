"""Adversarial active learning on ammonia with a GFN2-xTB oracle (after Schwalbe-Koda, Tan &
Gómez-Bombarelli, Nat. Commun. 12, 5104, 2021), against random-displacement and committee-MD
sampling at the same oracle budget, plus attack throughput.

    nice -n 10 python benchmarks/adversarial_ammonia.py [--quick] [--generations 5]
        [--strategies adversarial adversarial@0.129 random md] [--throughput-only | --no-throughput]

A strategy ``adversarial@X`` attacks with kT = X eV instead of the paper's 20 kcal/mol
(0.867 eV); 0.129 eV is k_B * 1500 K, the temperature of the test set. Finished runs are
read back from their work directories (resumable), so strategies can be added later.

Seeds: the 138 shipped NH3 geometries relabelled with GFN2-xTB (tblite). Each generation
trains a SchNet committee (warm-started), proposes candidates and labels up to
``--per-generation`` of them. Reported per generation: oracle calls, the lowest N height
above the H3 plane among that generation's labels (planar transition state: 0 Å), the
committee-predicted inversion barrier on the oracle's relaxed C3v inversion path vs the
oracle's, and the committee-mean force MAE on an independent test set of high-temperature
GFN2-xTB Langevin MD geometries. Throughput: attacked geometry-steps per second for an
8-member committee on a batch of 1024 NH3 starts (one compiled program, 60 Adam steps).
Writes benchmarks/results/adversarial_ammonia.json/.md; runs live in runs/adversarial_ammonia/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, median_time, write_results  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402

from jaxmat import active, attack, data, ensemble, graph, oracle, potential  # noqa: E402
from jaxmat.models import SchNetConfig, schnet  # noqa: E402
from jaxmat.workflows.adversarial.select import committee_predict  # noqa: E402

ORACLE_BARRIER_MEASURED = 0.265  # eV, GFN2-xTB (tblite 0.8), docs/reference
KCAL_MOL = data.KCAL_MOL


# --------------------------------------------------------------------------- geometry
def n_height(positions: np.ndarray) -> float:
    """Distance (Å) of N (atom 0) from the plane of the three H atoms (atoms 1-3)."""
    p = np.asarray(positions)
    n = np.cross(p[2] - p[1], p[3] - p[1])
    return float(abs((p[0] - p[1]) @ n) / np.linalg.norm(n))


def c3v_geometry(h: float, r: float) -> Atoms:
    """Symmetric NH3 with N at height ``h`` (Å) above the H3 plane and N-H bonds ``r`` (Å)."""
    d = np.sqrt(max(r * r - h * h, 1e-8))
    ang = np.deg2rad([90.0, 210.0, 330.0])
    return Atoms("NH3", [[0.0, 0.0, h]] + [[d * np.cos(a), d * np.sin(a), 0.0] for a in ang])


def inversion_path(orc: oracle.Oracle, heights: np.ndarray) -> dict:
    """The oracle's relaxed C3v inversion path: for each N height, the N-H length that
    minimises the energy; and the barrier E(h=0) - min_h E(h) (eV), h refined at the minimum."""
    from scipy.optimize import minimize_scalar

    def relax_r(h):
        res = minimize_scalar(lambda r: orc.label(c3v_geometry(h, r)).energy, bounds=(0.9, 1.2),
                              method="bounded", options={"xatol": 1e-5})
        return float(res.x), float(res.fun)

    rs, es = zip(*[relax_r(h) for h in heights])
    hmin = minimize_scalar(lambda h: relax_r(h)[1], bounds=(0.25, 0.5), method="bounded",
                           options={"xatol": 1e-4})
    r_min, e_min = relax_r(float(hmin.x))
    r_ts, e_ts = relax_r(0.0)
    return {"h": np.asarray(heights), "r": np.asarray(rs), "energy": np.asarray(es),
            "h_min": float(hmin.x), "r_min": r_min, "e_min": e_min, "r_ts": r_ts, "e_ts": e_ts,
            "barrier": e_ts - e_min}


def md_test_set(orc: oracle.Oracle, start: Atoms, temperature_K: float = 1500.0,
                n_traj: int = 4, n_steps: int = 800, every: int = 20, seed: int = 123) -> list:
    """Frames of GFN2-xTB Langevin MD at ``temperature_K`` (0.5 fs steps), labelled."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n_traj):
        a = start.copy()
        a.calc = orc.factory()
        dyn = active.langevin(a, temperature_K, 0.5, 0.02, rng)
        for _ in range(n_steps // every):
            with orc.limit_threads():
                dyn.run(every)
            f = a.copy()
            f.calc = None
            f.set_constraint()
            lab = orc.label(f)
            if lab.ok:
                frames.append(lab.attach(f))
    return frames


# --------------------------------------------------------------------------- model
def make_model(seeds: list, features: int, interactions: int, cutoff: float):
    """SchNet potential with atom references and scale fitted on the seed labels."""
    recs = graph.records_from_atoms(seeds, cutoff)
    refs, frms = potential.energy_stats(recs)
    cfg = SchNetConfig(n_features=features, n_interactions=interactions, n_rbf=20,
                       cutoff=cutoff).with_stats(refs, frms)
    return potential.potential(schnet(cfg), stress=False)


def make_evaluator(model, path: dict, test: list):
    """``evaluate(g, params, store)`` for :func:`jaxmat.workflows.adversarial.active.run`: committee energies along
    the oracle's inversion path (barrier) and the test-set force MAE of the committee mean."""
    path_atoms = [c3v_geometry(h, r) for h, r in zip(path["h"], path["r"])]
    ends = [c3v_geometry(0.0, path["r_ts"]), c3v_geometry(path["h_min"], path["r_min"])]
    f_ref = np.concatenate([a.get_forces() for a in test])

    def evaluate(g, params, store):
        p = committee_predict(model, params, path_atoms + ends)
        e = p["energy"]
        t = committee_predict(model, params, test)
        mae = float(np.mean(np.abs(np.concatenate(t["forces"]) - f_ref)))
        n = len(path_atoms)
        return {"eval_barrier": float(e[n] - e[n + 1]),
                "eval_barrier_path": float(e[np.argmin(np.abs(path["h"]))] - e[:n].min()),
                "eval_test_force_mae": mae,
                "path_energy_mean": (e[:n] - e[n + 1]).tolist(),
                "path_energy_std": np.sqrt(p["energy_var"][:n]).tolist()}

    return evaluate


# --------------------------------------------------------------------------- throughput
def throughput(model, cutoff: float, seeds: list, n_members: int = 8, n_starts: int = 1024,
               n_steps: int = 60, repeats: int = 3) -> dict:
    """Attacked geometry-steps per second (median of ``repeats`` after a compiling call)."""
    recs = graph.records_from_atoms(seeds[:2], cutoff)
    params = ensemble.init(model, jax.random.key(0), graph.batch(recs), n_members)
    starts = [seeds[k % len(seeds)] for k in range(n_starts)]
    ref = attack.Boltzmann.from_structures(seeds, kT=20 * KCAL_MOL)
    cfg = attack.AttackConfig(n_steps=n_steps, lr=0.01, sigma=0.01)
    t0 = time.perf_counter()
    res = attack.attack(model, params, starts, ref, cfg)
    first = time.perf_counter() - t0
    sec = median_time(lambda: attack.attack(model, params, starts, ref, cfg),
                      repeats=repeats, warmup=0)
    return {"n_members": n_members, "n_starts": n_starts, "n_steps": n_steps,
            "first_call_s": first, "median_s": sec,
            "geometry_steps_per_s": n_starts * n_steps / sec,
            "objective_gain_median": float(np.median(res.objective / res.objective_start))}


# --------------------------------------------------------------------------- main
def generation_heights(store, generations: int) -> list:
    out = []
    for g in range(1, generations + 1):
        hs = [n_height(r.toatoms().positions) for r in store.rows(generation=g, status="done")]
        out.append(min(hs) if hs else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small settings (smoke run)")
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--interactions", type=int, default=2)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--per-generation", type=int, default=20)
    ap.add_argument("--starts", type=int, default=256)
    ap.add_argument("--strategies", nargs="+",
                    default=["adversarial", "adversarial@0.129", "random", "md"])
    ap.add_argument("--workdir", default="runs/adversarial_ammonia")
    ap.add_argument("--out", default="adversarial_ammonia",
                    help="results name; another name keeps its runs in <workdir>/<out>/ "
                         "(oracle reference, seeds and test set stay shared)")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="repeat every strategy with these loop seeds (starts, noise, data order)")
    args = ap.parse_args()
    if args.quick:
        args.generations, args.members, args.features, args.epochs = 2, 3, 16, 40
        args.starts, args.per_generation = 32, 8
    t_start = time.perf_counter()
    previous = {}
    old = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{args.out}.json")
    if os.path.exists(old):
        with open(old) as f:
            previous = json.load(f)
    orc = oracle.xtb("GFN2-xTB")
    workdir = os.path.abspath(args.workdir)
    runs_dir = workdir if args.out == "adversarial_ammonia" else os.path.join(workdir, args.out)
    os.makedirs(workdir, exist_ok=True)
    ref_path = os.path.join(workdir, "reference.json")
    seeds_path = os.path.join(workdir, "seeds.extxyz")
    test_path = os.path.join(workdir, "test_md.extxyz")
    from ase.io import read, write

    if os.path.exists(ref_path) and os.path.exists(test_path) and os.path.exists(seeds_path):
        with open(ref_path) as f:
            path = {k: np.asarray(v) if isinstance(v, list) else v for k, v in json.load(f).items()}
        seeds, test = read(seeds_path, ":"), read(test_path, ":")
    else:
        t = time.perf_counter()
        seeds = [orc.label(a).attach(a) for a in data.load_ammonia()]
        path = inversion_path(orc, np.linspace(0.0, 0.6, 25))
        start = c3v_geometry(path["h_min"], path["r_min"])
        test = md_test_set(orc, start, n_traj=2 if args.quick else 4,
                           n_steps=400 if args.quick else 800)
        print(f"reference: barrier {path['barrier']:.4f} eV, {len(test)} MD test frames "
              f"in {time.perf_counter() - t:.0f} s", flush=True)
        write(seeds_path, seeds)
        write(test_path, test)
        with open(ref_path, "w") as f:
            json.dump({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in path.items()}, f)
    test_heights = [n_height(a.positions) for a in test]
    model = make_model(seeds, args.features, args.interactions, args.cutoff)
    results = {"device": device_info(), "settings": vars(args),
               "oracle": orc.describe(),
               "oracle_barrier_eV": path["barrier"], "oracle_barrier_measured_eV": ORACLE_BARRIER_MEASURED,
               "inversion_path": {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in path.items()},
               "test_set": {"n": len(test), "temperature_K": 1500.0,
                            "n_height_min": min(test_heights), "n_height_median": float(np.median(test_heights)),
                            "energy_median_eV": float(np.median([a.get_potential_energy() for a in test])
                                                      - min(a.get_potential_energy() for a in seeds))},
               "seeds": {"n": len(seeds), "n_height_min": min(n_height(a.positions) for a in seeds)},
               "runs": {}}
    if not args.throughput_only:
        evaluate = make_evaluator(model, path, test)
        for seed, strat in [(sd, st) for sd in args.seeds for st in args.strategies]:
            kind, _, kT = strat.partition("@")
            name = strat if seed == 0 else f"{strat}/seed{seed}"
            cfg = active.ActiveConfig(
                workdir=os.path.join(runs_dir, name.replace("/", "_")), strategy=kind,
                generations=args.generations, seed=seed, n_members=args.members,
                fit=dict(epochs=args.epochs, lr=2e-3, batch_size=32),
                energy_weight=1.0, forces_weight=10.0, kT=float(kT) if kT else 20 * KCAL_MOL,
                n_starts=args.starts, attack=dict(n_steps=60, lr=0.01, sigma=0.01),
                select=dict(percentile=90.0, rmsd=0.05, permute=True,
                            max_per_generation=args.per_generation, fill=True),
                random_sigma=0.1, md_temperature=1500.0, md_steps=400, md_interval=10,
                md_starts=max(2, args.starts // 64), relabel_seeds=True)
            t = time.perf_counter()
            res = active.run(cfg, model, orc, seeds, evaluate=evaluate)
            heights = generation_heights(res.store, args.generations)
            gens = []
            for r in res.reports:
                g = r["generation"]
                gens.append({k: r.get(k) for k in (
                    "generation", "n_train", "oracle_calls", "labelled", "failed", "n_selected",
                    "n_above", "eval_barrier", "eval_barrier_path", "eval_test_force_mae",
                    "train_seconds", "propose_seconds", "path_energy_mean", "path_energy_std")}
                            | {"lowest_n_height": heights[g - 1] if g <= args.generations else None})
            e0 = min(r.energy for r in res.store.rows(generation=0, status="done"))
            e_new = [r.energy - e0 for r in res.store.rows(status="done") if r.generation > 0]
            results["runs"][name] = {"seed": seed, "seconds": time.perf_counter() - t, "kT_eV": cfg.kT,
                                      "label_energy_median_eV": float(np.median(e_new)),
                                      "generations": gens}
            print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
            _write(results, args)
    if not args.no_throughput:
        results["throughput"] = throughput(model, args.cutoff, seeds,
                                           n_starts=128 if args.quick else 1024)
        results["throughput_device"] = device_info()
        print("throughput", results["throughput"], flush=True)
    elif "throughput" in previous:  # keep the throughput measured by an earlier run
        results["throughput"] = previous["throughput"]
        results["throughput_device"] = previous.get("throughput_device", previous.get("device"))
    results["seconds_total"] = time.perf_counter() - t_start
    _write(results, args)


def _fmt(x, f="{:.3f}"):
    return "–" if x is None else f.format(x)


def _summary(runs: dict, oracle_barrier: float) -> str:
    """One row per strategy: final numbers, mean (min–max) over the seeds run."""
    groups: dict[str, list] = {}
    for name, run in runs.items():
        groups.setdefault(name.split("/")[0], []).append(run)

    def stat(vals, f):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        if len(vals) == 1:
            return f.format(vals[0])
        return f"{f.format(np.mean(vals))} ({f.format(min(vals))}–{f.format(max(vals))})"

    out = ["| strategy | kT (eV) | seeds | oracle calls | first gen. with N height < 0.1 Å | "
           "final abs. barrier error (eV) | final test force MAE (eV/Å) |", "|---|---|---|---|---|---|---|"]
    for strat, rs in groups.items():
        first = []
        for r in rs:
            gs = [g["generation"] for g in r["generations"]
                  if g.get("lowest_n_height") is not None and g["lowest_n_height"] < 0.1]
            first.append(min(gs) if gs else None)
        fin = [r["generations"][-1] for r in rs]
        kT = f"{rs[0]['kT_eV']:.3f}" if strat.startswith("adversarial") else "–"
        out.append(f"| {strat} | {kT} | {len(rs)} | {stat([f['oracle_calls'] for f in fin], '{:.0f}')} | "
                   f"{', '.join('–' if x is None else str(x) for x in first)} | "
                   f"{stat([abs(f['eval_barrier'] - oracle_barrier) for f in fin], '{:.3f}')} | "
                   f"{stat([f['eval_test_force_mae'] for f in fin], '{:.4f}')} |")
    return "\n".join(out)


def _write(results: dict, args) -> None:
    lines = []
    ob = results["oracle_barrier_eV"]
    lines.append(f"GFN2-xTB (tblite) oracle; relaxed C3v inversion barrier {ob:.4f} eV "
                 f"(measured before: {ORACLE_BARRIER_MEASURED} eV). Seeds: {results['seeds']['n']} "
                 f"shipped geometries relabelled (lowest N height {results['seeds']['n_height_min']:.3f} Å). "
                 f"Test set: {results['test_set']['n']} frames of 1500 K GFN2-xTB Langevin MD. "
                 f"Committee: {args.members} SchNet ({args.features} features, {args.interactions} "
                 f"interactions, {args.cutoff} Å), {args.epochs} epochs per generation (warm start); "
                 f"{args.per_generation} labels per generation for every strategy.\n")
    runs = results.get("runs", {})
    if runs:
        lines.append(_summary(runs, ob))
        lines.append("\nPer generation:\n")
        lines.append("| strategy | gen | oracle calls | lowest N height (Å) | barrier pred. (eV) | "
                     "abs. error (eV) | test force MAE (eV/Å) |")
        lines.append("|---|---|---|---|---|---|---|")
        for strat, run in runs.items():
            for r in run["generations"]:
                b = r.get("eval_barrier")
                lines.append(f"| {strat} | {r['generation']} | {r.get('oracle_calls')} | "
                             f"{_fmt(r.get('lowest_n_height'))} | {_fmt(b)} | "
                             f"{_fmt(None if b is None else abs(b - ob))} | "
                             f"{_fmt(r.get('eval_test_force_mae'), '{:.4f}')} |")
        lines.append("\nGeneration g: committee trained on all labels of generations < g; its "
                     "candidates are labelled as generation g (lowest N height among them). The last "
                     "row of each strategy is the committee trained on every label.")
        lines.append("\nMedian energy of the new labels above the lowest seed (test set: median "
                     f"{results['test_set'].get('energy_median_eV', float('nan')):.2f} eV): "
                     + "; ".join(f"{k} {v['label_energy_median_eV']:.2f} eV"
                                 for k, v in runs.items() if "label_energy_median_eV" in v) + ".")
        results["mae_ratio_random_over_adversarial"] = {}
        for name in [k for k in runs if k.startswith("adversarial")]:
            rname = "random" + name[name.index("/"):] if "/" in name else "random"
            if rname not in runs:
                continue
            a = runs[name]["generations"][-1]
            r = runs[rname]["generations"][-1]
            if a.get("eval_test_force_mae") and r.get("eval_test_force_mae"):
                ratio = r["eval_test_force_mae"] / a["eval_test_force_mae"]
                results["mae_ratio_random_over_adversarial"][name] = ratio
                lines.append(f"\n{name}: at {a['oracle_calls']} vs {r['oracle_calls']} ({rname}) oracle "
                             f"calls, test force MAE {rname} / {name} = {ratio:.2f}.")
    tp = results.get("throughput")
    if tp:
        lines.append(f"\nThroughput: {tp['geometry_steps_per_s']:.0f} attacked geometry-steps/s "
                     f"({tp['n_members']}-member committee, {tp['n_starts']} NH3 starts × "
                     f"{tp['n_steps']} Adam steps in one compiled program, median {tp['median_s']:.1f} s "
                     f"per attack, first call incl. compile {tp['first_call_s']:.1f} s), "
                     f"{results.get('throughput_device', results['device'])['device_kind']} "
                     f"({results.get('throughput_device', results['device'])['cpu']}, load average "
                     f"{results.get('throughput_device', results['device'])['loadavg'][0]:.1f} on "
                     f"{results.get('throughput_device', results['device'])['cores']} cores: a shared "
                     "machine, so this is a lower bound). No GPU was available for this run.")
    write_results(args.out, results, "\n".join(lines))


if __name__ == "__main__":
    main()
