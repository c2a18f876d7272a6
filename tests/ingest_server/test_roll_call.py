"""The online roll call end to end (issue 10, item 2): ``POST /api/v1/devices/{id}/snapshot``
on the running server (``core.run_server``: the real ingest consumer, scheduler and API on a
real Mosquitto this module starts, real SQLite), answered by a real ``classcam-agent run`` with
the synthetic camera and the fake modem on a pty, over signed chunks like any clip.

Shown: a live camera's JPEG comes back within the wait (Pillow opens it, the camera's size);
two asks at once share one command; an offline device is refused at once; a device that is
online but silent (its agent frozen with SIGSTOP) times out after ``snapshot_wait_s`` and the
follow-up returns its still once it is thawed, while a still another device signed naming
the same command is never served; a device that says it cannot take a picture gives a 502
with its reason; another school's institution and a lecturer are refused and nothing is sent;
every ask and every still served is in the audit log."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from subprocess import Popen
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from ingest_helpers import server_settings, server_thread, wait_for
from PIL import Image
from sqlalchemy import select

from common import topics
from common.chunks import digest_file
from common.clock import utc_now
from common.commands import Command
from common.schemas import (
    ClipKind,
    Event,
    EventType,
    Fin,
    Manifest,
    Status,
    StatusState,
    decode,
)
from common.signing import generate_private_key, public_key_b64, sign_manifest
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.device_messages import DeviceMessages
from ingest_server.models import AuditEntry, Clip, DeviceCommand, DeviceHealth
from ingest_server.models import Device as DeviceRow
from ingest_server.presence import Presence, presence_of
from ingest_server.rollcall import RollCalls
from ingest_server.scheduler import Scheduler
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from simulators.broker import BrokerAccounts, MosquittoBroker
from simulators.fake_modem import QUECTEL_EC25, FakeModem
from simulators.harness import Device, provision_device

SMALL_CAMERA = {"width": 320, "height": 240, "fps": 10.0}
# Small, so the silent device's timeout costs little; a live camera on this loaded machine
# answers in about a second.
WAIT_S = 4.0
LIVE = "cam-live"  # a real agent, school-a
FORGER = "cam-forger"  # a scripted device of school-a: it signs what the test tells it to
NEVER = "cam-never"  # registered, never connected
OTHER = "cam-other"  # school-b's camera


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedDevice:
    """A paho client logged in as a device (its own broker account and signing key): says
    it is online, hears its commands, and publishes what the test makes it say."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.device_id = device_id
        self.key = generate_private_key()
        self.commands: list[Command] = []
        self.answer_snapshots_with_failure = False
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(device_id, broker.accounts.passwords[device_id])
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topics.cmd(device_id), qos=1)
        assert subscribed.wait(10)
        self.publish(
            topics.status(device_id),
            Status(device_id=device_id, state=StatusState.ONLINE, at=utc_now()).to_bytes(),
            retain=True,
        )

    def _on_message(self, client: mqtt.Client, userdata: object, message: Any) -> None:
        command = decode(Command, bytes(message.payload))
        self.commands.append(command)
        if self.answer_snapshots_with_failure:
            self.say(
                EventType.COMMAND_FAILED,
                cmd_id=command.cmd_id,
                data={"reason": "camera_busy", "detail": "lens cover closed"},
            )

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def say(self, kind: EventType, **fields: Any) -> None:
        event = Event(
            event_id=os.urandom(8).hex(),
            device_id=self.device_id,
            type=kind,
            at=utc_now(),
            **fields,
        )
        self.client.publish(topics.event(self.device_id), event.to_bytes(), qos=1)

    def upload_still(self, directory: Path, cmd_id: str, jpeg: bytes) -> str:
        """Upload ``jpeg`` as this device's signed snapshot answering ``cmd_id``."""
        upload_id = os.urandom(16).hex()
        path = directory / f"{upload_id}.jpg"
        path.write_bytes(jpeg)
        chunk = 4096
        digest = digest_file(path, chunk)
        now = utc_now()
        manifest = Manifest(
            upload_id=upload_id,
            device_id=self.device_id,
            kind=ClipKind.SNAPSHOT,
            cmd_id=cmd_id,
            cut_start=now,
            cut_end=now,
            size=digest.size,
            sha256=digest.sha256,
            chunk_size=chunk,
            chunk_sha256=digest.chunk_sha256,
            content_type="image/jpeg",
            codec="jpeg",
            duration_s=0.0,
            frames=1,
            width=64,
            height=48,
            created_at=now,
        )
        self.publish(topics.file_init(self.device_id, upload_id), sign_manifest(manifest, self.key))
        for offset in range(0, len(jpeg), chunk):
            self.publish(
                topics.file_chunk(self.device_id, upload_id, offset), jpeg[offset : offset + chunk]
            )
        fin = Fin(upload_id=upload_id, size=digest.size, sha256=digest.sha256)
        self.publish(topics.file_fin(self.device_id, upload_id), fin.to_bytes())
        return upload_id

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Stack:
    settings: Settings
    tokens: dict[str, str]
    live: Device
    agent: Popen[bytes]
    forger: ScriptedDevice
    root: Path

    def call(self, method: str, path: str, who: str, **headers: str) -> Answer:
        request = urllib.request.Request(
            f"http://{self.settings.api_host}:{self.settings.api_port}{path}",
            method=method,
            headers={"Authorization": f"Bearer {self.tokens[who]}", **headers},
        )
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, headers, body = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        return Answer(status, headers, body, time.monotonic() - began)

    def roll_call(self, device_id: str, who: str = "inst-a", **headers: str) -> Answer:
        return self.call("POST", f"/api/v1/devices/{device_id}/snapshot", who, **headers)

    def db(self) -> Any:
        engine = make_engine(self.settings.database_url)
        return make_session_factory(engine)(), engine

    def rows(self, query: Any) -> list[Any]:
        session, engine = self.db()
        try:
            return list(session.scalars(query))
        finally:
            session.close()
            engine.dispose()

    def snapshot_commands(self, device_id: str) -> list[DeviceCommand]:
        return self.rows(
            select(DeviceCommand).where(
                DeviceCommand.device_id == device_id, DeviceCommand.type == "snapshot"
            )
        )

    def device(self, device_id: str) -> dict[str, Any]:
        """The device as ``GET /devices`` shows it."""
        answer = self.call("GET", "/api/v1/devices", "admin")
        return next(d for d in answer.json() if d["device_id"] == device_id)

    def online(self, device_id: str) -> bool:
        return bool(self.device(device_id)["online"])


