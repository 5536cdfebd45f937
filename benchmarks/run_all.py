"""Run the benchmark scripts one after another (each writes results/<name>.json/.md), then
rebuild benchmarks/README.md.  Hours on a 2-core CPU; pick some with ``--only``.

    python benchmarks/run_all.py [--only speed xanes ...] [--list]

The torch peer comparison (peers/) needs its own environment and is not run here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {  # name: script arguments
    "speed": ["speed.py"],
    "host_memory": ["host_memory.py"],
    "ammonia": ["ammonia.py"],
    "committee": ["committee.py"],
    "ammonia_committee": ["ammonia_committee.py"],
    "photoanode": ["photoanode.py"],
    "xanes_committee": ["xanes_committee.py", "--elements", "O", "--members", "8"],
    "xanes_committee_N": ["xanes_committee.py", "--elements", "N", "--members", "8",
                          "--out", "xanes_committee_N"],
    "xanes_committee_painn": ["xanes_committee.py", "--elements", "O", "--members", "1",
                              "--backbone", "painn"],
    "xanes": ["xanes.py"],
    "xanes_curve": ["xanes_curve.py"],
    "crystal": ["crystal.py"],
    "mlearn": ["mlearn.py"],
    "mlearn_painn_equal": ["mlearn_painn.py", "--schnet", "--epochs", "20",
                           "--out", "mlearn_painn_equal"],
    "adversarial_ammonia": ["adversarial_ammonia.py", "--seeds", "0", "1", "--strategies",
                            "adversarial", "random", "adversarial@0.3", "md", "adversarial@0.129"],
    "adversarial_data": ["adversarial_data.py"],  # reads adversarial_ammonia's runs
    "adversarial_ammonia_large": ["adversarial_ammonia.py", "--features", "64", "--interactions",
                                  "3", "--epochs", "300", "--out", "adversarial_ammonia_large",
                                  "--strategies", "random", "md", "adversarial",
                                  "adversarial@0.3", "--no-throughput"],
    "adversarial_data_large": ["adversarial_data.py", "--features", "64", "--interactions", "3",
                               "--epochs", "1500", "--seeds", "0", "--out",
                               "adversarial_data_large"],
    "adversarial_data_large_55": ["adversarial_data.py", "--runs", "adversarial_ammonia_large",
                                  "--features", "64", "--interactions", "3", "--epochs", "1500",
                                  "--seeds", "0", "--n-extra", "55", "--strategies", "random",
                                  "adversarial@0.3", "md", "--out", "adversarial_data_large_55"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), default=None)
    ap.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    args = ap.parse_args()
    if args.list:
        print("\n".join(RUNS))
        return
    failed = []
    for name in args.only or list(RUNS):
        cmd = [sys.executable, os.path.join(HERE, RUNS[name][0]), *RUNS[name][1:]]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(name)
    subprocess.call([sys.executable, os.path.join(HERE, "summarize.py")])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
