"""Layers point down and no module-level import closes a cycle (scripts/layers.py), and
``import jaxmat`` stays light."""
import os
import subprocess
import sys

from conftest import ROOT


def test_layers_point_down():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "layers.py")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_import_jaxmat_loads_no_engine_and_short_names_import():
    code = ("import sys, jaxmat\n"
            "heavy = [m for m in ('optax', 'orbax.checkpoint', 'jaxmat.core.engine', "
            "'jaxmat.core.bundle', 'jraph', 'ase') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import jaxmat.xanes, jaxmat.attack, jaxmat.ensemble, jaxmat.graph\n"
            "from jaxmat import xanes, attack\n"
            "assert jaxmat.xanes is xanes and xanes.__name__ == 'jaxmat.workflows.xanes'\n"
            "assert xanes.__spec__.name == 'jaxmat.workflows.xanes'\n"
            "assert callable(jaxmat.load) and callable(jaxmat.predict)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0, res.stderr[-3000:]
