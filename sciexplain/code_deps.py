"""Each stage's code as one DVC dependency: ``build/code/<script>.txt``, the sha256 of every file the stage runs.

DVC does not follow Python imports. The ``code`` stage of dvc.yaml runs ``python -m sciexplain.code_deps`` on
every change under ``stages/`` or ``sciexplain/`` (it reads files, a second at most) and writes, per stage script,
the sha256 of the script, of every library module it imports (directly, transitively, lazily inside functions) and
of the data files those modules name (``templates``, ``static``, ``trl_fields.json``). A stage depends on its own
fingerprint file only, so changing one module reruns exactly the stages whose scripts import it, and nothing else;
dvc.yaml stays short and readable. Standard library only: the fingerprints are written before anything is built.

    python -m sciexplain.code_deps                       # write build/code/*.txt (only files whose content changed)
    python -m sciexplain.code_deps --show stages/teacher.py  # the files a stage's code is made of
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "sciexplain"
HEADER = "# the code of {script}: sha256 of every file it runs (python -m sciexplain.code_deps writes this)\n"


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Library modules (paths relative to ``root``) imported anywhere in ``path``, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                base = PKG if not node.module else f"{PKG}.{node.module}"
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == PKG or name.startswith(PKG + "."):
                f = root / (name.replace(".", "/") + ".py")
                if f.exists():
                    found.add(f.relative_to(root).as_posix())
    return found


def closure(script: Path, root: Path = ROOT) -> set[str]:
    """Every library module ``script`` imports, transitively (``sciexplain/x.py`` paths)."""
    todo, seen = [script], set()
    while todo:
        for mod in imports(todo.pop(), root):
            if mod not in seen:
                seen.add(mod)
                todo.append(root / mod)
    return seen


def data_files(module: Path, root: Path = ROOT) -> set[str]:
    """Files beside the package's modules that ``module`` names in a string (``"templates"``: every file under
    sciexplain/templates/; ``"trl_fields.json"``: that file)."""
    pkg = root / PKG
    entries = {p.name: p for p in pkg.iterdir() if p.suffix != ".py" and p.name != "__pycache__"}
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in entries:
            target = entries[node.value]
            files = sorted(f for f in target.rglob("*") if f.is_file() and "__pycache__" not in f.parts) \
                if target.is_dir() else [target]
            found |= {f.relative_to(root).as_posix() for f in files}
    return found


def files_of(script: Path, root: Path = ROOT) -> list[str]:
    """The script, then every module and data file it runs, sorted."""
    mods = closure(script, root)
    data = set().union(*(data_files(root / m, root) for m in mods)) if mods else set()
    return [script.relative_to(root).as_posix(), *sorted(mods | data)]


def fingerprint(script: Path, root: Path = ROOT) -> str:
    """The text of ``build/code/<script>.txt``: one ``<sha256>  <path>`` line per file."""
    lines = [f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files_of(script, root)]
    return HEADER.format(script=script.relative_to(root).as_posix()) + "".join(lines)


def scripts(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / "stages").glob("*.py") if p.name != "__init__.py")


def write(out_dir: Path, root: Path = ROOT) -> list[str]:
    """Write every stage script's fingerprint into ``out_dir`` (atomically; a file whose text is unchanged is left
    alone, a stale one removed); returns the names written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted, written = {}, []
    for script in scripts(root):
        wanted[f"{script.stem}.txt"] = fingerprint(script, root)
    for name, text in wanted.items():
        path = out_dir / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(name)
    for stale in out_dir.glob("*.txt"):
        if stale.name not in wanted:
            stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sciexplain.code_deps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/code", help="folder of <script>.txt fingerprints (default build/code)")
    ap.add_argument("--show", metavar="SCRIPT", help="print the files SCRIPT's code is made of, write nothing")
    args = ap.parse_args(argv)
    if args.show:
        print("\n".join(files_of(Path(args.show).resolve())))
        return 0
    written = write(Path(args.out))
    print(f"{args.out}: {len(scripts())} stage fingerprints, {len(written)} changed" +
          (f" ({', '.join(written)})" if written else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
