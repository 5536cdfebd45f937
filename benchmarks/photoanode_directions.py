"""Photoanode directions on fresh simulated libraries: total-effect ranking, confounding flags,
the boundary warning and the composition → spectrum fit warning.

Two sets of simulated libraries (:class:`jaxmat.data.photoanode_sim.LibraryConfig`), never
the shipped file:

* **validation** (seeds 1–3; Gd the planted confounder, the default hull, crystallinity
  κ = 0, 0.5, 1.0) — the two thresholds are chosen here, where the truth is known:
  ``interpret.SPECTRUM_FIT_MIN_R2`` (the composition → spectrum fit below which total
  effects are not trusted) and ``interpret.BOUNDARY_MIN_INSIDE`` (the fraction of in-hull
  1 at.% steps below which a reference sample gets the boundary sentence);
* **test** (seeds 21–23; Tb and W the planted confounders, a narrower V site and a wider Bi
  site, κ = 0.2) — reported once with the chosen thresholds.

Per library: the default committee (``fit_committee``, 4 members) on the 203-point Raman
grid of the shipped file (every 5th point); flags on the training rows vs the planted
confounders; the composition → spectrum fit on validation rows; the cosine of the
committee-mean total gradient vs the exact one; from ``--refs`` random training rows plus
the median-P and best-P training rows: the Spearman correlation of the model's total-effect
ranking of every 1 at.% step with the exact total effects, and the boundary report
(``interpret.boundary_report``). "Hull" references sit on a facet (depth 0: some step
direction leaves at once), "interior" ones can move ≥ 1 at.% along every step.

Resumable: each library's numbers are cached in ``--cache`` as they are computed.

    python benchmarks/photoanode_directions.py [--epochs 60] [--members 4] [--refs 24]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, write_results  # noqa: E402

from jaxmat import interpret  # noqa: E402
from jaxmat.data import photoanode as pa  # noqa: E402
from jaxmat.data import photoanode_sim as sim  # noqa: E402
from jaxmat.workflows import photoanode as pw  # noqa: E402

VALIDATION = [dict(seed=1, broadening=(("Gd", 200.0),), crystallinity=0.0),
              dict(seed=2, broadening=(("Gd", 200.0),), crystallinity=0.5),
              dict(seed=3, broadening=(("Gd", 200.0),), crystallinity=1.0)]
TEST = [dict(seed=s, broadening=(("Tb", 200.0), ("W", 150.0)), v_site_max=0.07, p_v_site=0.6,
             b_site_max=0.10, p_b_site=0.35, bi_site=0.02, crystallinity=0.2) for s in (21, 22, 23)]
STEP = 0.01


def subsample(table, every: int = 5):
    return dataclasses.replace(table, raman_shift=table.raman_shift[::every],
                               spectrum=table.spectrum[:, ::every])


def total_grads(fit, batch) -> np.ndarray:
    """Per-member total gradients (M, n, n_el), mW/cm² per unit fraction."""
    return np.asarray(jax.vmap(lambda p, q: interpret.total_gradients(
        fit.model, p, fit.spectrum_model, q, batch, scale=fit.scaler.std))(
        fit.params, fit.spectrum_params))


def cosine(a, b) -> float:
    a, b = np.asarray(interpret.tangent(a)).ravel(), np.asarray(interpret.tangent(b)).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_numbers(fit, x, g_model, g_exact, name: str, row: int) -> dict:
    """Boundary report and the Spearman correlation of the model's total-effect slopes over
    every 1 at.% step (and over the in-hull ones) with the exact total slopes."""
    xs = np.asarray(x, np.float64)
    steps = interpret.alloying_steps(xs, fit.elements, STEP)
    D = np.stack([d for _, _, d in steps])
    model = STEP * (np.asarray(g_model) @ D.T).mean(0)
    exact = STEP * np.asarray(g_exact, np.float64) @ D.T
    bd = interpret.boundary_report(xs, fit.hull, fit.elements, STEP, min_inside=0.0)
    inside = np.array([bd.room[(a, h)] >= 100 * STEP - 1e-6 for a, h, _ in steps])
    rho_in = float(spearmanr(model[inside], exact[inside])[0]) if inside.sum() > 2 else float("nan")
    top = int(np.argmax(np.where(inside, model, -np.inf))) if inside.any() else None
    return {"row": row, "name": name, "fraction_inside": bd.fraction_inside, "n_inside": bd.n_inside,
            "n_steps": bd.n_steps, "depth": bd.depth, "inside": bd.inside,
            "spearman_all": float(spearmanr(model, exact)[0]), "spearman_inside": rho_in,
            "top_inside_exact": None if top is None else float(exact[top]),
            "top_inside_model": None if top is None else float(model[top]),
            "top_all_sign_right": bool(exact[np.argmax(model)] > 0)}


def run_library(spec: dict, args) -> dict:
    cfg = sim.LibraryConfig(n_samples=args.n_samples, **spec)
    table, truth = sim.simulate_library(cfg)
    table = subsample(table)
    split = pw.split_library(len(table), (0.7, 0.1, 0.2), seed=cfg.seed)
    t = time.perf_counter()
    fit = pw.fit_committee(table, split, members=args.members, epochs=args.epochs, seed=cfg.seed)
    fit_s = time.perf_counter() - t
    out = {"spec": {k: v for k, v in spec.items()}, "confounders": list(cfg.confounders),
           "fit_s": fit_s, "best_epoch": fit.best_epoch}
    # flags (training rows, as fit_committee runs them) vs the planted confounders
    out["flagged"] = fit.flags.flagged
    out["flags_exact"] = sorted(out["flagged"]) == sorted(cfg.confounders)
    out["confounding"] = [{k: r[k] for k in ("element", "conditional", "total", "conditional_spread",
                                             "total_spread", "gap_spread", "flagged", "reason")} for r in fit.flags]
    exact_tr = np.asarray(interpret.simplex_derivatives(truth["grad_total"][split.train],
                                                        table.composition[split.train]))
    exact_cd = np.asarray(interpret.simplex_derivatives(truth["grad"][split.train],
                                                        table.composition[split.train]))
    out["exact_gap"] = {e: float(exact_tr[:, k].mean() - exact_cd[:, k].mean())
                        for k, e in enumerate(table.elements)}
    out["spectrum_fit_val"] = fit.spectrum_fit
    # total-gradient fidelity on the rows this set may read (validation rows for the validation
    # libraries, test rows for the test libraries)
    rows = split.val if args.which == "validation" else split.test
    sub = table.subset(rows)
    b = fit.batch(sub)
    gt = total_grads(fit, b)
    gc = np.asarray(interpret.committee(lambda p: interpret.input_gradients(
        fit.model, p, b, "composition", "P", fit.scaler.std), fit.params))
    out["cosine_total"] = cosine(gt.mean(0), truth["grad_total"][rows])
    out["cosine_fixed"] = cosine(gc.mean(0), truth["grad"][rows])
    if args.which == "test":
        ev = fit.evaluate(sub)
        out["test_r2"], out["test_mae"] = ev["r2"], ev["mae"]
        out["spectrum_fit_test"] = {k: v for k, v in ev["spectrum"].items()}
    # references: random training rows + the median-P and the best-P training rows
    tr = split.train
    rng = np.random.default_rng(cfg.seed)
    y = table.target[tr]
    named = {"median": int(tr[np.argsort(y)[len(y) // 2]]), "best": int(tr[np.argmax(y)])}
    picks = list(rng.choice(tr, size=args.refs, replace=False)) + list(named.values())
    rb = fit.batch(table.subset(np.array(picks)))
    g_ref = total_grads(fit, rb)  # (M, R, n_el)
    refs = [ref_numbers(fit, table.composition[k], g_ref[:, r], truth["grad_total"][k],
                        next((n for n, v in named.items() if v == k), ""), int(k))
            for r, k in enumerate(picks)]
    # interior references: the training centroid and training rows pulled half-way to it, with
    # the generator's noise-free spectrum of a typical sample (u = j = c = 0)
    cen = table.composition[tr].mean(0)
    xi = np.vstack([cen, 0.5 * table.composition[rng.choice(tr, args.interior, replace=False)] + 0.5 * cen])
    spec, _ = sim.spectra_at(xi, config=cfg)
    nu = table.raman_shift
    bi = {"composition": xi.astype(np.float32), "mask": np.ones(len(xi), bool),
          "spectrum": pa.normalize_spectra(spec[:, ::5], nu).astype(np.float32)}
    g_int = total_grads(fit, bi)
    g_exact = np.asarray(sim.total_power_gradient(xi, np.zeros(len(xi)), cfg, np.zeros(len(xi))))
    refs += [ref_numbers(fit, xi[r], g_int[:, r], g_exact[r], "centroid" if r == 0 else "pulled", -1)
             for r in range(len(xi))]
    out["refs"] = refs
    # the product path once: fit.directions from the median sample (ranked by total effect)
    med = pw.reference_batch(table, named["median"])
    d = fit.directions(med)
    out["median_table"] = d.table(top=6)
    return out


def choose_boundary(refs: list[dict], good: float) -> dict:
    """BOUNDARY_MIN_INSIDE: the fraction maximising Youden's J for "Spearman of the total-effect
    ranking over every step < ``good``" on the validation references."""
    f = np.array([r["fraction_inside"] for r in refs])
    bad = np.array([r["spearman_all"] < good for r in refs])
    best = {"threshold": 0.5, "J": -1.0}
    for th in np.round(np.arange(0.1, 0.95, 0.05), 2):
        warn = f < th
        tpr = warn[bad].mean() if bad.any() else 0.0
        fpr = warn[~bad].mean() if (~bad).any() else 0.0
        if tpr - fpr > best["J"] + 1e-12:
            best = {"threshold": float(th), "J": float(tpr - fpr), "tpr": float(tpr), "fpr": float(fpr)}
    best["n_refs"], best["n_unreliable"], best["good"] = len(refs), int(bad.sum()), good
    return best


