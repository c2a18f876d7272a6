"""One clip the server cannot finish holds up no other (issue 8, finding 8).

The uploader takes pending clips in turn, each attempt bounded: an attempt that ends without
``complete`` (no answer, a refusal that can pass, a fin that makes no progress) is charged to
that clip, which waits with backoff kept on disk while the others go on. A clip that spent its
budget is parked: kept on disk, tried again slowly, counted in the heartbeat."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from agent_harness import Operator, field_device

from common import topics
from common.clock import VirtualClock
from common.schemas import Ack, AckReplyTo, AckState
from edge_agent.clips import enqueue_snapshot
from edge_agent.config import load_config
from edge_agent.outbox import Outbox, OutboxState
from edge_agent.service import AgentService
from edge_agent.uplink import MqttLink, Uploader
from simulators.broker import OPERATOR_USER, MosquittoBroker
from simulators.harness import ServerProcess, provision_device


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _snapshot(service: AgentService, shade: int) -> str:
    ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), shade, np.uint8))
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
    time.sleep(0.002)  # distinct created_at
    return item.upload_id


def _clip_ids(server: ServerProcess) -> set[str]:
    with sqlite3.connect(server.db_url.removeprefix("sqlite:///")) as db:
        return {row[0] for row in db.execute("SELECT upload_id FROM clips")}


def _corrupt(path: Path) -> None:
    """The clip's bytes change after it was signed (a bad sector): no hash will ever match."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_clip_the_server_cannot_finish_does_not_block_the_clips_after_it(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(
        tmp_path,
        mosquitto,
        server,
        "cam-budget-1",
        settings={
            "upload": {
                "ack_timeout_s": 2.0,
                "retry_min_s": 0.2,
                "retry_max_s": 0.5,
                "max_attempts": 3,
                "parked_retry_s": 3600.0,
            }
        },
    )
    service = AgentService(config)
    broken = _snapshot(service, 40)
    second, third = _snapshot(service, 120), _snapshot(service, 200)
    item = service.outbox.get(broken)
    assert item is not None
    _corrupt(item.path)
    service.start()
    try:
        _wait(lambda: {second, third} <= _clip_ids(server), 30, "the later clips on the server")

        def completed() -> bool:
            # The server stores a clip before its ``complete`` reaches the agent.
            done = [service.outbox.get(u) for u in (second, third)]
            return all(d is not None and d.state == OutboxState.COMPLETE for d in done)

        _wait(completed, 10, "the complete acks")
        # The broken one spends its budget and is parked, never deleted nor marked rejected.
        parked = _wait(
            lambda: (i := service.outbox.get(broken)) and i.parked and i,
            30,
            "the broken clip parked",
        )
        assert parked.state == OutboxState.PENDING and parked.path.exists()
        assert parked.attempts == 3
        assert parked.next_attempt_at is not None
        assert parked.next_attempt_at - service.clock.now() > timedelta(minutes=20)
        assert broken not in _clip_ids(server)
        heartbeat = service.heartbeat()
        assert heartbeat.outbox_parked == 1 and heartbeat.outbox_pending == 1
        # The uploader counts the attempt just after the outbox has it durably: wait for it.
        _wait(lambda: service.uploader.stats.failed_attempts >= 3, 10, "the third failure")
    finally:
        service.stop()
    # A restart neither forgets the budget spent nor the slow cadence.
    reopened = Outbox(config.outbox_dir)
    try:
        again = reopened.get(broken)
        assert again is not None and again.parked and again.attempts == 3
        assert reopened.due(timedelta(seconds=0.5), timedelta(hours=2)) == []
    finally:
        reopened.close()


def test_due_clips_are_taken_least_recently_tried_first(tmp_path: Path):
    clock = VirtualClock(datetime(2026, 3, 3, 9, tzinfo=UTC))
    outbox = Outbox(tmp_path, clock)
    for name in ("a", "b", "c"):
        outbox.enqueue(name, tmp_path / f"{name}.mp4", b"{}", size=1, chunk_size=1024, sha256="0")
        clock.advance(1)
    wait = timedelta(hours=1)
    assert [i.upload_id for i in outbox.due(wait)] == ["a", "b", "c"]
    outbox.note_attempt("a")
    outbox.attempt_failed(
        "a", "no_answer", timedelta(seconds=5), max_attempts=2, parked_delay=timedelta(hours=6)
    )
    clock.advance(10)
    # "a" is due again, but the clips never tried go before it.
    assert [i.upload_id for i in outbox.due(wait)] == ["b", "c", "a"]
    outbox.note_attempt("b")
    outbox.attempt_failed(
        "b", "no_answer", timedelta(seconds=1), max_attempts=2, parked_delay=timedelta(hours=6)
    )
    clock.advance(5)
    assert [i.upload_id for i in outbox.due(wait)] == ["c", "a", "b"]
    # The second failure of "a" spends its budget: parked for the slow cadence.
    outbox.note_attempt("a")
    at = outbox.attempt_failed(
        "a", "no_answer", timedelta(seconds=5), max_attempts=2, parked_delay=timedelta(hours=6)
    )
    item = outbox.get("a")
    assert item is not None and item.parked and item.attempts == 2
    assert at == clock.now() + timedelta(hours=6)
    assert outbox.count_parked() == 1 and outbox.count() == 3
    assert [i.upload_id for i in outbox.due(timedelta(days=1))] == ["c", "b"]
    outbox.close()


