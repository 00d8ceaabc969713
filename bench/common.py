"""What every bench shares: the machine's fp32 matmul peak (the roofline), timing, model FLOPs, results."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS_JSON = Path(__file__).resolve().parent / "results.json"


def timed(fn):
    """``(result, seconds)`` of ``fn()``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def matmul_peak_gflops(n: int = 1024, reps: int = 8, threads: int | None = None) -> float:
    """fp32 GFLOP/s of an ``n``x``n`` @ ``n``x``n`` matmul, best of ``reps`` (the compute roofline here)."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = min(timed(lambda: torch.mm(a, b))[1] for _ in range(reps))
    finally:
        torch.set_num_threads(old)
    return 2 * n**3 / best / 1e9


def flops_per_token(model) -> float:
    """Forward FLOPs per token: 2 x parameters (the tied embedding counted once: it is the LM head's matmul)."""
    return 2.0 * sum(p.numel() for p in model.parameters())


def machine() -> dict:
    """The machine a result came from: CPU model and the flags that matter, cores, torch and llama.cpp builds."""
    import torch

    from sciexplain.machine import facts

    return {**facts(engine=True), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "host": platform.node()}


def write_results(benches: dict, path: Path = RESULTS_JSON, merge: bool = False) -> Path:
    """``bench/results.json``: one object per bench (ratio, target, met, raw figures, the date it ran), atomically.
    ``merge``: the benches not run now keep their earlier figures."""
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    here = machine()
    benches = {name: {**b, "date": now, "machine": here} for name, b in benches.items()}  # a figure names its machine
    if merge and path.exists():
        old = json.loads(path.read_text())
        kept = {name: {"date": old.get("date"), "machine": old.get("machine"), **b}
                for name, b in old.get("benches", {}).items()}
        benches = {**kept, **benches}
    doc = {"date": now, "machine": here, "benches": benches}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def table(rows: list[tuple]) -> str:
    """A plain aligned table; ``rows[0]`` is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
