"""An open or close the API accepted (202) is kept in ``device_commands`` until its camera
answers: a server restart before the publish, or a broker that lost it, does not lose it; it
is sent again every ``command_resend_s`` while unanswered, and never once ``command_ttl_s``
has passed (an open or close much later would be wrong)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_server_flow import T0, TOKEN, setup_doc

from common import topics
from common.clock import VirtualClock
from common.commands import Command, CommandType
from common.schemas import Event, EventType
from common.signing import generate_private_key, public_key_b64
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.core import ServerCore
from ingest_server.db import make_engine, make_session_factory
from ingest_server.device_messages import DeviceMessages
from ingest_server.models import DeviceCommand
from ingest_server.scheduler import Scheduler, make_scheduler_client
from ingest_server.sessions import record_device_event
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from simulators.broker import SCHEDULER_USER, MosquittoBroker

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> Any:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(setup_doc(public_key_b64(generate_private_key()))))
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    clock = VirtualClock(start=T0)
    yield {"settings": settings, "factory": factory, "clock": clock}
    engine.dispose()


def _scheduler(world: dict[str, Any]) -> Scheduler:
    """A fresh server process: nothing in memory but what the database holds."""
    fleet = DeviceMessages(world["factory"], world["settings"].heartbeat_timeout_s, world["clock"])
    return Scheduler(world["settings"], world["factory"], fleet, lambda ids: None, world["clock"])


def _open(world: dict[str, Any], scheduler: Scheduler) -> str:
    settings: Settings = world["settings"]
    context = ApiContext(
        settings,
        world["factory"],
        EvidenceStore(settings.evidence_dir),
        recompute=lambda ids: None,
        send_command=scheduler.send_command,
        clock=world["clock"],
    )
    response = TestClient(create_app(context)).post("/api/v1/sessions/s1/open", headers=AUTH)
    assert response.status_code == 202
    cmd_id: str = response.json()["cmd_id"]
    return cmd_id


def _opens(scheduler: Scheduler) -> list[Command]:
    out = []
    for message in scheduler.tick():
        if message.topic == topics.cmd("cam-1"):
            command = Command.model_validate_json(message.payload)
            if command.type == CommandType.OPEN_SESSION:
                out.append(command)
    return out


def _answer(world: dict[str, Any], device_id: str, cmd_id: str, event_id: str) -> None:
    with world["factory"].begin() as db:
        record_device_event(
            db,
            Event(
                event_id=event_id,
                device_id=device_id,
                type=EventType.SESSION_STARTED,
                at=world["clock"].now(),
                cmd_id=cmd_id,
                session_id="s1",
            ),
        )


def test_an_accepted_open_reaches_the_device_after_a_server_restart(world: dict[str, Any]):
    """Accepted while nothing was published (broker down, or the process died before its
    tick): the next server process sends it."""
    cmd_id = _open(world, _scheduler(world))  # this process dies before it ever ticks
    sent = _opens(_scheduler(world))
    assert [c.cmd_id for c in sent] == [cmd_id]
    assert sent[0].session_id == "s1"
    with world["factory"]() as db:
        row = db.get(DeviceCommand, cmd_id)
        assert row is not None and row.sends == 1 and row.device_id == "cam-1"


def test_an_unanswered_command_is_sent_again_until_its_device_answers(world: dict[str, Any]):
    settings: Settings = world["settings"]
    clock: VirtualClock = world["clock"]
    scheduler = _scheduler(world)
    cmd_id = _open(world, scheduler)
    assert [c.cmd_id for c in _opens(scheduler)] == [cmd_id]
    assert _opens(scheduler) == []  # not again at once
    clock.advance(settings.command_resend_s + 1)
    # Published, then lost with the broker's store: sent again, by a restarted server too.
    assert [c.cmd_id for c in _opens(_scheduler(world))] == [cmd_id]
    # Another device naming the cmd_id does not answer for the camera.
    _answer(world, "cam-other", cmd_id, "ev-other")
    clock.advance(settings.command_resend_s + 1)
    assert [c.cmd_id for c in _opens(scheduler)] == [cmd_id]
    _answer(world, "cam-1", cmd_id, "ev-1")
    for _ in range(3):
        clock.advance(settings.command_resend_s + 1)
        assert _opens(scheduler) == []
    with world["factory"]() as db:
        row = db.get(DeviceCommand, cmd_id)
        assert row is not None and row.answered_at is not None and row.sends == 3


def test_an_expired_command_is_not_sent(world: dict[str, Any]):
    settings: Settings = world["settings"]
    clock: VirtualClock = world["clock"]
    cmd_id = _open(world, _scheduler(world))
    clock.advance(settings.command_ttl_s + 1)
    assert _opens(_scheduler(world)) == []
    with world["factory"]() as db:
        row = db.get(DeviceCommand, cmd_id)
        assert row is not None and row.sends == 0


def _wait_until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.02)
    raise AssertionError("timed out")


@contextlib.contextmanager
def _scheduler_running(core: ServerCore, settings: Settings) -> Iterator[None]:
    """The server process's scheduler loop, publishing over the real broker."""
    ready = threading.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        held["loop"], held["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await core.scheduler.run(lambda: make_scheduler_client(settings), held["stop"])

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield
    finally:
        held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(10)
        assert not thread.is_alive()


def test_an_open_accepted_while_the_broker_is_down_reaches_the_camera_after_a_restart(
    tmp_path: Path, sqlite_url: str, mosquitto: MosquittoBroker
):
    """The real pieces: the API of one server process answers 202 while the broker is down,
    that process stops, the broker and a new server process come up, and the camera (a
    persistent MQTT session) receives the open."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=sqlite_url,
        mqtt_host=mosquitto.host,
        mqtt_port=mosquitto.port,
        mqtt_scheduler_password=mosquitto.accounts.passwords[SCHEDULER_USER],
        scheduler_interval_s=0.05,
    )
    engine = make_engine(sqlite_url)
    path = tmp_path / "setup.json"
    start = datetime.now(UTC) + timedelta(hours=1)
    path.write_text(json.dumps(setup_doc(public_key_b64(generate_private_key()), start)))
    with make_session_factory(engine).begin() as db:
        import_rows(db, read_rows(path), settings)
    engine.dispose()
    mosquitto.add_account("cam-1")
    received: list[Command] = []
    subscribed = threading.Event()
    camera = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-1", protocol=mqtt.MQTTv5)
    camera.username_pw_set("cam-1", mosquitto.accounts.passwords["cam-1"])
    camera.on_subscribe = lambda *a: subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/cmd"):
            received.append(Command.model_validate_json(message.payload))

    camera.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    camera.connect(mosquitto.host, mosquitto.port, clean_start=False, properties=props)
    camera.loop_start()
    try:
        camera.subscribe(topics.down_all("cam-1"), qos=1)
        assert subscribed.wait(5)
        mosquitto.stop()
        first = ServerCore(settings)
        try:
            with _scheduler_running(first, settings):
                client = TestClient(create_app(first.api_context()))
                response = client.post("/api/v1/sessions/s1/open", headers=AUTH)
                assert response.status_code == 202
                cmd_id = response.json()["cmd_id"]
        finally:
            first.close()
        mosquitto.start()
        second = ServerCore(settings)
        try:
            with _scheduler_running(second, settings):
                _wait_until(lambda: any(c.cmd_id == cmd_id for c in received))
        finally:
            second.close()
        opens = [c for c in received if c.cmd_id == cmd_id]
        assert opens[0].type == CommandType.OPEN_SESSION and opens[0].session_id == "s1"
    finally:
        camera.disconnect()
        camera.loop_stop()
