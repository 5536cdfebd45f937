"""Generate (or resume) the XANES result store.

    OMP_NUM_THREADS=1 nice -n 19 python scripts/xanes_generate.py \\
        [--store jaxmat/data/files/xanes/store] [--workers 1] [--limit N] [--mode tp|gs]

Every finished molecule is written as ``<store>/<mol_id>.npz`` at once; stopping (Ctrl-C,
kill) loses at most the molecules in flight, and a rerun skips what is done (and what
failed, unless ``--retry-failed``).  Pack the store with ``scripts/xanes_pack.py``.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from jaxmat.workflows.xanes.generate import Settings, run  # noqa: E402
from jaxmat.workflows.xanes.molecules import read_list  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XANES = os.path.join(ROOT, "jaxmat", "data", "files", "xanes")

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--molecules", default=os.path.join(XANES, "molecules.csv"))
    p.add_argument("--store", default=os.path.join(XANES, "store"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--mode", choices=("tp", "gs"), default="tp")
    p.add_argument("--time-limit", type=float, default=1800.0, help="seconds per molecule")
    p.add_argument("--retry-failed", action="store_true")
    a = p.parse_args()

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    counts = run(read_list(a.molecules), a.store, Settings(mode=a.mode), workers=a.workers,
                 limit=a.limit, time_limit=a.time_limit, retry_failed=a.retry_failed, log=log)
    log(f"finished: {counts}")
    sys.exit(0)
