"""The web viewer: its JSON API, and the real page in headless Chromium (Debian's package).

The browser test loads the private key file into the page, filters, opens a conversation and
reads the text decrypted *in the browser*; then loads a wrong key and sees a clear message. A
spy middleware records every request the page makes, and the test checks that neither key nor
any prompt text ever reached the server. Screenshots go to ``test-output/`` at the repo root.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from logs.sealing import KeyPair, seal, write_key_pair
from logs.store import LogStore, Recipient
from logs.viewer import STATIC, build_app
from tests.support.logdb import LogDB, make_record
from tests.support.procs import free_port, repo_root

CANARY = f"canary-{uuid.uuid4().hex}"
OUTPUT = repo_root() / "test-output"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@dataclass
class Viewer:
    url: str
    store: LogStore
    key: Path
    other_key: Path
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)


@pytest.fixture
def viewer(log_db: LogDB, tmp_path: Path) -> Iterator[Viewer]:
    key, other = tmp_path / "admin.key", tmp_path / "other.key"
    write_key_pair(KeyPair.generate(), key, tmp_path / "admin.pub")
    write_key_pair(KeyPair.generate(), other, tmp_path / "other.pub")
    store = LogStore(log_db.url, [Recipient.from_file(tmp_path / "admin.pub")])
    t = time.time() - 7200
    store.write(
        make_record(
            f"Summarise the Q3 numbers for ACME {CANARY}",
            conversation="conv-browser",
            timestamp=t,
            topics={"FINANCIAL": 0.7},
            response=f"Here is the summary {CANARY}-answer",
        )
    )
    store.write(
        make_record(
            f"Now add Jane Roe's SSN 219-09-9999 {CANARY}",
            conversation="conv-browser",
            timestamp=t + 60,
            topics={"PII": 0.95},
            action="block",
            response=None,
        )
    )
    store.write(make_record("unrelated", conversation="conv-bob", user="bob", groups=("sales",), timestamp=t + 90))
    store.write(make_record("search", conversation="conv-gem", app="gemini", timestamp=t + 3700))
    requests: list[tuple[str, str, bytes]] = []

    @web.middleware
    async def spy(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        requests.append((request.method, request.path_qs, await request.read()))
        return await handler(request)

    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(store, middlewares=[spy]), access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield Viewer(f"http://127.0.0.1:{port}", store, key, other, requests)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()


def _get(viewer: Viewer, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(viewer.url + path, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _post(
    viewer: Viewer, path: str, body: bytes, content_type: str, origin: str | None = None, *, csrf: bool = True
) -> int:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": content_type}
    if csrf:
        headers["X-PromptFence-Viewer"] = "1"
    if origin:
        headers["Origin"] = origin
    req = urllib.request.Request(viewer.url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_api_serves_metadata_and_sealed_blobs_only(viewer: Viewer) -> None:
    status, data, headers = _get(viewer, "/api/records?app=chatgpt&user=alice")
    assert status == 200 and data["total"] == 2
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert {r["metadata"]["conversation_id"] for r in data["records"]} == {"conv-browser"}
    status, conv, _ = _get(viewer, "/api/conversations/conv-browser")
    assert [r["metadata"]["decision"]["action"] for r in conv["records"]] == ["allow", "block"]
    assert all(len(r["sealed"]) == 1 for r in conv["records"])
    assert _get(viewer, "/api/records?topic=PII&min_confidence=high")[1]["total"] == 1
    assert _get(viewer, "/api/records?dlp_match=false")[1]["total"] == 2
    assert _get(viewer, "/api/records?group=sales")[1]["total"] == 1
    assert _get(viewer, "/api/records?topic=no-pe")[0] == 400  # not even a custom topic name
    assert _get(viewer, "/api/conversations/none")[0] == 404
    stats = _get(viewer, "/api/stats?by=app&bucket=hour")[1]
    assert sum(stats["series"]["chatgpt"]) == 3 and sum(stats["series"]["gemini"]) == 1
    assert _get(viewer, "/api/facets")[1]["app"] == ["chatgpt", "gemini"]
    everything = json.dumps([_get(viewer, p)[1] for p in ("/api/records", "/api/conversations/conv-browser")])
    assert CANARY not in everything


def test_feedback_api_refuses_cross_site_posts(viewer: Viewer) -> None:
    rid = viewer.store.find()[-1].record_id
    path = f"/api/records/{rid}/feedback"
    body = json.dumps({"topic": "FINANCIAL", "verdict": "false_positive"}).encode()
    assert _post(viewer, path, body, "text/plain") == 415  # what a cross-site form could send
    assert _post(viewer, path, body, "application/json", origin="https://evil.example") == 403
    assert _post(viewer, path, body, "application/json", csrf=False) == 403  # no custom header: no preflight
    assert _post(viewer, path, b'{"topic": "PII", "verdict": "maybe"}', "application/json") == 400
    assert _post(viewer, "/api/records/nope/feedback", body, "application/json") == 404
    assert _post(viewer, path, body, "application/json", origin=viewer.url) == 201
    assert [r.source for r in viewer.store.feedback_reports()] == ["viewer"]


def test_vendored_cipher_library_matches_its_recorded_hashes() -> None:
    vendor = STATIC / "vendor" / "noble-ciphers"
    table = (vendor / "VENDORED.md").read_text()
    assert "2.4.0" in table and "MIT" in table
    for name in ("chacha.js", "_arx.js", "_poly1305.js", "utils.js", "LICENSE"):
        digest = hashlib.sha256((vendor / name).read_bytes()).hexdigest()
        assert f"| `{name}` | `{digest}` |" in table, f"{name} differs from what VENDORED.md records"
    for page in ("index.html", "app.js", "hpke.js"):
        text = (STATIC / page).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # no CDN


# --- the real page in headless Chromium ------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make install installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the element may not be there yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last!r})")


def test_browser_filters_opens_a_conversation_and_decrypts_locally(viewer: Viewer, browser: Any, log_db: LogDB) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    OUTPUT.mkdir(exist_ok=True)
    browser.get(viewer.url + "/")
    _wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart svg rect"), "the chart")
    legend = browser.find_element(By.CSS_SELECTOR, "#chart .legend").text
    assert "chatgpt (3)" in legend and "gemini (1)" in legend and "undefined" not in legend
    assert len(browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")) == 4

    browser.find_element(By.ID, "key-file").send_keys(str(viewer.key))
    _wait(lambda: "loaded" in browser.find_element(By.ID, "key-status").text, "the key to load")

    Select(browser.find_element(By.ID, "f-app")).select_by_value("chatgpt")
    browser.find_element(By.ID, "f-user").send_keys("alice")
    browser.find_element(By.ID, "apply").click()
    rows = _wait(
        lambda: (r := browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")) and len(r) == 2 and r,
        "the filtered list",
    )
    assert {r.get_attribute("data-conversation-id") for r in rows} == {"conv-browser"}
    rows[0].click()
    # The page decrypts and appends one turn at a time: wait for both.
    users = _wait(
        lambda: (u := browser.find_elements(By.CSS_SELECTOR, "#conv-records .msg-user")) and len(u) >= 2 and u,
        "decrypted prompts",
    )
    assert [u.text.split("\n", 1)[1] for u in users] == [
        f"Summarise the Q3 numbers for ACME {CANARY}",
        f"Now add Jane Roe's SSN 219-09-9999 {CANARY}",
    ]
    answer = browser.find_element(By.CSS_SELECTOR, "#conv-records .msg-assistant").text
    assert f"Here is the summary {CANARY}-answer" in answer
    assert "Blocked" in browser.find_element(By.CSS_SELECTOR, "#conv-records .msg-blocked").text
    browser.save_screenshot(str(OUTPUT / f"viewer-conversation-{log_db.backend}.png"))

    fp = browser.find_element(By.CSS_SELECTOR, 'button[data-topic="PII"][data-verdict="false_positive"]')
    fp.click()
    _wait(lambda: "recorded" in fp.text, "the feedback to be recorded")
    [report] = viewer.store.feedback_reports()
    assert (report.topic.value, report.verdict, report.source) == ("PII", "false_positive", "viewer")

    browser.find_element(By.ID, "key-file").send_keys(str(viewer.other_key))
    errors = _wait(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#conv-records .decrypt-error"), "the wrong-key message"
    )
    assert "Wrong key" in errors[0].text and "sealed to key id" in errors[0].text
    assert not browser.find_elements(By.CSS_SELECTOR, "#conv-records .msg-user")
    browser.save_screenshot(str(OUTPUT / f"viewer-wrong-key-{log_db.backend}.png"))

    # Nothing the page sent carried a key or any prompt text.
    secrets = [CANARY.encode()]
    for key_file in (viewer.key, viewer.other_key):
        raw = base64.b64decode(json.loads(key_file.read_text())["private_key"])
        secrets += [base64.b64encode(raw), raw.hex().encode(), base64.urlsafe_b64encode(raw).rstrip(b"=")]
    assert viewer.requests
    for method, path, body in viewer.requests:
        for secret in secrets:
            assert secret not in path.encode() + body, f"{method} {path} carried a secret"


def test_browser_hpke_opens_what_python_sealed(viewer: Viewer, browser: Any) -> None:
    """hpke.js (WebCrypto X25519 + HKDF, noble ChaCha20-Poly1305) against logs.sealing, many sizes."""
    pair = KeyPair.generate()
    texts = ["", "a", "héllo wörld ✓ 日本語", "x" * 100_000]
    blobs = [seal(pair.public_key, t.encode()) for t in texts]
    raw = bytearray(base64.b64decode(blobs[1]))
    raw[-1] ^= 1
    tampered = base64.b64encode(bytes(raw)).decode()
    browser.get(viewer.url + "/")
    result = browser.execute_async_script(
        """
        const [priv, blobs, tampered, done] = arguments;
        import('/static/hpke.js').then(async (h) => {
          const key = await h.loadPrivateKey(priv);
          const out = [];
          for (const b of blobs) out.push(new TextDecoder().decode(await h.openSealed(key, b)));
          let error = null;
          try { await h.openSealed(key, tampered); } catch (e) { error = e.constructor.name + ': ' + e.message; }
          done({keyId: key.keyId, out, error});
        }).catch((e) => done({fatal: String(e)}));
        """,
        base64.b64encode(pair.private_key).decode(),
        blobs,
        tampered,
    )
    assert "fatal" not in result, result
    assert result["keyId"] == pair.key_id
    assert result["out"] == texts
    assert result["error"].startswith("OpenError: Authentication failed")
