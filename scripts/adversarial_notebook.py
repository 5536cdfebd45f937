"""Build and execute notebooks/adversarial_ammonia.ipynb (nbformat + nbclient).

    python scripts/adversarial_notebook.py
"""
import os
import time

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "notebooks", "adversarial_ammonia.ipynb")

md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell

cells = [
    md("""# Adversarial sampling of ammonia's inversion with a GFN2-xTB oracle

After Schwalbe-Koda, Tan & Gómez-Bombarelli, *Nat. Commun.* **12**, 5104 (2021). A committee
of SchNet potentials is trained on NH3 geometries that never come close to the planar
transition state of the umbrella inversion (N at least 0.2 Å above the H3 plane). Each
generation, starting geometries are displaced by δ to maximise

$$A(\\delta) = \\overline{\\mathrm{Var}_\\mathrm{committee}\\,F(R+\\delta)}\\;\\frac{e^{-\\bar E(R+\\delta)/kT}}{\\langle e^{-E/kT}\\rangle_\\mathrm{train}},$$

by `jax.grad` through the committee (all starts in one compiled program). The most uncertain,
non-duplicate geometries are labelled by GFN2-xTB (tblite), stored in an ASE database as
soon as computed, and the committee is retrained. The same oracle budget is spent on random
displacements and on committee molecular dynamics for comparison.

Everything is scaled down to run in a couple of minutes on two CPU cores (40 seed
geometries, 3 tiny SchNet members, 3 generations of 8 labels); `benchmarks/adversarial_ammonia.py`
runs the full-size comparison."""),
    code("""import os, sys, tempfile, time
import numpy as np
import matplotlib.pyplot as plt
import jaxmat
from jaxmat import active, data, oracle

# helpers shared with the benchmark: N height, C3v geometries, oracle inversion path, MD test set
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(jaxmat.__file__)), "benchmarks"))
import adversarial_ammonia as bench

T0 = time.time()
xtb = oracle.xtb("GFN2-xTB")          # verbosity 0, one OpenMP thread per call
print(xtb)
seeds = data.load_ammonia()[::3][:40]  # geometries only: the oracle relabels them
print(len(seeds), "seed geometries; N height",
      f"{min(bench.n_height(a.positions) for a in seeds):.3f}-{max(bench.n_height(a.positions) for a in seeds):.3f} Å")"""),
    md("""## The oracle's answer

The relaxed C3v inversion path (for each N height the N–H length minimising the GFN2-xTB
energy) gives the barrier the committees should learn. An independent test set comes from
1500 K GFN2-xTB Langevin dynamics."""),
    code("""path = bench.inversion_path(xtb, np.linspace(0.0, 0.6, 13))
print(f"GFN2-xTB inversion barrier {path['barrier']:.4f} eV (minimum at h = {path['h_min']:.3f} Å)")
start = bench.c3v_geometry(path["h_min"], path["r_min"])
test = bench.md_test_set(xtb, start, temperature_K=1500.0, n_traj=2, n_steps=300, every=10)
print(len(test), "test frames; N heights",
      f"{min(bench.n_height(a.positions) for a in test):.2f}-{max(bench.n_height(a.positions) for a in test):.2f} Å")"""),
    md("""## Three samplers, one oracle budget

The same loop (`jaxmat.workflows.adversarial.active.run`) with three proposal strategies; every run is resumable
from its work directory (`labels.db`, committee checkpoints, `progress.jsonl`)."""),
    code("""CUTOFF = 5.0
labelled_seeds = [xtb.label(a).attach(a) for a in seeds]   # only to fit the model's energy scale
model = bench.make_model(labelled_seeds, features=16, interactions=2, cutoff=CUTOFF)
evaluate = bench.make_evaluator(model, path, test)
work = tempfile.mkdtemp(prefix="adversarial_")
runs = {}
for strategy in ("adversarial", "random", "md"):
    cfg = active.ActiveConfig(
        workdir=os.path.join(work, strategy), strategy=strategy, generations=3, seed=0,
        n_members=3, fit=dict(epochs=60, lr=3e-3, batch_size=16), forces_weight=10.0,
        kT=20 * data.KCAL_MOL, n_starts=48, attack=dict(n_steps=60, lr=0.01, sigma=0.01),
        select=dict(percentile=90.0, rmsd=0.05, permute=True, max_per_generation=8, fill=True),
        random_sigma=0.1, md_temperature=1500.0, md_steps=200, md_interval=10, md_starts=2,
        progress=False)
    t = time.time()
    runs[strategy] = active.run(cfg, model, xtb, seeds, evaluate=evaluate)
    last = runs[strategy].reports[-1]
    print(f"{strategy:12s} {time.time() - t:5.0f} s  oracle calls {last['oracle_calls']}  "
          f"barrier {last['eval_barrier']:.3f} eV  test force MAE {last['eval_test_force_mae']:.3f} eV/Å")"""),
    md("""## Energy along the inversion coordinate, generation by generation

Committee mean ± σ (adversarial run) on the oracle's relaxed path, energies relative to each
committee's own value at the oracle minimum. Generation *g* is the committee trained on all
labels of generations < *g*; the last one has seen every label."""),
    code("""reps = runs["adversarial"].reports
fig, axes = plt.subplots(1, len(reps), figsize=(3.2 * len(reps), 3), sharey=True)
e_ref = path["energy"] - path["e_min"]
for ax, r in zip(axes, reps):
    m, s = np.array(r["path_energy_mean"]), np.array(r["path_energy_std"])
    for sign in (1, -1):
        ax.plot(sign * path["h"], e_ref, "k-", lw=1.5, label="GFN2-xTB" if sign > 0 else None)
        ax.plot(sign * path["h"], m, "C0-", label="committee" if sign > 0 else None)
        ax.fill_between(sign * path["h"], m - s, m + s, color="C0", alpha=0.3)
    ax.set_title(f"gen {r['generation']}: {r['n_train']} labels\\nbarrier {r['eval_barrier']:.3f} eV")
    ax.set_xlabel("N height above H$_3$ plane (Å)")
    ax.set_ylim(-0.1, 0.6)
axes[0].set_ylabel("energy (eV)")
axes[0].legend(fontsize=8)
plt.tight_layout()"""),
    md("""## Where the attacked geometries land

N height and oracle energy (relative to the lowest seed) of every labelled geometry. The
seeds never reach the planar region; the attacks go there in the first generation."""),
    code("""fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
e0 = min(a.get_potential_energy() for a in labelled_seeds)
for ax, (strategy, res) in zip(axes, runs.items()):
    for a in res.store.labelled():
        g = a.info["generation"]
        ax.scatter(bench.n_height(a.positions), a.get_potential_energy() - e0, s=12 if g else 6,
                   c="0.7" if g == 0 else f"C{g}", label=None)
    for g in range(1, 4):
        ax.scatter([], [], c=f"C{g}", s=12, label=f"gen {g}")
    ax.scatter([], [], c="0.7", s=6, label="seeds")
    ax.plot(path["h"], path["energy"] - e0, "k-", lw=1)
    ax.set_title(strategy)
    ax.set_xlabel("N height (Å)")
    ax.set_ylim(-0.1, 3.0)
axes[0].set_ylabel("GFN2-xTB energy (eV)")
axes[0].legend(fontsize=8)
plt.tight_layout()
for strategy, res in runs.items():
    hs = [bench.n_height(a.positions) for a in res.store.labelled() if a.info["generation"] > 0]
    print(f"{strategy:12s} lowest N height among new labels {min(hs):.3f} Å")"""),
    md("""## Error against oracle calls

Force MAE of the committee mean on the 1500 K test set and the error of the predicted
barrier, for the committees of every generation (same number of labels per generation for
all three strategies)."""),
    code("""fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for strategy, res in runs.items():
    calls = [r["n_train"] for r in res.reports]
    axes[0].plot(calls, [r["eval_test_force_mae"] for r in res.reports], "o-", label=strategy)
    axes[1].plot(calls, [abs(r["eval_barrier"] - path["barrier"]) for r in res.reports], "o-", label=strategy)
axes[0].set_ylabel("test force MAE (eV/Å)")
axes[1].set_ylabel("|barrier error| (eV)")
for ax in axes:
    ax.set_xlabel("oracle labels in training")
    ax.legend(fontsize=8)
plt.tight_layout()
print(f"total {time.time() - T0:.0f} s")"""),
    md("""With these tiny settings the numbers are a smoke test of the workflow; the full
comparison (5-member SchNet committees, 256 attacked starts, 5 generations of 20 labels) is
in `benchmarks/results/adversarial_ammonia.md`. To point the loop at your own system, give
`jaxmat.workflows.adversarial.active.run` any ASE structures, any jaxmat potential and any ASE calculator wrapped
as an `Oracle` (`jaxmat.workflows.adversarial.oracle.Oracle(name, factory, settings)`)."""),
]

nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
    "name": "python3", "display_name": "Python 3", "language": "python"}})
t = time.time()
NotebookClient(nb, timeout=900, kernel_name="python3",
               resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
nbformat.write(nb, OUT)
print(f"wrote {OUT} in {time.time() - t:.0f} s")
