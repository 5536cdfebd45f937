"""Data-parallel training (jaxmat.core.parallel) on 4 XLA host devices equals one device:
loss and gradients of one step; the README example (a few epochs of train.fit, a committee
on a 2 members x 2 data mesh) against itself on one device; two hosts (slow)."""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxmat import ensemble, graph, train
from jaxmat.core import parallel
from conftest import README, TESTS, random_molecules


_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, numpy as np
    from jaxmat import engine, graph, potential, train
    from jaxmat.core import parallel
    from jaxmat.models import SchNetConfig, schnet
    from conftest import random_molecules
    assert len(jax.devices()) == 4, jax.devices()
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)]).tolist()
    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=4.0)), stress=False)
    loss = train.energy_force_loss(1.0, 10.0)
    out = {}

    # one step: molecules of 2..9 atoms, so the devices hold different numbers of atoms
    recs = random_molecules([3, 7, 4, 9, 5, 2, 6, 8], 4.0, seed=1)
    p = model.init(jax.random.key(0), graph.batch(recs[:2]))
    key = jax.random.key(3)
    (v1, _), g1 = jax.jit(lambda p, b: engine.loss_and_grads(model, loss, p, b, key))(
        p, graph.batch(recs))
    gb = next(iter(parallel.Shards(graph.GraphLoader(recs, 8, shuffle=False), 4)))
    dp = parallel.DataParallel(parallel.make_mesh(4))
    step = jax.jit(lambda p, b: parallel.loss_and_grads(model, loss, p, b, key))
    compiled = step.lower(p, dp.shared(gb)).compile()
    (v4, _), g4 = compiled(p, dp.shared(gb))
    per_device = jax.jit(jax.vmap(lambda b: loss(model.apply(p, b), b)[0]))(gb)
    naive = np.mean(per_device)  # the mean of per-device losses, for contrast
    hlo = compiled.as_text()
    out["step"] = {"loss1": float(v1), "loss4": float(v4), "naive": float(naive),
                   "grads1": flat(g1), "grads4": flat(g4),
                   "graphs_per_device": np.asarray(gb.globals["mask"]).sum(1).tolist(),
                   "shards": len(dp.shared(gb).nodes["positions"].sharding.device_set),
                   "all_gathers": len(re.findall(r"all-gather\\(", hlo))}

    # the README example (train.fit and a committee on a 2 members x 2 data mesh) on 4
    # devices and, as the reference, on one (data_parallel=1, no mesh)
    def shards(x):
        return len(jax.tree_util.tree_leaves(x)[0].sharding.device_set)

    for name, code in (("4", sys.argv[1]), ("1", sys.argv[2])):
        scope = {}
        exec(compile(code, "README.md", "exec"), scope)
        res, com = scope["result"], scope["fitted"]
        leaf = jax.tree_util.tree_leaves(com.last_params)[0]
        out[name] = {"params": flat(res.params), "last": flat(res.last_params),
                     "start": flat(scope["params"]), "shards": shards(res.last_params),
                     "val_loss": [h["val_loss"] for h in res.history],
                     "train_loss": [h["train_loss"] for h in res.history],
                     "committee": flat(com.last_params), "committee_shards": shards(leaf),
                     "member_shards": len({str(s.index) for s in leaf.addressable_shards}),
                     "committee_val_loss": [h["val_loss"] for h in com.history]}
    json.dump(out, sys.stdout)
""")


def _readme_block() -> str:
    text = open(README, encoding="utf-8").read()
    section = text.split("## Several devices", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


def _replace(code: str, pairs: list[tuple[str, str]]) -> str:
    for long, short in pairs:
        assert long in code, f"README example no longer has {long!r}"
        code = code.replace(long, short)
    return code


def _readme_code() -> str:
    """The README example, smaller: 48 structures (2 steps per epoch), 2 epochs, SchNet 8x1."""
    return _replace(_readme_block(), [
        ("epochs=100", "epochs=2"), ("load_ammonia()[:96]", "load_ammonia()[:48]"),
        ("SchNetConfig(cutoff=5.0)",
         "SchNetConfig(n_features=8, n_interactions=1, n_rbf=8, cutoff=5.0)")])


@pytest.fixture(scope="module")
def four():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=TESTS)
    code = _readme_code()
    one = _replace(code, [("data_parallel=n", "data_parallel=1"), ("mesh=mesh", "mesh=None")])
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, code, one],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_step_loss_and_gradients_equal_one_device(four):
    s = four["step"]
    assert s["shards"] == 4 and s["graphs_per_device"] == [2, 2, 2, 2]
    assert s["all_gathers"] == 0  # every device works on its own sub-batch
    np.testing.assert_allclose(s["loss4"], s["loss1"], rtol=1e-5)
    np.testing.assert_allclose(s["grads4"], s["grads1"], rtol=1e-4, atol=1e-6)
    assert max(np.abs(s["grads1"])) > 1e-2
    # the mean of per-device losses is not the global loss: masks weigh atoms, not devices
    assert abs(s["naive"] - s["loss1"]) > 1e-3 * abs(s["loss1"])


def test_readme_fit_on_four_devices_equals_one(four):
    one, par = four["1"], four["4"]
    assert one["shards"] == 1 and par["shards"] == 4
    for k in ("params", "last"):
        np.testing.assert_allclose(par[k], one[k], rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(par["val_loss"], one["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(par["train_loss"], one["train_loss"], rtol=1e-4)
    assert np.abs(np.subtract(one["last"], one["start"])).max() > 1e-4  # it trained


def test_readme_committee_on_members_by_data_mesh_equals_unsharded(four):
    one, par = four["1"], four["4"]
    assert one["committee_shards"] == 1
    assert par["committee_shards"] == 4 and par["member_shards"] == 2
    np.testing.assert_allclose(par["committee"], one["committee"], rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(par["committee_val_loss"], one["committee_val_loss"], rtol=1e-4)


_HOSTS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2,
                               process_id=int(sys.argv[1]))
    import numpy as np
    from jaxmat.core import parallel
    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    flat = lambda t: np.concatenate([np.ravel(x) for x in parallel.gather(
        jax.tree_util.tree_leaves(t))]).tolist()
    scope = {}
    exec(compile(sys.argv[4], "README.md", "exec"), scope)
    with open(sys.argv[3], "w") as f:  # (gloo writes to stdout)
        json.dump({"fit": flat(scope["result"].last_params),
                   "committee": flat(scope["fitted"].last_params)}, f)
""")


