"""Committee combiners: keep the peaks members agree on, drop those none agree on."""
import numpy as np
import pytest

from jaxmat.core import spectra
from jaxmat.workflows.xanes.combine import align, combine, combine_many, consensus_peaks

G = np.linspace(526, 552, 261)


def gauss(centers, heights, width=0.4):
    return sum(h * np.exp(-0.5 * ((G - c) / width) ** 2) for c, h in zip(centers, heights))


def committee():
    """5 members: a shared peak near 531 eV (jitter up to 0.3 eV) plus one peak of each
    member's own, 2 eV or more from any other member's."""
    jitter = [-0.3, -0.1, 0.0, 0.15, 0.3]
    own = [536.0, 538.0, 540.0, 542.0, 544.0]
    return np.stack([gauss([531.0 + j, o], [1.0, 0.8]) for j, o in zip(jitter, own)])


def test_aligned_keeps_the_agreed_peak_and_drops_the_others():
    m = committee()
    clusters = consensus_peaks(G, m)
    assert len(clusters) == 1 and len(clusters[0]) == 5
    y = combine(m, G, "aligned")
    e, h, _ = spectra.find_peaks(G, y)
    np.testing.assert_allclose(e, [531.0], atol=0.11)
    assert h[0] == pytest.approx(1.0, abs=0.02)  # sharp: full height kept
    # the mean keeps every member's own peak (0.8 / 5 = 16 % of max: significant)
    # and flattens the shared one
    mean = combine(m, G, "mean")
    e_mean, h_mean, _ = spectra.find_peaks(G, mean)
    assert len(e_mean) == 6 and h_mean[0] < 0.95
    # the median drops the lone peaks too, but not the blur of the shared one
    med = combine(m, G, "median")
    assert len(spectra.find_peaks(G, med)[0]) == 1


def test_align_moves_each_member_peak_to_the_consensus_energy():
    m = committee()
    a = align(G, m)
    for row in a:
        e = spectra.find_peaks(G, row)[0]
        assert abs(e[0] - 531.0) <= 0.11
    # a member without consensus peaks is left as it is
    lone = np.stack([gauss([530], [1.0]), gauss([540], [1.0]), gauss([546], [1.0])])
    np.testing.assert_array_equal(align(G, lone), lone)


def test_peak_held_by_a_minority_is_dropped_by_quorum():
    m = np.stack([gauss([531, 537], [1, 0.8])] * 2 + [gauss([531], [1])] * 3)
    assert len(consensus_peaks(G, m)) == 1  # 537 eV held by 2 of 5 < half
    assert len(consensus_peaks(G, m, quorum=0.4)) == 2
    e = spectra.find_peaks(G, combine(m, G, "aligned"))[0]
    np.testing.assert_allclose(e, [531.0], atol=0.05)


def test_combine_many_and_errors():
    m = committee()
    many = combine_many(np.stack([m, m[::-1]], axis=1), G, "aligned")
    assert many.shape == (2, len(G))
    np.testing.assert_allclose(many[0], many[1])
    np.testing.assert_allclose(combine_many(m[:, None], G, "median")[0], np.median(m, 0))
    with pytest.raises(ValueError, match="unknown combiner"):
        combine(m, G, "max")
    with pytest.raises(ValueError, match="members"):
        consensus_peaks(G, m[:, :-1])
