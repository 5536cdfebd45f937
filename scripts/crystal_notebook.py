"""Build and execute notebooks/crystal_properties.ipynb (nbformat + nbclient).

    python scripts/crystal_notebook.py
"""
import os
import time

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "notebooks", "crystal_properties.ipynb")

md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell

cells = [
    md("""# Crystal properties with bond angles (ALIGNN-style) and an equivariant potential (PaiNN)

1. **Line graphs.** A crystal graph (atoms, bonds to periodic images) and its line graph
   (bonds, bond angles), built from JARVIS-DFT POSCARs shipped with jaxmat.
2. **Band gap** (eV) on 50 JARVIS crystals: 5-fold cross-validation of an ALIGNN-style
   model, SchNet with a mean-pooled scalar head, and the training-fold mean.
3. **Electronic DOS** (300-point vector) on the same crystals: 5-fold cross-validation,
   scored by cosine similarity.
4. **PaiNN vs SchNet** as interatomic potentials on one mlearn element (short training).

Everything is scaled down to run in a couple of minutes on two CPU cores: tiny models, few
epochs, 8 nearest neighbours instead of ALIGNN's 12. With 40 training structures per fold
the property numbers are a smoke test of the workflow, not a benchmark
(see `benchmarks/crystal.py` and `benchmarks/mlearn_painn.py`)."""),
    code("""import time
import jax
import numpy as np
import matplotlib.pyplot as plt

from jaxmat import crossval, graph, linegraph, potential, train
from jaxmat.data import jarvis, load_mlearn
from jaxmat.models import (ALIGNNConfig, PaiNNConfig, SchNetConfig, alignn, graph_target,
                           painn, schnet)

T0 = time.time()
gaps = jarvis.load_jarvis_bandgap()
doses = jarvis.load_jarvis_dos()
print(len(gaps), "crystals with band gaps,", len(doses), "with a", jarvis.N_DOS, "point DOS")
print("example:", gaps[0].info["jid"], gaps[0].get_chemical_formula(), gaps[0].cell.cellpar().round(2))"""),
    md("""## Atom graph and line graph

Each atom keeps its 8 nearest neighbours within 8 Å (ties kept, made undirected); the line
graph joins every pair of bonds that share an atom. The model computes cos θ from the edge
vectors (including cell shifts), so it is differentiable in positions and strain."""),
    code("""gap_recs = linegraph.records_from_atoms(gaps, cutoff=8.0, max_neighbors=8)
dos_recs = linegraph.records_from_atoms(doses, cutoff=8.0, max_neighbors=8)
r = gap_recs[0]
print(f"{r.n_node} atoms, {r.n_edge} bonds, {r.n_triplet} bond pairs")
print("all 50:", sum(x.n_edge for x in gap_recs), "bonds,", sum(x.n_triplet for x in gap_recs), "bond pairs")

b = graph.batch(gap_recs[:8])
cos = np.asarray(linegraph.bond_cosines(b))
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.hist(np.degrees(np.arccos(cos)), bins=90, color="0.4")
ax.set_xlabel("bond angle θ (degrees)"); ax.set_ylabel("bond pairs")
ax.set_title("bond angles of 8 JARVIS crystals")
plt.tight_layout(); plt.show()"""),
    md("""## Band gap: 5-fold cross-validation

`crossval.cross_val_predict` trains a fresh model per fold on standardised targets (the
training fold's mean and spread) with one compiled training step for all folds.
SchNet becomes a band-gap regressor through `graph_target`, which mean-pools its atomic
outputs; ALIGNN-style pools atom features before its linear head."""),
    code("""y = np.array([float(r.targets["bandgap"]) for r in gap_recs])
small = dict(n_alignn_layers=1, n_gcn_layers=1, embedding=16, hidden=32, n_bond_rbf=40, n_angle_rbf=20)
models = {
    "ALIGNN-style": alignn(ALIGNNConfig(**small, output_key="bandgap")),
    "SchNet": graph_target(schnet(SchNetConfig(n_features=32, n_interactions=2, n_rbf=40, cutoff=8.0)),
                           key="bandgap"),
}
pred = {}
for name, model in models.items():
    t = time.time()
    pred[name], fold = crossval.cross_val_predict(model, gap_recs, "bandgap", k=5, epochs=8,
                                                  batch_size=10, lr=3e-3)
    print(f"{name}: {time.time() - t:.0f} s")
pred["training-fold mean"] = np.array([y[fold != fold[i]].mean() for i in range(len(y))])
for name, p in pred.items():
    print(f"{name:>20s}: MAE {np.mean(np.abs(p - y)):.3f} eV")

fig, ax = plt.subplots(figsize=(4, 4))
for name, p in pred.items():
    ax.scatter(y, p, s=12, label=name)
ax.plot([0, 6.2], [0, 6.2], "k--", lw=0.8)
ax.set_xlabel("DFT band gap (eV)"); ax.set_ylabel("out-of-fold prediction (eV)"); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()"""),
    md("""## Electronic DOS: a 300-point vector target

The same ALIGNN-style model with a 300-output head. Held-out folds are scored by the
cosine similarity between predicted and DFT DOS, beside predicting the training-fold mean
DOS."""),
    code("""Y = np.stack([r.targets["dos"] for r in dos_recs])
dos_model = alignn(ALIGNNConfig(**small, n_outputs=jarvis.N_DOS, output_key="dos"))
t = time.time()
P, fold = crossval.cross_val_predict(dos_model, dos_recs, "dos", k=5, epochs=8, batch_size=10, lr=3e-3)
print(f"ALIGNN-style DOS: {time.time() - t:.0f} s")
M = np.stack([Y[fold != fold[i]].mean(0) for i in range(len(Y))])

def cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)

print(f"mean cosine similarity: ALIGNN-style {cosine(P, Y).mean():.3f}, training-fold mean DOS {cosine(M, Y).mean():.3f}")
fig, axes = plt.subplots(1, 3, figsize=(10, 2.6), sharey=True)
for ax, i in zip(axes, np.argsort(cosine(P, Y))[[0, len(Y) // 2, -1]]):
    ax.plot(Y[i], "k", lw=1, label="DFT")
    ax.plot(P[i], "C0", lw=1, label="ALIGNN-style")
    ax.plot(M[i], "C1", lw=1, ls=":", label="mean")
    ax.set_title(f"{doses[i].get_chemical_formula()}: cos {cosine(P[i], Y[i]):.2f}", fontsize=9)
    ax.set_xlabel("energy grid point")
axes[0].set_ylabel("DOS"); axes[0].legend(fontsize=7)
plt.tight_layout(); plt.show()"""),
    md("""## PaiNN vs SchNet as potentials on mlearn Mo

Both are energy models; `potential.potential` gives forces (and stress) by `jax.grad`, so
committees, attacks and the ASE calculator use PaiNN exactly as they use SchNet. Same
data, loss, optimiser and epochs for both; 48 training structures and few epochs keep this
short, so the errors are far from converged."""),
    code("""train_atoms = load_mlearn("Mo", "train")[::4]
test_atoms = load_mlearn("Mo", "test")
tr = graph.records_from_atoms(train_atoms, 5.0)
te = graph.records_from_atoms(test_atoms, 5.0)
refs, f_rms = potential.energy_stats(tr)
loader = graph.GraphLoader(tr, batch_size=4)
test_budget = graph.estimate_budget(te, batch_size=8)
loss = train.energy_force_loss(energy=1.0, forces=10.0)
cfgs = {
    "PaiNN": painn(PaiNNConfig(n_features=32, n_interactions=2, n_rbf=16, cutoff=5.0).with_stats(refs, f_rms)),
    "SchNet": schnet(SchNetConfig(n_features=32, n_interactions=2, n_rbf=32, cutoff=5.0).with_stats(refs, f_rms)),
}
n_at = np.array([r.n_node for r in te])
e_true = np.array([r.targets["energy"] for r in te])
f_true = np.concatenate([r.node_targets["forces"] for r in te])
forces_pred = {}
for name, energy_model in cfgs.items():
    model = potential.potential(energy_model, stress=False)
    params = model.init(jax.random.key(0), next(iter(loader)))
    res = train.fit(model, params, loader, None, loss,
                    train.FitConfig(epochs=6, lr=3e-3, progress=False))
    apply = jax.jit(model.apply)
    e, f = [], []
    for grp in graph.pack(te, test_budget):
        out = apply(res.last_params, graph.batch([te[k] for k in grp], test_budget))
        e.extend(np.asarray(out["energy"])[: len(grp)])
        f.append(np.asarray(out["forces"])[: sum(te[k].n_node for k in grp)])
    forces_pred[name] = np.concatenate(f)
    print(f"{name}: {res.seconds:.0f} s training; test energy MAE "
          f"{1e3 * np.mean(np.abs((np.array(e) - e_true) / n_at)):.1f} meV/atom, "
          f"force MAE {np.mean(np.abs(forces_pred[name] - f_true)):.3f} eV/Å")

fig, ax = plt.subplots(figsize=(4, 4))
for name, f in forces_pred.items():
    ax.scatter(f_true.ravel(), f.ravel(), s=3, alpha=0.4, label=name)
lim = np.abs(f_true).max()
ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
ax.set_xlabel("DFT force component (eV/Å)"); ax.set_ylabel("predicted (eV/Å)"); ax.legend()
plt.tight_layout(); plt.show()
print(f"notebook time: {time.time() - T0:.0f} s")"""),
]

nb = nbformat.v4.new_notebook()
nb.cells = cells
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
t = time.time()
NotebookClient(nb, timeout=900, kernel_name="python3",
               resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
nbformat.write(nb, OUT)
print(f"wrote {OUT} ({time.time() - t:.0f} s)")
