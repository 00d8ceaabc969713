import http.client
import json
import os
import threading
import time

import pytest

from sciexplain.annotate_web import make_server
from sciexplain.annotations import read_annotations
from sciexplain.io import write_jsonl

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


@pytest.fixture
def served(tmp_path):
    """A running server on a free port; yields (server, port, out_path)."""
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
    assert items == SHEET and all(set(it) == {"item_id", "question", "answer_a", "answer_b"} for it in items)
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


def test_annotate_validation_errors(served):
    _, port, out = served
    cases = [
        ({"item_id": "nope", "choice": "A", "strength": "Better"}, "unknown item id"),
        ({"item_id": "q1", "choice": "A", "strength": "Much better"}, "unknown label"),
        ({"item_id": "q1", "choice": "", "strength": "Better"}, "must be A or B"),
        ({"item_id": "q1", "choice": "C", "strength": "Unsure"}, "must be A or B"),
        ({"item_id": "q1", "choice": "A"}, "strength"),
        ({"item_id": "q1", "choice": "A", "strength": "Better", "comment": 5}, "comment"),
        ({"item_id": "q1", "choice": "A", "strength": "Better", "a_model": "x"}, "unknown field"),
        ({"item_id": "q1", "choice": "A", "strength": "Better", "comment": "x" * 5000}, "longer than"),
        (["q1", "A", "Better"], "JSON object"),
        (b"{not json", "invalid JSON"),
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
    resp, data = request(port, "POST", "/api/annotate", {"item_id": "q2", "choice": "b", "strength": "better "})
    assert resp.status == 200, data
    assert json.loads(data)["record"] == {"choice": "B", "strength": "Better", "comment": ""}
    assert read_annotations(out, ["q1", "q2", "q3"]) == {"q2": ("B", "Better", "")}
    resp, _ = request(port, "POST", "/api/annotate", {"item_id": "q2", "choice": "", "strength": "Unsure",
                                                      "comment": "<b>hm</b>"})
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
        assert all(set(it) == {"item_id", "question", "answer_a", "answer_b"} for it in served["items"])  # no flags
        assert driver.execute_script("return document.body.dataset.itemId") == mine[0]
        ActionChains(driver).send_keys("a", "2", Keys.ENTER).perform()
        wait_for(lambda: out.exists() and read_annotations(out, None), what="saved")
        wait_for(lambda: text("progress") == f"1 / {len(mine)} annotated", what="progress")
        assert list(read_annotations(out, None)) == [mine[0]]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
