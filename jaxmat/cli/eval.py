"""``jaxmat eval``: errors of a model on labelled structures, committee calibration, parity
plot.

:func:`errors` is the one evaluation of a trained potential (``jaxmat train`` uses it for its
validation and test splits): predictions by :func:`jaxmat.predict`, then MAE and RMSE of
energy per structure (eV) and per atom (eV/atom), force components (eV/Å) and stress
components (eV/Å³) where the structures carry those labels. For a committee, the
calibration of its σ (:func:`jaxmat.core.calibrate.metrics`) for energies (eV) and force
components (eV/Å).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmat.core import calibrate
from jaxmat.core.graph import Record
from jaxmat.core.predict import predict
from jaxmat.core.protocol import Model, Params


def labels(records: Sequence[Record], kind: str) -> list[np.ndarray] | None:
    """The ``kind`` labels of every record (energy, forces, stress), None if any lacks it."""
    store = [r.node_targets if kind == "forces" else r.targets for r in records]
    if not records or any(kind not in s for s in store):
        return None
    return [np.asarray(s[kind], dtype=np.float64) for s in store]


def errors(model: Model, params: Params, records: Sequence[Record],
           batch_size: int = 32, calibration: dict | None = None
           ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(metrics, arrays)`` of ``model`` with single or committee ``params`` on labelled
    ``records``. ``metrics``: ``n_structures``, ``n_atoms``, ``energy_mae_eV``,
    ``energy_rmse_eV``, ``energy_mae_eV_per_atom``, ``energy_rmse_eV_per_atom``,
    ``forces_mae_eV_per_A``, ``forces_rmse_eV_per_A``, ``stress_mae_eV_per_A3``,
    ``stress_rmse_eV_per_A3`` (those whose labels the records carry) and, for committees,
    ``calibration`` ``{"energy_eV": ..., "forces_eV_per_A": ...}`` of the σ scaled by
    ``calibration`` (a bundle's; raw σ without it) and, with it, ``calibration_raw`` of the
    raw σ. ``arrays``: true and predicted values (``energy_true``, ``energy_pred``, ...
    flattened; ``<kind>_sigma`` calibrated) for parity plots."""
    if not records:
        raise ValueError("no structures to evaluate")
    kinds = [k for k in ("energy", "forces", "stress") if labels(records, k) is not None]
    if not kinds:
        raise ValueError("the structures carry no energy, forces or stress labels")
    pred = predict(model, params, records, batch_size=batch_size)
    missing = [k for k in kinds if k not in pred]
    if missing:
        raise ValueError(f"the data carry {missing} labels but the model predicts "
                         f"{sorted(k for k in pred if not k.endswith(('_var', '_members')))}")
    n_atoms = np.array([r.n_node for r in records], dtype=np.float64)
    metrics: dict[str, Any] = {"n_structures": len(records), "n_atoms": int(n_atoms.sum())}
    arrays: dict[str, np.ndarray] = {}
    units = {"energy": "eV", "forces": "eV_per_A", "stress": "eV_per_A3"}
    for kind in kinds:
        true = labels(records, kind)
        got = pred[kind]
        t = np.concatenate([np.ravel(x) for x in true])
        p = np.concatenate([np.ravel(x) for x in got]) if isinstance(got, list) else \
            np.ravel(np.asarray(got, dtype=np.float64))
        arrays[f"{kind}_true"], arrays[f"{kind}_pred"] = t, p
        _mae_rmse(metrics, f"{kind}", units[kind], p - t)
        if kind == "energy":
            _mae_rmse(metrics, "energy", "eV_per_atom", (p - t) / n_atoms)
    if "energy_var" in pred:
        cal, raw = {}, {}
        maps = {k: calibrate.sigma_map(v) for k, v in (calibration or {}).items()}
        for kind, unit in (("energy", "eV"), ("forces", "eV_per_A")):
            if kind in kinds and f"{kind}_var" in pred:
                var = pred[f"{kind}_var"]
                s = np.sqrt(np.concatenate([np.ravel(v) for v in var]) if isinstance(var, list)
                            else np.ravel(var))
                err = arrays[f"{kind}_pred"] - arrays[f"{kind}_true"]
                arrays[f"{kind}_sigma"] = calibrate.apply_map(s, maps.get(kind,
                                                                          calibrate.IDENTITY))
                cal[f"{kind}_{unit}"] = calibrate.metrics(err, arrays[f"{kind}_sigma"])
                raw[f"{kind}_{unit}"] = calibrate.metrics(err, s)
                if kind in maps:
                    cal[f"{kind}_{unit}"].update(calibrate.map_entry(maps[kind]))
        metrics["calibration"] = cal
        if calibration:
            metrics["calibration_raw"] = raw
    return metrics, arrays


