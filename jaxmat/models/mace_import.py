"""Imported MACE models: one extract format, one builder.

An *extract* is what a reader measured on a MACE model of another library, run in that
library's optional peer environment (mace-torch: ``benchmarks/peers/mace_torch_extract.py``;
mlip: ``benchmarks/peers/mace_mlip_extract.py``; jaxmat never imports either), as plain numpy
arrays and a JSON-able config: the dense matrix of every linear map (the module run on the
identity, so each library's normalisation is included), per-element matrices of skip
connections (and of the first layer's message mixing where the source has one), the
coefficient κ of every message path against the Clebsch–Gordan coefficients of
:mod:`cuequivariance` (out = κ · CG(x ⊗ Y) · w, measured with one path switched on), the
radial MLP weights, the symmetric contraction (basis tensors and weights, or the module's
outputs on random inputs), element energies, scale and shift. :func:`write_extract` /
:func:`load_extract` store it as one ``.npz`` that needs neither torch nor mlip.

:func:`build` turns an extract into ``(model, params)`` of :mod:`jaxmat.models.mace`
(numpy and cuequivariance only): linear blocks are cut from the dense matrices, path
coefficients and the edge direction (jaxmat's edge vectors point from receiver to sender;
mace-torch's and mlip's the other way: a sign (-1)^l per spherical-harmonic degree) are
folded into the last radial layer, and the symmetric contraction is fitted in
cuequivariance's basis by least squares on random inputs (the residual is checked).
:func:`convert` writes an extract as a bundle: committees, σ, attacks, MD and the CLI then work on the imported model.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jaxmat.core.protocol import Model, Params
from jaxmat.models.mace import MACEConfig, _contraction_poly, _cue, _message_poly, mace

FORMAT = "jaxmat-mace-extract"
PATH_TOL = 1e-5  # relative residual of a path coefficient / basis fit (float32 sources)


# --------------------------------------------------------------------------- irreps helpers
def _irreps(s: str) -> list[tuple[int, int, int]]:
    """'8x0e+8x1o' -> [(8, 0, 1), (8, 1, -1)] (multiplicity, degree, parity)."""
    out = []
    for term in str(s).replace(" ", "").split("+"):
        mul, ir = term.split("x") if "x" in term else ("1", term)
        out.append((int(mul), int(ir[:-1]), 1 if ir[-1] == "e" else -1))
    return out


def _offsets(irreps: list[tuple[int, int, int]]) -> list[int]:
    """Start of each entry in e3nn's (multiplicity, m) layout."""
    starts, k = [], 0
    for mul, l, _ in irreps:
        starts.append(k)
        k += mul * (2 * l + 1)
    return starts


def _block(dense: np.ndarray, irreps_in, i_in: int, irreps_out, i_out: int) -> np.ndarray:
    """(mul_in, mul_out) weights of an equivariant linear map between two entries, read at
    m = 0 from its dense matrix (rows: input components, columns: output components)."""
    (m1, l1, _), (m2, l2, _) = irreps_in[i_in], irreps_out[i_out]
    a, b = _offsets(irreps_in)[i_in], _offsets(irreps_out)[i_out]
    rows = a + np.arange(m1) * (2 * l1 + 1)
    cols = b + np.arange(m2) * (2 * l2 + 1)
    return dense[np.ix_(rows, cols)]


def _entry(irreps, l: int) -> int:
    [i] = [k for k, (_, li, _) in enumerate(irreps) if li == l]
    return i


def _refuse(what: str, found: Any) -> None:
    raise ValueError(f"MACE model not supported: {what} (found {found}); jaxmat imports "
                     "MACE's standard architecture (see jaxmat.models.mace_import)")



def write_extract(ex: dict, path: str | os.PathLike) -> str:
    """Write an extract to one ``.npz`` (config as JSON inside); returns its path."""
    path = os.fspath(path)
    np.savez_compressed(path, __config__=np.array(json.dumps(ex["config"])), **ex["arrays"])
    return path if path.endswith(".npz") else path + ".npz"


def load_extract(path: str | os.PathLike) -> dict:
    """Read an extract written by :func:`write_extract` (needs neither torch nor mlip)."""
    with np.load(os.fspath(path), allow_pickle=False) as z:
        if "__config__" not in z.files:
            raise ValueError(f"{os.fspath(path)!r} is not a MACE extract: no __config__ "
                             f"entry (found {z.files[:5]})")
        config = json.loads(str(z["__config__"]))
        arrays = {k: z[k] for k in z.files if k != "__config__"}
    if config.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r}: format {config.get('format')!r}, expected {FORMAT!r}")
    return {"config": config, "arrays": arrays}