def test_a_silent_server_costs_each_clip_one_attempt_in_turn(
    tmp_path: Path, mosquitto: MosquittoBroker
):
    """No server answers (it is down, or cannot store): the first clip does not hold the
    pass; every clip is tried once, charged, and waits for its backoff."""
    device = provision_device(
        tmp_path / "devices",
        "cam-silent",
        mosquitto,
        settings={"upload": {"ack_timeout_s": 0.3, "retry_min_s": 60.0, "retry_max_s": 120.0}},
    )
    config = load_config(device.config_path)
    outbox = Outbox(config.outbox_dir)
    for name in ("s-1", "s-2", "s-3"):
        path = outbox.file_path(name)
        path.write_bytes(b"x" * 100)
        outbox.enqueue(name, path, b"{}", size=100, chunk_size=1024, sha256="0" * 64)
    link = MqttLink(config, config.broker_password())
    uploader = Uploader(link, outbox, config.upload)
    stop = threading.Event()
    link.start()
    try:
        assert link.wait_connected(10)
        passing = threading.Thread(target=uploader.drain, args=(stop,), daemon=True)
        passing.start()
        passing.join(15)
        assert not passing.is_alive(), "one silent upload held the whole pass"
        items = [outbox.get(name) for name in ("s-1", "s-2", "s-3")]
        assert all(i is not None and i.attempts == 1 for i in items)
        assert all(
            i is not None
            and i.next_attempt_at is not None
            and i.next_attempt_at - outbox.clock.now() > timedelta(seconds=25)
            and i.reason == "no_answer"
            and i.path.exists()
            for i in items
        )
        assert uploader.stats.failed_attempts == 3
        assert outbox.due(timedelta(seconds=120)) == []
    finally:
        stop.set()
        link.stop()
        outbox.close()


def _parked(outbox: Outbox, clock: VirtualClock, name: str, *, attempts: int = 2) -> None:
    """Spend the budget of ``name`` with attempts no server answered (it was down)."""
    for _ in range(attempts):
        outbox.note_attempt(name)
        outbox.attempt_failed(
            name,
            "no_answer",
            timedelta(seconds=30),
            max_attempts=attempts,
            parked_delay=timedelta(hours=6),
        )
        clock.advance(60)
    item = outbox.get(name)
    assert item is not None and item.parked


def test_an_attempt_that_moves_bytes_unparks_the_clip_with_a_fresh_budget(tmp_path: Path):
    """A clip parked while the server was down, then tried on a flaky link: every attempt that
    gets bytes across (the server lacks fewer than it ever said) is progress, not failure."""
    clock = VirtualClock(datetime(2026, 3, 3, 9, tzinfo=UTC))
    outbox = Outbox(tmp_path, clock)
    outbox.enqueue("big", tmp_path / "big.mp4", b"{}", size=1000, chunk_size=100, sha256="0")
    _parked(outbox, clock, "big")
    clock.advance(6 * 3600)
    assert [i.upload_id for i in outbox.due(timedelta(hours=1), timedelta(hours=6))] == ["big"]
    # The server is back; the init is answered (all 1000 bytes missing), the link breaks
    # after 400 bytes; the next attempt's init says 600 are missing: a new low.
    outbox.note_attempt("big")
    assert not outbox.note_missing("big", 1000)
    outbox.attempt_failed(
        "big", "no_answer", timedelta(seconds=30), max_attempts=2, parked_delay=timedelta(hours=6)
    )
    outbox.note_attempt("big")
    assert outbox.note_missing("big", 600)
    at = outbox.attempt_failed(
        "big",
        "no_answer",
        timedelta(seconds=30),
        max_attempts=2,
        parked_delay=timedelta(hours=6),
        progressed=True,
    )
    item = outbox.get("big")
    assert item is not None and not item.parked and item.attempts == 0
    assert at == clock.now() + timedelta(seconds=30)
    assert outbox.count_parked() == 0
    # Only a new low counts: the same gap again, or a larger one, is no progress.
    assert not outbox.note_missing("big", 600)
    assert not outbox.note_missing("big", 900)
    assert outbox.note_missing("big", 100)
    outbox.close()


