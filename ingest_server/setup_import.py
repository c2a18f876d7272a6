"""``classcam-server import FILE``: bulk setup of institutions, classrooms, devices, lecturers,
classes and sessions from JSON or CSV, all or nothing, with errors that name line and field.

JSON: one object with any of the sections ``institutions``, ``classrooms``, ``devices``,
``lecturers``, ``classes``, ``sessions`` (lists of rows). CSV: one section per file, named by
``--kind`` or by the file's stem (``classrooms.csv``); the header row names the fields.
Rows are upserted by id, so a corrected file can be imported again.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.clock import to_utc
from common.geo import Datum
from common.schemas import SafeId
from common.signing import load_public_key_b64
from ingest_server.auth import hash_token
from ingest_server.feed import session_clock
from ingest_server.models import (
    Classroom,
    ClassSession,
    Device,
    Institution,
    Lecturer,
    TrainingClass,
)
from ingest_server.sessions import create_session
from ingest_server.settings import Settings

SECTIONS = ("institutions", "classrooms", "devices", "lecturers", "classes", "sessions")


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class InstitutionRow(Row):
    id: SafeId
    name: str = Field(min_length=1)


class ClassroomRow(Row):
    id: SafeId
    institution_id: SafeId
    name: str = Field(min_length=1)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    datum: Datum = Datum.WGS84
    radius_m: float = Field(default=100.0, gt=0, le=5000)


class DeviceRow(Row):
    device_id: SafeId
    classroom_id: SafeId
    public_key: str


class LecturerRow(Row):
    id: SafeId
    institution_id: SafeId
    name: str = Field(min_length=1)
    # The app's bearer token; only its SHA-256 is stored.
    token: str = Field(min_length=16)


# More people than any one course trains: a typo (an extra digit) is refused, not counted.
MAX_TRAINEES = 10_000


class ClassRow(Row):
    id: SafeId
    institution_id: SafeId
    name: str = Field(min_length=1)
    # How many people the course trains (statistics: verified trainee-hours); optional.
    trainees: int | None = Field(default=None, ge=0, le=MAX_TRAINEES)


class SessionRow(Row):
    id: SafeId
    class_id: SafeId
    classroom_id: SafeId
    lecturer_id: SafeId
    start: AwareDatetime
    duration_min: float = Field(gt=0, le=24 * 60)


MODELS: dict[str, type[Row]] = {
    "institutions": InstitutionRow,
    "classrooms": ClassroomRow,
    "devices": DeviceRow,
    "lecturers": LecturerRow,
    "classes": ClassRow,
    "sessions": SessionRow,
}


@dataclass(frozen=True, slots=True)
class RowError:
    section: str
    line: int  # 1-based: the CSV line (header is line 1) or the JSON row's position
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.section} line {self.line}: {self.field}: {self.message}"


class ImportFailed(Exception):
    """Nothing was imported; ``errors`` says where and why."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} error(s); nothing imported")
        self.errors = errors


def read_rows(path: Path, kind: str | None = None) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """The rows of a JSON or CSV file by section, each with its line number."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 1
            raise ImportFailed([RowError("file", line, "<root>", f"not JSON: {exc}")]) from exc
        if not isinstance(data, dict):
            raise ImportFailed([RowError("file", 1, "<root>", "expected a JSON object")])
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ImportFailed(
                [
                    RowError(
                        sorted(unknown)[0],
                        1,
                        "<section>",
                        f"unknown section; expected one of {SECTIONS}",
                    )
                ]
            )
        return {s: [(i + 1, r) for i, r in enumerate(data.get(s) or [])] for s in SECTIONS}
    section = kind or path.stem
    if section not in SECTIONS:
        raise ImportFailed(
            [RowError(section, 1, "<kind>", f"say --kind, one of {', '.join(SECTIONS)}")]
        )
    reader = csv.DictReader(io.StringIO(text))
    rows = [
        (reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}) for row in reader
    ]
    return {s: rows if s == section else [] for s in SECTIONS}


def cameras_shared(db: Session, devices: list[tuple[int, Any]]) -> list[RowError]:
    """A classroom has one enabled camera (which one filmed a class is never a guess): two
    devices of the file in one classroom, or one where another enabled camera is installed
    (and the file does not move it away), are refused."""
    errors: list[RowError] = []
    moving = {r.device_id: r.classroom_id for _, r in devices}
    seen: dict[str, tuple[str, int]] = {}
    for line, r in devices:
        if r.classroom_id in seen:
            other, other_line = seen[r.classroom_id]
            errors.append(
                RowError(
                    "devices",
                    line,
                    "classroom_id",
                    f"classroom {r.classroom_id} gets two cameras: {other} (line {other_line})"
                    f" and {r.device_id}",
                )
            )
            continue
        seen[r.classroom_id] = (r.device_id, line)
        installed = db.scalars(
            select(Device.device_id).where(
                Device.classroom_id == r.classroom_id,
                Device.enabled.is_(True),
                Device.device_id != r.device_id,
            )
        ).all()
        for other in installed:
            if moving.get(other, r.classroom_id) == r.classroom_id:
                errors.append(
                    RowError(
                        "devices",
                        line,
                        "classroom_id",
                        f"classroom {r.classroom_id} already has camera {other}; disable it first",
                    )
                )
    return errors


def _owners(db: Session, parsed: dict[str, list[tuple[int, Any]]]) -> dict[str, dict[str, str]]:
    """The institution of every class, classroom and lecturer: the file's row where it has
    one (it will be upserted), else the stored one; keyed by the session row's field."""
    owners: dict[str, dict[str, str]] = {}
    for field, section, model in (
        ("class_id", "classes", TrainingClass),
        ("classroom_id", "classrooms", Classroom),
        ("lecturer_id", "lecturers", Lecturer),
    ):
        stored = db.execute(select(model.id, model.institution_id))
        owners[field] = {row_id: school for row_id, school in stored}
        owners[field].update({r.id: r.institution_id for _, r in parsed[section]})
    return owners


