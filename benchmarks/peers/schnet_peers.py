"""jaxmat's SchNet against PyTorch Geometric's and SchNetPack's, side by side on CPU.

Run in the optional peer environment (``bash benchmarks/peers/setup.sh``)::

    .venv-peers/bin/python benchmarks/peers/schnet_peers.py [--rounds 7] [--case si]

Same model size (3 interactions x 64 features, 50 Gaussians, cosine cutoff 5 Å,
64 -> 32 -> 1 atomwise readout), batch (128 distorted naphthalene molecules, 18 atoms,
the same precomputed neighbour list; or with ``--case si`` 32 periodic 64-atom mlearn-Si
cells, the edge list and image shifts exported by the jaxmat worker), loss (MSE of energy per atom + 10 x MSE of force
components, forces by double backprop) and optimiser (Adam, lr 1e-4). Torch gets its
best CPU settings (2 threads, flush denormals). jaxmat runs in a subprocess of the
jaxmat venv; the implementations are measured alternately (A/B, order rotated every
round), each measurement records the load average, and the summary gives medians and
ratios of medians plus the median of per-round ratios. Writes
``benchmarks/results/peers.json`` and ``peers.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import typing

import numpy as np
import torch
import torch.utils.data.dataloader as _dataloader

if not hasattr(_dataloader, "T_co"):  # schnetpack 2.1.1 imports it; torch 2.13 dropped it
    _dataloader.T_co = typing.TypeVar("T_co", covariant=True)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import common  # noqa: E402


# --------------------------------------------------------------------------- torch peers
def _loss(e, f, E, F, n_atoms, force_weight):
    return (((e - E) / n_atoms) ** 2).mean() + force_weight * ((f - F) ** 2).mean()


def build_pyg(Z, R, E, F, i, j, a, offsets=None):
    """PyG's SchNet on the given directed edges; ``offsets`` (E, 3) Å: periodic image
    shifts added to ``pos[j] - pos[i]`` (None: a molecule)."""
    from torch_geometric.nn.models import SchNet

    ei = torch.as_tensor(np.stack([j, i]), dtype=torch.long)  # source j -> target i
    off = None if offsets is None else torch.as_tensor(offsets, dtype=torch.float32)

    def interaction_graph(pos, batch):
        vec = pos[ei[0]] - pos[ei[1]]
        return ei, (vec if off is None else vec + off).norm(dim=-1)

    model = SchNet(hidden_channels=a.features, num_filters=a.features,
                   num_interactions=a.interactions, num_gaussians=a.rbf, cutoff=a.cutoff,
                   interaction_graph=interaction_graph, readout="add")
    z = torch.as_tensor(Z.reshape(-1), dtype=torch.long)
    pos0 = torch.as_tensor(R.reshape(-1, 3), dtype=torch.float32)
    batch = torch.arange(len(Z)).repeat_interleave(Z.shape[1])
    Et = torch.as_tensor(E, dtype=torch.float32)
    Ft = torch.as_tensor(F.reshape(-1, 3), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)

    def energy_forces(create_graph):
        pos = pos0.clone().requires_grad_(True)
        e = model(z, pos, batch).squeeze(-1)
        f = -torch.autograd.grad(e.sum(), pos, create_graph=create_graph)[0]
        return e, f

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        e, f = energy_forces(True)
        loss = _loss(e, f, Et, Ft, Z.shape[1], a.force_weight)
        loss.backward()
        opt.step()
        return float(loss)

    def infer():
        model.eval()
        return energy_forces(False)

    return model, train, infer


def build_schnetpack(Z, R, E, F, i, j, a, offsets=None):
    """SchNetPack's SchNet; ``offsets`` (E, 3) Å: its Cartesian image shifts (None: zeros)."""
    import schnetpack as spk
    import schnetpack.properties as P

    rep = spk.representation.SchNet(
        n_atom_basis=a.features, n_interactions=a.interactions,
        radial_basis=spk.nn.GaussianRBF(n_rbf=a.rbf, cutoff=a.cutoff),
        cutoff_fn=spk.nn.CosineCutoff(a.cutoff))
    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=a.features, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")])
    n_mol, n_at = Z.shape
    base = {
        P.Z: torch.as_tensor(Z.reshape(-1), dtype=torch.long),
        P.idx_m: torch.arange(n_mol).repeat_interleave(n_at),
        P.idx_i: torch.as_tensor(i, dtype=torch.long),
        P.idx_j: torch.as_tensor(j, dtype=torch.long),
        P.offsets: (torch.zeros((len(i), 3)) if offsets is None
                    else torch.as_tensor(offsets, dtype=torch.float32)),
        P.n_atoms: torch.full((n_mol,), n_at, dtype=torch.long),
    }
    pos0 = torch.as_tensor(R.reshape(-1, 3), dtype=torch.float32)
    Et = torch.as_tensor(E, dtype=torch.float32)
    Ft = torch.as_tensor(F.reshape(-1, 3), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)

    def energy_forces():
        out = model({**base, P.R: pos0.clone()})
        return out["energy"], out["forces"]

    def train():
        model.train()  # Forces uses create_graph=self.training
        opt.zero_grad(set_to_none=True)
        e, f = energy_forces()
        loss = _loss(e, f, Et, Ft, n_at, a.force_weight)
        loss.backward()
        opt.step()
        return float(loss)

    def infer():
        model.eval()
        return energy_forces()

    return model, train, infer


