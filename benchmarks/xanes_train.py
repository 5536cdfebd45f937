"""Train a XANES site-head committee once and keep everything later analyses need.

Per edge: a committee of ``--members`` site heads (benchmarks/xanes.py settings) trained in
one vmapped step with progress lines; saved as a bundle (:func:`jaxmat.xanes.save_model`)
and the per-member predictions on the validation and test splits (molecule and site
spectra, with targets) in ``<run-dir>/<name>_<el>.npz``, so that committee combiners,
peak metrics, the classifier and retrieval are scored without retraining.

    nice -n 15 python benchmarks/xanes_train.py --name schnet5 [--members 5] [--epochs 80]
        [--backbone schnet|painn] [--slope 0] [--elements O N] [--sequential]
        [--head grid|transition] [--transitions 24] [--widths] [--run-dir /tmp/xanes_runs]

``--head transition``: the peak-preserving head (``--transitions`` sticks per site broadened
as the generator does, :func:`jaxmat.models.spectral.schnet_transition_spectral`; SchNet
backbone).  An edge whose ``<name>_<el>.npz`` exists is skipped, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from jaxmat import predict  # noqa: E402
from jaxmat.data.xanes import load_xanes  # noqa: E402
from jaxmat.workflows.xanes.api import save_model  # noqa: E402
from jaxmat.workflows.xanes.learn import train_spectra  # noqa: E402
from xanes import site_head  # noqa: E402


def member_predictions(model, params, data) -> dict[str, np.ndarray]:
    """Per-member molecule spectra (M, S, P), site spectra of absorbing atoms (M, sites, P)
    with their molecule index, and the targets."""
    out = predict(model, params, data.records, batch_size=64, members=True,
                  keys=("xanes", "xanes_site"))
    mol = np.asarray(out["xanes_members"])
    sites, site_mol, site_atom, site_y = [], [], [], []
    for k, (r, s) in enumerate(zip(data.records, out["xanes_site_members"])):
        idx = np.flatnonzero(r.node_targets["xanes_absorber"])
        sites.append(np.asarray(s)[:, idx])
        site_y.append(r.node_targets["xanes_site"][idx])
        site_mol += [k] * len(idx)
        site_atom += idx.tolist()
    return {"mol_pred": mol.astype(np.float32),
            "mol_true": np.array([r.targets["xanes"] for r in data.records], np.float32),
            "site_pred": np.concatenate(sites, axis=1).astype(np.float32),
            "site_true": np.concatenate(site_y).astype(np.float32),
            "site_mol": np.array(site_mol, np.int32), "site_atom": np.array(site_atom, np.int32),
            "smiles": np.array(data.smiles), "mol_id": np.array(data.mol_id)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--elements", nargs="*", default=["O", "N"])
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--backbone", default="schnet", choices=["schnet", "painn"])
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--cutoff", type=float, default=4.0)
    ap.add_argument("--slope", type=float, default=0.0, help="slope_weight of the loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sequential", action="store_true",
                    help="train members one after another (seeds seed, seed+1, ...)")
    ap.add_argument("--head", default="grid", choices=["grid", "transition"])
    ap.add_argument("--transitions", type=int, default=24)
    ap.add_argument("--widths", action="store_true", help="learn stick width factors")
    ap.add_argument("--run-dir", default="/tmp/xanes_runs")
    args = ap.parse_args()
    os.makedirs(args.run_dir, exist_ok=True)
    for el in args.elements:
        if os.path.exists(os.path.join(args.run_dir, f"{args.name}_{el}.npz")):
            print(f"{el}: {args.name}_{el}.npz exists, skipped (resumable)", flush=True)
            continue
        tr, va, te = (load_xanes(el, s, cutoff=args.cutoff) for s in ("train", "val", "test"))
        if args.head == "transition":
            model = transition_head(el, args.features, args.cutoff, args.transitions, args.widths)
        else:
            model = site_head(args.backbone, el, len(tr.grid), args.features, args.cutoff)
        t = time.perf_counter()
        if args.sequential:  # members one after another: single-head steps, one compile
            fits = [train_spectra(model, tr.records, va.records, epochs=args.epochs,
                                  seed=args.seed + k, slope_weight=args.slope, progress=True)
                    for k in range(args.members)]
            params = jax_stack([p for p, _ in fits])
            res = type("R", (), {"best_epoch": [r.best_epoch for _, r in fits]})
        else:
            params, res = train_spectra(model, tr.records, va.records, epochs=args.epochs,
                                        seed=args.seed, n_members=args.members,
                                        slope_weight=args.slope, progress=True)
            if args.members == 1:
                params = jax_stack([params])
        fit_s = time.perf_counter() - t
        info = {"settings": vars(args), "fit_s": fit_s, "element": el,
                "best_epoch": np.asarray(res.best_epoch).tolist(),
                "n_train": len(tr), "n_val": len(va), "n_test": len(te)}
        save_model(os.path.join(args.run_dir, f"{args.name}_{el}"), model, params, tr,
                   metadata={"training": info}, overwrite=True)
        arrays = {"grid": tr.grid, "info": np.array(json.dumps(info, default=float))}
        for split, d in (("val", va), ("test", te)):
            for k, v in member_predictions(model, params, d).items():
                arrays[f"{split}_{k}"] = v
        np.savez_compressed(os.path.join(args.run_dir, f"{args.name}_{el}.npz"), **arrays)
        print(f"{el}: trained in {fit_s:.0f} s, best epochs {info['best_epoch']}", flush=True)


def transition_head(el: str, features: int = 64, cutoff: float = 4.0, k: int = 24,
                    widths: bool = False):
    """Peak-preserving transition head (hidden 128) on the 3-block SchNet of site_head; the
    edge prior is the element's reference 1s ionisation energy."""
    from jaxmat.models.schnet import SchNetConfig
    from jaxmat.models.spectral import TransitionHeadConfig, schnet_transition_spectral
    from jaxmat.workflows.xanes.broaden import GRIDS, REFERENCES

    return schnet_transition_spectral(
        SchNetConfig(n_features=features, n_interactions=3, n_rbf=32, cutoff=cutoff, max_z=10),
        TransitionHeadConfig(z={"O": 8, "N": 7}[el], grid=GRIDS[el], n_transitions=k,
                             hidden=128, edge=REFERENCES[el][2], widths=widths))


def jax_stack(params: list):
    from jaxmat import ensemble

    return ensemble.stack(params)


if __name__ == "__main__":
    main()
