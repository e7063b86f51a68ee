"""Issue 16 acceptance: an app changes its stream shape under a running proxy and the alarm fires.

A real ``promptfence proxy`` (mitmdump + the addon) over real TLS in front of the HTTPS stand-in.
ChatGPT answers decode cleanly at first; then the stand-in starts answering in a made-up new
encoding. The user still receives every byte, the proxy logs exactly one alarm line (naming the
app and operation, never the prompt or the answer), and ``promptfence apps status`` shows the
counters and the alarm from the proxy's state file. Unmapped ChatGPT paths that carry text raise
the alarm for ``chatgpt.unknown`` the same way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployment import GENAI_HOSTS, ProxyDeployment, start_proxy
from tests.support.procs import wait_for

pytestmark = pytest.mark.slow

CHANGED = "streams/drift/chatgpt_new_encoding.body"
PROMPT = "Summarise the quarterly plan for the Lisbon office"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyDeployment]:
    dep = start_proxy(tmp_path_factory.mktemp("drift-e2e"), command=["proxy"], policies={}, hosts=GENAI_HOSTS)
    try:
        yield dep
    finally:
        dep.stop()


def _send(dep: ProxyDeployment, headers: dict[str, str] | None = None) -> str:
    body = {
        "action": "next",
        "messages": [
            {
                "id": str(uuid.uuid4()),
                "author": {"role": "user"},
                "content": {"content_type": "text", "parts": [PROMPT]},
            }
        ],
        "parent_message_id": "client-created-root",
        "model": "auto",
    }
    result = dep.curl(
        "https://chatgpt.com/backend-api/f/conversation",
        data=json.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    assert result.status == 200
    return result.body


def _status(dep: ProxyDeployment) -> tuple[int, dict[str, dict[str, object]]]:
    result = dep.cli("apps", "status", "--json")
    assert result.returncode in (0, 1), result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return result.returncode, {str(r["operation"]): r for r in rows}


def _alarm_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "DRIFT ALARM" in line]


def test_a_changed_stream_shape_raises_the_alarm_and_apps_status_shows_it(deployment: ProxyDeployment) -> None:
    for _ in range(3):
        assert "Stand-in answer" in _send(deployment)
    wait_for(lambda: _status(deployment)[1]["chatgpt.send_prompt"]["decoded"] == 3, 20, "three decoded answers")
    code, rows = _status(deployment)
    assert code == 0 and not rows["chatgpt.send_prompt"]["alarm"] and not _alarm_lines(deployment.proxy_log)

    changed = (Path(__file__).parent / "fixtures" / CHANGED).read_text()
    for _ in range(3):
        assert _send(deployment, {"X-Standin-Fixture": CHANGED}) == changed  # still passes through, unchanged

    def alarmed() -> bool:
        return bool(_alarm_lines(deployment.proxy_log)) and bool(_status(deployment)[1]["chatgpt.send_prompt"]["alarm"])

    wait_for(alarmed, 20, "the drift alarm")
    lines = _alarm_lines(deployment.proxy_log)
    assert len(lines) == 1
    assert "app=chatgpt op=chatgpt.send_prompt" in lines[0] and "3 of the last 6 answers failed" in lines[0]
    assert PROMPT not in lines[0] and "wire format" in lines[0]
    code, rows = _status(deployment)
    op = rows["chatgpt.send_prompt"]
    assert code == 1
    assert (op["seen"], op["extracted"], op["decoded"], op["decode_errors"], op["unknown_shapes"]) == (6, 6, 3, 3, 3)
    assert op["last_seen"] is not None

    table = deployment.cli("apps", "status")
    assert table.returncode == 1
    row = next(line for line in table.stdout.splitlines() if line.startswith("chatgpt.send_prompt "))
    assert "ALARM (3/6)" in row and "3 errors" in row
    assert PROMPT not in deployment.proxy_log.read_text(errors="replace")


def test_unmapped_paths_that_carry_text_raise_the_alarm_for_the_unknown_operation(
    deployment: ProxyDeployment,
) -> None:
    for index in range(5):
        body = json.dumps({"input": f"{PROMPT} ({index})", "surface": "new-composer"})
        result = deployment.curl(
            "https://chatgpt.com/backend-api/v2/turns", data=body, headers={"Content-Type": "application/json"}
        )
        assert result.status == 200
    empty = deployment.curl("https://chatgpt.com/backend-api/models")
    assert empty.status == 200  # a request without text is no sign of drift

    wait_for(
        lambda: any("op=chatgpt.unknown" in line for line in _alarm_lines(deployment.proxy_log)), 20, "unknown alarm"
    )
    _, rows = _status(deployment)
    unknown = rows["chatgpt.unknown"]
    assert unknown["seen"] == 5 and unknown["unmapped_text"] == 5 and unknown["alarm"] is True
