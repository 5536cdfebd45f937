"""Selection: Kabsch RMSD (with permutations), dedup and percentile thresholds on hand-made cases."""
import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from jaxmat.workflows.adversarial.select import SelectConfig, deduplicate, rmsd, select, too_close, variance_threshold

# a distorted ammonia, so that no relabelling of the H atoms is a symmetry
NH3 = np.array([[0.0, 0.0, 0.38], [1.2, 0.0, 0.0], [-0.3, 0.9, 0.1], [-0.6, -1.0, -0.1]])


def _nh3(pos=NH3):
    return Atoms("NH3", positions=pos)


def _moved(pos, seed, shift=(1.0, -2.0, 0.5)):
    return Rotation.random(random_state=seed).apply(pos) + np.asarray(shift)


def test_kabsch_rmsd_is_rotation_and_translation_invariant():
    assert rmsd(_nh3(), _nh3(_moved(NH3, 0))) == pytest.approx(0.0, abs=1e-7)


def test_kabsch_rmsd_matches_scipy_alignment():
    rng = np.random.default_rng(1)
    other = _moved(NH3 + rng.normal(0, 0.15, NH3.shape), 3)
    a, b = NH3 - NH3.mean(0), other - other.mean(0)
    _, rssd = Rotation.align_vectors(a, b)
    assert rmsd(_nh3(), _nh3(other)) == pytest.approx(rssd / 2.0, abs=1e-7)  # sqrt(n = 4)


def test_permutation_of_like_atoms():
    swapped = NH3[[0, 2, 3, 1]]  # the hydrogens relabelled
    moved = _moved(swapped, 5)
    assert rmsd(_nh3(), _nh3(moved)) > 0.1
    assert rmsd(_nh3(), _nh3(moved), permute=True) == pytest.approx(0.0, abs=1e-7)


def test_permutation_of_many_like_atoms_uses_assignment():
    rng = np.random.default_rng(0)
    pos = rng.normal(0, 1.5, (10, 3))  # C2H8: 8! = 40320 orderings, too many to enumerate
    a = Atoms("C2H8", positions=pos)
    perm = np.r_[0, 1, 2 + rng.permutation(8)]
    b = Atoms("C2H8", positions=_moved(pos[perm], 7, (0.0, 0.0, 0.0)))
    assert rmsd(a, b, permute=True) == pytest.approx(0.0, abs=1e-6)


def test_mismatched_species_raise():
    with pytest.raises(ValueError, match="mismatched species"):
        rmsd(_nh3(), Atoms("OH3", positions=NH3))
    with pytest.raises(ValueError, match="mismatched species"):
        rmsd(_nh3(), Atoms("NH2", positions=NH3[:3]))
    with pytest.raises(ValueError, match="mismatched species order"):
        rmsd(_nh3(), Atoms("HNH2", positions=NH3))


def test_periodic_rmsd_uses_minimum_image():
    cell = np.eye(3) * 4.0
    pos = np.array([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0]])
    a = Atoms("Cu2", positions=pos, cell=cell, pbc=True)
    b = Atoms("Cu2", positions=pos + [[4.0, 0, 0], [0, -4.0, 0]], cell=cell, pbc=True)
    assert rmsd(a, b) == pytest.approx(0.0, abs=1e-12)
    c = Atoms("Cu2", positions=pos + [[0.1, 0, 0], [-0.1, 0, 0]], cell=cell, pbc=True)
    assert rmsd(a, c) == pytest.approx(0.1, abs=1e-12)


def test_deduplicate_hand_made():
    d = np.zeros_like(NH3)
    d[1, 0] = 0.4  # one N-H bond stretched by 0.4 Å
    structs = [
        _nh3(),                              # 0 kept
        _nh3(_moved(NH3, 1)),                # 1 rotated copy of 0 -> duplicate
        _nh3(NH3 + d),                       # 2 distinct
        _nh3(_moved(NH3[[0, 3, 1, 2]], 2)),  # 3 permuted copy of 0 -> duplicate only with permute
        _nh3(NH3 + d + 0.001),               # 4 duplicate of 2
    ]
    assert deduplicate(structs, 0.05, permute=True) == [0, 2]
    assert deduplicate(structs, 0.05, permute=False) == [0, 2, 3]
    assert deduplicate(structs, 0.05, permute=True, order=[2, 0, 1, 3, 4]) == [2, 0]
    assert deduplicate(structs, 0.05, permute=True, reference=[_nh3()]) == [2]
    assert deduplicate(structs, 0.05, permute=True, max_keep=1) == [0]
    # raw coordinates for model systems: a translated copy is not a duplicate
    pts = [Atoms("H", [[x, 0, 0]]) for x in (0.0, 0.01, 0.5)]
    assert deduplicate(pts, 0.05, align=False) == [0, 2]
    assert deduplicate(pts, 0.05) == [0]  # one atom: alignment makes all points equal


