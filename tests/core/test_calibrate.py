"""Calibration metrics against analytic Gaussian cases; recalibration recovers a known scale."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from jaxmat import calibrate


def _synthetic(n=20000, true_scale=2.5, seed=0):
    """Errors drawn with std ``true_scale * sigma``: the predicted sigma is too small."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.05, 0.5, n)
    return rng.normal(0.0, true_scale * sigma), sigma


@pytest.mark.parametrize("true_scale", [0.4, 1.0, 2.5])
def test_recalibration_recovers_scale(true_scale):
    err_val, sig_val = _synthetic(true_scale=true_scale, seed=1)
    s = calibrate.fit_scale(err_val, sig_val)
    assert abs(s / true_scale - 1) < 0.05
    assert abs(calibrate.fit_scale(err_val, sig_val, method="median") / true_scale - 1) < 0.05
    # s minimises the NLL: neighbours on both sides are worse
    nll = calibrate.gaussian_nll(err_val, calibrate.recalibrate(sig_val, s))
    for f in (0.9, 1.1):
        assert calibrate.gaussian_nll(err_val, calibrate.recalibrate(sig_val, s * f)) > nll
    # applied to fresh test data the recalibrated sigma is calibrated
    err, sig = _synthetic(true_scale=true_scale, seed=2)
    m = calibrate.metrics(err, calibrate.recalibrate(sig, s))
    assert abs(m["coverage_68"] - 0.6827) < 0.02
    assert abs(m["coverage_95"] - 0.95) < 0.01
    assert m["miscalibration_area"] < 0.02


def test_calibrated_and_miscalibrated_metrics():
    err, sig = _synthetic(true_scale=1.0)
    m = calibrate.metrics(err, sig)
    # analytic NLL of a calibrated Gaussian: E[½ log(2πσ²)] + ½
    expect = float(np.mean(0.5 * np.log(2 * np.pi * sig**2))) + 0.5
    assert abs(m["nll"] - expect) < 0.02
    assert m["miscalibration_area"] < 0.01
    # |err| grows with sigma: ranking is informative (|Z| sigma with sigma on U(0.05, 0.5))
    assert 0.3 < m["spearman"] < 0.7
    over, _ = _synthetic(true_scale=2.5)
    m2 = calibrate.metrics(over, sig)
    # coverage of a 2.5x too small sigma: P(|Z| <= z_p / 2.5)
    expected95 = math.erf(1.959964 / 2.5 / math.sqrt(2))
    assert abs(m2["coverage_95"] - expected95) < 0.01
    assert m2["miscalibration_area"] > 0.2


def test_spearman_and_curve_exact_cases():
    sigma = np.array([0.1, 0.2, 0.3, 0.4])
    assert calibrate.spearman([0.01, -0.02, 0.5, -0.9], sigma) == pytest.approx(1.0)
    assert calibrate.spearman([0.9, 0.5, -0.02, 0.01], sigma) == pytest.approx(-1.0)
    # ties take the average rank: matches the Pearson correlation of average ranks
    r = calibrate.spearman([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert r == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])
    # errors exactly at z_p sigma: they leave the interval at level p
    p = 0.5
    z = calibrate._z_of(p)
    exp, obs = calibrate.calibration_curve([z * 0.1], [0.1], n_levels=3)  # levels .25 .5 .75
    np.testing.assert_allclose(exp, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(obs, [0.0, 1.0, 1.0])
    assert calibrate._z_of(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        calibrate.metrics([0.1, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="sigma"):
        calibrate.gaussian_nll([0.1, 0.2], [0.1, np.inf])
    with pytest.raises(ValueError, match="positive"):
        calibrate.fit_scale([0.1, 0.2], [0.1, 0.0])
    with pytest.raises(ValueError, match="same size"):
        calibrate.coverage([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="empty"):
        calibrate.miscalibration_area([], [])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        calibrate.coverage([0.1], [0.1], p=1.5)
    with pytest.raises(ValueError, match="positive"):
        calibrate.recalibrate([0.1], -1.0)
    with pytest.raises(ValueError, match="method"):
        calibrate.fit_scale([0.1], [0.1], method="mle")


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    err, sig = _synthetic(n=500)
    target = np.linspace(-1, 1, 500)
    fig = calibrate.plot_all(err, sig, target, target + err, path=str(tmp_path / "cal.png"))
    assert (tmp_path / "cal.png").stat().st_size > 1000
    assert len(fig.axes) == 3
    line = fig.axes[0].get_lines()[1]
    exp, obs = calibrate.calibration_curve(err, sig)
    np.testing.assert_allclose(line.get_ydata(), obs)


def test_imports_without_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None; "
            "import jaxmat.core.calibrate as c; print(c.coverage([0.1, 0.3], [0.2, 0.2], 0.68))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(0.5)
