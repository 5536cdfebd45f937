"""Scaling with system size: neighbour lists and SchNet energy + forces on Si supercells.

    python benchmarks/scale.py [--reps 2 3 4 6 8 12 16] [--repeats 3] [--out scale]

For diamond Si supercells of 64 to 32,768 atoms (cutoff 5 Å), each size in its own process
(so that its peak memory is its own): the host list (``graph.neighbor_list``, vesin) and
ASE's ``primitive_neighbor_list`` (up to 4,096 atoms), the on-device list
(``neighbors.build``, jitted, cutoff + 0.5 Å skin), and energy + forces + stress of a
SchNet 64×3 potential (``potential.apply`` jitted on one padded sparse batch). Medians of
``--repeats`` after one warm-up; atoms/s = N / model time; peak RSS of the process.
The exponent of time ∝ N^k is fitted over the sizes ≥ 1,000 atoms.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, median_time, write_results  # noqa: E402

CUTOFF = 5.0


def one(rep: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from ase.build import bulk
    from ase.neighborlist import primitive_neighbor_list

    from jaxmat.core import graph, neighbors, potential
    from jaxmat.models import SchNetConfig, schnet

    at = bulk("Si", "diamond", a=5.43, cubic=True) * (rep, rep, rep)
    at.rattle(0.02, seed=0)
    cell = np.asarray(at.cell)
    res = {"atoms": len(at)}
    res["host_list_s"] = median_time(
        lambda: graph.neighbor_list(at.positions, cell, at.pbc, CUTOFF), repeats)
    if len(at) <= 4096:
        res["ase_list_s"] = median_time(lambda: primitive_neighbor_list(
            "ijS", at.pbc, cell, at.positions, CUTOFF), max(1, repeats // 2))
    spec, nl = neighbors.allocate(at.positions, cell, at.pbc, CUTOFF, 0.5)
    pos, c = jnp.asarray(at.positions, jnp.float32), jnp.asarray(cell, jnp.float32)
    res["device_list_s"] = median_time(
        lambda: jax.block_until_ready(neighbors.build_jit(spec, nl, pos, c)), repeats)
    res["edges"] = int(np.sum(np.asarray(nl.mask)))
    model = potential.potential(schnet(SchNetConfig(n_features=64, n_interactions=3,
                                                    cutoff=CUTOFF)))
    rec = graph.atoms_to_record(at, CUTOFF)
    batch = graph.to_device(graph.batch([rec]))
    params = model.init(jax.random.key(0), batch)
    fn = jax.jit(model.apply)
    res["model_s"] = median_time(lambda: jax.block_until_ready(fn(params, batch)), repeats)
    res["atoms_per_s"] = len(at) / res["model_s"]
    res["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def exponent(rows: list[dict], key: str) -> float:
    big = [r for r in rows if r["atoms"] >= 1000 and key in r]
    if len(big) < 2:
        return float("nan")
    return float(np.polyfit(np.log([r["atoms"] for r in big]),
                            np.log([r[key] for r in big]), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, nargs="+", default=[2, 3, 4, 6, 8, 12, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="scale")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.repeats)))
        return
    rows = []
    for rep in args.reps:
        out = subprocess.run([sys.executable, __file__, "--one", str(rep), "--repeats",
                              str(args.repeats)], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"size {rep}: {out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows[-1]["loadavg"] = os.getloadavg()[0]
        print(rows[-1], flush=True)
    fits = {k: exponent(rows, k) for k in ("host_list_s", "device_list_s", "model_s")}
    lines = ["| atoms | edges | host list (vesin) s | ASE list s | device list s | "
             "SchNet E+F+S s | atoms/s | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ase = f"{r['ase_list_s']:.4f}" if "ase_list_s" in r else "–"
        lines.append(f"| {r['atoms']:,} | {r['edges']:,} | {r['host_list_s']:.4f} | {ase} | "
                     f"{r['device_list_s']:.4f} | {r['model_s']:.3f} | {r['atoms_per_s']:,.0f} | "
                     f"{r['peak_rss_MB']:,.0f} |")
    lines.append("")
    lines.append("Fitted exponent k of time ∝ N^k over sizes ≥ 1,000 atoms: " + ", ".join(
        f"{k} {v:.2f}" for k, v in fits.items()))
    table = "\n".join(lines)
    print(table)
    write_results(args.out, {"device": device_info(), "cutoff": CUTOFF, "rows": rows,
                             "exponents": fits}, "### Si supercells, cutoff 5 Å, SchNet 64×3\n\n"
                  + table)


if __name__ == "__main__":
    main()
