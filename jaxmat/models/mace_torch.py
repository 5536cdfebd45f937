"""Import a MACE model saved by mace-torch (``ScaleShiftMACE`` or ``MACE``) as a jaxmat MACE.

Two steps, so that only the first needs torch:

1. :func:`extract` reads the torch module (a ``.model`` file written by ``mace_run_train`` or
   ``torch.save``, or the module itself; needs ``torch`` and ``mace-torch``) and measures
   it in float64: the dense matrix of every linear map (run on the identity), the
   per-element matrices of the skip connections, the coefficient of every message path
   against the Clebsch–Gordan coefficients of :mod:`cuequivariance` (run once per path), the
   radial MLP and symmetric-contraction weights with their basis tensors, element energies,
   scale and shift. :func:`save_extract` writes it to one ``.npz``; nothing in it needs torch
   to read.
2. :func:`build` turns an extract into ``(model, params)`` of :mod:`jaxmat.models.mace`
   (numpy and cuequivariance only): linear blocks are cut from the dense matrices, path
   coefficients and the edge direction (jaxmat's edge vectors point from receiver to sender,
   mace's the other way: a sign (-1)^l per spherical-harmonic degree) are folded into the
   last radial layer, and the symmetric-contraction weights are projected onto the
   cuequivariance basis by least squares on random inputs (the residual is checked).

:func:`convert` does both and writes a bundle; then committees, σ, attacks, MD and the CLI
work on the imported model. Supported: mace-torch's default architecture (residual
interaction blocks, Bessel radial basis with polynomial cutoff, SiLU gates, one head,
natural-parity hidden features, equal correlation order in every layer). Anything else
(ZBL pair repulsion, distance transforms, several heads, cuequivariance-layout models,
other interaction blocks) is refused by name.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import numpy as np

from jaxmat.core.protocol import Model, Params
from jaxmat.models.mace import MACEConfig, _cue, _message_poly, _contraction_poly, mace

FORMAT = "jaxmat-mace-torch-extract"
RESIDUAL = "RealAgnosticResidualInteractionBlock"
PATH_TOL = 1e-5  # relative residual of a path coefficient / basis projection (float32 sources)


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


# --------------------------------------------------------------------------- 1. extract (torch)
def _torch():
    try:
        import torch
        import mace  # noqa: F401
    except ImportError as e:
        raise ImportError("reading a mace-torch model needs torch and mace-torch, which are not "
                          "installed (pip install torch mace-torch); an extract written by "
                          "jaxmat.models.mace_torch.save_extract needs neither") from e
    return torch


def _refuse(what: str, found: Any) -> None:
    raise ValueError(f"mace-torch model not supported: {what} (found {found}); jaxmat imports "
                     "mace-torch's default architecture (see jaxmat.models.mace_torch)")


def _check_supported(model) -> None:
    name = type(model).__name__
    if name not in ("ScaleShiftMACE", "MACE"):
        _refuse("only ScaleShiftMACE and MACE are read", name)
    cueq = getattr(model, "cueq_config", None)
    if cueq is not None and getattr(cueq, "enabled", False):
        _refuse("a cuequivariance-layout model; convert it back with mace's "
                "convert_cueq_e3nn first", "cueq_config.enabled=True")
    if len(getattr(model, "heads", ["Default"])) != 1:
        _refuse("one head", f"heads {model.heads}")
    for attr in ("pair_repulsion", "joint_embedding", "embedding_readout"):
        if hasattr(model, attr):
            _refuse(f"no {attr}", attr)
    rad = model.radial_embedding
    if hasattr(rad, "distance_transform"):
        _refuse("no distance transform", type(rad.distance_transform).__name__)
    if type(rad.bessel_fn).__name__ != "BesselBasis":
        _refuse("a Bessel radial basis", type(rad.bessel_fn).__name__)
    if not getattr(rad, "apply_cutoff", True):
        _refuse("the cutoff applied to the radial basis", "apply_cutoff=False")
    for flag in ("use_so3", "use_agnostic_product", "use_last_readout_only"):
        if getattr(model, flag, False):
            _refuse(f"{flag}=False", True)
    if getattr(model, "edge_irreps", None) is not None:
        _refuse("edge_irreps unset", model.edge_irreps)
    for t, inter in enumerate(model.interactions):
        if type(inter).__name__ != RESIDUAL:
            _refuse(f"{RESIDUAL} in every layer", f"{type(inter).__name__} in layer {t}")
    last = model.readouts[-1]
    if type(last).__name__ != "NonLinearReadoutBlock":
        _refuse("NonLinearReadoutBlock last", type(last).__name__)
    if len(model.readouts) != len(model.interactions):
        _refuse("one readout per layer", len(model.readouts))


def _dense(torch, module, dim_in: int, *extra) -> np.ndarray:
    """Matrix of a linear module: its output on the identity (rows = input components)."""
    eye = torch.eye(dim_in, dtype=torch.float64)
    with torch.no_grad():
        return module(eye, *extra).numpy()


def _path_coefficients(torch, tp) -> list[dict]:
    """For every instruction of an e3nn channelwise ('uvu') tensor product: degrees, weight
    offset, output entry and the coefficient κ with out = κ · CG_cue(x1 ⊗ x2) · w."""
    cue = _cue()[0]
    ir1, ir2, iro = (_irreps(str(tp.irreps_in1)), _irreps(str(tp.irreps_in2)),
                     _irreps(str(tp.irreps_out)))
    o1, o2, oo = _offsets(ir1), _offsets(ir2), _offsets(iro)
    rng = np.random.default_rng(0)
    out, offset = [], 0
    for ins in tp.instructions:
        if ins.connection_mode != "uvu":
            _refuse("channelwise ('uvu') message paths", ins.connection_mode)
        (m1, l1, p1), (_, l2, p2), (_, l3, p3) = ir1[ins.i_in1], ir2[ins.i_in2], iro[ins.i_out]
        x1 = torch.tensor(rng.normal(size=(2, tp.irreps_in1.dim)))
        x2 = torch.tensor(rng.normal(size=(2, tp.irreps_in2.dim)))
        w = torch.zeros((2, tp.weight_numel), dtype=torch.float64)
        w[:, offset] = 1.0  # channel 0 of this path
        with torch.no_grad():
            y = tp(x1, x2, w).numpy()[:, oo[ins.i_out]:oo[ins.i_out] + 2 * l3 + 1]
        cg = cue.O3.clebsch_gordan(cue.O3(l1, p1), cue.O3(l2, p2), cue.O3(l3, p3))[0]
        a = x1.numpy()[:, o1[ins.i_in1]:o1[ins.i_in1] + 2 * l1 + 1]
        b = x2.numpy()[:, o2[ins.i_in2]:o2[ins.i_in2] + 2 * l2 + 1]
        ref = np.einsum("ijk,si,sj->sk", cg, a, b)
        kappa = float((y * ref).sum() / (ref * ref).sum())
        if np.abs(y - kappa * ref).max() > PATH_TOL * max(np.abs(y).max(), 1.0):
            raise ValueError(f"message path ({l1}, {l2} -> {l3}) of the mace-torch model is not "
                             "proportional to the Clebsch-Gordan coefficients of cuequivariance")
        out.append({"l_in": l1, "l_sh": l2, "l_out": l3, "offset": offset, "mul": m1,
                    "i_out": ins.i_out, "kappa": kappa})
        offset += int(np.prod(ins.path_shape))
    return out


def extract(source: Any) -> dict:
    """Read a mace-torch model (path of a saved module, or the module) into plain numpy
    arrays and a JSON-able config (see the module docstring). Needs torch and mace-torch."""
    torch = _torch()
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"no mace-torch model file at {os.fspath(source)!r}")
        model = torch.load(os.fspath(source), map_location="cpu", weights_only=False)
    else:
        model = copy.deepcopy(source)
    if isinstance(model, dict):
        raise ValueError("this file holds a state dict or checkpoint, not a mace-torch model "
                         f"(keys {sorted(model)[:5]}); save the model itself (torch.save(model))")
    _check_supported(model)
    model = model.double().eval()
    import mace

    n_layers = len(model.interactions)
    hidden = str(model.products[0].linear.irreps_out)
    corr = [len(p.symmetric_contractions.contractions[0].weights) + 1 for p in model.products]
    node_attr_dim = len(model.atomic_numbers)
    onehot = torch.eye(node_attr_dim, dtype=torch.float64)
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        arrays["embedding"] = model.node_embedding(onehot).numpy()
    layers = []
    for t, (inter, prod) in enumerate(zip(model.interactions, model.products)):
        fc = inter.conv_tp_weights
        fc_layers = [getattr(fc, f"layer{k}") for k in range(len(fc.hs) - 1)]
        for k, lay in enumerate(fc_layers):
            arrays[f"{t}.radial.{k}"] = lay.weight.detach().numpy()
        acts = [lay.act for lay in fc_layers if lay.act is not None]
        csts = {float(a.cst) for a in acts}
        if len(csts) > 1 or any(getattr(a, "f", None) is not torch.nn.functional.silu
                                for a in acts):
            _refuse("SiLU in the radial MLP", [getattr(a, "f", a) for a in acts])
        feats = str(inter.node_feats_irreps)
        arrays[f"{t}.up"] = _dense(torch, inter.linear_up, inter.linear_up.irreps_in.dim)
        arrays[f"{t}.linear"] = _dense(torch, inter.linear, inter.linear.irreps_in.dim)
        skip = inter.skip_tp
        arrays[f"{t}.skip"] = np.stack([
            _dense(torch, skip, skip.irreps_in1.dim, onehot[e:e + 1].expand(skip.irreps_in1.dim, -1))
            for e in range(node_attr_dim)])
        sc = prod.symmetric_contractions
        for k, con in enumerate(sc.contractions):
            c = con.correlation
            arrays[f"{t}.sc.{k}.w{c}"] = con.weights_max.detach().numpy()
            for i, w in enumerate(con.weights):
                arrays[f"{t}.sc.{k}.w{c - 1 - i}"] = w.detach().numpy()
            for nu in range(1, c + 1):
                arrays[f"{t}.sc.{k}.U{nu}"] = con.U_tensors(nu).numpy()
        arrays[f"{t}.mix"] = _dense(torch, prod.linear, prod.linear.irreps_in.dim)
        ro = model.readouts[t]
        if t < n_layers - 1:
            arrays[f"{t}.readout"] = _dense(torch, ro.linear, ro.linear.irreps_in.dim)
        else:
            arrays["readout.1"] = _dense(torch, ro.linear_1, ro.linear_1.irreps_in.dim)
            arrays["readout.2"] = _dense(torch, ro.linear_2, ro.linear_2.irreps_in.dim)
            gate = ro.non_linearity.acts[0]
            if getattr(gate, "f", None) is not torch.nn.functional.silu:
                _refuse("a SiLU readout gate", getattr(gate, "f", gate))
        layers.append({
            "node_feats": feats, "target": str(inter.target_irreps),
            "mid": str(inter.linear.irreps_in), "hidden_out": str(prod.linear.irreps_out),
            "skip_in": str(skip.irreps_in1), "skip_out": str(skip.irreps_out),
            "radial_hs": list(fc.hs), "radial_cst": csts.pop() if csts else 1.0,
            "avg_num_neighbors": float(inter.avg_num_neighbors),
            "paths": _path_coefficients(torch, inter.conv_tp),
            "sc_in": str(sc.irreps_in), "sc_out": str(sc.irreps_out), "correlation": corr[t],
        })
    scale = shift = None
    if hasattr(model, "scale_shift"):
        scale = float(np.asarray(model.scale_shift.scale.detach()).reshape(-1)[0])
        shift = float(np.asarray(model.scale_shift.shift.detach()).reshape(-1)[0])
    config = {
        "format": FORMAT, "format_version": 1, "source": type(model).__name__,
        "mace_version": getattr(mace, "__version__", "unknown"),
        "r_max": float(model.r_max), "num_bessel": int(len(model.radial_embedding.bessel_fn.bessel_weights)),
        "num_polynomial_cutoff": int(model.radial_embedding.cutoff_fn.p),
        "max_ell": int(model.spherical_harmonics._lmax), "hidden_irreps": hidden,
        "atomic_numbers": [int(z) for z in model.atomic_numbers],
        "atomic_energies": np.asarray(model.atomic_energies_fn.atomic_energies).reshape(-1).tolist(),
        "scale": 1.0 if scale is None else scale, "shift": 0.0 if shift is None else shift,
        "readout_gate_cst": float(model.readouts[-1].non_linearity.acts[0].cst),
        "layers": layers,
    }
    return {"config": config, "arrays": arrays}


def save_extract(source: Any, path: str | os.PathLike) -> str:
    """:func:`extract` written to one ``.npz`` (config as JSON inside); returns its path."""
    ex = extract(source)
    path = os.fspath(path)
    np.savez_compressed(path, __config__=np.array(json.dumps(ex["config"])), **ex["arrays"])
    return path if path.endswith(".npz") else path + ".npz"


def load_extract(path: str | os.PathLike) -> dict:
    """Read an extract written by :func:`save_extract` (no torch needed)."""
    with np.load(os.fspath(path), allow_pickle=False) as z:
        if "__config__" not in z.files:
            raise ValueError(f"{os.fspath(path)!r} is not a mace-torch extract: no __config__ "
                             f"entry (found {z.files[:5]})")
        config = json.loads(str(z["__config__"]))
        arrays = {k: z[k] for k in z.files if k != "__config__"}
    if config.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r}: format {config.get('format')!r}, expected {FORMAT!r}")
    return {"config": config, "arrays": arrays}


# --------------------------------------------------------------------------- 2. build (numpy)
def _cue_paths(C: int, in_ls: tuple[int, ...], l_max: int) -> dict[tuple[int, int, int], tuple]:
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


def _sc_projection(layer: dict, arrays: dict, t: int, l_max: int, out_ls: tuple[int, ...],
                   nu: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares map from mace's symmetric-contraction weights (per element and
    channel, all output degrees and orders stacked) to cuequivariance's basis; returns
    (P, mace weights (n_elem, n_mace, C))."""
    poly, n_w = _contraction_poly(1, l_max, out_ls, nu)
    dim = (l_max + 1) ** 2
    rng = np.random.default_rng(2)
    n_mace = sum(arrays[f"{t}.sc.{k}.U{v}"].shape[-1]
                 for k in range(len(out_ls)) for v in range(1, nu + 1))
    S = max(8, 4 * max(n_w, n_mace) // sum(2 * l + 1 for l in out_ls) + 8)
    X = rng.normal(size=(S, dim))
    # cuequivariance: every unit weight on every sample
    W = np.tile(np.eye(n_w), (S, 1))
    [Yc] = poly(W, np.repeat(X, n_w, axis=0))
    m_cue = Yc.reshape(S, n_w, -1).transpose(0, 2, 1).reshape(-1, n_w)
    # mace: out_k[m] = Σ_ν Σ_p w_kν[p] U_ν[m, i_1..i_ν, p] x_i1 … x_iν
    cols, weights = [], []
    starts = np.cumsum([0] + [2 * l + 1 for l in out_ls])
    for k, l in enumerate(out_ls):
        for v in range(nu, 0, -1):
            U = arrays[f"{t}.sc.{k}.U{v}"]
            if l == 0:
                U = U[None]
            y = np.einsum("...ip,si->s...p", U, X)  # contract the last input index
            for _ in range(v - 1):
                y = np.einsum("s...ip,si->s...p", y, X)
            block = np.zeros((S, starts[-1], U.shape[-1]))
            block[:, starts[k]:starts[k + 1]] = y
            cols.append(block.reshape(S * starts[-1], -1))
            weights.append(arrays[f"{t}.sc.{k}.w{v}"])
    m_mace = np.concatenate(cols, axis=1)
    P, *_ = np.linalg.lstsq(m_cue, m_mace, rcond=None)
    resid = np.abs(m_cue @ P - m_mace).max() / max(np.abs(m_mace).max(), 1e-300)
    if resid > PATH_TOL:
        raise ValueError(f"layer {t}: mace's symmetric contraction is not in the span of "
                         f"cuequivariance's basis (relative residual {resid:.1e})")
    return P, np.concatenate(weights, axis=1)


def build(ex: dict, max_z: int | None = None) -> tuple[Model, Params]:
    """``(model, params)``: a jaxmat MACE (:func:`jaxmat.models.mace.mace`) with the weights
    of an extract (:func:`extract` / :func:`load_extract`). ``max_z``: largest atomic number
    of the embedding table (default: the model's largest element)."""
    import jax

    c, A = ex["config"], ex["arrays"]
    if c.get("format") != FORMAT:
        raise ValueError(f"not a mace-torch extract: format {c.get('format')!r}")
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
        first_residual=True, max_z=max_z, atom_refs=tuple(float(r) for r in refs),
        scale=c["scale"], shift=c["shift"])
    model = mace(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), None)
    params = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, np.float64), shapes)
    F = params["features"]
    n_elem = len(zs)
    F["embedding"]["embedding"][zs] = A["embedding"]
    hid_ls = tuple(range(cfg.hidden_l + 1))
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
        cue_paths = _cue_paths(C, in_ls, cfg.l_max)
        if len(cue_paths) != len(L["paths"]):
            raise ValueError(f"layer {t}: mace has {len(L['paths'])} message paths, jaxmat "
                             f"{len(cue_paths)}")
        n_entries = {l: 0 for l in range(cfg.l_max + 1)}
        order = {}  # cue output entry -> its block index among entries of its degree
        for key, (s, e, lam) in sorted(cue_paths.items(), key=lambda kv: kv[1][1]):
            order[e] = n_entries[key[2]]
            n_entries[key[2]] += 1
        for path in L["paths"]:
            key = (path["l_in"], path["l_sh"], path["l_out"])
            if key not in cue_paths:
                raise ValueError(f"layer {t}: mace message path {key} has no jaxmat counterpart")
            s, e, lam = cue_paths[key]
            sign = (-1.0) ** path["l_sh"]  # edge vectors point the other way in jaxmat
            cols = slice(path["offset"], path["offset"] + C)
            last[:, s * C:(s + 1) * C] = (A[f"{t}.radial.{len(hs) - 2}"][:, cols] / np.sqrt(hs[-2])
                                          * cst * path["kappa"] / lam * sign)
            l3 = path["l_out"]
            blk = _block(A[f"{t}.linear"], mid, path["i_out"], target, _entry(target, l3))
            inter["out"]["w"][str(l3)][order[e] * C:(order[e] + 1) * C] = blk
        # skip connection: per-element matrices
        s_in, s_out = _irreps(L["skip_in"]), _irreps(L["skip_out"])
        skip = F["skips"][t]["w"]
        for l in in_ls:
            if l not in out_ls:
                continue
            for e_idx, z in enumerate(zs):
                skip[str(l)][z] = _block(A[f"{t}.skip"][e_idx], s_in, _entry(s_in, l),
                                         s_out, _entry(s_out, l))
        # symmetric contraction
        P, wm = _sc_projection(L, A, t, cfg.l_max, out_ls, cfg.correlation)
        wc = np.einsum("bp,epc->ebc", P, wm)  # (n_elem, n_cue, C)
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


def convert(source: Any, out: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Read a mace-torch model (or an extract ``.npz``) and save it as a jaxmat bundle
    (float32 params); returns the bundle path."""
    from jaxmat.core import bundle, potential

    src = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    ex = load_extract(src) if src is not None and src.endswith(".npz") else extract(source)
    model, params = build(ex)
    params32 = {k: v for k, v in params.items()}
    import jax
    params32 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params32)
    c = ex["config"]
    return bundle.save(out, potential.potential(model), params32, overwrite=overwrite,
                       metadata={"imported_from": c["source"] + " (mace-torch "
                                 + c["mace_version"] + ")",
                                 "elements": c["atomic_numbers"]})
