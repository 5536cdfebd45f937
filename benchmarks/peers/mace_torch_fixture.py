"""Make the mace-torch import fixtures (run once in the optional MACE peer environment).

    bash benchmarks/peers/setup_mace.sh
    .venv-mace/bin/python benchmarks/peers/mace_torch_fixture.py

Builds two small ScaleShiftMACE models (residual first block, and the plain one) with mace-torch (float64, random weights, the
symmetric-contraction weights scaled up so that the many-body terms matter), saves each
model (``NAME.model``, torch pickle), its extract (``NAME.npz``, read without torch by
:func:`jaxmat.models.mace_import.load_extract`) and mace-torch's own energies, forces and
stresses (its ASE calculator) on three structures (``NAME.json``) into
``tests/models/fixtures/mace_torch/``. ``tests/models/test_mace_torch.py`` checks the
conversion against them.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 loads constants.pt

import numpy as np
import torch
from e3nn import o3
from mace import modules
from mace.calculators import MACECalculator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mace_torch_extract as mace_torch  # noqa: E402
from import_structures import write_references  # noqa: E402

RESIDUAL = "RealAgnosticResidualInteractionBlock"
OUT = os.path.join(ROOT, "tests", "models", "fixtures", "mace_torch")
MODELS = {
    # 2 layers, l_max 2, hidden 0e+1o, correlation 3 (mace-torch's default shape, small)
    "small": dict(r_max=4.0, num_bessel=6, max_ell=2, num_interactions=2,
                  hidden_irreps="8x0e+8x1o", MLP_irreps="8x0e", correlation=3,
                  radial_MLP=[16, 16], avg_num_neighbors=5.3, scale=0.7, shift=0.1),
    # 3 layers, l_max 3, hidden 0e+1o+2e, correlation 2, the plain (non-residual) first block
    "lmax3": dict(first="RealAgnosticInteractionBlock", r_max=3.5, num_bessel=5, max_ell=3, num_interactions=3,
                  hidden_irreps="4x0e+4x1o+4x2e", MLP_irreps="6x0e", correlation=2,
                  radial_MLP=[8, 8, 8], avg_num_neighbors=4.1, scale=1.3, shift=-0.2),
}


def build(spec: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float64)  # e3nn builds its constants in the default dtype
    residual = modules.interaction_classes[RESIDUAL]
    model = modules.ScaleShiftMACE(
        r_max=spec["r_max"], num_bessel=spec["num_bessel"], num_polynomial_cutoff=5,
        max_ell=spec["max_ell"], interaction_cls=residual,
        interaction_cls_first=modules.interaction_classes[spec.get("first", RESIDUAL)],
        num_interactions=spec["num_interactions"], num_elements=3,
        hidden_irreps=o3.Irreps(spec["hidden_irreps"]), MLP_irreps=o3.Irreps(spec["MLP_irreps"]),
        atomic_energies=np.array([-13.6, -1029.8, -2041.9]),
        avg_num_neighbors=spec["avg_num_neighbors"], atomic_numbers=[1, 6, 8],
        correlation=spec["correlation"], gate=torch.nn.functional.silu,
        radial_MLP=spec["radial_MLP"], atomic_inter_scale=spec["scale"],
        atomic_inter_shift=spec["shift"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "symmetric_contractions" in name:
                p.mul_(4.0)
    return model.double().eval()


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for k, (name, spec) in enumerate(MODELS.items()):
        model = build(spec, seed=k)
        path = os.path.join(OUT, f"{name}.model")
        torch.save(model, path)
        mace_torch.save_extract(path, os.path.join(OUT, f"{name}.npz"))
        calc = MACECalculator(model_paths=path, device="cpu", default_dtype="float64")
        write_references(os.path.join(OUT, f"{name}.json"), lambda atoms: calc, spec, stress=True)


if __name__ == "__main__":
    main()
