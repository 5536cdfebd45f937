"""Robustness of NN-driven MD per oracle label, measured with one protocol for every
sampling strategy (after Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104, 2021).

    nice python benchmarks/robustness.py --stage validation   # tune every strategy
    nice python benchmarks/robustness.py --stage report       # the chosen ones, 10 seeds
    python benchmarks/robustness.py --stage summary           # tables, plot, statistics
    (--system nh3, --seeds, --configs, --quick)

Protocol (fixed before any reported run; ``PROTOCOL`` below):

* A pool of 300 K GFN2-xTB (tblite) Langevin frames from the system's minimum. Seed ``s``
  draws from it the ``initial`` labelled training frames and the ``eval_starts`` MD start
  frames (disjoint); all strategies of a seed share both.
* Every strategy labels exactly ``per_generation`` structures in each of ``generations``
  rounds (failed oracle calls count as spent), and every round trains the same committee
  (``members`` SchNet, the same epochs, warm-started) with the same training seed.
* Every committee C_g (trained on the labels of rounds < g; C_1 on the initial frames, the
  same for all strategies) drives ``replicas`` Langevin replicas from the seed's start
  frames (Maxwell–Boltzmann velocities) at each of ``temperatures`` for ``steps`` × 0.5 fs
  on :mod:`jaxmat.md`, with the MD seed shared by all strategies. Two success criteria:
  *physical* — no unphysical structure (atoms < 0.6 Å, a bond beyond 1.6 × covalent, a
  covalent graph changed for 5 fs, non-finite values: the detector's geometric and
  topological criteria, the paper's criterion); *accurate* — physical and every
  GFN2-xTB spot check (every ``check_every`` steps) within 0.1 eV/atom and 1 eV/Å.
* Strategies: ``adversarial@kT`` (eV), ``random@σ`` (Å Gaussian displacements of training
  frames), ``normal_modes@T`` (K, harmonic thermal samples with the committee's Hessian),
  ``md@T`` (K, committee MD on jaxmat.md stopped at the first frame over the training σ
  percentile or 0.25 eV/atom beyond the committee's training energy range). Each knob is
  tuned on validation seeds (100, 101) by the mean accurate success over rounds and
  temperatures, on the grid ``GRID`` extended (halving or doubling the knob) while a
  strategy's best setting lies at an edge (``--stage extend`` prints those settings);
  ``--stage report`` runs the chosen setting of each on seeds 0-9.

Runs live in runs/robustness/<system>/ and resume; per run the labels (with the seed and
settings they rebuild the committees from) go to benchmarks/results/robustness/.
Writes benchmarks/results/robustness_protocol_<system>{_validation,}.json/.md/.png.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adversarial_ammonia import make_model, md_test_set  # noqa: E402
from common import RESULTS, device_info, write_results  # noqa: E402

import numpy as np  # noqa: E402

from jaxmat import active, data, oracle  # noqa: E402
from jaxmat.workflows.adversarial.robustness import molecule_criteria, robustness  # noqa: E402

KCAL_MOL = data.KCAL_MOL
PROTOCOL = dict(pool_trajectories=8, pool_frames=30, pool_every=20, initial=8,
                eval_starts=16, generations=6, per_generation=8, members=3, features=16,
                interactions=2, cutoff=4.0, epochs=100, replicas=32, steps=2000,
                temperatures=(1000.0, 1500.0), check_every=500, energy_tol=0.1,
                forces_tol=1.0, topology_fs=5.0)
GRID = {"adversarial": [10 * KCAL_MOL, 20 * KCAL_MOL, 40 * KCAL_MOL],
        "random": [0.05, 0.1, 0.2], "normal_modes": [750.0, 1500.0, 3000.0],
        "md": [1000.0, 1500.0, 2000.0]}
VALIDATION_SEEDS, REPORT_SEEDS = [100, 101], list(range(10))
THRESHOLDS = (0.9, 0.95)


# --------------------------------------------------------------------------- data
def pool(orc, workdir: str, p: dict) -> tuple[list, object]:
    """The 300 K GFN2-xTB frame pool (made once, kept in ``workdir``) and the minimum."""
    from ase.io import read, write

    seeds = data.load_ammonia()
    e = [orc.label(a).energy for a in seeds]
    start = seeds[int(np.argmin(e))].copy()
    start.calc, start.info = None, {}
    path = os.path.join(workdir, f"pool_{p['pool_trajectories']}x{p['pool_frames']}.extxyz")
    if not os.path.exists(path):
        t = time.perf_counter()
        frames = md_test_set(orc, start, 300.0, n_traj=p["pool_trajectories"],
                             n_steps=p["pool_every"] * p["pool_frames"], every=p["pool_every"],
                             seed=7)
        write(path + ".tmp.extxyz", frames)
        os.replace(path + ".tmp.extxyz", path)
        print(f"pool: {len(frames)} frames of 300 K GFN2-xTB MD in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    return read(path, ":"), start


def draw(frames: list, seed: int, p: dict) -> tuple[list, list]:
    """Seed ``seed``'s initial training frames and its (disjoint) MD start frames."""
    idx = np.random.default_rng(seed).permutation(len(frames))
    initial = [frames[k] for k in idx[:p["initial"]]]
    starts = [frames[k].copy() for k in idx[p["initial"]:p["initial"] + p["eval_starts"]]]
    for a in starts:
        a.calc, a.info = None, {}
    return initial, starts


