"""What a scenario replay does, as plain data: built from a scenario by
``simulators.behaviours.plan_replay`` (pure), carried out by ``simulators.replay`` on real parts.

Every time is simulated time (aware UTC) on the replay's shared clock (``simulators.sim_clock``).
Nothing here talks to a broker, a server or a process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

CameraTrouble = Literal["covered", "frozen", "moved", "unplugged"]
ActionKind = Literal[
    "link_down",  # the device's 4G link drops (every connection cut, new ones refused)
    "link_up",  # coverage is back
    "link_shape",  # the link becomes ``shape`` (rate, loss, latency)
    "power_off",  # the device loses power: its agent process is SIGKILLed (or its forger cut off)
    "power_on",  # power is back: the agent process starts again on the same state
    "open_session",  # the lecturer's app opens ``session_id`` (API, lecturer token)
    "close_session",  # the lecturer's app closes ``session_id`` (API, lecturer token)
]
PhotoKind = Literal["opening", "closing"]
ForgerySource = Literal["another_day", "another_classroom"]


@dataclass(frozen=True, slots=True)
class CameraPeriod:
    """From ``start`` to ``end`` (None: for good) the camera has ``trouble``; ``scene_seed``
    is what a ``moved`` camera now films."""

    start: datetime
    end: datetime | None
    trouble: CameraTrouble
    scene_seed: int | None = None


@dataclass(frozen=True, slots=True)
class CameraPlan:
    """The picture a device's synthetic camera gives over the replay: a live classroom
    (``scene_seed``, the same scene its reference still shows) except during ``periods``."""

    scene_seed: int
    width: int = 320
    height: int = 240
    fps: float = 2.0
    periods: tuple[CameraPeriod, ...] = ()

    def trouble_at(self, at: datetime) -> CameraPeriod | None:
        """The period in force at ``at``, if any (the first listed wins)."""
        for period in self.periods:
            if period.start <= at and (period.end is None or at < period.end):
                return period
        return None

    def to_json(self) -> str:
        return json.dumps(
            {
                "scene_seed": self.scene_seed,
                "width": self.width,
                "height": self.height,
                "fps": self.fps,
                "periods": [
                    {
                        "start": p.start.isoformat(),
                        "end": p.end.isoformat() if p.end else None,
                        "trouble": p.trouble,
                        "scene_seed": p.scene_seed,
                    }
                    for p in self.periods
                ],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> CameraPlan:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            scene_seed=int(raw["scene_seed"]),
            width=int(raw["width"]),
            height=int(raw["height"]),
            fps=float(raw["fps"]),
            periods=tuple(
                CameraPeriod(
                    start=datetime.fromisoformat(p["start"]),
                    end=datetime.fromisoformat(p["end"]) if p["end"] else None,
                    trouble=p["trouble"],
                    scene_seed=p.get("scene_seed"),
                )
                for p in raw["periods"]
            ),
        )


@dataclass(frozen=True, slots=True)
class LinkShape:
    """A 4G link: ``rate_kbit`` each way (0: unlimited), ``loss_pct`` of segments lost and
    re-sent after a retransmission timeout, ``latency_ms`` one way."""

    rate_kbit: float = 0.0
    loss_pct: float = 0.0
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ForgerPlan:
    """The device is in an adversary's hands: instead of the agent, ``simulators.forger``
    connects with the device's credentials and key, reports its sessions as a camera would and
    answers every cut with a forged clip: a genuine recording of another day
    (``another_day``), or the live footage of ``other_device``'s classroom
    (``another_classroom``)."""

    source: ForgerySource
    other_device: str | None = None


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device_id: str
    classroom_id: str
    camera: CameraPlan
    link: LinkShape = LinkShape()
    clock_skew_s: float = 0.0  # the device's clock is this far ahead of true time
    modem: str = "quectel_ec25"  # a profile in simulators.fake_modem
    forger: ForgerPlan | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """Something the replay does at ``at``: to a device's link or power, or through the
    lecturer's app to a session."""

    at: datetime
    kind: ActionKind
    device_id: str | None = None
    session_id: str | None = None
    shape: LinkShape | None = None


@dataclass(frozen=True, slots=True)
class PhotoUpload:
    """The lecturer's phone uploads ``jpeg`` for ``session_id`` at ``at`` (simulated time),
    with the app's form fields ``fields`` (``taken_at``, ``lat``, ``lon``, ``datum``)."""

    at: datetime
    session_id: str
    lecturer_id: str
    kind: PhotoKind
    jpeg: bytes = field(repr=False)
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Expected:
    """The verdict a session must end with, and the set of its reason codes (hard and
    warnings; pending reasons only when the verdict is ``pending``)."""

    verdict: Literal["verified", "rejected", "pending"]
    reasons: frozenset[str]
    # Codes that may also appear, depending on which minutes the server's random windows
    # checked (a class cut short shows in a clip only when a window falls after the cut).
    may_also: frozenset[str] = frozenset()

    def matches(self, verdict: str, reasons: frozenset[str] | set[str]) -> bool:
        """Whether an actual verdict and its reason codes are what was expected: the verdict
        equal, every expected code present, nothing beyond ``reasons`` and ``may_also``."""
        return (
            verdict == self.verdict
            and self.reasons <= set(reasons)
            and set(reasons) <= self.reasons | self.may_also
        )


@dataclass(frozen=True, slots=True)
class SessionPlan:
    session_id: str
    classroom_id: str
    device_id: str
    lecturer_id: str
    start: datetime
    end: datetime  # as scheduled
    behaviours: tuple[str, ...]  # the scenario's behaviour names, for the report
    expected: Expected


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """Everything one replay does. ``setup`` is the ``classcam-server import`` document
    without devices' public keys (the replay provisions the devices, then fills them in);
    ``lecturer_tokens`` are the app tokens ``setup`` gives each lecturer."""

    name: str
    clock_start: datetime  # the shared clock starts here
    speed: float
    setup: dict[str, Any]
    lecturer_tokens: dict[str, str]
    server_settings: dict[str, str]  # CLASSCAM_* overrides, e.g. {"CLASSCAM_CLIP_GRACE_S": "86400"}
    devices: tuple[DevicePlan, ...]
    sessions: tuple[SessionPlan, ...]
    actions: tuple[Action, ...]  # sorted by ``at``
    photos: tuple[PhotoUpload, ...]  # sorted by ``at``
