"""A scenario turned into the plan of its replay (``simulators.plan``): pure and repeatable.

``plan_replay(scenario)`` says what every part of the replay does and when: the import
document and the lecturers' app tokens, each device's camera picture over the day, link and
power, the lecturer's app actions (open and close), every photo's bytes and form fields, and
the verdict each session must end with. It does no I/O (photos are JPEG bytes made in memory)
and draws nothing at random: jitter comes from generators seeded by ids, so one scenario gives
one plan on every run and every machine.

Each behaviour drives a real mechanism (docs/scenarios.md):

==========================  =============================================================
behaviour                   what the replay does
==========================  =============================================================
honest                      opening photo 1–2 min after the open, closing 1–2.5 min before
                            the close, both in the classroom (EXIF time and GPS)
ends_early                  the app closes the session; the closing photo comes then
camera_unplugged            camera period ``unplugged`` (reads fail)
uplink_down                 ``link_down`` then ``link_up`` (``until``: the next HH:MM)
lens_covered                camera period ``covered`` (black picture)
frozen_picture              camera period ``frozen`` (a still print of its own view)
camera_moved                camera period ``moved`` onto another scene
photo_elsewhere             that photo taken ``metres`` away, reported in ``datum``
photo_reused                that photo is ``from_session``'s, scaled, re-encoded, EXIF edited
closing_photo_missing       no closing photo
closing_before_opening      the closing photo's time ``minutes`` before the opening one's
double_booked               the app opens this session while ``with_session`` still runs
power_cut                   ``power_off`` then ``power_on`` ``for_s`` later
thin_uplink                 ``link_shape`` at the session's start
clock_skew                  the device's clock runs ``seconds`` off for the whole replay
forged_clips                the device is a forger (``ForgerPlan``) for the whole replay
==========================  =============================================================
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from common.geo import Coordinate, destination, to_wgs84
from ingest_server.settings import Settings
from simulators.photo_recipes import (
    PHOTO_SIZE,
    Shot,
    photo_seed,
    reuse_photo,
    take_photo,
    utc_offset,
)
from simulators.plan import (
    Action,
    CameraPeriod,
    CameraPlan,
    CameraTrouble,
    DevicePlan,
    Expected,
    ForgerPlan,
    LinkShape,
    PhotoKind,
    PhotoUpload,
    ReplayPlan,
    SessionPlan,
)
from simulators.scenario import (
    CameraMoved,
    CameraUnplugged,
    ClockSkew,
    ClosingBeforeOpening,
    ClosingPhotoMissing,
    Device,
    DoubleBooked,
    EndsEarly,
    ForgedClips,
    FrozenPicture,
    LensCovered,
    PhotoElsewhere,
    PhotoReused,
    PowerCut,
    Scenario,
    Session,
    ThinUplink,
    UplinkDown,
)

# The shared clock starts this long before the first thing happens: devices connect, fetch
# their timetable and upload their reference still before any class opens.
CLOCK_LEAD = timedelta(minutes=10)
# Two sessions of one lecturer overlapping by at most the photo tolerance only meet at a
# changeover (rules.photo_match.double_bookings). A double-booked lecturer opens the second
# session DOUBLE_BOOKING_OVERLAP before the first one ends: five minutes beyond a changeover.
CHANGEOVER = timedelta(seconds=Settings.model_fields["photo_tolerance_s"].default)
DOUBLE_BOOKING_OVERLAP = CHANGEOVER + timedelta(minutes=5)
# An honest lecturer stands somewhere in the room: this far from its recorded position at most.
HONEST_SPREAD_M = 20.0


def lecturer_token(scenario: Scenario, lecturer_id: str) -> str:
    """The lecturer's app token (the import wants >= 16 characters): derived from the
    scenario and the lecturer, so a replay against a long-running server finds it again."""
    digest = hashlib.sha256(f"classcam-replay/{scenario.name}/{lecturer_id}".encode())
    return f"app-{lecturer_id}-{digest.hexdigest()[:24]}"


@dataclass(frozen=True, slots=True)
class SessionTimes:
    """When a session really opens and closes in the replay (the app may move either)."""

    scheduled_start: datetime
    scheduled_end: datetime
    opens: datetime
    closes: datetime


def session_times(scenario: Scenario, session: Session) -> SessionTimes:
    """The scheduled span, moved by ``double_booked`` (opened early, while the other session
    still runs) and ``ends_early`` (closed by the app)."""
    start, end = scenario.session_start(session), scenario.session_end(session)
    opens, closes = start, end
    for booked in session.of_kind(DoubleBooked):
        other = scenario.session(booked.with_session)
        other_start, other_end = scenario.session_start(other), scenario.session_end(other)
        opens = max(other_start + timedelta(minutes=1), other_end - DOUBLE_BOOKING_OVERLAP)
        if other_end - opens <= CHANGEOVER:
            raise ValueError(
                f"session {session.id}: double_booked needs {other.id} to run longer than"
                f" {CHANGEOVER.total_seconds() / 60 + 1:g} min, or the overlap is a changeover"
            )
    for early in session.of_kind(EndsEarly):
        closes = min(closes, start + timedelta(minutes=early.after_min))
    return SessionTimes(start, end, opens, closes)


# --------------------------------------------------------------------------- devices


def _device_sessions(scenario: Scenario, device: Device) -> list[Session]:
    return [s for s in scenario.sessions if scenario.session_device(s).id == device.id]


def _period(times: SessionTimes, at_min: float, for_min: float | None) -> tuple[datetime, datetime]:
    """``at_min`` after the scheduled start, for ``for_min`` or to the session's close."""
    start = times.scheduled_start + timedelta(minutes=at_min)
    end = times.closes if for_min is None else start + timedelta(minutes=for_min)
    return start, end