def setup_doc(keys: dict[str, str]) -> dict[str, Any]:
    rooms = {LIVE: "a", FORGER: "a", NEVER: "a", OTHER: "b"}
    return {
        "institutions": [
            {"id": "school-a", "name": "职业培训学校甲"},
            {"id": "school-b", "name": "职业培训学校乙"},
        ],
        "classrooms": [
            {
                "id": f"room-{device}",
                "institution_id": f"school-{school}",
                "name": device,
                "lat": 31.2304,
                "lon": 121.4737,
                "datum": "wgs84",
            }
            for device, school in rooms.items()
        ],
        "devices": [
            {"device_id": device, "classroom_id": f"room-{device}", "public_key": keys[device]}
            for device in rooms
        ],
        "lecturers": [
            {
                "id": "lect",
                "institution_id": "school-a",
                "name": "王老师",
                "token": "lect-app-0123456789",
            }
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("roll-call")
    broker = MosquittoBroker(root / "broker", BrokerAccounts())
    modem = FakeModem(QUECTEL_EC25).start()
    live = provision_device(
        root / "devices",
        LIVE,
        broker,
        settings={
            "camera": SMALL_CAMERA,
            "modem": {"port": modem.path},
            "heartbeat": {"interval_s": 2.0},
        },
    )
    for device_id in (FORGER, NEVER, OTHER):
        broker.add_account(device_id)
    broker.start()
    forger = ScriptedDevice(broker, FORGER)
    keys = {
        LIVE: live.public_key,
        FORGER: public_key_b64(forger.key),
        NEVER: public_key_b64(generate_private_key()),
        OTHER: public_key_b64(generate_private_key()),
    }
    settings = server_settings(
        broker,
        root / "server",
        f"sqlite:///{root / 'classcam.db'}",
        "ingest-roll-call",
        scheduler_interval_s=0.2,
        snapshot_wait_s=WAIT_S,
    )
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    doc = root / "setup.json"
    doc.write_text(json.dumps(setup_doc(keys)))
    now = datetime.now(UTC)
    with factory.begin() as db:
        import_rows(db, read_rows(doc), settings)
        db.flush()
        tokens = {
            who: create_token(db, role, now, name=who, **scope)[1]
            for who, role, scope in [
                ("admin", Role.ADMIN, {}),
                ("supervisor", Role.SUPERVISOR, {}),
                ("inst-a", Role.INSTITUTION, {"institution_id": "school-a"}),
                ("inst-b", Role.INSTITUTION, {"institution_id": "school-b"}),
                ("lecturer", Role.LECTURER, {"lecturer_id": "lect"}),
            ]
        }
    engine.dispose()
    try:
        with server_thread(settings, "roll-call-server") as check:
            agent = live.spawn("run")
            built = Stack(settings, tokens, live, agent, forger, root)

            def online() -> bool:
                check()
                try:
                    return built.online(LIVE) and built.online(FORGER)
                except OSError:
                    return False  # uvicorn not listening yet

            try:
                wait_for(online, 60, "the server, and the agent and the scripted device online")
                yield built
            finally:
                for process in (built.agent,):
                    with_resumed(process)
                    process.terminate()
                    process.wait(20)
                forger.close()
    finally:
        broker.stop()
        modem.stop()


def with_resumed(process: Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)


def audit_rows(stack: Stack, action: str) -> list[AuditEntry]:
    return stack.rows(select(AuditEntry).where(AuditEntry.action == action))


def check_still(answer: Answer, device_id: str) -> Image.Image:
    """A 200 with the device's JPEG, its headers naming what is stored."""
    assert answer.status == 200, answer.body[:500]
    assert answer.headers["Content-Type"] == "image/jpeg"
    assert answer.headers["X-Classcam-Device-Id"] == device_id
    assert hashlib.sha256(answer.body).hexdigest() == answer.headers["X-Classcam-Sha256"]
    image = Image.open(io.BytesIO(answer.body))
    image.load()
    assert image.format == "JPEG"
    return image


def test_a_live_camera_answers_with_its_jpeg_within_the_wait(stack: Stack):
    answer = stack.roll_call(LIVE, **{"Accept-Language": "en"})
    image = check_still(answer, LIVE)
    assert image.size == (SMALL_CAMERA["width"], SMALL_CAMERA["height"])
    assert answer.elapsed < WAIT_S
    cmd_id = answer.headers["X-Classcam-Cmd-Id"]
    clip = stack.rows(select(Clip).where(Clip.id == int(answer.headers["X-Classcam-Clip-Id"])))[0]
    assert (clip.device_id, clip.cmd_id, clip.kind) == (LIVE, cmd_id, "snapshot")
    assert clip.sha256 == answer.headers["X-Classcam-Sha256"]
    assert answer.headers["X-Classcam-Taken-At"] == clip.cut_start.isoformat()
    assert "no-store" in answer.headers["Cache-Control"]
    # The follow-up serves the same still; the ask and both views are in the audit log.
    again = stack.call("GET", f"/api/v1/devices/{LIVE}/snapshots/{cmd_id}", "supervisor")
    assert check_still(again, LIVE) and again.body == answer.body
    asks = [r for r in audit_rows(stack, "roll_call") if json.loads(r.details)["cmd_id"] == cmd_id]
    assert [(r.subject_type, r.subject_id, r.actor.split("#")[0]) for r in asks] == [
        ("device", LIVE, "institution:inst-a")
    ]
    views = [r for r in audit_rows(stack, "viewed") if r.subject_id == str(clip.id)]
    assert [r.actor.split("#")[0] for r in views] == ["institution:inst-a", "supervisor:supervisor"]
    assert all(json.loads(r.details)["sha256"] == clip.sha256 for r in views)


def test_two_asks_at_once_wait_for_one_command(stack: Stack):
    before = len(stack.snapshot_commands(LIVE))
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda who: stack.roll_call(LIVE, who), ["admin", "inst-a"]))
    for answer in answers:
        check_still(answer, LIVE)
    assert answers[0].headers["X-Classcam-Cmd-Id"] == answers[1].headers["X-Classcam-Cmd-Id"]
    assert answers[0].body == answers[1].body
    assert len(stack.snapshot_commands(LIVE)) == before + 1
    # Answered: the next ask is a new roll call, a new picture.
    third = stack.roll_call(LIVE, "admin")
    check_still(third, LIVE)
    assert third.headers["X-Classcam-Cmd-Id"] != answers[0].headers["X-Classcam-Cmd-Id"]


