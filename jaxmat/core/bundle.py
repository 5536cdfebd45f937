"""Model bundles: one directory holds everything needed to use a trained model.

``path/bundle.json``
    ``format``, ``format_version``, ``jaxmat_version``; ``model`` (builder name, model
    name and config, nested for wrappers such as :func:`jaxmat.core.potential.potential`);
    ``graph`` (:class:`jaxmat.core.protocol.GraphSpec`); ``references`` (eV per element symbol),
    ``scale`` and ``shift`` (eV/atom) as read from the config; ``units``; ``params`` (file,
    ``n_members`` — null for a single model, M for a committee with a leading member axis —
    and the shape and dtype of every array); ``metadata`` (free JSON).
``path/params.npz``
    one array per params leaf, named by its '/'-joined pytree path.

Loading executes no code (JSON and ``np.load(allow_pickle=False)``): the model is rebuilt
by a registered builder (:func:`register`) from its config, and every file is checked
against the others, so an edited or incomplete bundle raises ``ValueError`` (or
``FileNotFoundError``) naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import typing
import uuid
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxmat.core.config import check, from_dict, to_json
from jaxmat.core.protocol import GraphSpec, Model, Params

FORMAT = "jaxmat-bundle"
FORMAT_VERSION = 1
JSON_FILE, PARAMS_FILE = "bundle.json", "params.npz"
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"}
_KEYS = {"format", "format_version", "jaxmat_version", "model", "graph", "references",
         "scale", "shift", "units", "params", "metadata"}


# --------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Builder:
    """``fn(*configs) -> Model`` for models whose ``config`` has the dataclass type(s)
    ``config_types``; a wrapper (``config_types`` None) is ``fn(model, **options)``."""

    name: str
    fn: Callable[..., Model]
    config_types: tuple[type, ...] | None


_REGISTRY: dict[str, Builder] = {}


def register(name: str, builder: Callable[..., Model],
             config_type: type | tuple[type, ...] | None = None, replace: bool = False) -> None:
    """Let bundles save and rebuild models made by ``builder``.

    With ``config_type`` (a dataclass, or a tuple of them): ``builder(config)`` (or
    ``builder(*configs)``) returns a Model whose ``config`` is that config (e.g.
    ``from_nnx(..., config=cfg)``). Without it ``builder`` is a wrapper,
    ``builder(inner_model, **options)``, whose Model has ``config={"builder": name,
    "model": inner_model, **options}`` with JSON-able options.
    """
    reg = _registry()
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
    reg[name] = Builder(name, builder, types_)


def _registry() -> dict[str, Builder]:
    if not _REGISTRY:
        from jaxmat.models import alignn, graph_target, painn, schnet
        from jaxmat.models.alignn import ALIGNNConfig
        from jaxmat.models.coordinate import CoordinateMLPConfig, coordinate_mlp
        from jaxmat.models.mace import MACEConfig, mace
        from jaxmat.models.mpnn import MPNNConfig, mpnn
        from jaxmat.models.painn import PaiNNConfig
        from jaxmat.models.schnet import SchNetConfig
        from jaxmat.models.spectral import (SiteHeadConfig, painn_site_spectral,
                                            schnet_site_spectral)
        from jaxmat.core.potential import potential

        for name, fn, t in [
                ("schnet", schnet, (SchNetConfig,)), ("painn", painn, (PaiNNConfig,)),
                ("alignn", alignn, (ALIGNNConfig,)), ("mpnn", mpnn, (MPNNConfig,)),
                ("mace", mace, (MACEConfig,)),
                ("coordinate_mlp", coordinate_mlp, (CoordinateMLPConfig,)),
                ("schnet_site_spectral", schnet_site_spectral, (SchNetConfig, SiteHeadConfig)),
                ("painn_site_spectral", painn_site_spectral, (PaiNNConfig, SiteHeadConfig)),
                ("potential", potential, None), ("graph_target", graph_target, None)]:
            _REGISTRY[name] = Builder(name, fn, t)
    return _REGISTRY


def _is_wrapper_config(cfg: Any) -> bool:
    return isinstance(cfg, dict) and "builder" in cfg and isinstance(cfg.get("model"), Model)


def innermost_config(model: Model) -> Any:
    """The config of the innermost built model (e.g. the SchNetConfig of a potential)."""
    while _is_wrapper_config(model.config):
        model = model.config["model"]
    return model.config


# --------------------------------------------------------------------------- describe a model
_HOWTO = ("register its constructor with jaxmat.core.bundle.register(name, builder, config_type="
          "YourConfig) and build the model with config=YourConfig(...) (from_nnx/from_linen "
          "take config=)")


def _describe(model: Model) -> dict:
    cfg, reg = model.config, _registry()
    if _is_wrapper_config(cfg):
        b = reg.get(cfg["builder"])
        if b is None or b.config_types is not None:
            raise ValueError(f"model {model.name!r} records wrapper {cfg['builder']!r}, which "
                             f"is not a registered wrapper; {_HOWTO}")
        options = {k: to_json(v, f"option {k!r} of wrapper {b.name!r}")
                   for k, v in cfg.items() if k not in ("builder", "model")}
        return {"builder": b.name, "name": model.name, "options": options,
                "model": _describe(cfg["model"])}
    if cfg is None:
        raise ValueError(f"model {model.name!r} has no config, so a bundle cannot rebuild it; "
                         f"{_HOWTO}")
    cfgs = cfg if isinstance(cfg, tuple) else (cfg,)
    found = [b for b in reg.values() if b.config_types == tuple(type(c) for c in cfgs)]
    if not found:
        raise ValueError(f"no bundle builder is registered for the config of model "
                         f"{model.name!r} ({', '.join(type(c).__name__ for c in cfgs)}); {_HOWTO}")
    js = [to_json(c, type(c).__name__) for c in cfgs]
    return {"builder": found[0].name, "name": model.name,
            "config": js if isinstance(cfg, tuple) else js[0]}


# --------------------------------------------------------------------------- rebuild a model
def _build(desc: Any, where: str) -> Model:
    """Rebuild a model from its ``_describe`` record (``where``: file and JSON path)."""
    if not isinstance(desc, dict) or not {"builder", "name"} <= set(desc):
        raise ValueError(f"{where} must be an object with 'builder' and 'name', got {desc!r}")
    reg = _registry()
    b = reg.get(desc["builder"])
    if b is None:
        raise ValueError(f"{where}: unknown builder {desc['builder']!r} (registered: "
                         f"{sorted(reg)}); register it with jaxmat.core.bundle.register before "
                         "loading")
    wrapper = b.config_types is None
    keys = {"builder", "name", *(("options", "model") if wrapper else ("config",))}
    if set(desc) != keys:
        raise ValueError(f"{where}: builder {b.name!r} needs the keys {sorted(keys)}, got "
                         f"{sorted(desc)}")
    if wrapper:
        model = _wrap(b, _build(desc["model"], f"{where}.model"), desc["options"], where)
    else:
        raw = desc["config"]
        if len(b.config_types) > 1 and not (isinstance(raw, list)
                                            and len(raw) == len(b.config_types)):
            raise ValueError(f"{where}.config must be a list of {len(b.config_types)} configs")
        raws = raw if len(b.config_types) > 1 else [raw]
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


# --------------------------------------------------------------------------- references
def _stats(model: Model, where: str) -> dict:
    """``references`` (eV per element symbol, non-zero ones), ``scale`` and ``shift``
    (eV/atom) of the innermost config; None where the config has no such field."""
    cfg = innermost_config(model)
    out: dict[str, Any] = {"references": None, "scale": None, "shift": None}
    for c in cfg if isinstance(cfg, tuple) else (cfg,):
        for k in ("scale", "shift"):
            if out[k] is None and hasattr(c, k):
                out[k] = float(getattr(c, k))
        if out["references"] is None:
            out["references"] = _references(c, where)
    return out


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


def _check_stats(doc: dict, model: Model, file: str) -> None:
    have = _stats(model, f"{file}: model config")
    for k in ("references", "scale", "shift"):
        if doc[k] != have[k]:
            raise ValueError(f"{file}: {k} = {doc[k]!r} disagrees with the model config, "
                             f"which gives {have[k]!r}; the file was edited inconsistently")


# --------------------------------------------------------------------------- params
def _path_name(path: tuple) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _flat(tree: Any) -> tuple[dict[str, Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {_path_name(p): x for p, x in leaves}
    if len(flat) != len(leaves):
        raise ValueError("params have leaves whose '/'-joined paths collide")
    return flat, treedef


def _template(model: Model) -> Any:
    try:
        return jax.eval_shape(model.init, jax.random.key(0), None)
    except Exception as e:  # noqa: BLE001 — reported with the model name
        raise ValueError(f"cannot shape the params of model {model.name!r}: model.init(key, "
                         f"None) failed ({type(e).__name__}: {e}); a bundle needs a model "
                         "whose init runs without an example batch (from_nnx models do)") from e


def _n_members(got: dict[str, tuple], want: dict[str, tuple], where: str) -> int | None:
    """None when ``got`` shapes equal ``want``, M for a committee (leading axis M)."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"{where}: params arrays missing {missing[:5]} and extra {extra[:5]} "
                         f"(of {len(want)} the model has)")
    if all(got[k] == want[k] for k in want):
        return None
    sizes = {got[k][0] if len(got[k]) == len(want[k]) + 1 else None for k in want}
    m = sizes.pop() if len(sizes) == 1 else None
    for k in sorted(want):
        if (got[k] != want[k] if m is None else got[k] != (m,) + want[k]):
            exp = want[k] if m is None else (m,) + want[k]
            raise ValueError(f"{where}: array {k!r} has shape {got[k]} but the model built from "
                             f"the config expects {exp} (config and params do not match)")
    return m