# --------------------------------------------------------------------------- 2. build (numpy)
def _cue_paths(in_ls: tuple[int, ...], l_max: int) -> dict[tuple[int, int, int], tuple]:
    """jaxmat's message paths: (l_in, l_sh, l_out) -> (weight segment, output entry,
    coefficient λ against CG_cue), measured on the one-channel polynomial."""
    cue = _cue()[0]
    poly, segs, n_w = _message_poly(1, in_ls, l_max)
    x_dims = [2 * l + 1 for l in in_ls]
    out_starts = np.cumsum([0] + [2 * l + 1 for l, _ in segs])
    rng = np.random.default_rng(1)
    found = {}
    W = np.eye(n_w)  # every weight segment at once: one batch row each
    for i, l1 in enumerate(in_ls):
        xs = rng.normal(size=x_dims[i])
        x = np.zeros(sum(x_dims))
        x[sum(x_dims[:i]):sum(x_dims[:i + 1])] = xs
        for l2 in range(l_max + 1):
            ys = rng.normal(size=2 * l2 + 1)
            sh = np.zeros((l_max + 1) ** 2)
            sh[l2 ** 2:(l2 + 1) ** 2] = ys
            [Y] = poly(W, np.tile(x, (n_w, 1)), np.tile(sh, (n_w, 1)))
            for s in range(n_w):
                for e, (l3, _) in enumerate(segs):
                    part = Y[s, out_starts[e]:out_starts[e + 1]]
                    if np.abs(part).max() < 1e-12:
                        continue
                    cg = cue.O3.clebsch_gordan(cue.O3(l1, (-1) ** l1), cue.O3(l2, (-1) ** l2),
                                               cue.O3(l3, (-1) ** l3))[0]
                    ref = np.einsum("ijk,i,j->k", cg, xs, ys)
                    found[(l1, l2, l3)] = (s, e, float(part @ ref / (ref @ ref)))
    return found


