"""``python -m jaxmat.demo``: train a SchNet potential on the shipped ammonia data.

70/10/20 train/validation/test split of 138 NH3 geometries (DFT energies/forces), the default
schedule (Adam, cosine over :func:`jaxmat.core.engine.default_steps`, batch 8) with an
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
from jaxmat.cli.eval import errors, parity_plot
from jaxmat.core import bundle, graph, potential, protocol, train
from jaxmat.core.engine import DEFAULT_BATCH
from jaxmat.models import SchNetConfig, schnet
from jaxmat.core.predict import predict


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
    tr, va, te = ([records[k] for k in idx]
                  for idx in data.split_indices(len(records), (0.7, 0.1, 0.2), seed=args.seed))
    cfg = SchNetConfig(n_features=args.features).with_stats(*potential.energy_stats(tr))
    model = potential.potential(schnet(cfg), stress=False)

    loader = graph.GraphLoader(tr, batch_size=DEFAULT_BATCH, seed=args.seed)
    val_loader = graph.GraphLoader(va, batch_size=32, shuffle=False)
    params = model.init(jax.random.key(args.seed), next(iter(loader)))
    print(f"ammonia: {len(tr)} train / {len(va)} validation / {len(te)} test structures; SchNet {args.features}x3, "
          f"{protocol.count_params(params)} parameters")
    result = train.fit(
        model, params, loader, val_loader,
        loss=train.energy_force_loss(energy=1.0, forces=10.0),
        config=train.FitConfig(epochs=args.epochs, seed=args.seed,
                               checkpoint_dir=os.path.join(out_dir, "checkpoints"), keep=1),
    )
    err, arrays = errors(model, result.params, te)
    metrics = {"n_train": len(tr), "n_val": len(va), "n_test": len(te),
               "epochs_run": len(result.history), "best_epoch": result.best_epoch,
               "train_seconds": round(result.seconds, 1), "energy_mae_eV": err["energy_mae_eV"],
               "energy_mae_meV_per_atom": 1e3 * err["energy_mae_eV_per_atom"],
               "forces_mae_eV_A": err["forces_mae_eV_per_A"],
               "forces_mae_kcal_mol_A": err["forces_mae_eV_per_A"] / data.KCAL_MOL}
    path = bundle.save(os.path.join(out_dir, "bundle"), model, result.params, overwrite=True,
                       metadata={"dataset": "ammonia", "seed": args.seed, "metrics": metrics})
    reloaded = jaxmat.load(path)
    again = predict(reloaded.model, reloaded.params, te, keys=("energy",))["energy"]
    if not np.array_equal(again, arrays["energy_pred"]):
        raise RuntimeError(f"the bundle at {path} does not reproduce the test energies (max "
                           f"|ΔE| = {np.max(np.abs(again - arrays['energy_pred'])):.3g} eV)")
    parity_plot(os.path.join(out_dir, "parity.png"), arrays,
                "jaxmat SchNet on ammonia (held-out 20 %)")
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
