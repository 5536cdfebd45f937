"""Build jaxmat/data/files/xanes/molecules.csv from the ``chemicals`` PubChem tables.

    python scripts/xanes_molecules.py [--out PATH]
"""
import argparse
import os

from jaxmat.workflows.xanes.molecules import build_list, read_tables, write_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=os.path.join(ROOT, "jaxmat/data/files/xanes/molecules.csv"))
    a = p.parse_args()
    recs = build_list(read_tables())
    write_list(recs, a.out)
    n_o = sum(r["n_O"] > 0 for r in recs)
    n_n = sum(r["n_N"] > 0 for r in recs)
    print(f"{len(recs)} molecules, {n_o} with O, {n_n} with N -> {a.out}")
