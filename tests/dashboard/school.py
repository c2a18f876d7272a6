"""A realistic school for the dashboard's browser tests, built through the server's own paths.

Two institutions (Shanghai and Hangzhou), three classrooms with their cameras, three
lecturers, and sessions over October and November 2026 whose evidence arrives as it would:
the setup import draws the secret windows; the cameras' statuses, heartbeats and events (start,
stop, a recording gap, an offline stretch) and their signed uploads of real H.264 clips go
through the ingest processor; the lecturers post real JPEGs through the photo API; the clip
checker decodes every clip; the verdict keeper judges at each step, so verdicts carry their
real reasons and history. Nothing is inserted by hand.

What comes out (``SESSIONS`` says why each session ends as it does): verified sessions with
three clips and two photos inside 100 m; a session rejected for a closing photo taken 2 km away;
one rejected for an offline stretch and a long recording gap; one pending while its last clip
is still within its grace; one in progress; one to come. Two cameras are online at ``NOW``,
one went offline hours before.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from common import topics
from common.chunks import digest_file
from common.clock import VirtualClock
from common.commands import Command, CommandType
from common.heartbeat import Heartbeat, ModemHealth
from common.schemas import ClipKind, Event, EventType, Fin, Manifest, Status, StatusState
from common.signing import generate_private_key, public_key_b64, sign_manifest
from ingest_server import audit
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.clip_checks import ClipChecker
from ingest_server.db import SessionFactory, make_engine, make_session_factory, migrate
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.models import ClassSession, SessionWindow
from ingest_server.scheduler import Scheduler
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from ingest_server.verdicts import VerdictKeeper
from simulators.clip_files import write_mp4
from simulators.phone import classroom_scene, make_photo

# 14:00 in Shanghai on a Friday: the moment the server believes it is while the tests browse.
NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
DURATION_MIN = 90
# Short windows keep the clips small (a camera's are 60 s); everything else is the default.
WINDOW_S = 20.0
CLIP_FPS = 5
CLIP_SIZE = (320, 240)
METRES_PER_DEGREE_LAT = 111_320.0


@dataclass(frozen=True)
class Room:
    id: str
    institution_id: str
    name: str
    lat: float
    lon: float
    device_id: str
    scene_seed: int
    clock_offset_s: float  # the camera's clock minus the server's


ROOMS = (
    Room("a-101", "sch-a", "101 电工实训室", 31.2304, 121.4737, "cam-a101", 11, 2.4),
    Room("a-202", "sch-a", "202 焊接车间", 31.2243, 121.5447, "cam-a202", 23, -0.8),
    Room("b-301", "sch-b", "301 烹饪教室", 30.2741, 120.1551, "cam-b301", 37, 12.5),
)
ROOM = {r.id: r for r in ROOMS}
INSTITUTIONS = {"sch-a": "上海浦东职业技能培训中心", "sch-b": "杭州西湖职业培训学校"}
LECTURERS = {
    "lect-wang": ("sch-a", "王建国"),
    "lect-li": ("sch-a", "李秀英"),
    "lect-chen": ("sch-b", "陈志强"),
}
CLASSES = {
    "cls-elec": ("sch-a", "低压电工作业", 32),
    "cls-weld": ("sch-a", "焊工（中级）", 24),
    "cls-cook": ("sch-b", "中式烹调师", 28),
}


@dataclass(frozen=True)
class Plan:
    """One session and how its day goes.

    ``clips``: windows whose clip arrives; ``far_photo``: the closing photo is taken 2 km
    away; ``gap_s``: a recording gap of that length mid-class; ``offline_min``: the camera
    drops off the network for that long mid-class; ``expect``: the verdict at ``NOW``."""

    id: str
    class_id: str
    room_id: str
    lecturer_id: str
    start: datetime
    expect: str
    clips: tuple[int, ...] = (0, 1, 2)
    far_photo: bool = False
    gap_s: float = 0.0
    offline_min: float = 0.0
    opened: bool = True


def _at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


SESSIONS = (
    Plan("a-1013", "cls-elec", "a-101", "lect-wang", _at(10, 13, 1), "verified"),
    Plan("b-1015", "cls-cook", "b-301", "lect-chen", _at(10, 15, 6), "verified"),
    Plan("a-1020", "cls-weld", "a-202", "lect-li", _at(10, 20, 1), "rejected", far_photo=True),
    Plan("a-1110", "cls-elec", "a-101", "lect-wang", _at(11, 10, 1), "verified", gap_s=90),
    Plan("b-1112", "cls-cook", "b-301", "lect-chen", _at(11, 12, 6), "verified"),
    Plan(
        "a-1117",
        "cls-weld",
        "a-202",
        "lect-li",
        _at(11, 17, 1),
        "rejected",
        gap_s=900,
        offline_min=14,
    ),
    # Yesterday evening: the last clip may still come (within the clip grace), so pending.
    Plan("a-1126", "cls-elec", "a-101", "lect-wang", _at(11, 26, 10), "pending", clips=(0, 1)),
    # Under way at NOW: no window is shown before the scheduled end.
    Plan("b-1127", "cls-cook", "b-301", "lect-chen", _at(11, 27, 5), "pending", clips=()),
    Plan(
        "a-1130",
        "cls-weld",
        "a-202",
        "lect-li",
        _at(11, 30, 1),
        "pending",
        clips=(),
        opened=False,
    ),
)


@dataclass
class School:
    """The seeded database and store, and the login tokens of each kind of reader."""

    settings: Settings
    engine: Engine
    factory: SessionFactory
    store: EvidenceStore
    clock: VirtualClock
    tokens: dict[str, str] = field(default_factory=dict)
    # The command link to the cameras: online ones answer a roll call with a still.
    send_command: Callable[[str, Command], None] | None = None

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()

    def session_ids(
        self, *, verdict: str | None = None, institution: str | None = None
    ) -> set[str]:
        """Seeded sessions, by their verdict now and institution."""
        with self.factory() as db:
            rows = db.scalars(select(ClassSession)).all()
            return {
                r.id
                for r in rows
                if (verdict is None or r.verdict == verdict)
                and (institution is None or ROOM[r.classroom_id].institution_id == institution)
            }


def setup_document(keys: dict[str, Ed25519PrivateKey], tokens: dict[str, str]) -> dict[str, Any]:
    """The school as an operator's setup file."""
    return {
        "institutions": [{"id": i, "name": n} for i, n in INSTITUTIONS.items()],
        "classrooms": [
            {
                "id": r.id,
                "institution_id": r.institution_id,
                "name": r.name,
                "lat": r.lat,
                "lon": r.lon,
                "datum": "wgs84",
            }
            for r in ROOMS
        ],
        "devices": [
            {
                "device_id": r.device_id,
                "classroom_id": r.id,
                "public_key": public_key_b64(keys[r.device_id]),
            }
            for r in ROOMS
        ],
        "lecturers": [
            {"id": lid, "institution_id": inst, "name": name, "token": tokens[lid]}
            for lid, (inst, name) in LECTURERS.items()
        ],
        "classes": [
            # trainees: the class's size, for the statistics' verified trainee-hours.
            {"id": cid, "institution_id": inst, "name": name, "trainees": trainees}
            for cid, (inst, name, trainees) in CLASSES.items()
        ],
        "sessions": [
            {
                "id": p.id,
                "class_id": p.class_id,
                "classroom_id": p.room_id,
                "lecturer_id": p.lecturer_id,
                "start": p.start.isoformat(),
                "duration_min": DURATION_MIN,
            }
            for p in SESSIONS
        ],
    }


