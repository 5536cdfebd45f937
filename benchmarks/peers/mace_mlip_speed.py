"""The same MACE in mlip and in jaxmat: energies/forces agreement and inference throughput.

    bash benchmarks/peers/setup_mlip.sh
    OMP_NUM_THREADS=1 taskset -c 1 .venv-mlip/bin/python benchmarks/peers/mace_mlip_speed.py

An mlip MACE with the configuration of the issue's peer run (2 layers, 32 channels, l_max 2,
correlation 3, readout 16x0e, 8 Bessel functions, radial MLP 64×3, 5 Å; mlip's defaults
otherwise: node features to l_max, no residual in the first layer) is initialised and
imported into jaxmat (``mace_mlip_extract.py`` beside this script), so both libraries evaluate *the same
weights*. On 32 distorted ethanol molecules (9 atoms) it reports the largest energy and
force differences (float32 on both sides) and the end-to-end inference throughput of each
library's batched API (mlip ``run_batched_inference``, jaxmat ``predict``; host graph
building included, batch 32) and jaxmat's jitted apply on a prebuilt batch, as CPU seconds
of this process in alternated rounds. Results: ``benchmarks/results/peers_mace_mlip.*``
(``--out peers_mace_mlip_keep`` with ``JAXMAT_HOST_MEMORY=keep``: XLA's CPU buffers kept
mapped, which serves both libraries in the process).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def structures(n: int, seed: int = 0):
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(scale=0.08, size=a.positions.shape)
        out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="peers_mace_mlip", help="results name")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import jax
    import mlip
    from mlip.data import DatasetInfo
    from mlip.inference import run_batched_inference
    from mlip.models import ForceField, Mace
    from mlip.models.mace.config import MaceConfig

    from common import device_info, write_results
    from mace_libs import timed  # one warm-up call, then medians of wall and CPU s
    from jaxmat import graph, potential, predict
    import mace_mlip_extract as mace_mlip
    from jaxmat.models import mace_import
    from jaxmat.models.mace import mean_neighbors

    mols = structures(32)
    cutoff = 5.0
    avg = mean_neighbors([graph.atoms_to_record(a, cutoff) for a in mols])
    ds = DatasetInfo(atomic_energies_map={1: -13.6, 6: -1029.8, 8: -2041.9},
                     graph_cutoff_angstrom=cutoff, avg_num_neighbors=avg, avg_r_min_angstrom=1.0)
    cfg = MaceConfig(num_layers=2, num_channels=32, l_max=2, correlation=3,
                     readout_irreps=("16x0e", "0e"), num_rbf=8, radial_mlp_hidden=[64, 64, 64])
    ff = ForceField.from_mlip_network(Mace(config=cfg, dataset_info=ds), seed=0)
    t0 = time.perf_counter()
    ex = mace_mlip.extract(ff)
    t_extract = time.perf_counter() - t0
    model, params = mace_import.build(ex)
    pot = potential.potential(model)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)

    def run_mlip():
        return run_batched_inference(mols, ff, batch_size=32)

    def run_jaxmat():
        return predict(pot, params, mols, batch_size=32, keys=("energy", "forces"))

    batch = graph.to_device(graph.batch([graph.atoms_to_record(a, cutoff) for a in mols],
                                        graph.estimate_budget(
                                            [graph.atoms_to_record(a, cutoff) for a in mols], 32)))
    apply = jax.jit(pot.apply)

    def run_jaxmat_apply():
        return jax.block_until_ready(apply(params, batch))

    # agreement (and compiles)
    pm, pj = run_mlip(), run_jaxmat()
    run_jaxmat_apply()
    e_m = np.array([float(p.energy) for p in pm])
    f_m = [np.asarray(p.forces) for p in pm]
    de = float(np.abs(e_m - pj["energy"]).max())
    df = float(max(np.abs(a - b).max() for a, b in zip(f_m, pj["forces"])))
    fmax = float(max(np.abs(a).max() for a in f_m))
    fns = {"mlip run_batched_inference": run_mlip, "jaxmat predict": run_jaxmat,
           "jaxmat jitted apply (prebuilt batch)": run_jaxmat_apply}
    times = {k: [] for k in fns}
    for r in range(args.rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:  # timed() warms first: the other side may have evicted caches
            times[k].append(timed(fns[k], args.repeats))
    med = {k: float(np.median([c for _, c in v])) for k, v in times.items()}
    rows = {k: {"cpu_s_per_call": m, "structures_per_cpu_s": 32 / m} for k, m in med.items()}
    base = med["mlip run_batched_inference"]
    md = ["| implementation (same weights) | CPU s per 32 structures | structures / CPU s | "
          "vs mlip |", "|---|---|---|---|"]
    md += [f"| {k} | {m:.4f} | {32 / m:.0f} | {base / m:.2f}× |" for k, m in med.items()]
    md.append(f"\nmlip {mlip.__version__} MACE (2 layers, 32 channels, l_max 2, node features to "
              f"l 2, correlation 3, 5 Å, avg_num_neighbors {avg:.2f}) imported into jaxmat "
              f"(extract {t_extract:.0f} s); 32 ethanol molecules, energies + forces, float32. "
              f"Largest difference: energy {de:.2e} eV, force {df:.2e} eV/Å (largest force "
              f"{fmax:.2f} eV/Å). CPU seconds of this process, medians of {args.rounds} "
              f"alternated rounds × {args.repeats} calls, affinity "
              f"{sorted(os.sched_getaffinity(0))}, JAXMAT_HOST_MEMORY="
              f"{os.environ.get('JAXMAT_HOST_MEMORY', 'system')} (both libraries, one process), "
              f"load average {os.getloadavg()[0]:.2f} at the end (wall times in the JSON).")
    payload = {"device": device_info(), "rows": rows, "times_wall_cpu_s": times,
               "agreement": {"energy_eV": de, "forces_eV_per_A": df, "largest_force": fmax},
               "avg_num_neighbors": avg, "extract_s": t_extract,
               "cpu_affinity": sorted(os.sched_getaffinity(0)), "mlip": mlip.__version__}
    write_results(args.out, payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