def choose_spectrum(libs: list[dict], cos_min: float) -> dict:
    """SPECTRUM_FIT_MIN_R2: between the lowest validation ``r2_read`` of a library whose total
    gradients are trustworthy (cosine ≥ ``cos_min`` and flags exact) and the highest of one
    whose are not (midpoint); below every trustworthy library when none failed."""
    ok = [lb["spectrum_fit_val"]["r2_read"] for lb in libs
          if lb["cosine_total"] >= cos_min and lb["flags_exact"]]
    bad = [lb["spectrum_fit_val"]["r2_read"] for lb in libs
           if not (lb["cosine_total"] >= cos_min and lb["flags_exact"])]
    if ok and bad and max(bad) < min(ok):
        th = 0.5 * (max(bad) + min(ok))
    elif ok and not bad:
        th = min(ok) - 0.05
    elif bad and not ok:
        th = max(bad) + 0.05
    else:  # overlapping: the threshold that misclassifies fewest, ties to the higher value
        cands = sorted(ok + bad)
        th = max(cands, key=lambda t: sum(v >= t for v in ok) + sum(v < t for v in bad))
    return {"threshold": round(float(th), 2), "trustworthy_r2": ok, "untrustworthy_r2": bad,
            "cos_min": cos_min}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--refs", type=int, default=24)
    ap.add_argument("--n-samples", type=int, default=1379)
    ap.add_argument("--interior", type=int, default=8)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "jaxmat_photoanode_directions"))
    ap.add_argument("--only", choices=["validation", "test", "all"], default="all")
    ap.add_argument("--seeds", type=int, nargs="*", help="compute only these libraries (no report)")
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    t0 = time.perf_counter()
    sets = {"validation": VALIDATION, "test": TEST}
    res: dict = {"config": {k: v for k, v in vars(args).items() if k != "cache"}}
    for which, specs in sets.items():
        if args.only not in ("all", which):
            continue
        args.which = which
        libs = []
        for spec in specs:
            path = os.path.join(args.cache, f"{which}_{spec['seed']}_e{args.epochs}_m{args.members}"
                                            f"_r{args.refs}_i{args.interior}_n{args.n_samples}.json")
            if os.path.exists(path):
                libs.append(json.load(open(path)))
                continue
            if args.seeds and spec["seed"] not in args.seeds:
                continue
            lib = run_library(spec, args)
            json.dump(lib, open(path, "w"), indent=1, default=float)
            libs.append(lib)
            print(which, spec["seed"], "flagged", lib["flagged"], "planted", lib["confounders"],
                  "cos_total", round(lib["cosine_total"], 3), "r2_read",
                  round(lib["spectrum_fit_val"]["r2_read"], 3), f"fit {lib['fit_s']:.0f} s", flush=True)
        res[which] = libs
    if args.only != "all" or args.seeds:
        return
    val_refs = [r for lb in res["validation"] for r in lb["refs"]]
    res["choice"] = {"boundary": choose_boundary(val_refs, good=0.9),
                     "spectrum": choose_spectrum(res["validation"], cos_min=0.9)}
    res["report"] = report(res)
    res["device"] = device_info()
    res["total_s"] = time.perf_counter() - t0
    write_results("photoanode_directions", res, summary(res))
    print(summary(res))


