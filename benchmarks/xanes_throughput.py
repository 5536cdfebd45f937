"""XANES throughput: predicted spectra per second for one site head and a committee (one
vmapped program through jaxmat.predict), and functional-group classification per second.

Models are freshly initialised (speed does not depend on the weights): the SchNet site head
of benchmarks/xanes.py (64 features, 3 interactions, cutoff 4 Å) on the O test molecules.
Compile time is excluded (one warm-up pass); the median of ``--repeats`` passes is reported.

    python benchmarks/xanes_throughput.py [--members 5] [--repeats 3] [--quick] [--out NAME]

``--quick`` (for benchmarks/gpu_xanes.sh): 64 molecules repeated to --n-quick structures.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import device_info, median_time, write_results  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmat import ensemble  # noqa: E402
from jaxmat.core import graph  # noqa: E402
from jaxmat.core.predict import predict  # noqa: E402
from jaxmat.data.xanes import load_xanes  # noqa: E402
from xanes import site_head  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-quick", type=int, default=2048)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    data = load_xanes("O", "test", cutoff=4.0)
    records = data.records
    if args.quick:
        records = (records[:64] * (args.n_quick // 64 + 1))[:args.n_quick]
    model = site_head("schnet", "O", len(data.grid), 64, 4.0)
    example = next(iter(graph.GraphLoader(records[:8], 8, shuffle=False).epoch(0)))
    one = model.init(jax.random.key(0), example)
    com = ensemble.init(model, jax.random.key(1), example, args.members)
    rows = []
    for name, params, m in (("one site head", one, 1),
                            (f"committee x{args.members} (vmapped)", com, args.members)):
        for bs in sorted({args.batch_size, 256}):
            t0 = time.perf_counter()
            predict(model, params, records, batch_size=bs, keys=("xanes",))  # compile + warm-up
            first = time.perf_counter() - t0
            sec = median_time(lambda: predict(model, params, records, batch_size=bs,
                                              keys=("xanes",)), repeats=args.repeats, warmup=0)
            rows.append({"model": name, "members": m, "batch_size": bs, "n_spectra": len(records),
                         "spectra_per_s": len(records) / sec, "first_call_s": first})
            print(rows[-1], flush=True)
    # classification of site spectra (host, scikit-learn)
    try:
        from jaxmat.workflows.xanes.inverse import GroupClassifier

        x = np.concatenate([r.node_targets["xanes_site"][r.node_targets["xanes_absorber"] > 0]
                            for r in data.records])
        y = np.array(["a", "b"] * (len(x) // 2) + ["a"] * (len(x) % 2))
        clf = GroupClassifier(augment=0).fit(data.grid, x, y)
        big = np.concatenate([x] * max(1, 4096 // len(x)))
        sec = median_time(lambda: clf.predict(big), repeats=args.repeats)
        rows.append({"model": "group classifier (logistic regression, host)", "members": 1,
                     "batch_size": len(big), "n_spectra": len(big),
                     "spectra_per_s": len(big) / sec, "first_call_s": None})
    except ImportError as e:
        print(f"classifier skipped: {e}")
    dev = device_info()
    lines = ["| model | batch | spectra | spectra/s | first call (compile) s |",
             "|---|---|---|---|---|"]
    for r in rows:
        fc = "" if r["first_call_s"] is None else f"{r['first_call_s']:.1f}"
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['n_spectra']} | "
                     f"{r['spectra_per_s']:.0f} | {fc} |")
    note = (f"\n{dev['platform']} ({dev['device_kind']}); load average {dev['loadavg'][0]:.1f} "
            f"on {dev['cores']} cores when measured (numbers under shared load are noisy). "
            "Committee rows: spectra/s counts molecules (each evaluated by every member).")
    out = args.out or f"xanes_throughput_{dev['platform']}"
    write_results(out, {"device": dev, "settings": vars(args), "rows": rows},
                  "\n".join(lines) + "\n" + note)
    print("\n".join(lines) + note)


if __name__ == "__main__":
    main()
