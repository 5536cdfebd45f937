"""Configs are nested dataclasses, the one source of defaults; JSON and TOML dicts map onto
them with checked types. Unknown keys and wrongly typed values raise ``ValueError`` naming
the key (as a dotted path) and what was found, never deep inside the code that uses them.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import numpy as np


def to_json(v: Any, where: str = "config") -> Any:
    """A dataclass (nested), tuple, list, dict or scalar as plain JSON values; ValueError
    naming ``where`` for non-finite numbers and objects JSON cannot hold."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: to_json(getattr(v, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(v)}
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not np.isfinite(v):
            raise ValueError(f"{where} is {v}; only finite numbers can be stored")
        return v
    if isinstance(v, (tuple, list)):
        return [to_json(x, f"{where}[{k}]") for k, x in enumerate(v)]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {k: to_json(x, f"{where}.{k}") for k, x in v.items()}
    raise ValueError(f"{where} holds a {type(v).__name__}, which cannot be stored as JSON")


def from_dict(cls: type, raw: Any, where: str = "config", *, base: Any = None,
              complete: bool = False) -> Any:
    """``cls`` (a dataclass) from a dict of its fields, values checked against the field
    types (nested dataclasses from nested dicts). Missing keys keep the values of ``base``
    (default: the field defaults) unless ``complete``, which requires every key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table/object of {cls.__name__} fields, got {raw!r}")
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # unresolvable annotations: values are taken as written
        hints = {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    missing = [n for n in fields if n not in raw] if complete else []
    if unknown or missing:
        raise ValueError(f"{where} ({cls.__name__}): unknown keys {unknown}"
                         + (f", missing keys {missing}" if complete else "")
                         + f"; the keys are {list(fields)}")
    values = {}
    for name, value in raw.items():
        tp, sub = hints.get(name, Any), f"{where}.{name}"
        sub_cls = _dataclass_in(tp) if isinstance(value, dict) else None
        if sub_cls is not None:
            nested = None if complete else (getattr(base, name) if base is not None
                                            else _default(fields[name]))
            values[name] = from_dict(sub_cls, value, sub, complete=complete,
                                     base=nested if isinstance(nested, sub_cls) else None)
        else:
            values[name] = check(value, tp, sub)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid {cls.__name__}: {e}") from None


def check(v: Any, tp: Any, where: str) -> Any:
    """``v`` as type ``tp`` (lists become tuples for tuple fields, ints floats for float
    fields); ValueError naming ``where`` when it is not one."""
    try:
        return _coerce(v, tp, where)
    except _Mismatch:
        name = getattr(tp, "__name__", None) or str(tp)
        raise ValueError(f"{where} must be {name}, got {v!r} ({type(v).__name__})") from None


class _Mismatch(Exception):
    pass


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass type in ``tp`` (itself, or one member of a union), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if isinstance(a, type)
                 and dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _coerce(v: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return v
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(v, a, where)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is type(None) or tp is None:
        if v is None:
            return None
        raise _Mismatch
    if tp in (bool, int, float, str):
        ok = (isinstance(v, bool) if tp is bool else
              isinstance(v, (int, float) if tp is float else tp) and not isinstance(v, bool))
        if not ok:
            raise _Mismatch
        return float(v) if tp is float else v
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise _Mismatch
        if origin is list or (len(args) == 2 and args[1] is Ellipsis) or not args:
            item = args[0] if args else Any
            out = [_coerce(x, item, where) for x in v]
        elif len(args) == len(v):
            out = [_coerce(x, a, where) for x, a in zip(v, args)]
        else:
            raise _Mismatch
        return tuple(out) if origin is tuple else out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(v, tp):
            return v
        return from_dict(tp, v, where, complete=True)
    return v  # an annotation this reader does not know: taken as written