def camera_periods(
    scenario: Scenario, device: Device, times: dict[str, SessionTimes]
) -> tuple[CameraPeriod, ...]:
    """What goes wrong with ``device``'s picture in its sessions, in time order."""
    periods: list[CameraPeriod] = []
    for session in _device_sessions(scenario, device):
        for behaviour in session.behaviours:
            trouble: CameraTrouble
            scene: int | None = None
            if isinstance(behaviour, CameraUnplugged):
                trouble = "unplugged"
            elif isinstance(behaviour, LensCovered):
                trouble = "covered"
            elif isinstance(behaviour, FrozenPicture):
                trouble = "frozen"
            elif isinstance(behaviour, CameraMoved):
                trouble = "moved"
                scene = behaviour.scene if behaviour.scene is not None else scenario.unused_scene()
            else:
                continue
            start, end = _period(times[session.id], behaviour.at_min, behaviour.for_min)
            periods.append(CameraPeriod(start, end, trouble, scene))
    return tuple(sorted(periods, key=lambda p: p.start))


def device_plan(scenario: Scenario, device: Device, times: dict[str, SessionTimes]) -> DevicePlan:
    """``device``'s camera, link, clock and (if it is in an adversary's hands) forger."""
    sessions = _device_sessions(scenario, device)
    skews = {b.seconds for s in sessions for b in s.of_kind(ClockSkew)}
    forgeries = {(b.source, b.classroom) for s in sessions for b in s.of_kind(ForgedClips)}
    if len(skews) > 1 or len(forgeries) > 1:
        raise ValueError(
            f"device {device.id}: its sessions give it different clock_skew or forged_clips;"
            " a device has one clock and one owner for the whole replay"
        )
    forger = None
    if forgeries:
        source, classroom = forgeries.pop()
        other = scenario.device_of(classroom).id if classroom is not None else None
        forger = ForgerPlan(source=source, other_device=other)
    camera = CameraPlan(
        scene_seed=scenario.scene_of(device), periods=camera_periods(scenario, device, times)
    )
    return DevicePlan(
        device_id=device.id,
        classroom_id=device.classroom,
        camera=camera,
        link=scenario.link_shape(device),
        clock_skew_s=skews.pop() if skews else device.clock_skew_s,
        modem=device.modem,
        forger=forger,
    )


# --------------------------------------------------------------------------- actions


