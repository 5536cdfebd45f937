"""Batchers: the one place that decides a model's batch layout, padding budget and budget
growth. :class:`GraphLoader` serves training (a dataset, reshuffled per epoch, one budget);
:class:`Batcher` serves prediction (structures arriving call after call: the budget is kept
and grown, never shrunk, so a run compiles few programs)."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jaxmat.core.graph.batching import Batch, batch, partial_targets
from jaxmat.core.graph.budget import LAYOUTS, Budget, fixed_budget, pack, resolve_layout
from jaxmat.core.graph.records import Record, check_records, records
from jaxmat.core.protocol import as_spec


class GraphLoader:
    """Padded batches of records with fixed shapes; reshuffled per epoch, reproducibly.

    ``loader.epoch(k)`` yields the batches of epoch ``k`` (order from ``seed`` and ``k``).
    A target that only some records carry is in every batch, with its ``<name>_mask``.
    ``layout`` is ``"sparse"``, ``"dense"`` (small molecules) or ``"auto"``
    (:func:`choose_layout` among the layouts ``model.graph`` declares; sparse without a
    ``model``); every batch of a loader has the same shapes. With ``model`` records of
    another graph spec, or an explicit layout the model does not declare, raise here, before
    any batch is built.
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
        self.records = list(records)
        self.batch_size = batch_size
        if model is not None:  # records of the model's graph, in a layout it declares
            self.records = check_records(self.records, model.graph, model.name)
            layouts, name = model.graph.layouts, model.name
        else:  # without a model "auto" means sparse
            layouts, name = ("sparse",) if layout == "auto" else ("sparse", "dense"), "GraphLoader"
        self.layout = layout = resolve_layout(self.records, layout, batch_size, layouts, name)
        self.budget = budget or fixed_budget(self.records, min(batch_size, len(self.records)),
                                             layout)
        self.shuffle = shuffle
        self.seed = seed
        self._partial = partial_targets(self.records)
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
        return batch([self.records[k] for k in grp], self.budget, layout=self.layout,
                     partial=self._partial)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def __len__(self) -> int:
        return len(self._groups(self.order(0)))


class Batcher:
    """Batches of structures for one model (or graph spec), call after call.

    ``prepare(data)`` turns structures (ASE Atoms or records of the model's spec) into
    records (:func:`records`), picks the layout (:func:`resolve_layout`), fits the padding
    budget — kept from earlier calls while every structure fits it, grown to the larger of
    each size otherwise (``n_grown`` counts it), never shrunk — and packs the records into
    groups. ``batch_size`` graphs per batch; ``edge_margin`` is head-room on edges and
    ``multiple`` the rounding of a new budget.
    """

    def __init__(self, model: Any, batch_size: int = 32, layout: str = "auto",
                 multiple: int = 64, edge_margin: float = 1.0, spec: Any = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if edge_margin < 1.0:
            raise ValueError(f"edge_margin must be >= 1, got {edge_margin}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
        self.spec = as_spec(model if spec is None else spec)
        self.name = getattr(model, "name", "model")
        self.batch_size, self.layout = batch_size, layout
        self.multiple, self.edge_margin = multiple, edge_margin
        self.budgets: dict[str, Budget] = {}
        self.n_grown = 0

    def prepare(self, data: Sequence[Any], labels: bool = False
                ) -> tuple[list[Record], str, Budget, list[list[int]]]:
        """``(records, layout, budget, groups)`` for ``data``."""
        if len(data) == 0:
            raise ValueError("no structures given")
        if self.spec.cutoff is None:  # a model without a graph cutoff reads given records
            bad = [k for k, r in enumerate(data) if not isinstance(r, Record)]
            if bad:
                raise ValueError(f"{self.name} declares no graph cutoff: structure {bad[0]} "
                                 "must be a record built with one, or declare the cutoff with "
                                 "graph=jaxmat.GraphSpec(cutoff=...)")
            recs = [r if labels else dataclasses.replace(r, targets={}, node_targets={})
                    for r in check_records(data, self.spec, self.name)]
        else:
            recs = records(data, self.spec, labels=labels)
        layout = resolve_layout(recs, self.layout, self.batch_size, self.spec.layouts, self.name)
        budget = self.fit(recs, layout)
        return recs, layout, budget, pack(recs, budget, layout=layout)

    def fit(self, recs: Sequence[Record], layout: str) -> Budget:
        """The kept budget of ``layout``, grown when a record of ``recs`` does not fit."""
        old = self.budgets.get(layout)
        bs = self.batch_size
        if layout == "dense":
            n_max = max(2, max(r.n_node for r in recs),  # 2: per-atom and per-graph shapes differ
                        0 if old is None else old.n_node // old.n_graph)
            new = Budget(bs * n_max, bs * n_max * (n_max // 2), bs)
        elif old is not None and all(old.fits(r.n_node, r.n_edge, 1, r.n_triplet) for r in recs):
            new = old
        else:
            new = fixed_budget(recs, bs, multiple=self.multiple, edge_margin=self.edge_margin)
            if old is not None:
                new = Budget(max(old.n_node, new.n_node), max(old.n_edge, new.n_edge),
                             new.n_graph, max(old.n_triplet, new.n_triplet))
        if old is not None and new != old:
            self.n_grown += 1
        self.budgets[layout] = new
        return new

