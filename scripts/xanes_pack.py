"""Pack the XANES result store into jaxmat/data/files/xanes/xanes.npz (replacing it).

    python scripts/xanes_pack.py [--store DIR] [--out FILE]
"""
import argparse
import json
import os

from jaxmat.workflows.xanes.pack import pack_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XANES = os.path.join(ROOT, "jaxmat", "data", "files", "xanes")

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", default=os.path.join(XANES, "store"))
    p.add_argument("--out", default=os.path.join(XANES, "xanes.npz"))
    p.add_argument("--molecules", default=os.path.join(XANES, "molecules.csv"))
    a = p.parse_args()
    meta = pack_store(a.store, a.out, a.molecules, overwrite=True)
    print(json.dumps({k: meta[k] for k in ("n_molecules", "n_failed", "counts", "split_sizes",
                                           "seconds_per_molecule")}, indent=1))
