"""The llama.cpp build runs on this CPU: portable flags, a child-process self-test, one clear line when it crashes.

The crash these guard against (ggml-org/llama.cpp#20824): a ``-march=native`` llama.cpp on an AMX Xeon segfaults at
its first matmul, which killed a ``dvc repro`` stage and pytest itself with a bare -11.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sciexplain import engine_check, machine

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[1]


def test_the_build_has_no_native_or_amx_code_paths():
    """The Makefile builds llama.cpp portable: an AVX2/FMA/F16C baseline, no AVX512, no AMX (whatever this CPU has)."""
    info = machine.llama_cpp_info()
    assert info, "llama_cpp.llama_print_system_info() said nothing"
    on = set(re.findall(r"\b([A-Z0-9_]+)\s*=\s*1", info))
    assert not {f for f in on if f.startswith("AMX")}, info
    assert not {f for f in on if f.startswith("AVX512")}, info  # a native build on an AVX512 CPU would show these
    if machine.cpu_flags() and "avx2" in machine.cpu_flags():
        assert "AVX2" in on, info


def test_the_makefile_flags_are_portable():
    text = (ROOT / "Makefile").read_text()
    flags = re.search(r"LLAMA_CMAKE_ARGS \?=(.*?)\n(?!\s)", text, re.S).group(1)
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AMX_INT8=OFF" in flags and "-DGGML_AVX2=ON" in flags


def test_the_wheel_cache_key_follows_the_flags():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_engine
    finally:
        sys.path.pop(0)
    a = build_engine.wheel_key("0.3.36", "-DGGML_NATIVE=OFF -DGGML_AVX2=ON")
    assert a == build_engine.wheel_key("0.3.36", "-DGGML_AVX2=ON  -DGGML_NATIVE=OFF")  # order and spacing: same build
    assert a != build_engine.wheel_key("0.3.36", "-DGGML_NATIVE=ON -DGGML_AVX2=ON")
    assert a != build_engine.wheel_key("0.3.37", "-DGGML_NATIVE=OFF -DGGML_AVX2=ON")
    assert build_engine.requirement(ROOT / "requirements-engine.txt")[1:] == ("[server]", "0.3.36")


def test_load_and_decode_the_embedded_gguf_in_a_child_process_exits_0():
    """The crash shape, as a regression test: load + decode in a child; a segfault would be a negative return code."""
    report = engine_check.probe("embedded", n_tokens=4)
    assert report["tokens"] >= 1 and re.search(r"[A-Za-z]", report["text"])
    done = subprocess.run([sys.executable, "-m", "sciexplain.engine_check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "engine self-test: llama.cpp decoded" in done.stdout and machine.cpu_model() in done.stdout


def test_a_crashing_engine_is_one_line_naming_the_signal_and_the_cpu(monkeypatch):
    """A child that dies of SIGSEGV (what the AMX build does) becomes an EngineError, not a dead interpreter."""
    monkeypatch.setattr(engine_check, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(engine_check.EngineError) as e:
        engine_check.probe("embedded")
    msg = str(e.value)
    assert "SIGSEGV" in msg and machine.cpu_model() in msg and "make setup" in msg and "\n" not in msg


def test_an_amx_build_is_refused_even_when_it_happens_to_run(monkeypatch):
    fake = {"text": " red, green and blue", "tokens": 4, "system_info": "CPU : AVX2 = 1 | AMX_INT8 = 1 |"}
    monkeypatch.setattr(engine_check, "_CHILD", f"print({json.dumps(json.dumps(fake))})")
    with pytest.raises(engine_check.EngineError, match="built with AMX"):
        engine_check.probe("embedded")


def test_no_text_is_a_broken_build(monkeypatch):
    fake = {"text": "\u0000\u0000", "tokens": 2, "system_info": "CPU : AVX2 = 1 |"}
    monkeypatch.setattr(engine_check, "_CHILD", f"print({json.dumps(json.dumps(fake))})")
    with pytest.raises(engine_check.EngineError, match="decoded no text"):
        engine_check.probe("embedded")


def test_the_llamacpp_backend_checks_the_engine_first(monkeypatch):
    """make_backend('llamacpp') runs the child-process check before it loads the engine in-process."""
    from sciexplain import backends

    monkeypatch.setattr(engine_check, "_CHECKED", {})
    monkeypatch.setattr(engine_check, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(engine_check.EngineError, match="SIGSEGV"):
        backends.make_backend("llamacpp", gguf="embedded")
