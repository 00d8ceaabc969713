"""The library modules each dvc.yaml stage depends on, from one place: the imports of its script.

DVC does not follow Python imports, so every stage lists the ``sciexplain/*.py`` files its ``stages/<name>.py``
imports, directly or through other library modules (lazy imports inside functions included). This module computes
that closure; ``python scripts/dvc_deps.py --write`` rewrites the ``sciexplain/`` lines of every stage's deps in
dvc.yaml from it (comments and every other line are kept), ``--check`` (and tests/test_pipeline_structure.py)
fails when dvc.yaml and the imports disagree.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "sciexplain"
CMD_MODULE = re.compile(r"-m (stages\.\w+)")


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Library modules (files, relative to ``root``) imported anywhere in ``path``."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                base = PKG if not node.module else f"{PKG}.{node.module}"
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                mod = node.module or ""
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PKG + "."):
                f = root / (name.replace(".", "/") + ".py")
                if f.exists():
                    found.add(f.relative_to(root).as_posix())
    return found


def closure(script: Path, root: Path = ROOT) -> set[str]:
    """Every library module ``script`` imports, transitively."""
    todo, seen = [script], set()
    while todo:
        for mod in imports(todo.pop(), root):
            if mod not in seen:
                seen.add(mod)
                todo.append(root / mod)
    return seen


def script_of(cmd: str) -> str | None:
    m = CMD_MODULE.search(cmd)
    return m.group(1).replace(".", "/") + ".py" if m else None


def rewrite(text: str, root: Path = ROOT) -> str:
    """dvc.yaml ``text`` with each stage's ``- sciexplain/*.py`` deps replaced by its script's import closure,
    placed right after the ``- stages/<name>.py`` line. A stage that lists the package itself (``- sciexplain``: the
cheap stages, which rerun in seconds on any library change) gets no per-module lines."""
    lines = text.splitlines(keepends=True)
    out, script, whole = [], None, set()
    for n, line in enumerate(lines):
        m = re.match(r"cmd:\s*(.*)", line.strip())
        if m:
            script = script_of(m.group(1))
        elif script and line.split("#", 1)[0].strip() == f"- {PKG}":
            whole.add(script)
    script = None
    for line in lines:
        stripped = line.strip()
        m = re.match(r"cmd:\s*(.*)", stripped)
        if m:
            script = script_of(m.group(1))
        if re.fullmatch(r"- sciexplain/\w+\.py", stripped):
            continue
        out.append(line)
        if script and script not in whole and stripped == f"- {script}":
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}- {mod}\n" for mod in sorted(closure(root / script, root))]
    return "".join(out)


def main(argv: list[str]) -> int:
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    new = rewrite(text)
    if "--write" in argv:
        path.write_text(new)
        print("dvc.yaml: library deps written" if new != text else "dvc.yaml: library deps already in sync")
        return 0
    if new != text:
        print("dvc.yaml: library deps differ from the stages' imports: run python scripts/dvc_deps.py --write",
              file=sys.stderr)
        return 1
    print("dvc.yaml: library deps in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