# --------------------------------------------------------------------------- one run
def strategy_config(name: str, workdir: str, seed: int, p: dict) -> active.ActiveConfig:
    kind, _, knob = name.partition("@")
    x = float(knob) if knob else None
    extra = {"adversarial": {"kT": x}, "random": {"random_sigma": x},
             "normal_modes": {"nm_temperature": x}, "md": {"md_temperature": x}}[kind]
    return active.ActiveConfig(
        workdir=workdir, strategy=kind, generations=p["generations"], seed=seed,
        n_members=p["members"], fit=dict(epochs=p["epochs"], lr=2e-3, batch_size=16),
        energy_weight=1.0, forces_weight=10.0, n_starts=64, attack_batches=8,
        attack=dict(n_steps=60, lr=0.01, sigma=0.05),
        select=dict(percentile=90.0, rmsd=0.05, permute=True,
                    max_per_generation=p["per_generation"], fill=True),
        md_steps=1000, md_interval=5, md_starts=32, md_energy_margin=0.25,
        relabel_seeds=False, workers=0, progress=False, **{k: v for k, v in extra.items()})


def evaluator(model, starts: list, orc, seed: int, p: dict):
    crit = molecule_criteria(topology_time_fs=p["topology_fs"])

    def evaluate(g, params, store):
        out = {}
        for k, temp in enumerate(p["temperatures"]):
            r = robustness(model, params, starts, replicas=p["replicas"], steps=p["steps"],
                           temperature_K=temp, timestep_fs=0.5, criteria=crit, oracle=orc,
                           check_every=p["check_every"], energy_tol=p["energy_tol"],
                           forces_tol=p["forces_tol"], seed=10_000 * seed + k)
            out[f"T{temp:g}"] = {"physical": r["success_geometric"],
                                 "accurate": r["success_fraction"], "reasons": r["reasons"],
                                 "n_oracle_checks": r["n_oracle_checks"]}
        out["eval_accurate"] = float(np.mean([v["accurate"] for v in out.values()]))
        return out

    return evaluate


def run_one(name: str, seed: int, p: dict, orc, frames: list, workdir: str) -> dict:
    initial, starts = draw(frames, seed, p)
    model = make_model(initial, p["features"], p["interactions"], p["cutoff"])
    cfg = strategy_config(name, os.path.join(workdir, f"{name}_seed{seed}"), seed, p)
    t = time.perf_counter()
    res = active.run(cfg, model, orc, initial, evaluate=evaluator(model, starts, orc, seed, p))
    spent = [row.generation for row in res.store.rows() if row.status != "pending"]
    rounds = [{"generation": r["generation"], "n_train": r["n_train"],
               "oracle_calls": sum(g < r["generation"] for g in spent),  # C_g's labels
               **{f"T{t:g}": r[f"T{t:g}"] for t in p["temperatures"]},
               "n_selected": r.get("n_selected"), "failed_labels": r.get("failed")}
              for r in res.reports]
    save_labels(res.store, name, seed, p)
    return {"strategy": name, "seed": seed, "seconds": time.perf_counter() - t,
            "rounds": rounds}


