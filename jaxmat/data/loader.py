"""Mini-batches of plain array dicts (tables, spectra) with a fixed batch size."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


class ArrayLoader:
    """Batches of a dict of equal-length arrays for :func:`jaxmat.core.train.fit`.

    Every batch has exactly ``batch_size`` rows (one compiled step): the last one is
    zero-padded and its ``mask`` entry is False on padding rows (an existing ``mask``
    array is respected). ``epoch(k)`` reshuffles with ``seed`` and ``k``.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, shuffle: bool = True,
                 seed: int = 0):
        if not arrays:
            raise ValueError("ArrayLoader needs at least one array")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must share their first dimension, got {lengths}")
        self.n = next(iter(lengths.values()))
        if self.n == 0:
            raise ValueError("ArrayLoader got empty arrays")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if "mask" not in self.arrays:
            self.arrays["mask"] = np.ones(self.n, bool)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def epoch(self, k: int = 0) -> Iterator[dict[str, np.ndarray]]:
        order = (np.random.default_rng([self.seed, k]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        bs = self.batch_size
        for start in range(0, self.n, bs):
            idx = order[start:start + bs]
            out = {}
            for name, a in self.arrays.items():
                b = a[idx]
                if len(idx) < bs:
                    pad = np.zeros((bs - len(idx),) + a.shape[1:], a.dtype)
                    b = np.concatenate([b, pad])
                out[name] = b
            yield out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.epoch(0)
