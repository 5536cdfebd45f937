"""The inverse problem on the scaffold test split: functional group from a site spectrum, and
retrieval of a molecule among 100 candidates from its "measured" spectrum.

Classifier (jaxmat.workflows.xanes.inverse.GroupClassifier) trained on the computed site
spectra of the training split (groups with fewer than --min-train sites pooled as
"other"); its kind (logistic regression, C; or k nearest neighbours, k) chosen on the
validation split ("measured" spectra); test scored on computed
site spectra made "measured" (random shift, s.d. 0.2 eV, 2 % noise), on the clean ones,
and on the model's predicted site spectra (from benchmarks/xanes_train.py runs).

Retrieval: each test molecule's computed spectrum, shifted (s.d. 0.2 eV) and noisy (2 %),
is the query; the candidates are the predicted spectra of itself and 99 other test
molecules (committee combined by --combiner); top-1/top-5 over all test molecules.  The
shift tolerance of the similarity is chosen on validation.

    python benchmarks/xanes_inverse.py [--run schnet5] [--combiner aligned] [--elements O N]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, device_info, write_results  # noqa: E402

import numpy as np  # noqa: E402

from jaxmat.data.xanes import load_xanes  # noqa: E402
from jaxmat.workflows.xanes import inverse  # noqa: E402
from jaxmat.workflows.xanes.combine import combine_many  # noqa: E402

SHIFT_SD, NOISE = 0.2, 0.02


def sites(data):
    """Computed site spectra, molecule and atom indices of every absorbing site."""
    x, mol, atom = [], [], []
    for k, r in enumerate(data.records):
        idx = np.flatnonzero(r.node_targets["xanes_absorber"])
        x.append(r.node_targets["xanes_site"][idx])
        mol += [k] * len(idx)
        atom += idx.tolist()
    return np.concatenate(x), np.array(mol), np.array(atom)



def combined(members: np.ndarray, g: np.ndarray, how: str) -> np.ndarray:
    """Member predictions (M, S, P) -> (S, P): a combiner, or ``"one"`` (member 0)."""
    return members[0] if how == "one" else combine_many(members, g, how)


def run_element(el, args, run):
    tr, va, te = (load_xanes(el, s) for s in ("train", "val", "test"))
    g = tr.grid
    data = {}
    for name, d in (("train", tr), ("val", va), ("test", te)):
        x, mol, atom = sites(d)
        data[name] = (x, np.array(inverse.site_groups(d.smiles, mol, atom)))
    names, counts = np.unique(data["train"][1], return_counts=True)
    keep = {n for n, c in zip(names, counts) if c >= args.min_train}
    other = f"other {el}"
    pool = (lambda ys: np.array([y if y in keep else other for y in ys]))
    ytr, yva, yte = (pool(data[s][1]) for s in ("train", "val", "test"))
    xva_m = inverse.noisy(g, data["val"][0], SHIFT_SD, NOISE, seed=11)[0]
    configs = ([{"kind": "logistic", "C": c} for c in args.C]
               + [{"kind": "knn", "k": k} for k in args.k])
    val_acc = []
    for cfg in configs:
        clf = inverse.GroupClassifier(**cfg).fit(g, data["train"][0], ytr)
        val_acc.append(float(np.mean(clf.predict(xva_m) == yva)))
        print(el, cfg, "val accuracy (measured)", val_acc[-1], flush=True)
    best = configs[int(np.argmax(val_acc))]
    clf = inverse.GroupClassifier(**best).fit(g, data["train"][0], ytr)
    xte_m = inverse.noisy(g, data["test"][0], SHIFT_SD, NOISE, seed=12)[0]
    row = {"element": el, "classes_train": {str(n): int(c) for n, c in zip(names, counts)},
           "val_accuracy": [{**c, "accuracy": a} for c, a in zip(configs, val_acc)],
           "classifier": best,
           "test_measured": inverse.class_report(yte, clf.predict(xte_m)),
           "test_clean": inverse.class_report(yte, clf.predict(data["test"][0]))}
    if run is not None:
        sp = combined(run["test_site_pred"][:args.members], g, args.combiner)
        mol, atom = run["test_site_mol"], run["test_site_atom"]
        yp = pool(inverse.site_groups(run["test_smiles"], mol, atom))
        row["test_predicted_sites"] = inverse.class_report(yp, clf.predict(sp))
        # retrieval: choose the shift tolerance on validation
        res = {}
        for split in ("val", "test"):
            cand = combined(run[f"{split}_mol_pred"][:args.members], g, args.combiner)
            q = inverse.noisy(g, run[f"{split}_mol_true"], SHIFT_SD, NOISE, seed=21)[0]
            res[split] = (q, cand, run[f"{split}_mol_true"])
        tol = {}
        for ms in args.max_shift:
            q, cand, _ = res["val"]
            n = min(100, len(q))
            tol[ms] = inverse.retrieval_accuracy(g, q, cand, n_candidates=n, max_shift=ms)
            print(el, "max_shift", ms, "val top1/top5", tol[ms]["top1"], tol[ms]["top5"], flush=True)
        ms = max(tol, key=lambda m: (tol[m]["top5"], tol[m]["top1"], -m))
        q, cand, true = res["test"]
        out = inverse.retrieval_accuracy(g, q, cand, max_shift=ms)
        upper = inverse.retrieval_accuracy(g, q, true, max_shift=ms)
        row["retrieval"] = {"max_shift_ev": ms, "val": {m: {k: v[k] for k in ("top1", "top5")}
                                                          for m, v in tol.items()},
                            "test_predicted_candidates": {k: out[k] for k in
                                                          ("top1", "top5", "median_rank",
                                                           "n_queries", "n_candidates")},
                            "test_computed_candidates": {k: upper[k] for k in
                                                         ("top1", "top5", "median_rank")}}
    if args.plots:
        import matplotlib

        matplotlib.use("Agg")
        fig = inverse.plot_confusion(row["test_measured"], title=(
            f"{el} K-edge, test sites ('measured'): accuracy "
            f"{100 * row['test_measured']['accuracy']:.1f} %"))
        fig.savefig(os.path.join(RESULTS, f"xanes_inverse_confusion_{el}.png"), dpi=90)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--elements", nargs="*", default=["O", "N"])
    ap.add_argument("--run", default="schnet5", help="benchmarks/xanes_train.py run name")
    ap.add_argument("--run-dir", default="/tmp/xanes_runs")
    ap.add_argument("--combiner", default="mean", help="mean, median, aligned or one (member 0)")
    ap.add_argument("--members", type=int, default=None, help="first k members (default all)")
    ap.add_argument("--min-train", type=int, default=20)
    ap.add_argument("--C", type=float, nargs="*", default=[0.1, 1.0])
    ap.add_argument("--k", type=int, nargs="*", default=[1, 5, 15])
    ap.add_argument("--max-shift", type=float, nargs="*", default=[0.0, 0.3, 0.6])
    ap.add_argument("--no-plots", dest="plots", action="store_false")
    ap.add_argument("--out", default="xanes_inverse", help="results name")
    args = ap.parse_args()
    rows = []
    for el in args.elements:
        f = os.path.join(args.run_dir, f"{args.run}_{el}.npz")
        run = dict(np.load(f)) if os.path.exists(f) else None
        if run is None:
            print(f"no run {f}: retrieval and predicted-site classification skipped")
        rows.append(run_element(el, args, run))
    lines = ["| edge | test input | top-1 accuracy | per class: precision / recall (support) |",
             "|---|---|---|---|"]
    for r in rows:
        for key, what in (("test_measured", "computed + 0.2 eV shift + 2 % noise"),
                          ("test_clean", "computed"), ("test_predicted_sites", "model-predicted")):
            if key in r:
                rep = r[key]
                per = "; ".join(f"{c} {100 * v['precision']:.0f}/{100 * v['recall']:.0f} "
                                f"({v['support']})" for c, v in rep["per_class"].items())
                lines.append(f"| {r['element']} | {what} | {100 * rep['accuracy']:.1f} % | {per} |")
    lines += ["", "| edge | retrieval among 100 (query: computed + 0.2 eV shift + 2 % noise) "
              "| candidates | top-1 | top-5 | median rank | shift tolerance (val) |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "retrieval" in r:
            rt = r["retrieval"]
            for key, what in (("test_predicted_candidates", f"predicted ({args.combiner})"),
                              ("test_computed_candidates", "computed (upper bound)")):
                v = rt[key]
                lines.append(f"| {r['element']} | {rt['test_predicted_candidates']['n_queries']}"
                             f" test molecules | {what} | {100 * v['top1']:.1f} % | "
                             f"{100 * v['top5']:.1f} % | {v['median_rank']:.0f} | "
                             f"±{rt['max_shift_ev']} eV |")
    note = ("\nClassifier on max-normalised site spectra, trained on the training split with "
            "shifted/noisy copies; kind chosen on validation ('measured' spectra): "
            + ", ".join(f"{r['element']} {r['classifier']}" for r in rows)
            + ". Groups from RDKit environments (jaxmat.workflows.xanes.inverse."
            f"functional_group); groups with < {args.min_train} training sites pooled as other.")
    write_results(args.out, {"device": device_info(), "settings": vars(args),
                                    "rows": rows}, "\n".join(lines) + "\n" + note)
    print("\n".join(lines) + note)


if __name__ == "__main__":
    main()
