"""What a session's photos say (DESIGN.md §1.7): the reasons of the best opening and closing
photo, of the two against each other, and of the lecturer being elsewhere at once. Pure, over the
facts ``rules.photo_match`` computes; ``rules.verdict.judge`` calls ``photo_reasons``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from ingest_server.rules.photo_match import (
    DoubleBooking,
    PhotoFacts,
    PhotoKind,
    PhotoMatch,
    Reuse,
    photo_badness,
    photo_pair,
    photo_reference_time,
)
from ingest_server.rules.reasons import Reason, ReasonCode, ceil1, floor1, iso_utc
from ingest_server.rules.session import SessionFacts


@dataclass(frozen=True, slots=True)
class PhotoEvidence:
    """A photo offered for the session, how it matches, and the session it is a copy of."""

    photo: PhotoFacts
    match: PhotoMatch
    reused_from: str | None = None
    reuse: Reuse | None = None  # the earlier use, with when it arrived and how close it is


def _best_photo(candidates: list[PhotoEvidence]) -> PhotoEvidence:
    return min(
        candidates,
        key=lambda p: (p.reused_from is not None, photo_badness(p.match), p.photo.photo_id),
    )


def _kind_reasons(
    session: SessionFacts,
    photos: tuple[PhotoEvidence, ...],
    kind: PhotoKind,
    now: datetime,
    photo_grace_s: float,
) -> list[Reason]:
    candidates = [p for p in photos if p.photo.kind == kind]
    if not candidates:
        deadline = session.end + timedelta(seconds=photo_grace_s)
        code = ReasonCode.PHOTO_MISSING if now >= deadline else ReasonCode.PHOTO_AWAITED
        return [Reason(code, {"kind": str(kind), "deadline_at": iso_utc(deadline)})]
    best = _best_photo(candidates)
    match, reasons = best.match, []
    if not match.lecturer_matches:
        reasons.append(Reason(ReasonCode.PHOTO_WRONG_LECTURER, {"kind": str(kind)}))
    if not match.in_time:
        params: dict[str, str | int | float] = {
            "kind": str(kind),
            "taken_at": iso_utc(best.photo.taken_at),
            "reference_at": iso_utc(photo_reference_time(kind, session)),
            "delta_min": ceil1(abs(match.time_delta_s) / 60),
            "tolerance_min": match.tolerance_s / 60,
        }
        reasons.append(Reason(ReasonCode.PHOTO_TIME_MISMATCH, params))
    if match.distance_m is None:
        reasons.append(Reason(ReasonCode.PHOTO_LOCATION_MISSING, {"kind": str(kind)}))
    elif not match.in_range:
        params = {
            "kind": str(kind),
            "distance_m": math.ceil(match.distance_m),
            "radius_m": match.radius_m,
        }
        reasons.append(Reason(ReasonCode.PHOTO_OUT_OF_RANGE, params))
    if best.reused_from is not None:
        params = {"kind": str(kind), "other_session": best.reused_from}
        if best.reuse is not None:
            params["other_photo"] = best.reuse.first.photo_id
            params["other_received_at"] = iso_utc(best.reuse.first.received_at)
            params["distance_bits"] = best.reuse.distance.bits
            params["max_bits"] = best.reuse.distance.max_bits
        if best.photo.received_at is not None:
            params["received_at"] = iso_utc(best.photo.received_at)
        reasons.append(Reason(ReasonCode.PHOTO_REUSED, params))
    reasons += _app_field_reasons(best, kind)
    return reasons


def _app_field_reasons(best: PhotoEvidence, kind: PhotoKind) -> list[Reason]:
    """Warnings for time/place typed into the app that the upload's timing does not vouch for."""
    match, photo = best.match, best.photo
    if match.app_time_accepted is not False and match.app_place_accepted is not False:
        return []
    params: dict[str, str | int | float] = {
        "kind": str(kind),
        "taken_at": iso_utc(photo.taken_at),
        "received_at": iso_utc(photo.received_at) if photo.received_at else "",
        "delay_min": ceil1(abs(match.upload_delay_s or 0.0) / 60),
        "window_min": match.app_upload_window_s / 60,
    }
    if photo.received_at is None:
        params.pop("received_at")
    out = []
    if match.app_time_accepted is False:
        out.append(Reason(ReasonCode.PHOTO_APP_TIME_UNVERIFIED, params))
    if match.app_place_accepted is False:
        out.append(Reason(ReasonCode.PHOTO_APP_PLACE_UNVERIFIED, params))
    return out


def _pair_reasons(session: SessionFacts, photos: tuple[PhotoEvidence, ...]) -> list[Reason]:
    """The best opening and closing photos against each other: one picture, or out of order."""
    openings = [p for p in photos if p.photo.kind == PhotoKind.OPENING]
    closings = [p for p in photos if p.photo.kind == PhotoKind.CLOSING]
    if not openings or not closings:
        return []
    opening, closing = _best_photo(openings), _best_photo(closings)
    pair = photo_pair(opening.photo, closing.photo, session, tolerance_s=opening.match.tolerance_s)
    reasons = []
    if pair.same is not None:
        params: dict[str, str | int | float] = {
            "opening_photo": opening.photo.photo_id,
            "closing_photo": closing.photo.photo_id,
            "distance_bits": pair.same.bits,
            "max_bits": pair.same.max_bits,
        }
        reasons.append(Reason(ReasonCode.PHOTO_SAME_PICTURE, params))
    # A photo out of its time is said already (photo_time_mismatch); the pair adds the
    # closing photo taken first, which each photo alone can hide in a short class.
    both_in_time = opening.match.in_time and closing.match.in_time
    if not pair.order_ok and (both_in_time or pair.gap_s <= 0):
        params = {
            "opening_at": iso_utc(opening.photo.taken_at),
            "closing_at": iso_utc(closing.photo.taken_at),
            "gap_min": floor1(pair.gap_s / 60),
            "expected_min": floor1(pair.expected_s / 60),
            "tolerance_min": 2 * pair.tolerance_s / 60,
        }
        reasons.append(Reason(ReasonCode.PHOTO_ORDER_INVALID, params))
    return reasons


def _double_booking_reasons(double_bookings: tuple[DoubleBooking, ...]) -> list[Reason]:
    return [
        Reason(
            ReasonCode.LECTURER_DOUBLE_BOOKED,
            {
                "other_session": found.other_session,
                "other_classroom": found.other_classroom,
                "basis": found.basis,
                "conflict_at": iso_utc(found.at),
                "distance_m": math.ceil(found.distance_m),
                "seconds_apart": round(found.seconds, 1),
            },
        )
        for found in double_bookings
    ]


def photo_reasons(
    session: SessionFacts,
    photos: tuple[PhotoEvidence, ...],
    double_bookings: tuple[DoubleBooking, ...],
    now: datetime,
    photo_grace_s: float,
) -> list[Reason]:
    """Every photo reason of a session: each kind judged by its best photo (a photo is missing
    ``photo_grace_s`` after the session's end), the pair, and double bookings."""
    reasons: list[Reason] = []
    for kind in (PhotoKind.OPENING, PhotoKind.CLOSING):
        reasons += _kind_reasons(session, photos, kind, now, photo_grace_s)
    reasons += _pair_reasons(session, photos)
    reasons += _double_booking_reasons(double_bookings)
    return reasons
