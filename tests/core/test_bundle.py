"""Bundles: a saved model comes back with the same energies and forces (references
included), committees keep their member axis, and edited or incomplete bundles raise
errors that name the file and the problem."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import jaxmat
from jaxmat import bundle, data, ensemble, graph, potential
from jaxmat.ase import JaxmatCalculator
from jaxmat.models import (ALIGNNConfig, PaiNNConfig, SchNetConfig, alignn, graph_target, painn,
                           schnet)
from jaxmat.models.coordinate import CoordinateMLPConfig, coordinate_mlp
from jaxmat.models.mpnn import MPNNConfig, mpnn
from jaxmat.models.spectral import painn_site_spectral, schnet_site_spectral
from jaxmat.core.protocol import GraphSpec, from_nnx

CUTOFF = 3.0


@pytest.fixture(scope="module")
def records():
    return graph.records_from_atoms(data.load_ammonia()[:6], cutoff=CUTOFF)


@pytest.fixture(scope="module")
def batch(records):
    return graph.batch(records)


@pytest.fixture(scope="module")
def refs(records):
    """References fitted on absolute energies (eV) of NH3, H2 and N2-like compositions: the
    ammonia labels are relative, so they are put on an absolute scale first."""
    numbers = [r.numbers for r in records] + [np.array([1, 1]), np.array([7, 7])]
    absolute = {1: -13.6, 7: -1485.0}
    energies = [sum(absolute[int(z)] for z in zs) for zs in numbers]
    energies = np.add(energies, [r.targets["energy"] for r in records] + [0.1, -0.2])
    refs, scale = potential.fit_energy_stats(numbers, energies)
    assert abs(refs[7]) > 1000 and abs(refs[1]) > 10
    return refs, scale


def _pot(kind, refs):
    if kind == "schnet":
        cfg = SchNetConfig(n_features=8, n_interactions=1, n_rbf=4, cutoff=CUTOFF)
        return potential.potential(schnet(cfg.with_stats(*refs)), stress=False)
    cfg = PaiNNConfig(n_features=8, n_interactions=1, n_rbf=4, cutoff=CUTOFF)
    return potential.potential(painn(cfg.with_stats(*refs)), stress=False)


@pytest.fixture(scope="module")
def saved(refs, batch, tmp_path_factory):
    """One saved SchNet potential: (model, params, path)."""
    model = _pot("schnet", refs)
    params = model.init(jax.random.key(0), batch)
    path = bundle.save(tmp_path_factory.mktemp("b") / "schnet", model, params,
                       metadata={"note": "test"})
    return model, params, path


def _copy(path, dst):
    os.makedirs(dst)
    for f in os.listdir(path):
        with open(os.path.join(path, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())
    return str(dst)


def _edit(path, dst, fn):
    """Copy of the bundle at ``path`` with ``fn(doc)`` applied to its bundle.json."""
    dst = _copy(path, dst)
    file = os.path.join(dst, "bundle.json")
    with open(file) as f:
        doc = json.load(f)
    fn(doc)
    with open(file, "w") as f:
        json.dump(doc, f)
    return dst


@pytest.mark.parametrize("kind", ["schnet", "painn"])
def test_round_trip_keeps_energies_forces_and_references(kind, refs, batch, records, tmp_path):
    model = _pot(kind, refs)
    params = model.init(jax.random.key(1), batch)
    path = bundle.save(tmp_path / kind, model, params)
    b = jaxmat.load(path)
    want = jax.jit(model.apply)(params, batch)
    got = jax.jit(b.model.apply)(b.params, batch)
    np.testing.assert_array_equal(got["energy"], want["energy"])
    np.testing.assert_array_equal(got["forces"], want["forces"])
    assert b.n_members is None and b.graph == model.graph and b.graph.cutoff == CUTOFF
    assert b.config == model.config["model"].config
    assert b.references == {"H": refs[0][1], "N": refs[0][7]} and b.scale == refs[1]
    with open(os.path.join(path, "bundle.json")) as f:
        doc = json.load(f)
    assert doc["references"] == b.references and doc["units"]["energy"] == "eV"
    assert doc["model"]["builder"] == "potential" and doc["model"]["model"]["builder"] == kind
    # the old bug: the same params without the references are off by hundreds of eV
    bare = dataclasses.replace(b.config, atom_refs=None)
    lost = (schnet if kind == "schnet" else painn)(bare)
    e_lost = jax.jit(potential.potential(lost, stress=False).apply)(params, batch)["energy"]
    n = len(records)
    assert np.min(np.abs(np.asarray(e_lost - want["energy"])[:n])) > 100.0
    np.testing.assert_allclose(  # forces agree: the references are a constant per element
        jax.jit(potential.potential(lost, stress=False).apply)(params, batch)["forces"],
        want["forces"], atol=1e-4)


def test_committee_bundle(refs, batch, tmp_path):
    model = _pot("schnet", refs)
    com = ensemble.init(model, jax.random.key(2), batch, 3)
    b = jaxmat.load(bundle.save(tmp_path / "com", model, com))
    assert b.n_members == 3
    with open(os.path.join(b.path, "bundle.json")) as f:
        assert json.load(f)["params"]["n_members"] == 3
    want = jax.jit(lambda p, x: ensemble.apply(model, p, x))(com, batch)
    got = jax.jit(lambda p, x: ensemble.apply(b.model, p, x))(b.params, batch)
    np.testing.assert_array_equal(got["energy"], want["energy"])
    np.testing.assert_array_equal(got["forces"], want["forces"])
    # the calculator from the bundle equals the in-memory one, committee spread included
    atoms = data.load_ammonia()[3]
    mem = JaxmatCalculator(model, com)
    for calc in (JaxmatCalculator.from_bundle(b), JaxmatCalculator.from_bundle(b.path)):
        np.testing.assert_array_equal(calc.get_potential_energy(atoms),
                                      mem.get_potential_energy(atoms))
        np.testing.assert_array_equal(calc.get_forces(atoms), mem.get_forces(atoms))
        assert calc.results["energy_std"] == mem.results["energy_std"] > 0
        assert calc.cutoff == CUTOFF


def test_wrappers_and_tuple_configs_round_trip(refs, batch, tmp_path):
    inner = _pot("schnet", refs).config["model"]
    gap = graph_target(inner, key="gap", per_atom=False)
    p = gap.init(jax.random.key(0), batch)
    b = jaxmat.load(bundle.save(tmp_path / "gap", gap, p))
    assert b.model.config["key"] == "gap" and b.model.config["per_atom"] is False
    np.testing.assert_array_equal(b.model.apply(b.params, batch)["gap"],
                                  gap.apply(p, batch)["gap"])
    site = schnet_site_spectral(SchNetConfig(n_features=8, n_interactions=1, n_rbf=4,
                                             max_z=10), n_out=12, hidden=8)
    ps = site.init(jax.random.key(0), None)
    s = jaxmat.load(bundle.save(tmp_path / "site", site, ps))
    assert s.config == site.config and s.graph == site.graph
    assert s.references == {} and s.scale == 1.0
    jax.tree_util.tree_map(np.testing.assert_array_equal, s.params, ps)


@pytest.mark.parametrize("make", [
    lambda: alignn(ALIGNNConfig(n_alignn_layers=1, n_gcn_layers=1, embedding=8, hidden=8,
                                n_bond_rbf=4, n_angle_rbf=4, scale=2.0, shift=-1.0)),
    lambda: mpnn(MPNNConfig(n_out=10, n_features=8, n_rbf=4, edge_hidden=8, readout_hidden=8)),
    lambda: coordinate_mlp(CoordinateMLPConfig(features=(4,), shift=-5.0)),
    lambda: painn_site_spectral(PaiNNConfig(n_features=8, n_interactions=1, n_rbf=4),
                                n_out=10, hidden=8),
], ids=["alignn", "mpnn", "coordinate_mlp", "painn_site_spectral"])
def test_every_builtin_builder_round_trips(make, tmp_path):
    model = make()
    params = model.init(jax.random.key(0), None)
    b = jaxmat.load(bundle.save(tmp_path / "m", model, params))
    assert b.model.name == model.name and b.graph == model.graph
    assert b.model.config == model.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, b.params, params)
    cfg = model.config if not isinstance(model.config, tuple) else model.config[0]
    assert b.scale == getattr(cfg, "scale", None) and b.shift == getattr(cfg, "shift", None)


@dataclasses.dataclass(frozen=True)
class PairConfig:
    width: float = 1.0
    n: int = 4


class Pair(nnx.Module):
    """A user's own pair model with its own config."""

    def __init__(self, cfg: PairConfig, rngs: nnx.Rngs):
        self.width = cfg.width
        self.w = nnx.Linear(1, cfg.n, rngs=rngs)

    def __call__(self, batch):
        d = graph.safe_norm(graph.edge_vectors(batch))[:, None] / self.width
        e = self.w(d).sum(-1) * batch.edges["mask"]
        return {"energy": jax.ops.segment_sum(e, batch.nodes["graph"][batch.senders],
                                              graph.n_graphs(batch))}


