"""The README's quickstart runs as written (with fewer epochs) and trains."""
import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_quickstart_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python quickstart"
    code = blocks[0].replace("epochs=50", "epochs=3")
    ns: dict = {}
    exec(compile(code, "README-quickstart", "exec"), ns)
    out = ns["out"]
    assert np.all(np.isfinite(np.asarray(out["forces"])))
    hist = ns["result"].history
    assert len(hist) == 3 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    members = ns["committee"]
    leaf = np.asarray(next(iter(__import__("jax").tree_util.tree_leaves(members))))
    assert leaf.shape[0] == 5 and not np.allclose(leaf[0], leaf[1])