def session_actions(scenario: Scenario, session: Session, times: SessionTimes) -> list[Action]:
    """The lecturer's app, the device's link and its power during ``session``."""
    device_id = scenario.session_device(session).id
    start = times.scheduled_start
    actions: list[Action] = []
    for behaviour in session.behaviours:
        if isinstance(behaviour, EndsEarly):
            actions.append(Action(times.closes, "close_session", session_id=session.id))
        elif isinstance(behaviour, DoubleBooked):
            actions.append(Action(times.opens, "open_session", session_id=session.id))
        elif isinstance(behaviour, UplinkDown):
            down = start + timedelta(minutes=behaviour.at_min)
            if behaviour.until is not None:
                up = scenario.next_local_time(down, behaviour.until)
            elif behaviour.for_min is not None:
                up = down + timedelta(minutes=behaviour.for_min)
            else:
                up = times.closes
            actions.append(Action(down, "link_down", device_id=device_id))
            actions.append(Action(up, "link_up", device_id=device_id))
        elif isinstance(behaviour, PowerCut):
            off = start + timedelta(minutes=behaviour.at_min)
            actions.append(Action(off, "power_off", device_id=device_id))
            on = off + timedelta(seconds=behaviour.for_s)
            actions.append(Action(on, "power_on", device_id=device_id))
        elif isinstance(behaviour, ThinUplink):
            shape = LinkShape(behaviour.rate_kbit, behaviour.loss_pct, behaviour.latency_ms)
            actions.append(Action(start, "link_shape", device_id=device_id, shape=shape))
    return actions


# --------------------------------------------------------------------------- photos


def classroom_position(scenario: Scenario, classroom_id: str) -> Coordinate:
    """Where the classroom is, in WGS-84 (what a phone's GPS reads there)."""
    location = scenario.classroom(classroom_id).location
    return to_wgs84(Coordinate(location.lat, location.lon, location.datum))


def _honest_shot(
    scenario: Scenario, session: Session, times: SessionTimes, kind: PhotoKind
) -> tuple[Shot, datetime]:
    """The photo an honest lecturer takes, and when the app uploads it."""
    rng = random.Random(f"{session.id}/{kind}")
    if kind == "opening":
        taken = times.opens + timedelta(seconds=rng.uniform(60, 120))
    else:
        taken = times.closes - timedelta(seconds=rng.uniform(60, 150))
    here = destination(
        classroom_position(scenario, session.classroom),
        rng.uniform(2.0, HONEST_SPREAD_M),
        rng.uniform(0.0, 360.0),
    )
    uploaded = taken + timedelta(seconds=rng.uniform(10, 40))
    offset = utc_offset(scenario.zone, taken)
    return Shot(taken, here, photo_seed(session.id, kind), utc_offset=offset), uploaded


def _planned_shots(
    scenario: Scenario, session: Session, times: SessionTimes
) -> dict[PhotoKind, tuple[Shot, datetime]]:
    """Both photos of ``session`` as its photo behaviours make them (reuse aside)."""
    kinds: tuple[PhotoKind, ...] = ("opening", "closing")
    shots = {kind: _honest_shot(scenario, session, times, kind) for kind in kinds}
    for elsewhere in session.of_kind(PhotoElsewhere):
        shot, uploaded = shots[elsewhere.photo]
        room = classroom_position(scenario, session.classroom)
        there = destination(room, elsewhere.metres, elsewhere.bearing_deg)
        shots[elsewhere.photo] = (replace(shot, position=there, datum=elsewhere.datum), uploaded)
    for backdated in session.of_kind(ClosingBeforeOpening):
        closing, uploaded = shots["closing"]
        taken = shots["opening"][0].taken_at - timedelta(minutes=backdated.minutes)
        backdated_shot = replace(
            closing, taken_at=taken, utc_offset=utc_offset(scenario.zone, taken)
        )
        shots["closing"] = (backdated_shot, uploaded)
    if session.of_kind(ClosingPhotoMissing):
        del shots["closing"]
    return shots


def plan_photos(
    scenario: Scenario, times: dict[str, SessionTimes], size: tuple[int, int] = PHOTO_SIZE
) -> list[PhotoUpload]:
    """Every photo upload of the replay, in time order, pictures of ``size`` pixels. A reused
    photo is made from the bytes planned for its source session, so those are made first."""
    made: dict[tuple[str, PhotoKind], PhotoUpload] = {}
    reused: list[tuple[Session, PhotoReused, Shot, datetime]] = []
    for session in scenario.sessions:
        copies = {b.photo: b for b in session.of_kind(PhotoReused)}
        for kind, (shot, uploaded) in _planned_shots(scenario, session, times[session.id]).items():
            if kind in copies:
                reused.append((session, copies[kind], shot, uploaded))
                continue
            jpeg, fields = take_photo(shot, size)
            made[(session.id, kind)] = PhotoUpload(
                uploaded, session.id, session.lecturer, kind, jpeg, fields
            )
    for session, copy, shot, uploaded in reused:
        source = made.get((copy.from_session, copy.photo))
        if source is None or source.at >= uploaded:
            raise ValueError(
                f"session {session.id}: photo_reused needs {copy.from_session}'s own"
                f" {copy.photo} photo uploaded before this one"
            )
        jpeg = reuse_photo(source.jpeg, scale=copy.scale, quality=copy.quality, shot=shot)
        made[(session.id, copy.photo)] = PhotoUpload(
            uploaded, session.id, session.lecturer, copy.photo, jpeg
        )
    return sorted(made.values(), key=lambda p: (p.at, p.session_id, p.kind))


