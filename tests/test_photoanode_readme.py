"""The README's Photoanode Quickstart runs as written on the shipped CSV (fewer epochs)."""
import os
import re

import numpy as np

from conftest import README


def _quickstart() -> str:
    text = open(README, encoding="utf-8").read()
    section = text.split("## Photoanode Quickstart", 1)
    assert len(section) == 2, "README lost its Photoanode Quickstart section"
    blocks = re.findall(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_photoanode_quickstart_runs(capsys):
    import matplotlib

    matplotlib.use("Agg")
    code = _quickstart()
    assert len(code.strip().splitlines()) <= 14
    for long, short in [("epochs=150", "epochs=3"), ("members=4", "members=2")]:
        assert long in code, f"Quickstart no longer has {long!r}"
        code = code.replace(long, short)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    split, fit, table = scope["split"], scope["fit"], scope["table"]
    assert len(table) == 360 and not set(split.test.tolist()) & set(split.val.tolist())
    out = capsys.readouterr().out
    assert "'r2'" in out and "at fixed spectrum" in out and "dP/dwidth" in out
    rows = fit.confounding(scope["train"])
    assert [r["element"] for r in rows] == list(table.elements)
    assert all(np.isfinite(r["total"]) for r in rows)
    assert len(scope["fig"].axes) >= 3  # two panels and the colour bar
