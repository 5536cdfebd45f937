"""Significant-peak precision, recall and height error on hand-made spectra."""
import numpy as np
import pytest

from jaxmat.core import spectra

G = np.linspace(525, 555, 301)  # 0.1 eV steps


def gauss(centers, heights, width=0.5):
    return sum(h * np.exp(-0.5 * ((G - c) / width) ** 2) for c, h in zip(centers, heights))


def test_significant_peak_definition():
    # prominence 0.08 of max is below the 10 % line, 0.12 above
    y = gauss([531, 536, 542], [1.0, 0.12, 0.08])
    e, h, _ = spectra.find_peaks(G, y)
    np.testing.assert_allclose(e, [531.0, 536.0], atol=0.05)
    assert spectra.SIGNIFICANT_PROMINENCE == 0.1 and spectra.PEAK_TOL_EV == 1.0


def test_precision_and_recall_count_both_sides():
    true = gauss([530, 534, 540], [1.0, 0.6, 0.4])
    # pred: 530.5 (match), 534 (match, 0.2 lower), 545 (spurious); 540 missed
    pred = gauss([530.5, 534, 545], [1.0, 0.4, 0.5])
    m = spectra.peak_metrics(G, true[None], pred[None], n_boot=50)
    assert m["n_peaks"] == 3 and m["n_pred_peaks"] == 3 and m["n_matched"] == 2
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["height_error"] == pytest.approx(0.1, abs=2e-3)  # (0 + 0.2) / 2 of max 1
    # a smoothed prediction (one peak) is precise but recalls little
    smooth = gauss([530.2], [1.0], width=1.5)
    s = spectra.peak_metrics(G, true[None], smooth[None], n_boot=20)
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(1 / 3)
    # a peak 1.2 eV off matches neither way
    off = gauss([531.2, 534, 540], [1.0, 0.6, 0.4])
    o = spectra.peak_metrics(G, true[None], off[None], n_boot=20)
    assert o["precision"] == pytest.approx(2 / 3) and o["recall"] == pytest.approx(2 / 3)


def test_bootstrap_interval_brackets_the_pooled_value_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    true = np.stack([gauss([530, 534, 540], [1.0, 0.6, 0.4])] * 40)
    # half of the spectra lose their last peak
    pred = np.stack([gauss([530, 534] + ([540] if rng.random() < 0.5 else []),
                           [1.0, 0.6, 0.4]) for _ in range(40)])
    m = spectra.peak_metrics(G, true, pred, n_boot=500)
    assert m["precision"] == 1.0 and m["precision_ci"] == (1.0, 1.0)
    lo, hi = m["recall_ci"]
    assert lo < m["recall"] < hi and 0.7 < m["recall"] < 0.95
    big = spectra.peak_metrics(G, np.concatenate([true] * 4), np.concatenate([pred] * 4),
                               n_boot=500)
    assert big["recall_ci"][1] - big["recall_ci"][0] < hi - lo
    assert "P 100.0 %" in spectra.format_peaks(m)


def test_evaluate_spectra_reports_both_sides_with_intervals():
    true = np.stack([gauss([530, 534], [1.0, 0.5])] * 3)
    pred = np.stack([gauss([530, 534, 545], [1.0, 0.5, 0.5])] * 3)
    ev = spectra.evaluate_spectra(G, true, pred, n_boot=100)
    assert ev["recall"] == 1.0 and ev["precision"] == pytest.approx(2 / 3)
    assert ev["peaks_within_tol"] == ev["recall"]
    assert ev["pred_peaks_within_tol"] == ev["precision"]
    assert ev["precision_ci"] == pytest.approx((2 / 3, 2 / 3))


def test_peak_metrics_rejects_bad_input():
    y = gauss([530], [1.0])
    with pytest.raises(ValueError, match="shapes"):
        spectra.peak_metrics(G, y[None], y[None, :-1])
    with pytest.raises(ValueError, match="n_spectra"):
        spectra.peak_metrics(G, y, y)
    with pytest.raises(ValueError, match="n_boot"):
        spectra.peak_metrics(G, y[None], y[None], n_boot=0)