# --------------------------------------------------------------------------- jaxmat
class JaxmatWorker:
    """The jaxmat side in a subprocess (its own venv), driven by JSON lines."""

    def __init__(self, python: str, setup: dict, root: str = ROOT):
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([python, os.path.join(HERE, "jaxmat_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.info = self.call({"cmd": "setup", **setup})

    def call(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("jaxmat worker exited; see its stderr above")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


# --------------------------------------------------------------------------- run
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--train-steps", type=int, default=4, help="calls per train measurement")
    ap.add_argument("--infer-steps", type=int, default=8, help="calls per inference measurement")
    ap.add_argument("--case", choices=("molecules", "si"), default="molecules",
                    help="naphthalene molecules, or periodic 64-atom mlearn-Si cells")
    ap.add_argument("--n-mol", type=int, default=None,
                    help="structures per batch (default 128 molecules or 32 Si cells)")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--interactions", type=int, default=3)
    ap.add_argument("--rbf", type=int, default=50)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--force-weight", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jaxmat-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--no-sparse", action="store_true", help="skip jaxmat's sparse layout")
    ap.add_argument("--single-core", type=int, default=None, metavar="CPU",
                    help="pin this process and the jaxmat worker to one core, 1 torch thread "
                    "(a load-robust comparison on a shared machine)")
    ap.add_argument("--base-root", default=None, metavar="DIR",
                    help="a checkout of an earlier jaxmat: its sparse layout runs alongside "
                    "as jaxmat-sparse-base (old vs new in the same alternated rounds)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "peers"))
    a = ap.parse_args()
    if a.single_core is not None:
        os.sched_setaffinity(0, {a.single_core})  # inherited by the jaxmat worker
        a.threads = 1

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    periodic = a.case == "si"
    a.n_mol = a.n_mol or (32 if periodic else 128)
    if periodic:  # only the sparse layout holds periodic cells
        layouts = ["sparse"]
    else:
        layouts = ["dense"] if a.no_sparse else ["dense", "sparse"]
    exported = tempfile.mkdtemp() + "/periodic.npz" if periodic else None
    worker_setup = dict(
        case=a.case, n_mol=a.n_mol, seed=0, cutoff=a.cutoff, features=a.features,
        interactions=a.interactions, rbf=a.rbf, lr=a.lr, force_weight=a.force_weight,
        layouts=layouts, export=exported)
    worker = JaxmatWorker(a.jaxmat_python, worker_setup)
    workers = {f"jaxmat-{lay}": worker for lay in layouts}
    if a.base_root:
        base = JaxmatWorker(a.jaxmat_python, {**worker_setup, "layouts": ["sparse"],
                                              "export": None}, root=a.base_root)
        workers["jaxmat-sparse-base"] = base
    if periodic:
        d = common.load_periodic(exported)
        Z, R, E, F, i, j, offsets = (d[k] for k in ("Z", "R", "E", "F", "i", "j", "offsets"))
        pos = R.reshape(-1, 3)
        dist = np.linalg.norm(pos[j] - pos[i] + offsets, axis=-1)
        if not (dist.min() > 0.5 and dist.max() < a.cutoff):
            raise ValueError(f"exported edges have lengths {dist.min():.3f}-{dist.max():.3f} Å, "
                             f"not inside (0.5, {a.cutoff}) Å: wrong shifts")
    else:
        Z, R, E, F = common.molecules(a.n_mol, seed=0)
        i, j = common.batched_pairs(R, a.cutoff)
        offsets = None
    peers = {"pyg": build_pyg(Z, R, E, F, i, j, a, offsets),
             "schnetpack": build_schnetpack(Z, R, E, F, i, j, a, offsets)}
    n_params = {k: sum(p.numel() for p in m[0].parameters()) for k, m in peers.items()}

    def run(impl: str, mode: str) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) per call."""
        steps = a.train_steps if mode == "train" else a.infer_steps
        if impl.startswith("jaxmat"):
            out = workers[impl].call({"cmd": "time", "layout": impl.split("-")[1],
                                      "mode": mode, "steps": steps})
            return out["seconds"], out["cpu_seconds"]
        fn = peers[impl][1 if mode == "train" else 2]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    impls = list(workers) + list(peers)
    for impl in impls:  # warm-up (allocations, first-call paths)
        for mode in ("train", "infer"):
            run(impl, mode)
    records = []
    t_start = time.time()
    for rnd in range(a.rounds):
        order = impls[rnd % len(impls):] + impls[:rnd % len(impls)]
        for mode in ("train", "infer"):
            for impl in order:
                time.sleep(0.1)
                load = os.getloadavg()
                sec, cpu = run(impl, mode)
                records.append({"round": rnd, "impl": impl, "mode": mode, "seconds": sec,
                                "cpu_seconds": cpu, "loadavg": [round(x, 2) for x in load]})
                print(f"round {rnd} {mode:5s} {impl:18s} {1e3 * sec:8.1f} ms/step "
                      f"(cpu {1e3 * cpu:7.1f} ms)  load {load[0]:.2f}", flush=True)
    for w in set(workers.values()):
        w.close()

    summary: dict = {}
    for mode in ("train", "infer"):
        med, med_cpu = {}, {}
        for impl in impls:
            rs = [r for r in records if r["impl"] == impl and r["mode"] == mode]
            med[impl] = float(np.median([r["seconds"] for r in rs]))
            med_cpu[impl] = float(np.median([r["cpu_seconds"] for r in rs]))
        fastest_peer = min(peers, key=lambda k: med[k])
        ratios = {}
        for impl in impls:
            if not impl.startswith("jaxmat"):
                continue
            per_round = []
            for rnd in range(a.rounds):
                t = {r["impl"]: r["seconds"] for r in records
                     if r["round"] == rnd and r["mode"] == mode}
                per_round.append(t[fastest_peer] / t[impl])
            ratios[impl] = {
                **{f"vs_{p}": med[p] / med[impl] for p in peers},
                "vs_faster_peer": med[fastest_peer] / med[impl],
                "vs_faster_peer_median_of_rounds": float(np.median(per_round)),
                "cpu_time_vs_faster_peer": med_cpu[fastest_peer] / med_cpu[impl],
            }
        summary[mode] = {
            "median_s_per_step": med,
            "median_cpu_s_per_step": med_cpu,
            "structures_per_s": {k: a.n_mol / v for k, v in med.items()},
            "atoms_per_s": {k: a.n_mol * Z.shape[1] / v for k, v in med.items()},
            "faster_peer": fastest_peer,
            "speedup": ratios,
        }
    loads = [r["loadavg"][0] for r in records]
    result = {
        "benchmark": "SchNet E+F training and inference, jaxmat vs PyG vs SchNetPack (CPU)",
        "config": {**{k: v for k, v in vars(a).items() if k not in ("out", "jaxmat_python")},
                   "n_atoms": int(Z.shape[1]), "n_directed_edges": int(len(i)),
                   "structures": ("first 64-atom cells of mlearn-Si's training split, "
                                  "periodic, energies shifted by the mean eV/atom"
                                  if periodic else
                                  "naphthalene C10H8, 0.05 Å noise, random rotations"),
                   "optimizer": "Adam", "loss": "MSE(E/atom) + w_F * MSE(F), F by double backprop",
                   "torch_threads": a.threads, "torch_flush_denormal": True,
                   "cpu_affinity": sorted(os.sched_getaffinity(0))},
        "device": {"cpu": cpu_model(), "cores": os.cpu_count(),
                   "jax_device": worker.info["device"], "jax": worker.info["jax"],
                   "torch": torch.__version__, "python": platform.python_version()},
        "versions": _versions(),
        "jaxmat_layouts": worker.info["layouts"],
        "jaxmat_base_root": a.base_root,
        "jaxmat_base_commit": _commit(a.base_root),
        "n_params": n_params,
        "load_average_1min": {"min": min(loads), "median": float(np.median(loads)),
                              "max": max(loads)},
        "note": ("machine shared with other jobs during the run: measurements alternate "
                 "A/B with the order rotated each round, medians are reported, and each "
                 "measurement records os.getloadavg()"),
        "wall_s": time.time() - t_start,
        "summary": summary,
        "measurements": records,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))


def _commit(root: str | None) -> str | None:
    """The git commit of a jaxmat checkout (None if unknown)."""
    if not root:
        return None
    out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict:
    out = {}
    for name in ("torch_geometric", "schnetpack"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001
            out[name] = f"unavailable ({exc})"
    return out


def markdown(res: dict) -> str:
    c, d, s = res["config"], res["device"], res["summary"]
    lines = [
        f"### SchNet peers: {c['n_mol']} "
        f"{'periodic mlearn-Si cells' if c.get('case') == 'si' else 'molecules'} x "
        f"{c['n_atoms']} atoms ({c['n_directed_edges']} directed edges), "
        f"{c['interactions']}x{c['features']}, {c['rbf']} RBF, cutoff {c['cutoff']} Å",
        "",
        f"CPU: {d['cpu']} ({d['cores']} cores), jax {d['jax']}, torch {d['torch']} "
        f"({c['threads']} threads, flush denormal; cores {c['cpu_affinity']} for both), "
        f"PyG {res['versions']['torch_geometric']}, "
        f"SchNetPack {res['versions']['schnetpack']}. Medians of {c['rounds']} alternated "
        f"rounds; 1-min load average during the run {res['load_average_1min']['min']:.1f}-"
        f"{res['load_average_1min']['max']:.1f} (median {res['load_average_1min']['median']:.1f}) "
        "on a shared machine."
        + (" `jaxmat-sparse-base`: the sparse layout of jaxmat "
           f"{res.get('jaxmat_base_commit') or res['jaxmat_base_root']}, in the same rounds."
           if res.get("jaxmat_base_root") else ""),
        "",
        "| implementation | train ms/step | train structures/s | inference ms | "
        "inference structures/s | CPU ms: train, inference |",
        "|---|---|---|---|---|---|",
    ]
    for impl in s["train"]["median_s_per_step"]:
        lines.append(
            f"| {impl} | {1e3 * s['train']['median_s_per_step'][impl]:.1f} | "
            f"{s['train']['structures_per_s'][impl]:.0f} | "
            f"{1e3 * s['infer']['median_s_per_step'][impl]:.1f} | "
            f"{s['infer']['structures_per_s'][impl]:.0f} | "
            f"{1e3 * s['train']['median_cpu_s_per_step'][impl]:.1f}, "
            f"{1e3 * s['infer']['median_cpu_s_per_step'][impl]:.1f} |")
    lines += ["", "| jaxmat layout | train speed-up vs faster peer | inference speed-up vs "
              "faster peer | process CPU time: train, inference |", "|---|---|---|---|"]
    for impl in s["train"]["speedup"]:
        tr, inf = s["train"]["speedup"][impl], s["infer"]["speedup"][impl]
        lines.append(
            f"| {impl} | {tr['vs_faster_peer']:.2f}x ({s['train']['faster_peer']}; "
            f"per-round median {tr['vs_faster_peer_median_of_rounds']:.2f}x) | "
            f"{inf['vs_faster_peer']:.2f}x ({s['infer']['faster_peer']}; per-round median "
            f"{inf['vs_faster_peer_median_of_rounds']:.2f}x) | "
            f"{tr['cpu_time_vs_faster_peer']:.2f}x, {inf['cpu_time_vs_faster_peer']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
