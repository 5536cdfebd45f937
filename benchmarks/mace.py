"""MACE against SchNet (demo recipe) on a GFN2-xTB molecular MD dataset, and MACE speed.

    python benchmarks/mace.py accuracy [--dataset ethanol_600K] [--cpu-minutes 15] [--models mace schnet]
    python benchmarks/mace.py speed [--rounds 3]

``accuracy``: the dataset's time split (``benchmarks/data/xtb/<name>.split.json``: train,
val for the best epoch, test untouched). Each model gets the same CPU-time budget: one
probe epoch (after compilation) gives its CPU seconds per epoch, which fixes the number of
epochs so that the cosine schedule ends inside the budget. Test energy MAE (meV/atom) and
force MAE (meV/Å) with the spread over frames (std of the per-frame force MAE), CPU and
wall seconds. Results are appended per model to results/mace_<dataset>.{json,md}.

``speed``: on 32 test-like molecules (9 atoms) pinned to this process: inference
(energy + forces, structures/s), a training step (batch 16) and a 4-member vmapped
committee step against one member (ratio), MACE and SchNet alternated in rounds.
Results go to results/mace_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, device_info, write_results, xtb_set  # noqa: E402
from mace_libs import timed  # noqa: E402

from jaxmat import graph, potential, train  # noqa: E402
from jaxmat.core import ensemble, engine  # noqa: E402
from jaxmat.core.predict import predict  # noqa: E402
from jaxmat.models import MACEConfig, SchNetConfig, mace, schnet  # noqa: E402
from jaxmat.models.mace import mean_neighbors  # noqa: E402

CUTOFF = 5.0
# the demo's SchNet recipe (jaxmat.demo): 64x3, batch 16, Adam 3e-3 -> 1e-5, forces x10
RECIPES = {
    "schnet": dict(batch=16, lr=3e-3, lr_end=1e-5),
    "mace": dict(batch=16, lr=1e-2, lr_end=1e-5),
}


def build(name: str, tr):
    refs, scale = potential.energy_stats(tr)
    if name == "schnet":
        cfg = SchNetConfig(n_features=64, n_interactions=3, cutoff=CUTOFF)
        return potential.potential(schnet(cfg.with_stats(refs, scale)), stress=False)
    cfg = MACEConfig(cutoff=CUTOFF, avg_num_neighbors=mean_neighbors(tr))
    return potential.potential(mace(cfg.with_stats(refs, scale)), stress=False)


def load(dataset: str):
    atoms, split = xtb_set(dataset)
    recs = graph.records_from_atoms(atoms, CUTOFF)
    return tuple([recs[k] for k in split[s]] for s in ("train", "val", "test"))


def accuracy(args) -> None:
    tr, va, te = load(args.dataset)
    name = f"mace_{args.dataset}"
    path = os.path.join(RESULTS, f"{name}.json")
    done = json.load(open(path)) if os.path.exists(path) else {"rows": []}
    loss = train.energy_force_loss(energy=1.0, forces=10.0)
    for model_name in args.models:
        key = f"{model_name}@{args.cpu_minutes}min"
        if any(r["key"] == key for r in done["rows"]):
            continue
        rec = RECIPES[model_name]
        model = build(model_name, tr)
        loader = graph.GraphLoader(tr, batch_size=rec["batch"], seed=args.seed)
        val = graph.GraphLoader(va, batch_size=32, shuffle=False)
        params = model.init(jax.random.key(args.seed), next(iter(loader)))
        c0, w0 = time.process_time(), time.perf_counter()
        probe = train.fit(model, params, loader, None, loss,
                          train.FitConfig(epochs=2, progress=False))
        c_probe = time.process_time() - c0
        epoch_cpu = c_probe / 2  # includes compilation: a conservative estimate
        epochs = max(3, int((args.cpu_minutes * 60 - c_probe) / epoch_cpu))
        del probe
        c1, w1 = time.process_time(), time.perf_counter()
        res = train.fit(model, params, loader, val, loss,
                        train.FitConfig(epochs=epochs, lr=rec["lr"], lr_end=rec["lr_end"],
                                        seed=args.seed, progress=False))
        cpu, wall = time.process_time() - c1 + c_probe, time.perf_counter() - w0
        pred = predict(model, res.params, te, keys=("energy", "forces"))
        n_at = np.array([r.n_node for r in te])
        e_err = np.abs(np.array(pred["energy"]) - [r.targets["energy"] for r in te]) / n_at
        f_err = [np.mean(np.abs(p - r.node_targets["forces"])) for p, r in zip(pred["forces"], te)]
        row = {"key": key, "model": model_name, "epochs": epochs, "best_epoch": res.best_epoch,
               "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
               "energy_mae_meV_atom": 1e3 * float(np.mean(e_err)),
               "forces_mae_meV_A": 1e3 * float(np.mean(f_err)),
               "forces_mae_frame_std_meV_A": 1e3 * float(np.std(f_err)),
               "val_best": float(res.best_metric), "recipe": rec,
               "loadavg": os.getloadavg(), "n_params": int(sum(x.size for x in
                                                               jax.tree_util.tree_leaves(params)))}
        # re-read: runs of other models may have added rows meanwhile
        done = json.load(open(path)) if os.path.exists(path) else {"rows": []}
        done["rows"].append(row)
        done.update(dataset=args.dataset, n_train=len(tr), n_val=len(va), n_test=len(te),
                    device=device_info())
        md = ["| model | budget | epochs (best) | CPU s | wall s | E MAE meV/atom | F MAE meV/Å (± frame std) |",
              "|---|---|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r['key'].split('@')[1]} CPU | {r['epochs']} ({r['best_epoch']}) | "
               f"{r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['energy_mae_meV_atom']:.2f} | "
               f"{r['forces_mae_meV_A']:.1f} ± {r['forces_mae_frame_std_meV_A']:.1f} |"
               for r in done["rows"]]
        md.append(f"\n{args.dataset}: {len(tr)} train / {len(va)} val / {len(te)} test frames "
                  "(time split); best epoch on validation; load average at the end of each run "
                  "in the JSON.")
        write_results(name, done, "\n".join(md))
        print(md[-2] if len(md) > 3 else md, flush=True)


def molecules(n: int, seed: int = 0):
    """``n`` ethanol-sized random molecules (C2H6O, atoms >= 1 Å apart) with labels."""
    rng = np.random.default_rng(seed)
    recs = []
    for _ in range(n):
        pos = []
        while len(pos) < 9:
            p = rng.normal(size=3) * 1.2
            if all(np.linalg.norm(p - q) > 1.0 for q in pos):
                pos.append(p)
        recs.append(graph.make_record([6, 6, 8, 1, 1, 1, 1, 1, 1], np.array(pos), CUTOFF,
                                      targets={"energy": 0.0},
                                      node_targets={"forces": rng.normal(size=(9, 3))}))
    return recs


def speed(args) -> None:
    recs = molecules(32)
    b32 = graph.to_device(graph.batch(recs, graph.estimate_budget(recs, 32)))
    b16 = graph.to_device(graph.batch(recs[:16], graph.estimate_budget(recs, 16)))
    loss = train.energy_force_loss(energy=1.0, forces=10.0)
    opt = optax.adam(1e-3)
    fns = {}
    for name in args.models:
        model = build(name, recs)
        p = model.init(jax.random.key(0), None)
        infer = jax.jit(model.apply)
        step1 = jax.jit(engine.make_step(model, loss, opt))
        com = ensemble.init(model, jax.random.key(1), None, n_members=4)
        step4 = jax.jit(ensemble.make_step(model, loss, opt))
        s1, s4 = opt.init(p), jax.vmap(opt.init)(com)
        bat4 = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), b16)
        keys4 = jax.random.split(jax.random.key(2), 4)
        act = jnp.ones(4, bool)
        fns[name] = {
            "infer32": lambda infer=infer, p=p: jax.block_until_ready(infer(p, b32)),
            "step16": lambda f=step1, p=p, s=s1: jax.block_until_ready(f(p, s, b16, jax.random.key(0))),
            "committee4": lambda f=step4, c=com, s=s4, b=bat4, k=keys4, a=act:
                jax.block_until_ready(f(c, s, b, k, a)),
        }
        for fn in fns[name].values():
            fn()  # compile
    times = {n: {k: [] for k in f} for n, f in fns.items()}
    for _ in range(args.rounds):
        for n, f in fns.items():
            for k, fn in f.items():
                times[n][k].append(timed(fn, args.repeats))
    # CPU seconds (column 1): the figures below; wall seconds are kept in the JSON
    med = {n: {k: float(np.median([c for _, c in v])) for k, v in t.items()}
           for n, t in times.items()}
    rows = {n: {"inference_structures_per_s": 32 / m["infer32"],
                "train_step16_ms": 1e3 * m["step16"],
                "train_structures_per_s": 16 / m["step16"],
                "committee4_step_ms": 1e3 * m["committee4"],
                "committee4_over_one": m["committee4"] / m["step16"]} for n, m in med.items()}
    payload = {"device": device_info(), "rows": rows, "times_wall_cpu_s": times,
               "cpu_affinity": sorted(os.sched_getaffinity(0)),
               "xla_flags": os.environ.get("XLA_FLAGS", "")}
    md = ["| model | inference structures/s (E+F, 32) | train step ms (16) | train structures/s | "
          "4-member committee step ms | committee / one |", "|---|---|---|---|---|---|"]
    md += [f"| {n} | {r['inference_structures_per_s']:.0f} | {r['train_step16_ms']:.1f} | "
           f"{r['train_structures_per_s']:.0f} | {r['committee4_step_ms']:.1f} | "
           f"{r['committee4_over_one']:.2f} |" for n, r in rows.items()]
    md.append(f"\n9-atom molecules, 5 Å cutoff; CPU seconds of this process (medians of "
              f"{args.rounds} alternated rounds × {args.repeats} calls) on "
              f"{len(os.sched_getaffinity(0))} core(s); load average {os.getloadavg()[0]:.2f} "
              "at the end (wall times in the JSON).")
    write_results("mace_speed", payload, "\n".join(md))
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--dataset", default="ethanol_600K")
    a.add_argument("--cpu-minutes", type=float, default=15.0)
    a.add_argument("--models", nargs="+", default=["mace", "schnet"], choices=sorted(RECIPES))
    a.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("speed")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--models", nargs="+", default=["mace", "schnet"], choices=["mace", "schnet"])
    args = ap.parse_args()
    (accuracy if args.cmd == "accuracy" else speed)(args)


if __name__ == "__main__":
    main()
