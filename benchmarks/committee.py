"""Committee cost: one vmapped program for N SchNet members vs a Python loop over members.

For N = 1, 4, 8, 16 members on ammonia batches (16 structures per member step): median time
of a training step (all N members updated) and of inference (energy + forces of one batch),
compile time of each program, and the XLA memory footprint of the compiled programs
(arguments + outputs + temporaries), side by side in the same run.

    nice -n 10 python benchmarks/committee.py [--features 32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import device_info, write_results  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmat import data, ensemble, graph, potential, train  # noqa: E402
from jaxmat.models import SchNetConfig, schnet  # noqa: E402


def _compile(fn, *args):
    """(compiled program, seconds to lower + compile, bytes of args + outputs + temporaries)."""
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    sec = time.perf_counter() - t
    mem = compiled.memory_analysis()
    nbytes = None
    if mem is not None:
        nbytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    return compiled, sec, nbytes


def _block(x):
    return jax.block_until_ready(x)


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, timed in alternating rounds (same machine load)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, nargs="*", default=[1, 4, 8, 16])
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--interactions", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    records = graph.records_from_atoms(data.load_ammonia(), 5.0)
    cfg = SchNetConfig(n_features=args.features, n_interactions=args.interactions, n_rbf=16,
                       cutoff=5.0)
    model = potential.potential(schnet(cfg), stress=False)
    loss = train.energy_force_loss(1.0, 10.0)
    opt = train.make_optimizer(1e-3, 1000)
    budget = graph.estimate_budget(records, args.batch_size)
    infer_batch = graph.batch(records[: args.batch_size], budget)

    # single-member programs, compiled once and reused by every loop
    p1 = model.init(jax.random.key(0), infer_batch)
    s1 = opt.init(p1)
    single_step, single_step_compile, single_step_mem = _compile(
        jax.jit(train.make_step(model, loss, opt)), p1, s1, infer_batch, jax.random.key(0))
    single_apply, single_apply_compile, single_apply_mem = _compile(
        jax.jit(model.apply), p1, infer_batch)

    rows = []
    for n in args.members:
        loader = ensemble.CommitteeLoader(records, n, args.batch_size, budget, seed=0)
        stacked, active = next(loader.epoch(0))
        stacked = jax.device_put(stacked)
        active = jax.device_put(active)
        params = ensemble.init(model, jax.random.key(1), infer_batch, n)
        state = jax.vmap(opt.init)(params)
        keys = jax.random.split(jax.random.key(2), n)

        step, step_compile, step_mem = _compile(
            jax.jit(ensemble.make_step(model, loss, opt)), params, state, stacked, keys, active)
        apply, apply_compile, apply_mem = _compile(
            jax.jit(lambda p, b: ensemble.apply(model, p, b)), params, infer_batch)

        members = [ensemble.member(params, m) for m in range(n)]
        mstates = [ensemble.member(state, m) for m in range(n)]
        mbatches = [jax.tree_util.tree_map(lambda x, m=m: x[m], stacked) for m in range(n)]

        def vmapped_step():
            _block(step(params, state, stacked, keys, active))

        def loop_step():
            _block([single_step(members[m], mstates[m], mbatches[m], keys[m]) for m in range(n)])

        def vmapped_apply():
            _block(apply(params, infer_batch))

        def loop_apply():
            _block([single_apply(members[m], infer_batch) for m in range(n)])

        t = _interleaved({"sv": vmapped_step, "sl": loop_step, "av": vmapped_apply,
                          "al": loop_apply}, args.repeats)
        t_step_v, t_step_l, t_app_v, t_app_l = t["sv"], t["sl"], t["av"], t["al"]
        row = {
            "members": n,
            "train_step_vmap_s": t_step_v, "train_step_loop_s": t_step_l,
            "train_loop_over_vmap": t_step_l / t_step_v,
            "infer_vmap_s": t_app_v, "infer_loop_s": t_app_l,
            "infer_loop_over_vmap": t_app_l / t_app_v,
            "compile_step_vmap_s": step_compile, "compile_apply_vmap_s": apply_compile,
            "xla_bytes_step_vmap": step_mem, "xla_bytes_apply_vmap": apply_mem,
            "maxrss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        rows.append(row)
        print(row, flush=True)

    base = rows[0] if rows[0]["members"] == 1 else None
    lines = ["| N | step vmap (ms) | step loop (ms) | loop/vmap | vmap N / vmap 1 | "
             "infer vmap (ms) | infer loop (ms) | loop/vmap | compile step (s) | "
             "step program (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = r["train_step_vmap_s"] / base["train_step_vmap_s"] if base else float("nan")
        mb = r["xla_bytes_step_vmap"] / 2**20 if r["xla_bytes_step_vmap"] else float("nan")
        lines.append(
            f"| {r['members']} | {1e3 * r['train_step_vmap_s']:.1f} | "
            f"{1e3 * r['train_step_loop_s']:.1f} | {r['train_loop_over_vmap']:.2f} | {rel:.2f} | "
            f"{1e3 * r['infer_vmap_s']:.2f} | {1e3 * r['infer_loop_s']:.2f} | "
            f"{r['infer_loop_over_vmap']:.2f} | {r['compile_step_vmap_s']:.1f} | {mb:.1f} |")
    lines.append("")
    lines.append(f"SchNet {args.features} features x {args.interactions} interactions, "
                 f"{args.batch_size} NH3 per member step (budget {budget.n_node} nodes / "
                 f"{budget.n_edge} edges); medians of {args.repeats}. Single-member programs: "
                 f"step compile {single_step_compile:.1f} s, apply compile "
                 f"{single_apply_compile:.1f} s.")
    write_results("committee", {
        "device": device_info(), "settings": vars(args),
        "budget": [budget.n_node, budget.n_edge, budget.n_graph],
        "single": {"compile_step_s": single_step_compile, "compile_apply_s": single_apply_compile,
                   "xla_bytes_step": single_step_mem, "xla_bytes_apply": single_apply_mem},
        "rows": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }, "\n".join(lines))


if __name__ == "__main__":
    main()
