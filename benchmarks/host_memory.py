"""Host memory kept between jitted calls (``jaxmat.core.host_memory``) against glibc's
defaults: training steps of SchNet, PaiNN and MACE, and a 4-member MACE committee.

    python benchmarks/host_memory.py [--rounds 3] [--steps 10] [--models ...] [--out host_memory]

Each (model, mode) runs in a fresh process pinned to one core (``JAXMAT_HOST_MEMORY=keep``
or ``system``, the default), modes alternated in rounds. Per training step (16 ethanol-sized
molecules, 5 Å): user and system CPU ms, wall ms, minor page faults, XLA's temporary buffer
(MB) and the process's peak resident memory (MB). Medians over rounds; results in
``results/host_memory.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("schnet", "painn", "mace", "mace_committee4")


def child(model: str, steps: int) -> dict:
    sys.path.insert(0, HERE)
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmat import graph, potential, train
    from jaxmat.core import engine, ensemble, host_memory
    from jaxmat.models import PaiNNConfig, painn
    from mace import build, molecules

    recs = molecules(32)
    b16 = graph.to_device(graph.batch(recs[:16], graph.estimate_budget(recs, 16)))
    loss = train.energy_force_loss(energy=1.0, forces=10.0)
    opt = optax.adam(1e-3)
    if model == "painn":
        m = potential.potential(painn(PaiNNConfig(cutoff=5.0)), stress=False)
    else:
        m = build(model.split("_")[0], recs)
    if model.endswith("committee4"):
        params = ensemble.init(m, jax.random.key(1), None, n_members=4)
        args = (params, jax.vmap(opt.init)(params),
                jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), b16),
                jax.random.split(jax.random.key(2), 4), jnp.ones(4, bool))
        step = jax.jit(ensemble.make_step(m, loss, opt))
    else:
        params = m.init(jax.random.key(0), None)
        args = (params, opt.init(params), b16, jax.random.key(0))
        step = jax.jit(engine.make_step(m, loss, opt))
    temp = step.lower(*args).compile().memory_analysis().temp_size_in_bytes
    for _ in range(6):  # the heap grows to its steady size in a few calls
        jax.block_until_ready(step(*args))
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(step(*args))
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {"user_ms": 1e3 * (r1.ru_utime - r0.ru_utime) / steps,
            "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / steps,
            "wall_ms": 1e3 * (w1 - w0) / steps,
            "minor_faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "temp_MB": temp / 1e6, "peak_rss_MB": r1.ru_maxrss / 1e3,
            "host_memory": host_memory.status()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--out", default="host_memory")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps)), flush=True)
        return
    sys.path.insert(0, HERE)
    import numpy as np

    from common import device_info, write_results

    runs: dict = {m: {"keep": [], "system": []} for m in args.models}
    for r in range(args.rounds):
        for m in args.models:
            for mode in (("keep", "system") if r % 2 == 0 else ("system", "keep")):
                env = dict(os.environ, JAXMAT_HOST_MEMORY=mode, OMP_NUM_THREADS="1")
                out = subprocess.run(["taskset", "-c", str(args.core), sys.executable, __file__,
                                      "--child", m, "--steps", str(args.steps)],
                                     env=env, capture_output=True, text=True, check=True).stdout
                res = json.loads(out.split("RESULT ", 1)[1])
                runs[m][mode].append(res)
                print(m, mode, {k: round(v, 1) for k, v in res.items()
                                if isinstance(v, float)}, flush=True)
    keys = ("user_ms", "sys_ms", "wall_ms", "minor_faults", "temp_MB", "peak_rss_MB")
    med = {m: {mode: {k: float(np.median([x[k] for x in v])) for k in keys}
               for mode, v in d.items()} for m, d in runs.items()}
    md = ["| training step | mode | user ms | system ms | wall ms | page faults | XLA temp MB "
          "| peak RSS MB | CPU time system / keep |", "|---|---|---|---|---|---|---|---|---|"]
    for m, d in med.items():
        cpu = {mode: v["user_ms"] + v["sys_ms"] for mode, v in d.items()}
        for mode in ("system", "keep"):
            v = d[mode]
            md.append(f"| {m} | {mode} | {v['user_ms']:.1f} | {v['sys_ms']:.1f} | "
                      f"{v['wall_ms']:.1f} | {v['minor_faults']:.0f} | {v['temp_MB']:.1f} | "
                      f"{v['peak_rss_MB']:.0f} | "
                      + (f"{cpu['system'] / cpu['keep']:.2f} |" if mode == "keep" else "|"))
    md.append(f"\nBatch of 16 ethanol-sized molecules (5 Å), Adam; medians of {args.rounds} "
              f"rounds × {args.steps} steps, each (model, mode) a fresh process pinned to core "
              f"{args.core}, modes alternated; load average {os.getloadavg()[0]:.1f} at the end. "
              "`system`: glibc's defaults (jaxmat's default); `keep`: "
              "`JAXMAT_HOST_MEMORY=keep`.")
    write_results(args.out, {"device": device_info(), "median": med, "runs": runs},
                  "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
