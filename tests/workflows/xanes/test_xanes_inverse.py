"""Inverse problem on synthetic spectra whose answers are known."""
import numpy as np
import pytest

pytest.importorskip("sklearn")

from jaxmat.workflows.xanes import inverse  # noqa: E402

G = np.linspace(526, 552, 261)


def gauss(centers, heights, width=0.4):
    return sum(h * np.exp(-0.5 * ((G - c) / width) ** 2) for c, h in zip(centers, heights))


def synthetic(n_per_class=30, seed=0):
    """Three classes: first peak at 531, 533 or 535 eV (±0.15 eV), a random second peak."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for label, c in (("carbonyl", 531.0), ("hydroxyl", 533.0), ("ether", 535.0)):
        for _ in range(n_per_class):
            x.append(gauss([c + rng.normal(0, 0.15), rng.uniform(538, 548)],
                           [1.0, rng.uniform(0.3, 0.7)], width=0.6))
            y.append(label)
    return np.array(x), np.array(y)


def test_knn_classifier_recovers_known_classes():
    x, y = synthetic(seed=0)
    clf = inverse.GroupClassifier(kind="knn", k=3).fit(G, x, y)
    xt, yt = synthetic(n_per_class=10, seed=2)
    xt, _ = inverse.noisy(G, xt, shift_sd=0.2, noise=0.02, seed=4)
    assert inverse.class_report(yt, clf.predict(xt))["accuracy"] == 1.0
    with pytest.raises(ValueError, match="kind"):
        inverse.GroupClassifier(kind="forest")


def test_classifier_recovers_known_classes_under_shift_and_noise():
    x, y = synthetic(seed=0)
    clf = inverse.GroupClassifier().fit(G, x, y)
    xt, yt = synthetic(n_per_class=20, seed=1)
    xt, _ = inverse.noisy(G, xt, shift_sd=0.2, noise=0.02, seed=3)
    rep = inverse.class_report(yt, clf.predict(xt))
    assert rep["accuracy"] == 1.0
    assert rep["per_class"]["ether"] == {"precision": 1.0, "recall": 1.0, "support": 20}
    assert np.trace(rep["confusion"]) == 60
    # a spectrum between two classes is ambiguous: both of them get probability
    mid = gauss([532.0, 543.0], [1.0, 0.5], width=0.6)
    p = dict(zip(clf.classes, clf.predict_proba(mid)[0]))
    assert p["ether"] < 0.05 and p["carbonyl"] > 0.05 and p["hydroxyl"] > 0.05


def test_class_report_counts_and_plot():
    rep = inverse.class_report(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert rep["accuracy"] == 0.75 and rep["confusion"] == [[1, 1], [0, 2]]
    assert rep["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert rep["per_class"]["a"]["recall"] == 0.5
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fig = inverse.plot_confusion(rep)
    assert fig.axes[0].get_xlabel() == "predicted group"


def test_retrieval_finds_the_shifted_noisy_spectrum():
    rng = np.random.default_rng(0)
    centers = rng.uniform(529, 548, size=(120, 3))
    cands = np.stack([gauss(c, [1.0, 0.6, 0.4], width=0.6) for c in centers])
    queries, shifts = inverse.noisy(G, cands, shift_sd=0.2, noise=0.02, seed=1)
    assert np.std(shifts) == pytest.approx(0.2, rel=0.2)
    res = inverse.retrieval_accuracy(G, queries, cands, n_candidates=100)
    assert res["top1"] == 1.0 and res["top5"] == 1.0 and res["n_queries"] == 120
    # ranking of one query: itself first
    order = inverse.retrieve(G, queries[7], cands)
    assert order[0] == 7
    # shift tolerance: a 0.4 eV shift is undone exactly on this 0.1 eV grid
    moved = inverse.shift_spectra(G, cands[:1], 0.4)[0]
    assert inverse.similarity(G, moved, cands[:1], max_shift=0.5)[0] > 0.999
    assert inverse.similarity(G, moved, cands[:1], max_shift=0.0)[0] < 0.9
    with pytest.raises(ValueError, match="S >= 100"):
        inverse.retrieval_accuracy(G, queries[:50], cands[:50])


def test_functional_groups_of_known_molecules():
    pytest.importorskip("rdkit")
    got = inverse.site_groups(["CC(C)=O", "CCO", "COC", "CC(=O)OC", "CC(N)=O", "CC#N", "CCN",
                               "c1ccncc1"],
                              [0, 1, 2, 3, 3, 4, 4, 5, 6, 7], [3, 2, 1, 2, 3, 3, 2, 2, 2, 3])
    assert got == ["carbonyl", "hydroxyl", "ether", "carboxyl/ester", "carboxyl/ester",
                   "amide", "amide", "nitrile", "amine", "aromatic N"]
    with pytest.raises(ValueError, match="no functional groups"):
        inverse.functional_group(("C-H", "C-H", "C"))
