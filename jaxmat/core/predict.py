"""One prediction path for every tool: structures -> padded batches -> per-structure outputs.

:func:`predict` builds records from the model's graph spec (cutoff Å, k nearest
neighbours, line graphs), packs them into batches of one fixed budget per (model, layout,
batch size) — kept across calls and grown only when a structure does not fit — evaluates
one jitted function per (model, committee or not, keys), and strips the padding.

Committee params (a leading member axis, :mod:`jaxmat.core.ensemble`) give the member mean
under each output's own name plus the statistics of :func:`jaxmat.core.committee.stats`
(``energy_var``, ``forces_var``, ``forces_var_atom``, ``forces_var_graph``, ...).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxmat.core import committee, ensemble, graph
from jaxmat.core.protocol import Model, Params

_MAX_CACHED = 64
_FNS: OrderedDict = OrderedDict()  # (model, committee?, keys, members) -> jitted function
_BUDGETS: dict = {}                # (model, layout, batch_size) -> graph.Budget
_COMMITTEE: dict = {}              # (model, params shapes) -> bool


def predict(model: Model, params: Params, data: Sequence[Any], *, batch_size: int = 32,
            keys: Sequence[str] | None = None, layout: str = "sparse",
            members: bool = False,
            calibration: dict | None = None) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Outputs of ``model`` for every structure of ``data`` (``graph.Record``s or ASE
    ``Atoms``; Atoms need a model with a graph cutoff), in input order.

    Per-graph outputs come as arrays ``(S, ...)``, per-atom outputs as lists of ``(n_i,
    ...)`` arrays (float64). ``keys`` selects outputs (default: all). ``layout`` is
    ``"sparse"``, ``"dense"`` or ``"auto"`` (dense where the model declares it and it pays).
    Committee params give means, variances (:mod:`jaxmat.core.committee`) and, with
    ``members=True``, ``{key}_members`` with the member axis first: ``(M, S, ...)`` or
    lists of ``(M, n_i, ...)``. ``calibration`` (a bundle's, ``jaxmat.load(path).calibration``)
    scales the variances to calibrated ones (:func:`jaxmat.core.calibrate.scale_outputs`);
    without it they are the raw committee variances.
    """
    p = plan(model, data, batch_size, layout)
    fn = None
    parts: list[tuple[dict, dict]] = []
    for grp, b in zip(p.groups, p.batches()):
        if fn is None:
            fn = compiled(model, params, b, keys, members)
        main, per_member = jax.device_get(fn(params, b))
        parts.append((_unpad(main, b, grp, p, 0, model.name),
                      _unpad(per_member, b, grp, p, 1, model.name)))
    out = _join([m for m, _ in parts], 0)
    out.update({f"{k}_members": v for k, v in _join([m for _, m in parts], 1).items()})
    if calibration:
        from jaxmat.core.calibrate import scale_outputs

        out = scale_outputs(out, calibration)
    return out


@dataclasses.dataclass
class Plan:
    """Records (targets stripped), the layout, the budget and the groups of record indices
    that :func:`predict` batches."""

    records: list[graph.Record]
    layout: str
    budget: graph.Budget
    groups: list[list[int]]

    def batches(self) -> Iterator[graph.Batch]:
        for grp in self.groups:
            yield graph.batch([self.records[k] for k in grp], self.budget, layout=self.layout)


def plan(model: Model, data: Sequence[Any], batch_size: int = 32,
         layout: str = "sparse") -> Plan:
    """The batching of :func:`predict`: records from ``model.graph``, layout and budget."""
    recs = as_records(model, data)
    lay = _layout(model, recs, layout, batch_size)
    budget = _budget(model, recs, lay, batch_size)
    return Plan(recs, lay, budget, graph.pack(recs, budget, layout=lay))


def compiled(model: Model, params: Params, example: graph.Batch,
             keys: Sequence[str] | None = None, members: bool = False) -> Callable:
    """The jitted ``fn(params, batch) -> (outputs, per-member outputs)`` that :func:`predict`
    uses, cached per (model, committee or not, keys, members)."""
    is_com = _is_committee(model, params, example)
    if members and not is_com:
        raise ValueError("members=True needs committee params (a leading member axis)")
    key = (model, is_com, None if keys is None else tuple(keys), members)
    if key not in _FNS:
        _FNS[key] = jax.jit(_evaluate(model, is_com, key[2], members))
        while len(_FNS) > _MAX_CACHED:
            _FNS.popitem(last=False)
    _FNS.move_to_end(key)
    return _FNS[key]


def compile_count(model: Model) -> int:
    """Programs compiled so far by :func:`predict` for ``model``."""
    return sum(int(fn._cache_size()) for k, fn in _FNS.items() if k[0] == model)


def as_records(model: Model, data: Sequence[Any], cutoff: float | None = None) -> list[graph.Record]:
    """``data`` (Records or ASE Atoms) as label-free records of ``model.graph``; Atoms use
    ``cutoff`` (Å, only for a model without one; see :func:`resolve_cutoff`)."""
    if len(data) == 0:
        raise ValueError("no structures to predict")
    if cutoff is not None:
        resolve_cutoff(model, cutoff)
    spec = model.graph
    out = []
    for k, s in enumerate(data):
        name = f"structure {k}"
        if isinstance(s, graph.Record):
            r = dataclasses.replace(s, targets={}, node_targets={})
            _check_edges(r, spec.cutoff, f"{name} (a Record)")
        elif hasattr(s, "numbers") and hasattr(s, "get_positions"):
            rc = resolve_cutoff(model, cutoff)
            r = graph.make_record(s.numbers, s.get_positions(), rc, np.asarray(s.cell), s.pbc,
                                  name=f"{name} ({s.get_chemical_formula()})",
                                  max_neighbors=spec.max_neighbors)
        else:
            raise ValueError(f"{name}: expected ASE Atoms or jaxmat.core.graph.Record, got "
                             f"{type(s).__name__}")
        if spec.line_graph and r.line_senders is None:
            from jaxmat.core.linegraph import add_line_graph

            r = add_line_graph(r)
        out.append(r)
    return out


