"""``python -m jaxmat.demo``: train a SchNet potential on the shipped ammonia data.

70/10/20 train/validation/test split of 138 NH3 geometries (DFT energies/forces), the default
schedule (Adam, cosine over :func:`jaxmat.core.engine.default_steps`, batch 16) with an
energy + force loss; prints held-out energy and force MAE, saves the trained model as a bundle
(``<out>/bundle``, reloaded with ``jaxmat.load``), training checkpoints and a parity plot
under ``--out`` (default ``runs/demo``). About two minutes on 2 idle CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

import jaxmat
from jaxmat import data
from jaxmat.core import bundle, graph, potential, train
from jaxmat.models import SchNetConfig, schnet
from jaxmat.core.predict import predict


def parity_plot(path: str, e_true, e_pred, f_true, f_pred) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 4.2))
    for a, (t, p, label) in zip(ax, [(e_true, e_pred, "energy (eV)"),
                                     (f_true, f_pred, "force component (eV/Å)")]):
        lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
        a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        a.scatter(t, p, s=8, alpha=0.6)
        a.set_xlabel(f"DFT {label}")
        a.set_ylabel(f"SchNet {label}")
        a.set_title(f"MAE {np.mean(np.abs(t - p)):.4f}")
    fig.suptitle("jaxmat SchNet on ammonia (held-out 20 %)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def held_out(model, params, te) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Test energies (eV) and forces (eV/Å), true and predicted, and their MAEs."""
    pred = predict(model, params, te, keys=("energy", "forces"))
    e_true = np.array([r.targets["energy"] for r in te])
    f_true = np.concatenate([r.node_targets["forces"] for r in te])
    e_pred, f_pred = np.array(pred["energy"]), np.concatenate(pred["forces"])
    n_atoms = np.array([r.n_node for r in te])
    f_mae = float(np.mean(np.abs(f_true - f_pred)))
    return e_true, e_pred, f_true, f_pred, {
        "energy_mae_eV": float(np.mean(np.abs(e_true - e_pred))),
        "energy_mae_meV_per_atom": float(1e3 * np.mean(np.abs(e_true - e_pred) / n_atoms)),
        "forces_mae_eV_A": f_mae, "forces_mae_kcal_mol_A": f_mae / data.KCAL_MOL}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=None,
                    help="default: the library's schedule for this training-set size")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()

    atoms = data.load_ammonia()
    records = graph.records_from_atoms(atoms, cutoff=5.0)
    train_idx, val_idx, test_idx = data.split_indices(len(records), (0.7, 0.1, 0.2), seed=args.seed)
    tr = [records[k] for k in train_idx]
    va = [records[k] for k in val_idx]
    te = [records[k] for k in test_idx]
    cfg = SchNetConfig(n_features=args.features).with_stats(*potential.energy_stats(tr))
    model = potential.potential(schnet(cfg), stress=False)

    loader = graph.GraphLoader(tr, batch_size=16, seed=args.seed)
    val_loader = graph.GraphLoader(va, batch_size=32, shuffle=False)
    params = model.init(jax.random.key(args.seed), next(iter(loader)))
    print(f"ammonia: {len(tr)} train / {len(va)} validation / {len(te)} test structures; SchNet {args.features}x3, "
          f"{sum(x.size for x in jax.tree_util.tree_leaves(params))} parameters")
    result = train.fit(
        model, params, loader, val_loader,
        loss=train.energy_force_loss(energy=1.0, forces=10.0),
        config=train.FitConfig(epochs=args.epochs, seed=args.seed,
                               checkpoint_dir=os.path.join(out_dir, "checkpoints"), keep=1),
    )
    e_true, e_pred, f_true, f_pred, errors = held_out(model, result.params, te)
    metrics = {"n_train": len(tr), "n_val": len(va), "n_test": len(te),
               "epochs_run": len(result.history), "best_epoch": result.best_epoch,
               "train_seconds": round(result.seconds, 1), **errors}
    path = bundle.save(os.path.join(out_dir, "bundle"), model, result.params, overwrite=True,
                       metadata={"dataset": "ammonia", "seed": args.seed, "metrics": metrics})
    reloaded = jaxmat.load(path)
    again = predict(reloaded.model, reloaded.params, te, keys=("energy",))["energy"]
    if not np.array_equal(again, e_pred):
        raise RuntimeError(f"the bundle at {path} does not reproduce the test energies "
                           f"(max |ΔE| = {np.max(np.abs(again - e_pred)):.3g} eV)")
    parity_plot(os.path.join(out_dir, "parity.png"), e_true, e_pred, f_true.ravel(), f_pred.ravel())
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"held-out energy MAE: {metrics['energy_mae_eV'] * 1e3:.2f} meV "
          f"({metrics['energy_mae_meV_per_atom']:.2f} meV/atom)")
    print(f"held-out force MAE:  {metrics['forces_mae_eV_A']:.4f} eV/Å "
          f"({metrics['forces_mae_kcal_mol_A']:.3f} kcal/mol/Å)")
    print(f"saved model bundle: {path} (jaxmat.load gives back the same test energies)")
    print(f"saved: {out_dir}/checkpoints, {out_dir}/parity.png "
          f"[{time.perf_counter() - t0:.0f} s total]")
    return metrics


if __name__ == "__main__":
    main()