def test_a_clip_completing_makes_the_parked_clips_due_at_once_budget_kept(tmp_path: Path):
    """Every clip was parked during a server outage; a clip completing shows the server is
    back: the parked ones are tried now, not in six hours. Their budget is kept, so one that
    still fails without progress goes straight back to the slow cadence."""
    clock = VirtualClock(datetime(2026, 3, 3, 9, tzinfo=UTC))
    outbox = Outbox(tmp_path, clock)
    for name in ("p1", "p2", "new"):
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(b"x")
        outbox.enqueue(name, path, b"{}", size=1, chunk_size=1024, sha256="0")
        clock.advance(1)
    _parked(outbox, clock, "p1")
    _parked(outbox, clock, "p2")
    assert [i.upload_id for i in outbox.due(timedelta(hours=1), timedelta(hours=6))] == ["new"]
    outbox.note_attempt("new")
    outbox.mark_complete("new")
    due = outbox.due(timedelta(hours=1), timedelta(hours=6))
    assert sorted(i.upload_id for i in due) == ["p1", "p2"]
    # p1 is tried and fails again without progress: parked again at once, 6 h.
    outbox.note_attempt("p1")
    at = outbox.attempt_failed(
        "p1", "no_answer", timedelta(seconds=30), max_attempts=2, parked_delay=timedelta(hours=6)
    )
    assert at == clock.now() + timedelta(hours=6)
    item = outbox.get("p1")
    assert item is not None and item.parked and item.attempts == 3
    assert [i.upload_id for i in outbox.due(timedelta(hours=1), timedelta(hours=6))] == ["p2"]
    outbox.close()


class _FlakyServer:
    """Stands in for the ingest server on a real broker: each ``init`` is answered with fewer
    bytes missing (the chunks of the attempt before got through), no ``fin`` is answered (the
    link drops before the answer comes back), and the ``init`` after ``complete_after`` finds
    the clip whole."""

    def __init__(self, broker: MosquittoBroker, device_id: str, size: int, step: int) -> None:
        self.size, self.step, self.inits = size, step, 0
        self.complete_after = size // step
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=OPERATOR_USER)
        self.client.username_pw_set(OPERATOR_USER, broker.accounts.passwords[OPERATOR_USER])
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"classcam/v1/up/{device_id}/file/+/init", qos=1)
        self.device_id = device_id
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        upload_id = msg.topic.split("/")[-2]
        held = min(self.inits * self.step, self.size)
        self.inits += 1
        ack = Ack(
            upload_id=upload_id,
            state=AckState.COMPLETE if held >= self.size else AckState.MISSING,
            reply_to=AckReplyTo.INIT,
            missing=[] if held >= self.size else [(held, self.size)],
            server_time=datetime.now(UTC),
        )
        client.publish(topics.ack(self.device_id), ack.to_bytes(), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_large_clip_on_a_flaky_link_is_never_parked_while_it_moves(
    tmp_path: Path, mosquitto: MosquittoBroker
):
    """Every attempt is cut short (no answer to its fin), yet each gets bytes across: with a
    budget of two attempts the clip must not be parked for six hours after its second."""
    device = provision_device(
        tmp_path / "devices",
        "cam-flaky",
        mosquitto,
        settings={
            "upload": {
                "ack_timeout_s": 0.3,
                "retry_min_s": 0.05,
                "retry_max_s": 0.1,
                "max_attempts": 2,
                "parked_retry_s": 3600.0,
            }
        },
    )
    config = load_config(device.config_path)
    outbox = Outbox(config.outbox_dir)
    path = outbox.file_path("big-1")
    path.write_bytes(b"x" * 1000)
    outbox.enqueue("big-1", path, b"{}", size=1000, chunk_size=100, sha256="0" * 64)
    server = _FlakyServer(mosquitto, "cam-flaky", size=1000, step=200)
    link = MqttLink(config, config.broker_password())
    uploader = Uploader(link, outbox, config.upload)
    link.start()
    try:
        assert link.wait_connected(10)
        deadline = time.monotonic() + 30
        while (item := outbox.get("big-1")) is not None and item.state == OutboxState.PENDING:
            assert not item.parked, f"parked after {item.attempts} attempts that moved bytes"
            assert time.monotonic() < deadline, "the clip never completed"
            uploader.drain()
            time.sleep(0.02)
        assert item is not None and item.state == OutboxState.COMPLETE
        assert server.inits == 6 and uploader.stats.parked == 0
        assert uploader.stats.failed_attempts == 5
    finally:
        server.close()
        link.stop()
        outbox.close()