def resolve_cutoff(model: Model, cutoff: float | None = None) -> float:
    """The neighbour-list cutoff (Å): ``model.graph.cutoff``; ``cutoff`` only for a model
    that declares none. ValueError if they disagree or neither is given."""
    own = model.graph.cutoff
    if cutoff is not None and not cutoff > 0:
        raise ValueError(f"cutoff must be a positive distance in Å, got {cutoff}")
    if own is not None and cutoff is not None and abs(float(cutoff) - own) > 1e-9:
        raise ValueError(f"cutoff {cutoff} Å disagrees with the graph cutoff {own} Å of "
                         f"{model.name}; leave cutoff out (the model knows its graph)")
    if own is None and cutoff is None:
        raise ValueError(f"{model.name} declares no graph cutoff (model.graph.cutoff is None): "
                         "pass a cutoff (Å) or graph.Records built with one")
    return float(own if own is not None else cutoff)


# --------------------------------------------------------------------------- internals
def _check_edges(r: graph.Record, cutoff: float | None, name: str) -> None:
    if cutoff is None or r.n_edge == 0:
        return
    d = np.linalg.norm(r.positions[r.senders] - r.positions[r.receivers]
                       + r.shifts @ r.cell, axis=1)
    if d.max() > cutoff + 1e-6:
        raise ValueError(f"{name} has edges up to {d.max():.3f} Å, longer than the model's "
                         f"graph cutoff {cutoff} Å; build records with the model's cutoff")


def _layout(model: Model, recs: list[graph.Record], layout: str, batch_size: int) -> str:
    declared = model.graph.layouts
    if layout == "auto":
        lay = graph.choose_layout(recs, batch_size)
        return lay if lay in declared else declared[0]
    if layout not in declared:
        raise ValueError(f"{model.name} supports the batch layouts {list(declared)}, "
                         f"got layout={layout!r}")
    return layout


def _budget(model: Model, recs: list[graph.Record], layout: str, batch_size: int) -> graph.Budget:
    """The cached budget of (model, layout, batch size), grown when ``recs`` need more."""
    new = graph.fixed_budget(recs, batch_size, layout)
    key = (model, layout, batch_size)
    old = _BUDGETS.get(key)
    if layout == "dense":
        n_max = max(2, new.n_node // new.n_graph,  # 2: per-atom and per-graph shapes differ
                    0 if old is None else old.n_node // old.n_graph)
        budget = graph.Budget(batch_size * n_max, batch_size * n_max * (n_max // 2), batch_size)
    elif old is None:
        budget = new
    else:
        budget = graph.Budget(max(old.n_node, new.n_node), max(old.n_edge, new.n_edge),
                              new.n_graph, max(old.n_triplet, new.n_triplet))
    _BUDGETS[key] = budget
    return budget


def _is_committee(model: Model, params: Params, example: graph.Batch) -> bool:
    leaves, tree = jax.tree_util.tree_flatten(params)
    key = (model, tree, tuple(np.shape(x) for x in leaves))
    if key not in _COMMITTEE:
        _COMMITTEE[key] = ensemble.is_committee(model, params, example)
    return _COMMITTEE[key]


def _evaluate(model: Model, is_com: bool, keys: tuple[str, ...] | None, members: bool):
    def pick(out):
        want = tuple(out) if keys is None else keys
        missing = [k for k in want if k not in out]
        if missing:
            raise ValueError(f"{model.name} gives no {missing}; its outputs are {sorted(out)}")
        return {k: out[k] for k in want}

    def fn(params, batch):
        if not is_com:
            return pick(model.apply(params, batch)), {}
        outs = pick(ensemble.apply(model, params, batch))
        st = committee.stats(outs, batch=batch)
        main = {k: st.pop(f"{k}_mean") for k in outs}
        return {**main, **st}, (outs if members else {})

    return fn


def _unpad(out: dict, b: graph.Batch, grp: list[int], p: Plan, axis: int, name: str) -> dict:
    """Real graphs' rows (arrays) and real atoms per structure (lists) of a batch's outputs."""
    G, N = p.budget.n_graph, p.budget.n_node
    real = np.flatnonzero(np.asarray(b.nodes["mask"]))
    cuts = np.cumsum([p.records[k].n_node for k in grp])[:-1]
    res = {}
    for k, v in out.items():
        v = np.asarray(v)
        v = v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v
        size = v.shape[axis] if v.ndim > axis else None
        if size == G:
            res[k] = np.take(v, np.arange(len(grp)), axis=axis)
        elif size == N:
            res[k] = np.split(np.take(v, real, axis=axis), cuts, axis=axis)
        else:
            raise ValueError(f"{name} output {k!r} has shape {v.shape}: neither per graph "
                             f"({G}) nor per atom ({N}); choose outputs with keys=")
    return res


def _join(parts: list[dict], axis: int) -> dict:
    if not parts or not parts[0]:
        return {}
    return {k: (sum((p[k] for p in parts), []) if isinstance(parts[0][k], list)
                else np.concatenate([p[k] for p in parts], axis=axis)) for k in parts[0]}
