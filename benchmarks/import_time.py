"""Import cost: ``import jax`` vs ``import jaxmat`` (and the short names a script uses), each
in a fresh interpreter, alternated, pinned to one core; medians of ``--rounds`` rounds.

    python benchmarks/import_time.py [--rounds 9] [--base REV]

``--base`` also times ``import jaxmat`` of an earlier revision (a git worktree of REV) in the
same alternated rounds. Writes benchmarks/results/import_time.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, write_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {"jax": "import jax", "jaxmat": "import jaxmat",
         "jaxmat + predict": "import jaxmat; jaxmat.predict",
         "jaxmat + train": "import jaxmat; from jaxmat import train"}


def seconds(code: str, root: str) -> float:
    """Wall time (s) of one fresh interpreter running ``code`` (interpreter start excluded)."""
    prog = ("import time; t = time.perf_counter()\n" + code.replace("; ", "\n")
            + "\nprint(time.perf_counter() - t)")
    pin = ["taskset", "-c", "0"] if sys.platform.startswith("linux") else []
    out = subprocess.run(pin + [sys.executable, "-c", prog], cwd=root, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": root})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--base", default=None)
    args = ap.parse_args()
    roots = {"": ROOT}
    tmp = None
    if args.base:
        tmp = tempfile.mkdtemp()
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tmp, args.base],
                       check=True, capture_output=True)
        roots[f" @{args.base}"] = tmp
    cases = [(name + tag, code, root) for tag, root in roots.items()
             for name, code in CASES.items() if not (tag and name == "jax")]
    times = {name: [] for name, _, _ in cases}
    try:
        for _ in range(args.rounds):
            for name, code, root in cases:
                times[name].append(seconds(code, root))
    finally:
        if tmp:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tmp],
                           capture_output=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [f"| {k} | {med[k]:.3f} | {med[k] - med['jax']:+.3f} |" for k in times]
    table = ("| import | median s | over `import jax` |\n|---|---|---|\n" + "\n".join(rows)
             + f"\n\n{args.rounds} alternated rounds, one fresh interpreter each, pinned to core 0.\n")
    write_results("import_time", {"device": device_info(), "rounds": args.rounds,
                                  "seconds": times, "median_s": med}, table)
    print(table)


if __name__ == "__main__":
    main()
