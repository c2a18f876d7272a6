"""The agent's field life: heartbeats and presence, a timetable kept while 4G is down, a thin
link that never starves heartbeats, a camera that vanishes, a modem, a full disk."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

from agent_harness import Operator, field_device, later

from common.clock import SystemClock
from common.commands import CommandType
from common.schemas import EventType, StatusState
from edge_agent.camera import CameraSource, SyntheticCamera
from edge_agent.errors import CameraError
from edge_agent.modem import SerialModem
from edge_agent.service import AgentService
from simulators.broker import MosquittoBroker
from simulators.fake_modem import QUECTEL_EC25, FakeModem
from simulators.harness import ServerProcess
from simulators.netlink import ShapedLink


def test_heartbeats_presence_and_will(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    with ShapedLink(mosquitto.host, mosquitto.port) as link:
        _, config = field_device(
            tmp_path,
            mosquitto,
            server,
            "cam-life-1",
            port=link.port,
            settings={"heartbeat": {"interval_s": 1.0}},
        )
        service = AgentService(config)
        service.start()
        try:
            operator.wait_for(lambda: len(operator.heartbeats) >= 3, timeout=15)
            beats = [hb for _, hb in operator.heartbeats]
            assert [hb.seq for hb in beats[:3]] == [1, 2, 3]
            first = beats[0]
            assert first.device_id == "cam-life-1" and first.firmware.startswith("classcam")
            assert first.disk_total_bytes > first.disk_free_bytes > 0
            assert first.bytes_sent_today >= 0 and not first.recording
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(operator.heartbeats)]
            assert all(0.5 < g < 2.5 for g in gaps[:3]), gaps
            assert operator.wait_for(
                lambda: any(
                    s.state == StatusState.ONLINE and s.device_id == "cam-life-1"
                    for s in operator.statuses
                )
            )
            # Coverage lost without a goodbye: the broker publishes the will.
            link.cut()
            operator.wait_for(
                lambda: operator.statuses[-1].state == StatusState.OFFLINE,
                timeout=config.broker.keepalive_s * 2,
            )
        finally:
            link.restore()
            service.stop()


def test_timetable_opens_and_closes_a_session_while_the_link_is_down(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    with ShapedLink(mosquitto.host, mosquitto.port) as link:
        _, config = field_device(tmp_path, mosquitto, server, "cam-life-2", port=link.port)
        operator.timetable(config.device_id, ("tt-1", later(3), 4.0))
        service = AgentService(config)
        service.start()
        try:
            operator.wait_for(lambda: service.state.get("schedule") is not None, timeout=10)
            link.cut()
            time.sleep(0.5)
            assert not service.link.connected.is_set()
            deadline = time.monotonic() + 10
            while service.open is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert service.open is not None and service.open.session_id == "tt-1"
            while service.open is not None and time.monotonic() < deadline + 6:
                time.sleep(0.1)
            assert service.open is None, "closed at its planned end, offline"
            row = service.state.session("tt-1")
            assert row is not None and row.opened_at and row.closed_at
            assert not any(e.session_id == "tt-1" for e in operator.events)
            link.restore()
            started = operator.wait_for(
                lambda: [e for e in operator.events if e.session_id == "tt-1"], timeout=20
            )
            operator.wait_for(
                lambda: (
                    {e.type for e in operator.events if e.session_id == "tt-1"}
                    >= {EventType.SESSION_STARTED, EventType.SESSION_STOPPED}
                ),
                10,
            )
            assert started[0].type == EventType.SESSION_STARTED
            recordings = [r for r in service.spool.recordings() if r.session_id == "tt-1"]
            assert recordings, "recorded while offline"
        finally:
            link.restore()
            service.stop()


def test_heartbeats_and_replies_are_not_starved_by_a_big_upload_on_a_thin_link(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    rate = 120_000  # bytes/s each way: a weak 4G uplink
    with ShapedLink(mosquitto.host, mosquitto.port, rate_bytes_per_s=rate) as link:
        _, config = field_device(
            tmp_path,
            mosquitto,
            server,
            "cam-life-3",
            port=link.port,
            settings={
                "heartbeat": {"interval_s": 1.0},
                "upload": {
                    "rate_limit_bytes_per_s": rate * 6 // 10,
                    "window": 2,
                    "chunk_size": 16384,
                },
            },
        )
        service = AgentService(config)
        from edge_agent.clips import enqueue_snapshot

        # A 1.2 MB file in the outbox: ~17 s of upload at the agent's limit.
        enqueue_snapshot(
            service.outbox,
            service.key,
            os.urandom(1_200_000),
            service.clock.now(),
            width=1,
            height=1,
            device_id=config.device_id,
            chunk_size=16384,
            clock=service.clock,
        )
        service.start()
        try:
            operator.wait_for(lambda: service.uploader.stats.chunks_sent > 10, timeout=20)
            sent = time.monotonic()
            cmd = operator.send(config.device_id, CommandType.CONFIG, settings={"upload_window": 2})
            operator.reply_to(cmd.cmd_id, timeout=10)
            reply_latency = time.monotonic() - sent
            mark = len(operator.heartbeats)
            operator.wait_for(lambda: len(operator.heartbeats) >= mark + 4, timeout=15)
            assert service.outbox.count() == 1, "the upload is still going on"
            times = [t for t, _ in operator.heartbeats[mark - 1 :]]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert max(gaps) < 3.0, gaps
            assert reply_latency < 3.0
        finally:
            service.stop()


class FlakyCameras:
    """The first camera dies after some frames; the next two fail to open; then it is back."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.made = 0

    def __call__(self) -> CameraSource:
        self.made += 1
        if self.made == 1:
            return SyntheticCamera(
                self.device_id,
                width=320,
                height=240,
                fps=10.0,
                clock=SystemClock(),
                fail_after_frames=15,
            )
        if self.made in (2, 3):
            camera = SyntheticCamera(
                self.device_id, width=320, height=240, fps=10.0, clock=SystemClock()
            )
            camera.vanish()
            return camera
        return SyntheticCamera(self.device_id, width=320, height=240, fps=10.0, clock=SystemClock())


