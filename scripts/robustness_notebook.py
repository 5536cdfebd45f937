"""Build and execute notebooks/adversarial_robustness.ipynb (nbformat + nbclient) from the
results of benchmarks/robustness.py.

    python scripts/robustness_notebook.py
"""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "notebooks", "adversarial_robustness.ipynb")

md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell

cells = [
    md("""# Robust simulations per oracle label: adversarial vs random vs normal-mode vs committee-MD sampling

Does a sampling strategy make the simulations a potential drives *survive*, and with how
many oracle labels? After Schwalbe-Koda, Tan & Gómez-Bombarelli, *Nat. Commun.* **12**, 5104
(2021), whose headline is that adversarial sampling reaches stable NN-driven MD with far
fewer labels than conventional active learning.

`benchmarks/robustness.py` measures this with **one protocol for every strategy** (fixed
before any reported run):

* NH3, oracle GFN2-xTB (tblite). Each seed draws 8 labelled training frames and 16 MD start
  frames (disjoint) from a pool of 240 frames of 300 K GFN2-xTB MD; all strategies of a seed
  share them, and the frames differ between seeds.
* Every strategy labels **8 structures per round for 6 rounds** (failed oracle calls count as
  spent), and every round trains the same 3-member SchNet committee for the same 100 epochs
  (warm start, same training seed). C₁ (initial frames only) is the same for all strategies.
* Every committee drives 32 Langevin replicas (16 start frames × 2, Maxwell–Boltzmann
  velocities, the same MD seed for all strategies) for 1 ps at **1,000 K and 1,500 K** on
  `jaxmat.md`. Two success criteria: **physical** — no unphysical structure (atoms < 0.6 Å,
  a bond beyond 1.6 × covalent, a covalent graph changed for 5 fs, non-finite values: the
  MD detector's geometric and topological criteria, the paper's criterion); **accurate** —
  physical *and* every GFN2-xTB spot check (every 250 fs) within 0.1 eV/atom and 1 eV/Å.
* Strategies, each with one knob tuned on validation seeds 100 and 101 by the mean accurate
  success over rounds and temperatures (3 values each, 2 seeds; a strategy whose best value
  lay at an edge of its grid got one more value beyond it): adversarial attack (kT of the
  Boltzmann factor), random Gaussian displacements of training frames (σ), normal-mode
  sampling (harmonic Boltzmann samples at T with the committee's Hessian), committee MD on
  `jaxmat.md` (temperature; each replica stopped at the first frame over the training σ
  percentile or 0.25 eV/atom beyond the committee's training energy range).
* Reported: seeds 0–9 with the chosen settings; 95 % bootstrap intervals over seeds; paired
  differences at matched labels with exact sign-flip p-values; oracle calls needed to reach
  0.9 and 0.95 success per seed."""),
    code("""import json, os
import numpy as np
import matplotlib.pyplot as plt
import jaxmat

RESULTS = os.path.join(os.path.dirname(os.path.dirname(jaxmat.__file__)), "benchmarks", "results")
with open(os.path.join(RESULTS, "robustness_protocol_nh3_validation.json")) as f:
    val = json.load(f)
with open(os.path.join(RESULTS, "robustness_protocol_nh3.json")) as f:
    rep = json.load(f)
print("protocol:", {k: v for k, v in rep["protocol"].items()})"""),
    md("## Tuning on validation seeds (100, 101)"),
    code("""scores = {}
for run in val["runs"].values():
    scores.setdefault(run["strategy"], []).append(np.mean(
        [[r[t]["accurate"] for t in r if t.startswith("T")] for r in run["rounds"]]))
for name, s in sorted(scores.items()):
    print(f"{name:24s} mean accurate success {np.mean(s):.3f}  (seeds: {np.round(s, 3).tolist()})")
print("chosen:", rep["names"])"""),
    md("## Success against oracle calls (seeds 0–9)"),
    code("""cmp = rep["compare"]
keys = list(cmp["tables"])
fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), sharey=True)
for ax, key in zip(axes, keys):
    for n in rep["names"]:
        t = cmp["tables"][key][n]
        ax.plot(cmp["oracle_calls"], t["mean"], marker="o", ms=3, label=n)
        ax.fill_between(cmp["oracle_calls"], t["lo"], t["hi"], alpha=0.2)
    ax.set_title(key.replace("/", ", "), fontsize=9)
    ax.set_xlabel("oracle calls")
axes[0].set_ylabel("successful replicas")
axes[0].legend(fontsize=7)
plt.tight_layout()"""),
    code("""adv = next(n for n in rep["names"] if n.startswith("adversarial"))
for key, tab in cmp["tables"].items():
    print(f"--- {key}")
    for n in rep["names"]:
        t = tab[n]
        lt = {lv: [int(v) if np.isfinite(v) else None for v in t["labels_to"][lv]]
              for lv in t["labels_to"]}
        print(f"{n:24s} final {t['mean'][-1]:.2f} [{t['lo'][-1]:.2f}, {t['hi'][-1]:.2f}]; "
              f"calls to 0.9 per seed {lt['0.9']}")
    for n in rep["names"]:
        if n == adv:
            continue
        d = tab[n]["adv_minus"]
        best = tab[n]["calls_to_best"]
        print(f"  {adv} − {n}: " + ", ".join(f"{c}: {x['mean']:+.2f} (p {x['p']:.3f})"
                                          for c, x in zip(cmp["oracle_calls"], d)))
        print(f"    {n} best mean {tab[n]['best_mean']:.2f} at {best['baseline']:.0f} calls; "
              f"{adv} reaches it at {best['adversarial']} calls")"""),
    md("""## The result, as measured

The cell below states, for the accurate criterion at each temperature, the ratio of
oracle calls adversarial sampling needs to reach each baseline's best mean success to the
calls the baseline needs (the paper's goal: ≤ 1/2 on a flexible molecule). NH3 is rigid; the
second, flexible system is not part of this run (see the benchmark README)."""),
    code("""for key, tab in cmp["tables"].items():
    for n in rep["names"]:
        if n == adv:
            continue
        b = tab[n]["calls_to_best"]
        ratio = (b["adversarial"] / b["baseline"]) if b["adversarial"] else None
        print(f"{key:22s} vs {n:22s}: " + (f"{ratio:.2f}x the calls" if ratio is not None
                                           else "adversarial never reaches it"))"""),
]

nb = nbformat.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
client = NotebookClient(nb, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
client.execute()
nbformat.write(nb, OUT)
print(f"wrote {OUT}")
