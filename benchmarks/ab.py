"""Time a benchmark script on two versions of jaxmat side by side: the working tree (head)
and an earlier commit (base), alternated round by round (base-head, head-base, ...), each
run in a fresh process, optionally pinned to one core. The script always comes from the
working tree, so both sides run the same measuring code (it must use only APIs both versions
have); ``PYTHONPATH`` picks the library. The script must accept ``--out PREFIX`` and write
``PREFIX.json``.

    python benchmarks/ab.py --base f156342 --rounds 3 --keys median_epoch_s \\
        -- fit_speed.py --epochs 12

Every numeric leaf named in ``--keys`` is reported as the median over rounds per side and
the ratio base/head (for times: > 1 means the head is faster). Writes
``results/ab_<name>.json`` (every round) and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import RESULTS, cpu_model  # noqa: E402

LABELS = ("case", "dataset", "layout", "members", "N")


def leaves(tree, keys: set[str], path: str = "") -> dict[str, float]:
    """Numeric leaves whose own key is in ``keys``, by a readable path (list items named by
    their case/dataset/layout fields where they have them)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k in keys:
                out[f"{path}{k}"] = float(v)
            elif isinstance(v, (dict, list)):
                out.update(leaves(v, keys, f"{path}{k}."))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            label = (" ".join(str(v[k]) for k in LABELS if isinstance(v, dict) and k in v)
                     or str(i))
            out.update(leaves(v, keys, f"{path}[{label}]."))
    return out


def run(tree: str, script: list[str], out: str, pin: str | None) -> dict:
    cmd = [sys.executable, os.path.join(HERE, script[0]), *script[1:], "--out", out]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed in {tree}:\n{proc.stderr[-3000:]}")
    with open(out + ".json") as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keys", nargs="+", required=True, help="numeric JSON keys to report")
    ap.add_argument("--pin", default=None, help="taskset CPU list, e.g. 0 (one core)")
    ap.add_argument("--name", default=None, help="results name (default: the script's)")
    ap.add_argument("script", nargs=argparse.REMAINDER, help="-- script.py [args]")
    a = ap.parse_args()
    script = [s for s in a.script if s != "--"]
    if not script:
        raise SystemExit("give the benchmark script after --")
    name = a.name or os.path.splitext(script[0])[0]
    base_rev = subprocess.run(["git", "rev-parse", "--short", a.base], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    head_rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="jaxmat-ab-")
    base_tree = os.path.join(tmp, "base")
    subprocess.run(["git", "worktree", "add", "--detach", base_tree, a.base], cwd=ROOT,
                   check=True, capture_output=True)
    sides = {"base": base_tree, "head": ROOT}
    values: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    try:
        for r in range(a.rounds):
            for side in (("base", "head") if r % 2 == 0 else ("head", "base")):
                res = run(sides[side], script, os.path.join(tmp, f"{side}_{r}"), a.pin)
                for k, v in leaves(res, set(a.keys)).items():
                    values[side].setdefault(k, []).append(v)
                print(f"round {r + 1}/{a.rounds} {side} done", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for k in values["head"]:
        b, h = np.median(values["base"].get(k, [np.nan])), np.median(values["head"][k])
        rows.append({"measure": k, "base_median": float(b), "head_median": float(h),
                     "base_over_head": float(b / h) if h else float("nan"),
                     "base": values["base"].get(k, []), "head": values["head"][k]})
    lines = [f"A/B of `{' '.join(script)}`: base {base_rev} vs head {head_rev}, {a.rounds} "
             f"alternated rounds (fresh process each), {cpu_model()}"
             + (f", pinned to CPU {a.pin}" if a.pin is not None else "") + ".", "",
             "| measure | base median | head median | base / head |", "|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['base_median']:.4g} | {r['head_median']:.4g} | "
              f"{r['base_over_head']:.2f} |" for r in rows]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"ab_{name}.json"), "w") as f:
        json.dump({"base": base_rev, "head": head_rev, "script": script, "rounds": a.rounds,
                   "pin": a.pin, "cpu": cpu_model(), "rows": rows}, f, indent=1)
    with open(os.path.join(RESULTS, f"ab_{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
