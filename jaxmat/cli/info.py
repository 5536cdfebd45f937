"""``jaxmat info MODEL``: what a bundle holds (model, graph, references, members, params,
training metadata, the training energy range and the committee σ calibration), from
:func:`jaxmat.core.bundle.load`."""
from __future__ import annotations

import json
from typing import Any


def describe(path: str) -> dict[str, Any]:
    """The contents of the bundle at ``path`` as plain JSON values."""
    from jaxmat.core import bundle
    from jaxmat.core.config import to_json
    from jaxmat.core.protocol import count_params

    b = bundle.load(path)
    wrapper = b.model.config if isinstance(b.model.config, dict) else {}
    return {
        "path": b.path, "jaxmat_version": b.jaxmat_version, "model": b.model.name,
        "config": to_json(b.config), "stress": bool(wrapper.get("stress", False)),
        "graph": b.graph.to_dict(), "committee_members": b.n_members,
        "parameters": count_params(b.params) // (b.n_members or 1), "references_eV": b.references,
        "scale_eV": b.scale, "shift_eV_per_atom": b.shift, "units": dict(bundle.UNITS),
        "metadata": b.metadata, "training": b.training, "calibration": b.calibration,
    }


def format_info(d: dict[str, Any]) -> str:
    """Plain-text view of :func:`describe`."""
    from jaxmat.core import calibrate

    members = d["committee_members"]
    cfg = ", ".join(f"{k}={v}" for k, v in d["config"].items() if k != "atom_refs")
    lines = [
        f"bundle        {d['path']} (jaxmat {d['jaxmat_version']})",
        f"model         {d['model']}{' (energy, forces, stress)' if d['stress'] else ' (energy, forces)'}",
        f"members       {members if members else 'single model'}",
        f"parameters    {d['parameters']} per member",
        f"config        {cfg}",
        f"graph         {json.dumps(d['graph'])}",
        f"references    {json.dumps(d['references_eV'])} eV per atom of each element",
        f"units         {', '.join(f'{k} {v}' for k, v in d['units'].items())}",
    ]
    meta = d["metadata"]
    if "metrics" in meta:
        m = meta["metrics"]
        lines.append(f"trained       {m.get('epochs_run')} epochs, best epoch "
                     f"{m.get('best_epoch')}, {m.get('train_seconds', 0):.1f} s")
        for split in ("val", "test"):
            if split in m:
                e = m[split]
                errs = ", ".join(f"{k} {v:.4g}" for k, v in e.items()
                                 if "mae" in k and isinstance(v, float))
                lines.append(f"{split:13s} {e['n_structures']} structures: {errs}")
    t = d.get("training")
    if t:
        lo, hi = t["energy_per_atom_eV"]
        lines.append(f"training      {t['n_structures']} structures, energy {lo:.4f} to "
                     f"{hi:.4f} eV/atom")
    for target, c in (d.get("calibration") or {}).items():
        form = calibrate.describe(c, "eV" if target == "energy" else "eV/Å")
        after = c.get("after") or {}
        cov = (f"; validation coverage 68/95 % {100 * after['coverage_68']:.0f}/"
               f"{100 * after['coverage_95']:.0f}" if "coverage_68" in after else "")
        if c.get("ranks") is False:
            rho = (c.get("before") or {}).get("spearman")
            cov += (f"; σ does not rank validation errors (Spearman "
                    f"{'n/a' if rho is None else f'{rho:+.2f}'}): a size, not a ranking")
        lines.append(f"σ {target:11s} calibrated = {form}, fitted on {c.get('n')} structures{cov}")
    other = sorted(k for k in meta if k not in ("metrics",))
    if other:
        lines.append(f"metadata      {', '.join(other)} (jaxmat info --json shows them)")
    return "\n".join(lines)
