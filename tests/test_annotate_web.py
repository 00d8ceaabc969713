import http.client
import json
import os
import threading
import time
from pathlib import Path

import pytest

from sciexplain.annotate_web import make_server
from sciexplain.annotation_store import work_dir
from sciexplain.annotations import load_annotations, read_annotations
from sciexplain.sheets import item_hash
from sciexplain.records import UserError, write_jsonl

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
SHEET = [
    {"item_id": "q1", "question": "Why is the sky blue?", "answer_a": "Rayleigh scattering.\n  Short waves scatter more.",
     "answer_b": "Because " + PAYLOAD + " reflects the sea."},
    {"item_id": "q2", "question": "What is entropy?", "answer_a": "Disorder.", "answer_b": "Count of microstates."},
    {"item_id": "q3", "question": "Why do stars twinkle?", "answer_a": "Turbulence.", "answer_b": "They blink."},
]
KEY = [{"item_id": s["item_id"], "a_model": "secret-base-model", "b_model": "secret-sft-model"} for s in SHEET]
H = {s["item_id"]: item_hash(s["question"], s["answer_a"], s["answer_b"]) for s in SHEET}


@pytest.fixture
def served(tmp_path):
    """A running server on a free port; yields (server, port, out_path)."""
    (tmp_path / ".dvc").mkdir()  # a project root, as in a real checkout: temp files go to <root>/.annotate-work
    pair = tmp_path / "compare" / "base_vs_sft"
    write_jsonl(pair / "sheet.jsonl", SHEET)
    write_jsonl(pair / "key.jsonl", KEY)
    out = tmp_path / "annotations" / "base_vs_sft" / "alice.jsonl"
    server = make_server(pair / "sheet.jsonl", out, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, server.server_address[1], out
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hdrs = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


# ------------------------------------------------------------------ plain HTTP API


def test_items_served_without_key_and_with_csp(served):
    _, port, _ = served
    seen = b""
    for path in ("/", "/app.js", "/app.css", "/api/items", "/api/annotations"):
        resp, data = request(port, "GET", path)
        assert resp.status == 200, path
        csp = resp.getheader("Content-Security-Policy")
        assert csp and "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert resp.getheader("X-Content-Type-Options") == "nosniff"
        seen += data
    resp, data = request(port, "GET", "/api/items")
    items = json.loads(data)["items"]
    assert items == [{**it, "item_hash": H[it["item_id"]]} for it in SHEET]
    assert all(set(it) == {"item_id", "item_hash", "question", "answer_a", "answer_b"} for it in items)
    assert resp.getheader("Content-Type").startswith("application/json")
    # the page has no inline script: only the external one
    _, page = request(port, "GET", "/")
    assert b'<script src="/app.js"' in page and page.count(b"<script") == 1 and b"onclick" not in page
    # no route serves files, the key included
    for path in ("/key.jsonl", "/../key.jsonl", "/compare/base_vs_sft/key.jsonl", "/sheet.jsonl", "/api/key",
                 "/%2e%2e/key.jsonl"):
        resp, data = request(port, "GET", path)
        assert resp.status == 404, path
        seen += data
    assert b"secret-" not in seen and b"a_model" not in seen and b"b_model" not in seen


def test_page_files_served_from_the_static_folder_with_their_types(served, tmp_path):
    from sciexplain.annotate_web import STATIC_DIR, load_static

    _, port, _ = served
    for path, name, ctype in (("/", "index.html", "text/html"), ("/app.js", "app.js", "text/javascript"),
                              ("/app.css", "app.css", "text/css")):
        resp, data = request(port, "GET", path)
        assert resp.getheader("Content-Type") == f"{ctype}; charset=utf-8", path
        assert data == (STATIC_DIR / name).read_bytes(), path
    for path in ("/static/annotate/app.js", "/index.html/../app.js", "/annotate/app.css", "/app.js/"):
        assert request(port, "GET", path)[0].status in (404,), path
    with pytest.raises(UserError, match=r"app\.js cannot be read"):
        (tmp_path / "partial").mkdir()
        (tmp_path / "partial" / "index.html").write_text("<!doctype html>")
        load_static(tmp_path / "partial")


def test_annotate_validation_errors(served):
    _, port, out = served
    q1 = {"item_id": "q1", "item_hash": H["q1"]}
    cases = [
        ({"item_id": "nope", "item_hash": H["q1"], "choice": "A", "strength": "Better"}, "unknown item id"),
        ({**q1, "choice": "A", "strength": "Much better"}, "unknown label"),
        ({**q1, "choice": "", "strength": "Better"}, "must be A or B"),
        ({**q1, "choice": "C", "strength": "Unsure"}, "must be A or B"),
        ({**q1, "choice": "A"}, "strength"),
        ({**q1, "choice": "A", "strength": "Better", "comment": 5}, "comment"),
        ({**q1, "choice": "A", "strength": "Better", "a_model": "x"}, "unknown field"),
        ({**q1, "choice": "A", "strength": "Better", "comment": "x" * 5000}, "longer than"),
        ({"item_id": "q1", "choice": "A", "strength": "Better"}, "field 'item_hash': missing"),
        ({**q1, "item_hash": 5, "choice": "A", "strength": "Better"}, "must be a string"),
        (["q1", "A", "Better"], "JSON object"),
        (b"{not json", "invalid JSON"),
        (b"[" * 50_000, "nested too deeply"),
        (b'{"item_id": ' + b"[" * 50_000, "nested too deeply"),
    ]
    for body, message in cases:
        resp, data = request(port, "POST", "/api/annotate", body, {"Content-Type": "application/json"})
        assert resp.status == 400, (body, data)
        assert message in json.loads(data)["error"], (body, data)
    assert not out.exists()  # nothing was written
    # a simple (CSRF-able) form post is refused, as is a foreign Host name (DNS rebinding)
    resp, _ = request(port, "POST", "/api/annotate", b"item_id=q1", {"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    resp, _ = request(port, "GET", "/api/items", headers={"Host": "evil.example:80"})
    assert resp.status == 403
    resp, _ = request(port, "POST", "/api/nothing", {"item_id": "q1"})
    assert resp.status == 404
    assert not out.exists()


def test_annotate_saves_immediately_latest_wins(served):
    _, port, out = served
    resp, data = request(port, "POST", "/api/annotate", {"item_id": "q2", "item_hash": H["q2"], "choice": "b",
                                                         "strength": "better "})
    assert resp.status == 200, data
    assert json.loads(data)["record"] == {"choice": "B", "strength": "Better", "comment": ""}
    assert read_annotations(out, ["q1", "q2", "q3"]) == {"q2": ("B", "Better", "")}
    assert json.loads(out.read_text())["item_hash"] == H["q2"]  # the row is bound to what was shown
    resp, _ = request(port, "POST", "/api/annotate", {"item_id": "q2", "item_hash": H["q2"], "choice": "",
                                                      "strength": "Unsure", "comment": "<b>hm</b>"})
    assert resp.status == 200
    assert read_annotations(out, ["q1", "q2", "q3"]) == {"q2": ("", "Unsure", "<b>hm</b>")}
    _, data = request(port, "GET", "/api/annotations")
    assert json.loads(data)["annotations"] == {"q2": {"choice": "", "strength": "Unsure", "comment": "<b>hm</b>"}}


# ------------------------------------------------------------------ real browser


@pytest.fixture
def driver(tmp_path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.skip(f"browser test needs {' and '.join(missing)} (apt-get install chromium chromium-driver)")
    from selenium import webdriver  # a required test dependency: fail, don't skip, when missing
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.browser
def test_browser_annotation_flow(served, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _, port, out = served
    ids = [s["item_id"] for s in SHEET]
    text = lambda el_id: driver.find_element(By.ID, el_id).text  # noqa: E731
    current = lambda: driver.execute_script("return document.body.dataset.itemId || ''")  # noqa: E731

    def keys(*ks):
        ActionChains(driver).send_keys(*ks).perform()

    def saved():
        return read_annotations(out, ids) if out.exists() else {}

    def load():
        driver.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready === '1'"), what="page ready")

    load()
    # the untrusted payload is shown as literal text and never runs
    assert current() == "q1"
    assert text("question") == "Why is the sky blue?"
    assert PAYLOAD in text("answer-b")
    assert driver.find_element(By.ID, "answer-b").get_property("textContent") == SHEET[0]["answer_b"]
    assert driver.find_elements(By.CSS_SELECTOR, "#answer-b *") == []  # no elements were created
    assert driver.find_elements(By.CSS_SELECTOR, "main img") == []
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    assert driver.execute_script("return getComputedStyle(document.getElementById('answer-a')).whiteSpace") == "pre-wrap"
    assert text("progress") == "0 / 3 annotated"
    assert "Item 1 of 3" in text("position")

    # Enter before choosing a strength saves nothing
    keys("b", Keys.ENTER)
    time.sleep(0.3)
    assert not out.exists()
    assert "strength" in text("status")

    # b + 2 (Better) + Enter: written at once, page moves to the next open item
    keys("2", Keys.ENTER)
    wait_for(lambda: saved().get("q1"), what="q1 saved")
    assert saved() == {"q1": ("B", "Better", "")}
    wait_for(lambda: current() == "q2", what="advance to q2")
    assert text("progress") == "1 / 3 annotated"

    # Unsure without a side, with a comment typed in the box (c focuses it, Escape leaves it)
    keys("4", "c")
    wait_for(lambda: driver.switch_to.active_element.get_attribute("id") == "comment", what="comment focus")
    keys("both ok ab12", Keys.ESCAPE, Keys.ENTER)
    wait_for(lambda: saved().get("q2"), what="q2 saved")
    assert saved() == {"q1": ("B", "Better", ""), "q2": ("", "Unsure", "both ok ab12")}
    wait_for(lambda: current() == "q3", what="advance to q3")
    assert text("progress") == "2 / 3 annotated"

    # reload: resumes at the first unannotated item with the right progress
    load()
    assert current() == "q3"
    assert text("progress") == "2 / 3 annotated"
    assert "Item 3 of 3" in text("position")
    assert driver.execute_script("return typeof window.__pwned") == "undefined"

    # navigate back (p / ArrowLeft): earlier answers are shown selected; revise q1 (latest wins)
    keys("p")
    wait_for(lambda: current() == "q2", what="back to q2")
    assert driver.find_element(By.ID, "comment").get_property("value") == "both ok ab12"
    keys(Keys.ARROW_LEFT)
    wait_for(lambda: current() == "q1", what="back to q1")
    assert "selected" in driver.find_element(By.ID, "choose-b").get_attribute("class")
    assert "selected" in driver.find_element(By.ID, "strength-2").get_attribute("class")
    keys("a", "1", Keys.ENTER)
    wait_for(lambda: saved().get("q1", ("",))[0] == "A", what="q1 revised")
    wait_for(lambda: current() == "q3", what="jump to open q3")
    keys("a", "3", Keys.ENTER)
    wait_for(lambda: len(saved()) == 3, what="q3 saved")
    assert saved() == {"q1": ("A", "Significantly better", ""), "q2": ("", "Unsure", "both ok ab12"),
                       "q3": ("A", "Slightly better", "")}
    wait_for(lambda: text("progress") == "3 / 3 annotated", what="progress 3/3")
    assert "All items annotated" in text("status")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3  # one line per item, the latest answer
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
    assert errors == [], errors


@pytest.mark.browser
def test_browser_shows_the_annotators_share_and_progress(tmp_path, driver):
    """Several annotators: the page lists only this annotator's items, progress is done / assigned."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from sciexplain.annotate_web import assign_items

    sheet = [{"item_id": f"i{k:02d}", "question": f"Question {k}?", "answer_a": "A text.", "answer_b": "B text.",
              "finished_a": True, "finished_b": k % 2 == 0} for k in range(12)]
    path = tmp_path / "base_vs_sft" / "sheet.jsonl"
    write_jsonl(path, sheet)
    names = ["alice", "bob", "carol", "dave"]
    mine = assign_items([s["item_id"] for s in sheet], names, 0.25)["assigned"]["carol"]
    out = tmp_path / "annotations" / "base_vs_sft" / "carol.jsonl"
    server = make_server(path, out, "127.0.0.1", 0, quiet=True, annotator="carol", annotators=names, overlap=0.25)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready === '1'"), what="page ready")
        text = lambda el_id: driver.find_element(By.ID, el_id).text  # noqa: E731
        assert text("assignment") == f"carol: {len(mine)} of 12 sheet items (3 shared by all 4 annotators)"
        assert text("progress") == f"0 / {len(mine)} annotated"
        served = driver.execute_script("return fetch('/api/items').then(r => r.json())")
        assert all(set(it) == {"item_id", "item_hash", "question", "answer_a", "answer_b"}  # no flags
                   for it in served["items"])
        assert driver.execute_script("return document.body.dataset.itemId") == mine[0]
        ActionChains(driver).send_keys("a", "2", Keys.ENTER).perform()
        wait_for(lambda: out.exists() and read_annotations(out, None), what="saved")
        wait_for(lambda: text("progress") == f"1 / {len(mine)} annotated", what="progress")
        assert list(read_annotations(out, None)) == [mine[0]]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ------------------------------------------------------------------ bound to the sheet; one writer per file


def test_votes_for_another_version_of_the_sheet_are_refused(served, tmp_path):
    server, port, out = served
    resp, data = request(port, "POST", "/api/annotate", {"item_id": "q1", "item_hash": "0" * 16, "choice": "A",
                                                         "strength": "Better"})
    assert resp.status == 409 and "reload the page" in json.loads(data)["error"]
    # the sheet is rewritten on disk while the server runs: votes on a changed item are refused, others go on
    sheet = server.app.sheet_path
    write_jsonl(sheet, [dict(SHEET[0], answer_a="Rewritten."), *SHEET[1:]])
    resp, data = request(port, "POST", "/api/annotate", {"item_id": "q1", "item_hash": H["q1"], "choice": "A",
                                                         "strength": "Better"})
    assert resp.status == 409 and "changed on disk" in json.loads(data)["error"]
    resp, _ = request(port, "POST", "/api/annotate", {"item_id": "q2", "item_hash": H["q2"], "choice": "A",
                                                      "strength": "Better"})
    assert resp.status == 200 and list(read_annotations(out, None)) == ["q2"]


def test_stale_and_hashless_files_at_start(tmp_path):
    pair = tmp_path / "base_vs_sft"
    write_jsonl(pair / "sheet.jsonl", SHEET)
    out = tmp_path / "ann" / "alice.jsonl"
    write_jsonl(out, [{"item_id": "q1", "item_hash": "0" * 16, "choice": "A", "strength": "Better", "comment": ""},
                      {"item_id": "q2", "item_hash": H["q2"], "choice": "B", "strength": "Better", "comment": ""}])
    server = make_server(pair / "sheet.jsonl", out, port=0, quiet=True)
    try:
        assert server.app.stale == ["q1"] and server.app.annotations() == {
            "q2": {"choice": "B", "strength": "Better", "comment": ""}}  # the stale answer shows as not annotated
        server.app.annotate({"item_id": "q1", "item_hash": H["q1"], "choice": "B", "strength": "Unsure"})
        got = load_annotations(out, H)
        assert got.stale == [] and set(got.annotations) == {"q1", "q2"}
    finally:
        server.server_close()
    write_jsonl(out, [{"item_id": "q1", "choice": "A", "strength": "Better"}])
    with pytest.raises(UserError, match="line 1, field 'item_hash'.*python -m sciexplain.migrate_annotations"):
        make_server(pair / "sheet.jsonl", out, port=0, quiet=True)


def test_a_second_server_on_the_same_file_refuses_to_start(served):
    from click.testing import CliRunner

    from sciexplain.annotate_web import main

    server, _, out = served
    with pytest.raises(UserError, match="already open in another annotation server"):
        make_server(server.app.sheet_path, out, port=0, quiet=True)
    r = CliRunner().invoke(main, ["--sheet", str(server.app.sheet_path), "--out", str(out), "--port", "0"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and str(out) in r.output, r.output
    # another annotator's file next to it is not locked
    other = make_server(server.app.sheet_path, out.with_name("bob.jsonl"), port=0, quiet=True)
    other.server_close()


def test_concurrent_saves_are_all_on_disk(tmp_path):
    (tmp_path / ".dvc").mkdir()
    sheet = [{"item_id": f"i{k:03d}", "question": f"Question {k}?", "answer_a": f"A {k}", "answer_b": f"B {k}"}
             for k in range(160)]
    write_jsonl(tmp_path / "pair" / "sheet.jsonl", sheet)
    out = tmp_path / "data" / "annotations" / "pair" / "alice.jsonl"
    server = make_server(tmp_path / "pair" / "sheet.jsonl", out, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    acked, failed = {}, []

    def client(part):
        for it in part:
            body = {"item_id": it["item_id"], "item_hash": item_hash(it["question"], it["answer_a"], it["answer_b"]),
                    "choice": "AB"[int(it["item_id"][1:]) % 2], "strength": "Better", "comment": it["question"]}
            try:
                resp, _ = request(server.server_address[1], "POST", "/api/annotate", body)
            except OSError as e:
                failed.append(repr(e))
                continue
            if resp.status == 200:
                acked[it["item_id"]] = (body["choice"], "Better", it["question"])
            else:
                failed.append(resp.status)

    try:
        clients = [threading.Thread(target=client, args=(sheet[k::8],)) for k in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(120)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert failed == [] and len(acked) == 160
    on_disk = read_annotations(out, None)
    assert on_disk == acked and len(out.read_text().splitlines()) == 160
    assert [p.name for p in out.parent.iterdir()] == ["alice.jsonl"]  # no temp or lock file beside it
    assert [p.name for p in work_dir(out).iterdir()] == ["alice.jsonl.lock"]


# ------------------------------------------------------------------ hardening


def test_a_stalled_client_is_dropped_and_others_are_served(tmp_path):
    import socket

    write_jsonl(tmp_path / "p" / "sheet.jsonl", SHEET)
    server = make_server(tmp_path / "p" / "sheet.jsonl", tmp_path / "a" / "alice.jsonl", port=0, quiet=True,
                         timeout=0.5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        silent = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"POST /api/annotate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"item_id\"")  # promises 100 bytes, sends 11
        t0 = time.monotonic()
        resp, _ = request(port, "GET", "/api/items")  # others are served meanwhile
        assert resp.status == 200
        for sock in (silent, partial):
            sock.settimeout(10)
            assert sock.recv(1000) == b""  # the server hung up on it
            sock.close()
        assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_malformed_bodies_get_a_clean_400_and_no_traceback(tmp_path, capfd):
    write_jsonl(tmp_path / "p" / "sheet.jsonl", SHEET)
    out = tmp_path / "a" / "alice.jsonl"
    server = make_server(tmp_path / "p" / "sheet.jsonl", out, port=0, quiet=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        for body in (b"[" * 60_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, b"\xff\xfe", b"null", b"{}"):
            resp, data = request(port, "POST", "/api/annotate", body, {"Content-Type": "application/json"})
            assert resp.status == 400 and json.loads(data)["error"], body[:20]
        resp, data = request(port, "POST", "/api/annotate", b"{" + b" " * 70_000 + b"}",
                             {"Content-Type": "application/json"})
        assert resp.status == 413
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "RecursionError" not in err
    assert not out.exists()


def test_ipv6_loopback(tmp_path):
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    write_jsonl(tmp_path / "p" / "sheet.jsonl", SHEET)
    server = make_server(tmp_path / "p" / "sheet.jsonl", tmp_path / "a" / "alice.jsonl", host="::1", port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("::1", server.server_address[1], timeout=10)
        conn.request("GET", "/api/items")  # Host: [::1]:port, a loopback name
        resp = conn.getresponse()
        assert resp.status == 200 and len(json.loads(resp.read())["items"]) == 3
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ------------------------------------------------------------------ fault injection: kill -9 mid-stream


def _start(sheet, out, cwd):
    """A real annotation server process on a free port; returns (process, port)."""
    import re
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-u", "-m", "sciexplain.annotate_web", "--sheet", str(sheet), "--out",
                             str(out), "--port", "0"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"Open http://127\.0\.0\.1:(\d+)/", line)
        if m:
            return proc, int(m.group(1))
    proc.wait(10)
    raise AssertionError(f"server did not start: {''.join(lines)} {proc.stderr.read()}")


def test_kill_9_mid_stream_loses_no_acknowledged_save(tmp_path):
    import signal
    import subprocess
    import sys

    (tmp_path / ".dvc").mkdir()
    sheet = [{"item_id": f"i{k:03d}", "question": f"Question {k}?", "answer_a": f"A {k}", "answer_b": f"B {k}"}
             for k in range(400)]
    sheet_path = tmp_path / "data" / "compare" / "pair" / "sheet.jsonl"
    write_jsonl(sheet_path, sheet)
    out = tmp_path / "data" / "annotations" / "pair" / "alice.jsonl"
    proc, port = _start(sheet_path, out, tmp_path)
    acked, stop = {}, threading.Event()
    todo = iter(sheet)
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            with lock:
                it = next(todo, None)
            if it is None:
                return
            body = {"item_id": it["item_id"], "item_hash": item_hash(it["question"], it["answer_a"], it["answer_b"]),
                    "choice": "A", "strength": "Slightly better", "comment": it["item_id"] * 700}  # ~2.8 kB a row
            try:
                resp, data = request(port, "POST", "/api/annotate", body)
            except (OSError, http.client.HTTPException):
                return  # the server died under this request: not acknowledged
            if resp.status == 200:
                with lock:
                    acked[it["item_id"]] = ("A", "Slightly better", body["comment"])

    try:
        # a second server process on the same file refuses at once, with one line
        second = subprocess.run([sys.executable, "-m", "sciexplain.annotate_web", "--sheet", str(sheet_path), "--out",
                                 str(out), "--port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert second.returncode == 1 and len(second.stderr.strip().splitlines()) == 1
        assert "already open in another annotation server" in second.stderr

        clients = [threading.Thread(target=client) for _ in range(6)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 120
        while len(acked) < 120 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: six clients are saving
        n_acked_at_kill = len(acked)
        for c in clients:
            c.join(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert n_acked_at_kill >= 120 and len(acked) < len(sheet), "the kill did not land mid-stream"
    on_disk = read_annotations(out, None)  # a complete, valid file
    lost = {i: v for i, v in acked.items() if on_disk.get(i) != v}
    assert lost == {}, f"{len(lost)} acknowledged saves lost"
    assert sorted(p.name for p in out.parent.iterdir()) == ["alice.jsonl"]  # nothing hidden in the DVC dependency
    left = sorted(p.name for p in work_dir(out).glob(".*.tmp"))

    # restart: the lock of the dead process is gone, its temp files are removed, every saved answer is served
    proc, port = _start(sheet_path, out, tmp_path)
    try:
        resp, data = request(port, "GET", "/api/annotations")
        assert resp.status == 200 and set(json.loads(data)["annotations"]) == set(on_disk)
        assert list(work_dir(out).glob(".*.tmp")) == [] and sorted(p.name for p in out.parent.iterdir()) == ["alice.jsonl"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        err = proc.stderr.read()
    assert all(f"removed {work_dir(out) / name}" in err for name in left), (left, err)
    print(f"kill -9 after {n_acked_at_kill} acknowledged saves ({len(acked)} in all, {len(on_disk)} on disk, "
          f"{len(left)} temp files left and removed at restart)")


def test_a_failed_write_is_reported_not_acknowledged(served, monkeypatch):
    import sciexplain.annotate_web as web

    _, port, out = served

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(web, "append_annotation", full)
    resp, data = request(port, "POST", "/api/annotate", {"item_id": "q1", "item_hash": H["q1"], "choice": "A",
                                                         "strength": "Better"})
    assert resp.status == 500 and "No space left on device" in json.loads(data)["error"] and not out.exists()
