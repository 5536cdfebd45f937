"""The model registry of bundles: builders rebuild a model from its saved config
(:func:`register`; every built-in model module registers its constructors when imported),
and a model describes itself for a bundle (builder, name, config; wrappers nest the model
they wrap)."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from jaxmat.core.config import check, from_dict, to_json
from jaxmat.core.protocol import Model


@dataclasses.dataclass(frozen=True)
class Builder:
    """``fn(*configs) -> Model`` for models whose ``config`` has the dataclass type(s)
    ``config_types``; a wrapper (``config_types`` None) is ``fn(model, **options)``.
    ``module``: where ``fn`` lives (a bundle records it, so that loading a jaxmat model
    imports the module that registers it)."""

    name: str
    fn: Callable[..., Model]
    config_types: tuple[type, ...] | None
    module: str = ""


_REGISTRY: dict[str, Builder] = {}


def register(name: str, builder: Callable[..., Model],
             config_type: type | tuple[type, ...] | None = None, replace: bool = False) -> None:
    """Let bundles save and rebuild models made by ``builder`` (every built-in model module
    registers its constructors when imported).

    With ``config_type`` (a dataclass, or a tuple of them): ``builder(config)`` (or
    ``builder(*configs)``) returns a Model whose ``config`` is that config (e.g.
    ``from_nnx(..., config=cfg)``). Without it ``builder`` is a wrapper,
    ``builder(inner_model, **options)``, whose Model has ``config={"builder": name,
    "model": inner_model, **options}`` with JSON-able options.
    """
    reg = _REGISTRY
    types_ = None if config_type is None else (
        tuple(config_type) if isinstance(config_type, tuple) else (config_type,))
    for t in types_ or ():
        if not (isinstance(t, type) and dataclasses.is_dataclass(t)):
            raise ValueError(f"config_type of builder {name!r} must be dataclass types, got {t!r}")
    clash = [b.name for b in reg.values() if types_ and b.config_types == types_ and b.name != name]
    if not replace and (name in reg or clash):
        what = f"builder {name!r}" if name in reg else f"the config type of {name!r} ({clash[0]!r})"
        raise ValueError(f"{what} is already registered; pass replace=True to replace it")
    for other in clash:
        del reg[other]
    reg[name] = Builder(name, builder, types_, getattr(builder, "__module__", "") or "")


def _builder(desc: dict, where: str) -> Builder:
    """The registered builder a saved description names; a jaxmat module recorded with it is
    imported first (it registers its models). A user's own builders must be registered
    before loading."""
    name, module = desc["builder"], desc.get("module", "")
    # a bundle written before builders recorded their module names uses built-in builders
    modules = [module] if module else ["jaxmat.core.potential", "jaxmat.models"]
    for m in modules if name not in _REGISTRY else []:
        if isinstance(m, str) and m.startswith("jaxmat."):
            try:
                importlib.import_module(m)
            except ImportError as e:
                raise ValueError(f"{where}: builder {name!r} lives in {m!r}, which cannot be "
                                 f"imported: {e}") from None
    if name not in _REGISTRY:
        raise ValueError(f"{where}: unknown builder {name!r} (registered: {sorted(_REGISTRY)}); "
                         "register it with jaxmat.core.bundle.register before loading")
    return _REGISTRY[name]


def _is_wrapper_config(cfg: Any) -> bool:
    return isinstance(cfg, dict) and "builder" in cfg and isinstance(cfg.get("model"), Model)


def innermost_config(model: Model) -> Any:
    """The config of the innermost built model (e.g. the SchNetConfig of a potential)."""
    while _is_wrapper_config(model.config):
        model = model.config["model"]
    return model.config


_HOWTO = ("register its constructor with jaxmat.core.bundle.register(name, builder, config_type="
          "YourConfig) and build the model with config=YourConfig(...) (from_nnx/from_linen "
          "take config=)")


def _describe(model: Model) -> dict:
    cfg = model.config
    if _is_wrapper_config(cfg):
        b = _REGISTRY.get(cfg["builder"])
        if b is None or b.config_types is not None:
            raise ValueError(f"model {model.name!r} records wrapper {cfg['builder']!r}, which "
                             f"is not a registered wrapper; {_HOWTO}")
        options = {k: to_json(v, f"option {k!r} of wrapper {b.name!r}")
                   for k, v in cfg.items() if k not in ("builder", "model")}
        return {"builder": b.name, "module": b.module, "name": model.name,
                "options": options, "model": _describe(cfg["model"])}
    if cfg is None:
        raise ValueError(f"model {model.name!r} has no config, so a bundle cannot rebuild it; "
                         f"{_HOWTO}")
    cfgs = cfg if isinstance(cfg, tuple) else (cfg,)
    found = [b for b in _REGISTRY.values() if b.config_types == tuple(type(c) for c in cfgs)]
    if not found:
        raise ValueError(f"no bundle builder is registered for the config of model "
                         f"{model.name!r} ({', '.join(type(c).__name__ for c in cfgs)}); {_HOWTO}")
    js = [to_json(c, type(c).__name__) for c in cfgs]
    return {"builder": found[0].name, "module": found[0].module, "name": model.name,
            "config": js if isinstance(cfg, tuple) else js[0]}


def _build(desc: Any, where: str) -> Model:
    """Rebuild a model from its ``_describe`` record (``where``: file and JSON path)."""
    if not isinstance(desc, dict) or not {"builder", "name"} <= set(desc):
        raise ValueError(f"{where} must be an object with 'builder' and 'name', got {desc!r}")
    b = _builder(desc, where)
    wrapper = b.config_types is None
    keys = {"builder", "name", *(("options", "model") if wrapper else ("config",))}
    if set(desc) - {"module"} != keys:
        raise ValueError(f"{where}: builder {b.name!r} needs the keys {sorted(keys)}, got "
                         f"{sorted(desc)}")
    if wrapper:
        model = _wrap(b, _build(desc["model"], f"{where}.model"), desc["options"], where)
    else:
        n = len(b.config_types)
        raws = desc["config"] if n > 1 else [desc["config"]]
        if not (isinstance(raws, list) and len(raws) == n):
            raise ValueError(f"{where}.config must be a list of {n} configs")
        cfgs = [from_dict(t, r, f"{where}.config", complete=True) for t, r in zip(b.config_types, raws)]
        for c in cfgs:
            _references(c, f"{where}.config")
        model = _call(b, cfgs, {}, where)
    if model.name != desc["name"]:
        raise ValueError(f"{where}: builder {b.name!r} makes a model named {model.name!r}, "
                         f"but the bundle names it {desc['name']!r}")
    return model


def _wrap(b: Builder, inner: Model, options: Any, where: str) -> Model:
    if not isinstance(options, dict):
        raise ValueError(f"{where}.options must be a JSON object, got {options!r}")
    try:
        inspect.signature(b.fn).bind(inner, **options)
        hints = typing.get_type_hints(b.fn)
    except TypeError as e:
        raise ValueError(f"{where}.options do not fit wrapper {b.name!r}: {e}") from None
    except NameError:  # unresolvable annotations: options are passed as written
        hints = {}
    opts = {k: check(v, hints.get(k, Any), f"{where}.options.{k}") for k, v in options.items()}
    return _call(b, [inner], opts, where)


def _call(b: Builder, args: list, kwargs: dict, where: str) -> Model:
    try:
        return b.fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 — a builder refusing the saved config
        raise ValueError(f"{where}: builder {b.name!r} failed on the saved config: "
                         f"{type(e).__name__}: {e}") from e


def _references(cfg: Any, where: str) -> dict[str, float] | None:
    """Non-zero ``cfg.atom_refs`` by element symbol (None: no such field); ValueError when
    there are more than the model's ``max_z + 1`` elements."""
    from ase.data import chemical_symbols

    if not hasattr(cfg, "atom_refs"):
        return None
    refs = cfg.atom_refs or ()
    n_max = getattr(cfg, "max_z", len(chemical_symbols) - 1) + 1
    if len(refs) > min(n_max, len(chemical_symbols)):
        raise ValueError(f"{where}: atom_refs has {len(refs)} entries, more than the {n_max} "
                         f"elements (Z = 0..{n_max - 1}) the model embeds")
    return {chemical_symbols[z]: float(e) for z, e in enumerate(refs) if e != 0.0}
