"""SchNet on the mlearn test split (Cu, Ge, Li, Mo, Ni, Si): energy MAE (meV/atom) and
force MAE (eV/Å) beside published figures, with the training budget stated.

    python benchmarks/mlearn.py [--minutes 5] [--elements Cu Si] [--features 64]

Per element: the published training set (90 % train / 10 % validation for model
selection), a wall-clock budget that fixes the number of epochs from a timed first
epoch, then the untouched published test set. Writes benchmarks/results/mlearn.json/.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import device_info, mlearn_split, write_results  # noqa: E402

from jaxmat import data, graph, potential, train  # noqa: E402
from jaxmat.demo import predict  # noqa: E402
from jaxmat.models import SchNetConfig, schnet  # noqa: E402

PUBLISHED_FORCE_MAE = {  # eV/Å, mlearn test split (JARVIS leaderboard)
    "SNAP": {"Ni": 0.062, "Cu": 0.060, "Li": 0.027, "Mo": 0.184, "Si": 0.176, "Ge": 0.097},
    "M3GNet": {"Cu": 0.018, "Si": 0.112},
    "NequIP": {"Si": 0.090},
    "CHGNet": {"Si": 0.136},
}


def run_element(el: str, minutes: float, features: int, cutoff: float, seed: int = 0) -> dict:
    tr, va, te, refs, f_rms = mlearn_split(el, cutoff, seed)
    cfg = SchNetConfig(n_features=features, n_interactions=3, n_rbf=50, cutoff=cutoff)
    cfg = cfg.with_stats(refs, scale=f_rms)
    model = potential.potential(schnet(cfg), stress=False)
    loader = graph.GraphLoader(tr, batch_size=4, seed=seed)
    val = graph.GraphLoader(va, batch_size=8, shuffle=False)
    loss = train.energy_force_loss(energy=1.0, forces=10.0)
    params = model.init(jax.random.key(seed), next(iter(loader)))

    # time one epoch (after compilation) to turn the wall-clock budget into epochs
    probe = train.fit(model, params, loader, None, loss, train.FitConfig(epochs=2, progress=False))
    epoch_s = probe.history[-1]["time_s"]
    epochs = max(5, int(minutes * 60 / (epoch_s * 1.1)))
    result = train.fit(model, params, loader, val, loss,
                       train.FitConfig(epochs=epochs, lr=2e-3, lr_end=1e-5, seed=seed, progress=False))
    budget = graph.estimate_budget(te, batch_size=8)
    pred = predict(model, result.params, te, budget)
    n_at = np.array([r.n_node for r in te])
    e_true = np.array([r.targets["energy"] for r in te])
    f_true = np.concatenate([r.node_targets["forces"] for r in te])
    return {
        "element": el, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
        "epochs": epochs, "epoch_seconds": round(epoch_s, 2), "train_seconds": round(result.seconds, 1),
        "best_epoch": result.best_epoch, "cutoff_A": cutoff, "features": features,
        "energy_mae_meV_atom": float(1e3 * np.mean(np.abs((np.array(pred["energy"]) - e_true) / n_at))),
        "forces_mae_eV_A": float(np.mean(np.abs(np.concatenate(pred["forces"]) - f_true))),
        "snap_forces_mae_eV_A": PUBLISHED_FORCE_MAE["SNAP"][el],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per element")
    ap.add_argument("--elements", nargs="*", default=list(data.MLEARN_ELEMENTS))
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--out", default="mlearn")
    args = ap.parse_args()
    rows = []
    for el in args.elements:
        t = time.perf_counter()
        row = run_element(el, args.minutes, args.features, args.cutoff)
        row["wall_seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| element | SchNet E MAE (meV/atom) | SchNet F MAE (eV/Å) | SNAP F | M3GNet F | NequIP F | epochs (train s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        el = r["element"]
        pub = {k: PUBLISHED_FORCE_MAE[k].get(el, "–") for k in ("SNAP", "M3GNet", "NequIP")}
        lines.append(f"| {el} | {r['energy_mae_meV_atom']:.1f} | {r['forces_mae_eV_A']:.3f} | "
                     f"{pub['SNAP']} | {pub['M3GNet']} | {pub['NequIP']} | {r['epochs']} ({r['train_seconds']:.0f}) |")
    write_results(args.out, {"device": device_info(), "settings": vars(args), "rows": rows,
                             "published_force_mae": PUBLISHED_FORCE_MAE}, "\n".join(lines))


if __name__ == "__main__":
    main()
