"""Extract a MACE model saved by mace-torch (``ScaleShiftMACE`` or ``MACE``) for jaxmat.

Runs in the optional peer environment (``bash benchmarks/peers/setup_mace.sh``; jaxmat
itself never imports torch):

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .venv-mace/bin/python \
        benchmarks/peers/mace_torch_extract.py model.model model.npz
    jaxmat import model.npz imported/

:func:`extract` reads the torch module (a ``.model`` file written by ``mace_run_train`` or
``torch.save``, or the module itself; needs ``torch`` and ``mace-torch``) and measures it
in float64 into the extract format of :mod:`jaxmat.models.mace_import`, which builds the
jaxmat model without torch. :func:`save_extract` writes the extract of a model file.

Supported: mace-torch's default architecture (``RealAgnosticResidualInteractionBlock`` in
every layer, or ``RealAgnosticInteractionBlock`` first; Bessel radial basis with polynomial
cutoff; SiLU gates; one head; natural-parity hidden features; one correlation order).
Anything else (ZBL pair repulsion, distance transforms, several heads, cuequivariance-layout
models, other interaction blocks) is refused by name.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.dirname(
    _os.path.abspath(__file__)))))
from jaxmat.models.mace import _cue  # noqa: E402
from jaxmat.models.mace_import import (FORMAT, PATH_TOL, _irreps, _offsets, _refuse,  # noqa: E402
                                       write_extract)

RESIDUAL = "RealAgnosticResidualInteractionBlock"
PLAIN = "RealAgnosticInteractionBlock"


def _torch():
    try:
        import torch
        import mace  # noqa: F401
    except ImportError as e:
        raise ImportError("reading a mace-torch model needs torch and mace-torch, which are not "
                          "installed (bash benchmarks/peers/setup_mace.sh)") from e
    return torch


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
        name = type(inter).__name__
        if name != RESIDUAL and not (t == 0 and name == PLAIN):
            _refuse(f"{RESIDUAL} in every layer ({PLAIN} allowed first)", f"{name} in layer {t}")
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
        per_element = np.stack([
            _dense(torch, skip, skip.irreps_in1.dim, onehot[e:e + 1].expand(skip.irreps_in1.dim, -1))
            for e in range(node_attr_dim)])
        # residual blocks: skip of the layer input; the plain first block mixes its message
        arrays[f"{t}.skip" if type(inter).__name__ == RESIDUAL else f"{t}.species"] = per_element
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
        "format": FORMAT, "format_version": 1,
        "source": f"mace-torch {getattr(mace, '__version__', '?')} {type(model).__name__}",
        "edge_vector": "receiver_minus_sender",
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
    """:func:`extract` of a model (file or module) written to one ``.npz``; returns its path."""
    return write_extract(extract(source), path)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="the model file")
    ap.add_argument("extract", help="the .npz to write (then: jaxmat import EXTRACT BUNDLE)")
    args = ap.parse_args()
    print("wrote", save_extract(args.source, args.extract))


if __name__ == "__main__":
    main()