def _frames(room: Room, device_start: datetime, seconds: float) -> Iterator[np.ndarray]:
    """A live classroom as the camera sees it: the room, a lecturer walking along the board,
    sensor noise, and the camera's clock burned in."""
    width = CLIP_SIZE[0]
    base = np.ascontiguousarray(np.asarray(classroom_scene(room.scene_seed, CLIP_SIZE))[:, :, ::-1])
    rng = np.random.default_rng(room.scene_seed)
    for index in range(round(seconds * CLIP_FPS)):
        frame = base.copy()
        x = int((index * 6) % (width - 40))
        cv2.rectangle(frame, (x, 90), (x + 28, 200), (60, 70, 160), thickness=-1)
        noise = rng.integers(-3, 4, frame.shape, dtype=np.int16)
        frame = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        cv2.rectangle(frame, (0, 0), (width, 18), (0, 0, 0), thickness=-1)
        stamp = device_start + timedelta(seconds=index / CLIP_FPS)
        text = stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        cv2.putText(frame, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        yield frame


class _Seeder:
    """Drives the school's days through the ingest processor, the photo API, the clip checker
    and the verdict keeper, on one virtual clock."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.settings = Settings(
            data_dir=data_dir, database_url=database_url, window_length_s=WINDOW_S
        )
        migrate(database_url)
        self.engine = make_engine(database_url)
        # One clock for the whole story, stamping the feed and the audit log too (the verdict
        # history is read from the feed).
        self.clock = VirtualClock(start=_at(10, 1, 0))
        self.factory = make_session_factory(
            self.engine, audit.load_key(self.settings.audit_key_file), clock=self.clock
        )
        self.store = EvidenceStore(self.settings.evidence_dir)
        self.keeper = VerdictKeeper(self.factory, self.settings, self.clock)
        self.fleet = DeviceMessages(
            self.factory,
            self.settings.heartbeat_timeout_s,
            self.clock,
            on_sessions_changed=self.keeper.recompute,
        )
        self.scheduler = Scheduler(
            self.settings, self.factory, self.fleet, self.keeper.recompute, self.clock
        )
        self.camera_lock = threading.Lock()
        self.checker = ClipChecker(self.factory, self.store, self.keeper.recompute, self.clock)
        self.processor = IngestProcessor(
            self.factory,
            self.store,
            self.settings,
            self.clock,
            device_messages=self.fleet.handle,
            flush_device_messages=self.fleet.flush,
        )
        context = ApiContext(
            self.settings,
            self.factory,
            self.store,
            recompute=self.keeper.recompute,
            clock=self.clock,
        )
        self.api = TestClient(create_app(context))
        self.keys = {r.device_id: generate_private_key() for r in ROOMS}
        self.lecturer_tokens = {lid: f"app-token-{lid}-0123456789" for lid in LECTURERS}
        self.seq = itertools.count(1)
        self.clips_dir = data_dir / "camera-clips"
        self.clips_dir.mkdir(parents=True, exist_ok=True)

    # -- the clock and the devices' words ---------------------------------------------------

    def move_to(self, when: datetime) -> None:
        delta = (when - self.clock.now()).total_seconds()
        assert delta >= 0, f"the school's story runs forwards: {when} < {self.clock.now()}"
        self.clock.advance(delta)

    def send(self, topic: str, payload: bytes) -> None:
        self.processor.handle(topic, payload)
        self.processor.flush()

    def status(self, room: Room, online: bool) -> None:
        state = StatusState.ONLINE if online else StatusState.OFFLINE
        message = Status(device_id=room.device_id, state=state, firmware="classcam 0.1.0")
        self.send(topics.status(room.device_id), message.to_bytes())

    def heartbeat(self, room: Room, *, recording: bool, session_id: str | None = None) -> None:
        seq = next(self.seq)
        device_now = self.clock.now() + timedelta(seconds=room.clock_offset_s)
        beat = Heartbeat(
            device_id=room.device_id,
            at=device_now,
            seq=seq,
            uptime_s=3600.0 + seq,
            firmware="classcam 0.1.0",
            recording=recording,
            session_id=session_id,
            spool_bytes=180_000_000 if recording else 40_000_000,
            outbox_pending=0,
            disk_free_bytes={"a-101": 21_400_000_000, "a-202": 1_900_000_000}.get(
                room.id, 9_800_000_000
            ),
            disk_total_bytes=29_000_000_000,
            cpu_temp_c=51.5,
            clock_offset_s=room.clock_offset_s,
            clock_source="modem",
            clock_synced=True,
            bytes_sent_today=12_000_000,
            bytes_sent_month=640_000_000,
            modem=ModemHealth(
                model="Quectel EC25",
                rssi_dbm={"a-101": -67, "a-202": -95}.get(room.id, -79),
                rsrp_dbm={"a-101": -92, "a-202": -117}.get(room.id, -104),
                registration="home",
                operator="CHINA MOBILE",
                access_technology="LTE",
            ),
        )
        self.send(topics.heartbeat(room.device_id), beat.to_bytes())

    def event(self, room: Room, kind: EventType, session_id: str, **data: Any) -> None:
        cmd_id = data.pop("cmd_id", None)
        event = Event(
            event_id=f"ev-{room.device_id}-{next(self.seq)}",
            device_id=room.device_id,
            type=kind,
            at=self.clock.now() + timedelta(seconds=room.clock_offset_s),
            clock_offset_s=room.clock_offset_s,
            cmd_id=cmd_id,
            session_id=session_id,
            data=data,
        )
        self.send(topics.event(room.device_id), event.to_bytes())

    # -- evidence -------------------------------------------------------------------------

    def photo(self, plan: Plan, kind: str, taken_at: datetime, far: bool = False) -> None:
        room = ROOM[plan.room_id]
        # Inside the room the phone's fix is some 20 m off the classroom's point; "far" is 2 km.
        north_m = 2000.0 if far else 18.0
        jpeg = make_photo(
            taken_at=taken_at,
            lat=room.lat + north_m / METRES_PER_DEGREE_LAT,
            lon=room.lon + 0.0001,
            # A new picture each time (the same one twice is a reuse the verdict catches).
            scene_seed=1000 + 10 * SESSIONS.index(plan) + (1 if kind == "opening" else 2),
            size=(800, 600),
        )
        answer = self.api.post(
            f"/api/v1/sessions/{plan.id}/photos/{kind}",
            files={"file": (f"{kind}.jpg", jpeg, "image/jpeg")},
            headers={"Authorization": f"Bearer {self.lecturer_tokens[plan.lecturer_id]}"},
        )
        assert answer.status_code == 201, answer.text

    def clip(self, plan: Plan, window: SessionWindow) -> None:
        """The camera cuts the window (a second either side, its own clock), signs and uploads
        the clip, and says the cut is done."""
        room = ROOM[plan.room_id]
        offset = timedelta(seconds=room.clock_offset_s)
        cut_start = window.start + offset - timedelta(seconds=1)
        cut_end = window.end + offset + timedelta(seconds=1)
        seconds = (cut_end - cut_start).total_seconds()
        upload_id = f"up-{plan.id}-{window.idx}"
        path = write_mp4(
            self.clips_dir / f"{upload_id}.mp4",
            _frames(room, cut_start, seconds),
            fps=CLIP_FPS,
            bitrate=120_000,
        )
        chunk_size = 64 * 1024
        digest = digest_file(path, chunk_size)
        manifest = Manifest(
            upload_id=upload_id,
            device_id=room.device_id,
            session_id=plan.id,
            cmd_id=window.cmd_id,
            requested_start=window.start,
            requested_end=window.end,
            cut_start=cut_start,
            cut_end=cut_end,
            clock_offset_s=room.clock_offset_s,
            size=digest.size,
            sha256=digest.sha256,
            chunk_size=chunk_size,
            chunk_sha256=digest.chunk_sha256,
            duration_s=seconds,
            frames=round(seconds * CLIP_FPS),
            width=CLIP_SIZE[0],
            height=CLIP_SIZE[1],
            created_at=self.clock.now() + offset,
        )
        self.event(room, EventType.CUT_DONE, plan.id, cmd_id=window.cmd_id, upload_id=upload_id)
        self.upload(room, path, manifest)

    def upload(self, room: Room, path: Path, manifest: Manifest) -> None:
        """The signed manifest, every chunk, and the end of the transfer, as the uploader
        sends them."""
        upload_id, chunk_size = manifest.upload_id, manifest.chunk_size
        self.send(
            topics.file_init(room.device_id, upload_id),
            sign_manifest(manifest, self.keys[room.device_id]),
        )
        data = path.read_bytes()
        for offset_bytes in range(0, len(data), chunk_size):
            self.processor.handle(
                topics.file_chunk(room.device_id, upload_id, offset_bytes),
                data[offset_bytes : offset_bytes + chunk_size],
            )
        self.processor.flush()
        fin = Fin(upload_id=upload_id, size=manifest.size, sha256=manifest.sha256)
        self.send(topics.file_fin(room.device_id, upload_id), fin.to_bytes())

    # -- the camera, after the seeding ------------------------------------------------------

    def send_command(self, device_id: str, command: Command) -> None:
        """The server's command link for the running dashboard: the command is kept as the
        scheduler keeps it, and an online camera answers a roll call with a still of its
        classroom (its own thread, as a device answers over the broker)."""
        self.scheduler.send_command(device_id, command)
        if command.type is CommandType.SNAPSHOT:
            threading.Thread(target=self.take_still, args=(device_id, command), daemon=True).start()

    def take_still(self, device_id: str, command: Command) -> None:
        """A still of the classroom now, signed and uploaded as the agent's roll call does."""
        room = next(r for r in ROOMS if r.device_id == device_id)
        with self.camera_lock:
            taken = self.clock.now() + timedelta(seconds=room.clock_offset_s)
            frame = next(_frames(room, taken, 1 / CLIP_FPS))
            encoded, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert encoded
            upload_id = f"still-{command.cmd_id}"[:64]
            path = self.clips_dir / f"{upload_id}.jpg"
            path.write_bytes(jpeg.tobytes())
            digest = digest_file(path, 64 * 1024)
            manifest = Manifest(
                upload_id=upload_id,
                device_id=device_id,
                kind=ClipKind.SNAPSHOT,
                cmd_id=command.cmd_id,
                cut_start=taken,
                cut_end=taken,
                clock_offset_s=room.clock_offset_s,
                size=digest.size,
                sha256=digest.sha256,
                chunk_size=64 * 1024,
                chunk_sha256=digest.chunk_sha256,
                content_type="image/jpeg",
                codec="jpeg",
                duration_s=0.0,
                frames=1,
                width=CLIP_SIZE[0],
                height=CLIP_SIZE[1],
                created_at=taken,
            )
            self.upload(room, path, manifest)

    # -- a day ------------------------------------------------------------------------------

    def windows(self, session_id: str) -> list[SessionWindow]:
        with self.factory() as db:
            query = select(SessionWindow).where(SessionWindow.session_id == session_id)
            return list(db.scalars(query.order_by(SessionWindow.idx)))

    def session_day(self, plan: Plan, until: datetime) -> None:
        """Everything that happens around ``plan`` up to ``until`` (at most its end + 1 h)."""
        room = ROOM[plan.room_id]
        start, end = plan.start, plan.start + timedelta(minutes=DURATION_MIN)
        if start - timedelta(minutes=10) > until:
            return  # still to come
        self.move_to(start - timedelta(minutes=10))
        self.status(room, True)
        self.heartbeat(room, recording=False)
        if not plan.opened or until <= start:
            return
        self.move_to(start + timedelta(seconds=40))
        self.event(room, EventType.SESSION_STARTED, plan.id)
        self.heartbeat(room, recording=True, session_id=plan.id)
        self.move_to(start + timedelta(minutes=3))
        self.photo(plan, "opening", start + timedelta(minutes=2))
        if plan.offline_min:
            # Heard until the link drops: the server dates an offline status from the last
            # word it had from the camera.
            self.move_to(start + timedelta(minutes=35) - timedelta(seconds=20))
            self.heartbeat(room, recording=True, session_id=plan.id)
            self.move_to(start + timedelta(minutes=35))
            self.status(room, False)
            self.move_to(start + timedelta(minutes=35 + plan.offline_min))
            self.status(room, True)
            self.heartbeat(room, recording=True, session_id=plan.id)
        if plan.gap_s:
            gap_start = start + timedelta(minutes=50)
            gap_end = gap_start + timedelta(seconds=plan.gap_s)
            self.move_to(gap_end + timedelta(seconds=5))
            offset = timedelta(seconds=room.clock_offset_s)
            self.event(
                room,
                EventType.RECORDING_GAP,
                plan.id,
                start=(gap_start + offset).isoformat(),
                end=(gap_end + offset).isoformat(),
                reason="camera_restarted",
            )
        if until < end:
            self.move_to(until - timedelta(seconds=25))
            self.heartbeat(room, recording=True, session_id=plan.id)
            return
        self.move_to(end + timedelta(seconds=20))
        self.event(
            room, EventType.SESSION_STOPPED, plan.id, recorded_s=DURATION_MIN * 60 - plan.gap_s
        )
        self.heartbeat(room, recording=False)
        self.move_to(end + timedelta(minutes=2))
        self.photo(plan, "closing", end + timedelta(minutes=1), far=plan.far_photo)
        # The windows are asked for after the class (they stay secret while it runs).
        self.move_to(end + timedelta(minutes=5))
        for window in self.windows(plan.id):
            if window.idx in plan.clips:
                self.clip(plan, window)
                self.move_to(self.clock.now() + timedelta(minutes=2))
        self.checker.wake().result(timeout=120)
        self.move_to(end + timedelta(minutes=30))
        self.keeper.recompute({plan.id})

    def build(self) -> School:
        document = self.data_dir / "setup.json"
        document.write_text(
            json.dumps(setup_document(self.keys, self.lecturer_tokens), ensure_ascii=False)
        )
        with self.factory.begin() as db:
            import_rows(db, read_rows(document), self.settings)
        for plan in SESSIONS:
            if plan.id == "b-1127":
                # The welding room's camera loses its link this morning and stays away.
                self.move_to(NOW - timedelta(hours=3, seconds=30))
                self.heartbeat(ROOM["a-202"], recording=False)
                self.move_to(NOW - timedelta(hours=3))
                self.status(ROOM["a-202"], False)
            self.session_day(plan, until=NOW)
        # Every session judged now: those past their grace become final.
        self.move_to(NOW - timedelta(seconds=10))
        self.heartbeat(ROOM["a-101"], recording=False)
        self.move_to(NOW)
        self.keeper.recompute({p.id for p in SESSIONS})
        tokens = {f"lecturer:{lid}": token for lid, token in self.lecturer_tokens.items()}
        with self.factory.begin() as db:
            for who, role, institution in (
                ("admin", Role.ADMIN, None),
                ("supervisor", Role.SUPERVISOR, None),
                ("institution:sch-a", Role.INSTITUTION, "sch-a"),
                ("institution:sch-b", Role.INSTITUTION, "sch-b"),
            ):
                _, tokens[who] = create_token(db, role, NOW, name=who, institution_id=institution)
        self.checker.close()
        return School(
            self.settings,
            self.engine,
            self.factory,
            self.store,
            self.clock,
            tokens,
            self.send_command,
        )


def build_school(data_dir: Path, database_url: str) -> School:
    """Seed an empty database (migrated here) and evidence store under ``data_dir``."""
    return _Seeder(data_dir, database_url).build()
