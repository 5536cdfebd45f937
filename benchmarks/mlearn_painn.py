"""PaiNN on the mlearn test split (Cu, Ge, Li, Mo, Ni, Si): energy MAE (meV/atom) and
force MAE (eV/Å) under a wall-clock training budget per element.

    nice -n 10 python benchmarks/mlearn_painn.py [--minutes 5] [--elements Cu Si] [--schnet] [--epochs N]

``--schnet`` also trains SchNet with the same budget, side by side; otherwise the SchNet
rows of benchmarks/results/mlearn.json (benchmarks/mlearn.py), when present, are quoted.

Per element: the published training set (90 % train / 10 % validation for model
selection), a wall-clock budget turned into a number of epochs from timed training steps
(so the cosine schedule completes), then the untouched published test set.
Writes benchmarks/results/mlearn_painn.json/.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, mlearn_split, write_results  # noqa: E402

from jaxmat import data, graph, potential, train  # noqa: E402
from jaxmat.models import PaiNNConfig, SchNetConfig, painn, schnet  # noqa: E402

try:  # published force MAEs quoted by the SchNet mlearn benchmark, when present
    from mlearn import PUBLISHED_FORCE_MAE  # noqa: E402
except Exception:  # noqa: BLE001
    PUBLISHED_FORCE_MAE = {}


def predict(model, params, records, budget):
    """Unpadded energies (eV) and forces (eV/Å) of ``records``."""
    apply = jax.jit(model.apply)
    energies, forces = [], []
    for grp in graph.pack(records, budget):
        out = apply(params, graph.batch([records[k] for k in grp], budget))
        energies.extend(np.asarray(out["energy"])[: len(grp)])
        f = np.asarray(out["forces"])
        n = 0
        for k in grp:
            forces.append(f[n:n + records[k].n_node])
            n += records[k].n_node
    return np.array(energies), forces


def steps_time(model, params, loader, loss, n: int = 8) -> tuple[float, float]:
    """Median seconds per compiled training step on the first batches, and the seconds
    of the first (compiling) call."""
    opt = train.make_optimizer(1e-3, 100)
    step = jax.jit(train.make_step(model, loss, opt))
    st = opt.init(params)
    batches = list(loader.epoch(0))[: n + 1]
    t = time.perf_counter()
    p, st, v, _ = step(params, st, batches[0], jax.random.key(0))
    jax.block_until_ready(v)
    compile_s = time.perf_counter() - t
    times = []
    for b in batches[1:]:
        t = time.perf_counter()
        p, st, v, _ = step(p, st, b, jax.random.key(0))
        jax.block_until_ready(v)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), compile_s


def run(name, energy_model, tr, va, te, minutes, seed, epochs=None) -> dict:
    model = potential.potential(energy_model, stress=False)
    loader = graph.GraphLoader(tr, batch_size=4, seed=seed)
    val = graph.GraphLoader(va, batch_size=8, shuffle=False)
    loss = train.energy_force_loss(energy=1.0, forces=10.0)
    params = model.init(jax.random.key(seed), next(iter(loader)))
    step_s, compile_s = steps_time(model, params, loader, loss)
    epoch_s = step_s * (len(loader) + 0.3 * len(val))  # validation ~ forward + grad
    # fit compiles the step and the evaluation again: leave that time out of the budget
    if epochs is None:
        epochs = max(2, int((minutes * 60 - 1.5 * compile_s) / epoch_s))
    cpu0, load0 = time.process_time(), os.getloadavg()[0]
    res = train.fit(model, params, loader, val, loss,
                    train.FitConfig(epochs=epochs, lr=2e-3, lr_end=1e-5, seed=seed,
                                    monitor="forces_mae", progress=False))
    cpu_s = time.process_time() - cpu0
    e, f = predict(model, res.params, te, graph.estimate_budget(te, batch_size=8))
    n_at = np.array([r.n_node for r in te])
    e_true = np.array([r.targets["energy"] for r in te])
    f_true = np.concatenate([r.node_targets["forces"] for r in te])
    return {
        "model": name, "epochs": epochs, "step_seconds": round(step_s, 3),
        "compile_seconds": round(compile_s, 1),
        "train_seconds": round(res.seconds, 1), "train_cpu_seconds": round(cpu_s, 1),
        "loadavg_1min_start": round(load0, 1), "best_epoch": res.best_epoch,
        "energy_mae_meV_atom": float(1e3 * np.mean(np.abs((e - e_true) / n_at))),
        "forces_mae_eV_A": float(np.mean(np.abs(np.concatenate(f) - f_true))),
    }


def run_element(el, minutes, features, cutoff, with_schnet, seed=0, epochs=None) -> list[dict]:
    tr, va, te, refs, f_rms = mlearn_split(el, cutoff, seed)
    models = [("PaiNN", painn(PaiNNConfig(n_features=features, n_interactions=3, n_rbf=20,
                                          cutoff=cutoff).with_stats(refs, f_rms)))]
    if with_schnet:
        models.append(("SchNet", schnet(SchNetConfig(n_features=features, n_interactions=3,
                                                     n_rbf=50, cutoff=cutoff)
                                        .with_stats(refs, f_rms))))
    rows = []
    for name, m in models:
        row = {"element": el, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
               "features": features, "cutoff_A": cutoff, "minutes": minutes}
        row.update(run(name, m, tr, va, te, minutes, seed, epochs))
        pub = {k: v[el] for k, v in PUBLISHED_FORCE_MAE.items() if el in v}
        if pub:
            row["published_forces_mae_eV_A"] = pub
        rows.append(row)
        print(row, flush=True)
    return rows


def quoted_schnet(elements) -> list[dict]:
    """SchNet rows from benchmarks/mlearn.py's results file (another run), if present."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mlearn.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        res = json.load(f)
    rows = []
    for r in res.get("rows", res.get("results", [])):
        if r.get("element") in elements and "forces_mae_eV_A" in r:
            rows.append({"element": r["element"], "model": "SchNet (benchmarks/mlearn.py run)",
                         "epochs": r.get("epochs", 0), "train_seconds": r.get("train_seconds", float("nan")),
                         "train_cpu_seconds": float("nan"),
                         "energy_mae_meV_atom": r["energy_mae_meV_atom"],
                         "forces_mae_eV_A": r["forces_mae_eV_A"], "quoted_from": path})
    return rows


