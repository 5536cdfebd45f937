"""How much can any sampling strategy gain on the ammonia high-T test set? A data-only
comparison behind ``adversarial_ammonia.py``'s force-MAE ratio.

    nice -n 10 python benchmarks/adversarial_data.py [--epochs 600] [--members 5]

Every committee here is trained from scratch with the same settings on the 138 relabelled
seeds plus one set of extra labels of the same size:

* the labels each strategy of ``adversarial_ammonia.py`` collected (read from its stores in
  ``runs/adversarial_ammonia/<strategy>/labels.db``, so that script must have run first);
* ``oracle-md``: frames of independent GFN2-xTB Langevin MD at 1500 K, the process that drew
  the test set (different random seeds, same start): sampling from the test distribution
  itself, the best a strategy could hope to match.

Writes benchmarks/results/adversarial_data.json/.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adversarial_ammonia import c3v_geometry, make_model, md_test_set  # noqa: E402
from common import RESULTS, device_info, write_results  # noqa: E402

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ase.io import read, write  # noqa: E402

from jaxmat import active, ensemble, graph, oracle, train  # noqa: E402
from jaxmat.workflows.adversarial.select import committee_predict, too_close  # noqa: E402
from jaxmat.workflows.adversarial.store import Store  # noqa: E402


def fit_and_score(model, atoms: list, test: list, cutoff: float, members: int, epochs: int,
                  seed: int) -> dict:
    """Committee trained from scratch on ``atoms``; committee-mean force MAE (eV/Å) on ``test``."""
    recs = graph.records_from_atoms(atoms, cutoff)
    params = ensemble.init(model, jax.random.key(seed), graph.batch(recs[:1]), members)
    cfg = ensemble.CommitteeConfig(epochs=epochs, lr=2e-3, lr_end=1e-5, seed=seed,
                                   batch_size=32, progress=False)
    res = ensemble.fit(model, params, recs, loss=train.energy_force_loss(1.0, 10.0), config=cfg)
    p = committee_predict(model, res.params, test)
    f_ref = np.concatenate([a.get_forces() for a in test])
    err = np.abs(np.concatenate(p["forces"]) - f_ref)
    return {"n_train": len(atoms), "test_force_mae": float(err.mean()), "seconds": res.seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/adversarial_ammonia")
    ap.add_argument("--runs", default="", help="subfolder of --workdir holding the strategies' "
                    "runs (adversarial_ammonia.py --out NAME keeps them in NAME/)")
    ap.add_argument("--strategies", nargs="+",
                    default=["random", "adversarial", "adversarial@0.3", "md"])
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--interactions", type=int, default=2)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--out", default="adversarial_data", help="results name")
    ap.add_argument("--n-extra", type=int, default=100, help="extra labels per set (cap)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    args = ap.parse_args()
    workdir = os.path.abspath(args.workdir)
    seeds = read(os.path.join(workdir, "seeds.extxyz"), ":")
    test = read(os.path.join(workdir, "test_md.extxyz"), ":")
    with open(os.path.join(workdir, "reference.json")) as f:
        path = json.load(f)
    extra: dict[str, list] = {}
    n_calls: dict[str, int] = {}
    for s in args.strategies:
        db = os.path.join(workdir, args.runs, s.replace("/", "_"), "labels.db")
        if not os.path.exists(db):
            print(f"skipping {s}: no {db} (run adversarial_ammonia.py --strategies {s} first)")
            continue
        store = Store(db)
        new = [a for a in store.labelled() if a.info["generation"] > 0][: args.n_extra]
        # the first n_extra oracle calls; labels the loop keeps out of training stay out here
        bad = too_close(new, active.ActiveConfig().min_distance)
        extra[s] = [a for a, b in zip(new, bad) if not b]
        n_calls[s] = len(new)
    md_path = os.path.join(workdir, "oracle_md_train.extxyz")
    if not os.path.exists(md_path):
        orc = oracle.xtb("GFN2-xTB")
        start = c3v_geometry(path["h_min"], path["r_min"])
        frames = md_test_set(orc, start, n_traj=5, n_steps=400, every=20, seed=456)
        write(md_path, frames)
    extra["oracle-md"] = read(md_path, ":")[: args.n_extra]
    n_calls["oracle-md"] = len(extra["oracle-md"])
    model = make_model(seeds, args.features, args.interactions, args.cutoff)
    results = {"device": device_info(), "settings": vars(args), "sets": {}}
    old = os.path.join(RESULTS, f"{args.out}.json")
    same = ("epochs", "members", "features", "interactions", "cutoff", "n_extra", "seeds", "runs")
    if os.path.exists(old):  # keep the sets an earlier run with the same settings trained
        with open(old) as f:
            prev = json.load(f)
        if all(prev["settings"].get(k, "") == vars(args)[k] for k in same):
            results["sets"] = prev["sets"]
    for name, new in extra.items():
        if name in results["sets"]:  # same settings, same seeds: same numbers
            continue
        runs = [fit_and_score(model, seeds + new, test, args.cutoff, args.members, args.epochs, sd)
                for sd in args.seeds]
        results["sets"][name] = {"n_extra": len(new), "oracle_calls": n_calls[name],
                                 "test_force_mae": [r["test_force_mae"] for r in runs],
                                 "seconds": [r["seconds"] for r in runs]}
        print(name, results["sets"][name], flush=True)
        _write(results, args.out)


def _write(results: dict, out: str) -> None:
    sets, st = results["sets"], results["settings"]
    base = np.mean(sets["random"]["test_force_mae"]) if "random" in sets else None
    lines = [f"Committees of {st['members']} SchNet members ({st['features']} features, "
             f"{st['interactions']} interactions) trained from scratch for {st['epochs']} epochs on the 138 seeds plus each set's extra "
             "labels; force MAE of the committee mean on the 160-frame 1500 K GFN2-xTB MD test set, "
             f"mean over training seeds {st['seeds']}. The strategies' label sets are the new "
             f"labels of seed-0 loop runs in `{os.path.join(os.path.basename(st['workdir']), st['runs'])}`"
             "; oracle-md: 5 independent 1500 K GFN2-xTB trajectories, a frame every 20 steps.\n",
             "| extra labels | oracle calls | trained on | test force MAE (eV/Å) | random / this |",
             "|---|---|---|---|---|"]
    for name, s in sets.items():
        m = float(np.mean(s["test_force_mae"]))
        ratio = f"{base / m:.2f}" if base else "–"
        per = ", ".join(f"{x:.4f}" for x in s["test_force_mae"])
        lines.append(f"| {name} | {s.get('oracle_calls', s['n_extra'])} | {s['n_extra']} | "
                     f"{m:.4f} ({per}) | {ratio} |")
    write_results(out, results, "\n".join(lines))


if __name__ == "__main__":
    main()
