"""The per-app wire fixtures in ``tests/fixtures/apps/<app>/<operation>/``.

Each directory holds ``request.json`` (method, host, path with query, headers, and the
response's headers), ``request.body`` (optional, raw bytes), ``response.body`` (optional, raw
bytes exactly as on the wire: CRLF and framing kept) and ``expected.json`` (the operation the
catalogue must map it to, the expected extraction and the expected reconstructed answer).
Every body is synthetic, built from the shapes in ``shared/design/apps/*.md``; no real traffic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "apps"


@dataclass(frozen=True)
class WireFixture:
    app: str
    name: str
    method: str
    host: str
    path: str
    headers: dict[str, str]
    body: bytes
    response: bytes | None
    response_headers: dict[str, str]
    expected: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def bare_path(self) -> str:
        return self.path.partition("?")[0]

    @property
    def query(self) -> str:
        return self.path.partition("?")[2]


def load_fixtures() -> list[WireFixture]:
    out = []
    for directory in sorted(p for p in FIXTURES.glob("*/*") if p.is_dir()):
        request = json.loads((directory / "request.json").read_text(encoding="utf-8"))
        body_file, response_file = directory / "request.body", directory / "response.body"
        out.append(
            WireFixture(
                app=directory.parent.name,
                name=directory.name,
                method=request["method"],
                host=request["host"],
                path=request["path"],
                headers=request.get("headers", {}),
                body=body_file.read_bytes() if body_file.is_file() else b"",
                response=response_file.read_bytes() if response_file.is_file() else None,
                response_headers=request.get("response_headers", {}),
                expected=json.loads((directory / "expected.json").read_text(encoding="utf-8")),
            )
        )
    return out
