"""Extract a MACE model saved by InstaDeep's mlip (``save_model_to_zip``) for jaxmat.

Runs in the optional peer environment (``bash benchmarks/peers/setup_mlip.sh``; jaxmat
itself never imports mlip):

    .venv-mlip/bin/python benchmarks/peers/mace_mlip_extract.py model.zip model.npz
    jaxmat import model.npz imported/

:func:`extract` loads the model with mlip (needs ``mlip``), binds its flax modules to the
saved parameters and measures them in float64 into the extract format of
:mod:`jaxmat.models.mace_import`, which builds the jaxmat model without mlip: linear maps
and per-element matrices run on the identity, message paths probed one at a time on a
two-atom graph, the spherical harmonics and radial basis compared with jaxmat's, the
symmetric contraction recorded on random inputs (fitted in cuequivariance's basis by the
builder). :func:`save_extract` writes the extract of a model file.

Supported: mlip's MACE with its defaults in everything but sizes (one readout head,
polynomial envelope, SiLU activations, no pseudotensors, node gating, soft normalisation,
charges or Gaunt tensor products; first layer with or without residual). Anything else is
refused by name.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

import sys as _sys

_sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from jaxmat.models.mace import _contraction_poly, _cue, polynomial_envelope  # noqa: E402
from jaxmat.models.mace_import import (FORMAT, PATH_TOL, _irreps, _offsets, _refuse,  # noqa: E402
                                       write_extract)


def _mlip():
    try:
        import e3j  # noqa: F401
        import e3nn_jax  # noqa: F401
        import mlip  # noqa: F401
    except ImportError as e:
        raise ImportError("reading an mlip model needs mlip, which is not installed "
                          "(bash benchmarks/peers/setup_mlip.sh)") from e


def _check_supported(cfg: Any, ds: Any) -> None:
    wanted = {"num_readout_heads": 1, "include_pseudotensors": False, "gate_nodes": False,
              "soft_normalization": None, "predict_partial_charges": False,
              "use_coulomb_term": False, "use_total_charge_embedding": False,
              "use_gaunt_tp_message_passing": False}
    for key, value in wanted.items():
        if getattr(cfg, key, value) != value:
            _refuse(f"{key}={value}", getattr(cfg, key))
    for key in ("activation", "radial_mlp_activation"):
        if str(getattr(cfg, key)).split(".")[-1].lower() != "silu":
            _refuse(f"{key}=silu", getattr(cfg, key))
    if str(cfg.radial_envelope).split(".")[-1].lower() not in ("polynomial",
                                                               "polynomial_envelope"):
        _refuse("the polynomial radial envelope", cfg.radial_envelope)
    if isinstance(ds.atomic_energies_map, list):
        _refuse("one dataset's atomic energies", f"{len(ds.atomic_energies_map)} maps")


def _s(irreps: Any) -> str:
    """Irreps of mlip / e3j / e3nn-jax as a plain string such as '8x0e+8x1o'."""
    import e3nn_jax as e3nn

    if hasattr(irreps, "_to_e3nn"):
        irreps = irreps._to_e3nn()
    return str(e3nn.Irreps(irreps))


def _dense(fn, dim: int) -> np.ndarray:
    import jax.numpy as jnp

    return np.asarray(fn(jnp.eye(dim, dtype=jnp.float64)))


def _radial_prefactor(rad: Any, r_max: float, n_rbf: int) -> tuple[float, int]:
    """mlip's radial embedding = prefactor × jaxmat's Bessel basis × polynomial envelope
    of some order p: returns (prefactor, p), or refuses."""
    import jax.numpy as jnp

    from jaxmat.models.layers import bessel_rbf

    d = jnp.linspace(0.2 * r_max, 0.97 * r_max, 23, dtype=jnp.float64)
    got = rad(d)
    got = np.asarray(getattr(got, "array", got))
    base = np.asarray(bessel_rbf(d, n_rbf, r_max)) * np.sqrt(2.0 / r_max)
    for p in range(2, 13):
        ref = base * np.asarray(polynomial_envelope(d, r_max, p))[:, None]
        ratio = float((got * ref).sum() / (ref * ref).sum())  # not got / ref: sin has zeros
        if np.abs(got - ratio * ref).max() <= PATH_TOL * np.abs(got).max():
            return ratio, p
    _refuse("Bessel functions times a polynomial envelope", "another radial basis")


def _sh_ratio(shb: Any, l_max: int) -> np.ndarray:
    """Per degree l, mlip's spherical harmonics / cuequivariance's (same vectors)."""
    import jax.numpy as jnp

    cue = _cue()[0]
    v = np.random.default_rng(3).normal(size=(7, 3))
    got = shb(jnp.asarray(v))
    got = np.asarray(getattr(got, "array", got))
    poly = cue.descriptors.spherical_harmonics(cue.O3(1, -1), list(range(l_max + 1))).polynomial
    [ref] = poly(v / np.linalg.norm(v, axis=1, keepdims=True))
    out = np.ones(l_max + 1)
    for l in range(l_max + 1):
        a, b = got[:, l * l:(l + 1) ** 2], ref[:, l * l:(l + 1) ** 2]
        out[l] = (a * b).sum() / (b * b).sum()
        if np.abs(a - out[l] * b).max() > PATH_TOL * max(np.abs(a).max(), 1.0):
            _refuse("spherical harmonics proportional to e3nn's", f"degree {l} differs")
    return out


def _message_entries(msg: str, C: int) -> list[tuple[int, int, np.ndarray]]:
    """mlip's messages in its E3NN layout (multiplicity C·m per irrep, channel-major): one
    entry per path-output (l, parity, rows of its C channels × 2l+1 components)."""
    entries, start = [], 0
    for m, l, p in _irreps(msg):
        d = 2 * l + 1
        for u in range(m):
            rows = np.array([start + (c * m + u) * d + k for c in range(C) for k in range(d)])
            entries.append((l, p, rows))
        start += C * m * d
    return entries


def _path_coefficients(ib: Any, C: int, l_max: int, sh_ratio: np.ndarray, avg: float
                       ) -> tuple[list[dict], np.ndarray]:
    """Probe mlip's convolution on a two-atom graph (sender 0 → receiver 1), one path and
    channel 0 switched on: degrees, radial-output offset, message entry and κ (out =
    κ · CG_cue(x ⊗ Y_cue) · w / avg_num_neighbors); and the row order that lays its
    messages out one entry of C channels per path."""
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    cue = _cue()[0]
    src = _irreps(_s(ib.source_irreps))
    entries = _message_entries(_s(ib.message_irreps), C)
    o_src = _offsets(src)
    P = len(entries)
    rng = np.random.default_rng(4)
    senders, receivers = jnp.array([0]), jnp.array([1])
    mask = jnp.array([True, True])
    found: dict[int, dict] = {}
    for i, (_, l1, p1) in enumerate(src):
        xs = rng.normal(size=2 * l1 + 1)
        x = np.zeros((2, sum(m * (2 * l + 1) for m, l, _ in src)))
        x[0, o_src[i]:o_src[i] + 2 * l1 + 1] = xs  # channel 0 of entry i, sender only
        xin = ib._cast_inputs(e3nn.IrrepsArray(_s(ib.source_irreps), jnp.asarray(x)))
        for l2 in range(l_max + 1):
            ys = rng.normal(size=2 * l2 + 1)
            y = np.zeros((1, (l_max + 1) ** 2))
            y[0, l2 * l2:(l2 + 1) ** 2] = ys
            for path in range(P):
                w = np.zeros((1, P, C))
                w[0, path, 0] = 1.0
                out = ib._cast_outputs(ib.convolution_block(
                    xin, jnp.asarray(y), jnp.asarray(w), senders, receivers, mask))
                out = np.asarray(out.array)[1]
                for q, (l3, p3, rows) in enumerate(entries):
                    part = out[rows[:2 * l3 + 1]]  # channel 0
                    if np.abs(part).max() < 1e-12:
                        continue
                    cg = cue.O3.clebsch_gordan(cue.O3(l1, p1), cue.O3(l2, (-1) ** l2),
                                               cue.O3(l3, p3))[0]
                    ref = np.einsum("ijk,i,j->k", cg, xs, ys)
                    kappa = float(part @ ref / (ref @ ref))
                    if np.abs(part - kappa * ref).max() > PATH_TOL * max(np.abs(part).max(), 1.0):
                        _refuse("message paths proportional to Clebsch-Gordan coefficients",
                                f"path ({l1}, {l2} -> {l3})")
                    found[path] = {"l_in": l1, "l_sh": l2, "l_out": l3, "offset": path * C,
                                   "mul": C, "i_out": q,
                                   "kappa": kappa * avg * float(sh_ratio[l2])}
    if sorted(found) != list(range(P)):
        raise ValueError(f"mlip model: {P - len(found)} of {P} message paths gave no output")
    order = np.concatenate([rows for _, _, rows in entries])
    return [found[p] for p in range(P)], order


def _readout_dense(params: dict, source: str, target: str) -> np.ndarray:
    """Dense matrix of a readout's e3j Linear (created inside a compact module, so rebuilt
    here with the same settings and the saved weights)."""
    import e3j
    import jax.numpy as jnp

    lin = e3j.linen.Linear(source_irreps=source, target_irreps=target, layout="E3NN",
                           kernel_init="FAN_IN", rescale_gradients=True)
    dim = sum(m * (2 * l + 1) for m, l, _ in _irreps(source))
    return np.asarray(lin.apply({"params": params}, jnp.eye(dim, dtype=jnp.float64)))


def extract(source: Any) -> dict:
    """Read an mlip MACE (path of a ``.zip`` written by ``save_model_to_zip``, or a
    ``ForceField``) into plain numpy arrays and a JSON-able config (see the module
    docstring). Needs mlip."""
    _mlip()
    import jax

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        return _extract(source)
    finally:
        jax.config.update("jax_enable_x64", old)


def _extract(source: Any) -> dict:
    import e3nn_jax as e3nn
    import jax
    import jax.numpy as jnp
    import mlip
    from mlip.models import Mace
    from mlip.models.model_io import load_model_from_zip

    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"no mlip model file at {os.fspath(source)!r}")
        ff = load_model_from_zip(Mace, os.fspath(source))
    else:
        ff = source
    net = ff.predictor.mlip_network
    if type(net).__name__ != "Mace":
        _refuse("an mlip Mace network", type(net).__name__)
    cfg, ds = net.config, net.dataset_info
    _check_supported(cfg, ds)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                    ff.params["params"]["mlip_network"])
    b = net.bind({"params": params})
    zs = sorted(int(z) for z in ds.atomic_energies_map)
    n_el, C, l_max = len(zs), cfg.num_channels, cfg.l_max
    r_max = float(ds.graph_cutoff_angstrom)
    emb = b.embedding_block
    arrays: dict[str, np.ndarray] = {"embedding": np.asarray(
        emb.node_embedding_block(jnp.arange(n_el)))}
    prefactor, p_env = _radial_prefactor(emb.radial_embedding_block, r_max, cfg.num_rbf)
    sh_ratio = _sh_ratio(emb.spherical_embedding_block, l_max)
    silu = jax.nn.silu
    probe = jnp.array([-1.3, 0.4, 2.1], jnp.float64)
    avg = float(ds.avg_num_neighbors)
    layers = []
    for t in range(cfg.num_layers):
        L = b.layers[t]
        P = params[f"layers_{t}"]
        ib = L.interaction_block
        mlp = ib.radial_mlp
        if mlp.use_bias or mlp.use_layer_norm:
            _refuse("a bias-free radial MLP without layer norm", "bias or layer norm")
        hs = list(mlp.layer_sizes)
        csts = {round(float(a(probe)[0] / silu(probe)[0]), 12) for a in mlp.activations}
        for a in mlp.activations:
            if np.abs(np.asarray(a(probe)) - next(iter(csts)) * np.asarray(silu(probe))).max() > 1e-9:
                _refuse("a (normalised) SiLU in the radial MLP", a)
        for k in range(len(hs) - 1):
            w = np.asarray(P["interaction_block"]["radial_mlp"][f"layers_{k}"]["kernel"])
            # jaxmat's builder divides by sqrt(fan-in): undo that, apply mlip's scale
            arrays[f"{t}.radial.{k}"] = (w * float(mlp.scales[k]) * np.sqrt(hs[k])
                                         * (prefactor if k == 0 else 1.0))
        src = _s(ib.source_irreps)
        src_dim = sum(m * (2 * l + 1) for m, l, _ in _irreps(src))
        target = _s(ib.target_irreps)
        tgt_dim = sum(m * (2 * l + 1) for m, l, _ in _irreps(target))
        entries = _message_entries(_s(ib.message_irreps), C)
        mid = "+".join(f"{C}x{l}{'e' if p == 1 else 'o'}" for l, p, _ in entries)
        paths, order = _path_coefficients(ib, C, l_max, sh_ratio, avg)
        arrays[f"{t}.up"] = _dense(ib.linear_in, src_dim)
        arrays[f"{t}.linear"] = _dense(ib.linear_out, len(order))[order]  # one entry per path
        layer = {"node_feats": src, "target": target, "mid": mid, "radial_hs": hs,
                 "radial_cst": next(iter(csts)) if csts else 1.0, "avg_num_neighbors": avg,
                 "paths": paths, "correlation": cfg.correlation}
        if L.use_residuals:
            rb = L.residual_block
            skip_out = _s(rb.target)
            arrays[f"{t}.skip"] = np.stack([
                np.asarray(rb(jnp.eye(src_dim), jnp.full((src_dim,), e))) for e in range(n_el)])
            layer.update(skip_in=src, skip_out=str(skip_out))
        else:
            sb = L.linear_by_species_block
            arrays[f"{t}.species"] = np.stack([
                np.asarray(sb(jnp.eye(tgt_dim), jnp.full((tgt_dim,), e))) for e in range(n_el)])
        # symmetric contraction: its outputs on random inputs, for every element
        exp = L.expansion_block
        sc_in = "+".join(f"1x{l}{'e' if p == 1 else 'o'}" for _, l, p in _irreps(target))
        out_ls = tuple(l for _, l, _ in _irreps(_s(exp.target_irreps)))
        _, n_basis = _contraction_poly(1, l_max, out_ls, cfg.correlation)
        D = sum(2 * l + 1 for l in out_ls)
        S = 4 * n_basis // D + 16
        X = np.random.default_rng(5 + t).normal(size=(S, (l_max + 1) ** 2))
        xin = e3nn.IrrepsArray(sc_in, jnp.broadcast_to(jnp.asarray(X)[:, None], (S, C, X.shape[1])))
        Y = [np.asarray(exp.symmetric_contraction(xin, jnp.full((S,), e)).array)
             for e in range(n_el)]
        arrays[f"{t}.sc.X"], arrays[f"{t}.sc.Y"] = X, np.stack(Y)
        hidden_out = _s(exp.target_irreps)
        arrays[f"{t}.mix"] = _dense(exp.linear_block, C * D)
        layer["hidden_out"] = hidden_out
        ro = P["readout_block"]["ReadoutBlock_0"]
        if t < cfg.num_layers - 1:
            arrays[f"{t}.readout"] = _readout_dense(ro["Linear_0"], hidden_out, "1x0e")
        else:
            mlp_irreps, out_irreps = cfg.readout_irreps
            if _irreps(str(out_irreps)) != [(1, 0, 1)] or any(
                    l != 0 for _, l, _ in _irreps(str(mlp_irreps))):
                _refuse("readout irreps (N x 0e, 0e)", cfg.readout_irreps)
            arrays["readout.1"] = _readout_dense(ro["Linear_0"], hidden_out, str(mlp_irreps))
            arrays["readout.2"] = _readout_dense(ro["Linear_1"], str(mlp_irreps), "1x0e")
            g = e3nn.gate(e3nn.IrrepsArray(f"{len(probe)}x0e", probe), even_act=silu,
                          even_gate_act=None).array
            gate_cst = float(g[0] / silu(probe)[0])
            if np.abs(np.asarray(g) - gate_cst * np.asarray(silu(probe))).max() > 1e-9:
                _refuse("a SiLU readout gate", "another activation")
        layers.append(layer)
    config = {
        "format": FORMAT, "format_version": 1,
        "source": f"mlip {getattr(mlip, '__version__', '?')} Mace",
        "edge_vector": "receiver_minus_sender",
        "r_max": r_max, "num_bessel": int(cfg.num_rbf), "num_polynomial_cutoff": p_env,
        "max_ell": int(l_max), "hidden_irreps": str(layers[0]["hidden_out"]) if cfg.num_layers > 1
        else f"{C}x0e",
        "atomic_numbers": zs, "atomic_energies": [float(ds.atomic_energies_map[z]) for z in zs],
        "scale": float(ds.scaling_stdev), "shift": float(ds.scaling_mean),
        "readout_gate_cst": gate_cst, "layers": layers,
    }
    return {"config": config, "arrays": arrays}


def save_extract(source: Any, path: str | os.PathLike) -> str:
    """:func:`extract` of a model (``.zip`` or ``ForceField``) written to one ``.npz``."""
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
