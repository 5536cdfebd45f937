"""The photoanode workflow's staged training (Umehara et al., 2019): the spectrum branch,
the composition branch and the head of :func:`jaxmat.models.photoanode_net` are trained
one after another with the others frozen, then (optionally) all together."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxmat.core import train
from jaxmat.core.protocol import Model, Params


def restrict(model: Model, params: Params, trainable: Sequence[str],
             output: str | None = None, target: str = "P") -> Model:
    """A model whose params are only the top-level entries ``trainable`` of ``params``;
    the rest stay fixed at their given values. With ``output`` its ``target`` output is
    replaced by ``output`` (e.g. a branch prediction), so a plain target loss trains it."""
    frozen = {k: v for k, v in params.items() if k not in trainable}
    missing = [k for k in trainable if k not in params]
    if missing:
        raise ValueError(f"unknown parameter groups {missing}; have {sorted(params)}")

    def _out(o: dict) -> dict:
        return {**o, target: o[output]} if output else o

    def init(key, batch=None):
        return {k: params[k] for k in trainable}

    def apply(p, batch):
        return _out(model.apply({**frozen, **p}, batch))

    def apply_train(p, batch, key):
        return _out(model.train_apply({**frozen, **p}, batch, key))

    return Model(init, apply, apply_train if model.apply_train is not None else None,
                 f"{model.name}[{','.join(trainable)}]", model.graph)


def fit_staged(model: Model, params: Params, train_data: Any, val_data: Any = None,
               loss=None, config=None, target: str = "P", finetune: bool = True) -> Params:
    """The paper's staged training of :func:`photoanode_net`: the spectrum branch on P,
    the composition branch on P, the head with both branches frozen, then (``finetune``)
    everything. Each stage is one :func:`jaxmat.core.train.fit` with ``config``."""
    loss = loss or train.target_loss(target)
    stages = [(("spectrum",), f"{target}_spectrum"), (("composition",), f"{target}_composition"),
              (("head",), None)]
    if finetune:
        stages.append((tuple(params), None))
    for groups, out in stages:
        sub = restrict(model, params, groups, out, target)
        res = train.fit(sub, sub.init(None), train_data, val_data, loss, config)
        params = {**params, **res.params}
    return params
