"""Which equivariant library carries jaxmat's MACE on CPU: one interaction layer (messages
node ⊗ Y(r̂) with per-path radial weights, sum on receivers, symmetric contraction to
correlation 3 with per-element weights, channel mix), energy + forces of 32 small
molecules (9 atoms, all pairs within 5 Å), 32 channels, l_max 2, node features 0e+1o.

    python benchmarks/mace_libs.py [--repeats 7] [--rounds 3]

* ``cuequivariance-jax (jaxmat)`` — :mod:`jaxmat.models.mace` as shipped: cuequivariance
  descriptors (spherical harmonics, ``channelwise_tensor_product``, ``symmetric_contraction``)
  run by ``cuex.segmented_polynomial(method="naive")``, its CPU path, gather/scatter by indices.
* ``e3nn-jax einsum`` — the same layer on e3nn-jax constants (spherical harmonics,
  Clebsch–Gordan coefficients, ``reduced_symmetric_tensor_product_basis``) with einsums per
  path and the contraction as monomials × a fixed projection (``mace_e3nn_layer.py``).
* ``e3nn-jax tensor_product`` — messages by e3nn-jax's ``tensor_product`` on IrrepsArrays,
  contraction as in the einsum variant (e3nn-jax has no functional symmetric contraction).

Rounds alternate the three; medians of CPU time and ratios to cuequivariance-jax. Writes results/mace_libs.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import device_info, write_results  # noqa: E402

C, L_MAX, NU, N_MOL, N_AT, CUTOFF = 32, 2, 3, 32, 9, 5.0


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` after one warm-up call (CPU time of this
    process is robust to other processes on a loaded machine)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def system(seed: int = 0):
    rng = np.random.default_rng(seed)
    pos, z, snd, rcv = [], [], [], []
    for m in range(N_MOL):
        p = rng.normal(size=(N_AT, 3)) * 1.0
        pos.append(p)
        z.append(rng.choice([1, 6, 8], size=N_AT))
        i, j = np.nonzero(~np.eye(N_AT, dtype=bool))
        snd.append(i + m * N_AT)
        rcv.append(j + m * N_AT)
    return (jnp.asarray(np.concatenate(pos), jnp.float32), jnp.asarray(np.concatenate(z)),
            jnp.asarray(np.concatenate(snd)), jnp.asarray(np.concatenate(rcv)))


def edge_terms(pos, snd, rcv, cue_sh: bool = False):
    from jaxmat.models.layers import bessel_rbf
    from jaxmat.models.mace import _run, _sh_poly, polynomial_envelope

    vec = pos[snd] - pos[rcv]
    d = jnp.sqrt(jnp.sum(vec ** 2, -1))
    unit = vec / d[:, None]
    if cue_sh:
        sh = _run(_sh_poly(L_MAX), [unit], unit.shape[0], (L_MAX + 1) ** 2, "naive")
    else:
        import e3nn_jax as e3nn
        sh = e3nn.spherical_harmonics("0e+1o+2e", unit, normalize=False).array
    radial = bessel_rbf(d, 8, CUTOFF) * polynomial_envelope(d, CUTOFF)[:, None]
    return sh, radial


def _split_sh(sh):
    return {l: sh[:, l * l:(l + 1) ** 2] for l in range(L_MAX + 1)}


def _layer(inter_cls, prod_cls, cue_sh):
    from flax import nnx

    from jaxmat.models.mace import MACEConfig

    cfg = MACEConfig(n_channels=C, l_max=L_MAX, correlation=NU, method="naive")
    g, p = nnx.split((inter_cls(cfg, (0, 1), nnx.Rngs(0)), prod_cls(cfg, (0, 1), nnx.Rngs(1))))

    def energy(params, pos, z, snd, rcv, h):
        inter, prod = nnx.merge(g, params)
        sh, radial = edge_terms(pos, snd, rcv, cue_sh)
        out = prod(inter(h, sh if cue_sh else _split_sh(sh), radial, snd, rcv), z)
        return jnp.sum(out[0] ** 2) + jnp.sum(out[1] ** 2)

    return energy, p


def cue_layer():
    """jaxmat.models.mace: cuequivariance descriptors, ``naive`` (pure JAX) execution."""
    from jaxmat.models.mace import Interaction, SymmetricContraction

    return _layer(Interaction, SymmetricContraction, True)


def e3nn_einsum_layer():
    """e3nn-jax constants (Clebsch–Gordan, symmetric bases) with einsums and monomials."""
    from mace_e3nn_layer import Interaction, SymmetricContraction

    return _layer(Interaction, SymmetricContraction, False)


def e3nn_tp_layer():
    """Messages through e3nn-jax's ``tensor_product`` on IrrepsArrays; contraction as in
    :func:`e3nn_einsum_layer` (e3nn-jax has no functional symmetric contraction)."""
    import e3nn_jax as e3nn
    from flax import nnx
    from mace_e3nn_layer import SymmetricContraction

    from jaxmat.models.mace import IrrepsLinear, MACEConfig, RadialMLP

    cfg = MACEConfig(n_channels=C, l_max=L_MAX, correlation=NU)
    h_irreps = e3nn.Irreps(f"{C}x0e+{C}x1o")
    tp_irreps = e3nn.tensor_product(h_irreps, e3nn.Irreps("0e+1o+2e"), filter_ir_out="0e+1o+2e")
    rngs = nnx.Rngs(0)
    radial_mlp = RadialMLP(8, 64, 3, tp_irreps.num_irreps, rngs)
    per_l = {l: sum(mul for mul, ir in tp_irreps if ir.l == l) for l in range(L_MAX + 1)}
    mix = IrrepsLinear(per_l, C, (0, 1, 2), rngs)
    prod = SymmetricContraction(cfg, (0, 1), nnx.Rngs(1))
    g, p = nnx.split((radial_mlp, mix, prod))

    def energy(params, pos, z, snd, rcv, h):
        radial_mlp, mix, prod = nnx.merge(g, params)
        sh, radial = edge_terms(pos, snd, rcv)
        x = e3nn.from_chunks(h_irreps, [h[0], h[1]], (h[0].shape[0],))
        m = e3nn.tensor_product(x[snd], e3nn.IrrepsArray("0e+1o+2e", sh),
                                filter_ir_out="0e+1o+2e")
        m = m * radial_mlp(radial)  # one weight per path and channel
        a = e3nn.scatter_sum(m, dst=rcv, output_size=x.shape[0]) / cfg.avg_num_neighbors
        a = a.regroup()
        a = {ir.l: a.filter(keep=str(ir)).array.reshape(a.shape[0], -1, ir.dim)
             for _, ir in a.irreps}
        out = prod(mix(a), z)
        return jnp.sum(out[0] ** 2) + jnp.sum(out[1] ** 2)

    return energy, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pos, z, snd, rcv = system()
    key = jax.random.key(3)
    h = {0: jax.random.normal(key, (pos.shape[0], C, 1)),
         1: jax.random.normal(jax.random.fold_in(key, 1), (pos.shape[0], C, 3))}
    libs = {"cuequivariance-jax (jaxmat)": cue_layer, "e3nn-jax einsum": e3nn_einsum_layer,
            "e3nn-jax tensor_product": e3nn_tp_layer}
    fns, compile_s = {}, {}
    for name, build in libs.items():
        energy, params = build()
        ef = jax.jit(jax.value_and_grad(energy, argnums=1))
        t = time.perf_counter()
        jax.block_until_ready(ef(params, pos, z, snd, rcv, h))
        compile_s[name] = time.perf_counter() - t
        fns[name] = (lambda ef=ef, params=params: jax.block_until_ready(ef(params, pos, z, snd, rcv, h)))
    times = {k: [] for k in libs}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, args.repeats))
    med = {k: float(np.median([c for _, c in v])) for k, v in times.items()}  # CPU s
    rows = [{"library": k, "ms_energy_forces": 1e3 * med[k],
             "rounds_wall_cpu_ms": [(1e3 * w, 1e3 * c) for w, c in times[k]],
             "vs_cue": med[k] / med["cuequivariance-jax (jaxmat)"], "compile_s": compile_s[k]} for k in libs]
    payload = {"device": device_info(), "n_molecules": N_MOL, "atoms": N_AT, "channels": C,
               "l_max": L_MAX, "correlation": NU, "n_edges": int(snd.shape[0]), "rows": rows}
    md = ["| library | E+F CPU ms (median) | × cuequivariance | compile s |", "|---|---|---|---|"]
    md += [f"| {r['library']} | {r['ms_energy_forces']:.1f} | {r['vs_cue']:.2f} | "
           f"{r['compile_s']:.1f} |" for r in rows]
    md.append(f"\nOne MACE interaction layer (C={C}, l_max {L_MAX}, ν={NU}), {N_MOL} molecules × "
              f"{N_AT} atoms, {int(snd.shape[0])} edges; CPU ms of this process on "
              f"{len(os.sched_getaffinity(0))} core(s), medians of {args.rounds} alternated rounds; "
              f"load average {os.getloadavg()[0]:.2f}.")
    write_results("mace_libs", payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
