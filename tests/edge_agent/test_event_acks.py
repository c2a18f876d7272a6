"""The agent keeps each event until the server says it stored it (issue 8, finding 1).

A real Mosquitto, the agent's real link, event queue and state database, and the server's real
consumer and device-message handling on SQLite. The server's broker session is gone while it is
down (its expiry ran out), so an event the broker acknowledged to the camera reaches no server:
only the camera's copy can bring it back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from common import topics
from common.clock import SystemClock, utc_now
from common.schemas import EventAck, EventType
from edge_agent.config import AgentConfig
from edge_agent.events import EventQueue
from edge_agent.state import AgentState
from edge_agent.timesync import ClockOffset
from edge_agent.uplink import MqttLink
from ingest_server.consumer import ConsumerThread
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.models import ClassSession, DeviceEvent
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from ingest_server.verdicts import VerdictKeeper
from simulators.broker import SERVER_USER, MosquittoBroker

WAIT = 20.0
DEVICE = "cam-ack"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Server:
    """The ingest half of the server on a SQLite file, started and stopped at will."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker) -> None:
        url = f"sqlite:///{tmp_path / 'server.db'}"
        migrate(url)
        self.engine = make_engine(url)
        self.factory = make_session_factory(self.engine)
        self.settings = Settings(
            data_dir=tmp_path,
            database_url=url,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            mqtt_password=broker.accounts.passwords[SERVER_USER],
            mqtt_client_id="ingest-acks",
            # The broker forgets the server's session as soon as it goes: whatever a device
            # says meanwhile reaches no server.
            mqtt_session_expiry_s=0,
        )
        self.fleet = DeviceMessages(self.factory, 90.0, SystemClock())
        self.processor = IngestProcessor(
            self.factory,
            EvidenceStore(tmp_path / "evidence"),
            self.settings,
            SystemClock(),
            device_messages=self.fleet.handle,
        )
        self.consumer: ConsumerThread | None = None

    def start(self) -> None:
        self.consumer = ConsumerThread(self.settings, self.processor).start()

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer = None

    def session(self, session_id: str) -> ClassSession:
        with self.factory() as db:
            row = db.get(ClassSession, session_id)
            assert row is not None
            return row

    def events(self, type_: EventType) -> list[DeviceEvent]:
        with self.factory() as db:
            return list(db.scalars(select(DeviceEvent).where(DeviceEvent.type == type_.value)))


def _setup(tmp_path: Path, server: Server, start: Any, duration_min: int) -> None:
    doc = {
        "institutions": [{"id": "school", "name": "school"}],
        "classrooms": [
            {
                "id": "room",
                "institution_id": "school",
                "name": "101",
                "lat": 31.2304,
                "lon": 121.4737,
                "datum": "wgs84",
            }
        ],
        "devices": [{"device_id": DEVICE, "classroom_id": "room", "public_key": "A" * 43 + "="}],
        "lecturers": [
            {"id": "lect", "institution_id": "school", "name": "lecturer", "token": "t" * 24}
        ],
        "classes": [{"id": "cls", "institution_id": "school", "name": "class"}],
        "sessions": [
            {
                "id": "sess-ack",
                "class_id": "cls",
                "classroom_id": "room",
                "lecturer_id": "lect",
                "start": start.isoformat(),
                "duration_min": duration_min,
            }
        ],
    }
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(doc))
    with server.factory.begin() as db:
        import_rows(db, read_rows(path), server.settings)


