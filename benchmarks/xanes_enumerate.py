"""More XANES data: enumerate QM9-like molecules one RDKit edit away from the shipped list
(jaxmat.workflows.xanes.molecules.enumerate_list; RDKit's NCI lists kept out), write them to
``jaxmat/data/files/xanes/molecules_enumerated.csv`` (once), and run the generator on them
into the shipped store (same settings; resumable: finished and failed molecules are skipped
on a rerun).  ``--report`` only measures the cost per molecule of what is in the store.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/xanes_enumerate.py [--limit-list 3000]
        [--limit N] [--report]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from jaxmat.workflows.xanes import molecules as mols  # noqa: E402

XANES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "jaxmat", "data", "files", "xanes")


def build(path: str, limit: int) -> list[dict]:
    from rdkit import Chem

    rows = mols.read_list(os.path.join(XANES, "molecules.csv"))
    known = {r["smiles"] for r in rows} | {
        Chem.MolToSmiles(Chem.MolFromSmiles(r["smiles"]), isomericSmiles=False) for r in rows}
    reserved = mols.reserved_smiles()
    recs = mols.enumerate_list([r["smiles"] for r in rows if not r["stereo_of"]],
                               exclude=known | reserved, limit=limit)
    assert not {r["smiles"] for r in recs} & reserved
    mols.write_list(recs, path)
    return recs


def report(store: str, prefix: str = "enu") -> dict:
    """Wall and CPU seconds per finished enumerated molecule, and failures."""
    done, failed = (sorted(x for x in s if x.startswith(prefix))
                    for s in __import__("jaxmat.workflows.xanes.generate",
                                        fromlist=["store_status"]).store_status(store))
    wall, cpu, heavy = [], [], []
    for i in done:
        with np.load(os.path.join(store, f"{i}.npz")) as z:
            wall.append(float(z["time_total"]))
            cpu.append(float(z["cpu_time"]))
            heavy.append(int((z["numbers"] > 1).sum()))
    out = {"done": len(done), "failed": len(failed)}
    if done:
        out.update({"median_wall_s": float(np.median(wall)), "mean_wall_s": float(np.mean(wall)),
                    "median_cpu_s": float(np.median(cpu)),
                    "mean_heavy_atoms": float(np.mean(heavy))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", default=os.path.join(XANES, "molecules_enumerated.csv"))
    ap.add_argument("--store", default=os.path.join(XANES, "store"))
    ap.add_argument("--limit-list", type=int, default=3000)
    ap.add_argument("--limit", type=int, default=None, help="molecules to compute in this call")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        print(report(args.store))
        return

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    if not os.path.exists(args.list):
        t = time.perf_counter()
        recs = build(args.list, args.limit_list)
        log(f"enumerated {len(recs)} molecules in {time.perf_counter() - t:.0f} s -> {args.list}")
    from jaxmat.workflows.xanes.generate import Settings, run

    counts = run(mols.read_list(args.list), args.store, Settings(), limit=args.limit, log=log)
    log(f"finished: {counts}; {report(args.store)}")


if __name__ == "__main__":
    main()
