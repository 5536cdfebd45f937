"""Interpretation gradients: finite differences (x64), simplex sum rules, integrated-gradients
completeness, committee statistics, correlation, suggestions, a graph model, recovery of a
planted linear relationship by a trained model."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat import ensemble, interpret, train
from jaxmat.data.loader import ArrayLoader
from jaxmat.models.photoanode import PhotoanodeConfig, photoanode_net
from jaxmat.core.protocol import Model

CFG = PhotoanodeConfig(n_points=40, n_elements=5, spectrum_hidden=(8, 8),
                       composition_hidden=(8, 8), head_hidden=(8,), merge="features")
NET = photoanode_net(CFG)


def simplex(rng, n, k):
    return rng.dirichlet(np.ones(k), size=n)


def make_batch(n=6, k=5, points=40, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {"composition": simplex(rng, n, k).astype(dtype),
            "spectrum": rng.random((n, points)).astype(dtype),
            "mask": np.ones(n, bool)}


def linear_model(k: int) -> Model:
    """f(x) = w · x + c (params {"w": (k,), "c": ()}) on ``composition``."""
    return Model(lambda key, b=None: {"w": jax.random.normal(key, (k,)), "c": jnp.zeros(())},
                 lambda p, b: {"P": b["composition"] @ p["w"] + p["c"]}, name="linear")


@pytest.fixture(scope="module")
def x64_setup():
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                        NET.init(jax.random.key(0), None))
        yield params, make_batch(dtype=np.float64)


# --------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("wrt", ["composition", "spectrum"])
def test_input_gradients_match_central_differences(x64_setup, wrt):
    params, b = x64_setup
    with jax.enable_x64(True):
        g = np.asarray(interpret.input_gradients(NET, params, b, wrt, scale=2.5))
        f = jax.jit(lambda xx: 2.5 * NET.apply(params, {**b, wrt: xx})["P"])
        x0 = np.asarray(b[wrt])
        h = 1e-6
        rng = np.random.default_rng(1)
        for _ in range(8):
            i, j = rng.integers(x0.shape[0]), rng.integers(x0.shape[1])
            xp, xm = x0.copy(), x0.copy()
            xp[i, j] += h
            xm[i, j] -= h
            fd = (np.asarray(f(xp)) - np.asarray(f(xm))) / (2 * h)
            assert abs(fd[i] - g[i, j]) < 1e-7 + 1e-6 * abs(fd[i])
            others = np.delete(fd, i)  # samples do not interact
            assert np.all(np.abs(others) < 1e-8)


def test_padding_rows_get_zero_gradient():
    p = NET.init(jax.random.key(1), None)
    b = make_batch()
    b["mask"][-2:] = False
    g = np.asarray(interpret.input_gradients(NET, p, b, "spectrum"))
    assert np.all(g[-2:] == 0) and np.all(np.abs(g[:-2]).sum(1) > 0)


def test_bad_inputs_raise():
    p = NET.init(jax.random.key(1), None)
    b = make_batch()
    with pytest.raises(ValueError, match="no input"):
        interpret.input_gradients(NET, p, b, "positions")
    with pytest.raises(ValueError, match="not 'energy'"):
        interpret.input_gradients(NET, p, b, "composition", output="energy")


# --------------------------------------------------------------------------- simplex
def test_simplex_directional_derivative_sum_rules():
    rng = np.random.default_rng(2)
    x = simplex(rng, 10, 5)
    g = rng.normal(size=(10, 5))
    for a in range(5):
        for h in [None, 0, 3]:
            d = np.asarray(interpret.direction(x, a, h))
            assert np.allclose(d.sum(-1), 0, atol=1e-6)  # stays on the simplex
            if h == a:  # a direction that moves no composition
                assert np.all(d == 0)
    # adding X at the expense of X gives exactly 0
    for a in range(5):
        assert np.all(np.asarray(interpret.simplex_derivatives(g, x, host=a))[:, a] == 0)
    # blind to the (1, ..., 1) component of the gradient
    for host in [None, 2]:
        d1 = np.asarray(interpret.simplex_derivatives(g, x, host))
        d2 = np.asarray(interpret.simplex_derivatives(g + 7.0, x, host))
        assert np.allclose(d1, d2, atol=1e-5)
    # host derivatives: antisymmetric and transitive
    D = np.stack([np.asarray(interpret.simplex_derivatives(g, x, host=h)) for h in range(5)], 1)
    assert np.allclose(D, -np.swapaxes(D, 1, 2), atol=1e-6)  # D[:, h, a] = -D[:, a, h]
    assert np.allclose(D[:, 1, 0] + D[:, 2, 1], D[:, 2, 0], atol=1e-6)
    # dilution derivatives: sum_X x_X (1 - x_X) D_X = 0 (Euler-like rule)
    dil = np.asarray(interpret.simplex_derivatives(g, x))
    assert np.allclose((x * (1 - x) * dil).sum(1), 0, atol=1e-6)
    # per 1 at.% of X: the step adds exactly 0.01 of X
    d = np.asarray(interpret.direction(x, 1, None))
    assert np.allclose(d[:, 1], 1.0)


def test_simplex_derivative_matches_finite_step_of_model(x64_setup):
    params, b = x64_setup
    with jax.enable_x64(True):
        g = interpret.input_gradients(NET, params, b, "composition")
        x = np.asarray(b["composition"])
        for host in [None, 4]:
            D = np.asarray(interpret.simplex_derivatives(g, x, host, per=1.0))
            for a in range(5):
                d = np.asarray(interpret.direction(x, a, host))
                h = 1e-6
                fp = NET.apply(params, {**b, "composition": x + h * d})["P"]
                fm = NET.apply(params, {**b, "composition": x - h * d})["P"]
                fd = (np.asarray(fp) - np.asarray(fm)) / (2 * h)
                assert np.allclose(fd, D[:, a], atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------- IG, SmoothGrad
@pytest.mark.parametrize("wrt,baseline", [("spectrum", None), ("composition", "mean")])
def test_integrated_gradients_completeness(x64_setup, wrt, baseline):
    params, b = x64_setup
    with jax.enable_x64(True):
        attr = np.asarray(interpret.integrated_gradients(NET, params, b, wrt, baseline, steps=48))
        x = np.asarray(b[wrt])
        x0 = np.zeros_like(x) if baseline is None else np.broadcast_to(x.mean(0), x.shape)
        f1 = np.asarray(NET.apply(params, b)["P"])
        f0 = np.asarray(NET.apply(params, {**b, wrt: x0})["P"])
        # ELU's second derivative jumps at 0, so the quadrature converges algebraically
        assert np.allclose(attr.sum(1), f1 - f0, atol=1e-6, rtol=1e-4)
        assert np.abs(f1 - f0).max() > 1e-2


def test_smoothgrad_linear_model_equals_gradient():
    m = linear_model(5)
    p = m.init(jax.random.key(0))
    b = make_batch()
    sg = interpret.smoothgrad(m, p, b, jax.random.key(3), sigma=0.3, n=4)
    assert np.allclose(sg, np.broadcast_to(p["w"], (6, 5)), atol=1e-6)
    # and for a nonlinear model, sigma -> 0 gives the plain gradient
    q = NET.init(jax.random.key(2), None)
    g = interpret.input_gradients(NET, q, b, "spectrum")
    sg0 = interpret.smoothgrad(NET, q, b, jax.random.key(3), "spectrum", sigma=0.0, n=2)
    assert np.allclose(sg0, g, atol=1e-6)


# --------------------------------------------------------------------------- committees
def test_committee_matches_member_loop_and_stats():
    b = make_batch()
    P = ensemble.init(NET, jax.random.key(4), None, 3)
    one = jax.jit(lambda p: interpret.input_gradients(NET, p, b))
    G = np.asarray(jax.jit(lambda q: interpret.committee(
        functools.partial(interpret.input_gradients, NET), q, b, "composition"))(P))
    for m in range(3):
        assert np.allclose(G[m], one(ensemble.member(P, m)), atol=1e-5)
    v = np.array([[1.0, -2.0], [3.0, -1.0], [-1.0, -3.0], [1.0, 2.0]])
    st = interpret.committee_stats(v)
    assert np.allclose(st["mean"], [1.0, -1.0])
    assert np.allclose(st["std"], v.std(0))
    assert np.allclose(st["sign_agreement"], [0.75, 0.75])
    by_rows = interpret.committee_stats(v.T, axis=1)  # members on another axis
    assert np.allclose(by_rows["std"], v.std(0)) and np.allclose(by_rows["mean"], [1.0, -1.0])


def test_explain_is_consistent_and_jittable():
    b = make_batch()
    P = ensemble.init(NET, jax.random.key(5), None, 2)
    out = jax.jit(functools.partial(interpret.explain, NET, scale=2.0, ig_steps=2, smooth_n=1))(P, b)
    one = jax.jit(lambda p: interpret.input_gradients(NET, p, b, scale=2.0))
    G = np.stack([one(ensemble.member(P, m)) for m in range(2)])
    assert np.allclose(out["grad_mean"], G.mean(0), atol=1e-5)
    assert np.allclose(out["grad_std"], G.std(0), atol=1e-5)
    assert np.allclose(out["dilute_mean"], interpret.simplex_derivatives(G.mean(0), b["composition"]),
                       atol=1e-5)
    assert out["saliency_mean"].shape == (6, 40) and out["ig_spectrum"].shape == (6, 40)
    dil = interpret.simplex_derivatives(G.mean(0), b["composition"])
    assert np.allclose(out["corr"], interpret.gradient_correlation(dil, b["composition"]), atol=1e-4)
    pred = np.stack([2.0 * NET.apply(ensemble.member(P, m), b)["P"] for m in range(2)])
    assert np.allclose(out["pred_mean"], pred.mean(0), atol=1e-5)


def test_gradient_correlation_matches_numpy():
    rng = np.random.default_rng(6)
    g, e = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    c = np.asarray(interpret.gradient_correlation(g, e))
    assert np.allclose(c, np.corrcoef(np.hstack([g, e]).T), atol=1e-5)
    mask = np.arange(50) < 30
    cm = np.asarray(interpret.gradient_correlation(g, mask=mask))
    assert np.allclose(cm, np.corrcoef(g[:30].T), atol=1e-5)


# --------------------------------------------------------------------------- suggestions
def test_convex_hull_membership():
    tri = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    sub = np.array([[0.6, 0.4, 0.0], [0.4, 0.6, 0.0], [0.5, 0.3, 0.2]])
    inside = interpret.in_convex_hull([[0.5, 0.45, 0.05], [0.5, 0.5, 0.0], [0.34, 0.33, 0.33]], sub)
    assert list(inside) == [True, True, False]
    assert interpret.in_convex_hull([[0.2, 0.3, 0.5]], tri).all()


def test_suggest_directions_linear_model_exact():
    k = 4
    m = linear_model(k)
    w = np.array([1.0, 3.0, -2.0, 0.5])
    P = {"w": jnp.stack([jnp.asarray(w), jnp.asarray(w) + 0.1]), "c": jnp.zeros(2)}
    x = np.array([[0.4, 0.3, 0.25, 0.05]], np.float32)
    hull = np.random.default_rng(0).dirichlet(np.ones(k) * 5, 300)
    res = interpret.suggest_directions(m, P, {"composition": x, "mask": np.ones(1, bool)},
                                       ["A", "B", "C", "D"], hull=hull, step=0.01,
                                       within_hull=False)
    top = res[0]
    assert (top["add"], top["remove"]) == ("B", "C")  # largest w_a - w_h with x_h >= step
    assert np.isclose(top["slope"], 0.01 * (3.0 - -2.0), atol=1e-6)
    assert top["agreement"] == 1.0 and top["std"] < 1e-6
    assert np.allclose(top["composition"], x[0] + 0.01 * np.array([0, 1, -1, 0]))
    assert all(r["outside_hull"] in (True, False) for r in res)
    slopes = [r["slope"] for r in res]
    assert slopes == sorted(slopes, reverse=True)
    # "others": slope = step * (w_a - x·w) / (1 - x_a)
    oth = {r["add"]: r["slope"] for r in res if r["remove"] == "others"}
    xv = x[0].astype(float)
    assert np.isclose(oth["A"], 0.01 * (w[0] - xv @ w) / (1 - xv[0]), atol=1e-6)
    # within the hull (default) the ranking keeps the in-hull steps, the rest listed apart
    inside = interpret.suggest_directions(m, P, {"composition": x}, ["A", "B", "C", "D"],
                                          hull=hull)
    key = lambda rows: [(r["add"], r["remove"]) for r in rows]  # noqa: E731
    assert key(r for r in res if not r["outside_hull"]) == key(inside.ranked)
    assert key(r for r in res if r["outside_hull"]) == key(inside.outside)
    # a composition far outside the training set: every step is flagged, none ranked
    far = interpret.suggest_directions(m, P, {"composition": np.array([[0.0, 0.0, 0.02, 0.98]],
                                                                        np.float32)},
                                       ["A", "B", "C", "D"], hull=hull, top=3)
    assert len(far) == 0 and len(far.outside) == 3 and all(r["outside_hull"] for r in far.outside)
    # single (unstacked) params
    one = interpret.suggest_directions(m, {"w": jnp.asarray(w), "c": jnp.zeros(())},
                                       {"composition": x}, ["A", "B", "C", "D"], stacked=False,
                                       within_hull=False)
    assert (one[0]["add"], one[0]["remove"]) == ("B", "C")


# --------------------------------------------------------------------------- graph models
def test_graph_model_position_gradient_is_minus_forces():
    from jaxmat import data, graph, potential
    from jaxmat.models import SchNetConfig, schnet

    energy = schnet(SchNetConfig(n_features=16, n_interactions=1, n_rbf=8, cutoff=4.0))
    pot = potential.potential(energy)
    atoms = data.load_ammonia()[:2]
    b = graph.to_device(graph.batch([graph.atoms_to_record(a, 4.0) for a in atoms]))
    p = energy.init(jax.random.key(0), b)
    g = np.asarray(jax.jit(lambda q: interpret.input_gradients(
        energy, q, b, ("nodes", "positions"), output="energy"))(p))
    forces = np.asarray(jax.jit(pot.apply)(p, b)["forces"])
    real = np.asarray(b.nodes["mask"])
    assert np.allclose(g[real], -forces[real], atol=1e-4)


# --------------------------------------------------------------------------- recovery
def test_trained_model_recovers_planted_linear_relationship():
    """P = w·x + noise on a 5-element simplex; a small trained net's simplex gradient
    must point along the planted w (projected), and suggest its best direction."""
    rng = np.random.default_rng(7)
    k, n = 5, 512
    w = np.array([2.0, -1.0, 0.5, 3.0, -2.5])
    x = rng.dirichlet(np.ones(k), n).astype(np.float32)
    y = (x @ w + 0.02 * rng.normal(size=n)).astype(np.float32)
    from flax import nnx

    from jaxmat.core.protocol import from_nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(k, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, b):
            return {"P": self.l2(jax.nn.elu(self.l1(b["composition"])))[:, 0]}

    model = from_nnx(MLP)
    p = model.init(jax.random.key(0), None)
    res = train.fit(model, p, ArrayLoader({"composition": x, "P": y}, 64), None,
                    train.target_loss("P"), train.FitConfig(epochs=60, lr=1e-2, progress=False))
    b = {"composition": x[:64], "mask": np.ones(64, bool)}
    g = np.asarray(interpret.tangent(interpret.input_gradients(model, res.params, b)))
    cos = np.asarray(interpret.cosine_similarity(g, np.asarray(interpret.tangent(w))[None]))
    assert np.median(cos) > 0.97
    top = interpret.suggest_directions(model, res.params, {"composition": np.full((1, k), 0.2,
                                                                                  np.float32)},
                                       list("ABCDE"), stacked=False, within_hull=False)[0]
    assert (top["add"], top["remove"]) == ("D", "E")


# --------------------------------------------------------------------------- plots
def test_plots_draw_the_given_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    els = ["A", "B", "C", "D"]
    x = np.array([[0.5, 0.2, 0.3, 0.0], [0.1, 0.0, 0.0, 0.9], [0.2, 0.3, 0.1, 0.4]])
    v = np.array([1.0, -2.0, 0.5])
    ax = interpret.plot_composition_map(x, v, els, ("A", "B"))
    off = ax.collections[0].get_offsets()
    assert np.allclose(off, 100 * x[:, :2])
    ax = interpret.plot_composition_map(x, v, els, ("B", "C", "D"))
    pts = ax.collections[0].get_offsets()  # ternary: (f_C + f_D / 2, √3/2 f_D) of renormalised B, C, D
    f = x[:, 1:] / x[:, 1:].sum(1, keepdims=True)
    assert np.allclose(pts, np.stack([f[:, 1] + 0.5 * f[:, 2], np.sqrt(3) / 2 * f[:, 2]], 1))
    with pytest.raises(ValueError, match="2 \\(pseudo-binary\\) or 3"):
        interpret.plot_composition_map(x, v, els, ("A",))
    nu = np.linspace(100, 900, 50)
    ax = interpret.plot_spectrum_saliency(nu, np.sin(nu), 0.1 * np.ones(50), np.cos(nu))
    assert np.allclose(ax.lines[0].get_ydata(), np.sin(nu)) and "cm⁻¹" in ax.get_xlabel()
    m = np.corrcoef(np.random.default_rng(0).normal(size=(4, 20)))
    ax = interpret.plot_correlation(m, els)
    assert np.allclose(ax.images[0].get_array(), m)
    with pytest.raises(ValueError, match="does not match"):
        interpret.plot_correlation(m, els[:3])
    plt.close("all")


# --------------------------------------------------------------------------- boundary
SQUARE = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.9, 0.0, 0.1], [0.8, 0.1, 0.1]])  # B, C ≤ 10 %


def test_boundary_report_interior_vs_hull_vertex():
    """A sample in the middle of the training square can move 5 at.% along every step and
    keeps all 9 steps of 1 at.% inside; a vertex keeps 3 of 9 and gets the warning."""
    mid = interpret.boundary_report([0.9, 0.05, 0.05], SQUARE, "ABC", sample="mid")
    assert mid.inside and mid.distance == pytest.approx(0.0, abs=1e-6)
    assert mid.n_steps == 9 and mid.n_inside == 9 and mid.warning is None
    assert mid.depth == pytest.approx(5.0, abs=1e-4)
    assert mid.room[("B", "A")] == pytest.approx(5.0, abs=1e-4)
    assert mid.room[("A", "B")] == pytest.approx(5.0, abs=1e-4)  # B can fall to 0
    corner = interpret.boundary_report([0.8, 0.1, 0.1], SQUARE, "ABC", sample="corner")
    assert corner.inside and corner.depth == pytest.approx(0.0, abs=1e-6)
    assert corner.n_inside == 3 and corner.fraction_inside == pytest.approx(1 / 3)
    assert corner.warning is not None and "corner" in corner.warning
    assert "3 of 9" in corner.warning and "boundary" in corner.warning
    assert 2 / 3 < interpret.BOUNDARY_MIN_INSIDE < 1  # warns on the hull, not in the interior
    # on an edge of the square (B at its maximum): 6 of 9 steps stay inside
    edge = interpret.boundary_report([0.85, 0.1, 0.05], SQUARE, "ABC")
    assert edge.n_inside == 6 and edge.depth == pytest.approx(0.0, abs=1e-6)
    assert edge.room[("C", "A")] == pytest.approx(5.0, abs=1e-4)
    assert edge.warning is not None  # on a facet: the default (chosen on validation) warns
    assert interpret.boundary_report([0.85, 0.1, 0.05], SQUARE, "ABC", min_inside=0.6).warning is None
    # outside the square: L1 distance to its nearest point (0.8, 0.1, 0.1) is 20 at.%
    out = interpret.boundary_report([0.7, 0.2, 0.1], SQUARE, "ABC")
    assert not out.inside and out.distance == pytest.approx(20.0, abs=1e-4)
    assert out.depth == 0.0 and "outside" in out.warning
    assert interpret.hull_distance([0.9, 0.05, 0.05], SQUARE) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="hull points must be"):
        interpret.boundary_report([0.9, 0.05, 0.05], SQUARE[:, :2], "ABC")


def test_directions_carry_the_boundary_report():
    m = linear_model(3)
    P = {"w": jnp.asarray([[0.0, 1.0, -1.0], [0.0, 1.1, -1.0]]), "c": jnp.zeros(2)}
    corner = {"composition": np.array([[0.8, 0.1, 0.1]], np.float32), "sample": "s7"}
    d = interpret.suggest_directions(m, P, corner, "ABC", hull=SQUARE)
    assert d.boundary is not None and d.boundary.n_inside == len(d.ranked) == 3
    assert d.rank_by == "fixed" and "WARNING: s7 sits on the boundary" in d.table()
    mid = interpret.suggest_directions(m, P, {"composition": np.array([[0.9, 0.05, 0.05]])}, "ABC",
                                       hull=SQUARE)
    assert mid.boundary.warning is None and "WARNING" not in mid.table()
    assert (mid[0]["add"], mid[0]["remove"]) == ("B", "C")
    assert mid[0]["outside_hull"] is False and " in" in mid.table().splitlines()[2]
