"""The MD failure detector against a GFN2-xTB oracle: recall, delay and false alarms.

    nice -n 10 python benchmarks/md_detector.py [--molecules ethanol_600K ...]
        [--replicas 32] [--ps 10] [--oracle-every-fs 50] [--work runs/md_detector]

For each molecule (GFN2-xTB 600 K MD data in ``--data``: extxyz with REF_energy/REF_forces
and a ``.split.json`` time split) two SchNet committees of 4 are trained: ``weak`` on the
first 200 training frames and ``good`` on all of them; their σ is calibrated on the
validation split (``--calibration``: the library's default power law, or one NLL scale) and
their training energy range stored (the bundle's ``training``
and ``calibration`` sections). Each runs ``--replicas`` Langevin replicas at 600 K (0.5 fs)
from a validation frame with the detector's thresholds set out of reach, so every signal
is logged; GFN2-xTB labels a frame every ``--oracle-every-fs`` fs of every replica up to
its first unphysical frame (largest per-atom force error > 1 eV/Å, or an energy 0.5 eV
below every training energy). The first half of the replicas chooses the thresholds
(energy margin, topology persistence, calibrated σ: the most recall with at most 5 %
false alarms, pooled over molecules and models), the second half reports them.

Every stage is saved under ``--work`` and skipped when rerun; results go to
``benchmarks/results/md_detector.{json,md}`` after every stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import XTB, device_info, write_results, xtb_set  # noqa: E402

DATA = XTB  # the shipped sets
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, None)         # eV/atom
PERSIST = (0.0, 5.0, 10.0, 25.0, 50.0, 100.0, None)              # fs
SIGMAS = (0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, None)  # eV/Å, calibrated
E_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, None)                     # eV, calibrated
SEVERE = 2.0  # eV/Å: an oracle force error above it (or an energy hole) is a collapse


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_data(name: str, data_dir: str):
    return xtb_set(name, data_dir)


def train_model(name: str, kind: str, atoms, split, work: str, minutes: float) -> str:
    """A SchNet committee of 4 (bundle) with training.json and calibration.json beside it."""
    out = os.path.join(work, name, kind)
    if os.path.exists(os.path.join(out, "calibration.json")):
        return out
    import jax
    from jaxmat.core import bundle, calibrate, ensemble, graph, potential, train
    from jaxmat.models import SchNetConfig, schnet

    tr_idx = split["train"][:200] if kind == "weak" else split["train"]
    recs = graph.records_from_atoms(atoms, cutoff=5.0)
    tr = [recs[k] for k in tr_idx]
    va = [recs[k] for k in split["val"]]
    cfg = SchNetConfig(n_features=64, n_interactions=2, cutoff=5.0).with_stats(
        *potential.energy_stats(tr))
    model = potential.potential(schnet(cfg), stress=False)
    loader = graph.GraphLoader(tr, batch_size=16, seed=0)
    val_loader = graph.GraphLoader(va, batch_size=32, shuffle=False)
    params = ensemble.init(model, jax.random.key(0), next(iter(loader)), n_members=4)
    epochs = 400 if kind == "weak" else 150
    log(f"{name}/{kind}: training 4 x SchNet 64x2 on {len(tr)} frames, {epochs} epochs, "
        f"cap {minutes} min")
    res = ensemble.fit(model, params, loader, val_loader,
                       loss=train.energy_force_loss(energy=1.0, forces=10.0),
                       config=ensemble.CommitteeConfig(epochs=epochs, lr=3e-3, lr_end=1e-5,
                                                       batch_size=16, max_minutes=minutes,
                                                       progress=False))
    params = res.params
    cal = calibrate.fit_committee(model, params, va, method="nll")
    os.makedirs(out, exist_ok=True)
    bundle.save(os.path.join(out, "model"), model, params, overwrite=True)
    summary = bundle.training_summary(tr)
    summary["val_forces_mae_eV_per_A"] = cal["forces"]["before"]["mae"]  # committee mean
    summary["val_energy_mae_eV"] = cal["energy"]["before"]["mae"]
    summary["train_seconds"] = res.seconds
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "calibration.json"), "w") as f:
        json.dump(cal, f, indent=1)
    log(f"{name}/{kind}: val force MAE {summary['val_forces_mae_eV_per_A']:.3f} eV/Å, σ_F scale "
        f"{cal['forces']['scale']:.2f}, {res.seconds:.0f} s")
    return out


def calibration(d: str, atoms, split, method: str) -> dict:
    """The committee's σ calibration by ``method`` on the validation split
    (:func:`jaxmat.core.calibrate.fit_committee`), cached as ``calibration_<method>.json``
    (``calibration.json``, the single NLL scale the MD runs were given, for ``nll``)."""
    path = os.path.join(d, "calibration.json" if method == "nll" else
                        f"calibration_{method}.json")
    if not os.path.exists(path):
        import jaxmat
        from jaxmat import graph
        from jaxmat.core import calibrate
        b = jaxmat.load(os.path.join(d, "model"))
        cal = calibrate.fit_committee(b.model, b.params, graph.records(
            [atoms[i] for i in split["val"]], b), method=method)
        with open(path, "w") as f:
            json.dump(cal, f, indent=1)
    with open(path) as f:
        return json.load(f)


def run_md(name: str, kind: str, start, args) -> str:
    path = os.path.join(args.work, name, kind, "md.npz")
    if os.path.exists(path):
        return path
    import jaxmat
    import jaxmat.md as md
    d = os.path.dirname(path)
    b = jaxmat.load(os.path.join(d, "model"))
    training = json.load(open(os.path.join(d, "training.json")))
    calibration = json.load(open(os.path.join(d, "calibration.json")))
    never = md.FailureCriteria(min_distance=None, bond_break=None, max_forces_std=1e9,
                               max_energy_std=None, energy_margin=1e9, topology_time_fs=1e9)
    steps = int(round(args.ps * 1000 / 0.5))
    every = int(round(args.oracle_every_fs / 0.5))
    log(f"{name}/{kind}: MD {args.replicas} replicas x {steps} steps")
    res = md.simulate(b.model, b.params, start, steps, ensemble="nvt", timestep_fs=0.5,
                      temperature_K=600.0, friction_per_fs=0.01, replicas=args.replicas,
                      seed=args.seed, log_every=10, chunk_steps=2000, traj_every=every,
                      keep_frames=True, criteria=never, training=training,
                      calibration=calibration, progress=True, progress_every_s=60)
    np.savez_compressed(path, log_steps=res.log_steps, seconds=res.seconds,
                        **{f"log_{k}": v for k, v in res.log.items()},
                        **{f"frame_{k}": v for k, v in res.frames.items()},
                        numbers=start.numbers, energy_range=np.array(res.energy_range),
                        scales=np.array(res.scales))
    log(f"{name}/{kind}: MD done in {res.seconds:.0f} s "
        f"({res.replica_steps_per_s:.0f} replica-steps/s)")
    return path


def run_oracle(name: str, kind: str, args) -> dict:
    """Per replica: the first unphysical step (-1: none), from oracle labels (saved per
    replica, so a rerun resumes)."""
    from jaxmat.md.audit import label_frames, training_minimum
    from jaxmat.workflows.adversarial.oracle import xtb
    d = os.path.join(args.work, name, kind)
    z = np.load(os.path.join(d, "md.npz"))
    training = json.load(open(os.path.join(d, "training.json")))
    done_path = os.path.join(d, "oracle.json")
    done = json.load(open(done_path)) if os.path.exists(done_path) else {}
    oracle = xtb(accuracy=0.01)
    numbers = z["numbers"]
    from ase import Atoms
    formula = Atoms(numbers).get_chemical_formula()
    e_min = training_minimum(training, formula, len(numbers))
    steps = z["frame_step"]
    t0 = time.perf_counter()
    for r in range(z["frame_positions"].shape[1]):
        if str(r) in done:
            continue
        lab = label_frames(numbers, z["frame_positions"][:, r], z["frame_energy"][:, r],
                           z["frame_forces"][:, r], oracle, e_min=e_min)
        hit = np.flatnonzero(lab["unphysical"])
        done[str(r)] = {"unphysical_step": int(steps[hit[0]]) if hit.size else -1,
                        "energy_hole": bool(lab["energy_hole"][hit[0]]) if hit.size else False,
                        "labelled": int(lab["labelled"].sum()),
                        "max_force_error": float(np.nanmax(lab["force_error"]))
                        if lab["labelled"].any() else None}
        with open(done_path + ".tmp", "w") as f:
            json.dump(done, f)
        os.replace(done_path + ".tmp", done_path)
        log(f"{name}/{kind}: oracle replica {r}: {done[str(r)]} "
            f"[{time.perf_counter() - t0:.0f} s]")
    return done


def replay_all(c, crit):
    from jaxmat.md.audit import replay
    z = c["z"]
    logd = {k[4:]: z[k] for k in z.files if k.startswith("log_") and k != "log_steps"}
    return replay(logd, z["log_steps"], c["n_atoms"], 0.5, crit, tuple(z["energy_range"]),
                  c["maps"])


def evaluate(cases: dict, args) -> dict:
    """Thresholds chosen on the validation replicas (first half), reported on the rest."""
    import jaxmat.md as md
    from jaxmat.md.audit import agreement
    R = args.replicas
    val, test = np.arange(R) < R // 2, np.arange(R) >= R // 2

    def score(crit, mask):
        u_all, d_all = [], []
        for c in cases.values():
            step, _ = replay_all(c, crit)
            u_all.append(c["unphysical"][mask])
            d_all.append(step[mask])
        return agreement(np.concatenate(u_all), np.concatenate(d_all), 0.5)

    grid = []
    for m, p, s, es in itertools.product(MARGINS, PERSIST, SIGMAS, E_SIGMAS):
        crit = md.FailureCriteria(min_distance=None, bond_break=None, energy_margin=m,
                                  topology_time_fs=p, max_forces_std=s, max_energy_std=es)
        a = score(crit, val)
        grid.append((crit, a))
    ok = [g for g in grid if (g[1]["false_alarm_rate"] or 0.0) <= 0.05]
    best = max(ok, key=lambda g: ((g[1]["recall"] or 0.0), -(g[1]["median_delay_ps"] or 0.0)))
    crit = best[0]
    out = {"chosen": {"energy_margin_eV_per_atom": crit.energy_margin,
                      "topology_time_fs": crit.topology_time_fs,
                      "max_forces_std_eV_per_A": crit.max_forces_std,
                      "max_energy_std_eV": crit.max_energy_std},
           "validation": best[1], "test": score(crit, test), "per_case": {}, "single": {}}
    fired = {key: replay_all(c, crit) for key, c in cases.items()}  # (step, code) per case
    for key, c in cases.items():
        step, code = fired[key]
        out["per_case"][key] = {
            "validation": agreement(c["unphysical"][val], step[val], 0.5),
            "test": agreement(c["unphysical"][test], step[test], 0.5),
            "reasons_test": {md.REASONS[int(k)]: int(n) for k, n in zip(
                *np.unique(code[test & (step >= 0)], return_counts=True))},
            "md_replica_steps_per_s": float(c["z"]["frame_step"][-1] * R / c["z"]["seconds"]),
            "oracle_unphysical": int((c["unphysical"] >= 0).sum()),
            "oracle_energy_holes": int(sum(c["holes"])),
            "model": c["model"]}
    # recall by severity of the first unphysical frame: a collapse (energy hole or force
    # error > SEVERE eV/Å) or a transient force error of 1 to SEVERE eV/Å
    out["severity"] = {}
    for label, want in (("collapse", True), ("transient", False)):
        u_all, d_all = [], []
        for key, c in cases.items():
            step = fired[key][0]
            m = test & (c["unphysical"] >= 0) & (c["severe"] == want)
            u_all.append(c["unphysical"][m])
            d_all.append(step[m])
        out["severity"][label] = agreement(np.concatenate(u_all), np.concatenate(d_all), 0.5)
    # each criterion alone (its chosen threshold), on the test replicas
    off = dict(energy_margin=None, topology_time_fs=None, max_forces_std=None,
               max_energy_std=None)
    for label, keep in (("energy range only", "energy_margin"),
                        ("topology only", "topology_time_fs"), ("force σ only", "max_forces_std"),
                        ("energy σ only", "max_energy_std")):
        kw = {k: v for k, v in off.items() if k != keep}
        out["single"][label] = score(dataclasses.replace(crit, **kw), test)
    return out


def write(results: dict, args) -> None:
    from jaxmat.core.calibrate import describe
    lines = ["### MD failure detector against GFN2-xTB", ""]
    ev = results.get("evaluation")
    if ev:
        c = ev["chosen"]
        lines += [f"Thresholds chosen on validation replicas (first {args.replicas // 2} of "
                  f"each run; most recall with ≤ 5 % false alarms, pooled): energy margin "
                  f"{c['energy_margin_eV_per_atom']} eV/atom, topology persistence "
                  f"{c['topology_time_fs']} fs, calibrated force σ {c['max_forces_std_eV_per_A']}"
                  f" eV/Å, calibrated energy σ {c.get('max_energy_std_eV')} eV.", "",
                  "| case | split | unphysical / replicas | caught | recall | false alarms | "
                  "median delay (ps) | p90 delay (ps) |", "|---|---|---|---|---|---|---|---|"]

        def row(name, split, a):
            rec = "–" if a["recall"] is None else f"{a['recall']:.2f}"
            fa = "–" if a["false_alarm_rate"] is None else \
                f"{a['false_alarms']}/{a['n_physical']} ({a['false_alarm_rate']:.2f})"
            md_ = "–" if a["median_delay_ps"] is None else f"{a['median_delay_ps']:.3f}"
            p9 = "–" if a["p90_delay_ps"] is None else f"{a['p90_delay_ps']:.3f}"
            return (f"| {name} | {split} | {a['n_unphysical']}/{a['n_replicas']} | "
                    f"{a['caught']} | {rec} | {fa} | {md_} | {p9} |")
        lines.append(row("all (pooled)", "validation", ev["validation"]))
        lines.append(row("all (pooled)", "test", ev["test"]))
        for k, v in ev["per_case"].items():
            lines.append(row(k, "test", v["test"]))
        sev = ev.get("severity", {})
        if sev:
            lines += ["", f"By severity of the first unphysical frame (test): a collapse (energy "
                      f"hole, or oracle force error > {SEVERE} eV/Å) or a transient force error "
                      f"of 1-{SEVERE} eV/Å:", "", "| kind | replicas | caught | recall | "
                      "median delay (ps) |", "|---|---|---|---|---|"]
            for k, a in sev.items():
                rec = "–" if a["recall"] is None else f"{a['recall']:.2f}"
                lines.append(f"| {k} | {a['n_unphysical']} | {a['caught']} | {rec} | "
                             f"{a['median_delay_ps']} |")
        lines += ["", "Each criterion alone at its chosen threshold (test replicas):", "",
                  "| criterion | recall | false alarms | median delay (ps) |", "|---|---|---|---|"]
        for k, a in ev["single"].items():
            lines.append(f"| {k} | {a['recall']} | {a['false_alarms']}/{a['n_physical']} | "
                         f"{a['median_delay_ps']} |")
        lines += ["", f"σ calibration: {args.calibration}.", "",
                  "| case | val force MAE (eV/Å) | σ_F calibration | oracle: unphysical (energy "
                  "holes) | MD replica-steps/s | reasons (test) |", "|---|---|---|---|---|---|"]
        for k, v in ev["per_case"].items():
            lines.append(f"| {k} | {v['model']['val_forces_mae_eV_per_A']:.3f} | "
                         f"{describe(v['model']['forces_calibration'])} | "
                         f"{v['oracle_unphysical']} "
                         f"({v['oracle_energy_holes']}) | {v['md_replica_steps_per_s']:.0f} | "
                         f"{v['reasons_test']} |")
    lines += ["", f"Status: {results.get('status')}. 1-min load average "
              f"{os.getloadavg()[0]:.1f} at writing."]
    write_results(args.out, results, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", nargs="+", default=["ethanol_600K", "alanine_dipeptide_600K"])
    ap.add_argument("--kinds", nargs="+", default=["weak", "good"])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--work", default=os.path.join(os.path.dirname(HERE), "runs", "md_detector"))
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--ps", type=float, default=10.0)
    ap.add_argument("--oracle-every-fs", type=float, default=50.0)
    ap.add_argument("--train-minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="md_detector")
    ap.add_argument("--calibration", default="power", choices=("power", "nll"),
                    help="the σ calibration the thresholds are chosen in (fitted on the "
                         "validation split; the MD runs themselves do not depend on it)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    results = {"settings": vars(args), "status": "running", "load_start": os.getloadavg()[0],
               "device": device_info()}
    from jaxmat.core.calibrate import map_entry, sigma_map
    cases = {}
    for name in args.molecules:
        if not os.path.exists(os.path.join(args.data, f"{name}.split.json")):
            log(f"{name}: no data yet in {args.data}; skipped")
            continue
        atoms, split = load_data(name, args.data)
        start = atoms[split["val"][0]].copy()
        start.calc = None
        for kind in args.kinds:
            d = train_model(name, kind, atoms, split, args.work, args.train_minutes)
            run_md(name, kind, start, args)
            lab = run_oracle(name, kind, args)
            z = np.load(os.path.join(d, "md.npz"))
            model = json.load(open(os.path.join(d, "training.json")))
            cal = calibration(d, atoms, split, args.calibration)
            model["forces_calibration"] = map_entry(sigma_map(cal["forces"]))
            cases[f"{name} {kind}"] = {
                "z": z, "n_atoms": len(start), "model": model,
                "maps": tuple(sigma_map(cal[t]) for t in ("energy", "forces")),
                "unphysical": np.array([lab[str(r)]["unphysical_step"]
                                        for r in range(args.replicas)]),
                "holes": [lab[str(r)]["energy_hole"] for r in range(args.replicas)],
                "severe": np.array([lab[str(r)]["energy_hole"] or
                                    (lab[str(r)]["max_force_error"] or 0.0) > SEVERE
                                    for r in range(args.replicas)])}
            results["evaluation"] = evaluate(cases, args)
            write(results, args)
    results["status"] = "done"
    if cases:
        write(results, args)


if __name__ == "__main__":
    main()