def test_a_device_that_never_connected_is_refused_at_once(stack: Stack):
    answer = stack.roll_call(NEVER)
    assert answer.status == 409, answer.body
    detail = answer.json()["detail"]
    assert detail["code"] == "device_offline" and detail["device_id"] == NEVER
    assert "离线" in detail["message"]  # zh-CN unless asked otherwise
    assert detail["last_heartbeat_at"] is None
    assert answer.elapsed < WAIT_S / 2  # at once, not after a wait
    assert stack.snapshot_commands(NEVER) == []


def test_a_stopped_agent_is_refused_at_once_with_its_last_heartbeat(stack: Stack):
    wait_for(lambda: stack.device(LIVE)["last_heartbeat_at"] is not None, what="a heartbeat")
    stack.agent.terminate()  # a clean stop: the agent says offline before it goes
    stack.agent.wait(20)
    try:
        wait_for(lambda: not stack.online(LIVE), 20, "the stopped agent offline")
        before = len(stack.snapshot_commands(LIVE))
        answer = stack.roll_call(LIVE, **{"Accept-Language": "en"})
        assert answer.status == 409, answer.body
        detail = answer.json()["detail"]
        assert detail["code"] == "device_offline" and detail["status"] == "offline"
        last = stack.device(LIVE)["last_heartbeat_at"]
        assert datetime.fromisoformat(detail["last_heartbeat_at"]) == datetime.fromisoformat(last)
        assert "offline" in detail["message"]
        assert answer.elapsed < WAIT_S / 2  # at once, not after a wait
        assert len(stack.snapshot_commands(LIVE)) == before
    finally:
        stack.agent = stack.live.spawn("run")
        wait_for(lambda: stack.online(LIVE), 60, "the agent online again")


