"""Scenario files: a replayed day of classes, as ops staff write it (docs/scenarios.md).

``simulators.scenario_load.load_scenario(path)`` reads a YAML file into a ``Scenario`` or
raises ``ScenarioError``, a list
of problems that each name the file, the line and the field (``sessions[3].expect.verdict``),
never a traceback. The models here say what each section may contain (``extra="forbid"``
everywhere, so a misspelt field is an error); ``simulators.scenario_checks`` checks what one
section says about another (references, one device per classroom, times inside sessions);
``simulators.scenario_messages`` puts pydantic's errors in words; ``simulators.scenario_yaml``
reads YAML with the line of every key and item. The behaviour models live in
``simulators.scenario_behaviours`` and are importable from here.

The helpers on ``Scenario`` answer what the replay planner (``simulators.behaviours``) asks:
when a session starts and ends in UTC, which device films a classroom, the shape of its link.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from common.geo import Datum
from common.schemas import SafeId
from ingest_server.rules.reasons import ReasonCode
from simulators import fake_modem
from simulators.plan import LinkShape
from simulators.scenario_behaviours import (
    BEHAVIOUR_MODELS,
    HHMM_PATTERN,
    Behaviour,
    CameraMoved,
    CameraUnplugged,
    ClockSkew,
    ClosingBeforeOpening,
    ClosingPhotoMissing,
    DoubleBooked,
    EndsEarly,
    ForgedClips,
    FrozenPicture,
    Honest,
    LensCovered,
    PhotoElsewhere,
    PhotoReused,
    PowerCut,
    Strict,
    ThinUplink,
    UplinkDown,
)
from simulators.scenario_yaml import ScenarioError, ScenarioProblem

__all__ = [
    "BEHAVIOUR_MODELS",
    "BUILTIN_LINKS",
    "MODEM_PROFILES",
    "Behaviour",
    "CameraMoved",
    "CameraUnplugged",
    "Classroom",
    "ClockSkew",
    "ClosingBeforeOpening",
    "ClosingPhotoMissing",
    "Device",
    "DoubleBooked",
    "EndsEarly",
    "Expect",
    "ForgedClips",
    "FrozenPicture",
    "Honest",
    "Institution",
    "Lecturer",
    "LensCovered",
    "LinkProfile",
    "Location",
    "PhotoElsewhere",
    "PhotoReused",
    "PowerCut",
    "Scenario",
    "ScenarioError",
    "ScenarioProblem",
    "SchoolClass",
    "Session",
    "ThinUplink",
    "UplinkDown",
]

Loc = tuple[str | int, ...]
B = TypeVar("B", bound=Strict)

MODEM_PROFILES: dict[str, fake_modem.FakeProfile] = {
    "quectel_ec25": fake_modem.QUECTEL_EC25,
    "simcom_sim7600": fake_modem.SIMCOM_SIM7600,
}


class Location(Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    datum: Datum = Field(default=Datum.WGS84, strict=False)


class Institution(Strict):
    id: SafeId
    name: str = Field(min_length=1)


class Classroom(Strict):
    id: SafeId
    institution: SafeId
    name: str = Field(min_length=1)
    location: Location
    radius_m: float = Field(default=100.0, gt=0, le=5000)


class LinkProfile(Strict):
    """A 4G link: ``rate_kbit`` each way (0: unlimited), ``loss_pct`` of segments lost,
    ``latency_ms`` one way."""

    rate_kbit: float = Field(default=0.0, ge=0)
    loss_pct: float = Field(default=0.0, ge=0, lt=100)
    latency_ms: float = Field(default=0.0, ge=0)

    def shape(self) -> LinkShape:
        return LinkShape(self.rate_kbit, self.loss_pct, self.latency_ms)


BUILTIN_LINKS: dict[str, LinkProfile] = {
    "lan": LinkProfile(),
    "4g": LinkProfile(rate_kbit=2000, loss_pct=0, latency_ms=60),
    "4g_thin": LinkProfile(rate_kbit=256, loss_pct=1, latency_ms=250),
}


def _link_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "name"
    return "inline" if isinstance(value, dict | LinkProfile) else None


# A profile name or an inline profile; the tags never reach error messages (``_clean_loc``).
LinkRef = Annotated[
    Annotated[str, Tag("name")] | Annotated[LinkProfile, Tag("inline")],
    Discriminator(
        _link_form,
        custom_error_type="link",
        custom_error_message="must be a link profile name (lan, 4g, 4g_thin or one of links:)"
        " or an inline {rate_kbit, loss_pct, latency_ms}",
    ),
]


class Device(Strict):
    """The one camera of ``classroom``. Every camera is simulated; ``camera`` says what it
    stands for. ``link`` names a profile (built-in or the scenario's ``links``) or is inline."""

    id: SafeId
    classroom: SafeId
    camera: Literal["synthetic", "usb", "rtsp", "csi"] = "synthetic"
    link: LinkRef = "lan"
    modem: str = "quectel_ec25"
    scene: int | None = Field(default=None, ge=0)
    clock_skew_s: float = Field(default=0.0, ge=-86400, le=86400)

    @field_validator("modem")
    @classmethod
    def _known_modem(cls, value: str) -> str:
        if value not in MODEM_PROFILES:
            raise ValueError(f"must be one of {', '.join(MODEM_PROFILES)} (got {value!r})")
        return value


class Lecturer(Strict):
    id: SafeId
    institution: SafeId
    name: str = Field(min_length=1)


class SchoolClass(Strict):
    """A training class (``classes:`` in the file; ``class`` is a Python keyword)."""

    id: SafeId
    institution: SafeId
    name: str = Field(min_length=1)


ReasonCodeText = Annotated[ReasonCode, Field(strict=False)]  # written as its value


class Expect(Strict):
    """The verdict the session must end with, the reason codes it must give, and those it
    may also give depending on which minutes the random windows checked."""

    verdict: Literal["verified", "rejected", "pending"]
    reasons: list[ReasonCodeText] = Field(default_factory=list)
    may_also: list[ReasonCodeText] = Field(default_factory=list)


# Replays run on today's clock and server: dates far off overflow datetime arithmetic
# (0001-01-01 in Asia/Shanghai is before year 1 in UTC) and mean nothing to the server.
FIRST_DATE = dt.date(2000, 1, 1)
LAST_DATE = dt.date(2100, 12, 31)
# Simulated seconds per real second: at 1e-300 a replay never ends; past 1000 the agents'
# timers fire in bursts the processes cannot keep up with.
MIN_SPEED = 0.1
MAX_SPEED = 1000.0

_ISO_WITH_OFFSET = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:?\d{2}|Z)$"
)