def test_camera_that_vanishes_mid_session_is_reported_and_recording_resumes(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-life-4")
    cameras = FlakyCameras(config.device_id)
    service = AgentService(config, camera_factory=cameras)
    service.recorder.settings.retry_min_s = 0.2
    service.start()
    assert service.link.wait_connected(10)
    try:
        cmd = operator.send(config.device_id, CommandType.OPEN_SESSION, session_id="cam-s")
        operator.reply_to(cmd.cmd_id)
        kinds = lambda: [e.type for e in operator.events if e.session_id == "cam-s"]  # noqa: E731
        operator.wait_for(lambda: EventType.CAMERA_RESTORED in kinds(), timeout=20)
        assert EventType.CAMERA_LOST in kinds()
        gap = operator.wait_for(
            lambda: next((e for e in operator.events if e.type == EventType.RECORDING_GAP), None)
        )
        assert gap.data["reason"] == "camera_lost" and gap.data["start"] < gap.data["end"]
        time.sleep(2.5)
        close = operator.send(config.device_id, CommandType.CLOSE_SESSION, session_id="cam-s")
        stopped = operator.reply_to(close.cmd_id)
        assert len(stopped.data["recording_ids"]) == 2
        assert stopped.data["gaps"]
        assert cameras.made >= 4
    finally:
        service.stop()


def test_modem_health_rides_the_heartbeat_and_garbage_is_survived(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    fake = FakeModem(QUECTEL_EC25, clock=SystemClock())
    fake.start()
    modem = SerialModem(fake.path, clock=SystemClock(), command_timeout=0.3)
    modem.open()
    _, config = field_device(
        tmp_path, mosquitto, server, "cam-life-5", settings={"heartbeat": {"interval_s": 1.0}}
    )
    service = AgentService(config, modem=modem)
    service.start()
    try:
        hb = operator.wait_for(lambda: [h for _, h in operator.heartbeats if h.modem], 15)[0]
        assert hb.modem.rssi_dbm is not None and hb.modem.iccid.startswith("8986")
        assert hb.modem.operator
        assert hb.clock_offset_s is not None, "network time seeds the clock offset"
        fake.garbage = True
        mark = len(operator.heartbeats)
        beat = operator.wait_for(
            lambda: [h for _, h in operator.heartbeats[mark:] if h.modem and h.modem.failed], 20
        )[0]
        assert beat.modem.failed
    finally:
        service.stop()
        modem.close()
        fake.stop()


def test_full_disk_deletes_recordings_outside_sessions_never_evidence(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(tmp_path, mosquitto, server, "cam-life-6")
    free = {"bytes": 10 * 1024**3}
    service = AgentService(config, disk_probe=lambda: (free["bytes"], 32 * 1024**3))
    service.start()
    assert service.link.wait_connected(10)
    try:
        for session in ("ev-1", "ev-2"):
            cmd = operator.send(config.device_id, CommandType.OPEN_SESSION, session_id=session)
            operator.reply_to(cmd.cmd_id)
            time.sleep(1.5)
            close = operator.send(config.device_id, CommandType.CLOSE_SESSION, session_id=session)
            operator.reply_to(close.cmd_id)
        # Something recorded outside any session (a test recording by the installer, say).
        from edge_agent.recorder import Recorder

        camera = SyntheticCamera(
            config.device_id, width=320, height=240, fps=10.0, clock=SystemClock()
        )
        loose = Recorder(camera, service.spool, SystemClock(), segment_seconds=1.0).record_for(1.5)
        free["bytes"] = 1024 * 1024  # the SD card is full
        service.cleanup_storage()
        remaining = {r.recording_id: r.session_id for r in service.spool.recordings()}
        assert loose not in remaining, "recordings outside sessions go first"
        assert set(remaining.values()) == {"ev-1", "ev-2"}, "pinned evidence is never deleted"
        low = operator.wait_for(
            lambda: [e for e in operator.events if e.type == EventType.STORAGE_LOW], 10
        )
        assert low[0].data["free_bytes"] < low[0].data["low_water_bytes"]
    finally:
        service.stop()


def test_a_camera_error_is_a_typed_error():
    camera = SyntheticCamera("x", width=64, height=48, fps=10.0, clock=SystemClock())
    camera.vanish()
    try:
        camera.open()
        camera.read()
    except CameraError as exc:
        assert exc.camera
    else:
        raise AssertionError("a vanished camera must raise CameraError")


def test_a_full_sd_card_is_reported_and_recording_resumes_when_space_returns(
    tmp_path: Path, mosquitto: MosquittoBroker, server: ServerProcess, operator: Operator
):
    _, config = field_device(
        tmp_path,
        mosquitto,
        server,
        "cam-life-7",
        settings={"camera": {"width": 640, "height": 360}, "recording": {"bitrate": 2_000_000}},
    )
    spool = config.spool_dir
    spool.mkdir(parents=True)
    # A real filesystem that really fills up: 3 MB of tmpfs under the spool.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(spool)], check=True)
    try:
        service = AgentService(config)
        service.recorder.settings.retry_min_s = 0.2
        service.start()
        assert service.link.wait_connected(10)
        try:
            filler = spool / "filler"
            filler.write_bytes(b"\0" * (2 * 1024 * 1024 + 512 * 1024))
            cmd = operator.send(config.device_id, CommandType.OPEN_SESSION, session_id="full")
            operator.reply_to(cmd.cmd_id)
            error = operator.wait_for(
                lambda: next((e for e in operator.events if e.type == EventType.ERROR), None),
                timeout=30,
            )
            assert error.data["reason"] == "write_error"
            assert error.data["free_bytes"] < 256 * 1024, error.data
            ping = operator.send(
                config.device_id, CommandType.CONFIG, settings={"upload_window": 4}
            )
            assert operator.reply_to(ping.cmd_id).type == EventType.CONFIG_APPLIED
            filler.unlink()
            gap = operator.wait_for(
                lambda: next(
                    (e for e in operator.events if e.type == EventType.RECORDING_GAP), None
                ),
                30,
            )
            assert gap.data["reason"] == "write_error"
            time.sleep(1.5)
            close = operator.send(config.device_id, CommandType.CLOSE_SESSION, session_id="full")
            stopped = operator.reply_to(close.cmd_id)
            assert stopped.data["gaps"]
            assert service.spool.segments_between(
                datetime.fromisoformat(gap.data["end"]), service.clock.now()
            ), "recording resumed after space came back"
        finally:
            service.stop()
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)
