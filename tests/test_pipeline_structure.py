"""dvc.yaml is honest: each stage lists its script and the library modules it imports, and its params exist."""
import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = "sciexplain"
sys.path.insert(0, str(ROOT / "scripts"))
import dvc_deps  # noqa: E402  the one place that computes a stage's library deps (--write puts them in dvc.yaml)


def closure(script: Path) -> set[str]:
    return dvc_deps.closure(script, ROOT)


PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _lookup(dotted: str, node):
    for part in dotted.split("."):
        node = node[part]
    return node


def _interpolate(value, key, item):
    """``${key}``, ``${item}``, ``${item[0]}``, ``${item.x}`` in a foreach body, as DVC resolves them."""
    if isinstance(value, dict):
        return {_interpolate(k, key, item): _interpolate(v, key, item) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, key, item) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        expr = m.group(1)
        if expr == "key":
            return str(key)
        if expr == "item":
            return str(item)
        idx = re.fullmatch(r"item\[(\d+)\]", expr)
        if idx:
            return str(item[int(idx.group(1))])
        if expr.startswith("item."):
            return str(_lookup(expr[5:], item))
        return m.group(0)  # a params value (e.g. ${train.launcher}): left as written
    return re.sub(r"\$\{([^}]+)\}", one, value)


def _stages():
    """Every stage of dvc.yaml, a foreach stage expanded over its params (``answer@base``, ...)."""
    out = {}
    for name, spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in spec:
            out[name] = spec
            continue
        items = _lookup(re.fullmatch(r"\$\{(.+)\}", spec["foreach"]).group(1), PARAMS)
        pairs = items.items() if isinstance(items, dict) else ((x, x) for x in items)
        for key, item in pairs:
            out[f"{name}@{key}"] = _interpolate(spec["do"], key, item)
    return out


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_exact(name):
    st = STAGES[name]
    m = re.search(r"-m (stages\.\w+)", st["cmd"])
    assert m, f"stage {name}: cmd must run a stages/ module"
    script = m.group(1).replace(".", "/") + ".py"
    deps = set(st.get("deps", []))
    assert script in deps, f"stage {name} does not list its script {script}"
    if PKG in deps:  # the whole package as one dep (a cheap stage): nothing to list per module
        assert not {d for d in deps if d.startswith(PKG + "/")}, f"stage {name}: lists the package and its modules"
        return
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


def _option_dests(tree) -> dict[str, str]:
    """``{python parameter name: --flag}`` of a Click command's options (``--model-name`` -> ``model_name``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option":
            args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            flags = [a for a in args if a.startswith("--")]
            names = [a for a in args if not a.startswith("-")]
            if flags:
                out[names[0] if names else flags[0][2:].replace("-", "_")] = flags[0]
    return out


def params_read(script: Path, cmd: str) -> set[str]:
    """Every key the script reads with ``get(p, "...")`` or ``get(p, f"...{opt}...")``, an f-string's names filled
    in from the stage's cmd (``--section rs`` -> ``rs``)."""
    tree = ast.parse(script.read_text())
    dests, words = _option_dests(tree), cmd.split()
    keys = set()
    helpers = {}  # a helper that passes its own argument on: def _int_param(p, key, ...): get(p, key)
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            names = [a.arg for a in fn.args.args]
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "get" and len(node.args) >= 2
                        and getattr(node.args[1], "id", None) in names):
                    helpers[fn.name] = names.index(node.args[1].id)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in helpers:
            arg = node.args[helpers[node.func.id]]
            assert isinstance(arg, ast.Constant), f"{script}: a params key the test cannot read: {ast.unparse(arg)}"
            keys.add(arg.value)
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "get" and len(node.args) >= 2
                and getattr(node.args[0], "id", None) == "p"):
            continue
        arg = node.args[1]
        if isinstance(arg, ast.Constant):
            keys.add(arg.value)
            continue
        if isinstance(arg, ast.Name) and any(node in ast.walk(f) for f in ast.walk(tree)
                                             if isinstance(f, ast.FunctionDef) and f.name in helpers):
            continue  # read through a helper: its callers' keys are collected above
        assert isinstance(arg, ast.JoinedStr), f"{script}: a params key the test cannot read: {ast.unparse(arg)}"
        parts = []
        for v in arg.values:
            if isinstance(v, ast.Constant):
                parts.append(v.value)
                continue
            name = getattr(v.value, "id", None)
            flag = dests.get(name)
            assert flag and flag in words, f"{script}: f-string key {ast.unparse(arg)}: {name} is not an option of the cmd"
            parts.append(words[words.index(flag) + 1])
        keys.add("".join(parts))
    return keys


def _in_params(key: str) -> bool:
    try:
        _lookup(key, PARAMS)
        return True
    except (KeyError, TypeError):
        return False


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_reads_only_declared_params(name):
    """Every params key the stage script reads (f-strings included) is declared for it (or is a parent of one).
    A key params.yaml does not have (``rs.data``: the rs round always passes --data) is read on a branch the cmd
    never takes, and cannot change."""
    m = re.search(r"-m (stages\.\w+)", STAGES[name]["cmd"])
    declared = STAGES[name].get("params", [])
    for key in params_read(ROOT / (m.group(1).replace(".", "/") + ".py"), STAGES[name]["cmd"]):
        if not _in_params(key):
            continue
        assert any(d == key or d.startswith(key + ".") or key.startswith(d + ".") for d in declared), \
            f"stage {name} reads {key} but does not declare it"


def test_the_params_check_sees_f_string_keys():
    """sft and rs share stages/sft.py, which reads f"{section}.trainer": the check resolves it per stage."""
    script = ROOT / "stages/sft.py"
    assert "rs.trainer" in params_read(script, STAGES["rs"]["cmd"])
    assert "sft.trainer" in params_read(script, STAGES["sft"]["cmd"])
    assert "sft.lora.r" in params_read(script, STAGES["sft"]["cmd"])
    assert "answer.models.sft" in params_read(ROOT / "stages/answer.py", STAGES["answer@sft"]["cmd"])
    assert "validate.margin_full_gap" in params_read(ROOT / "stages/validate.py", STAGES["validate"]["cmd"])


def test_dvc_yaml_library_deps_are_what_the_tool_writes():
    """dvc.yaml's sciexplain/ lines are exactly what ``python scripts/dvc_deps.py --write`` makes of the imports."""
    text = (ROOT / "dvc.yaml").read_text()
    assert dvc_deps.rewrite(text, ROOT) == text, "run: python scripts/dvc_deps.py --write"


TRAINING_STAGES = {"sft": "sft", "rs": "rs", "reward_model": "reward_model", "dpo": "dpo", "grpo": "grpo"}


@pytest.mark.parametrize("name", sorted(TRAINING_STAGES))
def test_a_training_stage_declares_its_trainer_subsection_whole(name):
    """``<section>.trainer`` passes through to the TRL config: the stage reads it whole and declares it as one key
    (so any setting added there reruns the stage), never key by key."""
    from sciexplain import params_schema as ps

    section = TRAINING_STAGES[name]
    st = STAGES[name]
    m = re.search(r"-m (stages\.\w+)", st["cmd"])
    assert f"{section}.trainer" in params_read(ROOT / (m.group(1).replace(".", "/") + ".py"), st["cmd"])
    declared = st.get("params", [])
    assert f"{section}.trainer" in declared, f"stage {name} must declare {section}.trainer"
    assert not [d for d in declared if d.startswith(f"{section}.trainer.")], f"stage {name}: declare the subsection whole"
    assert isinstance(PARAMS[section]["trainer"], dict) and section in ps.TRAINER_CONFIGS
