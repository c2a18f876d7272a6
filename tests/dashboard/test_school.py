"""The seeded school is what the browser tests assume: every session ends with the verdict its
plan says, finished sessions carry their real clips and photos, and the fleet's health is
stored. A change in the rules or the ingest that alters the story fails here, by name, rather
than as a puzzling page in a browser test."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from conftest import Dashboard
from school import NOW, ROOM, ROOMS, SESSIONS
from sqlalchemy import select

from ingest_server import evidence
from ingest_server.facts import offline_intervals
from ingest_server.models import ClassSession, Clip, DeviceHealth, Photo, PresenceChange


def test_every_session_has_the_verdict_its_plan_says(dashboard: Dashboard) -> None:
    with dashboard.school.factory() as db:
        verdicts = {row.id: row.verdict for row in db.scalars(select(ClassSession))}
    assert verdicts == {plan.id: plan.expect for plan in SESSIONS}


def test_finished_sessions_carry_real_clips_and_photos(dashboard: Dashboard) -> None:
    school = dashboard.school
    with school.factory() as db:
        for plan in SESSIONS:
            clips = db.scalars(select(Clip).where(Clip.session_id == plan.id)).all()
            assert len(clips) == len(plan.clips), plan.id
            for clip in clips:
                data = (school.store.root / clip.path).read_bytes()
                assert data[4:8] == b"ftyp" and len(data) == clip.size, clip.path
            photos = db.scalars(select(Photo).where(Photo.session_id == plan.id)).all()
            finished = plan.opened and plan.clips
            assert {p.kind for p in photos} == (
                {"opening", "closing"} if finished else ({"opening"} if plan.opened else set())
            ), plan.id


def test_two_cameras_are_online_one_is_not_and_presence_changed(dashboard: Dashboard) -> None:
    with dashboard.school.factory() as db:
        status = {h.device_id: h.status for h in db.scalars(select(DeviceHealth))}
        beats = {
            h.device_id: json.loads(h.heartbeat or "{}") for h in db.scalars(select(DeviceHealth))
        }
        changes = db.scalars(select(PresenceChange)).all()
    assert status == {"cam-a101": "online", "cam-a202": "offline", "cam-b301": "online"}
    assert all(beats[r.device_id]["clock_offset_s"] == r.clock_offset_s for r in ROOMS)
    assert any(not c.online and c.device_id == "cam-a202" for c in changes)


def test_the_welding_rooms_camera_drops_out_as_planned(dashboard: Dashboard) -> None:
    """Offline from its last word before the drop to its return, not from the class's start."""
    plan = next(p for p in SESSIONS if p.offline_min)
    with dashboard.school.factory() as db:
        intervals = offline_intervals(db, ROOM[plan.room_id].device_id, plan.start)
    first = intervals[0]
    assert first.start == plan.start + timedelta(minutes=35, seconds=-20)
    assert first.end == plan.start + timedelta(minutes=35 + plan.offline_min)


def test_the_verdict_history_is_dated_within_the_story(dashboard: Dashboard) -> None:
    """The feed and the audit log run on the school's clock: a session's verdict changes are
    dated between its start and the page's now, not on the day the tests ran."""
    plan = next(p for p in SESSIONS if p.id == "a-1117")
    with dashboard.school.factory() as db:
        history = evidence.verdict_history(
            db, plan.id, "en", UTC, evidence.Reader.of_everything(db)
        )
    assert history, "a judged session has a history"
    for entry in history:
        assert plan.start <= datetime.fromisoformat(entry["at"]) <= NOW, entry
    latest = max(history, key=lambda entry: entry["at"])
    assert latest["state"] == "rejected"
    assert {entry["state"] for entry in history} >= {"pending", "rejected"}