class Session(Strict):
    id: SafeId
    class_: SafeId = Field(alias="class")
    classroom: SafeId
    lecturer: SafeId
    # Local "HH:MM" on the scenario's date (+ ``day``), or an ISO-8601 datetime with offset.
    start: str
    day: int = Field(default=0, ge=0, le=366)
    duration_min: float = Field(gt=0, le=24 * 60)
    behaviours: list[Behaviour] = Field(default_factory=list)
    expect: Expect

    @field_validator("start", mode="before")
    @classmethod
    def _start_from_datetime(cls, value: Any) -> Any:
        # Data read by a plain YAML loader (parse_scenario) carries ISO starts as datetimes.
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            return value.isoformat()
        return value

    @field_validator("start")
    @classmethod
    def _start_format(cls, value: str) -> str:
        if re.match(HHMM_PATTERN, value):
            return value
        if _ISO_WITH_OFFSET.match(value):
            try:
                moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not a valid datetime: {exc} (got {value!r})") from None
            if not FIRST_DATE <= moment.date() <= LAST_DATE:
                raise ValueError(f"must be between {FIRST_DATE} and {LAST_DATE} (got {value!r})")
            return value
        raise ValueError(
            f"must be a local time HH:MM or an ISO-8601 datetime with offset (got {value!r})"
        )

    @model_validator(mode="after")
    def _day_with_local_start(self) -> Session:
        if self.day and not re.match(HHMM_PATTERN, self.start):
            raise PydanticCustomError(
                "day_with_iso", "day counts only for an HH:MM start; put the date in start"
            )
        return self

    def all_behaviours(self) -> tuple[Behaviour, ...]:
        """The behaviours, ``honest`` when none is listed."""
        return tuple(self.behaviours) or (Honest(),)

    def of_kind(self, kind: type[B]) -> list[B]:
        """This session's behaviours of one kind, in file order (``of_kind(UplinkDown)``)."""
        return [b for b in self.behaviours if isinstance(b, kind)]