def save_labels(store, name: str, seed: int, p: dict) -> None:
    """Every oracle call of a run (failed ones with energy NaN) as gzipped extxyz."""
    from ase.io import write

    d = os.path.join(RESULTS, "robustness", p["system"])
    os.makedirs(d, exist_ok=True)
    atoms = []
    for row in store.rows():
        a = row.toatoms()
        a.info.update(generation=row.generation, origin=row.origin, status=row.status)
        atoms.append(a)
    with gzip.open(os.path.join(d, f"{name}_seed{seed}.extxyz.gz"), "wt") as f:
        write(f, atoms, format="extxyz")


# --------------------------------------------------------------------------- statistics
def success_matrix(runs: dict, name: str, seeds: list, crit: str, temp: str) -> np.ndarray:
    """(seeds, rounds) success of strategy ``name``."""
    return np.array([[r[temp][crit] for r in runs[f"{name}/seed{s}"]["rounds"]]
                     for s in seeds])


def labels_to(success: np.ndarray, calls: np.ndarray, level: float) -> np.ndarray:
    """Per seed: oracle calls of the first round at or above ``level`` (inf: never)."""
    out = np.full(len(success), np.inf)
    for k, row in enumerate(success):
        hit = np.flatnonzero(row >= level)
        if len(hit):
            out[k] = calls[hit[0]]
    return out


