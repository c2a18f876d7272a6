"""The server's clockwork: timetables to devices, window requests after the fact, verdicts.

Every ``scheduler_interval_s`` it (0) binds each session that has begun to its classroom's
camera of that moment, (1) publishes each device's retained timetable when it
changed, (2) asks for every window that has ended (never before: until then the window exists
only in the database), again when a device comes back online or stays silent, (3) marks
devices whose heartbeats stopped as offline, and (4) recomputes the verdicts of sessions that
changed or whose grace periods may have run out. Database work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import aiomqtt
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from common import topics
from common.clock import Clock, SystemClock
from common.commands import Command, CommandType, Schedule, ScheduledSession
from ingest_server.db import SessionFactory
from ingest_server.device_messages import DeviceMessages
from ingest_server.models import (
    ClassSession,
    Clip,
    Device,
    DeviceCommand,
    DeviceEvent,
    DeviceHealth,
    PresenceChange,
    SessionState,
    SessionWindow,
    Upload,
    UploadState,
)
from ingest_server.sessions import bind_camera
from ingest_server.settings import Settings

log = logging.getLogger(__name__)


def make_scheduler_client(settings: Settings) -> aiomqtt.Client:
    """The scheduler's own broker connection, on its own account (``classcam-scheduler``).

    The broker binds client id to username, so it cannot share the ingest consumer's login.
    It only publishes: a clean session, nothing to queue for it while it is away."""
    v5 = settings.mqtt_protocol == "5"
    tls_context: ssl.SSLContext | None = None
    if settings.mqtt_tls:
        # Verifies the broker's chain against the CA and its name against mqtt_host.
        tls_context = ssl.create_default_context(
            cafile=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None
        )
    return aiomqtt.Client(
        settings.mqtt_host,
        settings.mqtt_port,
        username=settings.mqtt_scheduler_username,
        password=settings.mqtt_scheduler_secret(),
        identifier=settings.mqtt_scheduler_username,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        keepalive=settings.mqtt_keepalive_s,
        tls_context=tls_context,
    )


@dataclass(frozen=True, slots=True)
class Outbound:
    topic: str
    payload: bytes
    retain: bool = False


class Scheduler:
    """Decides what to send; ``run`` sends it over its own MQTT client."""

    def __init__(
        self,
        settings: Settings,
        session_factory: SessionFactory,
        fleet: DeviceMessages,
        recompute: Callable[[set[str]], None],
        clock: Clock | None = None,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        # Called on every tick (the clip checker's wake: checks that failed are retried).
        self.on_tick = on_tick
        self.session_factory = session_factory
        self.fleet = fleet
        self.recompute = recompute
        self.clock = clock or SystemClock()
        self._timetables: dict[str, str] = {}
        self._lock = threading.Lock()
        self._back_online: set[str] = set()
        self._dirty: set[str] = set()
        self._manual: list[Outbound] = []
        self._last_full_recompute = 0.0
        self._presence_seen: int | None = None  # the last presence change read

    # -- signals from the ingest thread and the API ------------------------------------------

    def device_online(self, device_id: str) -> None:
        with self._lock:
            self._back_online.add(device_id)

    def sessions_changed(self, session_ids: set[str]) -> None:
        with self._lock:
            self._dirty |= session_ids

    def send_command(self, device_id: str, command: Command) -> None:
        """Keep a command for a device (the API's open/close) in ``device_commands``, in a
        write transaction of its own that has committed when this returns: ticks send it, and
        again every ``command_resend_s``, until the device answers or ``command_ttl_s`` has
        passed since it was issued. A repeat is harmless: the agent answers a cmd_id it has
        seen with its first answer."""
        with self.session_factory.begin() as db:
            db.add(
                DeviceCommand(
                    cmd_id=command.cmd_id,
                    device_id=device_id,
                    type=command.type.value,
                    payload=command.to_bytes().decode(),
                    created_at=self.clock.now(),
                    expires_at=command.issued_at + timedelta(seconds=self.settings.command_ttl_s),
                    sends=0,
                )
            )

    # -- one pass -------------------------------------------------------------------------------

    def tick(self) -> list[Outbound]:
        """Everything due now; the caller publishes the result at QoS 1."""
        out: list[Outbound] = []
        with self._lock:
            back, self._back_online = self._back_online, set()
            dirty, self._dirty = self._dirty, set()
            out.extend(self._manual)
            self._manual.clear()
        if self.on_tick is not None:
            self.on_tick()
        try:
            self.fleet.sweep_timeouts()
            with self.session_factory.begin() as db:
                back |= self._came_online(db)
                self._bind_begun(db)
                out.extend(self._timetables_due(db))
                out.extend(self._commands_due(db))
                out.extend(self._window_requests(db, back))
        except Exception:
            # A database blip must not lose what we were told: try again on the next tick.
            with self._lock:
                self._back_online |= back
                self._dirty |= dirty
                self._manual[:0] = [o for o in out if o.topic.endswith("/cmd")]
            raise
        mono = self.clock.monotonic()
        if mono - self._last_full_recompute >= 30:
            self._last_full_recompute = mono
            with self.session_factory() as db:
                dirty |= set(
                    db.scalars(
                        select(ClassSession.id).where(
                            ClassSession.verdict == "pending",
                            ClassSession.scheduled_start <= self.clock.now(),
                        )
                    )
                )
        if dirty:
            self.recompute(dirty)
        return out

    def _came_online(self, db: Session) -> set[str]:
        """Devices recorded coming online since the last tick, by any ingest worker (this
        process's own also call ``device_online``); nothing on the first tick, which only
        notes where the record stands. A hastening only: a change committed out of id order
        can be passed over, and its windows are asked for again at ``window_retry_s``."""
        query = select(PresenceChange.id, PresenceChange.device_id, PresenceChange.online)
        if self._presence_seen is None:
            last = db.scalar(select(func.max(PresenceChange.id)))
            self._presence_seen = int(last or 0)
            return set()
        rows = db.execute(
            query.where(PresenceChange.id > self._presence_seen).order_by(PresenceChange.id)
        ).all()
        if rows:
            self._presence_seen = rows[-1].id
        return {row.device_id for row in rows if row.online}

    def _bind_begun(self, db: Session) -> None:
        """Sessions that have begun are bound to their classroom's camera of that moment: a
        camera moved in or swapped later never speaks for them."""
        now = self.clock.now()
        begun = db.scalars(
            select(ClassSession).where(
                ClassSession.device_id.is_(None),
                ClassSession.scheduled_start <= now,
                # A room that had no camera then gets none later.
                ClassSession.scheduled_start > now - timedelta(days=1),
            )
        ).all()
        for session in begun:
            bind_camera(db, session)

    def _timetables_due(self, db: Session) -> list[Outbound]:
        now = self.clock.now()
        horizon = now + timedelta(seconds=self.settings.timetable_horizon_s)
        out: list[Outbound] = []
        devices = db.scalars(select(Device).where(Device.classroom_id.is_not(None))).all()
        for device in devices:
            rows = db.scalars(
                select(ClassSession)
                .where(
                    ClassSession.classroom_id == device.classroom_id,
                    ClassSession.scheduled_start <= horizon,
                    ClassSession.state != SessionState.CLOSED.value,
                )
                .order_by(ClassSession.scheduled_start)
            ).all()
            sessions = [
                ScheduledSession(
                    session_id=s.id,
                    start=s.scheduled_start,
                    duration_s=s.duration_s,
                    windows=self._window_count(db, s.id),
                )
                for s in rows
                if s.scheduled_start + timedelta(seconds=s.duration_s) > now
            ]
            key = hashlib.sha256(
                repr([(s.session_id, s.start, s.duration_s) for s in sessions]).encode()
            ).hexdigest()
            if self._timetables.get(device.device_id) == key:
                continue
            self._timetables[device.device_id] = key
            schedule = Schedule(device_id=device.device_id, issued_at=now, sessions=sessions)
            out.append(
                Outbound(topics.schedule(device.device_id), schedule.to_bytes(), retain=True)
            )
        return out

    def _commands_due(self, db: Session) -> list[Outbound]:
        """Kept commands never sent, or unanswered ``command_resend_s`` after their last send,
        and not expired; marked as sent in the transaction that read them. A command is
        answered once its own device's event naming its cmd_id is stored."""
        now = self.clock.now()
        rows = db.scalars(
            select(DeviceCommand)
            .where(
                DeviceCommand.answered_at.is_(None),
                DeviceCommand.expires_at > now,
                or_(
                    DeviceCommand.last_sent_at.is_(None),
                    DeviceCommand.last_sent_at
                    <= now - timedelta(seconds=self.settings.command_resend_s),
                ),
            )
            .order_by(DeviceCommand.created_at)
        ).all()
        out: list[Outbound] = []
        for row in rows:
            answered = db.scalar(
                select(DeviceEvent.id)
                .where(DeviceEvent.cmd_id == row.cmd_id, DeviceEvent.device_id == row.device_id)
                .limit(1)
            )
            if answered is not None:
                row.answered_at = now
                continue
            out.append(Outbound(topics.cmd(row.device_id), row.payload.encode()))
            row.last_sent_at = now
            row.sends += 1
            if row.sends > 1:
                log.info("sent %s to %s again (send %d)", row.cmd_id, row.device_id, row.sends)
        return out

    def _window_count(self, db: Session, session_id: str) -> int:
        return len(
            db.scalars(select(SessionWindow.id).where(SessionWindow.session_id == session_id)).all()
        )

    def _answered(self, db: Session, window: SessionWindow, device_id: str) -> bool:
        """Whether the camera's clip for ``window`` is stored or on its way: only then is
        asking again pointless. A clip's signed manifest names the window's command; the
        ``cut_done`` hint names the upload that carries it."""
        stored = db.scalar(
            select(Clip.id).where(Clip.cmd_id == window.cmd_id, Clip.device_id == device_id)
        )
        if stored is not None:
            return True
        if not window.upload_id:
            return False
        state = db.scalar(
            select(Upload.state).where(
                Upload.upload_id == window.upload_id, Upload.device_id == device_id
            )
        )
        # A rejected upload (or none yet: the cut is queued on the device) is asked again.
        return state == UploadState.RECEIVING.value

    def _window_requests(self, db: Session, back_online: set[str]) -> list[Outbound]:
        now = self.clock.now()
        ended_before = now - timedelta(seconds=self.settings.window_request_delay_s)
        retry_before = now - timedelta(seconds=self.settings.window_retry_s)
        out: list[Outbound] = []
        rows = db.execute(
            select(SessionWindow, ClassSession)
            .join(ClassSession, ClassSession.id == SessionWindow.session_id)
            .where(
                SessionWindow.end <= ended_before,
                SessionWindow.failed_reason.is_(None),
                SessionWindow.request_count < self.settings.window_max_requests,
            )
        ).all()
        for window, session in rows:
            # Not before the session is over: asking for the last window mid-class would tell
            # the classroom that the rest of the class goes unchecked.
            session_end = session.scheduled_start + timedelta(seconds=session.duration_s)
            if session_end > ended_before:
                continue
            bind_camera(db, session)  # the class is over: its camera is the one it had
            device_id = session.device_id
            if device_id is None or self._answered(db, window, device_id):
                continue
            online = (
                db.scalar(select(DeviceHealth.status).where(DeviceHealth.device_id == device_id))
                == "online"
            )
            first = window.requested_at is None
            again = (
                window.requested_at is not None
                and online
                and (device_id in back_online or window.requested_at <= retry_before)
            )
            if not (first or again):
                continue
            # The window is over: from here on it may be named to the device.
            command = Command(
                cmd_id=window.cmd_id,
                type=CommandType.CUT,
                issued_at=now,
                session_id=session.id,
                start=window.start,
                end=window.end,
            )
            out.append(Outbound(topics.cmd(device_id), command.to_bytes()))
            window.requested_at = now
            window.request_count += 1
            log.info(
                "asked %s for window %d of session %s (request %d)",
                device_id,
                window.idx,
                session.id,
                window.request_count,
            )
        return out

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self, client_factory: Callable[[], aiomqtt.Client], stop: asyncio.Event) -> None:
        """Tick and publish until ``stop``; reconnect with backoff when the broker goes away."""
        attempt = 0
        pending: list[Outbound] = []
        while not stop.is_set():
            try:
                async with client_factory() as client:
                    attempt = 0
                    while not stop.is_set():
                        pending.extend(await asyncio.to_thread(self.tick))
                        while pending:
                            msg = pending[0]
                            await client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)
                            pending.pop(0)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), self.settings.scheduler_interval_s)
            except aiomqtt.MqttError as exc:
                delay = min(30.0, 0.5 * 2**attempt)
                attempt += 1
                # Timetables are re-sent after a reconnect (retained, so harmless).
                self._timetables.clear()
                log.warning("scheduler lost the broker (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            except Exception:
                log.exception("scheduler tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)
