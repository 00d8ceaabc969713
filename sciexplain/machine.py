"""What machine a number came from, and what that machine's CPU is built for.

A figure without its machine is not comparable: the CPUs of the machines this project runs on differ (Intel Xeons
with AMX and avx512_bf16, AMD EPYCs with avx512_bf16 and no AMX, older CPUs with AVX2 only), and bf16 is ~14x
fp32 on one and far slower on another. :func:`facts` is recorded in the metrics of every generating and training
stage and beside every bench result; :func:`native_bf16` decides ``model.compute_dtype: auto``.
"""
from __future__ import annotations

import functools
import os
import platform
import re

# This process's ``model.compute_dtype`` (set by a stage through :func:`sciexplain.models.set_compute_dtype`; kept
# here, in a module without torch, so :func:`sciexplain.cli.stage` can forget it when the stage returns).
DTYPE_SETTING: dict = {"value": None}

# The CPU flags that decide speed and correctness here (lscpu / /proc/cpuinfo names).
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or "unknown", frozenset(flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset:
    return _cpuinfo()[1]


BF16_CLASSES = ("amx", "avx512_bf16")


def bf16_class() -> str | None:
    """How this CPU does bf16 in hardware: ``amx`` (AMX-BF16 tiles, Intel Sapphire Rapids and later),
    ``avx512_bf16`` (AVX512-BF16 dot products only, e.g. AMD Zen 4), or None (no native bf16: there bf16 is
    emulated and far slower). The two native classes measured differently (bench/RESULTS.md), so ``auto`` treats
    them apart. ``SCIEXPLAIN_BF16_CLASS=none|amx|avx512_bf16`` overrides the answer (tests; a CPU that reports its
    flags wrongly)."""
    env = os.environ.get("SCIEXPLAIN_BF16_CLASS", "").strip()
    if env:
        if env not in (*BF16_CLASSES, "none"):
            raise ValueError(f"SCIEXPLAIN_BF16_CLASS must be none, amx or avx512_bf16, not {env!r}")
        return None if env == "none" else env
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else None


def native_bf16() -> bool:
    """The CPU has bf16 arithmetic in hardware (AMX-BF16 or AVX512-BF16)."""
    return bf16_class() is not None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def llama_cpp_info() -> str | None:
    """llama.cpp's own build string (which SIMD paths it was compiled with), or None where it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    info = llama_cpp.llama_print_system_info()
    return (info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)).strip()


def facts(engine: bool = False) -> dict:
    """The machine, for a metrics file: CPU model and the flags that matter, cores, torch build (and llama.cpp's
    build string with ``engine=True``)."""
    out = {"cpu": short_cpu(cpu_model()), "arch": platform.machine(), "cores": cores(),
           "features": {f: f in cpu_flags() for f in FEATURES}, "bf16": bf16_class()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    if engine:
        out["llama_cpp"] = engine_features(llama_cpp_info())
    return out


def short_cpu(model: str | None) -> str | None:
    """``Intel(R) Xeon(R) Platinum 8480+`` -> ``Intel Xeon Platinum 8480+`` (a metrics value stays a short code)."""
    if not model:
        return model
    model = re.sub(r"\((R|TM|r|tm)\)|\bCPU\b|\bProcessor\b|@.*$", " ", model)
    return " ".join(model.split())[:48]


def engine_features(info: str | None) -> list[str] | None:
    """The SIMD paths in llama.cpp's build string (``CPU : SSE3 AVX AVX2 F16C FMA ...`` or ``AVX = 1 | ...``)."""
    if not info:
        return None
    on = re.findall(r"\b([A-Z0-9_]+) = 1\b", info)
    if not on:
        on = [w for part in info.split("|") if ":" in part for w in part.split(":", 1)[1].split()]
    return sorted(dict.fromkeys(on))
