"""Issue 18: the evidence an analyst needs, in the real viewer page (headless Chromium).

A blocked record with an SSN and an e-mail address (after a non-BMP character, so code-point
offsets and the browser's UTF-16 offsets differ), a fail-closed block (the inspector was
unreachable), a Share record and a low-confidence one are stored in a real SQLite log. The page
decrypts the blocked one with the admin key *in the browser* and must mark exactly the SSN and
the e-mail spans with their kinds and scores, list every detector with its latency (and the
failed one with its reason), the rules, what the user was shown and the obfuscation undone;
the wrong key must say which key the record is sealed to and that this one does not open it
(never "loaded" / "Decrypted in this browser"); the fail-closed record says why. A spy on the
server checks that no prompt text and no key ever reached it. Screenshots go to
``test-output/console/`` (gitignored).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from logs.sealing import KeyPair, write_key_pair
from logs.store import LogStore, Recipient
from logs.viewer import build_app
from promptfence.core import (
    Action,
    Decision,
    DetectorRun,
    DetectorStatus,
    Finding,
    Identity,
    Inspection,
    LogRecord,
    NeighbourRef,
    Operation,
    OperationKind,
    Payload,
    Span,
    Topic,
)
from tests.support.procs import free_port, repo_root

CANARY = f"canary-{uuid.uuid4().hex}"
OUTPUT = repo_root() / "test-output" / "console"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SSN, EMAIL = "219-09-9999", "jane.roe@example.com"
PROMPT = f"\U0001f4ce Update Jane Roe: {EMAIL}, SSN {SSN}. {CANARY}"
USER_MESSAGE = "PromptFence blocked this prompt: it contains personal data (PII)."
FAILED_REASON = "unreachable: ClientConnectorError"


def _span(text: str, value: str) -> Span:
    start = text.index(value)  # Python indexes code points: what the inspector reports
    return Span(start, start + len(value))


def _record(
    prompt: str,
    inspection: Inspection,
    decision: Decision,
    *,
    conversation: str | None,
    kind: OperationKind = OperationKind.SEND_PROMPT,
    timestamp: float,
) -> LogRecord:
    op = Operation(
        "chatgpt",
        "genai_chat",
        "chatgpt.send_prompt" if kind is OperationKind.SEND_PROMPT else "chatgpt.share",
        kind,
        Identity("alice", ("eng",)),
        prompt=prompt,
        conversation_id=conversation,
    )
    return LogRecord(
        str(uuid.uuid4()), timestamp, op, inspection, decision, Payload(prompt, None), answer_status="none"
    )


def records(t: float) -> tuple[LogRecord, LogRecord, LogRecord, LogRecord]:
    """The four records both console tests read: blocked with evidence, fail-closed, Share, low."""
    evidence = Inspection(
        findings=(
            Finding("presidio", "pii.EMAIL_ADDRESS", Topic.PII, 0.7, _span(PROMPT, EMAIL), "EmailRecognizer"),
            Finding("presidio", "pii.US_SSN", Topic.PII, 0.85, _span(PROMPT, SSN), "UsSsnRecognizer"),
        ),
        topics={Topic.PII: 0.95},
        runs=(
            DetectorRun("presidio", DetectorStatus.OK, 12.5),
            DetectorRun("secrets", DetectorStatus.OK, 0.8),
            DetectorRun("intent", DetectorStatus.TIMEOUT, 5000.0, "no answer within 5s"),
        ),
        elapsed_ms=5010.0,
        transforms=("base64",),
        neighbours=(NeighbourRef(17, 0.91, Topic.PII, 0.05, "true_positive"),),
    )
    blocked = _record(
        PROMPT,
        evidence,
        Decision(Action.BLOCK, ("block-pii-in-prompts",), "default", USER_MESSAGE, "PII high"),
        conversation="conv-evidence",
        timestamp=t,
    )
    failed = _record(
        f"anything {CANARY}",
        Inspection.failure("inspector", DetectorStatus.UNAVAILABLE, FAILED_REASON, 3.0),
        Decision(Action.BLOCK, (), "default", "PromptFence could not check this prompt.", "on_error: block"),
        conversation="conv-failed",
        timestamp=t + 60,
    )
    shared = _record(
        "",
        Inspection((), {}, ()),
        Decision(Action.ALLOW, (), "default"),
        conversation="conv-shared-42",
        kind=OperationKind.SHARE,
        timestamp=t + 120,
    )
    low = _record(
        f"maybe a name {CANARY}",
        Inspection((), {Topic.PII: 0.35, Topic.FINANCIAL: 0.1}, (DetectorRun("presidio", DetectorStatus.OK, 1.0),)),
        Decision(Action.ALLOW, (), "default"),
        conversation="conv-low",
        timestamp=t + 180,
    )
    return blocked, failed, shared, low


@dataclass
class Site:
    url: str
    store: LogStore
    key: Path
    other_key: Path
    admin_key_id: str
    blocked: str
    failed: str
    shared: str
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    admin, other = KeyPair.generate(), KeyPair.generate()
    write_key_pair(admin, tmp_path / "admin.key", tmp_path / "admin.pub")
    write_key_pair(other, tmp_path / "other.key", tmp_path / "other.pub")
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}", [Recipient.from_file(tmp_path / "admin.pub")])
    blocked, failed, shared, low = records(time.time() - 600)
    for record in (blocked, failed, shared, low):
        store.write(record)
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
        yield Site(
            f"http://127.0.0.1:{port}",
            store,
            tmp_path / "admin.key",
            tmp_path / "other.key",
            admin.key_id,
            blocked.record_id,
            failed.record_id,
            shared.record_id,
            requests,
        )
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()


def _get(site: Site, path: str) -> Any:
    with urllib.request.urlopen(site.url + path, timeout=10) as resp:
        return json.loads(resp.read())


def test_low_confidence_topics_are_not_counted_in_the_chart_unless_asked(site: Site) -> None:
    default = _get(site, "/api/stats?by=topic&bucket=day")
    assert default["min_confidence"] == "medium"
    assert sum(default["series"].get("PII", [])) == 1  # the blocked record; the 0.35 one is not counted
    low = _get(site, "/api/stats?by=topic&bucket=day&min_confidence=low")
    assert sum(low["series"]["PII"]) == 2 and "FINANCIAL" not in low["series"]  # 0.1 is no detection
    # The list still shows the low-confidence topic on its record.
    listed = _get(site, "/api/records?topic=PII")
    assert listed["total"] == 2


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
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
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


def _open(browser: Any, record_id: str) -> Any:
    from selenium.webdriver.common.by import By

    row = _wait(lambda: browser.find_element(By.CSS_SELECTOR, f'#records tr[data-record-id="{record_id}"]'), "row")
    row.click()
    return _wait(
        lambda: browser.find_element(By.CSS_SELECTOR, f'#conv-records li[data-record-id="{record_id}"]'), "the record"
    )


def test_evidence_after_decryption_honest_wrong_key_and_fail_closed_reason(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    OUTPUT.mkdir(parents=True, exist_ok=True)
    browser.get(site.url + "/")
    _wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")

    # The list: the fail-closed record says why rather than "-"; no "none" confidence anywhere.
    failed_row = browser.find_element(By.CSS_SELECTOR, f'#records tr[data-record-id="{site.failed}"]')
    assert f"inspection failed: unavailable: {FAILED_REASON}" in failed_row.text
    assert "none" not in browser.find_element(By.ID, "records").text

    browser.find_element(By.ID, "key-file").send_keys(str(site.key))
    _wait(lambda: "loaded" in browser.find_element(By.ID, "key-status").text, "the key to load")
    turn = _open(browser, site.blocked)
    user = _wait(lambda: turn.find_element(By.CSS_SELECTOR, ".msg-user"), "the decrypted prompt")
    assert user.text.split("\n", 1)[1] == PROMPT  # labels are CSS: the text is exactly the prompt
    marks = {
        m.text: (m.get_attribute("data-kinds"), m.get_attribute("data-label"))
        for m in user.find_elements(By.CSS_SELECTOR, "mark.finding")
    }
    assert marks == {SSN: ("pii.US_SSN", "US_SSN 0.85"), EMAIL: ("pii.EMAIL_ADDRESS", "EMAIL_ADDRESS 0.70")}
    ssn_mark = next(m for m in user.find_elements(By.CSS_SELECTOR, "mark.finding") if m.text == SSN)
    shown = browser.execute_script("return getComputedStyle(arguments[0], '::after').content;", ssn_mark)
    assert "US_SSN 0.85" in shown  # the label is drawn next to the span

    rows = {
        r.get_attribute("data-detector"): r for r in turn.find_elements(By.CSS_SELECTOR, "table.detectors tbody tr")
    }
    assert set(rows) == {"presidio", "secrets", "intent"}
    assert rows["presidio"].text.split() == ["presidio", "ok", "12.5"]
    assert "detector-failed" in rows["intent"].get_attribute("class")
    assert "timeout" in rows["intent"].text and "no answer within 5s" in rows["intent"].text
    assert turn.find_element(By.CSS_SELECTOR, ".user-message").text == USER_MESSAGE
    evidence = turn.find_element(By.CSS_SELECTOR, ".evidence").text
    assert "block-pii-in-prompts" in evidence and "base64" in evidence
    assert "centroid 17" in evidence and "true_positive" in evidence
    assert "Decrypted in this browser" in browser.find_element(By.ID, "conv-key-hint").text
    browser.save_screenshot(str(OUTPUT / "evidence-decrypted.png"))

    # The wrong key: the honest state, and no text.
    browser.find_element(By.ID, "key-file").send_keys(str(site.other_key))
    error = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "#conv-records .decrypt-error"), "the wrong-key state")
    assert "Wrong key" in error.text and f"sealed to key id {site.admin_key_id}" in error.text
    hint = browser.find_element(By.ID, "conv-key-hint").text
    status = browser.find_element(By.ID, "key-status").text
    for text in (hint, status):
        assert "does not open" in text and site.admin_key_id in text, text
        assert "Decrypted in this browser" not in text and "loaded in this tab" not in text, text
    assert not browser.find_elements(By.CSS_SELECTOR, "#conv-records .msg-user")
    assert not browser.find_elements(By.CSS_SELECTOR, "#conv-records mark")
    browser.save_screenshot(str(OUTPUT / "evidence-wrong-key.png"))

    # The fail-closed block says why, with the right key too.
    browser.find_element(By.ID, "key-file").send_keys(str(site.key))
    turn = _open(browser, site.failed)
    _wait(lambda: turn.find_element(By.CSS_SELECTOR, ".msg-blocked"), "the decrypted fail-closed record")
    assert f"inspection failed: unavailable: {FAILED_REASON}" in turn.find_element(By.CSS_SELECTOR, ".meta").text
    assert "inspection failed" in turn.find_element(By.CSS_SELECTOR, ".msg-blocked").text
    assert "topics -" not in turn.text
    browser.save_screenshot(str(OUTPUT / "evidence-fail-closed.png"))

    # A Share record names the shared conversation instead of an empty user bubble.
    turn = _open(browser, site.shared)
    assert "shared conversation conv-shared-42" in turn.find_element(By.CSS_SELECTOR, ".msg-share").text
    assert not turn.find_elements(By.CSS_SELECTOR, ".msg-user")

    secrets = [CANARY.encode(), SSN.encode(), EMAIL.encode()]
    for key_file in (site.key, site.other_key):
        raw = base64.b64decode(json.loads(key_file.read_text())["private_key"])
        secrets += [base64.b64encode(raw), raw.hex().encode()]
    assert site.requests
    for method, path, body in site.requests:
        for secret in secrets:
            assert secret not in path.encode() + body, f"{method} {path} carried a secret"
