"""The bench harness runs end to end on a tiny random model and prints its table (the figures themselves are
measured by `make bench` on the real model, never asserted by a timed test)."""
import subprocess
import sys

from conftest import ROOT


def test_bench_harness_prints_the_table_on_a_tiny_model(tmp_path):
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--quick", "--only", "generation", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert any(l.startswith("generation ") and "study loop" in l for l in lines), r.stdout
    assert any("best: " in l and ">= 10x" in l for l in lines), r.stdout
    assert any(l.startswith("generation (stopping) ") and "backend loop" in l for l in lines), r.stdout
    assert any("roofline" in l and ">= 50%" in l for l in lines), r.stdout
    assert not out.exists()  # --tiny never overwrites the committed results
