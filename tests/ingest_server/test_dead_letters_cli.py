"""``classcam-server dead-letters``: list what ingest gave up on, and replay it once fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_helpers import START, Harness
from sqlalchemy import select

from common import topics
from common.schemas import Event, EventType
from ingest_server.cli import main
from ingest_server.models import DeadLetter, DeviceEvent


def test_dead_letters_are_listed_and_replayed_through_ingest(
    harness: Harness,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    event = Event(event_id="ev-dead-1", device_id="dev-1", type=EventType.ERROR, at=START)
    with harness.sessions.begin() as db:
        db.add(
            DeadLetter(
                topic=topics.event("dev-1"),
                payload=event.to_bytes(),
                error="RuntimeError: boom",
                attempts=5,
                first_at=START,
                last_at=START,
            )
        )
    data = ["--data-dir", str(tmp_path), "--database-url", harness.settings.database_url]
    assert main([*data, "dead-letters"]) == 0
    listed = capsys.readouterr().out
    assert "classcam/v1/up/dev-1/event" in listed and "RuntimeError: boom" in listed

    assert main([*data, "dead-letters", "--replay"]) == 0
    assert "replayed 1, still failing 0" in capsys.readouterr().out
    with harness.sessions() as db:
        assert db.scalars(select(DeviceEvent.event_id)).all() == ["ev-dead-1"]
        assert db.scalars(select(DeadLetter.replayed_at)).one() is not None
    # Replayed letters are not replayed again.
    assert main([*data, "dead-letters", "--replay"]) == 0
    assert "replayed 0, still failing 0" in capsys.readouterr().out
