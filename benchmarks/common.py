"""Shared helpers for benchmark scripts: device description, timing, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_info() -> dict:
    """Accelerator, CPU model, core count, load and library versions."""
    import jax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    return {
        "platform": dev.platform, "device_kind": dev.device_kind, "n_devices": jax.device_count(),
        "cpu": cpu, "cores": os.cpu_count(), "loadavg": os.getloadavg(),
        "jax": jax.__version__, "python": platform.python_version(),
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