def table(rows) -> str:
    els = sorted({r["element"] for r in rows}, key=data.MLEARN_ELEMENTS.index)
    lines = ["| element | model | epochs | train wall / CPU s | energy MAE (meV/atom) | force MAE (eV/Å) "
             "| best published force MAE (eV/Å) |",
             "|---|---|---|---|---|---|---|"]
    for el in els:
        for r in rows:
            if r["element"] != el:
                continue
            pub = r.get("published_forces_mae_eV_A")
            best = f"{min(pub.values()):.3f} ({min(pub, key=pub.get)})" if pub else "n/a"
            lines.append(f"| {el} | {r['model']} | {r['epochs']} | {r['train_seconds']:.0f} / "
                         f"{r['train_cpu_seconds']:.0f} | {r['energy_mae_meV_atom']:.1f} | "
                         f"{r['forces_mae_eV_A']:.3f} | {best} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per model and element")
    ap.add_argument("--elements", nargs="*", default=["Li", "Mo", "Ge", "Si", "Ni", "Cu"])
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--schnet", action="store_true", help="train SchNet side by side")
    ap.add_argument("--epochs", type=int, default=None,
                    help="equal number of epochs for every model (overrides --minutes)")
    ap.add_argument("--out", default="mlearn_painn")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other elements' rows of an earlier results file (re-runs)")
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{args.out}.json")
    if args.merge and os.path.exists(path):
        with open(path) as f:
            rows = [r for r in json.load(f)["rows"] if r["element"] not in args.elements
                    and "quoted_from" not in r]
    for el in args.elements:
        rows.extend(run_element(el, args.minutes, args.features, args.cutoff, args.schnet,
                                epochs=args.epochs))
    if not args.schnet:
        rows.extend(quoted_schnet(sorted({r["element"] for r in rows})))
    budget = (f"{args.minutes} min wall-clock training per model and element on a shared CPU "
              f"(epochs from timed steps)" if args.epochs is None
              else f"{args.epochs} epochs for every model (equal training)")
    payload = {
        "device": device_info(), "rows": rows, "total_seconds": round(time.time() - t0, 1),
        "protocol": ("published mlearn train/test split; 90/10 train/validation; Adam lr 2e-3 "
                     "cosine to 1e-5, batch 4, loss = MSE(E/atom) + 10 MSE(F); " + budget
                     + "; best epoch by validation force MAE"),
        "published_source": "benchmarks/mlearn.py PUBLISHED_FORCE_MAE" if PUBLISHED_FORCE_MAE else None,
    }
    write_results(args.out, payload, table(rows) + f"\n\n{payload['protocol']}.")


if __name__ == "__main__":
    main()