@pytest.fixture
def agent(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> Iterator[tuple[EventQueue, AgentState, MqttLink]]:
    password = mosquitto.add_account(DEVICE)
    (tmp_path / "broker-password").write_text(password)
    config = AgentConfig.model_validate(
        {
            "device_id": DEVICE,
            "state_dir": str(tmp_path / "agent"),
            "broker": {
                "host": mosquitto.host,
                "port": mosquitto.port,
                "password_file": str(tmp_path / "broker-password"),
                "tls": False,  # the test broker's plain loopback listener
            },
        }
    )
    clock = SystemClock()
    link = MqttLink(config, password, clock)
    state = AgentState(tmp_path / "agent" / "agent.sqlite3")
    events = EventQueue(state, link, clock, ClockOffset(clock), DEVICE, ack_timeout_s=0.5)
    stop = threading.Event()
    sender = threading.Thread(target=events.run, args=(stop,), daemon=True)
    link.start()
    assert link.wait_connected(WAIT)
    sender.start()
    try:
        yield events, state, link
    finally:
        stop.set()
        sender.join(5)
        link.stop()
        state.close()


def test_an_event_the_broker_took_but_no_server_stored_is_sent_again_until_acknowledged(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    agent: tuple[EventQueue, AgentState, MqttLink],
) -> None:
    events, state, link = agent
    server = Server(tmp_path, mosquitto)
    start = utc_now() - timedelta(minutes=12)
    _setup(tmp_path, server, start, duration_min=10)
    server.start()
    try:
        events.emit(EventType.SESSION_STARTED, session_id="sess-ack", at=start)
        wait_for(lambda: server.session("sess-ack").opened_at is not None, "the start stored")
        wait_for(lambda: state.pending_events() == [], "the start acknowledged and forgotten")

        server.stop()  # its broker session goes with it
        end = start + timedelta(minutes=10)
        events.emit(
            EventType.SESSION_STOPPED, session_id="sess-ack", at=end, data={"recorded_s": 600.0}
        )
        # The broker acknowledged it to the camera; no server has it.
        wait_for(
            lambda: getattr(events, "outstanding", 0) == 1 or state.pending_events() == [],
            "the stop sent",
        )
        assert len(state.pending_events()) == 1, "the camera forgot an event no server stored"

        server.start()
        wait_for(lambda: server.session("sess-ack").closed_at is not None, "the stop stored")
        wait_for(lambda: state.pending_events() == [], "the stop acknowledged and forgotten")
    finally:
        server.stop()

    session = server.session("sess-ack")
    assert session.closed_at == end and session.recorded_s == pytest.approx(600.0)
    assert len(server.events(EventType.SESSION_STOPPED)) == 1
    assert link.counters["events_resent"] >= 1
    keeper = VerdictKeeper(server.factory, server.settings, SystemClock())
    keeper.recompute({"sess-ack"})
    session = server.session("sess-ack")
    assert session.verdict != "rejected"
    assert "short_duration" not in session.verdict_reasons


def test_a_late_or_unknown_ack_changes_nothing(
    mosquitto: MosquittoBroker, agent: tuple[EventQueue, AgentState, MqttLink]
) -> None:
    events, state, link = agent
    events.emit(EventType.ERROR, data={"what": "kept"})  # no server: never acknowledged
    wait_for(lambda: events.outstanding == 1, "the event sent")
    server = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=SERVER_USER)
    server.username_pw_set(SERVER_USER, mosquitto.accounts.passwords[SERVER_USER])
    server.connect(mosquitto.host, mosquitto.port)
    server.loop_start()
    try:
        ack = EventAck(event_id="not-ours-0000", server_time=utc_now())
        server.publish(topics.event_ack(DEVICE), ack.to_bytes(), qos=1).wait_for_publish(WAIT)
        wait_for(lambda: link.counters["event_ack_unknown"] == 1, "the unknown ack")
    finally:
        server.disconnect()
        server.loop_stop()
    assert len(state.pending_events()) == 1


def test_events_in_flight_are_sent_again_after_a_reconnect(
    mosquitto: MosquittoBroker, agent: tuple[EventQueue, AgentState, MqttLink]
) -> None:
    events, state, link = agent
    events.ack_timeout_s = 3600.0  # only the reconnect can bring it out again
    events.emit(EventType.ERROR, data={"what": "in flight"})
    wait_for(lambda: events.outstanding == 1, "the event sent")
    connects = link.counters["connects"]
    mosquitto.restart()
    wait_for(lambda: link.counters["connects"] > connects, "the reconnect")
    wait_for(lambda: link.counters["events_resent"] == 1, "the event sent again")
    assert len(state.pending_events()) == 1  # still kept: no server has acknowledged it


def _refused_payloads(count: int) -> list[bytes]:
    """Events a server will never store, each with an id it can read: a type from a newer
    agent, one naming another device, one missing its time."""
    at = utc_now().isoformat()
    out: list[bytes] = []
    for n in range(count):
        event: dict[str, Any] = {
            "event_id": f"refused-{n:02d}",
            "device_id": DEVICE,
            "type": "error",
            "at": at,
        }
        if n % 3 == 0:
            event["type"] = "from_a_newer_agent"
        elif n % 3 == 1:
            event["device_id"] = "cam-someone-else"
        else:
            del event["at"]
        out.append(json.dumps(event).encode())
    return out


def test_events_the_server_refuses_are_set_aside_and_later_events_flow(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    agent: tuple[EventQueue, AgentState, MqttLink],
) -> None:
    """20 events the server refuses, more than the 16 the agent keeps in flight, then a good
    one: before, the refused ones were never acknowledged and held it back for ever."""
    events, state, link = agent
    server = Server(tmp_path, mosquitto)
    server.start()
    try:
        refused = _refused_payloads(20)
        for payload in refused:
            events.send_again(payload)  # as stored by the agent's queue
        good = events.emit(EventType.ERROR, data={"what": "after the refused ones"})
        wait_for(lambda: len(server.events(EventType.ERROR)) == 1, "the good event stored")
        wait_for(lambda: state.pending_events() == [], "every event answered")
    finally:
        server.stop()
    (stored,) = server.events(EventType.ERROR)
    assert stored.event_id == json.loads(good)["event_id"]
    assert link.counters["events_refused"] == 20
    assert link.counters["events_acked"] == 1
    kept = state.refused_events()
    assert [payload for _, payload, _ in kept] == refused  # kept, in order, with the reason
    assert all(reason for _, _, reason in kept)
    assert server.fleet.counters["event_refusals"] == 20
