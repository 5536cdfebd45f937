"""Held-out (20 %) accuracy of the demo SchNet potential on ammonia, eV/Å and kcal/mol/Å.

    python benchmarks/ammonia.py [--epochs 400]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import device_info, write_results  # noqa: E402

from jaxmat import demo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            m = demo.main(["--out", tmp, "--epochs", str(args.epochs), "--seed", str(seed)])
        rows.append({"seed": seed, **m})
    lines = ["| split seed | train/val/test | epochs | train s | E MAE (meV/atom) | F MAE (eV/Å) | F MAE (kcal/mol/Å) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['n_train']}/{r['n_val']}/{r['n_test']} | {r['epochs_run']} | "
                     f"{r['train_seconds']:.0f} | {r['energy_mae_meV_per_atom']:.2f} | "
                     f"{r['forces_mae_eV_A']:.4f} | {r['forces_mae_kcal_mol_A']:.3f} |")
    write_results("ammonia", {"device": device_info(), "settings": vars(args), "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
