"""Code lines of the ``jaxmat`` package: lines holding Python tokens, without blank lines,
comments and docstrings (module, class and function). Run from the repository root:

    python scripts/sloc.py                  # the working tree
    python scripts/sloc.py d6b1a3f          # a commit
    python scripts/sloc.py d6b1a3f HEAD     # per-file differences between two commits
"""
from __future__ import annotations

import ast
import io
import pathlib
import subprocess
import sys
import tokenize

ROOT = pathlib.Path.cwd()  # run from the repository root
SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
        tokenize.ENDMARKER}


def code_lines(src: str) -> int:
    docs: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            docs.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in SKIP:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docs)
    return len(lines)


def per_file(rev: str | None) -> dict[str, int]:
    if rev is None:
        return {str(p.relative_to(ROOT)): code_lines(p.read_text())
                for p in sorted((ROOT / "jaxmat").rglob("*.py"))}
    git = ["git", "-C", str(ROOT)]
    names = subprocess.run([*git, "ls-tree", "-r", "--name-only", rev, "jaxmat"], check=True,
                           capture_output=True, text=True).stdout.split()
    return {f: code_lines(subprocess.run([*git, "show", f"{rev}:{f}"], check=True,
                                         capture_output=True, text=True).stdout)
            for f in names if f.endswith(".py")}


def main() -> None:
    revs = sys.argv[1:]
    if len(revs) < 2:
        print(sum(per_file(revs[0] if revs else None).values()))
        return
    a, b = per_file(revs[0]), per_file(revs[1])
    for f in sorted(set(a) | set(b), key=lambda f: b.get(f, 0) - a.get(f, 0)):
        if a.get(f, 0) != b.get(f, 0):
            print(f"{b.get(f, 0) - a.get(f, 0):+6d} {a.get(f, 0):6d} {b.get(f, 0):6d}  {f}")
    print(f"{sum(b.values()) - sum(a.values()):+6d} {sum(a.values()):6d} {sum(b.values()):6d}  total")


if __name__ == "__main__":
    main()
