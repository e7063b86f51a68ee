"""Fixtures shared by the log tests (the side filter and options live in the root conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.logdb import BACKENDS, LogDB, make_log_db

if TYPE_CHECKING:
    from logs.store import Recipient


@pytest.fixture(params=BACKENDS)
def log_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogDB]:
    """A log database on each backend: a SQLite file, and a fresh schema in the local PostgreSQL."""
    with make_log_db(request.param, tmp_path) as db:
        yield db


@pytest.fixture
def recipients(tmp_path: Path) -> list[Recipient]:
    """One recipient key pair: ``tmp_path/admin.key`` opens what is sealed to ``admin.pub``."""
    from logs.sealing import KeyPair, write_key_pair
    from logs.store import Recipient

    write_key_pair(KeyPair.generate(), tmp_path / "admin.key", tmp_path / "admin.pub")
    return [Recipient.from_file(tmp_path / "admin.pub")]
