"""MD throughput and energy conservation: ``jaxmat.md`` against the ASE calculator loop.

    python benchmarks/md_speed.py [--bundle DIR] [--epochs 400] [--replicas 256]
                                  [--steps 1000] [--si-rep 8] [--out md_speed]

1. NH3 with a trained SchNet 64×3 potential (``python -m jaxmat.demo``'s recipe, or
   ``--bundle``): ASE's ``VelocityVerlet`` driving ``JaxmatCalculator`` (one structure,
   host neighbour list every step) against ``jaxmat.md.simulate`` running ``--replicas``
   replicas × ``--steps`` steps in one compiled call (Langevin, 300 K, 0.5 fs).
   Replica-steps/s for both; the compile is timed separately (first call minus second).
2. NVE drift of the same potential: 32 replicas × 4,000 steps of 0.25 fs from 300 K,
   the slope of total energy per atom (meV/atom/ps, linear fit), median and max.
3. Si supercell (``--si-rep``³ × 8 atoms, 4,096 by default) at 1,000 K (Langevin, 1 fs)
   with a SchNet 64×3 (cutoff 5 Å, random init: speed only) and on-device neighbour
   rebuilding, against ASE's ``Langevin`` with ``JaxmatCalculator`` on the same model.

``--detector`` measures only the cost of the failure detector, for an A/B against an
older version (``python benchmarks/ab.py --base d6b1a3f --keys replica_steps_per_s --
md_speed.py --detector``): ethanol, a committee of 2 SchNet 64×3 (random init), NVT 600 K,
``--replicas`` × ``--steps`` in one call after a compiling call, with every criterion the
version has on (the energy range and calibrated σ where ``simulate`` takes ``training``
and ``calibration``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

import jaxmat
import jaxmat.md as md
from jaxmat import data
from jaxmat.ase import JaxmatCalculator
from jaxmat.core import graph, potential
from jaxmat.models import SchNetConfig, schnet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, write_results  # noqa: E402


def ase_steps_per_s(atoms, calc, dyn_cls, steps: int, **kw) -> float:
    a = atoms.copy()
    a.calc = calc
    MaxwellBoltzmannDistribution(a, temperature_K=kw.pop("T", 300.0), rng=np.random.default_rng(0))
    dyn = dyn_cls(a, **kw)
    dyn.run(5)  # compile
    t = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t)


def timed_simulate(*args, **kw) -> tuple[md.MDResult, float]:
    t = time.perf_counter()
    res = md.simulate(*args, **kw)
    return res, time.perf_counter() - t


def nh3(args) -> dict:
    if args.bundle is None:
        from jaxmat import demo
        args.bundle = os.path.join(tempfile.mkdtemp(), "demo")
        demo.main(["--out", args.bundle, "--epochs", str(args.epochs)])
        args.bundle = os.path.join(args.bundle, "bundle")
    b = jaxmat.load(args.bundle)
    atoms = data.load_ammonia()[0].copy()
    atoms.calc = None
    out = {"bundle": args.bundle, "ase_steps_per_s": ase_steps_per_s(
        atoms, JaxmatCalculator(b.model, b.params), VelocityVerlet, args.ase_steps,
        timestep=0.5 * units.fs)}
    kw = dict(ensemble="nvt", timestep_fs=0.5, temperature_K=300.0, replicas=args.replicas,
              chunk_steps=args.steps, log_every=10, progress=False)
    _, first = timed_simulate(b.model, b.params, atoms, args.steps, **kw)
    res, second = timed_simulate(b.model, b.params, atoms, args.steps, seed=1, **kw)
    out.update(replicas=args.replicas, steps=args.steps, first_call_s=first,
               second_call_s=second, compile_s=first - second,
               replica_steps_per_s=args.replicas * args.steps / second,
               failed=int(res.failed.sum()))
    out["speedup_vs_ase"] = out["replica_steps_per_s"] / out["ase_steps_per_s"]
    # NVE drift
    nve, _ = timed_simulate(b.model, b.params, atoms, 4000, ensemble="nve", timestep_fs=0.25,
                            init_temperature_K=300.0, replicas=32, log_every=20,
                            chunk_steps=4000, progress=False)
    t_ps = nve.log_steps * 0.25e-3
    total = (nve.log["energy"] + nve.log["kinetic"]) / len(atoms)
    slopes = np.array([np.polyfit(t_ps, total[:, r], 1)[0] for r in range(total.shape[1])])
    out["nve_drift_meV_per_atom_ps"] = {"median": float(1e3 * np.median(np.abs(slopes))),
                                        "max": float(1e3 * np.max(np.abs(slopes))),
                                        "ps": float(t_ps[-1]), "failed": int(nve.failed.sum())}
    return out


def silicon(args) -> dict:
    at = bulk("Si", "diamond", a=5.43, cubic=True) * ((args.si_rep,) * 3)
    model = potential.potential(schnet(SchNetConfig(n_features=64, n_interactions=3, cutoff=5.0)))
    params = model.init(jax.random.key(0), graph.batch([graph.atoms_to_record(at, 5.0)]))
    ase = ase_steps_per_s(at, JaxmatCalculator(model, params), Langevin, args.si_ase_steps,
                          T=1000.0, timestep=1.0 * units.fs, temperature_K=1000.0,
                          friction=0.01 / units.fs)
    kw = dict(ensemble="nvt", timestep_fs=1.0, temperature_K=1000.0, chunk_steps=50,
              log_every=10, progress=False)
    _, first = timed_simulate(model, params, at, 50, **kw)
    res, dt = timed_simulate(model, params, at, args.si_steps, seed=1, **kw)
    return {"atoms": len(at), "ase_steps_per_s": ase, "steps": args.si_steps,
            "steps_per_s": args.si_steps / dt, "first_call_50_steps_s": first,
            "speedup_vs_ase": args.si_steps / dt / ase, "list_builds": res.n_builds,
            "reallocations": res.n_reallocations,
            "mean_T_K": float(res.log["temperature"][len(res.log_steps) // 2:].mean())}


def detector_cost(args) -> dict:
    import inspect

    import jax.numpy as jnp
    from ase.build import molecule
    from jaxmat.core import ensemble

    at = molecule("CH3CH2OH")
    model = potential.potential(schnet(SchNetConfig(n_features=64, n_interactions=3,
                                                    cutoff=5.0)))
    params = ensemble.init(model, jax.random.key(0),
                           graph.batch([graph.atoms_to_record(at, 5.0)]), n_members=2)
    kw = dict(ensemble="nvt", timestep_fs=0.5, temperature_K=600.0, replicas=args.replicas,
              chunk_steps=args.steps, log_every=10, progress=False)
    if "training" in inspect.signature(md.simulate).parameters:
        kw.update(training={"energy_per_atom_eV": [-1e3, 1e3]},
                  calibration={t: {"scale": 1.0, "power": 0.4, "knee": 1.0}
                               for t in ("energy", "forces")},
                  criteria=md.FailureCriteria(max_forces_std=1e3, max_energy_std=1e3))
    timed_simulate(model, params, at, args.steps, **kw)
    res, dt = timed_simulate(model, params, at, args.steps, seed=1, **kw)
    crit = getattr(res, "criteria", None)
    return {"replicas": args.replicas, "steps": args.steps, "seconds": dt,
            "replica_steps_per_s": args.replicas * args.steps / dt,
            "criteria": (crit.active() if crit is not None else ["non_finite", "close_contact"]),
            "failed": int(np.sum(res.failed)), "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--replicas", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--ase-steps", type=int, default=300)
    ap.add_argument("--si-rep", type=int, default=8)
    ap.add_argument("--si-steps", type=int, default=200)
    ap.add_argument("--si-ase-steps", type=int, default=10)
    ap.add_argument("--out", default="md_speed")
    ap.add_argument("--detector", action="store_true", help="only the detector's cost")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    if args.detector:
        d = detector_cost(args)
        print(d)
        write_results(args.out, {"device": device_info(), "detector": d},
                      f"### MD with the failure detector\n\n{d}")
        return
    a, s = nh3(args), silicon(args)
    lines = [
        "| system | jaxmat.md | ASE + JaxmatCalculator | ratio |", "|---|---|---|---|",
        f"| NH3, {a['replicas']} replicas × {a['steps']} steps, one call | "
        f"{a['replica_steps_per_s']:,.0f} replica-steps/s (compile {a['compile_s']:.1f} s) | "
        f"{a['ase_steps_per_s']:,.0f} steps/s | {a['speedup_vs_ase']:,.0f}× |",
        f"| Si {s['atoms']:,} atoms, 1,000 K | {s['steps_per_s']:.2f} steps/s "
        f"({s['list_builds']} list builds in {s['steps']} steps) | {s['ase_steps_per_s']:.2f} "
        f"steps/s | {s['speedup_vs_ase']:.1f}× |", "",
        f"NVE drift (NH3, 32 replicas, {a['nve_drift_meV_per_atom_ps']['ps']:.1f} ps, 0.25 fs): "
        f"median {a['nve_drift_meV_per_atom_ps']['median']:.3f}, max "
        f"{a['nve_drift_meV_per_atom_ps']['max']:.3f} meV/atom/ps; "
        f"{a['nve_drift_meV_per_atom_ps']['failed']} replicas failed.",
        f"1-min load average at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}."]
    table = "\n".join(lines)
    print(table)
    write_results(args.out, {"device": device_info(), "nh3": a, "si": s},
                  "### MD throughput\n\n" + table)


if __name__ == "__main__":
    main()
