"""Gridded vs peak-preserving (transition) head: significant-peak precision and recall,
committee size and combiner chosen on the validation split only.

Reads the member predictions that benchmarks/xanes_train.py wrote
(``<run-dir>/<run>_<el>.npz``) for every ``--runs`` entry (e.g. a gridded and a transition
head run).  Candidates per edge: each run's first member alone, and committees of its
first k members combined by every combiner of jaxmat.workflows.xanes.combine.  The chosen
configuration is the candidate with the largest validation min(precision, recall) (both
sides must be high); only it is scored on the test split (scaffold split, 95 % bootstrap
intervals over molecules).  The computed spectra blurred by a 0.2 eV Gaussian give the
ceiling (validation).

    python benchmarks/xanes_peaks.py --runs grid3e12 trans3e12 [--elements O N]
        [--run-dir runs/xanes] [--out xanes_peaks]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import device_info, write_results  # noqa: E402

import numpy as np  # noqa: E402

from jaxmat.core import spectra  # noqa: E402
from xanes_levers import blurred, candidates, recall_breakdown  # noqa: E402


def _brief(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("per_spectrum")}


def score_edge(el: str, runs: list[str], run_dir: str, n_boot: int) -> dict:
    """Validation scores of every candidate and test scores of the chosen one."""
    preds, infos, y, g = {"val": {}, "test": {}}, {}, None, None
    for name in runs:
        run = dict(np.load(os.path.join(run_dir, f"{name}_{el}.npz")))
        infos[name] = json.loads(str(run["info"]))
        if y is None:
            g, y = run["grid"], {s: run[f"{s}_mol_true"] for s in ("val", "test")}
            ids = {s: list(run[f"{s}_mol_id"]) for s in ("val", "test")}
        for s in ("val", "test"):
            if list(run[f"{s}_mol_id"]) != ids[s]:
                raise ValueError(f"{name}_{el}: {s} molecules differ from {runs[0]}_{el}")
            preds[s].update(candidates(run, s, g, name))
    val = {n: _brief(spectra.evaluate_spectra(g, y["val"], p)) for n, p in preds["val"].items()}
    pick = max(val, key=lambda n: min(val[n]["precision"], val[n]["recall"]))
    best_per_run = {r: max((n for n in val if n.startswith(f"{r}:")),
                           key=lambda n: min(val[n]["precision"], val[n]["recall"]))
                    for r in runs}
    test = _brief(spectra.evaluate_spectra(g, y["test"], preds["test"][pick], n_boot=n_boot))
    ceiling = _brief(spectra.evaluate_spectra(g, y["val"], blurred(g, y["val"], 0.2)))
    return {"element": el, "runs": infos, "val": val, "chosen": pick,
            "best_per_run": best_per_run, "test_chosen": test, "val_ceiling_blur_0.2eV": ceiling,
            "test_recall_breakdown": recall_breakdown(g, y["test"], preds["test"][pick]),
            "n_val": len(y["val"]), "n_test": len(y["test"])}


def table(rows: list[dict]) -> str:
    lines = ["| edge | candidate | val precision (%) | val recall (%) | val min(P, R) |",
             "|---|---|---|---|---|"]
    for r in rows:
        for n, v in r["val"].items():
            mark = " **(chosen)**" if n == r["chosen"] else (
                " (best of its run)" if n in r["best_per_run"].values() else "")
            lines.append(f"| {r['element']} | {n}{mark} | {100 * v['precision']:.1f} | "
                         f"{100 * v['recall']:.1f} | {100 * min(v['precision'], v['recall']):.1f} |")
        c = r["val_ceiling_blur_0.2eV"]
        lines.append(f"| {r['element']} | computed spectra blurred 0.2 eV (ceiling) | "
                     f"{100 * c['precision']:.1f} | {100 * c['recall']:.1f} | "
                     f"{100 * min(c['precision'], c['recall']):.1f} |")
    lines += ["", "Test split (scaffold), chosen configuration only, 95 % bootstrap intervals "
              "over molecules:", "",
              "| edge | chosen | test precision [95 % CI] | test recall [95 % CI] | "
              "peak-height err | first peak within 1 eV | test molecules |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test_chosen"]
        lines.append(
            f"| {r['element']} | {r['chosen']} | {100 * t['precision']:.1f} % "
            f"[{100 * t['precision_ci'][0]:.1f}, {100 * t['precision_ci'][1]:.1f}] | "
            f"{100 * t['recall']:.1f} % [{100 * t['recall_ci'][0]:.1f}, "
            f"{100 * t['recall_ci'][1]:.1f}] | {t['peak_height_error']:.3f} | "
            f"{100 * t['first_peak_within_tol']:.1f} % | {r['n_test']} |")
    notes = []
    for r in rows:
        for name, info in r["runs"].items():
            s = info["settings"]
            notes.append(f"{r['element']} {name}: {s.get('head', 'grid')} head, {s['members']} "
                         f"members x {s['epochs']} epochs, {s['features']} features, fit "
                         f"{info['fit_s'] / 60:.0f} min on the shared CPU, best epochs "
                         f"{info['best_epoch']}")
    return ("\n".join(lines) + "\n\nSignificant peaks: prominence >= 10 % of the spectrum's "
            "maximum, matched one to one within 1 eV (jaxmat.core.spectra). Candidate "
            "'run: xk how' = first k members combined by how; the choice maximises validation "
            "min(precision, recall).\n\n" + "\n\n".join(notes))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--elements", nargs="*", default=["O", "N"])
    ap.add_argument("--run-dir", default="runs/xanes")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default="xanes_peaks")
    args = ap.parse_args()
    rows = []
    for el in args.elements:
        have = [r for r in args.runs if os.path.exists(os.path.join(args.run_dir, f"{r}_{el}.npz"))]
        if len(have) < len(args.runs):
            print(f"{el}: no predictions of {sorted(set(args.runs) - set(have))}", flush=True)
        if have:
            rows.append(score_edge(el, have, args.run_dir, args.n_boot))
    md = table(rows)
    suffix = "" if args.elements == ["O", "N"] else "_" + "".join(args.elements)
    write_results(args.out + suffix, {"device": device_info(), "settings": vars(args),
                                      "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