def test_threshold_and_select():
    assert variance_threshold(np.arange(1, 11), 50) == pytest.approx(5.5)
    with pytest.raises(ValueError, match="percentile"):
        variance_threshold([1.0], 101)
    with pytest.raises(ValueError, match="empty"):
        variance_threshold([], 50)
    cands = [Atoms("H", [[x, 0, 0]]) for x in (0.0, 1.0, 1.001, 2.0, 3.0)]
    fvar = np.array([1.0, 9.0, 8.0, 7.0, 6.0])
    cfg = SelectConfig(percentile=50, rmsd=0.05, max_per_generation=10, align=False)
    # threshold 5.5 drops candidate 0; candidate 2 duplicates 1; ranked by variance
    assert select(cands, fvar, np.arange(1, 11), cfg) == [1, 3, 4]
    # ranking by another score
    assert select(cands, fvar, np.arange(1, 11), cfg, scores=[0, 1, 2, 5, 4]) == [3, 4, 2]
    capped = SelectConfig(percentile=50, rmsd=0.05, max_per_generation=2, align=False)
    assert select(cands, fvar, np.arange(1, 11), capped) == [1, 3]
    # fill tops up below the threshold for an equal budget
    strict = SelectConfig(percentile=100, rmsd=0.05, max_per_generation=3, align=False, fill=True)
    assert select(cands, fvar, [8.5], strict) == [1, 3, 4]
    # still short: the best remaining near-duplicates as the RMSD threshold halves (x = 0.02
    # passes at 0.0125 Å, 0.01 at 0.00625 Å; 0.2005 is 0.0005 Å from 0.2: beyond 0.05/16)
    near = [Atoms("H", [[x, 0, 0]]) for x in (0.0, 0.01, 0.02, 0.2, 0.2005)]
    short = SelectConfig(percentile=0, rmsd=0.05, max_per_generation=4, align=False, fill=True)
    assert select(near, np.array([5.0, 4.0, 3.0, 2.0, 1.0]), [0.0], short) == [0, 3, 2, 1]
    assert select(near, np.array([5.0, 4.0, 3.0, 2.0, 1.0]), [0.0],
                  SelectConfig(percentile=0, rmsd=0.05, max_per_generation=4, align=False)) \
        == [0, 3]
    with pytest.raises(ValueError, match="force variances"):
        select(cands, fvar[:3], [1.0], cfg)


def test_too_close_flags_overlaps_images_and_nan():
    ok = _nh3()
    squeezed = NH3.copy()
    squeezed[1] = squeezed[0] + [0.3, 0.0, 0.0]  # H 0.3 Å from N
    cell = np.eye(3) * 4.0
    image = Atoms("Cu2", positions=[[0.05, 1, 1], [3.9, 1, 1]], cell=cell, pbc=True)  # 0.15 Å apart
    apart = Atoms("Cu2", positions=[[0.05, 1, 1], [2.0, 1, 1]], cell=cell, pbc=True)
    nan = NH3.copy()
    nan[2, 1] = np.nan
    flags = too_close([ok, _nh3(squeezed), image, apart, _nh3(nan)], 0.5)
    assert flags.tolist() == [False, True, True, False, True]
    assert too_close([_nh3(squeezed)], 0.25).tolist() == [False]  # 0.3 Å passes a 0.25 Å floor
    assert too_close([], 0.5).shape == (0,)
    with pytest.raises(ValueError, match="unknown element"):  # bad input is not "too close"
        too_close([Atoms(numbers=[0, 1], positions=[[0, 0, 0], [1, 0, 0]])], 0.5)


def test_committee_predict_takes_the_graph_from_the_model():
    import jax

    from jaxmat import data, ensemble, graph, potential
    from jaxmat.models import SchNetConfig, schnet
    from jaxmat.workflows.adversarial.select import committee_predict

    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=3.0)), stress=False)
    frames = data.load_ammonia()[:5]
    recs = graph.records_from_atoms(frames, 3.0)
    params = ensemble.init(model, jax.random.key(0), graph.batch(recs[:1]), 3)
    out = committee_predict(model, params, frames)
    f = np.asarray(jax.jit(ensemble.apply, static_argnums=0)(model, params, graph.batch(recs))
                   ["forces"])[:, :20].reshape(3, 5, 4, 3)
    np.testing.assert_allclose(out["forces_var_graph"], f.var(0).mean(axis=(1, 2)), rtol=1e-3)
    np.testing.assert_allclose(committee_predict(model, params, recs, cutoff=3.0)["energy"],
                               out["energy"], rtol=1e-6)
    with pytest.raises(ValueError, match="disagrees with the graph cutoff 3.0"):
        committee_predict(model, params, frames, cutoff=4.0)
    with pytest.raises(ValueError, match="needs committee params"):
        committee_predict(model, ensemble.member(params, 0), frames)
