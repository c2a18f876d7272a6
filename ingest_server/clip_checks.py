"""Looking at what arrived: the durable queue of clip checks, and each classroom's reference
still (DESIGN.md §1 step 7: at installation the agent uploads the classroom's view).

A clip's check is queued in the database in the same transaction that records the clip (a
``ClipCheck`` row with no ``checked_at``), so a crash between storing and checking costs a
delay, never a clip left unchecked for good: ``wake()`` at start-up, on every new clip and on
the scheduler's ticks runs whatever is still pending. A clip that cannot be decoded gets its
error recorded (the verdict's ``clip_unreadable``); a failure of our own (a store hiccup) leaves
the check pending for the next wake, up to ``MAX_ATTEMPTS`` times.

A clip that does not match its own classroom's view (or whose classroom has none) is matched
to the views of the other classrooms of the same institution (at most ``MAX_OTHER_VIEWS``, by
id): one that clearly shows one of them is recorded with that classroom
(``other_classroom_id``). Against a view of its own that is the verdict's hard
``clip_other_classroom`` (a school holding two classrooms' keys cannot answer for an empty room
with the footage of a full one); without one, only the warning
``clip_resembles_other_classroom``, as rooms built to one plan look alike. So a new reference
still is matched to the other classrooms' views too before it becomes the classroom's view: one
that clearly shows another classroom is refused (the check failed, logged and audited naming
it), or a key in the wrong hands could make a neighbour's footage this room's view. Reference
views are decoded once and kept (their ORB features too), at most ``VIEW_CACHE`` classrooms,
least recently used first out; each extra view costs ~2-4 ms per such clip or still on a 2-core
machine (``view_match``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common.clock import Clock, SystemClock
from common.schemas import ClipKind
from ingest_server import audit
from ingest_server.db import SessionFactory
from ingest_server.models import Classroom, Clip, ClipCheck, Device
from ingest_server.sessions import link_clip
from ingest_server.store import EvidenceStore
from ingest_server.video_checks import (
    SanityError,
    SanityThresholds,
    check_clip,
    reference_from_image,
)
from ingest_server.view_match import View, other_view

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5
BATCH = 50
MAX_OTHER_VIEWS = 200  # other classrooms of the institution a moved clip is matched with
VIEW_CACHE = 256  # classroom views kept decoded (~0.25 MB each with their features)


def check_result(outcome: dict[str, object]) -> str:
    """What a check found, in one word for the audit log: ``unreadable``, ``failed`` (black,
    frozen, the camera turned from its reference view, or another classroom's view) or
    ``passed``."""
    if outcome.get("error"):
        return "unreadable"
    flags = ("black", "frozen", "moved", "other_classroom_id")
    if any(outcome.get(flag) for flag in flags):
        return "failed"
    return "passed"


class ClipChecker:
    """Runs the pending checks off the ingest thread (decoding video takes a while) and reports
    which sessions have new facts."""

    def __init__(
        self,
        session_factory: SessionFactory,
        store: EvidenceStore,
        on_sessions_changed: Callable[[set[str]], None],
        clock: Clock | None = None,
        *,
        others_after_s: float | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.store = store
        self.on_sessions_changed = on_sessions_changed
        self.clock = clock or SystemClock()
        # Several ingest workers: each checks the clips it stored itself (``clip_stored``) and
        # those of the others only once they have waited this long (their storer died, or its
        # check failed): a clip is decoded once, not once per worker. None: every pending one.
        self.others_after_s = others_after_s
        self._own: set[int] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-check")
        self._views: OrderedDict[str, tuple[str, View]] = OrderedDict()
        self._lock = threading.Lock()
        self._queued: Future[None] | None = None

    def clip_stored(self, clip_id: int) -> Future[None]:
        """Called by the ingest processor once a clip and its pending check are committed."""
        with self._lock:
            self._own.add(clip_id)
        return self.wake()

    def wake(self) -> Future[None]:
        """Run every pending check (at most one run queued at a time)."""
        with self._lock:
            if self._queued is None or self._queued.running() or self._queued.done():
                self._queued = self._executor.submit(self._run_pending)
            return self._queued

    def _run_pending(self) -> None:
        tried: set[int] = set()  # one try per clip per run: a failure waits for the next wake
        try:
            while True:
                with self.session_factory() as db:
                    query = select(ClipCheck.clip_id).where(
                        ClipCheck.checked_at.is_(None), ClipCheck.attempts < MAX_ATTEMPTS
                    )
                    if self.others_after_s is not None:
                        with self._lock:
                            own = list(self._own)
                        adopt_before = self.clock.now() - timedelta(seconds=self.others_after_s)
                        query = query.join(Clip, Clip.id == ClipCheck.clip_id).where(
                            or_(ClipCheck.clip_id.in_(own), Clip.stored_at <= adopt_before)
                        )
                    pending = db.scalars(query.order_by(ClipCheck.clip_id)).all()
                batch = [clip_id for clip_id in pending if clip_id not in tried][:BATCH]
                if not batch:
                    return
                for clip_id in batch:
                    tried.add(clip_id)
                    self._safely(clip_id)
        except Exception:  # a database blip: the next wake tries again
            log.exception("clip checks stopped; the next wake resumes them")

    def _safely(self, clip_id: int) -> None:
        try:
            self._check(clip_id)
            with self._lock:
                self._own.discard(clip_id)
        except Exception:  # our own trouble: count the attempt, leave the check pending
            log.exception("checking clip %s failed; it stays pending", clip_id)
            with self.session_factory.begin() as db:
                check = db.get(ClipCheck, clip_id)
                if check is not None:
                    check.attempts += 1

    def _view(self, classroom_id: str, reference_upload_id: str) -> View | None:
        """The classroom's reference view: its newest reference still, from a camera installed
        there (another room's camera cannot set it), decoded once."""
        cached = self._views.get(classroom_id)
        if cached and cached[0] == reference_upload_id:
            self._views.move_to_end(classroom_id)
            return cached[1]
        with self.session_factory() as db:
            ref = db.scalar(
                select(Clip).where(
                    Clip.upload_id == reference_upload_id,
                    Clip.kind == ClipKind.REFERENCE.value,
                    Clip.device_id.in_(
                        select(Device.device_id).where(Device.classroom_id == classroom_id)
                    ),
                )
            )
        if ref is None:
            return None
        view = View(reference_from_image(self.store.path_of(ref.path).read_bytes()))
        self._views[classroom_id] = (reference_upload_id, view)
        self._views.move_to_end(classroom_id)
        while len(self._views) > VIEW_CACHE:
            self._views.popitem(last=False)
        return view

    def _reference(self, classroom: Classroom) -> View | None:
        if not classroom.reference_upload_id:
            return None
        return self._view(classroom.id, classroom.reference_upload_id)

    def _other_views(self, classroom: Classroom) -> dict[str, View]:
        """The reference views of the institution's other classrooms, by classroom id."""
        with self.session_factory() as db:
            rows = db.execute(
                select(Classroom.id, Classroom.reference_upload_id)
                .where(
                    Classroom.institution_id == classroom.institution_id,
                    Classroom.id != classroom.id,
                    Classroom.reference_upload_id.is_not(None),
                )
                .order_by(Classroom.id)
                .limit(MAX_OTHER_VIEWS)
            ).all()
        views = {}
        for classroom_id, upload_id in rows:
            view = self._view(classroom_id, upload_id) if upload_id else None
            if view is not None:
                views[classroom_id] = view
        return views

    def _check(self, clip_id: int) -> None:
        with self.session_factory.begin() as db:
            clip = db.get(Clip, clip_id)
            check = db.get(ClipCheck, clip_id)
            if clip is None or check is None or check.checked_at is not None:
                return
            device = db.get(Device, clip.device_id)
            classroom = (
                db.get(Classroom, device.classroom_id) if device and device.classroom_id else None
            )
            if clip.kind == ClipKind.REFERENCE.value and classroom is not None:
                reference_still = (clip.upload_id, self.store.path_of(clip.path))
                db.expunge(classroom)
            elif clip.kind != ClipKind.CLIP.value:
                check.checked_at = self.clock.now()
                return
            else:
                reference_still = None
                session_id = link_clip(db, clip)
                path = self.store.path_of(clip.path)
                db.expunge_all()
        if reference_still is not None:
            assert classroom is not None
            self._check_reference(clip_id, classroom, *reference_still)
            return
        if not path.is_file():
            # Our store's trouble, not the clip's: it stays pending.
            raise FileNotFoundError(f"stored clip {path} is not there")
        reference = self._reference(classroom) if classroom else None
        compared: dict[str, object] = {}
        try:
            report = check_clip(
                path,
                reference=reference,
                other_views=(lambda: self._other_views(classroom)) if classroom else None,
            )
        except SanityError as exc:
            outcome: dict[str, object] = {"error": exc.why[:500], "decoded_frames": 0}
        else:
            compared = {"other_views_compared": report.other_views_compared}
            outcome = {
                "black": report.black,
                "frozen": report.frozen,
                "moved": report.moved,
                "mean_luma": report.mean_luma,
                "frozen_fraction": report.frozen_fraction,
                "reference_similarity": report.reference_similarity,
                "other_classroom_id": report.other_view,
                "other_view_similarity": report.other_view_similarity,
                "decoded_frames": report.decoded_frames,
                "decoded_duration_s": report.decoded_duration_s,
                "frame_rate": report.frame_rate,
                "error": None,
            }
        with self.session_factory.begin() as db:
            # Locked: another ingest worker may have checked the same clip meanwhile.
            row = db.get(ClipCheck, clip_id, with_for_update=True)
            if row is None or row.checked_at is not None:
                return
            self._store_outcome(db, row, outcome, compared)
        if session_id:
            self.on_sessions_changed({session_id})

    def _check_reference(
        self, clip_id: int, classroom: Classroom, upload_id: str, path: Path
    ) -> None:
        """A new reference still becomes the classroom's view, unless it clearly shows another
        classroom's view (``other_view``'s thresholds, as for clips): a device key in the wrong
        hands could otherwise send a neighbour's still, make the neighbour's footage this
        room's "view", and answer every window with it. A refused still leaves the view as it
        was (none, if it was the first); the check is recorded failed, logged and audited with
        the classroom it shows. An undecodable still is refused as unreadable."""
        if not path.is_file():
            raise FileNotFoundError(f"stored reference still {path} is not there")
        limits = SanityThresholds()
        found = None
        try:
            still = View(reference_from_image(path.read_bytes()), limits.banner_fraction)
        except SanityError as exc:
            outcome: dict[str, object] = {"error": exc.why[:500]}
        else:
            found = other_view(
                [still],
                self._other_views(classroom),
                screen=limits.moved_similarity,
                accept=limits.other_view_similarity,
            )
            outcome = {
                "error": None,
                "other_classroom_id": found.key if found else None,
                "other_view_similarity": found.similarity if found else None,
            }
        adopted = check_result(outcome) == "passed"
        with self.session_factory.begin() as db:
            row = db.get(ClipCheck, clip_id, with_for_update=True)
            room = db.get(Classroom, classroom.id)
            if row is None or room is None or row.checked_at is not None:
                return
            details: dict[str, object] = {
                "kind": ClipKind.REFERENCE.value,
                "classroom_id": room.id,
                "adopted": adopted,
            }
            self._store_outcome(db, row, outcome, details)
            if adopted:
                room.reference_upload_id = upload_id
                log.info("classroom %s has a new reference view", room.id)
            elif found is not None:
                log.warning(
                    "reference still %s refused as classroom %s's view: it shows classroom %s's"
                    " (%.0f%% of its features fit that view)",
                    upload_id,
                    room.id,
                    found.key,
                    100 * found.similarity,
                )
            else:
                log.warning(
                    "reference still %s of classroom %s refused: unreadable", upload_id, room.id
                )

    def _store_outcome(
        self, db: Session, row: ClipCheck, outcome: dict[str, object], details: dict[str, object]
    ) -> None:
        """Write a check's outcome to its row and audit it with ``details``; clip and reference
        checks end the same way, so the audit log reads alike for both."""
        for name, value in outcome.items():
            setattr(row, name, value)
        row.attempts += 1
        row.checked_at = self.clock.now()
        audit.record(
            db,
            audit.AuditAction.CLIP_CHECKED,
            "clip",
            str(row.clip_id),
            "system:clip-checker",
            {"result": check_result(outcome), **outcome, **details},
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