def _pair(cfg: PairConfig):
    return from_nnx(lambda rngs: Pair(cfg, rngs), name="Pair", graph=GraphSpec(2.5), config=cfg)


def test_user_models_need_a_registered_builder(batch, tmp_path):
    model = _pair(PairConfig())
    p = model.init(jax.random.key(0), batch)
    with pytest.raises(ValueError, match=r"no bundle builder .*PairConfig.*register"):
        bundle.save(tmp_path / "a", model, p)
    with pytest.raises(ValueError, match="has no config.*register"):
        bundle.save(tmp_path / "a", from_nnx(lambda r: Pair(PairConfig(), r), name="X"), p)
    assert not os.path.exists(tmp_path / "a")
    bundle.register("pair", _pair, PairConfig)
    try:
        b = jaxmat.load(bundle.save(tmp_path / "a", model, p))
        assert b.config == PairConfig() and b.graph.cutoff == 2.5
        assert b.references is None and b.scale is None
        np.testing.assert_array_equal(b.model.apply(b.params, batch)["energy"],
                                      model.apply(p, batch)["energy"])
        with pytest.raises(ValueError, match="builder 'pair' is already registered"):
            bundle.register("pair", _pair, PairConfig)
        with pytest.raises(ValueError, match=r"config type of 'pair2' \('pair'\) is already"):
            bundle.register("pair2", _pair, PairConfig)
    finally:
        del bundle._REGISTRY["pair"]
    with pytest.raises(ValueError, match="unknown builder 'pair'"):
        jaxmat.load(tmp_path / "a")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["model"]["model"]["config"].update(n_features=16),
     r"params.npz: array 'features/embedding/embedding' has shape \(119, 8\) but the model "
     r"built from the config expects \(119, 16\)"),
    (lambda d: d["model"]["model"]["config"]["atom_refs"].append(1.0),
     r"bundle.json: model.model.config: atom_refs has 120 entries, more than the 119 elements"),
    (lambda d: d["model"]["model"]["config"].update(atom_refs=None),
     r"bundle.json: references = .* disagrees with the model config"),
    (lambda d: d["references"].update(H=0.0),
     r"bundle.json: references = .* disagrees with the model config"),
    (lambda d: d["model"]["model"]["config"].update(n_feature=8),
     r"bundle.json: model.model.config \(SchNetConfig\): unknown keys \['n_feature'\]"),
    (lambda d: d["model"]["model"]["config"].update(n_features="8"),
     r"bundle.json: model.model.config.n_features must be int, got '8' \(str\)"),
    (lambda d: d["model"]["options"].update(stress="no"),
     r"model.options.stress must be bool"),
    (lambda d: d["model"]["model"].update(builder="schnett"),
     r"bundle.json: model.model: unknown builder 'schnett'"),
    (lambda d: d["graph"].update(cutoff=5.0),
     r"bundle.json: graph .* differs from the graph of the model"),
    (lambda d: d.update(format_version=2),
     r"bundle.json: bundle format version 2 is newer than this jaxmat reads"),
    (lambda d: d.update(format_version=0), r"bundle format version 0 is older"),
    (lambda d: d.pop("units"), r"missing keys \['units'\]"),
    (lambda d: d["params"].update(n_members=2), r"n_members is 2 but .*a single model"),
])
def test_tampered_json_raises_a_clear_error(saved, tmp_path, edit, match):
    _, _, path = saved
    with pytest.raises(ValueError, match=match):
        jaxmat.load(_edit(path, tmp_path / "t", edit))


