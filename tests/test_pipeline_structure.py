"""dvc.yaml is honest: each stage lists its script and the library modules it imports, and its params exist."""
import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = "sciexplain"


def _imports(path: Path) -> set[str]:
    """Library modules (files) imported anywhere in ``path`` (lazy imports inside functions included)."""
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
                f = ROOT / (name.replace(".", "/") + ".py")
                if f.exists():
                    found.add(f.relative_to(ROOT).as_posix())
    return found


def closure(script: Path) -> set[str]:
    todo, seen = [script], set()
    while todo:
        for mod in _imports(todo.pop()):
            if mod not in seen:
                seen.add(mod)
                todo.append(ROOT / mod)
    return seen


def _stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_exact(name):
    st = STAGES[name]
    m = re.search(r"-m (stages\.\w+)", st["cmd"])
    assert m, f"stage {name}: cmd must run a stages/ module"
    script = m.group(1).replace(".", "/") + ".py"
    deps = set(st.get("deps", []))
    assert script in deps, f"stage {name} does not list its script {script}"
    needed = closure(ROOT / script)
    listed = {d for d in deps if d.startswith(PKG + "/") and d.endswith(".py")}
    assert needed - listed == set(), f"stage {name} imports but does not list: {sorted(needed - listed)}"
    assert listed - needed == set(), f"stage {name} lists but does not import: {sorted(listed - needed)}"
    for d in deps:
        assert (ROOT / d).exists() or d.startswith(("models/", "data/", "metrics/")), f"stage {name}: dep {d} missing"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_exist(name):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in STAGES[name].get("params", []):
        assert isinstance(key, str), f"stage {name}: list params per key"
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"stage {name}: param {key} not in params.yaml"
            node = node[part]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_reads_only_declared_params(name):
    """Every params key the stage script reads with get(p, "...") is declared for it (or is a parent of one)."""
    m = re.search(r"-m (stages\.\w+)", STAGES[name]["cmd"])
    src = (ROOT / (m.group(1).replace(".", "/") + ".py")).read_text()
    declared = STAGES[name].get("params", [])
    for key in re.findall(r"""get\(p, ["']([\w.]+)["']""", src):
        assert any(d == key or d.startswith(key + ".") or key.startswith(d + ".") for d in declared), \
            f"stage {name} reads {key} but does not declare it"
