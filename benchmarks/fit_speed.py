"""Wall time per epoch of the training loops users call: ``train.fit`` (one SchNet potential,
dense and sparse layouts) and ``ensemble.fit`` (a committee of 5) on the shipped ammonia
data, with a validation pass every epoch. Uses only APIs that older versions share, so
``benchmarks/ab.py`` can time it against an earlier commit side by side.

    python benchmarks/fit_speed.py [--epochs 12] [--out results/fit_speed]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, device_info  # noqa: E402

from jaxmat import data, ensemble, graph, potential, train  # noqa: E402
from jaxmat.models import SchNetConfig, schnet  # noqa: E402

import jax  # noqa: E402


def case(name: str, tr: list, va: list, layout: str, members: int, epochs: int) -> dict:
    refs, _ = potential.fit_energy_stats([r.numbers for r in tr], [r.targets["energy"] for r in tr])
    cfg = SchNetConfig(n_features=64, n_interactions=3, n_rbf=20, cutoff=5.0)
    model = potential.potential(schnet(cfg.with_stats(refs, 1.0)), stress=False)
    loader = graph.GraphLoader(tr, 16, layout=layout, seed=0)
    val = graph.GraphLoader(va, 32, layout=layout, shuffle=False)
    loss = train.energy_force_loss(1.0, 10.0)
    example = next(iter(loader))
    t0 = time.perf_counter()
    if members == 1:
        params = model.init(jax.random.key(0), example)
        res = train.fit(model, params, loader, val, loss,
                        train.FitConfig(epochs=epochs, lr=3e-3, progress=False))
    else:
        params = ensemble.init(model, jax.random.key(0), example, members)
        res = ensemble.fit(model, params, loader, val, loss,
                           ensemble.CommitteeConfig(epochs=epochs, lr=3e-3, batch_size=16,
                                                    progress=False))
    total = time.perf_counter() - t0
    times = [float(r["time_s"]) for r in res.history]
    return {"case": name, "layout": layout, "members": members, "epochs": epochs,
            "first_epoch_s": times[0], "median_epoch_s": float(np.median(times[2:])),
            "total_s": total, "load1": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", default=os.path.join(RESULTS, "fit_speed"))
    args = ap.parse_args()
    recs = graph.records_from_atoms(data.load_ammonia(), 5.0)
    idx = data.split_indices(len(recs), (0.7, 0.1, 0.2), seed=0)
    tr, va = ([recs[k] for k in i] for i in idx[:2])
    rows = [case("train.fit", tr, va, "dense", 1, args.epochs),
            case("train.fit", tr, va, "sparse", 1, args.epochs),
            case("ensemble.fit x5", tr, va, "sparse", 5, args.epochs)]
    lines = ["| loop | layout | median epoch (s) | first epoch incl. compile (s) |",
             "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['layout']} | {r['median_epoch_s']:.3f} | "
              f"{r['first_epoch_s']:.2f} |" for r in rows]
    table = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"device": device_info(), "settings": vars(args), "rows": rows}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(f"97 NH3 train / 14 validation, SchNet 64x3, batch 16, {args.epochs} epochs; "
                "median over epochs 3 and later.\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
