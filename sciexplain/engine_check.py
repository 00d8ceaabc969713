"""Does llama.cpp run on this CPU? Load a GGUF and decode a few tokens in a child process, and say why not.

The crash this guards against (ggml-org/llama.cpp#20824): a llama.cpp compiled with ``-march=native`` on an Intel
Xeon with AMX segfaults at its first matmul. In-process, that kills the Python interpreter with a bare ``-11`` (a
``dvc repro`` stage, or pytest itself). In a child process it is a return code we can explain. ``make setup`` ends
with ``python -m sciexplain.engine_check``; every stage that builds a ``llamacpp`` backend calls :func:`require`
first (~1 s for the embedded 135M model), so a broken engine is one line naming the engine and the CPU, before
any answer is asked for.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

from . import machine
from .records import UserError

REBUILD = ("rebuild it portable: rm -rf ~/.cache/sciexplain/wheels/llama-cpp-python-* .venv/.installed-engine "
           "&& make setup (the Makefile's LLAMA_CMAKE_ARGS: GGML_NATIVE=OFF, no AMX)")

# Run in the child: load, decode greedily, report what llama.cpp says it was built with.
_CHILD = r"""
import json, sys
import llama_cpp
path, n = sys.argv[1], int(sys.argv[2])
llm = llama_cpp.Llama(path, n_ctx=256, n_threads=1, n_threads_batch=1, seed=0, verbose=False)
out = llm.create_completion("The three primary colours of light are", max_tokens=n, temperature=0.0)
info = llama_cpp.llama_print_system_info()
print(json.dumps({"text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"],
                  "system_info": info.decode() if isinstance(info, bytes) else str(info)}))
"""

_AMX_ON = re.compile(r"\bAMX[_A-Z0-9]*\s*=\s*1")


class EngineError(UserError):
    """llama.cpp cannot run here (a crash, a wrong build, or no output)."""


def _describe_cpu() -> str:
    f = machine.facts()["features"]
    return f"{machine.cpu_model()} ({', '.join(k for k, v in f.items() if v) or 'no AVX2'})"


def probe(gguf: str = "embedded", n_tokens: int = 8, timeout: float = 300.0) -> dict:
    """Load ``gguf`` and decode ``n_tokens`` greedily in a child process; the child's report, or EngineError."""
    from .llamacpp_backend import resolve_gguf

    try:
        import llama_cpp  # noqa: F401  (only to fail here, with the install hint, rather than in the child)
    except ImportError as e:
        raise EngineError(f"llama.cpp (llama-cpp-python) is not installed ({e}): run `make setup`") from None
    path = resolve_gguf(gguf)
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(int(n_tokens))], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineError(f"llama.cpp did not decode {n_tokens} tokens of {path.name} within {timeout:.0f} s on "
                          f"{_describe_cpu()}") from None
    where = f"llama.cpp on {_describe_cpu()}, loading {path.name}"
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode).name
        raise EngineError(f"{where}: the engine crashed with {sig} at its first decode; {REBUILD}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise EngineError(f"{where}: exit {done.returncode}: {last}")
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EngineError(f"{where}: no report from the engine (stdout: {done.stdout[-200:]!r})") from None
    if _AMX_ON.search(report["system_info"]):
        raise EngineError(f"{where}: this llama.cpp was built with AMX ({report['system_info']}), which crashes "
                          f"(llama.cpp#20824); {REBUILD}")
    if report["tokens"] < 1 or not re.search(r"[A-Za-z]", report["text"]):
        raise EngineError(f"{where}: decoded no text ({report['text']!r}): the build is broken; {REBUILD}")
    return report


_CHECKED: dict = {}


def require(gguf: str = "embedded") -> dict:
    """:func:`probe` once per process and model (stages call this before building a ``llamacpp`` backend)."""
    key = str(gguf)
    if key not in _CHECKED:
        _CHECKED[key] = probe(gguf)
    return _CHECKED[key]


def main() -> int:
    try:
        report = probe()
    except (EngineError, UserError) as e:
        print(f"engine self-test FAILED: {e}", file=sys.stderr)
        return 1
    print(f"engine self-test: llama.cpp decoded {report['tokens']} tokens ({report['text'].strip()!r}) on "
          f"{_describe_cpu()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
