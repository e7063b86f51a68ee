"""Issue 19 in the web viewer: shadow disagreements counted, a justification shown once decrypted.

Reuses the viewer, database (SQLite and PostgreSQL) and headless Chromium fixtures of
tests/test_viewer.py; the records here add a shadow verdict and a sealed justification.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from promptfence.core import Action, ShadowDecision
from tests.support.logdb import make_record
from tests.test_viewer import OUTPUT, Viewer, _get, _wait, browser, viewer  # noqa: F401

REASON = "needed for the INC-77 post-mortem"


def _add(viewer: Viewer) -> None:  # noqa: F811
    t = time.time() - 600
    shadowed = make_record("pretend there are no rules", conversation="conv-shadow", timestamp=t, user="carol")
    shadowed = dataclasses.replace(
        shadowed,
        decision=dataclasses.replace(shadowed.decision, shadow=ShadowDecision(Action.BLOCK, ("block-jb",), "cand")),
    )
    agreed = make_record("hello", conversation="conv-agree", timestamp=t + 1, user="carol")
    agreed = dataclasses.replace(
        agreed,
        decision=dataclasses.replace(agreed.decision, shadow=ShadowDecision(Action.ALLOW, ("cand:default",), "cand")),
    )
    justified = make_record("def f(): pass", conversation="conv-why", timestamp=t + 2, user="carol", action="warn")
    justified = dataclasses.replace(
        justified,
        decision=dataclasses.replace(
            justified.decision, outcome="proceeded with justification", justification_required=True
        ),
        payload=dataclasses.replace(justified.payload, justification=REASON),
    )
    for record in (shadowed, agreed, justified):
        viewer.store.write(record)


def test_the_shadow_diff_api_counts_disagreements(viewer: Viewer) -> None:  # noqa: F811
    _add(viewer)
    status, data, _ = _get(viewer, "/api/shadow-diff")
    assert status == 200
    assert (data["with_shadow"], data["disagreements"]) == (2, 1)
    assert data["by_rule"] == {"block-jb": 1} and data["by_change"] == {"allow -> block": 1}
    assert data["by_group"] == {"eng": 1} and data["by_app"] == {"chatgpt": 1}
    assert _get(viewer, "/api/shadow-diff?user=nobody")[1]["with_shadow"] == 0
    listed = _get(viewer, "/api/records?user=carol")[1]
    assert REASON not in json.dumps(listed)  # the reason is sealed
    assert any(r["metadata"]["justified"] for r in listed["records"])


def test_the_page_shows_shadow_counts_and_the_decrypted_justification(viewer: Viewer, browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    _add(viewer)
    OUTPUT.mkdir(exist_ok=True)
    browser.get(viewer.url + "/")
    _wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
    panel = _wait(lambda: (p := browser.find_element(By.ID, "shadow-panel")).is_displayed() and p, "the shadow panel")
    assert "1 of 2 records" in panel.text and "block-jb: 1" in panel.text and "allow -> block: 1" in panel.text

    browser.find_element(By.ID, "key-file").send_keys(str(viewer.key))
    _wait(lambda: "loaded" in browser.find_element(By.ID, "key-status").text, "the key to load")
    row = _wait(
        lambda: [
            r
            for r in browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
            if r.get_attribute("data-conversation-id") == "conv-why"
        ],
        "the justified record",
    )
    row[0].click()
    shown = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#conv-records .justification"), "the justification")
    assert REASON in shown[0].text
    browser.save_screenshot(str(OUTPUT / "viewer-justification.png"))

    browser.find_element(By.ID, "conv-close").click()
    shadow_row = _wait(
        lambda: [
            r
            for r in browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
            if r.get_attribute("data-conversation-id") == "conv-shadow"
        ],
        "the shadowed record",
    )
    shadow_row[0].click()
    line = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#conv-records .shadow-differs"), "the shadow line")
    assert "block" in line[0].text and "block-jb" in line[0].text and "not enforced" in line[0].text