# --------------------------------------------------------------------------- the whole


def setup_document(scenario: Scenario, tokens: dict[str, str]) -> dict[str, Any]:
    """The ``classcam-server import`` document, devices without their public keys (the
    replay provisions each device and fills its key in)."""
    return {
        "institutions": [{"id": i.id, "name": i.name} for i in scenario.institutions],
        "classrooms": [
            {
                "id": c.id,
                "institution_id": c.institution,
                "name": c.name,
                "lat": c.location.lat,
                "lon": c.location.lon,
                "datum": str(c.location.datum),
                "radius_m": c.radius_m,
            }
            for c in scenario.classrooms
        ],
        "devices": [{"device_id": d.id, "classroom_id": d.classroom} for d in scenario.devices],
        "lecturers": [
            {
                "id": lect.id,
                "institution_id": lect.institution,
                "name": lect.name,
                "token": tokens[lect.id],
            }
            for lect in scenario.lecturers
        ],
        "classes": [
            {"id": k.id, "institution_id": k.institution, "name": k.name} for k in scenario.classes
        ],
        "sessions": [
            {
                "id": s.id,
                "class_id": s.class_,
                "classroom_id": s.classroom,
                "lecturer_id": s.lecturer,
                "start": scenario.session_start(s).isoformat(),
                "duration_min": s.duration_min,
            }
            for s in scenario.sessions
        ],
    }


def session_plan(scenario: Scenario, session: Session) -> SessionPlan:
    """The session as the report shows it, with the verdict it must end with."""
    return SessionPlan(
        session_id=session.id,
        classroom_id=session.classroom,
        device_id=scenario.session_device(session).id,
        lecturer_id=session.lecturer,
        start=scenario.session_start(session),
        end=scenario.session_end(session),
        behaviours=tuple(b.name for b in session.all_behaviours()),
        expected=Expected(
            verdict=session.expect.verdict,
            reasons=frozenset(str(code) for code in session.expect.reasons),
            may_also=frozenset(str(code) for code in session.expect.may_also),
        ),
    )


def server_settings(scenario: Scenario) -> dict[str, str]:
    """The server's ``CLASSCAM_*`` overrides: production defaults but for what the scenario's
    ``server:`` says (a replay proves the verdicts the deployed server gives), and the
    scenario's time zone as the deployment's, when it is not the default one."""
    env = {}
    if scenario.timezone != Settings.model_fields["timezone"].default:
        env["CLASSCAM_TIMEZONE"] = scenario.timezone
    return env | scenario.server_env()


def plan_replay(scenario: Scenario, *, photo_size: tuple[int, int] = PHOTO_SIZE) -> ReplayPlan:
    """Everything the replay of ``scenario`` does (see the module docstring); photos of
    ``photo_size`` pixels (tests that do not look at pictures ask for small ones)."""
    times = {s.id: session_times(scenario, s) for s in scenario.sessions}
    tokens = {lect.id: lecturer_token(scenario, lect.id) for lect in scenario.lecturers}
    actions = sorted(
        (a for s in scenario.sessions for a in session_actions(scenario, s, times[s.id])),
        key=lambda a: a.at,
    )
    photos = plan_photos(scenario, times, photo_size)
    first = min(
        [t.opens for t in times.values()] + [a.at for a in actions] + [p.at for p in photos]
    )
    return ReplayPlan(
        name=scenario.name,
        clock_start=first - CLOCK_LEAD,
        speed=scenario.speed,
        setup=setup_document(scenario, tokens),
        lecturer_tokens=tokens,
        server_settings=server_settings(scenario),
        devices=tuple(device_plan(scenario, d, times) for d in scenario.devices),
        sessions=tuple(session_plan(scenario, s) for s in scenario.sessions),
        actions=tuple(actions),
        photos=tuple(photos),
    )
