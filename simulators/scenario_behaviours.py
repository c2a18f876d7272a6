"""What can happen during a scenario's session: one small pydantic model per behaviour.

In a scenario file each behaviour is a bare name (``honest``, ``closing_photo_missing``) or a
one-key mapping ``name: {params}``; ``behaviour_item`` turns both into ``{"name": ..., **params}``
so pydantic picks the model by its ``name`` (a discriminated union). Errors then carry the
behaviour's name in their location (``behaviours.1.photo_elsewhere.metres``), which is also its
path in the YAML, so the loader can point at the line.

Times are minutes after the session's scheduled start; ``for_min`` omitted means "to the end".
Which real mechanism each behaviour drives is ``simulators.behaviours``' business
(docs/scenarios.md lists them); here only what a scenario may say.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from common.geo import Datum
from common.schemas import SafeId

HHMM_PATTERN = r"^([01]?\d|2[0-3]):[0-5]\d$"  # 8:30 or 08:30
PhotoKind = Literal["opening", "closing"]


class Strict(BaseModel):
    """Frozen, and a misspelt field is an error rather than silently ignored. Strict types:
    ``yes``, ``true`` or ``'35'`` is not a number and a set is not a list (pydantic would read
    ``speed: yes`` as 1); enums and dates, written as text, opt out with ``strict=False``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class Honest(Strict):
    """Everything as it should be (the default when a session lists no behaviour)."""

    name: Literal["honest"] = "honest"


class EndsEarly(Strict):
    """The lecturer's app closes the session ``after_min`` minutes after its start."""

    name: Literal["ends_early"] = "ends_early"
    after_min: float = Field(gt=0)


class CameraUnplugged(Strict):
    """The camera is gone (every read fails) from ``at_min`` for ``for_min`` minutes."""

    name: Literal["camera_unplugged"] = "camera_unplugged"
    at_min: float = Field(ge=0)
    for_min: float | None = Field(default=None, gt=0)


class UplinkDown(Strict):
    """The 4G link is down from ``at_min``, for ``for_min`` minutes or ``until`` the next time
    that local clock time comes (``"07:30"``: the next morning); neither: to the session's end."""

    name: Literal["uplink_down"] = "uplink_down"
    at_min: float = Field(default=0, ge=0)
    for_min: float | None = Field(default=None, gt=0)
    until: str | None = Field(default=None, pattern=HHMM_PATTERN)

    @model_validator(mode="after")
    def _one_end(self) -> UplinkDown:
        if self.for_min is not None and self.until is not None:
            raise PydanticCustomError("one_end", "give for_min or until, not both")
        return self


class LensCovered(Strict):
    """The lens is covered: a black picture."""

    name: Literal["lens_covered"] = "lens_covered"
    at_min: float = Field(default=0, ge=0)
    for_min: float | None = Field(default=None, gt=0)


class FrozenPicture(Strict):
    """A printed photo is held in front of the lens: a still picture."""

    name: Literal["frozen_picture"] = "frozen_picture"
    at_min: float = Field(default=0, ge=0)
    for_min: float | None = Field(default=None, gt=0)


class CameraMoved(Strict):
    """The camera films another view (``scene``; default: one no classroom uses) than its
    reference still."""

    name: Literal["camera_moved"] = "camera_moved"
    at_min: float = Field(default=0, ge=0)
    for_min: float | None = Field(default=None, gt=0)
    scene: int | None = Field(default=None, ge=0)


class PhotoElsewhere(Strict):
    """The phone takes the ``photo`` ``metres`` away from the classroom (towards
    ``bearing_deg``, 90 = east) and reports its position in ``datum``: wgs84 in EXIF GPS (a
    phone camera); gcj02 or bd09 in the app's form fields, without EXIF GPS (a map SDK)."""

    name: Literal["photo_elsewhere"] = "photo_elsewhere"
    photo: PhotoKind
    metres: float = Field(ge=0, le=100_000)
    bearing_deg: float = Field(default=90.0, ge=0, lt=360)
    datum: Datum = Field(default=Datum.WGS84, strict=False)


class PhotoReused(Strict):
    """The ``photo`` is the one uploaded for ``from_session``, resized by ``scale`` and
    re-encoded at JPEG ``quality``; its EXIF time and place are rewritten to fit this session."""

    name: Literal["photo_reused"] = "photo_reused"
    photo: PhotoKind
    from_session: SafeId
    scale: float = Field(default=0.5, gt=0, le=2)
    quality: int = Field(default=70, ge=1, le=100)


