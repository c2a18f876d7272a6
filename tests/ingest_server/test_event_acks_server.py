"""Event acks from the server (issue 8, finding 1): sent after the event's commit, again for a
repeat, never for an event refused as bad."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from ingest_helpers import START, Harness

from common import topics
from common.schemas import Event, EventAck, EventType, decode
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.models import DeviceEvent


def _processor(harness: Harness) -> tuple[IngestProcessor, DeviceMessages]:
    fleet = DeviceMessages(harness.sessions, 90.0, harness.clock)
    processor = IngestProcessor(
        harness.sessions,
        harness.store,
        harness.settings,
        harness.clock,
        device_messages=fleet.handle,
    )
    return processor, fleet


def _event(event_id: str, device_id: str = "dev-1") -> Event:
    return Event(
        event_id=event_id,
        device_id=device_id,
        type=EventType.ERROR,
        at=START + timedelta(minutes=1),
    )


def test_a_stored_event_is_acknowledged_after_commit_and_again_when_repeated(
    harness: Harness, tmp_path: Path
) -> None:
    processor, fleet = _processor(harness)
    event = _event("ev-acked-1")
    for _ in range(2):  # the second is a redelivery or a re-send
        out = processor.handle(topics.event("dev-1"), event.to_bytes())
        assert [o.topic for o in out] == [topics.event_ack("dev-1")]
        assert decode(EventAck, out[0].payload).event_id == "ev-acked-1"
        assert b"refused" not in out[0].payload  # as an agent that predates refusals reads it
        with harness.sessions() as db:  # committed before the ack was handed out
            stored = db.query(DeviceEvent).filter_by(event_id="ev-acked-1").count()
        assert stored == 1
    assert fleet.counters["event_acks"] == 2


def test_an_event_refused_as_bad_gets_a_refused_ack_to_its_sender_only_when_it_names_an_id(
    harness: Harness,
) -> None:
    """A refused event is answered as refused (else the device sends it for ever and it holds
    up its later events), only on the sending login's topic, and only when an id can be read."""
    processor, fleet = _processor(harness)
    wrong_device = _event("ev-other-1", device_id="dev-2")
    out = processor.handle(topics.event("dev-1"), wrong_device.to_bytes())
    assert [o.topic for o in out] == [topics.event_ack("dev-1")]  # never dev-2's
    ack = decode(EventAck, out[0].payload)
    assert ack.event_id == "ev-other-1" and ack.refused
    newer = b'{"event_id":"ev-newer-1","device_id":"dev-1","type":"from_the_future","at":"x"}'
    (out_newer,) = processor.handle(topics.event("dev-1"), newer)
    assert decode(EventAck, out_newer.payload).refused
    assert processor.handle(topics.event("dev-1"), b"{not json") == []
    assert processor.handle(topics.event("dev-1"), b'{"event_id":"../x"}') == []
    assert processor.handle(topics.event("dev-1"), b"[" * 100_000) == []
    assert fleet.counters["event_device_mismatch"] == 1
    assert fleet.counters["bad_event"] == 4
    assert fleet.counters["event_refusals"] == 2
    with harness.sessions() as db:
        assert db.query(DeviceEvent).count() == 0