def report(res: dict) -> dict:
    """The test-set numbers with the chosen thresholds."""
    fb = res["choice"]["boundary"]["threshold"]
    fs = res["choice"]["spectrum"]["threshold"]
    out = {}
    for lb in res["test"]:
        refs = lb["refs"]
        hull = [r for r in refs if r["depth"] < 1e-6]
        interior = [r for r in refs if r["depth"] >= 100 * STEP - 1e-6]
        med = next(r for r in refs if r["name"] == "median")
        best = next(r for r in refs if r["name"] == "best")
        warned = [r for r in refs if r["fraction_inside"] < fb]
        quiet = [r for r in refs if r["fraction_inside"] >= fb]
        out[lb["spec"]["seed"]] = {
            "flagged": lb["flagged"], "planted": lb["confounders"], "flags_exact": lb["flags_exact"],
            "spearman_median_ref": med["spearman_all"], "spearman_median_ref_inside": med["spearman_inside"],
            "spearman_interior_median": float(np.median([r["spearman_all"] for r in interior]))
            if interior else float("nan"),
            "spearman_all_refs_median": float(np.median([r["spearman_all"] for r in refs])),
            "warn_rate_hull": float(np.mean([r["fraction_inside"] < fb for r in hull])) if hull else float("nan"),
            "warn_rate_interior": float(np.mean([r["fraction_inside"] < fb for r in interior]))
            if interior else float("nan"),
            "n_hull": len(hull), "n_interior": len(interior),
            "spearman_warned_median": float(np.median([r["spearman_all"] for r in warned])) if warned else float("nan"),
            "spearman_quiet_median": float(np.median([r["spearman_all"] for r in quiet])) if quiet else float("nan"),
            "best_ref": {"fraction_inside": best["fraction_inside"], "warned": best["fraction_inside"] < fb,
                         "spearman": best["spearman_all"]},
            "spectrum_warning": lb["spectrum_fit_val"]["r2_read"] < fs,
            "cosine_total": lb["cosine_total"], "cosine_fixed": lb["cosine_fixed"],
            "test_r2": lb["test_r2"]}
    return out


