"""Shared helpers for benchmark scripts: device description, timing, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

# JAXMAT_RESULTS redirects every result file (benchmarks/gpu.sh writes to results/gpu/)
RESULTS = os.environ.get("JAXMAT_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results")
XTB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "xtb")


def xtb_files(name: str, data_dir: str = XTB) -> tuple[str, str]:
    """``(frames, split file)`` of a GFN2-xTB set (``scripts/xtb_md_data.py``): the frames
    are ``<name>.extxyz``, or ``<name>.extxyz.gz`` for the larger sets."""
    frames = os.path.join(data_dir, f"{name}.extxyz")
    if not os.path.exists(frames) and os.path.exists(frames + ".gz"):
        frames += ".gz"
    return frames, os.path.join(data_dir, f"{name}.split.json")


def xtb_set(name: str, data_dir: str = XTB) -> tuple[list, dict]:
    """``(structures, {"train", "val", "test": indices})`` of a GFN2-xTB set."""
    from jaxmat import data

    frames, split = xtb_files(name, data_dir)
    with open(split) as f:
        return data.read_structures(frames), json.load(f)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_info() -> dict:
    """Accelerator, CPU model, core count, load, library versions and whether XLA's host
    buffers are kept between calls (:mod:`jaxmat.core.host_memory`)."""
    import jax

    from jaxmat.core import host_memory

    cpu = cpu_model()
    dev = jax.devices()[0]
    return {
        "platform": dev.platform, "device_kind": dev.device_kind, "n_devices": jax.device_count(),
        "cpu": cpu, "cores": os.cpu_count(), "loadavg": os.getloadavg(),
        "jax": jax.__version__, "python": platform.python_version(),
        "host_memory": host_memory.status()["kept"],
    }


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time (s) of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_results(name: str, payload: dict, table_md: str) -> None:
    """benchmarks/results/<name>.json and <name>.md."""
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=2, default=float)
    dev = payload.get("device", {})
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(f"Device: {dev.get('device_kind', '?')} ({dev.get('cpu', '?')}, {dev.get('cores', '?')} cores), "
                f"jax {dev.get('jax', '?')}\n\n{table_md}\n")


def mlearn_split(element: str, cutoff: float, seed: int = 0):
    """mlearn records of ``element``: the published training set split 90/10 into train and
    validation, the untouched published test set, per-element reference energies (eV) and
    the training force RMS (eV/Å).  Returns ``(train, val, test, refs, f_rms)``."""
    from jaxmat import data, graph, potential

    tr_all = graph.records_from_atoms(data.load_mlearn(element, "train"), cutoff)
    te = graph.records_from_atoms(data.load_mlearn(element, "test"), cutoff)
    tr_idx, va_idx = data.split_indices(len(tr_all), (0.9, 0.1), seed=seed)
    tr = [tr_all[k] for k in tr_idx]
    va = [tr_all[k] for k in va_idx]
    refs, f_rms = potential.energy_stats(tr)
    return tr, va, te, refs, f_rms