def paired_bootstrap(x: np.ndarray, y: np.ndarray, stat=np.mean, n: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float]:
    """``stat(x - y)`` over seeds with a 95 % paired bootstrap interval."""
    d = np.asarray(x, float) - np.asarray(y, float)
    rng = np.random.default_rng(seed)
    boots = stat(d[rng.integers(0, len(d), (n, len(d)))], axis=1)
    return float(stat(d)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def sign_flip_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided exact sign-flip permutation p-value of the mean paired difference."""
    d = np.asarray(x, float) - np.asarray(y, float)
    n = len(d)
    signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    null = np.abs((signs * d).mean(1))
    return float(np.mean(null >= abs(d.mean()) - 1e-12))


def chosen(validation: dict) -> dict[str, str]:
    """Per strategy kind, the setting with the best mean accurate success over rounds,
    temperatures and validation seeds."""
    best: dict[str, tuple[float, str]] = {}
    for name, score in validation_scores(validation).items():
        kind = name.partition("@")[0]
        if kind not in best or score > best[kind][0]:
            best[kind] = (score, name)
    return {k: v[1] for k, v in best.items()}


def extensions(validation: dict) -> list[str]:
    """Settings still to validate: where a strategy's best setting is the smallest (largest)
    one tried, the next one below (above) it, half (twice) the value, so that no chosen
    knob sits at the edge of its grid."""
    scores = validation_scores(validation)
    out = []
    for kind in GRID:
        tried = sorted(float(n.partition("@")[2]) for n in scores if n.startswith(kind + "@"))
        if len(tried) < 2:
            continue
        best = float(chosen(validation)[kind].partition("@")[2])
        if best == tried[0]:
            out.append(f"{kind}@{best / 2:g}")
        elif best == tried[-1]:
            out.append(f"{kind}@{best * 2:g}")
    return out


def validation_scores(validation: dict) -> dict[str, float]:
    by: dict[str, list] = {}
    for run in validation["runs"].values():
        by.setdefault(run["strategy"], []).append(np.mean(
            [[r[t]["accurate"] for t in r if t.startswith("T")] for r in run["rounds"]]))
    return {k: float(np.mean(v)) for k, v in by.items()
            if len(v) == len(VALIDATION_SEEDS)}


def compare(runs: dict, names: list[str], seeds: list[int], p: dict) -> dict:
    """Per criterion and temperature: mean success per round with bootstrap CIs, labels to
    0.9/0.95 per seed, and adversarial minus each baseline at matched labels (paired)."""
    calls = np.array([p["initial"] + p["per_generation"] * g for g in range(p["generations"] + 1)])
    adv = next(n for n in names if n.startswith("adversarial"))
    out: dict = {"oracle_calls": calls.tolist(), "tables": {},
                 "unequal_budget": [f"{n}/seed{s} round {r['generation']}: {r['oracle_calls']}"
                                    for n in names for s in seeds
                                    for r in runs[f"{n}/seed{s}"]["rounds"]
                                    if r["oracle_calls"] != calls[r["generation"] - 1]]}
    for crit in ("physical", "accurate"):
        for temp in [f"T{t:g}" for t in p["temperatures"]]:
            mats = {n: success_matrix(runs, n, seeds, crit, temp) for n in names}
            tab: dict = {}
            for n, m in mats.items():
                rng = np.random.default_rng(1)
                boots = m[rng.integers(0, len(m), (10_000, len(m)))].mean(1)
                tab[n] = {"mean": m.mean(0).tolist(),
                          "lo": np.percentile(boots, 2.5, axis=0).tolist(),
                          "hi": np.percentile(boots, 97.5, axis=0).tolist(),
                          "labels_to": {str(lv): labels_to(m, calls, lv).tolist()
                                        for lv in THRESHOLDS}}
                if n != adv:
                    diff = [paired_bootstrap(mats[adv][:, g], m[:, g])
                            for g in range(m.shape[1])]
                    tab[n]["adv_minus"] = [{"mean": d[0], "lo": d[1], "hi": d[2],
                                            "p": sign_flip_p(mats[adv][:, g], m[:, g])}
                                           for g, d in enumerate(diff)]
                    best = float(m.mean(0).max())  # the baseline's best mean success
                    tab[n]["best_mean"] = best
                    tab[n]["calls_to_best"] = {
                        "baseline": float(calls[np.argmax(m.mean(0) >= best - 1e-12)]),
                        "adversarial": float(calls[np.argmax(mats[adv].mean(0) >= best - 1e-12)])
                        if (mats[adv].mean(0) >= best - 1e-12).any() else None}
            out["tables"][f"{crit}/{temp}"] = tab
    return out


# --------------------------------------------------------------------------- output
def plot(cmp: dict, names: list[str], p: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(cmp["tables"])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.4), sharey=True)
    for ax, key in zip(np.atleast_1d(axes), keys):
        for n in names:
            t = cmp["tables"][key][n]
            ax.plot(cmp["oracle_calls"], t["mean"], marker="o", ms=3, label=n)
            ax.fill_between(cmp["oracle_calls"], t["lo"], t["hi"], alpha=0.2)
        ax.set_title(key.replace("/", ", "), fontsize=9)
        ax.set_xlabel("oracle calls")
    np.atleast_1d(axes)[0].set_ylabel("successful replicas (fraction)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(cmp: dict, names: list[str], seeds: list[int]) -> list[str]:
    fmt = lambda v: "never" if not np.isfinite(v) else f"{v:.0f}"  # noqa: E731
    lines = []
    for key, tab in cmp["tables"].items():
        lines += [f"\n### {key.replace('/', ' success, ')} ({len(seeds)} seeds, mean and 95 % "
                  "bootstrap CI over seeds)\n",
                  "| strategy | " + " | ".join(f"{c} calls" for c in cmp["oracle_calls"])
                  + " | calls to 0.9 (per seed) | calls to 0.95 (per seed) |",
                  "|---|" + "---|" * (len(cmp["oracle_calls"]) + 2)]
        for n in names:
            t = tab[n]
            cells = [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in
                     zip(t["mean"], t["lo"], t["hi"])]
            lt = [" ".join(fmt(v) for v in t["labels_to"][str(lv)]) for lv in THRESHOLDS]
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {lt[0]} | {lt[1]} |")
        for n in names:
            if "adv_minus" not in tab[n]:
                continue
            d = tab[n]["adv_minus"]
            lines.append(f"| adversarial − {n} | " + " | ".join(
                f"{x['mean']:+.2f} [{x['lo']:+.2f}, {x['hi']:+.2f}] p={x['p']:.3f}" for x in d)
                + f" | best mean {tab[n]['best_mean']:.2f} at {tab[n]['calls_to_best']['baseline']:.0f}"
                  f" calls; adversarial reaches it at "
                  f"{tab[n]['calls_to_best']['adversarial'] or 'never'} | |")
    return lines


def write(stage: str, results: dict, p: dict) -> None:
    out = _name(stage, p)
    lines = [f"System {p['system']}; oracle GFN2-xTB (tblite); protocol: "
             + ", ".join(f"{k} {v}" for k, v in p.items()) + ".\n"]
    if stage == "validation":
        lines += ["| setting | mean accurate success (rounds × temperatures × seeds) |",
                  "|---|---|"]
        lines += [f"| {n} | {s:.3f} |" for n, s in
                  sorted(validation_scores(results).items())]
        lines.append("\nChosen: " + ", ".join(chosen(results).values()))
    elif results.get("compare"):
        lines += table(results["compare"], results["names"], results["seeds"])
        bad = results["compare"]["unequal_budget"]
        lines.append(f"\nRounds whose committee saw another number of oracle calls than the "
                     f"schedule: {len(bad)}" + (f" ({'; '.join(bad[:10])})" if bad else ""))
    lines.append(f"\n{len(results['runs'])} runs, {sum(r['seconds'] for r in results['runs'].values()):.0f} s"
                 f" of run time on a shared CPU (load {results['device'].get('loadavg', [0])[0]:.1f}).")
    write_results(out, results, "\n".join(lines))


def _name(stage: str, p: dict) -> str:
    return (f"robustness_protocol_{p['system']}" + ("_validation" if stage == "validation" else "")
            + ("_quick" if p.get("quick") else ""))


def load(stage: str, p: dict) -> dict:
    path = os.path.join(RESULTS, _name(stage, p) + ".json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("protocol") == json.loads(json.dumps(p)):
            return old
        raise SystemExit(f"{path} holds runs of another protocol; move it away first")
    return {"protocol": p, "runs": {}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["validation", "extend", "report", "summary"],
                    required=True)
    ap.add_argument("--system", choices=["nh3"], default="nh3")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--configs", nargs="+", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", default="runs/robustness_protocol")
    args = ap.parse_args()
    p = dict(PROTOCOL, system=args.system)
    if args.quick:
        p.update(quick=True, generations=1, epochs=10, replicas=8, steps=200, check_every=100,
                 pool_trajectories=2, pool_frames=12, per_generation=4)
    if args.stage == "extend":
        print(" ".join(extensions(load("validation", p))))
        return
    stage = "validation" if args.stage == "validation" else "report"
    results = load(stage, p)
    results["device"] = device_info()
    if args.stage == "summary":
        val = load("validation", p)
        names = list(chosen(val).values())
        seeds = sorted({r["seed"] for r in results["runs"].values()})
        done = [s for s in seeds if all(f"{n}/seed{s}" in results["runs"] for n in names)]
        results.update(names=names, seeds=done, compare=compare(results["runs"], names, done, p))
        plot(results["compare"], names, p, os.path.join(RESULTS, _name("report", p) + ".png"),
             f"{p['system']}: {p['replicas']} replicas, {p['steps'] * 0.5 / 1000:g} ps, "
             f"{len(done)} seeds")
        write("report", results, p)
        return
    orc = oracle.xtb("GFN2-xTB")
    workdir = os.path.abspath(os.path.join(args.workdir, args.system + ("_quick" if args.quick else "")))
    os.makedirs(workdir, exist_ok=True)
    frames, _ = pool(orc, workdir, p)
    if stage == "validation":
        names = args.configs or [f"{k}@{v:g}" for k, vs in GRID.items() for v in vs]
        seeds = args.seeds or VALIDATION_SEEDS
    else:
        names = args.configs or list(chosen(load("validation", p)).values())
        seeds = args.seeds or REPORT_SEEDS
    for seed in seeds:
        for name in names:
            key = f"{name}/seed{seed}"
            if key in results["runs"]:
                continue
            results["runs"][key] = run_one(name, seed, p, orc, frames, workdir)
            r = results["runs"][key]
            print(f"{key}: {r['seconds']:.0f} s, accurate "
                  f"{[round(np.mean([x[t]['accurate'] for t in x if t.startswith('T')]), 2) for x in r['rounds']]}",
                  flush=True)
            results = _merge(stage, results, p)
            write(stage, results, p)


def _merge(stage: str, results: dict, p: dict) -> dict:
    """Runs written meanwhile by another process (one per core) are kept."""
    try:
        other = load(stage, p)
    except (SystemExit, json.JSONDecodeError):  # another protocol, or a file being written
        return results
    results["runs"] = other["runs"] | results["runs"]
    return results


if __name__ == "__main__":
    main()
