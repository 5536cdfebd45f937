"""Crystal properties on the JARVIS sample and model speed.

    nice -n 10 python benchmarks/crystal.py [--epochs 30] [--skip-cv] [--skip-speed]

1. Band gap (eV), 50 JARVIS crystals, 5-fold cross-validation MAE: ALIGNN-style vs SchNet
   with a mean-pooled scalar head (:func:`jaxmat.models.graph_target`) vs the training-fold
   mean. Same graphs for both models (12 nearest neighbours within 8 Å, as ALIGNN).
2. Electronic DOS (300 points), same crystals and folds: mean cosine similarity of held-out
   predictions (ALIGNN-style vs the training-fold mean DOS).
3. Speed: structures/s of a training step and of inference for PaiNN, ALIGNN-style (small and
   published size) and SchNet on mlearn-Si and the JARVIS samples (median of repeats,
   batches of 8 structures, one compiled shape each).
Writes benchmarks/results/crystal.json/.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, median_time, write_results  # noqa: E402

from jaxmat import crossval, data, graph, linegraph, potential, train  # noqa: E402
from jaxmat.data import jarvis  # noqa: E402
from jaxmat.models import (ALIGNNConfig, PaiNNConfig, SchNetConfig, alignn,  # noqa: E402
                           graph_target, painn, schnet)
from jaxmat.core.protocol import count_params  # noqa: E402

SMALL = dict(n_alignn_layers=2, n_gcn_layers=2, embedding=32, hidden=64)
BATCH = 8


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def fold_mean(y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Prediction of each item by the mean of its training folds."""
    return np.stack([y[fold != fold[i]].mean(0) for i in range(len(y))])


def cross_validation(epochs: int, seed: int) -> dict:
    gap_recs = linegraph.records_from_atoms(jarvis.load_jarvis_bandgap())  # 12-NN within 8 Å
    dos_recs = linegraph.records_from_atoms(jarvis.load_jarvis_dos())
    y = np.array([float(r.targets["bandgap"]) for r in gap_recs])
    Y = np.stack([r.targets["dos"] for r in dos_recs])
    kw = dict(k=5, epochs=epochs, batch_size=BATCH, lr=2e-3, seed=seed)
    out = {"bandgap": {}, "dos": {}, "epochs": epochs, "folds": 5, "n": len(y)}
    models = {
        "ALIGNN-style": alignn(ALIGNNConfig(**SMALL, output_key="bandgap")),
        "SchNet": graph_target(schnet(SchNetConfig(n_features=64, n_interactions=3, n_rbf=50,
                                                   cutoff=8.0)), key="bandgap"),
    }
    fold = None
    for name, model in models.items():
        t = time.time()
        pred, fold = crossval.cross_val_predict(model, gap_recs, "bandgap", **kw)
        err = np.abs(pred - y)
        out["bandgap"][name] = {
            "mae_eV": float(err.mean()),
            "fold_mae_eV": [float(err[fold == f].mean()) for f in range(5)],
            "seconds": round(time.time() - t, 1),
        }
        print(name, out["bandgap"][name], flush=True)
    err = np.abs(fold_mean(y, fold) - y)
    out["bandgap"]["training-fold mean"] = {
        "mae_eV": float(err.mean()), "fold_mae_eV": [float(err[fold == f].mean()) for f in range(5)]}
    t = time.time()
    P, fold = crossval.cross_val_predict(
        alignn(ALIGNNConfig(**SMALL, n_outputs=jarvis.N_DOS, output_key="dos")), dos_recs, "dos", **kw)
    c = cosine(P, Y)
    out["dos"]["ALIGNN-style"] = {"mean_cosine": float(c.mean()), "median_cosine": float(np.median(c)),
                                  "seconds": round(time.time() - t, 1)}
    c = cosine(fold_mean(Y, fold), Y)
    out["dos"]["training-fold mean"] = {"mean_cosine": float(c.mean()), "median_cosine": float(np.median(c))}
    print(out["dos"], flush=True)
    return out


def speed_row(name: str, dataset: str, model, loss, records, repeats: int) -> dict:
    """Structures/s of one training step and of inference on the first batch of ``records``."""
    budget = graph.estimate_budget(records, BATCH)
    grp = graph.pack(records, budget)[0]
    b = graph.to_device(graph.batch([records[k] for k in grp], budget))
    params = model.init(jax.random.key(0), b)
    opt = train.make_optimizer(1e-3, 100)
    step = jax.jit(train.make_step(model, loss, opt))
    apply = jax.jit(model.apply)
    state = {"p": params, "o": opt.init(params)}

    def train_once():
        state["p"], state["o"], v, _ = step(state["p"], state["o"], b, jax.random.key(0))
        jax.block_until_ready(v)

    t0 = time.perf_counter()
    train_once()
    compile_s = time.perf_counter() - t0
    t_train = median_time(train_once, repeats=repeats, warmup=0)
    t_inf = median_time(lambda: jax.block_until_ready(apply(state["p"], b)), repeats=repeats)
    row = {"model": name, "dataset": dataset, "batch_structures": len(grp),
           "batch_atoms": int(sum(records[k].n_node for k in grp)),
           "batch_edges": int(sum(records[k].n_edge for k in grp)),
           "batch_triplets": int(sum(records[k].n_triplet for k in grp)),
           "params": count_params(params), "compile_train_s": round(compile_s, 1),
           "train_structures_per_s": len(grp) / t_train, "infer_structures_per_s": len(grp) / t_inf}
    print(row, flush=True)
    return row