def _mae_rmse(out: dict, kind: str, unit: str, err: np.ndarray) -> None:
    out[f"{kind}_mae_{unit}"] = float(np.mean(np.abs(err)))
    out[f"{kind}_rmse_{unit}"] = float(np.sqrt(np.mean(err**2)))


def parity_plot(path: str, arrays: dict[str, np.ndarray], title: str = "") -> bool:
    """Parity plots (true vs predicted, with MAE) of every labelled quantity in ``arrays``
    (from :func:`errors`) to ``path``; False (and a note on stderr) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    kinds = [k for k in ("energy", "forces", "stress") if f"{k}_true" in arrays]
    unit = {"energy": "energy (eV)", "forces": "force component (eV/Å)",
            "stress": "stress component (eV/Å³)"}
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.3 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        t, p = arrays[f"{kind}_true"], arrays[f"{kind}_pred"]
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        sigma = arrays.get(f"{kind}_sigma")
        if sigma is not None:
            ax.errorbar(t, p, yerr=sigma, fmt="o", ms=3, alpha=0.5, elinewidth=0.6)
        else:
            ax.scatter(t, p, s=8, alpha=0.6)
        ax.set_xlabel(f"reference {unit[kind]}")
        ax.set_ylabel(f"predicted {unit[kind]}")
        ax.set_title(f"MAE {np.mean(np.abs(t - p)):.4g}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def pyplot() -> Any:
    """``matplotlib.pyplot`` (Agg backend), or None with a note on stderr when matplotlib
    (the ``plots`` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("jaxmat: plots skipped: matplotlib is not installed "
              "(pip install 'jaxmat[plots]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _unit(name: str) -> str:
    return name.replace("_per_A3", "/Å³").replace("_per_A", "/Å").replace("_per_", "/")


def format_metrics(m: dict[str, Any]) -> str:
    """A short plain-text table of :func:`errors` metrics."""
    lines = [f"{m['n_structures']} structures, {m['n_atoms']} atoms"]
    for kind, units in (("energy", ("eV_per_atom", "eV")), ("forces", ("eV_per_A",)),
                        ("stress", ("eV_per_A3",))):
        for u in units:
            if f"{kind}_mae_{u}" in m:
                lines.append(f"  {kind:7s} MAE {m[f'{kind}_mae_{u}']:.5g}  RMSE "
                             f"{m[f'{kind}_rmse_{u}']:.5g}  [{_unit(u)}]")
    raw = m.get("calibration_raw", {})
    for name, c in m.get("calibration", {}).items():
        form = calibrate.describe(c if "scale" in c else None)
        for label, x in ((f"σ {name} raw", raw.get(name)),
                         (f"σ {name} calibrated ({form})" if name in raw else f"σ {name}", c)):
            if x is not None:
                lines.append(f"  {label}: NLL {x['nll']:.4g}, Spearman {x['spearman']:.3f}, "
                             f"miscalibration area {x['miscalibration_area']:.3f}, coverage "
                             f"68/95 % {100 * x['coverage_68']:.1f}/{100 * x['coverage_95']:.1f},"
                             f" RMSE/mean σ {x['rmse'] / x['mean_sigma']:.3g}")
    return "\n".join(lines)
