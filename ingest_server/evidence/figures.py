"""Figures over many sessions and devices: statistics by month, institution and classroom with
verified trainee-hours, and the fleet's latest health."""

from __future__ import annotations

import json
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from common.clock import to_utc
from ingest_server.evidence.listing import VERDICTS, SessionFilter, iso_or_none
from ingest_server.models import (
    Classroom,
    ClassSession,
    Device,
    DeviceHealth,
    Institution,
    TrainingClass,
)
from ingest_server.presence import presence_of
from ingest_server.rules.reasons import DEFAULT_TIMEZONE

# -- Statistics -------------------------------------------------------------------------------


def _tally() -> dict[str, Any]:
    tally: dict[str, Any] = dict.fromkeys(("sessions", *VERDICTS), 0)
    return tally | {"verified_trainee_hours": 0.0}


def _count(tally: dict[str, Any], verdict: str, trainee_hours: float) -> None:
    tally["sessions"] += 1
    if verdict in VERDICTS:
        tally[verdict] += 1
    if verdict == "verified":
        tally["verified_trainee_hours"] += trainee_hours


def statistics(
    db: Session,
    scope: ColumnElement[bool],
    *,
    start: datetime | None,
    end: datetime | None,
    tz: tzinfo = DEFAULT_TIMEZONE,
) -> dict[str, Any]:
    """Sessions within ``scope`` scheduled in ``[start, end)``, counted by verdict: in all, by
    month (of the scheduled start in ``tz``), by institution and by classroom, with the
    verified trainee-hours (the class's trainees times the preset duration of each verified
    session: what a subsidy pays for)."""
    query = (
        select(
            ClassSession.scheduled_start,
            ClassSession.duration_s,
            ClassSession.verdict,
            Classroom.id.label("classroom_id"),
            Classroom.name.label("classroom_name"),
            Institution.id.label("institution_id"),
            Institution.name.label("institution_name"),
            TrainingClass.trainees,
        )
        .join(Classroom, Classroom.id == ClassSession.classroom_id)
        .join(Institution, Institution.id == Classroom.institution_id)
        .join(TrainingClass, TrainingClass.id == ClassSession.class_id)
        .where(scope, *SessionFilter(start=start, end=end).where())
    )
    total = _tally()
    months: dict[str, dict[str, Any]] = {}
    institutions: dict[str, dict[str, Any]] = {}
    classrooms: dict[str, dict[str, Any]] = {}
    for r in db.execute(query):
        hours = (r.trainees or 0) * r.duration_s / 3600.0
        month = to_utc(r.scheduled_start).astimezone(tz).strftime("%Y-%m")
        _count(total, r.verdict, hours)
        _count(months.setdefault(month, {"month": month} | _tally()), r.verdict, hours)
        _count(
            institutions.setdefault(
                r.institution_id,
                {"id": r.institution_id, "name": r.institution_name} | _tally(),
            ),
            r.verdict,
            hours,
        )
        _count(
            classrooms.setdefault(
                r.classroom_id,
                {
                    "id": r.classroom_id,
                    "name": r.classroom_name,
                    "institution_id": r.institution_id,
                }
                | _tally(),
            ),
            r.verdict,
            hours,
        )
    for tally in (total, *months.values(), *institutions.values(), *classrooms.values()):
        tally["verified_trainee_hours"] = round(tally["verified_trainee_hours"], 2)
    return {
        "start": iso_or_none(start),
        "end": iso_or_none(end),
        "timezone": str(tz),
        "total": total,
        "by_month": [months[k] for k in sorted(months)],
        "by_institution": [institutions[k] for k in sorted(institutions)],
        "by_classroom": [classrooms[k] for k in sorted(classrooms)],
    }


# -- The fleet --------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def fleet(
    db: Session, scope: ColumnElement[bool], *, now: datetime, heartbeat_timeout_s: float
) -> list[dict[str, Any]]:
    """Every device within ``scope`` (``api.deps.device_scope``) with its latest health:
    online (retained status online and a heartbeat within the timeout), when it was last
    heard, signal, disk, clock skew (its stated offset, device minus server), whether it
    records, and the raw heartbeat."""
    out = []
    for device in db.scalars(select(Device).where(scope).order_by(Device.device_id)):
        health = db.get(DeviceHealth, device.device_id)
        room = db.get(Classroom, device.classroom_id) if device.classroom_id else None
        try:
            beat = json.loads(health.heartbeat) if health and health.heartbeat else None
        except ValueError:
            beat = None
        beat = beat if isinstance(beat, dict) else None
        last = health.last_heartbeat_at if health else None
        online = presence_of(health, now, heartbeat_timeout_s).online
        modem = (beat or {}).get("modem") or {}
        modem = modem if isinstance(modem, dict) else {}
        out.append(
            {
                "device_id": device.device_id,
                "enabled": device.enabled,
                "classroom_id": device.classroom_id,
                "classroom": {"id": room.id, "name": room.name} if room else None,
                "institution_id": room.institution_id if room else None,
                "online": online,
                "status": health.status if health else None,
                "status_at": iso_or_none(health.status_at) if health else None,
                "last_heartbeat_at": iso_or_none(last),
                "heartbeat_age_s": (now - last).total_seconds() if last else None,
                "signal": {
                    "rssi_dbm": _number(modem.get("rssi_dbm")),
                    "rsrp_dbm": _number(modem.get("rsrp_dbm")),
                    "rsrq_db": _number(modem.get("rsrq_db")),
                    "sinr_db": _number(modem.get("sinr_db")),
                    "operator": modem.get("operator"),
                    "access_technology": modem.get("access_technology"),
                    "registration": modem.get("registration"),
                },
                "disk": {
                    "free_bytes": _number((beat or {}).get("disk_free_bytes")),
                    "total_bytes": _number((beat or {}).get("disk_total_bytes")),
                    "storage_low": (beat or {}).get("storage_low"),
                },
                "clock_skew_s": _number((beat or {}).get("clock_offset_s")),
                "clock_source": (beat or {}).get("clock_source"),
                "recording": (beat or {}).get("recording"),
                "session_id": (beat or {}).get("session_id"),
                "firmware": (beat or {}).get("firmware"),
                "heartbeat": beat,
            }
        )
    return out
