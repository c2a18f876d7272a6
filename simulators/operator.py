"""A control console that speaks to devices the way the ingest server does: commands,
timetables, and a record of every event, heartbeat and presence message devices publish.
Tests, benchmarks and scenario replays use it in place of the scheduler."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt

from common import topics
from common.clock import utc_now
from common.commands import Command, CommandType, Schedule, ScheduledSession
from common.heartbeat import Heartbeat
from common.schemas import Event, Status, decode
from simulators.broker import OPERATOR_USER, MosquittoBroker


class Operator:
    """The server side of control, as a paho client on an account of its own (a login is its
    client id, so it cannot share the server's)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.events: list[Event] = []
        self.heartbeats: list[tuple[float, Heartbeat]] = []
        self.statuses: list[Status] = []
        self._changed = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=OPERATOR_USER,
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(OPERATOR_USER, broker.accounts.passwords[OPERATOR_USER])
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(
            [
                (f"{topics.UP}/+/event", 1),
                (f"{topics.UP}/+/heartbeat", 1),
                (f"{topics.UP}/+/status", 1),
            ]
        )
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        with self._changed:
            if kind == "event":
                self.events.append(decode(Event, bytes(msg.payload)))
            elif kind == "heartbeat":
                self.heartbeats.append((time.monotonic(), decode(Heartbeat, bytes(msg.payload))))
            elif kind == "status":
                self.statuses.append(decode(Status, bytes(msg.payload)))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out; events so far: "
                        f"{[(e.type.value, e.cmd_id) for e in self.events]}"
                    )
                self._changed.wait(min(left, 0.2))

    def reply_to(self, cmd_id: str, timeout: float = 20.0) -> Event:
        return self.wait_for(
            lambda: next((e for e in self.events if e.cmd_id == cmd_id), None), timeout
        )

    def replies_to(self, cmd_id: str) -> list[Event]:
        with self._changed:
            return [e for e in self.events if e.cmd_id == cmd_id]

    def send(
        self, device_id: str, type_: CommandType, cmd_id: str | None = None, **fields: Any
    ) -> Command:
        cmd = Command(
            cmd_id=cmd_id or uuid.uuid4().hex[:12], type=type_, issued_at=utc_now(), **fields
        )
        self.client.publish(topics.cmd(device_id), cmd.to_bytes(), qos=1).wait_for_publish(5)
        return cmd

    def timetable(self, device_id: str, *sessions: tuple[str, datetime, float]) -> None:
        schedule = Schedule(
            device_id=device_id,
            issued_at=utc_now(),
            sessions=[
                ScheduledSession(session_id=s, start=start, duration_s=d)
                for s, start, d in sessions
            ],
        )
        self.client.publish(
            topics.schedule(device_id), schedule.to_bytes(), qos=1, retain=True
        ).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
