"""Committee of 5 SchNet potentials on ammonia: accuracy of the committee mean vs single
members, and calibration of the committee spread before/after recalibration.

Split: 80 % of the 138 NH3 geometries for fitting (of which 20 structures are a validation
set, used for early stopping and to fit the recalibration scale), 20 % held-out test set.
All 5 members train together in one vmapped program (``jaxmat.core.ensemble.fit``), each with its
own initialisation and data order. Force errors and sigmas are per Cartesian component (eV/Å).

    nice -n 10 python benchmarks/ammonia_committee.py [--epochs 250] [--members 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, device_info, write_results  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmat import calibrate, data, ensemble, graph, potential, train  # noqa: E402
from jaxmat.models import SchNetConfig, schnet  # noqa: E402
from jaxmat.core.predict import predict as jaxmat_predict  # noqa: E402


def predict(model, params, records) -> tuple[np.ndarray, np.ndarray]:
    """Per-member energies (M, S) eV and forces (M, total atoms, 3) eV/Å (jaxmat.predict)."""
    out = jaxmat_predict(model, params, records, keys=("energy", "forces"), members=True)
    members = {"energy": out["energy_members"],
               "forces": np.concatenate(out["forces_members"], axis=1)}
    ensemble.check_finite(members)
    return members["energy"], members["forces"]


def targets(records) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r.targets["energy"] for r in records]),
            np.concatenate([r.node_targets["forces"] for r in records]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=250)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--bootstrap", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    records = graph.records_from_atoms(data.load_ammonia(), 5.0)
    fit_idx, test_idx = data.split_indices(len(records), (0.8, 0.2), seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    fit_idx = rng.permutation(fit_idx)
    val_idx, train_idx = fit_idx[:20], fit_idx[20:]
    tr, va, te = ([records[k] for k in idx] for idx in (train_idx, val_idx, test_idx))

    refs, f_rms = potential.energy_stats(tr)
    cfg = SchNetConfig(n_features=args.features, n_interactions=3, n_rbf=20, cutoff=5.0)
    model = potential.potential(schnet(cfg.with_stats(refs, scale=f_rms)), stress=False)
    loss = train.energy_force_loss(1.0, 10.0)
    budget = graph.estimate_budget(tr, args.batch_size)
    val_loader = graph.GraphLoader(va, 32, shuffle=False)

    params = ensemble.init(model, jax.random.key(args.seed), graph.batch(tr[:2]), args.members)
    fit_cfg = ensemble.CommitteeConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                       monitor="forces_mae", seed=args.seed, progress=False)
    t0 = time.perf_counter()
    res = ensemble.fit(model, params, graph.GraphLoader(tr, args.batch_size, budget,
                                                        seed=args.seed),
                       val_loader, loss, fit_cfg, bootstrap=args.bootstrap)
    train_s = time.perf_counter() - t0

    e_val, f_val = predict(model, res.params, va)
    e_te, f_te = predict(model, res.params, te)
    (E_val, F_val), (E_te, F_te) = targets(va), targets(te)
    n_atoms_te = np.array([r.n_node for r in te])

    member_f_mae = np.mean(np.abs(f_te - F_te[None]), axis=(1, 2))
    member_e_mae = np.mean(np.abs(e_te - E_te[None]) / n_atoms_te, axis=1)
    f_mean, f_std = f_te.mean(0), f_te.std(0)
    e_mean = e_te.mean(0)
    accuracy = {
        "forces_mae_committee_mean": float(np.mean(np.abs(f_mean - F_te))),
        "forces_mae_members": member_f_mae.tolist(),
        "forces_mae_single_mean": float(member_f_mae.mean()),
        "forces_mae_single_best": float(member_f_mae.min()),
        "energy_mae_meV_atom_committee_mean": 1e3 * float(np.mean(np.abs(e_mean - E_te) / n_atoms_te)),
        "energy_mae_meV_atom_members": (1e3 * member_e_mae).tolist(),
    }

    # calibration: scale fitted on the validation split, judged on the test split
    cal = {}
    for what, (pv, tv, pt, tt) in {"forces": (f_val, F_val, f_te, F_te),
                                   "energy": (e_val, E_val, e_te, E_te)}.items():
        err_v, sig_v = pv.mean(0) - tv, pv.std(0)
        err_t, sig_t = pt.mean(0) - tt, pt.std(0)
        cal[what] = {"before": {"scale": 1.0, **calibrate.metrics(err_t, sig_t)}}
        for method in ("nll", "median"):
            s = calibrate.fit_scale(err_v, sig_v, method)
            cal[what][f"after_{method}"] = {
                "scale": s, **calibrate.metrics(err_t, calibrate.recalibrate(sig_t, s))}
    s_f = cal["forces"]["after_nll"]["scale"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        # held-out force components with the NLL-recalibrated sigma
        calibrate.plot_all(f_mean - F_te, calibrate.recalibrate(f_std, s_f), F_te, f_mean,
                           os.path.join(RESULTS, "ammonia_committee.png"))
    except ImportError:
        pass

    lines = [
        f"Committee of {args.members} SchNet ({args.features} features, 3 interactions), "
        f"{len(tr)} train / {len(va)} val / {len(te)} test NH3, {args.epochs} epochs in "
        f"{train_s:.0f} s (all members in one vmapped step). Best epochs per member: "
        f"{res.best_epoch}.", "",
        "| held-out | committee mean | single members (mean) | best single member |",
        "|---|---|---|---|",
        f"| force MAE (eV/Å) | {accuracy['forces_mae_committee_mean']:.4f} | "
        f"{accuracy['forces_mae_single_mean']:.4f} | {accuracy['forces_mae_single_best']:.4f} |",
        f"| energy MAE (meV/atom) | {accuracy['energy_mae_meV_atom_committee_mean']:.2f} | "
        f"{np.mean(accuracy['energy_mae_meV_atom_members']):.2f} | "
        f"{np.min(accuracy['energy_mae_meV_atom_members']):.2f} |", "",
        "| test calibration | s | NLL | Spearman | miscal. area | cov. 68 % | cov. 95 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for what in ("forces", "energy"):
        for when, m in cal[what].items():
            lines.append(f"| {what} {when.replace('_', ' (') + (')' if '_' in when else '')} | "
                         f"{m['scale']:.2f} | {m['nll']:.3f} | {m['spearman']:.3f} | "
                         f"{m['miscalibration_area']:.3f} | {m['coverage_68']:.3f} | "
                         f"{m['coverage_95']:.3f} |")
    lines.append("")
    lines.append("Force statistics over Cartesian components (eV/Å); energy over structures (eV). "
                 "Recalibration scale s (σ → sσ) fitted on the validation split: 'nll' minimises the "
                 "Gaussian NLL (closed form), 'median' matches the median of |err|/σ.")
    payload = {"device": device_info(), "settings": vars(args), "train_seconds": train_s,
               "best_epoch": res.best_epoch, "accuracy": accuracy, "calibration": cal,
               "n": {"train": len(tr), "val": len(va), "test": len(te)}}
    write_results("ammonia_committee", payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