# --------------------------------------------------------------------------- save
def save(path: str | os.PathLike, model: Model, params: Params, *,
         metadata: dict | None = None, overwrite: bool = False) -> str:
    """Write ``model`` and its ``params`` (single, or a committee with a leading member
    axis) as a bundle directory at ``path``; returns its absolute path.

    The bundle is written to a temporary sibling directory, read back and checked, then
    renamed into place. An existing non-empty ``path`` is refused unless ``overwrite`` is
    set and it is a bundle; ``metadata`` is any JSON-able dict (e.g. metrics).
    """
    import jaxmat

    path = os.path.abspath(os.fspath(path))
    desc = _describe(model)
    flat, _ = _flat(params)
    arrays = {k: np.asarray(v) for k, v in flat.items()}
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ValueError(f"params array {k!r} has dtype {a.dtype}, which params.npz cannot "
                             "hold without pickle")
    want = {k: tuple(s.shape) for k, s in _flat(_template(model))[0].items()}
    n_members = _n_members({k: a.shape for k, a in arrays.items()}, want, "save")
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
           "jaxmat_version": jaxmat.__version__, "model": desc, "graph": model.graph.to_dict(),
           **_stats(model, f"model {model.name!r}"), "units": dict(UNITS),
           "params": {"file": PARAMS_FILE, "n_members": n_members,
                      "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                                 for k, a in sorted(arrays.items())}},
           "metadata": to_json(metadata or {}, "metadata")}
    _check_target(path, overwrite)
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = _fresh_dir(parent, f".{base}.tmp-")
    old = None
    try:
        np.savez(os.path.join(tmp, PARAMS_FILE), **arrays)
        with open(os.path.join(tmp, JSON_FILE), "w", encoding="utf-8") as f:
            f.write(_dumps(doc))
        if _describe(load(tmp).model) != desc:  # what was written reads back, exactly
            raise ValueError(f"model {model.name!r} does not round-trip through its builder "
                             f"{desc['builder']!r}: the rebuilt model describes itself differently")
        if os.path.exists(path):
            old = _fresh_dir(parent, f".{base}.old-")
            os.rename(path, os.path.join(old, base))
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not os.path.exists(path):
            os.rename(os.path.join(old, base), path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _fresh_dir(parent: str, prefix: str) -> str:
    """A new empty directory in ``parent`` (permissions from the umask)."""
    d = os.path.join(parent, prefix + uuid.uuid4().hex[:12])
    os.mkdir(d)
    return d


def _dumps(doc: dict) -> str:
    """Indented JSON with lists of scalars, and objects that fit in 60 characters, on one
    line (JSON strings hold no raw newlines, so only the layout changes)."""
    def join(m: re.Match, limit: int | None) -> str:
        one = m.group(1) + re.sub(r",\n\s*", ", ", m.group(2)) + m.group(3)
        return one if limit is None or len(one) <= limit else m.group(0)

    text = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False)
    text = re.sub(r"(\[)\n\s*([^\[\]{}]*?)\n\s*(\])", lambda m: join(m, None), text)
    text = re.sub(r"(\{)\n\s*([^{}]*?)\n\s*(\})", lambda m: join(m, 60), text)
    return text + "\n"


