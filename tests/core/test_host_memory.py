"""Host memory kept between jitted calls: page faults counted (not timed) in fresh processes."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the setting acts on glibc's allocator only")

# a jitted call whose temporary buffer (a 5000 x 5000 float32 matrix, 100 MB, before a
# matrix-vector product) exceeds glibc's largest heap block; the fewest faults of five calls,
# counted once the heap has grown to its steady size (a few calls; a freed buffer may come
# back after the next call has started)
SCRIPT = r"""
import json, resource
import jaxmat
from jaxmat.core import host_memory
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(jnp.outer(x, x)) @ x).sum())
x = jnp.linspace(0.0, 1.0, 5000)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
for _ in range(6):
    f(x).block_until_ready()
per_call = []
for _ in range(5):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
faults = min(per_call)
print(json.dumps({"faults": faults, "temp": temp, **host_memory.status()}))
"""


def run(mode: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("JAXMAT_HOST_MEMORY", None)
    if mode is not None:
        env["JAXMAT_HOST_MEMORY"] = mode
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True)


@glibc
def test_large_temporary_buffers_fault_once_not_per_call():
    kept, system = (json.loads(run(m).stdout.strip().splitlines()[-1]) for m in ("keep", None))
    pages = kept["temp"] / 4096
    assert kept["temp"] > 96e6  # above the 64 MB heap of a thread arena
    assert kept["kept"] and not system["kept"]
    # glibc's defaults map the buffer anew on every call: about one fault per page, on the
    # best call too
    assert system["faults"] > 0.5 * pages
    assert kept["faults"] < 0.01 * pages


def test_a_bad_setting_is_refused_at_import():
    res = run("sometimes")
    assert res.returncode != 0
    assert "JAXMAT_HOST_MEMORY must be 'keep' or 'system', got 'sometimes'" in res.stderr