@pytest.mark.slow
def test_two_hosts_equal_one(four, tmp_path):
    """2 processes x 2 CPU devices (jax.distributed, gloo) give the 4-device numbers."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=TESTS)
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = str(sock.getsockname()[1])
    paths = [str(tmp_path / f"host{k}.json") for k in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _HOSTS_SCRIPT, str(k), port, paths[k],
                               _readme_code()],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for k in range(2)]
    errs = [proc.communicate(timeout=900)[1] for proc in procs]
    for proc, err in zip(procs, errs):
        assert proc.returncode == 0, err[-3000:]
    for path in paths:
        with open(path) as f:
            got = json.load(f)
        np.testing.assert_allclose(got["fit"], four["4"]["last"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["committee"], four["4"]["committee"], rtol=1e-5,
                                   atol=1e-7)


def test_errors_name_the_problem():
    recs = random_molecules([4] * 12, 4.0)
    with pytest.raises(ValueError, match="batch_size 6 does not divide over 4 devices"):
        parallel.Shards(graph.GraphLoader(recs, 6), 4)
    with pytest.raises(ValueError, match="batch_size 6 does not divide over 4 devices"):
        parallel.CommitteeShards(ensemble.CommitteeLoader(recs, 2, 6), 4)
    n = len(jax.devices())
    with pytest.raises(ValueError, match=f"needs {n + 1} devices, found {n}"):
        parallel.for_config(train.FitConfig(data_parallel=n + 1))
    with pytest.raises(ValueError, match="integer >= 1"):
        parallel.for_config(train.FitConfig(data_parallel=0))
    members_only = Mesh(np.asarray(jax.devices()[:1]), ("members",))
    with pytest.raises(ValueError, match=r"needs the mesh axes \('members', 'data'\)"):
        parallel.for_config(ensemble.CommitteeConfig(data_parallel=2, mesh=members_only))
    with pytest.raises(ValueError, match="data_parallel=2 but the mesh has 1 devices"):
        parallel.for_config(ensemble.CommitteeConfig(data_parallel=2, mesh=parallel.make_mesh(1)))
    assert parallel.for_config(train.FitConfig()) is None
    with pytest.raises(ValueError, match=r"cannot shard a leaf of shape \(3,\)"):
        parallel.shard({"x": np.zeros(3)}, parallel.make_mesh(1), ("members", "data"))


def test_blank_sub_batches_fill_the_last_step():
    recs = random_molecules([4] * 10, 4.0)
    loader = parallel.Shards(graph.GraphLoader(recs, 4, shuffle=False), 2)
    steps = list(loader.epoch(0))
    assert len(loader) == len(steps) == 3
    masks = [np.asarray(b.globals["mask"]).sum(1).tolist() for b in steps]
    assert masks == [[2, 2], [2, 2], [2, 0]]  # 10 graphs: the last device of step 3 is blank
    assert not np.asarray(steps[-1].nodes["mask"][1]).any()
    # the merged global batch is a valid batch of its graphs: same edge vectors, graph ids
    # offset by the per-device graph count (2 real + 1 padding graph per device)
    merged = parallel.merge(steps[0])
    ref = graph.batch(recs[:4])
    real = np.asarray(merged.edges["mask"])
    np.testing.assert_allclose(np.asarray(graph.edge_vectors(merged))[real],
                               np.asarray(graph.edge_vectors(ref))[ref.edges["mask"]], atol=1e-6)
    node_graph = np.asarray(merged.nodes["graph"])[np.asarray(merged.nodes["mask"])]
    np.testing.assert_array_equal(node_graph, np.repeat([0, 1, 3, 4], 4))


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_merged_sub_batches_give_the_batch_loss(layout):
    """The loss of merged per-device sub-batches (molecules of different sizes) is the loss
    of one batch of the same graphs, in both layouts (no devices needed)."""
    from jaxmat import potential
    from jaxmat.models import SchNetConfig, schnet

    recs = random_molecules([3, 6, 4, 5], 4.0, seed=4)
    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=4.0)), stress=False)
    loss = train.energy_force_loss(1.0, 10.0)
    gb = next(iter(parallel.Shards(graph.GraphLoader(recs, 4, shuffle=False, layout=layout), 2)))
    one = graph.batch(recs, layout=layout)
    p = model.init(jax.random.key(0), one)
    split = jax.jit(lambda p, b: loss(parallel.apply(model.apply, p, b), parallel.merge(b))[0])
    whole = jax.jit(lambda p, b: loss(model.apply(p, b), b)[0])
    np.testing.assert_allclose(split(p, gb), whole(p, one), rtol=1e-5)