def _sc_weights(arrays: dict, t: int, l_max: int, out_ls: tuple[int, ...], nu: int
                ) -> np.ndarray:
    """Symmetric-contraction weights of layer ``t`` in cuequivariance's basis,
    (n_elements, n_basis, C), fitted by least squares so that the one-channel polynomial
    reproduces the source on random inputs: from its basis tensors and weights
    (``sc.{k}.U{ν}``, ``sc.{k}.w{ν}``: out_k = Σ_ν Σ_p w[p] U_ν[m, i_1..i_ν, p] x_i1 … x_iν)
    or from its outputs on given inputs (``sc.X`` (S, dim), ``sc.Y`` (n_el, S, C, D))."""
    poly, n_w = _contraction_poly(1, l_max, out_ls, nu)
    starts = np.cumsum([0] + [2 * l + 1 for l in out_ls])
    if f"{t}.sc.X" in arrays:
        X, Y = arrays[f"{t}.sc.X"], arrays[f"{t}.sc.Y"]
        n_el, S, C, D = Y.shape
        target = Y.transpose(1, 3, 0, 2).reshape(S * D, n_el * C)
    else:
        n_el, _, C = arrays[f"{t}.sc.0.w{nu}"].shape
        n_src = sum(arrays[f"{t}.sc.{k}.U{v}"].shape[-1]
                    for k in range(len(out_ls)) for v in range(1, nu + 1))
        S = max(8, 4 * max(n_w, n_src) // int(starts[-1]) + 8)
        X = np.random.default_rng(2).normal(size=(S, (l_max + 1) ** 2))
        cols, weights = [], []
        for k, l in enumerate(out_ls):
            for v in range(nu, 0, -1):
                U = arrays[f"{t}.sc.{k}.U{v}"]
                U = U[None] if l == 0 else U
                y = np.einsum("...ip,si->s...p", U, X)  # contract the last input index
                for _ in range(v - 1):
                    y = np.einsum("s...ip,si->s...p", y, X)
                block = np.zeros((S, starts[-1], U.shape[-1]))
                block[:, starts[k]:starts[k + 1]] = y
                cols.append(block.reshape(S * starts[-1], -1))
                weights.append(arrays[f"{t}.sc.{k}.w{v}"])
        w = np.concatenate(weights, axis=1)  # (n_el, n_src, C)
        target = np.concatenate(cols, axis=1) @ w.transpose(1, 0, 2).reshape(w.shape[1], -1)
    # cuequivariance: every unit weight on every sample
    [Yc] = poly(np.tile(np.eye(n_w), (len(X), 1)), np.repeat(X, n_w, axis=0))
    design = Yc.reshape(len(X), n_w, -1).transpose(0, 2, 1).reshape(-1, n_w)
    fit, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = np.abs(design @ fit - target).max() / max(np.abs(target).max(), 1e-300)
    if resid > PATH_TOL:
        raise ValueError(f"layer {t}: the source's symmetric contraction is not in the span of "
                         f"cuequivariance's basis (relative residual {resid:.1e})")
    return fit.reshape(n_w, n_el, C).transpose(1, 0, 2)


def build(ex: dict, max_z: int | None = None) -> tuple[Model, Params]:
    """``(model, params)``: a jaxmat MACE (:func:`jaxmat.models.mace.mace`) with the weights
    of an extract (a reader's, or :func:`load_extract`). ``max_z``: largest atomic number
    of the embedding table (default: the model's largest element)."""
    import jax

    c, A = ex["config"], ex["arrays"]
    if c.get("format") != FORMAT:
        raise ValueError(f"not a MACE extract: format {c.get('format')!r}, expected {FORMAT!r}")
    hidden = _irreps(c["hidden_irreps"])
    C = hidden[0][0]
    if any(m != C or p != (-1) ** l or l != i for i, (m, l, p) in enumerate(hidden)):
        _refuse("hidden irreps C x 0e + C x 1o + ... (equal channels, natural parity)",
                c["hidden_irreps"])
    layers = c["layers"]
    corr = {L["correlation"] for L in layers}
    avg = {L["avg_num_neighbors"] for L in layers}
    widths = {h for L in layers for h in L["radial_hs"][1:-1]}
    depths = {len(L["radial_hs"]) - 2 for L in layers}
    if len(corr) != 1:
        _refuse("one correlation order for every layer", sorted(corr))
    if len(avg) != 1:
        _refuse("one avg_num_neighbors for every layer", sorted(avg))
    if len(widths) != 1 or len(depths) != 1:
        _refuse("a radial MLP of equal widths", [L["radial_hs"] for L in layers])
    zs = c["atomic_numbers"]
    max_z = max(zs) if max_z is None else int(max_z)
    if max_z < max(zs):
        raise ValueError(f"max_z={max_z} is below the model's largest element {max(zs)}")
    refs = np.zeros(max_z + 1)
    refs[zs] = c["atomic_energies"]
    readout_hidden = A["readout.1"].shape[1]
    cfg = MACEConfig(
        n_channels=C, n_interactions=len(layers), l_max=c["max_ell"], hidden_l=len(hidden) - 1,
        correlation=corr.pop(), n_rbf=c["num_bessel"], envelope_p=c["num_polynomial_cutoff"],
        radial_features=widths.pop(), radial_layers=depths.pop(),
        readout_features=readout_hidden, cutoff=c["r_max"], avg_num_neighbors=avg.pop(),
        first_residual="0.skip" in A, first_message_by_element="0.species" in A, max_z=max_z, atom_refs=tuple(float(r) for r in refs),
        scale=c["scale"], shift=c["shift"])
    model = mace(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), None)
    params = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, np.float64), shapes)
    F = params["features"]
    n_elem = len(zs)
    F["embedding"]["embedding"][zs] = A["embedding"]
    hid_ls = tuple(range(cfg.hidden_l + 1))
    flip = c.get("edge_vector", "receiver_minus_sender") == "receiver_minus_sender"
    in_ls = (0,)
    for t, L in enumerate(layers):
        out_ls = (0,) if t == len(layers) - 1 else hid_ls
        feats, target, mid = _irreps(L["node_feats"]), _irreps(L["target"]), _irreps(L["mid"])
        inter = F["interactions"][t]
        for l in in_ls:
            i = _entry(feats, l)
            inter["up"]["w"][str(l)][...] = _block(A[f"{t}.up"], feats, i, feats, i)
        # radial MLP: e3nn divides by sqrt(fan-in) and scales SiLU by a constant
        hs, cst = L["radial_hs"], L["radial_cst"]
        rad = inter["radial"]["layers"]
        for k in range(len(hs) - 1):
            w = A[f"{t}.radial.{k}"] / np.sqrt(hs[k]) * (cst if k > 0 else 1.0)
            if k < len(hs) - 2:
                rad[k]["kernel"][...] = w
        last = rad[len(hs) - 2]["kernel"]
        cue_paths = _cue_paths(in_ls, cfg.l_max)
        if len(cue_paths) != len(L["paths"]):
            raise ValueError(f"layer {t}: the source has {len(L['paths'])} message paths, jaxmat "
                             f"{len(cue_paths)}")
        n_entries = {l: 0 for l in range(cfg.l_max + 1)}
        order = {}  # cue output entry -> its block index among entries of its degree
        for key, (s, e, lam) in sorted(cue_paths.items(), key=lambda kv: kv[1][1]):
            order[e] = n_entries[key[2]]
            n_entries[key[2]] += 1
        for path in L["paths"]:
            key = (path["l_in"], path["l_sh"], path["l_out"])
            if key not in cue_paths:
                raise ValueError(f"layer {t}: message path {key} has no jaxmat counterpart")
            s, e, lam = cue_paths[key]
            sign = (-1.0) ** path["l_sh"] if flip else 1.0  # Y(-r) = (-1)^l Y(r)
            cols = slice(path["offset"], path["offset"] + C)
            last[:, s * C:(s + 1) * C] = (A[f"{t}.radial.{len(hs) - 2}"][:, cols] / np.sqrt(hs[-2])
                                          * cst * path["kappa"] / lam * sign)
            l3 = path["l_out"]
            blk = _block(A[f"{t}.linear"], mid, path["i_out"], target, _entry(target, l3))
            rows = slice(order[e] * C, (order[e] + 1) * C)
            if f"{t}.species" in A:  # message mixing per receiving element
                for e_idx, z in enumerate(zs):
                    i = _entry(target, l3)
                    inter["out"]["w"][str(l3)][z, rows] = blk @ _block(
                        A[f"{t}.species"][e_idx], target, i, target, i)
            else:
                inter["out"]["w"][str(l3)][rows] = blk
        # skip connection: per-element matrices
        if f"{t}.skip" in A:
            s_in, s_out = _irreps(L["skip_in"]), _irreps(L["skip_out"])
            skip = F["skips"][t]["w"]
            for l in in_ls:
                if l not in out_ls:
                    continue
                for e_idx, z in enumerate(zs):
                    skip[str(l)][z] = _block(A[f"{t}.skip"][e_idx], s_in, _entry(s_in, l),
                                             s_out, _entry(s_out, l))
        elif t > 0:
            _refuse("a residual (skip) connection in every layer after the first",
                    f"none in layer {t}")
        # symmetric contraction
        wc = _sc_weights(A, t, cfg.l_max, out_ls, cfg.correlation)  # (n_elem, n_cue, C)
        F["products"][t]["w"][zs] = wc.reshape(n_elem, -1)
        hout = _irreps(L["hidden_out"])
        for l in out_ls:
            i = _entry(hout, l)
            F["mixes"][t]["w"][str(l)][...] = _block(A[f"{t}.mix"], hout, i, hout, i)
        if t < len(layers) - 1:
            params["readouts"][t]["kernel"][...] = _block(A[f"{t}.readout"], hout, 0,
                                                          [(1, 0, 1)], 0)
        in_ls = out_ls
    params["last1"]["kernel"][...] = A["readout.1"][:C]
    params["last2"]["kernel"][...] = A["readout.2"] * c["readout_gate_cst"]
    return model, params


READERS = ("make one in the optional peer environments: a mace-torch .model with "
           "benchmarks/peers/mace_torch_extract.py, an mlip .zip with "
           "benchmarks/peers/mace_mlip_extract.py (jaxmat itself never imports torch or mlip)")


def read_source(source: Any) -> dict:
    """An extract (a dict from a reader, or the path of its ``.npz``); a model file of the
    source library is refused with the reader to run."""
    if isinstance(source, dict):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no MACE extract at {path!r}")
    if not path.endswith(".npz"):
        raise ValueError(f"{path!r} is not a MACE extract (.npz); {READERS}")
    return load_extract(path)


def convert(source: Any, out: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Save an extract (dict or ``.npz`` path, :func:`read_source`) as a jaxmat bundle
    (float32 params); returns the bundle path."""
    import jax

    from jaxmat.core import bundle, potential

    ex = read_source(source)
    model, params = build(ex)
    params32 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    c = ex["config"]
    return bundle.save(out, potential.potential(model), params32, overwrite=overwrite,
                       metadata={"imported_from": c["source"], "elements": c["atomic_numbers"]})