def test_bundles_without_module_names_load_in_a_fresh_process(saved, tmp_path):
    """Bundles written before builders recorded their module load without importing
    jaxmat.models first (the built-in builders are found)."""
    import subprocess
    import sys

    def strip(d):
        d.pop("module", None)
        for v in d.values():
            if isinstance(v, dict):
                strip(v)

    _, _, path = saved
    old = _edit(path, tmp_path / "old", lambda d: strip(d["model"]))
    assert '"module"' not in open(os.path.join(old, "bundle.json")).read()
    code = ("import sys, jaxmat; b = jaxmat.load(sys.argv[1]); "
            "print(b.model.name, type(b.config).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(old)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["SchNet", "SchNetConfig"]


def test_broken_files_raise(saved, tmp_path):
    model, params, path = saved
    with pytest.raises(FileNotFoundError, match="no bundle directory"):
        jaxmat.load(tmp_path / "none")
    pkl = _copy(path, tmp_path / "pkl")
    open(os.path.join(pkl, "model.pkl"), "wb").close()
    with pytest.raises(ValueError, match=r"unexpected files \['model.pkl'\]"):
        jaxmat.load(pkl)
    nonpz = _copy(path, tmp_path / "nonpz")
    os.remove(os.path.join(nonpz, "params.npz"))
    with pytest.raises(FileNotFoundError, match="params.npz not found"):
        jaxmat.load(nonpz)
    nojson = _copy(path, tmp_path / "nojson")
    os.remove(os.path.join(nojson, "bundle.json"))
    with pytest.raises(FileNotFoundError, match="bundle.json not found"):
        jaxmat.load(nojson)
    bad = _copy(path, tmp_path / "badjson")
    with open(os.path.join(bad, "bundle.json"), "a") as f:
        f.write("}")
    with pytest.raises(ValueError, match="bundle.json is not valid JSON"):
        jaxmat.load(bad)
    # arrays missing from (or added to) params.npz, with the JSON index edited to match
    for name, change in (("missing", lambda a: a.pop("features/embedding/embedding")),
                         ("extra", lambda a: a.update(extra=np.zeros(2, np.float32)))):
        d = _copy(path, tmp_path / name)
        with np.load(os.path.join(d, "params.npz")) as z:
            arrays = dict(z)
        change(arrays)
        np.savez(os.path.join(d, "params.npz"), **arrays)
        with pytest.raises(ValueError, match="does not match the array list"):
            jaxmat.load(d)

        def reindex(doc, arrays=arrays):
            doc["params"]["arrays"] = {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                                       for k, a in arrays.items()}
        d2 = _edit(d, tmp_path / (name + "2"), reindex)
        with pytest.raises(ValueError, match=r"params.npz: params arrays missing"):
            jaxmat.load(d2)


def test_save_never_loses_data(saved, batch, tmp_path):
    model, params, path = saved
    target = _copy(path, tmp_path / "bundle")
    before = {f: open(os.path.join(target, f), "rb").read() for f in os.listdir(target)}
    other = jax.tree_util.tree_map(lambda x: x + 1.0, params)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        bundle.save(target, model, other)
    assert {f: open(os.path.join(target, f), "rb").read() for f in os.listdir(target)} == before
    assert sorted(os.listdir(tmp_path)) == ["bundle"]  # no temporary directory left behind
    bundle.save(target, model, other, overwrite=True)
    np.testing.assert_array_equal(jaxmat.load(target).params["features"]["embedding"]["embedding"],
                                  other["features"]["embedding"]["embedding"])
    assert sorted(os.listdir(tmp_path)) == ["bundle"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a jaxmat bundle"):
        bundle.save(notes, model, params, overwrite=True)
    assert (notes / "a.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="metadata.x holds a"):
        bundle.save(tmp_path / "m", model, params, metadata={"x": object()})
    wrong = jax.tree_util.tree_map(lambda x: x[..., :1], params)
    with pytest.raises(ValueError, match="save: array .* has shape"):
        bundle.save(tmp_path / "w", model, wrong)
    assert sorted(os.listdir(tmp_path)) == ["bundle", "notes"]
