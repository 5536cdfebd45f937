"""Fixed-shape padded batches of a dataset, reshuffled per epoch."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jaxmat.core.graph.batching import Batch, _partial_targets, _same_targets, batch
from jaxmat.core.graph.budget import (LAYOUTS, Budget, choose_layout, dense_budget,
                                      estimate_budget, pack)
from jaxmat.core.graph.records import Record


class GraphLoader:
    """Padded batches of records with fixed shapes; reshuffled per epoch, reproducibly.

    ``loader.epoch(k)`` yields the batches of epoch ``k`` (order from ``seed`` and ``k``).
    A target that only some records carry is in every batch, with its ``<name>_mask``.
    ``layout`` is ``"sparse"``, ``"dense"`` (small molecules) or ``"auto"``
    (:func:`choose_layout` among the layouts ``model.graph`` declares; sparse without a
    ``model``); every batch of a loader has the same shapes. With ``model`` an explicit
    layout the model does not declare raises here, before any batch is built.
    """

    def __init__(
        self,
        records: Sequence[Record],
        batch_size: int = 32,
        budget: Budget | None = None,
        shuffle: bool = True,
        seed: int = 0,
        layout: str = "sparse",
        model: Any = None,
    ):
        if not records:
            raise ValueError("GraphLoader needs at least one structure")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
        self.records = list(records)
        self.batch_size = batch_size
        allowed = model.graph.layouts if model is not None else ("sparse",)
        if layout == "auto":
            layout = choose_layout(self.records, batch_size, allowed)
        elif model is not None and layout not in allowed:
            raise ValueError(f"{model.name} supports the batch layouts {list(allowed)}, "
                             f"not {layout!r}")
        self.layout = layout
        if self.layout == "dense":
            self.budget = budget or dense_budget(self.records, batch_size)
        else:
            self.budget = budget or estimate_budget(self.records, batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self._partial = _partial_targets(self.records)
        self._fixed: list[Batch] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.records))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        if not self.shuffle:
            if self._fixed is None:
                self._fixed = [self._batch(grp) for grp in self._groups(None)]
            yield from self._fixed
            return
        for grp in self._groups(self.order(epoch)):
            yield self._batch(grp)

    def _groups(self, order) -> list[list[int]]:
        return pack(self.records, self.budget, order, self.layout)

    def _batch(self, grp: list[int]) -> Batch:
        return _same_targets(batch([self.records[k] for k in grp], self.budget, layout=self.layout),
                             self._partial)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def __len__(self) -> int:
        return len(self._groups(self.order(0)))
