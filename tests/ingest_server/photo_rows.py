"""Verdict table rows for the photo rules (pair, reuse, typed-in facts, double booking), on
both sides of each threshold; ``test_verdict.py`` adds them to its table."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from ingest_server.rules.photo_match import (
    DoubleBooking,
    PhotoKind,
    PictureDistance,
    PictureUse,
    Reuse,
    photo_match,
)
from ingest_server.rules.reasons import ReasonCode as C
from ingest_server.rules.session import ClassroomFacts
from ingest_server.rules.verdict import PhotoEvidence, SessionEvidence

OP, CL = PhotoKind.OPENING, PhotoKind.CLOSING
S = timedelta(seconds=1)
SIGNATURE = "p2:" + "0" * 16 + ":" + "1" * 64 + ":" + "1" * 64 * 49


def _photos(
    base: SessionEvidence, room: ClassroomFacts, tolerance_s: float = 900.0, **per_kind: dict
) -> SessionEvidence:
    out = []
    for kind in (OP, CL):
        old = next(p for p in base.photos if p.photo.kind == kind)
        facts = replace(old.photo, **per_kind.get(kind.value, {}))
        match = photo_match(facts, base.session, room, tolerance_s=tolerance_s)
        out.append(PhotoEvidence(facts, match))
    return replace(base, photos=tuple(out))


def photo_trust_rows(
    base: SessionEvidence, room: ClassroomFacts, later: datetime
) -> list[tuple[str, SessionEvidence, datetime, str, list[C]]]:
    opening = next(p for p in base.photos if p.photo.kind == OP).photo
    start, end = base.session.start, base.session.end
    typed = {"time_source": "app", "place_source": "app"}
    reused = replace(
        base,
        photos=tuple(
            replace(
                p,
                reused_from="s-0",
                reuse=Reuse(
                    PictureUse("s-0", "7", "f" * 64, SIGNATURE, start - timedelta(days=1)),
                    PictureDistance(12, 42),
                ),
            )
            if p.photo.kind == OP
            else p
            for p in base.photos
        ),
    )
    return [
        (
            "same bytes as opening and closing photo",
            _photos(base, room, opening={"sha256": "a" * 64}, closing={"sha256": "a" * 64}),
            later,
            "rejected",
            [C.PHOTO_SAME_PICTURE],
        ),
        (
            "same picture (signature) as opening and closing photo",
            _photos(
                base,
                room,
                opening={"sha256": "a" * 64, "signature": SIGNATURE},
                closing={"sha256": "b" * 64, "signature": SIGNATURE},
            ),
            later,
            "rejected",
            [C.PHOTO_SAME_PICTURE],
        ),
        (
            "different pictures as opening and closing photo",
            _photos(base, room, opening={"sha256": "a" * 64}, closing={"sha256": "b" * 64}),
            later,
            "verified",
            [],
        ),
        (
            # Each photo fits its own end of a class within a 1 h tolerance; only the pair
            # shows the closing photo was taken first.
            "closing photo 1 s before the opening photo",
            _photos(
                base,
                room,
                3600.0,
                opening={"taken_at": start + timedelta(minutes=50)},
                closing={"taken_at": start + timedelta(minutes=50) - S},
            ),
            later,
            "rejected",
            [C.PHOTO_ORDER_INVALID],
        ),
        (
            "closing photo 1 s after the opening photo",
            _photos(
                base,
                room,
                3600.0,
                opening={"taken_at": start + timedelta(minutes=50)},
                closing={"taken_at": start + timedelta(minutes=50) + S},
            ),
            later,
            "verified",
            [],
        ),
        (
            "photo reused from an earlier session, with its evidence",
            reused,
            later,
            "rejected",
            [C.PHOTO_REUSED],
        ),
        (
            "app-typed time and place, uploaded 10 min after: accepted",
            _photos(base, room, opening={**typed, "received_at": opening.taken_at + 600 * S}),
            later,
            "verified",
            [],
        ),
        (
            "app-typed time and place, uploaded 10 min 1 s after: unverified",
            _photos(base, room, opening={**typed, "received_at": opening.taken_at + 601 * S}),
            later,
            "verified",
            [C.PHOTO_APP_TIME_UNVERIFIED, C.PHOTO_APP_PLACE_UNVERIFIED],
        ),
        (
            "app-typed place only, uploaded a day later",
            _photos(
                base,
                room,
                closing={"place_source": "app", "received_at": end + timedelta(days=1)},
            ),
            later,
            "verified",
            [C.PHOTO_APP_PLACE_UNVERIFIED],
        ),
        (
            "lecturer in another classroom at once",
            replace(
                base,
                double_bookings=(DoubleBooking("s-9", "room-9", "photos", start, 20_000.0, 60.0),),
            ),
            later,
            "rejected",
            [C.LECTURER_DOUBLE_BOOKED],
        ),
    ]