def test_another_school_and_a_lecturer_are_refused_and_nothing_is_sent(stack: Stack):
    before = len(stack.snapshot_commands(LIVE))
    for who in ("inst-b", "lecturer"):
        answer = stack.roll_call(LIVE, who)
        assert answer.status == 403, (who, answer.body)
        assert b"heartbeat" not in answer.body
    assert stack.roll_call("cam-nowhere", "admin").status == 404
    assert stack.roll_call("cam-nowhere", "inst-b").status == 404
    assert stack.call("POST", f"/api/v1/devices/{LIVE}/snapshot", "inst-b").status == 403
    assert len(stack.snapshot_commands(LIVE)) == before
    # school-b reaches its own camera's roll call (offline: it never connected).
    assert stack.roll_call(OTHER, "inst-b").json()["detail"]["code"] == "device_offline"
    assert stack.roll_call(OTHER, "inst-a").status == 403
    # Nor may it read school-a's roll calls.
    cmd_id = stack.snapshot_commands(LIVE)[0].cmd_id if before else "rollcall-x"
    follow_up = f"/api/v1/devices/{LIVE}/snapshots/{cmd_id}"
    assert stack.call("GET", follow_up, "inst-b").status == 403
    assert stack.call("GET", follow_up, "lecturer").status == 403


def test_a_silent_device_times_out_and_its_still_is_served_later_never_a_forgery(stack: Stack):
    os.kill(stack.agent.pid, signal.SIGSTOP)  # online by its status, but answers nothing
    try:
        assert stack.online(LIVE)
        answer = stack.roll_call(LIVE, "supervisor")
        assert answer.status == 504, answer.body
        assert WAIT_S - 0.5 <= answer.elapsed < WAIT_S + 3
        detail = answer.json()["detail"]
        cmd_id = detail["cmd_id"]
        follow_up = f"/api/v1/devices/{LIVE}/snapshots/{cmd_id}"
        assert detail["code"] == "snapshot_timeout"
        assert answer.headers["Location"] == follow_up == detail["follow_up"]
        pending = stack.call("GET", follow_up, "inst-a")
        assert pending.status == 202 and pending.headers["Retry-After"]
        assert pending.json()["state"] == "pending" and pending.json()["cmd_id"] == cmd_id
        # A second ask while it is pending waits for the same command: nothing more is sent.
        again = stack.roll_call(LIVE, "admin")
        assert again.status == 504 and again.json()["detail"]["cmd_id"] == cmd_id
        assert [c.cmd_id for c in stack.snapshot_commands(LIVE)].count(cmd_id) == 1
        # Another device signs a still naming the command: it is stored (its own upload) and
        # never served as this roll call's answer.
        forged = Image.new("RGB", (64, 48), "red")
        buffer = io.BytesIO()
        forged.save(buffer, "JPEG")
        stack.forger.upload_still(stack.root, cmd_id, buffer.getvalue())
        wait_for(
            lambda: bool(stack.rows(select(Clip.id).where(Clip.device_id == FORGER))),
            what="the forger's still stored",
        )
        assert stack.call("GET", follow_up, "inst-a").status == 202
        forged_follow_up = f"/api/v1/devices/{FORGER}/snapshots/{cmd_id}"
        assert stack.call("GET", forged_follow_up, "admin").status == 404
    finally:
        os.kill(stack.agent.pid, signal.SIGCONT)
    late: list[Answer] = []

    def arrived() -> bool:
        late.append(stack.call("GET", follow_up, "inst-a"))
        return late[-1].status != 202

    wait_for(arrived, 30, "the thawed camera's still")
    image = check_still(late[-1], LIVE)
    assert image.size == (SMALL_CAMERA["width"], SMALL_CAMERA["height"])
    assert late[-1].headers["X-Classcam-Cmd-Id"] == cmd_id
    assert late[-1].body != buffer.getvalue()


