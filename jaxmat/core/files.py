"""Files written so that an interruption never leaves half of one."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

import numpy as np


def write_atomic(path: str, content: str | Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file beside it and a rename, so a kill leaves the
    old file or the new one, never a part: ``content`` is text (UTF-8) or a function that
    writes to the open binary file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        if callable(content):
            content(f)
        else:
            f.write(content.encode("utf-8"))
    os.replace(tmp, path)


def save_npz(path: str, arrays: dict) -> None:
    """:func:`numpy.savez_compressed` of ``arrays`` to ``path``, atomically."""
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))
