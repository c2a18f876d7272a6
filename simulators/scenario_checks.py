"""What is wrong with a scenario, in words ops staff can act on.

``cross_check(scenario)`` finds what the models alone cannot see: a reference to nothing, two
devices in one classroom, a behaviour timed after its session ends, an expected verdict its
reasons contradict, a ``server:`` key the server does not have. Findings are key paths and
sentences; ``simulators.scenario`` maps them to lines.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from datetime import datetime, timedelta

from pydantic import ValidationError, create_model

from ingest_server.rules.reasons import SEVERITY, ReasonCode, Severity
from ingest_server.settings import Settings
from simulators.scenario import BUILTIN_LINKS, Loc, Scenario, Session
from simulators.scenario_behaviours import (
    CameraMoved,
    CameraUnplugged,
    ClockSkew,
    ClosingPhotoMissing,
    DoubleBooked,
    EndsEarly,
    ForgedClips,
    FrozenPicture,
    Honest,
    LensCovered,
    PhotoReused,
    PowerCut,
    UplinkDown,
)
from simulators.scenario_messages import describe_error

Finding = tuple[Loc, str]

# Settings the replay itself sets (where its server keeps data, which broker, which zone).
REPLAY_OWNED_SETTINGS = frozenset(
    name
    for name in Settings.model_fields
    if name.startswith(("mqtt_", "api_"))
    or name in {"data_dir", "database_url", "evidence_dir", "audit_key_file", "timezone"}
)
MAX_DAY = 366  # Session.day's limit
_SECTIONS = ("institutions", "classrooms", "devices", "lecturers", "classes", "sessions")


def cross_check(scenario: Scenario) -> list[Finding]:
    """Every inconsistency between sections of an otherwise well-formed scenario."""
    return [
        *_unique_ids(scenario),
        *_references(scenario),
        *_devices(scenario),
        *_server(scenario),
        *_starts(scenario),
        *_overlaps(scenario),
        *_one_clock_one_owner(scenario),
        *(
            finding
            for index, session in enumerate(scenario.sessions)
            for finding in (
                *_behaviours(scenario, index, session),
                *_expectation(index, session),
            )
        ),
    ]


def _unique_ids(scenario: Scenario) -> Iterator[Finding]:
    for section in _SECTIONS:
        first: dict[str, int] = {}
        for index, item in enumerate(getattr(scenario, section)):
            if item.id in first:
                yield (
                    (section, index, "id"),
                    f"duplicate id {item.id!r} (also {section}[{first[item.id]}])",
                )
            first.setdefault(item.id, index)


def _missing(kind: str, wanted: str, known: list[str]) -> str:
    close = difflib.get_close_matches(wanted, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known) or 'none'})"
    return f"no {kind} {wanted!r} in this file{hint}"


def _references(scenario: Scenario) -> Iterator[Finding]:
    ids = {section: [item.id for item in getattr(scenario, section)] for section in _SECTIONS}
    for section in ("classrooms", "lecturers", "classes"):
        for index, item in enumerate(getattr(scenario, section)):
            if item.institution not in ids["institutions"]:
                yield (
                    (section, index, "institution"),
                    _missing("institution", item.institution, ids["institutions"]),
                )
    for index, device in enumerate(scenario.devices):
        if device.classroom not in ids["classrooms"]:
            yield (
                ("devices", index, "classroom"),
                _missing("classroom", device.classroom, ids["classrooms"]),
            )
    for index, session in enumerate(scenario.sessions):
        for field, section, kind in (
            ("class", "classes", "class"),
            ("classroom", "classrooms", "classroom"),
            ("lecturer", "lecturers", "lecturer"),
        ):
            wanted = session.class_ if field == "class" else getattr(session, field)
            if wanted not in ids[section]:
                yield ("sessions", index, field), _missing(kind, wanted, ids[section])


def _devices(scenario: Scenario) -> Iterator[Finding]:
    links = [*_builtin_links(), *scenario.links]
    for name in scenario.links:
        if name in _builtin_links():
            yield ("links", name), f"{name!r} is a built-in profile; give yours another name"
    holder: dict[str, str] = {}
    for index, device in enumerate(scenario.devices):
        if device.classroom in holder:
            yield (
                ("devices", index, "classroom"),
                f"classroom {device.classroom!r} already has device {holder[device.classroom]!r}"
                " (one device per classroom)",
            )
        holder.setdefault(device.classroom, device.id)
        if isinstance(device.link, str) and device.link not in links:
            yield (
                ("devices", index, "link"),
                (
                    f"no link profile {device.link!r} (known: {', '.join(links)}; or inline"
                    " {rate_kbit, loss_pct, latency_ms})"
                ),
            )
    classrooms = {c.id for c in scenario.classrooms}
    for index, session in enumerate(scenario.sessions):
        if session.classroom in classrooms and session.classroom not in holder:
            yield (
                ("sessions", index, "classroom"),
                (f"classroom {session.classroom!r} has no device to film this session"),
            )


def _builtin_links() -> list[str]:
    return list(BUILTIN_LINKS)


def _server(scenario: Scenario) -> Iterator[Finding]:
    fields = Settings.model_fields
    for key, value in scenario.server.items():
        if key in REPLAY_OWNED_SETTINGS:
            yield ("server", key), "set by the replay itself; a scenario cannot change it"
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            yield ("server", key), f"not a server setting (ingest_server.settings.Settings){hint}"
            continue
        if value is None:
            yield (
                ("server", key),
                "null cannot reach the server (its settings are environment variables);"
                " leave the key out for the default",
            )
            continue
        if isinstance(value, float) and not math.isfinite(value):
            yield ("server", key), f"must be a finite number (got {value!r})"
            continue
        info = fields[key]
        try:
            # The field alone, with its own limits, without reading CLASSCAM_* from the env.
            alone = create_model("ServerSetting", **{key: (info.annotation, info)})  # type: ignore[call-overload]
            alone.model_validate({key: value})
        except ValidationError as exc:
            yield ("server", key), describe_error(exc.errors()[0])


def _starts(scenario: Scenario) -> Iterator[Finding]:
    """An ISO start within the days a ``day:`` can reach (``date`` to 366 days after), so one
    misplaced session cannot stretch the replay over years."""
    last = scenario.date + timedelta(days=MAX_DAY)
    for index, session in enumerate(scenario.sessions):
        local = scenario.session_start(session).astimezone(scenario.zone).date()
        if not scenario.date <= local <= last:
            yield (
                ("sessions", index, "start"),
                f"must be on {scenario.date} or up to {MAX_DAY} days after it, as day: allows"
                f" (got {session.start!r}, {local} local)",
            )


def _overlaps(scenario: Scenario) -> Iterator[Finding]:
    """What ``classcam-server import`` refuses: one classroom holding two sessions at once,
    one lecturer in two classrooms at once (double booking is a behaviour, not a timetable)."""
    spans = [
        (scenario.session_start(s), scenario.session_end(s), index, s)
        for index, s in enumerate(scenario.sessions)
    ]
    spans.sort(key=lambda span: (span[0], span[2]))
    for position, (start, end, _, session) in enumerate(spans):
        for other_start, _, other_index, other in spans[position + 1 :]:
            if other_start >= end:
                break
            if other.classroom == session.classroom:
                what = f"classroom {session.classroom!r} would hold two sessions at once"
            elif other.lecturer == session.lecturer:
                what = f"lecturer {session.lecturer!r} would be in two classrooms at once"
            else:
                continue
            yield (
                ("sessions", other_index, "start"),
                (
                    f"{what}: overlaps session {session.id!r} ({_when(start, end, scenario)});"
                    " the import refuses it"
                ),
            )


def _when(start: datetime, end: datetime, scenario: Scenario) -> str:
    zone = scenario.zone
    return f"{start.astimezone(zone):%Y-%m-%d %H:%M}-{end.astimezone(zone):%H:%M}"


def _one_clock_one_owner(scenario: Scenario) -> Iterator[Finding]:
    """A device has one clock and one owner for the whole replay: every session in its
    classroom that says ``clock_skew`` or ``forged_clips`` must say the same."""
    first: dict[tuple[str, str], tuple[object, str]] = {}
    for index, session in enumerate(scenario.sessions):
        for number, behaviour in enumerate(session.behaviours):
            if isinstance(behaviour, ClockSkew):
                said: object = behaviour.seconds
            elif isinstance(behaviour, ForgedClips):
                said = (behaviour.source, behaviour.classroom)
            else:
                continue
            key = (session.classroom, behaviour.name)
            earlier = first.setdefault(key, (said, session.id))
            if earlier[0] != said:
                yield (
                    ("sessions", index, "behaviours", number, behaviour.name),
                    (
                        f"session {earlier[1]!r} in the same classroom says otherwise; a device"
                        f" has one {behaviour.name} for the whole replay"
                    ),
                )


def _behaviours(scenario: Scenario, index: int, session: Session) -> Iterator[Finding]:
    here: Loc = ("sessions", index, "behaviours")
    sessions = {s.id: s for s in scenario.sessions}
    for number, behaviour in enumerate(session.behaviours):
        at: Loc = (*here, number, behaviour.name)
        if isinstance(behaviour, Honest) and len(session.behaviours) > 1:
            yield (*here, number), "honest cannot be combined with other behaviours"
        if isinstance(behaviour, EndsEarly) and behaviour.after_min >= session.duration_min:
            yield (*at, "after_min"), _inside(behaviour.after_min, session)
        if (
            isinstance(
                behaviour,
                CameraUnplugged | UplinkDown | LensCovered | FrozenPicture | CameraMoved | PowerCut,
            )
            and behaviour.at_min >= session.duration_min
        ):
            yield (*at, "at_min"), _inside(behaviour.at_min, session)
        if isinstance(behaviour, PhotoReused):
            source = sessions.get(behaviour.from_session)
            if source is None:
                yield (
                    (*at, "from_session"),
                    _missing("session", behaviour.from_session, list(sessions)),
                )
            elif source.id == session.id:
                yield (*at, "from_session"), "a session cannot reuse its own photo"
            elif scenario.session_start(source) >= scenario.session_start(session):
                yield (
                    (*at, "from_session"),
                    (f"session {source.id!r} starts later: its photo does not exist yet"),
                )
            elif behaviour.photo == "closing" and source.of_kind(ClosingPhotoMissing):
                yield (*at, "from_session"), f"session {source.id!r} has no closing photo to reuse"
            elif any(r.photo == behaviour.photo for r in source.of_kind(PhotoReused)):
                yield (
                    (*at, "from_session"),
                    (
                        f"session {source.id!r}'s {behaviour.photo} photo is itself reused;"
                        " reuse an original"
                    ),
                )
            elif behaviour.photo == "closing" and (
                scenario.session_end(source) >= scenario.session_end(session)
            ):
                yield (
                    (*at, "from_session"),
                    (f"session {source.id!r} ends later: its closing photo does not exist yet"),
                )
        if isinstance(behaviour, DoubleBooked):
            other = sessions.get(behaviour.with_session)
            if other is None:
                yield (
                    (*at, "with_session"),
                    _missing("session", behaviour.with_session, list(sessions)),
                )
            elif other.id == session.id:
                yield (*at, "with_session"), "a session cannot be double booked with itself"
            elif other.lecturer != session.lecturer or other.classroom == session.classroom:
                yield (
                    (*at, "with_session"),
                    (f"session {other.id!r} must have the same lecturer in another classroom"),
                )
            elif scenario.session_start(other) >= scenario.session_start(session):
                yield (
                    (*at, "with_session"),
                    (
                        f"session {other.id!r} must start before this one (the lecturer opens this"
                        " one early while that one still runs)"
                    ),
                )
        if isinstance(behaviour, ForgedClips) and behaviour.classroom is not None:
            classrooms = [c.id for c in scenario.classrooms]
            if behaviour.classroom not in classrooms:
                yield (*at, "classroom"), _missing("classroom", behaviour.classroom, classrooms)
            elif behaviour.classroom == session.classroom:
                yield (*at, "classroom"), "must be another classroom than the session's own"
            elif behaviour.classroom not in {d.classroom for d in scenario.devices}:
                yield (*at, "classroom"), f"classroom {behaviour.classroom!r} has no device to copy"


def _inside(minutes: float, session: Session) -> str:
    return (
        f"must be inside the session: less than its duration_min {session.duration_min:g}"
        f" (got {minutes:g})"
    )


def _expectation(index: int, session: Session) -> Iterator[Finding]:
    here: Loc = ("sessions", index, "expect")
    seen: set[ReasonCode] = set()
    for number, code in enumerate(session.expect.reasons):
        if code in seen:
            yield (*here, "reasons", number), f"{code.value!r} is listed twice"
        seen.add(code)
    severities = {SEVERITY[code] for code in seen}
    verdict = session.expect.verdict
    by_severity = {
        severity: ", ".join(sorted(c.value for c in seen if SEVERITY[c] is severity))
        for severity in Severity
    }
    if verdict == "verified" and severities - {Severity.WARNING}:
        listed = ", ".join(
            filter(None, (by_severity[Severity.HARD], by_severity[Severity.PENDING]))
        )
        yield (*here, "reasons"), f"verified allows only warnings; {listed} would not be verified"
    if verdict == "rejected" and Severity.HARD not in severities:
        yield (*here, "reasons"), "rejected needs at least one hard reason (e.g. clip_missing)"
    if verdict == "rejected" and Severity.PENDING in severities:
        yield (
            (*here, "reasons"),
            (
                f"pending reasons ({by_severity[Severity.PENDING]}) are listed only when the"
                " verdict is pending"
            ),
        )
    if verdict == "pending" and Severity.PENDING not in severities:
        yield (*here, "reasons"), "pending needs at least one pending reason (e.g. clip_awaited)"
    if verdict == "pending" and Severity.HARD in severities:
        yield (
            (*here, "reasons"),
            (
                f"a hard reason ({by_severity[Severity.HARD]}) makes the verdict rejected,"
                " not pending"
            ),
        )
    yield from _may_also(here, session, seen)


def _may_also(here: Loc, session: Session, required: set[ReasonCode]) -> Iterator[Finding]:
    """``may_also`` lists codes a random window draw may add: not one already required, none
    twice, and none the verdict could not carry (a verified class only warnings, a rejected
    one no pending code, a pending one no hard code)."""
    verdict = session.expect.verdict
    allowed = {
        "verified": {Severity.WARNING},
        "rejected": {Severity.HARD, Severity.WARNING},
        "pending": {Severity.PENDING, Severity.WARNING},
    }[verdict]
    seen: set[ReasonCode] = set()
    for number, code in enumerate(session.expect.may_also):
        where = (*here, "may_also", number)
        if code in required:
            yield where, f"{code.value!r} is already in reasons"
        elif code in seen:
            yield where, f"{code.value!r} is listed twice"
        elif SEVERITY[code] not in allowed:
            yield where, f"a {SEVERITY[code].value} reason cannot go with verdict {verdict}"
        seen.add(code)