def speed(repeats: int) -> list[dict]:
    si = data.load_mlearn("Si", "train")
    si_pot = graph.records_from_atoms(si, 5.0)
    si_line = linegraph.records_from_atoms(si)
    for r in si_line:
        r.targets["energy_per_atom"] = r.targets["energy"] / r.n_node
    ff = graph.records_from_atoms(jarvis.load_jarvis_ff(), 5.0)
    gap_line = linegraph.records_from_atoms(jarvis.load_jarvis_bandgap())
    refs, _ = potential.fit_energy_stats([r.numbers for r in si_pot], [r.targets["energy"] for r in si_pot])
    ef = train.energy_force_loss(1.0, 10.0)
    efs = train.energy_force_loss(1.0, 10.0, stress=1.0)
    rows = []
    for label, cfg in [("PaiNN (64 features)", PaiNNConfig(n_features=64)),
                       ("PaiNN (published: 128 features)", PaiNNConfig(n_features=128))]:
        pot = potential.potential(painn(cfg.with_stats(refs, 1.0)), stress=False)
        rows.append(speed_row(label, "mlearn-Si (E, F)", pot, ef, si_pot, repeats))
        rows.append(speed_row(label, "JARVIS ff sample (E, F, stress)",
                              potential.potential(painn(cfg)), efs, ff, repeats))
    sch = potential.potential(schnet(SchNetConfig(n_features=64, n_rbf=50).with_stats(refs, 1.0)), stress=False)
    rows.append(speed_row("SchNet (64 features)", "mlearn-Si (E, F)", sch, ef, si_pot, repeats))
    for label, cfg in [("ALIGNN-style (small: 2+2 layers, 64 hidden)", ALIGNNConfig(**SMALL)),
                       ("ALIGNN-style (published: 4+4 layers, 256 hidden)", ALIGNNConfig())]:
        rows.append(speed_row(label, "JARVIS band gap sample",
                              alignn(dataclasses.replace(cfg, output_key="bandgap")),
                              train.target_loss("bandgap"), gap_line, repeats))
        rows.append(speed_row(label, "mlearn-Si (energy/atom)",
                              alignn(dataclasses.replace(cfg, output_key="energy_per_atom")),
                              train.target_loss("energy_per_atom"), si_line, repeats))
    return rows


def table(res: dict) -> str:
    lines = []
    cv = res.get("cv")
    if cv:
        lines += [f"JARVIS sample ({cv['n']} crystals), {cv['folds']}-fold cross-validation, "
                  f"{cv['epochs']} epochs per fold, 12-NN graphs within 8 Å.", "",
                  "| band gap model | MAE (eV) | fold MAEs (eV) |", "|---|---|---|"]
        for name, r in cv["bandgap"].items():
            lines.append(f"| {name} | {r['mae_eV']:.3f} | {', '.join(f'{x:.2f}' for x in r['fold_mae_eV'])} |")
        lines += ["", "| DOS model | mean cosine similarity | median |", "|---|---|---|"]
        for name, r in cv["dos"].items():
            lines.append(f"| {name} | {r['mean_cosine']:.3f} | {r['median_cosine']:.3f} |")
    if res.get("speed"):
        lines += ["", "| model | data | batch (structures / atoms / triplets) | params | train structures/s "
                  "| inference structures/s |", "|---|---|---|---|---|---|"]
        for r in res["speed"]:
            lines.append(f"| {r['model']} | {r['dataset']} | {r['batch_structures']} / {r['batch_atoms']} / "
                         f"{r['batch_triplets']} | {r['params']:,} | {r['train_structures_per_s']:.2f} | "
                         f"{r['infer_structures_per_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-cv", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default="crystal")
    args = ap.parse_args()
    t0 = time.time()
    res = {"device": device_info(), "settings": vars(args)}
    if not args.skip_cv:
        res["cv"] = cross_validation(args.epochs, args.seed)
    if not args.skip_speed:
        res["speed"] = speed(args.repeats)
    res["total_seconds"] = round(time.time() - t0, 1)
    res["device_end"] = device_info()
    write_results(args.out, res, table(res))


if __name__ == "__main__":
    main()
