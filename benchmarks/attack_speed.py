"""Attack throughput: attacked geometry-steps per second of ``jaxmat.attack.attack``.

    nice -n 10 python benchmarks/attack_speed.py [--members 8] [--starts 256] [--steps 30]
        [--si-starts 16] [--repeats 3] [--out attack_speed]

Two cases, each an ``--members`` SchNet committee (32 features, 2 interactions, cutoff
5 Å, random init: speed only; the attack sees the same objective shape as a trained one):

1. NH3 (4 atoms, molecule): ``--starts`` copies of the shipped NH3 geometries, ``--steps``
   Adam steps (lr 0.01 Å, σ 0.01 Å) — the throughput target of the adversarial loop.
2. Si diamond (8-atom periodic cell, a = 5.43 Å): ``--si-starts`` starts, ``--steps`` Adam
   steps with lr 0.05 Å and skin 0.3 Å, so that atoms move beyond ``skin / 2`` and the
   neighbour list is rebuilt during the attack.

Reported per case: the first call (with compiling), the median of ``--repeats`` further
calls, geometry-steps/s = starts × steps / median, and the list rebuilds of one call. Uses
only ``attack.attack`` and ``AttackConfig``, so ``benchmarks/ab.py`` can compare versions.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, median_time, write_results  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

from jaxmat import attack, data, ensemble, graph, potential  # noqa: E402
from jaxmat.models import SchNetConfig, schnet  # noqa: E402

CUTOFF = 5.0


def committee(seeds: list, members: int):
    model = potential.potential(schnet(SchNetConfig(n_features=32, n_interactions=2,
                                                    cutoff=CUTOFF)), stress=False)
    params = ensemble.init(model, jax.random.key(0),
                           graph.batch(graph.records_from_atoms(seeds[:1], CUTOFF)), members)
    return model, params


def measure(case: str, seeds: list, n_starts: int, cfg: attack.AttackConfig, members: int,
            repeats: int) -> dict:
    model, params = committee(seeds, members)
    starts = [seeds[k % len(seeds)] for k in range(n_starts)]
    ref = attack.Boltzmann.from_energies(np.zeros(1), kT=1.0)
    t0 = time.perf_counter()
    res = attack.attack(model, params, starts, ref, cfg)
    first = time.perf_counter() - t0
    sec = median_time(lambda: attack.attack(model, params, starts, ref, cfg), repeats=repeats,
                      warmup=0)
    moved = max(float(np.linalg.norm(d, axis=1).max()) for d in res.delta)
    return {"case": case, "n_atoms": len(seeds[0]), "members": members, "n_starts": n_starts,
            "n_steps": cfg.n_steps, "first_call_s": first, "median_s": sec,
            "geometry_steps_per_s": n_starts * cfg.n_steps / sec,
            "n_rebuilds": res.n_rebuilds, "max_displacement_A": moved,
            "objective_gain_median": float(np.median(res.objective / res.objective_start))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--starts", type=int, default=256)
    ap.add_argument("--si-starts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="attack_speed")
    args = ap.parse_args()
    nh3 = data.load_ammonia()
    si = []
    for k in range(4):
        a = bulk("Si", "diamond", 5.43, cubic=True)
        a.rattle(0.05, seed=k)
        si.append(a)
    rows = [
        measure("NH3", nh3, args.starts,
                attack.AttackConfig(n_steps=args.steps, lr=0.01, sigma=0.01), args.members,
                args.repeats),
        measure("Si8 periodic", si, args.si_starts,
                attack.AttackConfig(n_steps=args.steps, lr=0.05, sigma=0.01, skin=0.3),
                args.members, args.repeats),
    ]
    dev = device_info()
    lines = [f"Attacked geometry-steps/s, {args.members}-member SchNet 32×2 committee, cutoff "
             f"{CUTOFF} Å; load average at the end {dev['loadavg'][0]:.1f} on {dev['cores']} "
             "cores.", "",
             "| case | atoms | starts × steps | first call s | median s | geometry-steps/s "
             "| rebuilds | max move Å |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['n_atoms']} | {r['n_starts']} × {r['n_steps']} | "
              f"{r['first_call_s']:.2f} | {r['median_s']:.3f} | {r['geometry_steps_per_s']:.0f} | "
              f"{r['n_rebuilds']} | {r['max_displacement_A']:.2f} |" for r in rows]
    write_results(args.out, {"device": dev, "cases": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
