"""Model levers for significant-peak precision AND recall, chosen on validation only.

Reads the member predictions of benchmarks/xanes_train.py runs (``<run-dir>/<run>_<el>.npz``)
and scores on the validation split: one head (member 0), committees of the first k members
combined by mean, median or aligned consensus (jaxmat.workflows.xanes.combine), other runs
given with --extra (e.g. a slope-loss head), and the functional-group baseline.  The
default is the candidate with the largest validation min(precision, recall) (both sides
must be high).  Every candidate is then scored on test (95 % bootstrap intervals over
molecules), and the test recall of the chosen default is broken down by reference-peak
prominence and by tolerance, to show which peaks are missed.

    python benchmarks/xanes_levers.py --run c4e15 [--extra slope1e15] [--elements O N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import device_info, write_results  # noqa: E402

import numpy as np  # noqa: E402

from jaxmat.data.xanes import load_xanes  # noqa: E402
from jaxmat.core import spectra  # noqa: E402
from jaxmat.workflows.xanes.combine import COMBINERS, combine_many  # noqa: E402
from xanes import baseline_predict  # noqa: E402


def candidates(run: dict, split: str, g: np.ndarray, name: str) -> dict[str, np.ndarray]:
    m = run[f"{split}_mol_pred"]
    out = {f"{name}: one head": m[0]}
    for k in range(2, len(m) + 1):
        for how in COMBINERS:
            out[f"{name}: x{k} {how}"] = combine_many(m[:k], g, how)
    return out


def blurred(g, y, sigma_ev: float) -> np.ndarray:
    """Spectra (S, P) convolved with a Gaussian of ``sigma_ev`` (what an uncertain but
    unbiased model does at best: the metric's sensitivity to smoothing)."""
    from jaxmat.models.spectral import gaussian_smoother

    return y @ gaussian_smoother(len(g), sigma_ev / float(g[1] - g[0]))


def recall_breakdown(g, y_true, y_pred) -> dict:
    """Test recall of reference peaks by prominence (fraction of max) and tolerance (eV)."""
    bins = [(0.1, 0.2), (0.2, 0.4), (0.4, 1.01)]
    hit = {b: [0, 0] for b in bins}
    for t, p in zip(y_true, y_pred):
        e_ref, _, prom = spectra.find_peaks(g, t)
        e_pred = spectra.find_peaks(g, p)[0]
        matched = {i for i, _, d in spectra.match_peaks(e_ref, e_pred) if d <= spectra.PEAK_TOL_EV}
        for i, pr in enumerate(prom / t.max()):
            for b in bins:
                if b[0] <= pr < b[1]:
                    hit[b][0] += i in matched
                    hit[b][1] += 1
    by_tol = {tol: spectra.evaluate_spectra(g, y_true, y_pred, tol=tol)["recall"]
              for tol in (0.5, 1.0, 1.5, 2.0)}
    return {"by_prominence": {f"{a:.1f}-{min(b, 1.0):.1f}": {"recall": h / max(n, 1), "n": n}
                              for (a, b), (h, n) in hit.items()},
            "recall_by_tol_ev": by_tol}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="c4e15")
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--elements", nargs="*", default=["O", "N"])
    ap.add_argument("--run-dir", default="/tmp/xanes_runs")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default="xanes_levers")
    args = ap.parse_args()
    rows, lines = [], []
    for el in args.elements:
        run = dict(np.load(os.path.join(args.run_dir, f"{args.run}_{el}.npz")))
        info = json.loads(str(run["info"]))
        g = run["grid"]
        tr, va, te = (load_xanes(el, s, cutoff=4.0) for s in ("train", "val", "test"))
        assert list(te.mol_id) == list(run["test_mol_id"]), "run and dataset disagree"
        preds = {s: candidates(run, s, g, args.run) for s in ("val", "test")}
        for name in args.extra:
            f = os.path.join(args.run_dir, f"{name}_{el}.npz")
            if os.path.exists(f):
                ex = dict(np.load(f))
                for s in ("val", "test"):
                    preds[s][f"{name}: one head"] = ex[f"{s}_mol_pred"][0]
        preds["val"]["baseline"] = baseline_predict(tr, va)[0]
        preds["test"]["baseline"] = baseline_predict(tr, te)[0]
        y = {s: run[f"{s}_mol_true"] for s in ("val", "test")}
        for sig in (0.2, 0.4):  # reference rows: the computed spectra, blurred
            for s in ("val", "test"):
                preds[s][f"computed, blurred {sig} eV"] = blurred(g, y[s], sig)
        scores = {}
        for name in preds["val"]:
            scores[name] = {s: spectra.evaluate_spectra(g, y[s], preds[s][name],
                                                        n_boot=args.n_boot if s == "test" else 0)
                            for s in ("val", "test")}
            for s in ("val", "test"):
                scores[name][s] = {k: v for k, v in scores[name][s].items()
                                   if not k.startswith("per_spectrum")}
        pick = max((n for n in scores if n != "baseline" and not n.startswith("computed")),
                   key=lambda n: min(scores[n]["val"]["precision"], scores[n]["val"]["recall"]))
        rows.append({"element": el, "run": info, "chosen": pick, "scores": scores,
                     "test_recall_breakdown": recall_breakdown(g, y["test"], preds["test"][pick])})
        for name, sc in scores.items():
            v, t = sc["val"], sc["test"]
            lines.append(
                f"| {el} | {name}{' (chosen)' if name == pick else ''} | "
                f"{100 * v['precision']:.1f} / {100 * v['recall']:.1f} | "
                f"{100 * t['precision']:.1f} % [{100 * t['precision_ci'][0]:.1f}, "
                f"{100 * t['precision_ci'][1]:.1f}] | {100 * t['recall']:.1f} % "
                f"[{100 * t['recall_ci'][0]:.1f}, {100 * t['recall_ci'][1]:.1f}] | "
                f"{t['peak_height_error']:.3f} | {t['mae']:.4f} |")
        print("\n".join(lines[-len(scores):]), flush=True)
    head = ["| edge | model | val precision / recall (%) | test precision [95 % CI] "
            "| test recall [95 % CI] | test peak-height err | test MAE |",
            "|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        b = r["test_recall_breakdown"]
        notes.append(f"{r['element']} chosen ({r['chosen']}): test recall by reference-peak "
                     f"prominence " + ", ".join(f"{k}: {100 * v['recall']:.0f} % ({v['n']})"
                                                for k, v in b["by_prominence"].items())
                     + "; by tolerance " + ", ".join(f"{k} eV: {100 * v:.0f} %"
                                                     for k, v in b["recall_by_tol_ev"].items()))
    s = rows[0]["run"]["settings"] if rows else {}
    note = (f"\nRun {args.run}: {s.get('backbone')} site heads, {s.get('features')} features, "
            f"{s.get('members')} members trained "
            f"{'one after another' if s.get('sequential') else 'together'} for {s.get('epochs')} epochs "
            f"(seed {s.get('seed')}); row 'xk how' combines the first k members. Significant "
            f"peaks: prominence >= 10 % of max, matched within 1 eV. Default = largest "
            f"validation min(precision, recall).\n\n" + "\n\n".join(notes))
    write_results(args.out, {"device": device_info(), "settings": vars(args), "rows": rows},
                  "\n".join(head + lines) + "\n" + note)
    print("\n".join(head + lines) + note)


if __name__ == "__main__":
    main()