def mixed_schools(db: Session, parsed: dict[str, list[tuple[int, Any]]]) -> list[RowError]:
    """A session whose class, classroom and lecturer are not all one institution's: its
    evidence would be shown to one school as another's class (scope goes by the classroom,
    the lecturer sees their own sessions), so it is refused, naming each one's institution."""
    owners = _owners(db, parsed)
    errors = []
    for line, r in parsed["sessions"]:
        schools = {field: owners[field].get(getattr(r, field)) for field in owners}
        if None in schools.values() or len(set(schools.values())) == 1:
            continue  # an unknown id is reported as such
        named = ", ".join(f"{getattr(r, f)} of {schools[f]}" for f in owners)
        # Named at the first field that disagrees with the classroom (whose school scopes it).
        field = "class_id" if schools["class_id"] != schools["classroom_id"] else "lecturer_id"
        message = f"class, classroom and lecturer belong to different institutions: {named}"
        errors.append(RowError("sessions", line, field, message))
    return errors


@dataclass(frozen=True, slots=True)
class _Booking:
    session_id: str
    lecturer_id: str
    classroom_id: str
    start: datetime
    end: datetime
    line: int | None  # None: already in the database, not in this file


def _when(booking: _Booking) -> str:
    return f"{booking.start.isoformat()} to {booking.end.isoformat()}"


def _bookings(db: Session, sessions: list[tuple[int, Any]], by: str) -> dict[str, list[_Booking]]:
    """The file's sessions and the stored ones sharing their ``by`` (``lecturer_id`` or
    ``classroom_id``), grouped by it and sorted by start."""
    in_file = {
        r.id: _Booking(
            r.id,
            r.lecturer_id,
            r.classroom_id,
            to_utc(r.start),
            to_utc(r.start) + timedelta(minutes=r.duration_min),
            line,
        )
        for line, r in sessions
    }
    keys = sorted({getattr(b, by) for b in in_file.values()})
    column = getattr(ClassSession, by)
    stored = [
        _Booking(
            row.id,
            row.lecturer_id,
            row.classroom_id,
            to_utc(row.scheduled_start),
            to_utc(row.scheduled_start) + timedelta(seconds=row.duration_s),
            None,
        )
        for row in db.scalars(select(ClassSession).where(column.in_(keys)))
        if row.id not in in_file
    ]
    groups: dict[str, list[_Booking]] = {}
    for booking in [*in_file.values(), *stored]:
        groups.setdefault(getattr(booking, by), []).append(booking)
    for bookings in groups.values():
        bookings.sort(key=lambda b: (b.start, b.session_id))
    return groups


def _overlapping(bookings: list[_Booking]) -> list[tuple[_Booking, _Booking]]:
    """Every pair of ``bookings`` (sorted by start) that overlap in time, each way round,
    the first of each pair from the file."""
    pairs = []
    for i, first in enumerate(bookings):
        for second in bookings[i + 1 :]:
            if second.start >= first.end:
                break
            pairs += [(m, o) for m, o in ((first, second), (second, first)) if m.line is not None]
    return pairs


def _conflict(mine: _Booking, other: _Booking, what: str) -> RowError:
    where = "" if other.line is not None else " (already imported)"
    assert mine.line is not None
    return RowError(
        "sessions",
        mine.line,
        "start",
        f"{what}: session {mine.session_id} in {mine.classroom_id} ({_when(mine)})"
        f" overlaps session {other.session_id} in {other.classroom_id} ({_when(other)}){where}",
    )