def summary(res: dict) -> str:
    ch = res["choice"]
    cb, cs = ch["boundary"], ch["spectrum"]
    rows = ["Thresholds chosen on the validation libraries (seeds 1–3, Gd planted, κ = 0 / 0.5 / 1.0):",
            f"- boundary: warn when fewer than **{cb['threshold']:.2f}** of the 1 at.% steps stay in the "
            f"training hull (Youden J {cb['J']:.2f}: warns on {cb.get('tpr', 0):.0%} of the {cb['n_unreliable']} "
            f"references whose total-effect ranking has Spearman < {cb['good']} and on {cb.get('fpr', 0):.0%} "
            f"of the other {cb['n_refs'] - cb['n_unreliable']});",
            f"- composition → spectrum fit: warn when the held-out R² where P reads the spectrum is below "
            f"**{cs['threshold']:.2f}** (trustworthy libraries, total cosine ≥ {cs['cos_min']} and flags exact: "
            f"R² {[round(v, 2) for v in cs['trustworthy_r2']]}; the others: "
            f"{[round(v, 2) for v in cs['untrustworthy_r2']]}).", "",
            "| validation seed | κ | flagged / planted | total cosine | R² spectrum (whole / where P reads) |",
            "|---|---|---|---|---|"]
    for lb in res["validation"]:
        sf = lb["spectrum_fit_val"]
        rows.append(f"| {lb['spec']['seed']} | {lb['spec'].get('crystallinity', 0)} | "
                    f"{lb['flagged']} / {lb['confounders']} | {lb['cosine_total']:.3f} | "
                    f"{sf['r2']:.2f} / {sf['r2_read']:.2f} |")
    rows += ["", "Test libraries (seeds 21–23: Tb and W planted, V site ≤ 7 at.%, Bi site dopants ≤ 10 at.%, "
             "κ = 0.2), reported once:", "",
             "| seed | flagged / planted | test R² | total cosine | Spearman, median-P ref | "
             "Spearman, interior refs (median) | warning on hull refs | on interior refs | "
             "Spearman warned / not | spectrum warning |", "|---|---|---|---|---|---|---|---|---|---|"]
    for seed, r in res["report"].items():
        rows.append(f"| {seed} | {r['flagged']} / {r['planted']} | {r['test_r2']:.3f} | "
                    f"{r['cosine_total']:.3f} | {r['spearman_median_ref']:.3f} | "
                    f"{r['spearman_interior_median']:.3f} | {r['warn_rate_hull']:.0%} of {r['n_hull']} | "
                    f"{r['warn_rate_interior']:.0%} of {r['n_interior']} | "
                    f"{r['spearman_warned_median']:.2f} / {r['spearman_quiet_median']:.2f} | "
                    f"{'yes' if r['spectrum_warning'] else 'no'} |")
    first = res["test"][0]
    rows += ["", f"From the median-P training sample of seed {first['spec']['seed']} (`fit.directions`):",
             "", "```", first["median_table"], "```", "",
             f"{res['config']['members']} members × {res['config']['epochs']} epochs per library, "
             f"{res['config']['refs']} random training rows + the median-P and best-P rows as references; "
             f"total {res['total_s']:.0f} s on a shared CPU under load."]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