def test_a_device_that_cannot_take_a_picture_says_why(stack: Stack):
    stack.forger.answer_snapshots_with_failure = True
    try:
        answer = stack.roll_call(FORGER, **{"Accept-Language": "en"})
    finally:
        stack.forger.answer_snapshots_with_failure = False
    assert answer.status == 502, answer.body
    detail = answer.json()["detail"]
    assert detail["code"] == "snapshot_failed" and detail["reason"] == "camera_busy"
    assert detail["device_detail"] == "lens cover closed"
    assert "lens cover closed" in detail["message"]
    assert answer.elapsed < WAIT_S
    follow_up = stack.call("GET", f"/api/v1/devices/{FORGER}/snapshots/{detail['cmd_id']}", "admin")
    assert follow_up.status == 502 and follow_up.json()["detail"]["reason"] == "camera_busy"
    assert [c.cmd_id for c in stack.forger.commands][-1] == detail["cmd_id"]


def test_the_wait_holds_no_database_connection_and_a_late_still_is_not_a_new_answer(
    stack: Stack,
):
    """While a roll call waits on a silent device, the rest of the API answers at once. Its
    still arriving after the 504 (nobody asked the follow-up) does not answer the next roll
    call: that one asks for a picture again."""
    before = len(stack.snapshot_commands(LIVE))
    os.kill(stack.agent.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(stack.roll_call, LIVE, "admin")
            wait_for(lambda: len(stack.snapshot_commands(LIVE)) > before, what="the roll call sent")
            began = time.monotonic()
            assert stack.call("GET", "/api/v1/devices", "admin").status == 200
            assert time.monotonic() - began < WAIT_S / 2
            timed_out = waiting.result()
            assert timed_out.status == 504
    finally:
        os.kill(stack.agent.pid, signal.SIGCONT)
    late_cmd = timed_out.json()["detail"]["cmd_id"]
    wait_for(
        lambda: bool(stack.rows(select(Clip.id).where(Clip.cmd_id == late_cmd))),
        what="the late still stored",
    )
    fresh = stack.roll_call(LIVE, "admin")
    check_still(fresh, LIVE)
    assert fresh.headers["X-Classcam-Cmd-Id"] != late_cmd


# -- the limits, in process: the API alone, a command link that nobody answers ----------------


@dataclass
class QuietApi:
    client: TestClient
    factory: Any
    token: str

    def sent(self) -> list[str]:
        """The devices sent a roll call, in order."""
        with self.factory() as db:
            rows = db.scalars(select(DeviceCommand).order_by(DeviceCommand.created_at))
            return [row.device_id for row in rows]


@pytest.fixture
def quiet_api(tmp_path: Path, sqlite_url: str) -> Iterator[QuietApi]:
    """The API on its own database, its commands kept by the scheduler's ``send_command`` for
    a broker nobody runs: every roll call waits out ``snapshot_wait_s`` (5 s), and only one
    may wait at a time."""
    settings = Settings(
        data_dir=tmp_path, database_url=sqlite_url, snapshot_wait_s=5.0, snapshot_max_waiters=1
    )
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    keys = {d: public_key_b64(generate_private_key()) for d in (LIVE, FORGER, NEVER, OTHER)}
    doc = tmp_path / "setup.json"
    doc.write_text(json.dumps(setup_doc(keys)))
    now = datetime.now(UTC)
    with factory.begin() as db:
        import_rows(db, read_rows(doc), settings)
        db.flush()
        for device_id in (LIVE, FORGER, NEVER):
            db.add(DeviceHealth(device_id=device_id, status="online", status_at=now))
        disabled = db.get(DeviceRow, NEVER)
        assert disabled is not None
        disabled.enabled = False
        _, token = create_token(db, Role.ADMIN, now, name="quiet-admin")
    fleet = DeviceMessages(factory, settings.heartbeat_timeout_s)
    scheduler = Scheduler(settings, factory, fleet, recompute=lambda ids: None)
    context = ApiContext(
        settings,
        factory,
        EvidenceStore(settings.evidence_dir),
        recompute=lambda ids: None,
        send_command=scheduler.send_command,
    )
    with TestClient(create_app(context), headers={"Authorization": f"Bearer {token}"}) as client:
        yield QuietApi(client, factory, token)
    engine.dispose()


def test_past_the_waiters_bound_a_roll_call_is_refused_with_retry_after(quiet_api: QuietApi):
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(quiet_api.client.post, f"/api/v1/devices/{LIVE}/snapshot")
        wait_for(lambda: quiet_api.sent() == [LIVE], what="the first roll call sent")
        second = quiet_api.client.post(f"/api/v1/devices/{FORGER}/snapshot?lang=en")
        assert second.status_code == 503, second.text
        assert second.headers["Retry-After"]
        assert second.json()["detail"]["code"] == "too_many_waiters"
        assert second.json()["detail"]["message"].startswith("Too many roll calls")
        assert first.result().status_code == 504
    assert quiet_api.sent() == [LIVE]
    # The waiter's place is given back.
    assert quiet_api.client.app.state.roll_calls.waiters == 0  # type: ignore[attr-defined]
    # Its camera goes offline: the follow-up says the roll call waits for it to come back.
    with quiet_api.factory.begin() as db:
        health = db.get(DeviceHealth, LIVE)
        assert health is not None
        health.status = "offline"
    follow_up = first.result().headers["Location"]
    pending = quiet_api.client.get(follow_up)
    assert pending.status_code == 202 and pending.headers["Retry-After"]
    assert pending.json()["device_online"] is False and "离线" in pending.json()["message"]


def test_a_disabled_device_is_refused_at_once(quiet_api: QuietApi):
    answer = quiet_api.client.post(f"/api/v1/devices/{NEVER}/snapshot")
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"]["code"] == "device_disabled"
    assert "停用" in answer.json()["detail"]["message"]
    assert quiet_api.sent() == []


def test_pending_roll_calls_are_joined_within_the_window_and_settled_on_an_answer():
    clock = [0.0]
    calls = RollCalls(max_waiters=2, join_window_s=60, monotonic=lambda: clock[0])
    first, started = calls.claim("cam", "cmd-1")
    assert started and first.cmd_id == "cmd-1"
    joined, started = calls.claim("cam", "cmd-2")
    assert not started and joined is first
    other, started = calls.claim("cam-2", "cmd-3")
    assert started and other.cmd_id == "cmd-3"
    calls.settle("cam", "cmd-1")
    assert calls.claim("cam", "cmd-4")[0].cmd_id == "cmd-4"
    clock[0] = 61.0  # unanswered past the window: the next ask sends again
    renewed, started = calls.claim("cam", "cmd-5")
    assert started and renewed.cmd_id == "cmd-5"
    calls.settle("cam", "cmd-4")  # a stale settle leaves the newer roll call alone
    assert calls.pending("cam") == "cmd-5"
    with calls.waiting() as a, calls.waiting() as b, calls.waiting() as c:
        assert (a, b, c) == (True, True, False)
        assert calls.waiters == 2
    assert calls.waiters == 0


def test_presence_is_the_status_and_a_fresh_heartbeat():
    now = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    beat = now - timedelta(seconds=100)
    assert presence_of(None, now, 90) == Presence(False, "unknown", None, None)
    online = DeviceHealth(device_id="d", status="online", status_at=beat, last_heartbeat_at=beat)
    assert not presence_of(online, now, 90).online  # its heartbeats stopped
    assert presence_of(online, now, 120).online
    just_connected = DeviceHealth(device_id="d", status="online", status_at=now)
    assert presence_of(just_connected, now, 90).online
    offline = DeviceHealth(device_id="d", status="offline", status_at=now, last_heartbeat_at=now)
    assert not presence_of(offline, now, 90).online