class Scenario(Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    date: dt.date = Field(strict=False, ge=FIRST_DATE, le=LAST_DATE)
    timezone: str = "Asia/Shanghai"
    speed: float = Field(default=60.0, ge=MIN_SPEED, le=MAX_SPEED)
    server: dict[str, Any] = Field(default_factory=dict)
    links: dict[str, LinkProfile] = Field(default_factory=dict)
    institutions: list[Institution] = Field(min_length=1)
    classrooms: list[Classroom] = Field(min_length=1)
    devices: list[Device] = Field(min_length=1)
    lecturers: list[Lecturer] = Field(min_length=1)
    classes: list[SchoolClass] = Field(min_length=1)
    sessions: list[Session] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    # --- lookups ---------------------------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def session(self, session_id: str) -> Session:
        return _by_id(self.sessions, session_id, "session")

    def classroom(self, classroom_id: str) -> Classroom:
        return _by_id(self.classrooms, classroom_id, "classroom")

    def device(self, device_id: str) -> Device:
        return _by_id(self.devices, device_id, "device")

    def lecturer(self, lecturer_id: str) -> Lecturer:
        return _by_id(self.lecturers, lecturer_id, "lecturer")

    def device_of(self, classroom_id: str) -> Device:
        """The device installed in ``classroom_id`` (there is exactly one)."""
        for device in self.devices:
            if device.classroom == classroom_id:
                return device
        raise KeyError(f"no device in classroom {classroom_id!r}")

    def session_device(self, session: Session) -> Device:
        return self.device_of(session.classroom)

    # --- time ------------------------------------------------------------------------------

    def session_start(self, session: Session) -> dt.datetime:
        """The scheduled start, aware UTC."""
        if re.match(HHMM_PATTERN, session.start):
            hour, minute = map(int, session.start.split(":"))
            day = self.date + dt.timedelta(days=session.day)
            local = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=self.zone)
            return local.astimezone(dt.UTC)
        return dt.datetime.fromisoformat(session.start.replace("Z", "+00:00")).astimezone(dt.UTC)

    def session_end(self, session: Session) -> dt.datetime:
        """The scheduled end (start + duration), aware UTC."""
        return self.session_start(session) + dt.timedelta(minutes=session.duration_min)

    def minutes_into(self, session: Session, minutes: float) -> dt.datetime:
        """``minutes`` after the session's scheduled start, aware UTC."""
        return self.session_start(session) + dt.timedelta(minutes=minutes)

    def next_local_time(self, after: dt.datetime, hhmm: str) -> dt.datetime:
        """The first moment strictly after ``after`` when the local clock shows ``hhmm``
        (``uplink_down.until``), aware UTC."""
        hour, minute = map(int, hhmm.split(":"))
        local = after.astimezone(self.zone)
        candidate = dt.datetime.combine(local.date(), dt.time(hour, minute), tzinfo=self.zone)
        while candidate <= local:
            candidate = dt.datetime.combine(
                candidate.date() + dt.timedelta(days=1), dt.time(hour, minute), tzinfo=self.zone
            )
        return candidate.astimezone(dt.UTC)

    # --- devices ---------------------------------------------------------------------------

    def link_profile(self, device: Device) -> LinkProfile:
        """The device's link: inline, the scenario's ``links`` or a built-in profile."""
        if isinstance(device.link, LinkProfile):
            return device.link
        return {**BUILTIN_LINKS, **self.links}[device.link]

    def link_shape(self, device: Device) -> LinkShape:
        return self.link_profile(device).shape()

    def scene_of(self, device: Device) -> int:
        """The classroom picture the device films: its ``scene``, else one per classroom
        (1 for the first classroom of the file, 2 for the second...)."""
        if device.scene is not None:
            return device.scene
        return 1 + [c.id for c in self.classrooms].index(device.classroom)

    def unused_scene(self) -> int:
        """A scene no device films (where a moved camera looks, unless told)."""
        return 1 + max(self.scene_of(d) for d in self.devices)

    def server_env(self) -> dict[str, str]:
        """``server:`` as ``CLASSCAM_*`` environment variables for the replay's server."""
        return {f"CLASSCAM_{key.upper()}": _env_value(value) for key, value in self.server.items()}


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


T = TypeVar("T", Institution, Classroom, Device, Lecturer, SchoolClass, Session)


def _by_id(items: Sequence[T], wanted: str, what: str) -> T:
    for item in items:
        if item.id == wanted:
            return item
    raise KeyError(f"no {what} {wanted!r}")
