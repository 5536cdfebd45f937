"""The ``jaxmat`` command end to end, each call in a subprocess: the README's three commands
(train -> eval -> md) on a small extxyz with REF_energy/REF_forces keys, info, resume after
an interrupted train, bad configs, a committee, and the same numbers as the Python API."""
import csv
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import README

SCRIPT = os.path.join(os.path.dirname(sys.executable), "jaxmat")
CMD = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "jaxmat.cli.main"]
# the README's config with a tiny SchNet and 2 epochs
SMALL = ["--set", "fit.epochs=2", "--set", "fit.batch_size=4", "--set", "model.schnet.n_features=8",
         "--set", "model.schnet.n_interactions=1", "--set", "model.schnet.n_rbf=8",
         "--set", "data.split=[0.6, 0.2, 0.2]"]


def jaxmat(*args: str, cwd, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([*CMD, *args], cwd=cwd, capture_output=True, text=True, env=env,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"jaxmat {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def write_data(path, n: int = 24, seed: int = 0) -> None:
    """Rattled, strained 4-atom fcc Cu cells labelled by EMT under REF_* keys (no calculator)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(0.08, rng=rng)
        a.set_cell(a.cell * (1 + 0.02 * rng.standard_normal()), scale_atoms=True)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        b = a.copy()
        b.info["REF_energy"], b.arrays["REF_forces"] = e, f
        frames.append(b)
    write(path, frames, format="extxyz")


def readme_section() -> tuple[str, list[str]]:
    text = open(README, encoding="utf-8").read()
    sec = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    toml = re.findall(r"```toml\n(.*?)```", sec, flags=re.S)[0]
    bash = re.findall(r"```bash\n(.*?)```", sec, flags=re.S)[0]
    return toml, [ln.split("#")[0].split() for ln in bash.splitlines() if ln.strip()]


def tree_hash(d) -> str:
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(d)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The README's three commands in a fresh directory (short training, 20 MD steps)."""
    d = tmp_path_factory.mktemp("cli")
    write_data(d / "data.xyz")
    toml, commands = readme_section()
    (d / "train.toml").write_text(toml)
    assert [c[:2] for c in commands] == [["jaxmat", "train"], ["jaxmat", "eval"],
                                         ["jaxmat", "md"]]
    out = {}
    for c in commands:
        extra = {"train": SMALL, "eval": [], "md": ["--steps", "20", "--interval", "5"]}[c[1]]
        out[c[1]] = jaxmat(*c[1:], *extra, cwd=d)
    return d, out


def test_readme_commands_train_eval_md(run):
    d, out = run
    rd = d / "runs" / "cu"
    for f in ("config.toml", "split.json", "metrics.csv", "metrics.json", "parity.png",
              "learning_curve.png", "model/bundle.json", "model/params.npz"):
        assert (rd / f).exists(), f
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(rd / "tensorboard"))
    rows = list(csv.DictReader(open(rd / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"val_energy_mae_eV_per_atom", "val_forces_mae_eV_per_A",
            "train_forces_mae_eV_per_A"} <= set(rows[0])
    # one progress line per epoch at most (no bar redraws in a pipe), units in the names
    progress = [ln for ln in out["train"].stderr.splitlines() if "epoch" in ln]
    assert len(progress) <= 2 and "val_forces_mae_eV_per_A" in progress[-1]
    summary = json.load(open(rd / "metrics.json"))
    assert summary["n_structures"] == {"train": 14, "val": 5, "test": 5}
    assert summary["best_epoch"] in (1, 2) and summary["epochs_run"] == 2
    # validation errors of the best epoch equal the training log's
    best = rows[summary["best_epoch"] - 1]
    np.testing.assert_allclose(summary["val"]["forces_mae_eV_per_A"],
                               float(best["val_forces_mae_eV_per_A"]), rtol=1e-4)
    # eval on the whole file: 24 structures, the JSON it wrote, energies per atom = / 4
    ev = json.load(open(d / "errors.json"))
    assert ev["n_structures"] == 24 and ev["n_atoms"] == 96
    np.testing.assert_allclose(ev["energy_mae_eV"] / 4, ev["energy_mae_eV_per_atom"], rtol=1e-9)
    assert ev["forces_rmse_eV_per_A"] >= ev["forces_mae_eV_per_A"] > 0
    assert "calibration" not in ev
    # md: 20 steps at 1 fs, a frame and a log row every 5 steps
    from ase.io import read

    frames = read(d / "md.extxyz", ":")
    assert len(frames) == 5 and [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    log = list(csv.DictReader(open(d / "md.csv")))
    assert [float(r["time_fs"]) for r in log] == [0.0, 5.0, 10.0, 15.0, 20.0]
    etot = np.array([float(r["etot_eV"]) for r in log])
    assert np.all(np.isfinite(etot))


def test_info_shows_the_bundle(run):
    d, _ = run
    text = jaxmat("info", "runs/cu/model", cwd=d).stdout
    assert "SchNet" in text and "single model" in text and "cutoff=4.0" in text
    info = json.loads(jaxmat("info", "runs/cu/model", "--json", cwd=d).stdout)
    assert info["committee_members"] is None and info["graph"]["cutoff"] == 4.0
    assert info["config"]["n_features"] == 8 and set(info["references_eV"]) == {"Cu"}
    assert info["metadata"]["metrics"]["test"]["n_structures"] == 5


def test_cli_gives_the_python_api_numbers(run):
    """The README Quickstart calls with the run's resolved settings give the bundle's params
    and the CLI's test errors (same seed)."""
    import jax

    import jaxmat
    from jaxmat import data, graph, potential, train
    from jaxmat.cli.config import load
    from jaxmat.models import SchNetConfig, schnet

    d, _ = run
    cfg = load(str(d / "runs" / "cu" / "config.toml"))
    s = cfg.model.schnet
    atoms = data.read_structures(str(d / "data.xyz"), energy_key="REF_energy",
                                 forces_key="REF_forces")
    records = graph.records_from_atoms(atoms, cutoff=s.cutoff)
    tr, va, te = ([records[k] for k in idx]
                  for idx in data.split_indices(len(records), (0.6, 0.2, 0.2), seed=0))
    mcfg = SchNetConfig(n_features=8, n_interactions=1, n_rbf=8, cutoff=4.0)
    model = potential.potential(schnet(mcfg.with_stats(*potential.energy_stats(tr))), stress=False)
    loader = graph.GraphLoader(tr, batch_size=4, layout="auto", model=model)
    params = model.init(jax.random.key(0), next(iter(loader)))
    result = train.fit(model, params, loader,
                       graph.GraphLoader(va, 32, shuffle=False, layout="auto", model=model),
                       loss=train.energy_force_loss(energy=1.0, forces=10.0),
                       config=train.FitConfig(epochs=2, lr=3e-3, progress=False))
    saved = jaxmat.load(str(d / "runs" / "cu" / "model"))
    for a, b in zip(jax.tree_util.tree_leaves(saved.params),
                    jax.tree_util.tree_leaves(result.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    pred = jaxmat.predict(model, result.params, te)
    n = np.array([r.n_node for r in te])
    e_true = np.array([r.targets["energy"] for r in te])
    test = json.load(open(d / "runs" / "cu" / "metrics.json"))["test"]
    np.testing.assert_allclose(np.mean(np.abs(pred["energy"] - e_true) / n),
                               test["energy_mae_eV_per_atom"], rtol=1e-5)
    f_err = np.concatenate(pred["forces"]) - np.concatenate([r.node_targets["forces"] for r in te])
    np.testing.assert_allclose(np.mean(np.abs(f_err)), test["forces_mae_eV_per_A"], rtol=1e-5)


def test_resume_after_an_interrupted_train_gives_the_same_run(run, tmp_path):
    d, _ = run
    args = ["train", str(d / "train.toml"), *SMALL, "--set", f'output="{tmp_path / "r"}"']
    first = jaxmat(*args, "--max-epochs", "1", cwd=d)
    assert "rerun the same command to continue" in first.stderr
    assert not (tmp_path / "r" / "model").exists()
    jaxmat(*args, cwd=d)
    again = json.load(open(tmp_path / "r" / "metrics.json"))
    full = json.load(open(d / "runs" / "cu" / "metrics.json"))
    for split in ("val", "test"):
        for k, v in full[split].items():
            np.testing.assert_allclose(again[split][k], v, rtol=1e-5, err_msg=f"{split} {k}")
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_bad_configs_fail_clearly_and_touch_nothing(run):
    d, _ = run
    before = tree_hash(d / "runs")
    cases = [
        (["--set", "fit.epochz=3"], ["train.toml", "config.fit", "epochz", "unknown"]),
        (["--set", 'fit.epochs="two"'], ["train.toml", "config.fit.epochs", "must be int"]),
        (["--set", 'data.path="missing.xyz"', "--set", 'output="other"'],
         ["train.toml", "data.path", "missing.xyz"]),
        (["--set", 'data.energy_key="DFT_energy"', "--set", 'output="other"'],
         ["train.toml", "DFT_energy", "REF_energy"]),
        ([], ["finished run", "--overwrite"]),  # the finished run is not written over
    ]
    for extra, words in cases:
        p = jaxmat("train", "train.toml", *extra, cwd=d, check=False)
        assert p.returncode == 1, (extra, p.stderr)
        assert "Traceback" not in p.stderr
        for w in words:
            assert w in p.stderr, (extra, w, p.stderr)
    assert not (d / "other").exists()
    assert tree_hash(d / "runs") == before
    p = jaxmat("md", "runs/cu/model", "data.xyz", "--steps", "2", cwd=d, check=False)
    assert p.returncode == 1 and "md.extxyz exists" in p.stderr


@pytest.mark.slow
def test_committee_eval_calibration_and_md_sigma(run, tmp_path):
    d, _ = run
    out = tmp_path / "c"
    jaxmat("train", str(d / "train.toml"), *SMALL, "--set", "committee=2", "--set",
           "fit.epochs=1", "--set", f'output="{out}"', "--no-tensorboard", cwd=d)
    assert not (out / "tensorboard").exists()
    ev = json.loads(jaxmat("eval", str(out / "model"), "data.xyz", "--json", "-", cwd=d).stdout)
    cal = ev["calibration"]
    assert set(cal) == {"energy_eV", "forces_eV_per_A"}
    assert cal["forces_eV_per_A"]["n"] == 24 * 4 * 3 and cal["forces_eV_per_A"]["mean_sigma"] > 0
    assert 0 <= cal["energy_eV"]["coverage_95"] <= 1
    jaxmat("md", str(out / "model"), "data.xyz", "--steps", "4", "--interval", "2",
           "--ensemble", "nve", "--trajectory", str(tmp_path / "c.extxyz"),
           "--log", str(tmp_path / "c.csv"), cwd=d)
    log = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert len(log) == 3 and all(float(r["forces_std_max_eV_per_A"]) > 0 for r in log)


def test_import_a_mace_extract_and_refusals(tmp_path):
    """`jaxmat import` turns a committed mace-torch extract into a bundle that `jaxmat info`
    reads; `jaxmat md` refuses an element the model was not made for; a missing file and
    an existing output are refused in one line."""
    pytest.importorskip("cuequivariance_jax")
    src = os.path.join(os.path.dirname(__file__), "..", "models", "fixtures", "mace_torch",
                       "small.npz")
    p = jaxmat("import", src, "imported", cwd=tmp_path)
    assert "wrote" in p.stdout and os.path.isfile(tmp_path / "imported" / "bundle.json")
    info = jaxmat("info", "imported", cwd=tmp_path).stdout
    assert "MACE" in info and "first_residual=True" in info and "imported_from" in info
    again = jaxmat("import", src, "imported", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "imported" in again.stderr
    from ase.build import molecule
    from ase.io import write
    write(tmp_path / "nh3.xyz", molecule("NH3"))
    md = jaxmat("md", "imported", "nh3.xyz", "--steps", "2", cwd=tmp_path, check=False)
    assert md.returncode == 1 and "nh3.xyz has N, which" in md.stderr and "knows H, C, O" in md.stderr
    missing = jaxmat("import", "nothing.npz", "other", cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "nothing.npz" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
