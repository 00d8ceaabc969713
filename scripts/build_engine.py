"""Build and install llama.cpp (``llama-cpp-python``) portably, then prove it runs on this CPU.

``make setup`` calls this. Why it exists:

* llama.cpp's default build is ``GGML_NATIVE=ON`` (``-march=native``). On Intel Xeons with AMX that compiles its AMX
  backend, which repacks the Q4_1 weights at load and segfaults at the first matmul (ggml-org/llama.cpp#20824).
  ``-DGGML_AMX_*=OFF`` alone does not help while ``GGML_NATIVE=ON``. So the build here is portable: an
  AVX/AVX2/FMA/F16C baseline (every x86-64 CPU of the last decade, AMD and Intel alike), no AVX512, no AMX.
* pip caches a wheel it built from an sdist under the sdist's name, not the compile flags, so a native wheel
  built once would be reused whatever ``CMAKE_ARGS`` say. The wheel is built here with pip's cache off, into a
  folder keyed by (version, flags, machine), and installed from that file: new flags, new build.
* A segfault deep inside ``dvc repro`` half an hour later is the worst way to learn the engine is broken, so setup
  ends with :mod:`sciexplain.engine_check` (load the embedded GGUF and decode a few tokens in a child process).

Usage: ``python scripts/build_engine.py REQUIREMENTS_FILE`` with ``CMAKE_ARGS`` (the flags) and
``CMAKE_BUILD_PARALLEL_LEVEL`` in the environment; ``SCIEXPLAIN_WHEEL_CACHE`` moves the wheel folder
(default ``~/.cache/sciexplain/wheels``). Standard library only: it runs before anything else is importable.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def requirement(req_file: Path) -> tuple[str, str, str]:
    """(name, extras, version) of the one ``llama-cpp-python[...]==X`` line of ``req_file``."""
    for line in req_file.read_text().splitlines():
        m = re.match(r"\s*(llama[-_]cpp[-_]python)(\[[^\]]*\])?==([\w.]+)", line)
        if m:
            return m.group(1), m.group(2) or "", m.group(3)
    sys.exit(f"{req_file}: no pinned llama-cpp-python==X line")


def wheel_key(version: str, cmake_args: str) -> str:
    flags = " ".join(sorted(cmake_args.split()))
    blob = f"{version}|{flags}|{platform.machine()}|{sys.implementation.cache_tag}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def main() -> int:
    req_file = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "requirements-engine.txt")
    name, extras, version = requirement(req_file)
    cmake_args = os.environ.get("CMAKE_ARGS", "")
    if re.search(r"GGML_NATIVE=(ON|1|TRUE)", cmake_args, re.I):
        print("warning: CMAKE_ARGS asks for GGML_NATIVE=ON: a native build crashes on AMX CPUs (llama.cpp#20824)",
              file=sys.stderr)
    cache = Path(os.environ.get("SCIEXPLAIN_WHEEL_CACHE", Path.home() / ".cache" / "sciexplain" / "wheels"))
    folder = cache / f"llama-cpp-python-{version}-{wheel_key(version, cmake_args)}"
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if not wheels:
        print(f"building llama-cpp-python {version} from source (CMAKE_ARGS={cmake_args!r}); "
              "several minutes the first time", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir",
                            "--no-binary", "llama-cpp-python", "-w", str(tmp), f"llama-cpp-python=={version}"],
                           check=True)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)  # whole or absent: a killed build leaves no half folder under the key
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    else:
        print(f"llama-cpp-python {version}: the wheel built with these flags is cached ({wheels[0]})")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheels[0])],
                   check=True)
    if extras:  # the server's own dependencies (fastapi, uvicorn, ...) from the package index
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{wheels[0]}{extras}"], check=True)
    return subprocess.run([sys.executable, "-m", "sciexplain.engine_check"], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
