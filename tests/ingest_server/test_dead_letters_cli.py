"""``classcam-server dead-letters``: list what ingest gave up on, and replay it once fixed."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from ingest_helpers import START, Harness, quiet_heartbeat
from sqlalchemy import select

from common import topics
from common.clock import utc_now
from common.schemas import Event, EventType
from ingest_server.cli import main
from ingest_server.models import DeadLetter, DeviceEvent, DeviceHealth, PresenceChange


def keep_dead_letter(
    harness: Harness, topic: str, payload: bytes, attempts: int, at: datetime
) -> None:
    """A message ingest gave up on at ``at`` after ``attempts`` tries, as the consumer keeps it."""
    with harness.sessions.begin() as db:
        db.add(
            DeadLetter(
                topic=topic,
                payload=payload,
                error="RuntimeError: boom",
                attempts=attempts,
                first_at=at,
                last_at=at,
            )
        )


def test_dead_letters_are_listed_and_replayed_through_ingest(
    harness: Harness,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    event = Event(event_id="ev-dead-1", device_id="dev-1", type=EventType.ERROR, at=START)
    keep_dead_letter(harness, topics.event("dev-1"), event.to_bytes(), attempts=5, at=START)
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


def test_a_replayed_heartbeat_counts_at_its_own_time_not_at_the_replay(
    harness: Harness, tmp_path: Path
) -> None:
    """A dead letter is old news by the time it is replayed: its device comes online when the
    heartbeat says (less its stated offset), not when an operator ran the replay days later."""
    sent = utc_now() - timedelta(days=3)
    # The device's clock ran 2 s ahead, as it says.
    beat = quiet_heartbeat("dev-1", sent + timedelta(seconds=2), seq=7, clock_offset_s=2.0)
    keep_dead_letter(harness, topics.heartbeat("dev-1"), beat.to_bytes(), attempts=1, at=sent)
    data = ["--data-dir", str(tmp_path), "--database-url", harness.settings.database_url]
    assert main([*data, "dead-letters", "--replay"]) == 0
    with harness.sessions() as db:
        change = db.scalars(select(PresenceChange)).one()
        health = db.get(DeviceHealth, "dev-1")
    assert change.online and change.source == "heartbeat"
    assert abs((change.at - sent).total_seconds()) < 0.001
    assert health is not None and health.last_heartbeat_at == change.at