def _check_target(path: str, overwrite: bool) -> None:
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise FileExistsError(f"{path} exists and is not a directory; not replacing it")
    if not os.listdir(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to "
                              "replace a bundle there")
    if not os.path.isfile(os.path.join(path, JSON_FILE)):
        raise FileExistsError(f"{path} is not a jaxmat bundle (no {JSON_FILE}); refusing to "
                              "replace it even with overwrite=True")


# --------------------------------------------------------------------------- load
@dataclasses.dataclass(frozen=True)
class Bundle:
    """A loaded bundle: ``model`` and ``params`` ready to use. ``n_members``: None for a
    single model, M for a committee (leading member axis); ``references`` (eV per element),
    ``scale``/``shift`` (eV/atom) as saved; ``metadata`` as given to :func:`save`."""

    path: str
    model: Model
    params: Params
    n_members: int | None
    references: dict[str, float] | None
    scale: float | None
    shift: float | None
    metadata: dict
    jaxmat_version: str

    @property
    def graph(self) -> GraphSpec:
        return self.model.graph

    @property
    def config(self) -> Any:
        """Config of the innermost built model (e.g. ``SchNetConfig`` inside a potential)."""
        return innermost_config(self.model)

    def calculator(self, **kwargs: Any):
        """ASE calculator (:class:`jaxmat.ase.JaxmatCalculator`) of this model and params."""
        from jaxmat.ase import JaxmatCalculator

        return JaxmatCalculator(self.model, self.params, **kwargs)