def double_booked(db: Session, sessions: list[tuple[int, Any]]) -> list[RowError]:
    """One lecturer in two classrooms at once, or one classroom holding two sessions at once
    (one recording would prove both): every session of the file that overlaps another (in the
    file or already stored) that way, naming both."""
    errors = []
    for lecturer_id, bookings in sorted(_bookings(db, sessions, "lecturer_id").items()):
        what = f"lecturer {lecturer_id} would be in two classrooms at once"
        errors += [
            _conflict(mine, other, what)
            for mine, other in _overlapping(bookings)
            if mine.classroom_id != other.classroom_id
        ]
    for classroom_id, bookings in sorted(_bookings(db, sessions, "classroom_id").items()):
        what = f"classroom {classroom_id} would hold two sessions at once"
        errors += [_conflict(mine, other, what) for mine, other in _overlapping(bookings)]
    return sorted(errors, key=lambda e: (e.line, e.message))


def import_rows(
    db: Session, rows: dict[str, list[tuple[int, dict[str, Any]]]], settings: Settings
) -> dict[str, int]:
    """Validate every row, check references, then upsert; raise ``ImportFailed`` on any error."""
    errors: list[RowError] = []
    parsed: dict[str, list[tuple[int, Any]]] = {s: [] for s in SECTIONS}
    for section in SECTIONS:
        for line, raw in rows.get(section, []):
            try:
                row = MODELS[section].model_validate(raw)
            except ValidationError as exc:
                for err in exc.errors():
                    field = ".".join(str(p) for p in err["loc"]) or "<row>"
                    errors.append(RowError(section, line, field, err["msg"]))
                continue
            if isinstance(row, DeviceRow):
                try:
                    load_public_key_b64(row.public_key)
                except ValueError as exc:
                    errors.append(RowError(section, line, "public_key", str(exc)))
            parsed[section].append((line, row))

    def known(section: str, model: type[Any]) -> set[str]:
        ids = {row.id for _, row in parsed[section]}
        return ids | set(db.scalars(select(model.id)))

    institutions = known("institutions", Institution)
    classrooms = known("classrooms", Classroom)
    lecturers = known("lecturers", Lecturer)
    classes = known("classes", TrainingClass)
    refs = {
        "institution_id": institutions,
        "classroom_id": classrooms,
        "lecturer_id": lecturers,
        "class_id": classes,
    }
    for section in SECTIONS:
        for line, row in parsed[section]:
            for field, ids in refs.items():
                value = getattr(row, field, None)
                if value is not None and value not in ids:
                    errors.append(RowError(section, line, field, f"no such id: {value!r}"))
    errors += mixed_schools(db, parsed)
    errors += double_booked(db, parsed["sessions"])
    errors += cameras_shared(db, parsed["devices"])
    if errors:
        raise ImportFailed(errors)
    counts = dict.fromkeys(SECTIONS, 0)
    # The server's clock (simulated in a replay), as crud.register_device dates a move.
    now = session_clock(db).now()
    for _, r in parsed["institutions"]:
        db.merge(Institution(id=r.id, name=r.name))
        counts["institutions"] += 1
    for _, r in parsed["classrooms"]:
        db.merge(
            Classroom(
                id=r.id,
                institution_id=r.institution_id,
                name=r.name,
                lat=r.lat,
                lon=r.lon,
                datum=r.datum.value,
                radius_m=r.radius_m,
            )
        )
        counts["classrooms"] += 1
    for _, r in parsed["lecturers"]:
        db.merge(
            Lecturer(
                id=r.id,
                institution_id=r.institution_id,
                name=r.name,
                token_sha256=hash_token(r.token),
            )
        )
        counts["lecturers"] += 1
    for _, r in parsed["classes"]:
        course = TrainingClass(id=r.id, institution_id=r.institution_id, name=r.name)
        if r.trainees is not None:
            course.trainees = r.trainees  # else kept as it was (0 for a new class)
        db.merge(course)
        counts["classes"] += 1
    db.flush()
    for _, r in parsed["devices"]:
        existing = db.get(Device, r.device_id)
        if existing is None:
            db.add(
                Device(
                    device_id=r.device_id,
                    public_key=r.public_key,
                    classroom_id=r.classroom_id,
                    created_at=now,
                    enabled=True,
                )
            )
        else:
            if existing.classroom_id != r.classroom_id:
                # A move: the clips it took before are not its new classroom's (evidence.scope).
                existing.classroom_since = now
            existing.public_key, existing.classroom_id = r.public_key, r.classroom_id
        counts["devices"] += 1
    db.flush()
    for _, r in parsed["sessions"]:
        create_session(
            db,
            settings,
            session_id=r.id,
            class_id=r.class_id,
            classroom_id=r.classroom_id,
            lecturer_id=r.lecturer_id,
            start=r.start,
            duration_s=r.duration_min * 60,
        )
        counts["sessions"] += 1
    return counts
