"""The agent as one supervised process: sessions, commands, uploads, events and heartbeats.

Threads, one stop event: paho runs its network thread; the recorder, uploader, command worker,
event sender, heartbeat and housekeeping each have a named thread of their own (they block on
the camera, the encoder, the disk or the serial port, so an event loop would only hand them to
threads anyway). Everything durable lives in SQLite under ``state_dir``.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import av

from common import topics
from common.clock import Clock, SystemClock, wait_event
from common.commands import Command, Schedule
from common.errors import ProtocolError
from common.heartbeat import Heartbeat
from common.schemas import Ack, EventType, decode
from common.signing import load_private_key
from edge_agent.camera import Frame
from edge_agent.cameras import EncodedCamera
from edge_agent.clips import SpoolClipMaker
from edge_agent.commands import CommandRunner
from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError
from edge_agent.events import EventQueue
from edge_agent.heartbeat import cpu_temperature_c, disk_usage
from edge_agent.modem import ModemError, ModemPort
from edge_agent.notify import SystemdNotifier
from edge_agent.outbox import Outbox
from edge_agent.ports import RuntimeSettings
from edge_agent.recording import CameraFactory, RecordingSettings, SessionRecorder
from edge_agent.session_keeper import SessionKeeper
from edge_agent.sessions import OpenSession
from edge_agent.spool import Spool
from edge_agent.state import AgentState
from edge_agent.storage import RecordingUse, StoragePolicy, plan_cleanup
from edge_agent.timesync import ClockOffset, SyncProbe, kernel_boot_id, kernel_clock_sync
from edge_agent.uplink import LinkDown, MqttLink, Uploader

log = logging.getLogger(__name__)
FIRMWARE = "classcam-agent/0.1.0"
# Real seconds between housekeeping passes when nothing else calls one (systemd's watchdog is
# fed from them): a session's start or end, a new timetable, a command, a new clock offset or
# the stop call one at once.
HOUSEKEEPING_REAL_S = 0.5
# Simulated seconds between the slow part of housekeeping (traffic counters, storage cleanup).
SLOW_HOUSEKEEPING_S = 10.0


def default_camera_factory(config: AgentConfig, clock: Clock) -> CameraFactory:
    """The configured camera backend; each backend is imported only when used."""
    from edge_agent.cameras import open_camera

    return lambda: open_camera(
        config.camera, clock=clock, device_id=config.device_id, recording=config.recording
    )


class AgentService:
    """Wires the parts together and runs them until ``stop()``."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        camera_factory: CameraFactory | None = None,
        modem: ModemPort | None = None,
        notifier: SystemdNotifier | None = None,
        link: MqttLink | None = None,
        disk_probe: Callable[[], tuple[int, int]] | None = None,
        clock_sync: SyncProbe | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.state = AgentState(config.state_dir / "agent.sqlite3")
        self.spool = Spool(config.spool_dir)
        self.outbox = Outbox(config.outbox_dir, self.clock)
        self.key = load_private_key(config.keys.private_key_file)
        self.link = link or MqttLink(config, config.broker_password(), self.clock, FIRMWARE)
        self.modem = modem
        self.notifier = notifier or SystemdNotifier()
        self.disk_probe = disk_probe or (lambda: disk_usage(config.state_dir))
        # Set for a housekeeping pass now: a new timetable, a command, a new clock offset, a stop.
        self._housekeeping_due = threading.Event()
        # The kernel speaks for the system clock only: an injected clock is its own truth.
        real_clock = type(self.clock) is SystemClock
        if clock_sync is None and real_clock:
            clock_sync = kernel_clock_sync
        self.offset = ClockOffset(
            self.clock,
            sync_probe=clock_sync,
            boot_id=kernel_boot_id() if real_clock else None,
            max_jump_s=config.clock.max_jump_s,
            restored=self.state.get("clock_offset"),
            on_change=self._offset_changed,
        )
        self.spool.timeline = self.offset
        self.events = EventQueue(self.state, self.link, self.clock, self.offset, config.device_id)
        self.camera_factory = camera_factory or default_camera_factory(config, self.clock)
        stored = self.state.get("runtime") or {}
        self.runtime = RuntimeSettings.model_validate(
            {
                "heartbeat_interval_s": config.heartbeat.interval_s,
                "upload_rate_limit_bytes_per_s": config.upload.rate_limit_bytes_per_s,
                "upload_window": config.upload.window,
                **stored,
            }
        )
        self.uploader = Uploader(
            self.link,
            self.outbox,
            config.upload,
            self.clock,
            on_exchange=self._on_ack,
            on_complete=self._on_upload_complete,
        )
        self.apply_runtime(self.runtime, persist=False)
        rec = config.recording
        self.recorder = SessionRecorder(
            self.spool,
            self.clock,
            self.camera_factory,
            RecordingSettings(
                rec.segment_seconds, rec.keyframe_interval_s, rec.bitrate, rec.preset
            ),
            self._recording_event,
            on_write_error=self.cleanup_storage,
        )
        self.sessions = SessionKeeper(
            self.state, self.spool, self.recorder, self.clock, self.offset, self.events
        )
        self.policy = StoragePolicy(
            retention=timedelta(days=config.storage.retention_days),
            low_water_bytes=config.storage.low_water_mb * 1024 * 1024,
            critical_bytes=config.storage.critical_mb * 1024 * 1024,
        )
        self.stop_event = threading.Event()
        self.events_ready = self.events.ready
        self.uploads_ready = threading.Event()
        self.storage_low = False
        self._cmd_queue: queue.Queue[Command | None] = queue.Queue()  # None: stop
        self._traffic = 0
        self._traffic_lock = threading.Lock()
        self._started_mono = self.clock.monotonic()
        self._hb_seq = 0
        self._threads: list[threading.Thread] = []
        clips = SpoolClipMaker(
            spool=self.spool,
            outbox=self.outbox,
            key=self.key,
            device_id=config.device_id,
            chunk_size=config.upload.chunk_size,
            clock=self.clock,
            clock_offset_s=self.offset.or_zero,
            wait_for_spool=self.wait_for_spool,
            grab_frame=self.grab_frame,
            link_upload=self.state.link_upload,
            on_queued=self.uploads_ready.set,
        )
        self.commands = CommandRunner(
            sessions=self.sessions,
            clips=clips,
            events=self.events,
            ledger=self.state,
            runtime=self,
            clock=self.clock,
            counters=self.link.counters,
        )
        self.link.on_sent = self._count_traffic
        self.link.on_connected = self.uploads_ready.set
        self.link.on("cmd", self._on_cmd_message)
        self.link.on("schedule", self._on_schedule_message)
        self.link.on("ack", self.uploader.on_ack_message)

    def _offset_changed(self, estimate: dict[str, Any]) -> None:
        """Keep the clock offset's new estimate; the timetable's next start or end, in server
        time, has moved on the device clock."""
        self.state.put("clock_offset", estimate)
        self._housekeeping_due.set()

    # -- messages from the server -----------------------------------------------------------

    def _on_cmd_message(self, topic: str, payload: bytes) -> None:
        cmd = self.commands.on_message(topic, payload)
        if cmd is not None:
            try:
                self.state.command_queued(cmd.cmd_id, payload)
            except sqlite3.Error as exc:
                log.error("command %s not stored (%s); running it undurably", cmd.cmd_id, exc)
            self._cmd_queue.put(cmd)

    def _on_schedule_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message
            self.state.put("schedule", None)
            self._housekeeping_due.set()
            return
        try:
            schedule = decode(Schedule, payload)
        except ProtocolError as exc:
            self.link.counters["bad_schedule"] += 1
            log.warning("bad schedule: %s", exc)
            return
        self.state.put("schedule", schedule.model_dump(mode="json"))
        log.info("timetable: %d session(s)", len(schedule.sessions))
        self._housekeeping_due.set()

    def _on_ack(self, ack: Ack, sent_mono: float, received_mono: float) -> None:
        # Only answers to our own init/fin, timed on the monotonic clock, teach the offset:
        # a retained timetable or a redelivered command says when it was sent, not when asked.
        self.offset.observe_exchange(ack.server_time, sent_mono, received_mono)

    def _on_upload_complete(self, upload_id: str) -> None:
        session_id = self.state.upload_acked(upload_id)
        if session_id:
            log.info("session %s: a cut was acknowledged", session_id)

    # -- sessions and clips -------------------------------------------------------------------

    @property
    def open(self) -> OpenSession | None:
        """The session recording now, if any."""
        return self.sessions.open

    def _recording_event(self, type_: EventType, **fields: Any) -> bytes:
        """The recorder's events; each gap is kept with its session before it is said, so a
        ``session_stopped`` after a restart still lists it."""
        data = fields.get("data") or {}
        if type_ == EventType.RECORDING_GAP and fields.get("session_id"):
            self.state.add_session_gap(
                fields["session_id"],
                datetime.fromisoformat(data["start"]),
                datetime.fromisoformat(data["end"]),
            )
        return self.events.emit(type_, **fields)

    def wait_for_spool(self, device_end: datetime, timeout: float | None = None) -> None:
        """Wait until the spool holds what was recorded up to ``device_end`` (or nothing more
        will come): a cut asked right after its window must not lose the last segment."""
        limit = timeout if timeout is not None else 3 * self.config.recording.segment_seconds + 10
        deadline = self.clock.monotonic() + limit
        while self.clock.monotonic() < deadline and not self.stop_event.is_set():
            rec = self.recorder.current
            if rec is None or not rec.frames_flowing:
                return
            latest = self.spool.segments_between(device_end, device_end + timedelta(days=1))
            if any(seg.end_wall >= device_end for seg in latest):
                return
            self.clock.sleep(0.1)

    def grab_frame(self) -> Frame:
        """A still of the classroom now: the newest recorded keyframe, or the camera itself."""
        if self.recorder.current is not None:
            now = self.clock.now()
            segments = self.spool.segments_between(now - timedelta(seconds=30), now)
            if segments:
                seg = segments[-1]
                with av.open(str(seg.path)) as container:
                    frame = next(container.decode(video=0))
                    image = frame.to_ndarray(format="bgr24")
                return Frame(image=image, wall=seg.start_wall, mono=seg.start_mono)
        camera = self.camera_factory()
        if isinstance(camera, EncodedCamera):
            raise AgentError(
                f"camera {camera.name} is not recording, and it gives no stills "
                "on its own: open a session first"
            )
        camera.open()
        try:
            return camera.read()
        finally:
            camera.close()

    # -- runtime settings, storage, traffic ------------------------------------------------------

    def apply_runtime(self, runtime: RuntimeSettings, persist: bool = True) -> None:
        self.runtime = runtime
        self.uploader.config = self.uploader.config.model_copy(
            update={
                "rate_limit_bytes_per_s": runtime.upload_rate_limit_bytes_per_s,
                "window": runtime.upload_window,
            }
        )
        self.uploader.limiter.rate = runtime.upload_rate_limit_bytes_per_s
        if persist:
            self.state.put("runtime", runtime.model_dump())

    def _count_traffic(self, nbytes: int) -> None:
        with self._traffic_lock:
            self._traffic += nbytes

    def _flush_traffic(self) -> None:
        with self._traffic_lock:
            nbytes, self._traffic = self._traffic, 0
        if nbytes:
            self.state.add_traffic(self.clock.now(), nbytes)

    def cleanup_storage(self) -> None:
        """Apply the retention and low-space policy; report ``storage_low`` when it changes."""
        uses = []
        current = self.recorder.current
        sizes = self.spool.recording_sizes()
        for info in self.spool.recordings():
            if current is not None and info.recording_id in current.recording_ids:
                continue
            size = sizes.get(info.recording_id, 0)
            row = self.state.session(info.session_id) if info.session_id else None
            pinned = info.session_id is not None and (row is None or row.pinned)
            uses.append(
                RecordingUse(info.recording_id, info.session_id, info.ended_wall, size, pinned)
            )
        free, _total = self.disk_probe()
        plan = plan_cleanup(uses, free, self.clock.now(), self.policy)
        for recording_id in plan.delete:
            self.spool.delete_recording(recording_id)
        if plan.delete:
            log.info(
                "storage: deleted %d recording(s), %d bytes", len(plan.delete), plan.freed_bytes
            )
        if plan.storage_low != self.storage_low:
            self.storage_low = plan.storage_low
            if plan.storage_low:
                self.events.emit(
                    EventType.STORAGE_LOW,
                    data={
                        "free_bytes": free + plan.freed_bytes,
                        "low_water_bytes": self.policy.low_water_bytes,
                    },
                )

    # -- heartbeat ------------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        now = self.clock.now()
        free, total = self.disk_probe()
        today, month = self.state.traffic(now)
        modem, gnss = None, None
        if self.modem is not None:
            snap = self.modem.snapshot()
            modem, gnss = snap.to_health(), snap.gnss_position()
            if snap.network_time is not None:
                self._observe_network_time(self.modem)
        clock = self.offset.reading()
        self._hb_seq += 1
        return Heartbeat(
            device_id=self.config.device_id,
            at=now,
            seq=self._hb_seq,
            uptime_s=max(0.0, self.clock.monotonic() - self._started_mono),
            firmware=FIRMWARE,
            recording=self.recorder.current is not None,
            session_id=self.open.session_id if self.open else None,
            spool_bytes=sum(self.spool.recording_sizes().values()),
            outbox_pending=self.outbox.count(),
            outbox_parked=self.outbox.count_parked(),
            disk_free_bytes=free,
            disk_total_bytes=total,
            storage_low=self.storage_low,
            cpu_temp_c=cpu_temperature_c(),
            clock_offset_s=clock.offset_s,
            clock_source=clock.source,
            clock_synced=clock.synced,
            bytes_sent_today=today,
            bytes_sent_month=month,
            modem=modem,
            gnss=gnss,
        )

    def _observe_network_time(self, modem: ModemPort) -> None:
        """Ask the modem for network time on its own, timed on the monotonic clock (the
        snapshot's other queries would blur when it was read). Whole seconds only."""
        sent = self.clock.monotonic()
        try:
            network_time = modem.network_time()
        except ModemError as exc:
            log.debug("network time: %s", exc)
            return
        received = self.clock.monotonic()
        if network_time is not None:
            self.offset.observe_exchange(
                network_time, sent, received, source="modem", resolution_s=1.0
            )

    def _heartbeats(self) -> None:
        topic = topics.heartbeat(self.config.device_id)
        while not self.stop_event.is_set():
            if self.link.connected.is_set():
                try:
                    self.link.publish(topic, self.heartbeat().to_bytes(), qos=1)
                except LinkDown:
                    pass
                except Exception:
                    log.exception("heartbeat failed")
            wait_event(self.stop_event, self.runtime.heartbeat_interval_s, self.clock)

    # -- the loops ------------------------------------------------------------------------------

    def _command_worker(self) -> None:
        while not self.stop_event.is_set():
            cmd = self._cmd_queue.get()
            if cmd is None:  # the stop
                break
            try:
                self.commands.execute(cmd)
            except Exception:  # e.g. the state disk failing: the command is retried on restart
                self.link.counters["command_worker_error"] += 1
                log.exception("command %s could not be handled", cmd.cmd_id)
            self._housekeeping_due.set()  # a session it opened has its own end
            self.uploads_ready.set()  # it may have queued or released uploads

    def _housekeeping(self) -> None:
        last_slow: float | None = None
        while not self.stop_event.is_set():
            self._housekeeping_due.clear()
            next_change: float | None = None
            try:
                next_change = self.sessions.check_timetable()
                mono = self.clock.monotonic()
                if last_slow is None or mono - last_slow >= SLOW_HOUSEKEEPING_S:
                    last_slow = mono
                    self._flush_traffic()
                    self.cleanup_storage()
                self.notifier.watchdog()
            except Exception:
                log.exception("housekeeping failed")
            # Half a real second (on a replay's faster clock, that many more simulated ones),
            # or just past the timetable's next start or end if that comes first.
            wait_event(
                self._housekeeping_due,
                math.inf if next_change is None else next_change + 0.001,
                self.clock,
                real_limit_s=HOUSEKEEPING_REAL_S,
            )

    def _requeue_commands(self) -> None:
        """Commands delivered before a stop or a power cut but never answered run now."""
        for payload in self.state.queued_commands():
            try:
                self._cmd_queue.put(decode(Command, payload))
            except ProtocolError as exc:
                log.warning("dropping a stored command that no longer parses: %s", exc)

    def start(self) -> None:
        self._requeue_commands()
        self.link.start()
        self.sessions.resume_open_sessions()
        for name, target in (
            ("uploader", lambda: self.uploader.run(self.stop_event, wake=self.uploads_ready)),
            ("commands", self._command_worker),
            ("events", lambda: self.events.run(self.stop_event)),
            ("heartbeat", self._heartbeats),
            ("housekeeping", self._housekeeping),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.notifier.ready(f"device {self.config.device_id} running")

    def stop(self) -> None:
        self.notifier.stopping()
        self.stop_event.set()
        self._housekeeping_due.set()
        self.uploads_ready.set()
        self._cmd_queue.put(None)
        rec = self.recorder.stop()
        if rec:
            log.info("stopped recording session %s for shutdown", rec.session_id)
        for thread in self._threads:
            thread.join(10)
        self._flush_traffic()
        self.link.stop()
        self.spool.close()
        self.outbox.close()
        self.state.close()

    def run_forever(self) -> None:
        self.start()
        while not self.stop_event.is_set():  # a clock change wakes waiters (wait_event)
            self.stop_event.wait()
