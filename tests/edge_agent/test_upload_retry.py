"""Refusals that can pass are tried again later; final ones are final.

A camera installed before anyone registered it is refused ``unknown_device``: its clips wait in
the outbox with capped, jittered backoff kept on disk (a restart neither resets nor forgets it)
and go up once the device is registered, while clips not waiting are not held up."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from agent_harness import Operator, field_device

from common.clock import SystemClock, VirtualClock
from common.signing import generate_private_key, public_key_b64
from edge_agent.clips import enqueue_snapshot
from edge_agent.outbox import Outbox, OutboxState
from edge_agent.service import AgentService
from edge_agent.uplink import refusal_backoff
from simulators.broker import MosquittoBroker
from simulators.harness import ServerProcess

# -- pure backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refusals", "jitter", "expected"),
    [
        (1, 1.0, 30.0),
        (2, 1.0, 60.0),
        (3, 0.5, 60.0),
        (7, 1.0, 1920.0),
        (8, 1.0, 3600.0),  # capped
        (10_000, 1.0, 3600.0),  # no overflow after months of refusals
        (0, 1.0, 30.0),
    ],
)
def test_refusal_backoff_doubles_from_the_minimum_up_to_the_cap(
    refusals: int, jitter: float, expected: float
):
    assert refusal_backoff(refusals, 30.0, 3600.0, jitter) == pytest.approx(expected)


# -- the outbox keeps the backoff ----------------------------------------------------------------

_OLD_SCHEMA = """
CREATE TABLE outbox (
    upload_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    manifest_payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""


def test_an_outbox_from_before_retries_is_upgraded_in_place_and_keeps_its_clips(tmp_path: Path):
    clip = tmp_path / "u-old.mp4"
    clip.write_bytes(b"x" * 10)
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        db.execute(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO outbox VALUES ('u-old', ?, x'7b7d', 10, 1024, ?, 'pending', NULL, 3,"
            " '2025-03-03T08:00:00+00:00', '2025-03-03T08:00:00+00:00')",
            (str(clip), "0" * 64),
        )
    clock = VirtualClock(datetime(2025, 3, 3, 9, tzinfo=UTC))
    outbox = Outbox(tmp_path, clock)
    item = outbox.get("u-old")
    assert item is not None and item.state == OutboxState.PENDING and clip.exists()
    assert item.refusals == 0 and item.next_attempt_at is None
    assert [i.upload_id for i in outbox.due(timedelta(hours=1))] == ["u-old"]

    at = outbox.defer("u-old", "unknown_device", timedelta(seconds=90))
    outbox.close()
    reopened = Outbox(tmp_path, clock)  # a restart: the wait is on disk
    item = reopened.get("u-old")
    assert item is not None and item.refusals == 1 and item.next_attempt_at == at
    assert item.reason == "unknown_device" and item.state == OutboxState.PENDING
    assert reopened.due(timedelta(hours=1)) == []
    assert reopened.next_due_at() == at
    clock.advance(89)
    assert reopened.due(timedelta(hours=1)) == []
    clock.advance(1)
    assert [i.upload_id for i in reopened.due(timedelta(hours=1))] == ["u-old"]


class _WallClock(SystemClock):
    """A wall clock that can be stepped, back as well as forward."""

    def __init__(self, wall: datetime) -> None:
        self.wall = wall

    def now(self) -> datetime:
        return self.wall


def test_a_retry_time_beyond_the_longest_wait_counts_as_due(tmp_path: Path):
    """The wall clock stepped back (a Pi without RTC before NTP): the wait is not meant."""
    clock = _WallClock(datetime(2025, 3, 3, 9, tzinfo=UTC))
    outbox = Outbox(tmp_path, clock)
    outbox.enqueue("u", tmp_path / "u.mp4", b"{}", size=1, chunk_size=1024, sha256="0" * 64)
    outbox.defer("u", "server_busy", timedelta(minutes=30))
    assert outbox.due(timedelta(hours=1)) == []
    clock.wall -= timedelta(hours=3)
    assert [i.upload_id for i in outbox.due(timedelta(hours=1))] == ["u"]


# -- against the real server ---------------------------------------------------------------------


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _snapshot(service: AgentService) -> str:
    ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
    assert ok
    item = enqueue_snapshot(
        service.outbox,
        service.key,
        jpeg.tobytes(),
        service.clock.now(),
        width=64,
        height=48,
        device_id=service.config.device_id,
        chunk_size=service.config.upload.chunk_size,
        clock=service.clock,
    )
    time.sleep(0.002)  # distinct created_at: the outbox sends oldest first
    return item.upload_id


def _clip_ids(server: ServerProcess) -> set[str]:
    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as db:
        return {row[0] for row in db.execute("SELECT upload_id FROM clips")}


def _refusals(service: AgentService, upload_id: str) -> int:
    item = service.outbox.get(upload_id)
    assert item is not None
    assert item.state == OutboxState.PENDING, (item.state, item.reason)
    return item.refusals


def test_a_clip_refused_unknown_device_goes_up_once_the_device_is_registered(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    device, config = field_device(
        tmp_path,
        mosquitto,
        server,
        "cam-retry-1",
        settings={"upload": {"retry_min_s": 1.0, "retry_max_s": 2.0}},
        register=False,
    )
    service = AgentService(config)
    upload_id = _snapshot(service)
    service.start()
    try:
        _wait(lambda: _refusals(service, upload_id) >= 1, 20, "the first refusal")
        item = service.outbox.get(upload_id)
        assert item is not None and item.reason == "unknown_device"
        assert item.next_attempt_at is not None and item.path.exists()
        # Still refused while unregistered: tried again, and again kept.
        _wait(lambda: _refusals(service, upload_id) >= 2, 20, "a second refusal")
        assert upload_id not in _clip_ids(server)
        server.register_device(device.device_id, device.public_key)
        _wait(lambda: upload_id in _clip_ids(server), 30, "the clip on the server")
        done = _wait(
            lambda: (i := service.outbox.get(upload_id)) and i.state == OutboxState.COMPLETE and i,
            20,
            "the server's complete",
        )
        assert not done.path.exists()
    finally:
        service.stop()


def test_a_clip_waiting_for_its_retry_holds_up_no_other_and_a_restart_keeps_the_wait(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(
        tmp_path,
        mosquitto,
        server,
        "cam-retry-2",
        settings={"upload": {"retry_min_s": 120.0, "retry_max_s": 600.0}},
        register=False,
    )
    service = AgentService(config)
    first, second = _snapshot(service), _snapshot(service)
    service.start()
    try:
        # Both are tried at once: the second does not wait out the first one's backoff.
        _wait(
            lambda: _refusals(service, first) == 1 and _refusals(service, second) == 1,
            20,
            "both clips refused once",
        )
        item = service.outbox.get(first)
        assert item is not None and item.next_attempt_at is not None
        assert item.next_attempt_at - service.clock.now() > timedelta(seconds=50)
    finally:
        service.stop()
    restarted = AgentService(config)
    restarted.start()
    try:
        assert restarted.link.wait_connected(10)
        third = _snapshot(restarted)
        restarted.uploads_ready.set()
        # A clip not waiting still goes straight to the server (and is refused at once)...
        _wait(lambda: _refusals(restarted, third) == 1, 20, "the new clip tried")
        # ...while the two waiting ones were not tried again on restart.
        assert _refusals(restarted, first) == 1 and _refusals(restarted, second) == 1
    finally:
        restarted.stop()


def test_a_final_refusal_still_marks_the_clip_rejected(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    device, config = field_device(
        tmp_path,
        mosquitto,
        server,
        "cam-retry-3",
        settings={"upload": {"retry_min_s": 1.0, "retry_max_s": 2.0}},
        register=False,
    )
    # Registered under a key it does not sign with.
    server.register_device(device.device_id, public_key_b64(generate_private_key()))
    service = AgentService(config)
    upload_id = _snapshot(service)
    service.start()
    try:
        _wait(
            lambda: (i := service.outbox.get(upload_id)) and i.state == OutboxState.REJECTED,
            20,
            "the clip rejected",
        )
        item = service.outbox.get(upload_id)
        assert item is not None and item.reason == "signature_invalid"
        assert item.refusals == 0 and item.path.exists()
        assert service.uploader.stats.deferred == 0
    finally:
        service.stop()
