"""The README's Quickstart and MD example run as written (shorter training and MD)."""
import os
import re

import numpy as np

from jaxmat.ase import JaxmatCalculator

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _blocks() -> list[str]:
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_quickstart_and_md_example_run(tmp_path, monkeypatch):
    blocks = _blocks()
    assert len(blocks) >= 2, "README lost its Quickstart or MD example"
    code = "\n".join(blocks[:2])
    for long, short in [("epochs=400", "epochs=2"), ("dyn.run(200)", "dyn.run(3)"),
                        ("atoms, 2000,", "atoms, 20,"), ("replicas=64", "replicas=4")]:
        assert long in code, f"README example no longer has {long!r}"
        code = code.replace(long, short)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert os.path.isfile(tmp_path / "runs" / "nh3" / "bundle.json")
    pred, te = scope["pred"], scope["te"]
    assert pred["energy"].shape == (len(te),) and len(pred["forces"]) == len(te)
    # the reloaded calculator reproduces the in-memory prediction of the same structure
    atoms = scope["data"].load_ammonia()[0]
    calc = JaxmatCalculator.from_bundle("runs/nh3")
    rec = scope["graph"].records_from_atoms([atoms], 5.0)
    direct = scope["jaxmat"].predict(scope["model"], scope["result"].params, rec)["energy"][0]
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_potential_energy(), direct, rtol=1e-6)
    assert np.isfinite(scope["atoms"].get_potential_energy())
    run = scope["run"]
    assert len(run.atoms) == 4 and run.steps == 20 and np.all(np.isfinite(run.log["energy"]))