class ClosingPhotoMissing(Strict):
    """No closing photo is ever uploaded."""

    name: Literal["closing_photo_missing"] = "closing_photo_missing"


class ClosingBeforeOpening(Strict):
    """The closing photo's time is ``minutes`` before the opening photo's."""

    name: Literal["closing_before_opening"] = "closing_before_opening"
    minutes: float = Field(default=10.0, gt=0)


class DoubleBooked(Strict):
    """The lecturer, booked back to back in another classroom, opens this session early
    through the app while ``with_session`` is still running."""

    name: Literal["double_booked"] = "double_booked"
    with_session: SafeId


class PowerCut(Strict):
    """The device loses power at ``at_min``: its agent is SIGKILLed, and started again
    ``for_s`` simulated seconds later."""

    name: Literal["power_cut"] = "power_cut"
    at_min: float = Field(ge=0)
    for_s: float = Field(gt=0)


class ThinUplink(Strict):
    """The link is this thin from the session's start: ``rate_kbit`` each way, ``loss_pct``
    of segments lost, ``latency_ms`` one way."""

    name: Literal["thin_uplink"] = "thin_uplink"
    rate_kbit: float = Field(gt=0)
    loss_pct: float = Field(default=0.0, ge=0, lt=100)
    latency_ms: float = Field(default=0.0, ge=0)


class ClockSkew(Strict):
    """The device's clock is ``seconds`` ahead of true time (negative: behind)."""

    name: Literal["clock_skew"] = "clock_skew"
    seconds: float = Field(ge=-86400, le=86400)


class ForgedClips(Strict):
    """The camera is in an adversary's hands and answers the server's cuts with forged,
    validly signed clips: a recording of another day, or ``classroom``'s live footage."""

    name: Literal["forged_clips"] = "forged_clips"
    source: Literal["another_day", "another_classroom"]
    classroom: SafeId | None = None

    @model_validator(mode="after")
    def _classroom_when_needed(self) -> ForgedClips:
        if self.source == "another_classroom" and self.classroom is None:
            raise PydanticCustomError(
                "classroom_needed", "source another_classroom needs classroom: <classroom id>"
            )
        if self.source == "another_day" and self.classroom is not None:
            raise PydanticCustomError(
                "classroom_unused", "classroom is only for source another_classroom"
            )
        return self


BEHAVIOUR_MODELS: dict[str, type[Strict]] = {
    model.model_fields["name"].default: model
    for model in (
        Honest,
        EndsEarly,
        CameraUnplugged,
        UplinkDown,
        LensCovered,
        FrozenPicture,
        CameraMoved,
        PhotoElsewhere,
        PhotoReused,
        ClosingPhotoMissing,
        ClosingBeforeOpening,
        DoubleBooked,
        PowerCut,
        ThinUplink,
        ClockSkew,
        ForgedClips,
    )
}


def behaviour_item(raw: Any) -> Any:
    """``"honest"`` → ``{"name": "honest"}``; ``{"ends_early": {"after_min": 40}}`` →
    ``{"name": "ends_early", "after_min": 40}`` (``ends_early:`` with nothing: no params)."""
    if isinstance(raw, str):
        return {"name": raw}
    if not isinstance(raw, dict):
        raise _shape_error(f"a behaviour is a name, or name: {{params}} (got {raw!r})")
    if len(raw) != 1:
        keys = ", ".join(map(str, raw))
        raise _shape_error(f"a behaviour is a name, or one name with its parameters (got {keys})")
    ((name, params),) = raw.items()
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _shape_error(
            f"the parameters of {name} are a mapping like {{at_min: 10}} (got {params!r})"
        )
    if "name" in params:
        raise _shape_error("name is not a behaviour parameter")
    return {"name": name, **params}


def _shape_error(message: str) -> PydanticCustomError:
    # The message is final: no context, so its braces are not read as placeholders.
    return PydanticCustomError("behaviour_shape", message)


Behaviour = Annotated[
    Honest
    | EndsEarly
    | CameraUnplugged
    | UplinkDown
    | LensCovered
    | FrozenPicture
    | CameraMoved
    | PhotoElsewhere
    | PhotoReused
    | ClosingPhotoMissing
    | ClosingBeforeOpening
    | DoubleBooked
    | PowerCut
    | ThinUplink
    | ClockSkew
    | ForgedClips,
    Field(discriminator="name"),
    BeforeValidator(behaviour_item),
]
