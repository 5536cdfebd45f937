"""Speed of jaxmat's SchNet potential: training and inference throughput on ammonia
(molecules, dense and sparse layouts) and mlearn-Si (periodic cells, sparse layout), and
the number of XLA compilations during one full epoch of variable-size data.

    python benchmarks/speed.py [--repeats 5] [--quick]

Training = the jitted ``train.make_step`` (E + F (+ stress) loss, forces by double
backprop, Adam, donated buffers) over full shuffled epochs of a ``GraphLoader``;
inference = jitted ``potential.apply`` (energy, forces, stress) over every batch.
Throughputs are medians over repeats (wall clock; process CPU time alongside), each
repeat recording the load average. Writes ``benchmarks/results/speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from jaxmat import data, graph, potential, train
from jaxmat.models import SchNetConfig, schnet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILES: list[float] = []


def _on_event(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        COMPILES.append(duration)


jax.monitoring.register_event_duration_secs_listener(_on_event)


def run_case(name: str, records: list, batch_size: int, layout: str, stress: float,
             repeats: int, min_seconds: float = 1.0) -> dict:
    """Time one dataset/layout; returns throughputs, compile counts and the timings."""
    cfg = SchNetConfig(n_features=64, n_interactions=3, n_rbf=50, cutoff=5.0)
    refs, scale = potential.fit_energy_stats([r.numbers for r in records],
                                             [r.targets["energy"] for r in records])
    model = potential.potential(schnet(cfg.with_stats(refs, scale)))
    train_loader = graph.GraphLoader(records, batch_size, layout=layout, seed=0)
    eval_loader = graph.GraphLoader(records, batch_size, layout=layout, shuffle=False)
    loss = train.energy_force_loss(1.0, 10.0, stress)
    n_batches = len(train_loader)
    optimizer = train.make_optimizer(1e-3, 100 * n_batches)
    step = jax.jit(train.make_step(model, loss, optimizer), donate_argnums=(0, 1))
    infer = jax.jit(model.apply)
    params = model.init(jax.random.key(0), next(iter(eval_loader)))
    opt_state = optimizer.init(params)
    n_struct = len(records)
    n_atoms = sum(r.n_node for r in records)
    key = jax.random.key(1)

    def train_epoch(epoch: int):
        nonlocal params, opt_state
        for b in train_loader.epoch(epoch):
            params, opt_state, value, _ = step(params, opt_state, b, key)
        jax.block_until_ready(value)

    def infer_epoch():
        for b in eval_loader.epoch(0):
            out = infer(params, b)
        jax.block_until_ready(out["forces"])

    # one cold epoch each: count XLA compilations (all batches share one padded shape)
    COMPILES.clear()
    t0 = time.perf_counter()
    train_epoch(0)
    cold_train = time.perf_counter() - t0
    compiles_train = len(COMPILES)
    COMPILES.clear()
    infer_epoch()
    compiles_infer = len(COMPILES)

    timings = {"train": [], "infer": []}
    epoch = 1
    for _ in range(repeats):
        for mode in ("train", "infer"):
            load = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            n_ep = 0
            while n_ep == 0 or time.perf_counter() - t0 < min_seconds:
                if mode == "train":
                    train_epoch(epoch)
                    epoch += 1
                else:
                    infer_epoch()
                n_ep += 1
            timings[mode].append({"wall_s": (time.perf_counter() - t0) / n_ep,
                                  "cpu_s": (time.process_time() - c0) / n_ep,
                                  "epochs": n_ep, "load1": round(load, 2)})
    res = {"dataset": name, "layout": train_loader.layout, "structures": n_struct,
           "atoms": n_atoms, "batch_size": batch_size, "batches_per_epoch": n_batches,
           "budget": vars(train_loader.budget) if hasattr(train_loader.budget, "__dict__")
           else str(train_loader.budget),
           "xla_compilations_one_epoch": {
               "train_step": compiles_train, "inference": compiles_infer,
               "train_step_cache_size": step._cache_size(),
               "inference_cache_size": infer._cache_size()},
           "first_epoch_incl_compile_s": cold_train}
    for mode in ("train", "infer"):
        wall = float(np.median([t["wall_s"] for t in timings[mode]]))
        cpu = float(np.median([t["cpu_s"] for t in timings[mode]]))
        res[mode] = {"median_epoch_s": wall, "median_epoch_cpu_s": cpu,
                     "structures_per_s": n_struct / wall, "atoms_per_s": n_atoms / wall,
                     "repeats": timings[mode]}
    return res


def markdown(res: dict) -> str:
    d = res["device"]
    lines = [
        "### Speed: SchNet potential (3 x 64, 50 RBF, cutoff 5 Å)",
        "",
        f"CPU: {d['cpu']} ({d['cores']} cores), jax {d['jax']} ({d['jax_device']}). "
        f"Medians of {res['repeats']} repeats of whole epochs (>= 1 s each); 1-min load average "
        f"{res['load1_range'][0]:.1f}-{res['load1_range'][1]:.1f} (shared machine).",
        "",
        "| data | layout | batch | train structures/s | train atoms/s | inference "
        "structures/s | inference atoms/s | XLA compiles in one epoch (train + inference) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        comp = c["xla_compilations_one_epoch"]
        lines.append(
            f"| {c['dataset']} | {c['layout']} | {c['batch_size']} | "
            f"{c['train']['structures_per_s']:.0f} | {c['train']['atoms_per_s']:.0f} | "
            f"{c['infer']['structures_per_s']:.0f} | {c['infer']['atoms_per_s']:.0f} | "
            f"{comp['train_step']} + {comp['inference']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 repeats, ammonia dense only")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "speed"))
    a = ap.parse_args()
    repeats = 2 if a.quick else a.repeats

    ammonia = graph.records_from_atoms(data.load_ammonia(), 5.0)
    cases = [run_case("ammonia", ammonia, 32, "dense", 0.0, repeats)]
    if not a.quick:
        cases.append(run_case("ammonia", ammonia, 32, "sparse", 0.0, repeats))
        si = graph.records_from_atoms(data.load_mlearn("Si", "train"), 5.0)
        cases.append(run_case("mlearn-Si (train split)", si, 8, "sparse", 1.0, repeats))
    loads = [t["load1"] for c in cases for m in ("train", "infer") for t in c[m]["repeats"]]
    res = {
        "benchmark": "jaxmat SchNet potential throughput and XLA compilations",
        "model": {"n_features": 64, "n_interactions": 3, "n_rbf": 50, "cutoff": 5.0},
        "device": {"cpu": cpu_model(), "cores": os.cpu_count(),
                   "jax_device": jax.devices()[0].device_kind, "jax": jax.__version__,
                   "python": platform.python_version()},
        "repeats": repeats,
        "load1_range": [min(loads), max(loads)],
        "note": ("wall-clock medians on a machine shared with other jobs; process CPU "
                 "time is recorded beside each repeat"),
        "cases": cases,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
