"""The bench harness runs end to end on a tiny random model and prints its table (the figures themselves are
measured by `make bench` on the real model, never asserted by a timed test)."""
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.e2e
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


def test_results_of_one_bench_merge_into_the_file(tmp_path):
    import json

    from bench.common import write_results

    path = tmp_path / "results.json"
    write_results({"generation": {"ratio": 12.8}, "training": {"share": 0.19}}, path)
    write_results({"training": {"share": 0.38}}, path, merge=True)  # `--only training`
    benches = json.loads(path.read_text())["benches"]
    assert benches["generation"]["ratio"] == 12.8 and benches["training"]["share"] == 0.38
    assert benches["generation"]["date"] and benches["training"]["date"]
    write_results({"training": {"share": 0.5}}, path)  # a whole run replaces the file
    assert list(json.loads(path.read_text())["benches"]) == ["training"]


@pytest.mark.e2e
def test_a_sigterm_unwinds_the_bench_like_ctrl_c(tmp_path):
    """SIGTERM (a time limit) becomes SystemExit, so context managers (llama.cpp's server) exit on the way out."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "bench.run", "--tiny", "--quick", "--only", "generation",
                          "--out", str(tmp_path / "r.json")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    line = p.stdout.readline()
    while line and not line.startswith("generation"):  # the handler is installed before the first bench starts
        line = p.stdout.readline()
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM  # exited through SystemExit, not killed by the signal (-15)