def load(path: str | os.PathLike) -> Bundle:
    """Read the bundle directory at ``path`` (see the module docstring); executes no code."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no bundle directory at {path}")
    extra = sorted(set(os.listdir(path)) - {JSON_FILE, PARAMS_FILE})
    if extra:
        raise ValueError(f"{path}: unexpected files {extra}; a bundle holds only {JSON_FILE} "
                         f"and {PARAMS_FILE} (nothing else, e.g. pickles, is ever read)")
    file = os.path.join(path, JSON_FILE)
    doc = _read_json(file)
    model = _build(doc["model"], f"{file}: model")
    try:
        graph = GraphSpec.from_dict(doc["graph"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: invalid graph spec: {e}") from None
    if graph != model.graph:
        raise ValueError(f"{file}: graph {graph} differs from the graph of the model built "
                         f"from its config, {model.graph}")
    _check_stats(doc, model, file)
    if doc["units"] != UNITS:
        raise ValueError(f"{file}: units {doc['units']} are not jaxmat's {UNITS}")
    params, n = _read_params(os.path.join(path, PARAMS_FILE), doc["params"], model, file)
    meta = doc["metadata"]
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: metadata must be a JSON object")
    return Bundle(path, model, params, n, doc["references"], doc["scale"], doc["shift"], meta,
                  str(doc["jaxmat_version"]))


def _read_json(file: str) -> dict:
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: not a jaxmat bundle")
    try:
        with open(file, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{file} is not a jaxmat bundle (format is not {FORMAT!r})")
    v = doc.get("format_version")
    if v != FORMAT_VERSION:
        age = ("newer than this jaxmat reads; upgrade jaxmat" if isinstance(v, int)
               and not isinstance(v, bool) and v > FORMAT_VERSION else
               "older or unknown; re-save the model with a jaxmat that reads it")
        raise ValueError(f"{file}: bundle format version {v!r} is {age} "
                         f"(this jaxmat reads version {FORMAT_VERSION})")
    if set(doc) != _KEYS:
        raise ValueError(f"{file}: unknown keys {sorted(set(doc) - _KEYS)}, missing keys "
                         f"{sorted(_KEYS - set(doc))}")
    return doc


def _read_params(npz: str, index: Any, model: Model, file: str) -> tuple[Params, int | None]:
    if not (isinstance(index, dict) and index.get("file") == PARAMS_FILE
            and isinstance(index.get("arrays"), dict) and "n_members" in index):
        raise ValueError(f"{file}: 'params' must give file {PARAMS_FILE!r}, n_members and arrays")
    if not os.path.isfile(npz):
        raise FileNotFoundError(f"{npz} not found: the bundle has no params")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 — any unreadable archive is reported by name
        raise ValueError(f"{npz} is not a readable params archive: {e}") from None
    listed = {k: (tuple(v.get("shape", ())), v.get("dtype")) if isinstance(v, dict) else v
              for k, v in index["arrays"].items()}
    found = {k: (a.shape, str(a.dtype)) for k, a in arrays.items()}
    if listed != found:
        bad = sorted(k for k in set(listed) | set(found) if listed.get(k) != found.get(k))
        raise ValueError(f"{npz} does not match the array list in {file}: "
                         + "; ".join(f"{k}: listed {listed.get(k)}, found {found.get(k)}"
                                     for k in bad[:5]))
    tmpl, treedef = _flat(_template(model))
    n = _n_members({k: a.shape for k, a in arrays.items()},
                   {k: tuple(s.shape) for k, s in tmpl.items()}, npz)
    if index["n_members"] != n:
        raise ValueError(f"{file}: n_members is {index['n_members']!r} but {npz} holds "
                         f"{'a single model' if n is None else f'{n} members'}")
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(arrays[k])
                                                  for k in tmpl]), n
