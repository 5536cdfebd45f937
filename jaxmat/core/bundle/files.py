"""Bundle files: :func:`save` writes ``bundle.json`` and ``params.npz`` (see
:mod:`jaxmat.core.bundle`), :func:`load` reads them back as a :class:`Bundle`, checking every
file against the others."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from typing import Any

import jax
import numpy as np

from jaxmat.core.bundle.registry import _build, _describe, _references, innermost_config
from jaxmat.core.bundle.sections import _sections
from jaxmat.core.config import to_json
from jaxmat.core.protocol import GraphSpec, Model, Params
from jaxmat.version import __version__

FORMAT = "jaxmat-bundle"
FORMAT_VERSION = 1
JSON_FILE, PARAMS_FILE = "bundle.json", "params.npz"
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"}
_KEYS = {"format", "format_version", "jaxmat_version", "model", "graph", "references",
         "scale", "shift", "units", "params", "metadata"}
_OPTIONAL = {"training", "calibration"}  # absent in bundles written before they existed


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


def _flat(tree: Any) -> tuple[dict[str, Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {jax.tree_util.keystr(p, simple=True, separator="/"): x for p, x in leaves}
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


def _n_members(arrays: dict[str, Any], template: dict[str, Any], where: str) -> int | None:
    """None when the shapes of ``arrays`` equal those of ``template``, M for a committee
    (leading axis M)."""
    got, want = ({k: tuple(a.shape) for k, a in d.items()} for d in (arrays, template))
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"{where}: params arrays missing {missing[:5]} and extra {extra[:5]} "
                         f"(of {len(want)} the model has)")
    sizes = {got[k][0] if len(got[k]) == len(want[k]) + 1 else None for k in want}
    m = sizes.pop() if len(sizes) == 1 else None
    for k in sorted(want):
        exp = want[k] if m is None else (m,) + want[k]
        if got[k] != exp:
            raise ValueError(f"{where}: array {k!r} has shape {got[k]} but the model built from "
                             f"the config expects {exp} (config and params do not match)")
    return m


def save(path: str | os.PathLike, model: Model, params: Params, *,
         metadata: dict | None = None, overwrite: bool = False,
         training: dict | None = None, calibration: dict | None = None) -> str:
    """Write ``model`` and its ``params`` (single, or a committee with a leading member
    axis) as a bundle directory at ``path``; returns its absolute path.

    The bundle is written to a temporary sibling directory, read back and checked, then
    renamed into place. An existing non-empty ``path`` is refused unless ``overwrite`` is
    set and it is a bundle; ``metadata`` is any JSON-able dict (e.g. metrics).
    ``training`` (:func:`training_summary`) and ``calibration``
    (:func:`jaxmat.core.calibrate.fit_targets`) are stored as given (checked).
    """
    path = os.path.abspath(os.fspath(path))
    desc = _describe(model)
    arrays = {k: np.asarray(v) for k, v in _flat(params)[0].items()}
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ValueError(f"params array {k!r} has dtype {a.dtype}, which params.npz cannot "
                             "hold without pickle")
    n_members = _n_members(arrays, _flat(_template(model))[0], "save")
    index = {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in sorted(arrays.items())}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "jaxmat_version": __version__,
           "model": desc, "graph": model.graph.to_dict(), **_stats(model, f"model {model.name!r}"),
           "units": dict(UNITS), "params": {"file": PARAMS_FILE, "n_members": n_members,
                                            "arrays": index},
           "metadata": to_json(metadata or {}, "metadata"),
           **_sections(training, calibration, n_members)}
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
    if os.path.lexists(path) and (not os.path.isdir(path) or os.path.islink(path)):
        raise FileExistsError(f"{path} exists and is not a directory; not replacing it")
    if not os.path.isdir(path) or not os.listdir(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to "
                              "replace a bundle there")
    if not os.path.isfile(os.path.join(path, JSON_FILE)):
        raise FileExistsError(f"{path} is not a jaxmat bundle (no {JSON_FILE}); refusing to "
                              "replace it even with overwrite=True")


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
    training: dict | None = None
    calibration: dict | None = None

    @property
    def graph(self) -> GraphSpec:
        return self.model.graph

    @property
    def config(self) -> Any:
        """Config of the innermost built model (e.g. ``SchNetConfig`` inside a potential)."""
        return innermost_config(self.model)

    def check_elements(self, numbers: Any, what: str) -> None:
        """Refuse atomic numbers outside ``metadata["elements"]`` (the elements an imported
        model was made for; bundles without that list accept any)."""
        check_elements(self.metadata.get("elements"), numbers, what, self.path)


def check_elements(elements: Any, numbers: Any, what: str, model: str = "the model") -> None:
    """ValueError naming the atomic numbers of ``numbers`` not in ``elements`` (None: any)."""
    if elements is None:
        return
    unknown = sorted(set(int(z) for z in np.ravel(numbers)) - set(int(z) for z in elements))
    if unknown:
        from ase.data import chemical_symbols
        name = lambda zs: ", ".join(chemical_symbols[z] for z in zs)  # noqa: E731
        raise ValueError(f"{what} has {name(unknown)}, which {model} was not made for (it "
                         f"knows {name(sorted(elements))}); its predictions there would be "
                         "meaningless")


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
    have = _stats(model, f"{file}: model config")
    for k in ("references", "scale", "shift"):
        if doc[k] != have[k]:
            raise ValueError(f"{file}: {k} = {doc[k]!r} disagrees with the model config, "
                             f"which gives {have[k]!r}; the file was edited inconsistently")
    if doc["units"] != UNITS:
        raise ValueError(f"{file}: units {doc['units']} are not jaxmat's {UNITS}")
    params, n = _read_params(os.path.join(path, PARAMS_FILE), doc["params"], model, file)
    if not isinstance(doc["metadata"], dict):
        raise ValueError(f"{file}: metadata must be a JSON object")
    return Bundle(path, model, params, n, doc["references"], doc["scale"], doc["shift"],
                  doc["metadata"], str(doc["jaxmat_version"]),
                  **_sections(doc.get("training"), doc.get("calibration"), n, file))


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
    if not _KEYS <= set(doc) <= _KEYS | _OPTIONAL:
        raise ValueError(f"{file}: unknown keys {sorted(set(doc) - _KEYS - _OPTIONAL)}, "
                         f"missing keys {sorted(_KEYS - set(doc))}")
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
    n = _n_members(arrays, tmpl, npz)
    if index["n_members"] != n:
        raise ValueError(f"{file}: n_members is {index['n_members']!r} but {npz} holds "
                         f"{'a single model' if n is None else f'{n} members'}")
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(arrays[k]) for k in tmpl]), n


