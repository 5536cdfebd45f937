"""Every Python block of the README runs on its own, each in a fresh process (as if pasted
into an empty file), in README order in one directory (the MD block reads the bundle the
Quickstart saves), with shorter training and MD."""
import os
import re
import subprocess
import sys

import pytest

from conftest import README, ROOT

# section -> (required substitutions that shorten the run, checks appended to the block)
SHORTER = {
    "Quickstart": ([("epochs=400", "epochs=3")], """
assert pred["energy"].shape == (len(te),) and len(pred["forces"]) == len(te)
assert os.path.isfile("runs/nh3/bundle.json")
"""),
    "MD with a saved model": ([("atoms, 2000,", "atoms, 20,"), ("replicas=64", "replicas=4"),
                               ("dyn.run(200)", "dyn.run(5)")], """
assert len(run.atoms) == 4 and run.steps == 20 and np.all(np.isfinite(run.log["energy"]))
direct = jaxmat.predict(nh3.model, nh3.params, [atoms])["energy"][0]
assert abs(atoms.get_potential_energy() - direct) < 1e-5 * max(1.0, abs(direct))
"""),
    "MACE": ([], """
assert model.graph.cutoff == 5.0 and model.graph.layouts == ("sparse",)
"""),
    "Several devices": ([("epochs=100, data_parallel", "epochs=2, data_parallel"),
                         ("CommitteeConfig(epochs=100", "CommitteeConfig(epochs=2")], """
assert len(result.history) == 2 and len(fitted.history) == 2
"""),
}
SLOW = {"XANES Quickstart"}
SEPARATE = {"Photoanode Quickstart": "tests/test_photoanode_readme.py"}


def _blocks() -> list[tuple[str, str]]:
    """(section heading, code) of every python block, in README order."""
    out, section = [], ""
    text = open(README, encoding="utf-8").read()
    for m in re.finditer(r"^(#{2,3}) ([^\n]+)$|```python\n(.*?)```", text, flags=re.S | re.M):
        if m.group(2):
            section = m.group(2).strip()
        else:
            out.append((section, m.group(3)))
    return out


def test_every_block_is_covered():
    sections = [s for s, _ in _blocks()]
    assert sections[:4] == ["Quickstart", "MD with a saved model", "MACE", "Several devices"]
    unknown = set(sections) - set(SHORTER) - SLOW - set(SEPARATE)
    assert not unknown, f"README blocks without a test: {unknown}"


def _run(code: str, cwd: str, env: dict) -> None:
    res = subprocess.run([sys.executable, "-c", "import os\n" + code], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{res.stderr[-4000:]}"


def test_blocks_run_alone_in_order(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}
    for section, code in _blocks():
        if section not in SHORTER:
            continue
        subs, checks = SHORTER[section]
        for long, short in subs:
            assert long in code, f"README block {section!r} no longer has {long!r}"
            code = code.replace(long, short)
        block_env = dict(env)
        if section == "Several devices":  # four XLA devices on a CPU, as the README says
            block_env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        _run(code + checks, str(tmp_path), block_env)


@pytest.mark.slow
def test_xanes_block_runs_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}
    ran = 0
    for section, code in _blocks():
        if section in SLOW:
            for long, short in [("epochs=80", "epochs=1"), ("n_members=5", "n_members=2")]:
                code = code.replace(long, short)
            _run(code, str(tmp_path), env)
            ran += 1
    assert ran == len(SLOW)
