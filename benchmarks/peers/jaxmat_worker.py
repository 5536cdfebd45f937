"""jaxmat side of the peer comparison; run by schnet_peers.py in the jaxmat venv.

Reads one JSON command per line on stdin and answers one JSON line on stdout:
``{"cmd": "setup", "case", "n_mol", "seed", "cutoff", "features", "interactions", "rbf",
"lr", "layouts", "export"}`` builds the batch (``case`` ``"molecules"``: naphthalene, or
``"si"``: the first ``n_mol`` 64-atom mlearn-Si training cells, periodic) and compiles;
with ``export`` (a path) it writes the periodic case's arrays there for the torch peers
(:func:`common.load_periodic`), so that every implementation gets the same edge list; ``{"cmd": "time", "layout", "mode": "train" |
"infer", "steps"}`` runs ``steps`` calls and answers the seconds per call;
``{"cmd": "quit"}`` ends. Training: the same E + F loss and Adam as the peers.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxmat import data, graph, potential, train  # noqa: E402
from jaxmat.models import SchNetConfig, schnet  # noqa: E402

STATE: dict = {}


def si_records(n: int, cutoff: float) -> list:
    """The first ``n`` 64-atom cells of mlearn-Si's training split (periodic), energies
    (eV) shifted by the mean energy per atom (the same labels for every implementation)."""
    cells = [a for a in data.load_mlearn("Si", "train") if len(a) == 64]
    if len(cells) < n:
        raise ValueError(f"mlearn-Si has {len(cells)} 64-atom training cells, {n} asked for")
    recs = graph.records_from_atoms(cells[:n], cutoff)
    e_atom = np.mean([r.targets["energy"] / r.n_node for r in recs])
    for r in recs:
        r.targets["energy"] = r.targets["energy"] - e_atom * r.n_node
    return recs


def export(recs: list, path: str) -> None:
    """Arrays of the batch for the torch peers: Z, R (Å), cell (Å), E (eV), F (eV/Å) per
    cell; i, j (atom indices offset by cell), S (integer shifts) per directed edge."""
    off = np.cumsum([0] + [r.n_node for r in recs])[:-1]
    np.savez(path, Z=np.stack([r.numbers for r in recs]),
             R=np.stack([r.positions for r in recs]), cell=np.stack([r.cell for r in recs]),
             E=np.array([r.targets["energy"] for r in recs]),
             F=np.stack([r.node_targets["forces"] for r in recs]),
             i=np.concatenate([r.receivers + o for r, o in zip(recs, off)]),
             j=np.concatenate([r.senders + o for r, o in zip(recs, off)]),
             S=np.concatenate([r.shifts for r in recs]))


def setup(msg: dict) -> dict:
    if msg.get("case", "molecules") == "si":
        recs = si_records(msg["n_mol"], msg["cutoff"])
    else:
        Z, R, E, F = common.molecules(msg["n_mol"], msg["seed"])
        recs = [graph.make_record(Z[m], R[m], msg["cutoff"], targets={"energy": E[m]},
                                  node_targets={"forces": F[m]}) for m in range(len(Z))]
    if msg.get("export"):
        export(recs, msg["export"])
    cfg = SchNetConfig(n_features=msg["features"], n_interactions=msg["interactions"],
                       n_rbf=msg["rbf"], cutoff=msg["cutoff"])
    model = potential.potential(schnet(cfg), stress=False)
    loss = train.energy_force_loss(1.0, msg.get("force_weight", 10.0))
    opt = optax.adam(msg["lr"])
    step = jax.jit(train.make_step(model, loss, opt), donate_argnums=(0, 1))
    infer = jax.jit(model.apply)
    info = {}
    for layout in msg["layouts"]:
        b = graph.to_device(graph.batch(recs, layout=layout))
        params = model.init(jax.random.key(0), b)
        opt_state = opt.init(params)
        key = jax.random.key(1)
        t0 = time.perf_counter()
        params, opt_state, value, _ = step(params, opt_state, b, key)
        jax.block_until_ready(value)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(infer(params, b)["forces"])
        t_infer = time.perf_counter() - t0
        STATE[layout] = dict(batch=b, params=params, opt_state=opt_state, key=key)
        info[layout] = {"compile_train_s": t_train, "compile_infer_s": t_infer,
                        "n_edge_slots": int(b.senders.shape[0]),
                        "n_real_edges": int(np.asarray(b.edges["mask"]).sum())}
    STATE["step"], STATE["infer"] = step, infer
    return {"ok": True, "jax": jax.__version__, "device": jax.devices()[0].device_kind,
            "layouts": info}


def time_calls(msg: dict) -> dict:
    s = STATE[msg["layout"]]
    step, infer = STATE["step"], STATE["infer"]
    t0, c0 = time.perf_counter(), time.process_time()
    if msg["mode"] == "train":
        for _ in range(msg["steps"]):
            s["params"], s["opt_state"], value, _ = step(s["params"], s["opt_state"],
                                                         s["batch"], s["key"])
        jax.block_until_ready(value)
        extra = {"loss": float(value)}
    else:
        for _ in range(msg["steps"]):
            out = infer(s["params"], s["batch"])
        jax.block_until_ready(out["forces"])
        extra = {}
    return {"seconds": (time.perf_counter() - t0) / msg["steps"],
            "cpu_seconds": (time.process_time() - c0) / msg["steps"], **extra}


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        out = setup(msg) if msg["cmd"] == "setup" else time_calls(msg)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
