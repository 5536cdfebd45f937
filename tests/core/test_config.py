"""Configs from dicts: checked types, nested sections, unknown keys named."""
import dataclasses

import pytest

from jaxmat.core import config


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    axes: tuple[int, ...] = (0, 1, 2)


@dataclasses.dataclass
class Outer:
    name: str = "run"
    epochs: int = 10
    patience: int | None = None
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(lr=5e-3))


def test_round_trip_and_partial_nesting_keeps_defaults():
    cfg = Outer(name="x", epochs=3, inner=Inner(2e-3, (0, 2)))
    raw = config.to_json(cfg)
    assert raw == {"name": "x", "epochs": 3, "patience": None,
                   "inner": {"lr": 2e-3, "axes": [0, 2]}}
    assert config.from_dict(Outer, raw, complete=True) == cfg
    part = config.from_dict(Outer, {"inner": {"axes": [1]}, "epochs": 4})
    assert part == Outer(epochs=4, inner=Inner(lr=5e-3, axes=(1,)))  # the field's default lr
    assert config.from_dict(Outer, {"inner": {"lr": 1}}).inner.lr == 1.0  # int -> float


@pytest.mark.parametrize("raw, msg", [
    ({"epoch": 3}, r"cfg \(Outer\): unknown keys \['epoch'\]"),
    ({"epochs": "3"}, r"cfg.epochs must be int, got '3'"),
    ({"epochs": True}, r"cfg.epochs must be int, got True"),
    ({"patience": 1.5}, r"cfg.patience must be"),
    ({"inner": {"lr": "fast"}}, r"cfg.inner.lr must be float, got 'fast'"),
    ({"inner": {"axes": [0, "y"]}}, r"cfg.inner.axes must be"),
    ({"inner": {"momentum": 0.9}}, r"cfg.inner \(Inner\): unknown keys \['momentum'\]"),
    ([1, 2], r"cfg must be a table/object of Outer fields"),
])
def test_bad_values_name_the_key(raw, msg):
    with pytest.raises(ValueError, match=msg):
        config.from_dict(Outer, raw, "cfg")


def test_complete_requires_every_key_and_json_refuses_nan():
    with pytest.raises(ValueError, match="missing keys"):
        config.from_dict(Inner, {"lr": 1e-3}, complete=True)
    with pytest.raises(ValueError, match="only finite numbers"):
        config.to_json(Inner(lr=float("nan")))
