"""Keep XLA's host buffers mapped between executions (glibc only).

On the CPU, XLA allocates every jitted call's temporary buffer with ``posix_memalign`` and
frees it afterwards. glibc serves blocks of 32 MB and more with a fresh ``mmap`` and gives
them back with ``munmap``, so each call touches its whole temporary buffer as new pages:
one page fault per 4 kB, counted as system time. A PaiNN training step (16 molecules of 9
atoms) has a 35 MB temporary buffer and spent 40 % of its CPU time in the kernel; a MACE
step (104 MB) 42 % (``benchmarks/host_memory.py``).

:func:`keep` sets glibc's allocator (``mallopt``) to serve large blocks from the heap and
not to return freed memory to the system: one arena (so the blocks of XLA's worker threads
come from the heap too; this part only acts on threads that have not allocated yet, so it
must run before JAX starts its CPU client), no ``mmap`` for large blocks, no trimming. The
cost is that the process keeps its peak host memory until it exits, as caching allocators
do. ``import jaxmat`` calls it once, and it acts when ``JAXMAT_HOST_MEMORY=keep`` is in the
environment; the default, ``system``, leaves glibc's defaults, because with it the SchNet
step (whose 7.7 MB buffer glibc already reuses) ran 0.70x as fast (cause not found). Other C
libraries (musl, macOS) are left alone.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
ENV = "JAXMAT_HOST_MEMORY"
_state: dict[str, object] = {"kept": False}


def keep() -> bool:
    """Tune glibc's allocator as described above when ``JAXMAT_HOST_MEMORY=keep``; ``True``
    when it was applied (now or by an earlier call), ``False`` otherwise (``system``, the
    default, or another C library)."""
    if _state["kept"]:
        return True
    mode = os.environ.get(ENV, "system").strip().lower()
    if mode not in ("keep", "system"):
        raise ValueError(f"{ENV} must be 'keep' or 'system', got {mode!r}")
    if mode == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = all(libc.mallopt(p, v) == 1 for p, v in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1)))
    _state["kept"] = ok
    return ok


def status() -> dict[str, object]:
    """What :func:`keep` did in this process (for benchmark and device reports)."""
    return {"kept": bool(_state["kept"]), "env": os.environ.get(ENV, "system")}
