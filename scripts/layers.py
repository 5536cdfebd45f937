"""Import layers of jaxmat: core <- models <- workflows <- cli, no cycles.

``python scripts/layers.py`` prints every import (module level or inside a function) that
points up a layer, from one workflow into another, or closes a cycle among module-level
imports; exit status 1 if there is any. ``tests/test_layers.py`` runs it.
"""
from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxmat"
# lower number = lower layer; a module may import only its own layer or below
LAYERS = [("jaxmat.version", 0), ("jaxmat.core", 0), ("jaxmat.data", 1), ("jaxmat.models", 2),
          ("jaxmat.md", 3), ("jaxmat.ase", 3), ("jaxmat.workflows", 4), ("jaxmat.demo", 5),
          ("jaxmat.cli", 5), ("jaxmat", 6)]
WORKFLOW_SHARED = "jaxmat.workflows.common"


def layer(mod: str) -> int:
    for prefix, n in LAYERS:
        if mod == prefix or mod.startswith(prefix + "."):
            return n
    return 99


def workflow(mod: str) -> str | None:
    parts = mod.split(".")
    if mod.startswith(WORKFLOW_SHARED) or len(parts) < 3 or parts[1] != "workflows":
        return None
    return ".".join(parts[:3])


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) of every jaxmat import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` blocks do not import at run time
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            top.discard(id(n))
    out = []
    pkg = module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1]) + (
                    "." + base if base else "")
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("jaxmat"):
                out.append((name, node.lineno, id(node) in top))
    return out


def known(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def problems() -> list[str]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    bad = []
    for mod, path in sorted(files.items()):
        for name, line, top_level in imports(path):
            target = known(name, modules)
            if target is None or target == mod or mod.startswith(target + "."):
                continue  # a package's own __init__ chain
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if layer(target) > layer(mod) and mod != "jaxmat":
                bad.append(f"{where}: {mod} (layer {layer(mod)}) imports {target} "
                           f"(layer {layer(target)})")
            wa, wb = workflow(mod), workflow(target)
            if wa and wb and wa != wb:
                bad.append(f"{where}: workflow {wa} imports workflow {wb}")
            if top_level:
                edges[mod].add(target)
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for t in sorted(edges[m]):
            if seen.get(t) == 1 and t in stack:
                cyc = stack[stack.index(t):] + [t]
                if not any(p.startswith(c + ".") for c in cyc for p in cyc):  # package inits
                    bad.append("import cycle: " + " -> ".join(cyc))
            elif t not in seen:
                visit(t, stack + [t])
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m, [m])
    return list(dict.fromkeys(bad))


if __name__ == "__main__":
    found = problems()
    print("\n".join(found) or "layers: clean")
    sys.exit(1 if found else 0)
