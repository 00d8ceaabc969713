"""dvc.yaml is honest: each stage depends on its code fingerprint (its script and the library modules it imports),
changing one module reruns exactly the stages that import it, and the params a stage reads are declared and exist."""
import ast
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = "sciexplain"
from sciexplain import code_deps  # noqa: E402  the one place that computes what a stage's code is made of


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


STAGES = {k: v for k, v in _stages().items() if k != "code"}  # the code stage runs sciexplain.code_deps


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_is_one_fingerprint_dep(name):
    """A stage's code is one dep, ``build/code/<script>.txt`` (its script + every module it imports, written by the
    ``code`` stage); no stage lists library files itself, and every other dep exists or is a pipeline output."""
    st = STAGES[name]
    m = re.search(r"-m (stages\.\w+)", st["cmd"])
    assert m, f"stage {name}: cmd must run a stages/ module"
    deps = list(st.get("deps", []))
    assert deps[0] == f"build/code/{m.group(1).split('.')[1]}.txt", f"stage {name}: first dep must be its code"
    assert not [d for d in deps if d.startswith((PKG, "stages"))], f"stage {name}: lists code files; use its fingerprint"
    for d in deps[1:]:
        assert (ROOT / d).exists() or d.startswith(("models/", "data/", "metrics/")), f"stage {name}: dep {d} missing"


def test_the_code_stage_covers_every_stage_script():
    code = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["code"]
    assert set(code["deps"]) == {"stages", PKG} and code["cmd"].split()[2] == "sciexplain.code_deps"
    used = {STAGES[n]["deps"][0] for n in STAGES if n != "code"}
    assert used == {f"build/code/{p.stem}.txt" for p in code_deps.scripts(ROOT)}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_exist(name):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in STAGES[name].get("params", []):
        assert isinstance(key, str), f"stage {name}: list params per key"
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"stage {name}: param {key} not in params.yaml"
            node = node[part]


def _options(tree) -> dict[str, tuple[str, object]]:
    """``{python parameter name: (--flag, default)}`` of a Click command's options (``--model-name`` -> ``model_name``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option":
            args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            flags = [a for a in args if a.startswith("--")]
            names = [a for a in args if not a.startswith("-")]
            default = next((k.value.value for k in node.keywords if k.arg == "default" and isinstance(k.value, ast.Constant)),
                           None)
            if flags:
                out[names[0] if names else flags[0][2:].replace("-", "_")] = (flags[0], default)
    return out


def params_read(script: Path, cmd: str) -> set[str]:
    """Every params key the script reads as an attribute chain of its params (``p.sft.lora.r``), through an alias
    (``cfg = getattr(p, section)`` with ``section`` an option of the stage's cmd, ``--section rs`` -> ``rs.*``;
    ``v = p.validate``), or by section name (``p.as_dict("teacher", ...)``); a method at the end of a chain
    (``p.sft.trainer.config_kwargs()``, ``p.answer.models.get(name)``) is not part of the key."""
    tree = ast.parse(script.read_text())
    options, words = _options(tree), cmd.split()

    def option_value(name):
        flag, default = options.get(name, (None, None))
        assert flag, f"{script}: params read through {name}, which is not an option of the stage"
        return words[words.index(flag) + 1] if flag in words else default

    aliases = {"p": ""}
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}

    def key_of(node) -> str | None:
        parts = []
        if id(node) in calls and isinstance(node, ast.Attribute):
            node = node.value  # a method call at the end of the chain
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" \
                and getattr(node.args[0], "id", None) in aliases:
            arg = node.args[1]
            name = arg.value if isinstance(arg, ast.Constant) else option_value(arg.id)
            parts.append(name)
            node = node.args[0]
        if not (isinstance(node, ast.Name) and node.id in aliases):
            return None
        return ".".join(x for x in [aliases[node.id], *reversed(parts)] if x)

    for node in ast.walk(tree):  # aliases first: x = p.section / getattr(p, option) / x, y = p.section, ...
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, value = node.targets[0], node.value
        pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                 and len(target.elts) == len(value.elts) else [(target, value)])
        for t, v in pairs:
            if isinstance(t, ast.Name) and t.id != "p" and isinstance(v, (ast.Attribute, ast.Call)):
                key = key_of(v)
                if key:
                    aliases[t.id] = key
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            key = key_of(node)
            if key and key.split(".", 1)[0] != "as_dict":
                keys.add(key)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "as_dict" \
                and getattr(node.func.value, "id", None) == "p":
            keys |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return {k for k in keys if k}


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
    assert "answer.models" in params_read(ROOT / "stages/answer.py", STAGES["answer@sft"]["cmd"])
    assert "validate.margin_full_gap" in params_read(ROOT / "stages/validate.py", STAGES["validate"]["cmd"])


@pytest.mark.e2e
def test_changing_one_module_reruns_exactly_the_stages_that_import_it(tmp_path):
    """The precision of the fingerprints, through DVC itself: a project with the real ``code`` stage and, per stage
    script, a stage that depends on its fingerprint only. After a first ``dvc repro``, a change to one library
    module reruns ``code`` and exactly the stages whose scripts import that module (directly, through other modules
    or lazily), and a second ``dvc repro`` runs nothing."""
    import shutil
    import subprocess

    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / PKG, tmp_path / PKG, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / ".dvcignore").write_text((ROOT / ".dvcignore").read_text())
    code = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["code"]
    names = [p.stem for p in code_deps.scripts(tmp_path)]
    stages = {"code": code, **{n: {"cmd": f"python -c \"open('out/{n}.txt', 'w').write('ran')\"",
                                    "deps": [f"build/code/{n}.txt"], "outs": [f"out/{n}.txt"]} for n in names}}
    (tmp_path / "out").mkdir()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def repro() -> set[str]:
        r = subprocess.run(dvc + ["repro"], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return set(re.findall(r"Running stage '([^']+)'", r.stdout))

    subprocess.run(dvc + ["init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    assert repro() == {"code", *names}
    module = f"{PKG}/rubric.py"
    importers = {n for n in names if module in code_deps.closure(tmp_path / "stages" / f"{n}.py", tmp_path)}
    assert {"judge", "validate", "teacher"} <= importers and not {"base_model", "prepare", "sft"} & importers
    with open(tmp_path / module, "a") as f:
        f.write("\n# a change\n")
    assert repro() == {"code", *importers}
    assert repro() == set()


TRAINING_STAGES = {"sft": "sft", "rs": "rs", "reward_model": "reward_model", "dpo": "dpo", "grpo": "grpo"}


@pytest.mark.parametrize("name", sorted(TRAINING_STAGES))
def test_a_training_stage_declares_its_trainer_subsection_whole(name):
    """``<section>.trainer`` passes through to the TRL config: the stage reads it whole and declares it as one key
    (or its whole section), so any setting added there reruns the stage; never key by key."""
    from sciexplain import params_schema as ps

    section = TRAINING_STAGES[name]
    st = STAGES[name]
    m = re.search(r"-m (stages\.\w+)", st["cmd"])
    assert f"{section}.trainer" in params_read(ROOT / (m.group(1).replace(".", "/") + ".py"), st["cmd"])
    declared = st.get("params", [])
    assert f"{section}.trainer" in declared or section in declared, f"stage {name} must declare {section}.trainer"
    assert not [d for d in declared if d.startswith(f"{section}.trainer.")], f"stage {name}: declare the subsection whole"
    assert isinstance(PARAMS[section]["trainer"], dict) and section in ps.TRAINER_CONFIGS
