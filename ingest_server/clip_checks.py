"""Looking at what arrived: video sanity on every stored clip, and each classroom's reference
still (DESIGN.md §1 step 7: at installation the agent uploads the classroom's view)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from sqlalchemy import select

from common.clock import utc_now
from common.schemas import ClipKind
from ingest_server.db import SessionFactory
from ingest_server.models import Classroom, Clip, ClipCheck, Device
from ingest_server.sessions import link_clip
from ingest_server.store import EvidenceStore
from ingest_server.video_checks import SanityError, check_clip, reference_from_image

log = logging.getLogger(__name__)


class ClipChecker:
    """Runs sanity checks off the ingest thread (decoding video takes a while) and reports
    which sessions have new facts."""

    def __init__(
        self,
        session_factory: SessionFactory,
        store: EvidenceStore,
        on_sessions_changed: Callable[[set[str]], None],
    ) -> None:
        self.session_factory = session_factory
        self.store = store
        self.on_sessions_changed = on_sessions_changed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-check")
        self._references: dict[str, tuple[str, np.ndarray]] = {}

    def clip_stored(self, upload_id: str) -> Future[None]:
        """Called by the ingest processor once a clip is durable and recorded."""
        return self._executor.submit(self._safely, upload_id)

    def _safely(self, upload_id: str) -> None:
        try:
            self._check(upload_id)
        except Exception:  # one bad clip must not stop the checks of the others
            log.exception("checking upload %s failed", upload_id)

    def _reference(self, classroom: Classroom) -> np.ndarray | None:
        if not classroom.reference_upload_id:
            return None
        cached = self._references.get(classroom.id)
        if cached and cached[0] == classroom.reference_upload_id:
            return cached[1]
        with self.session_factory() as db:
            ref = db.scalar(select(Clip).where(Clip.upload_id == classroom.reference_upload_id))
        if ref is None:
            return None
        image = reference_from_image(self.store.path_of(ref.path).read_bytes())
        self._references[classroom.id] = (classroom.reference_upload_id, image)
        return image

    def _check(self, upload_id: str) -> None:
        with self.session_factory.begin() as db:
            clip = db.scalar(select(Clip).where(Clip.upload_id == upload_id))
            if clip is None:
                return
            device = db.get(Device, clip.device_id)
            classroom = (
                db.get(Classroom, device.classroom_id) if device and device.classroom_id else None
            )
            if clip.kind == ClipKind.REFERENCE.value:
                if classroom is not None:
                    classroom.reference_upload_id = clip.upload_id
                    log.info("classroom %s has a new reference view", classroom.id)
                return
            if clip.kind != ClipKind.CLIP.value:
                return
            session_id = link_clip(db, clip)
            clip_id, path = clip.id, self.store.path_of(clip.path)
            db.expunge_all()
        reference = self._reference(classroom) if classroom else None
        check = ClipCheck(clip_id=clip_id, checked_at=utc_now())
        try:
            report = check_clip(path, reference=reference)
            check.black, check.frozen, check.moved = report.black, report.frozen, report.moved
            check.mean_luma, check.frozen_fraction = report.mean_luma, report.frozen_fraction
            check.reference_similarity = report.reference_similarity
        except SanityError as exc:
            check.black, check.frozen, check.moved = False, False, None
            check.mean_luma, check.frozen_fraction, check.error = 0.0, 0.0, str(exc)
        with self.session_factory.begin() as db:
            db.merge(check)
        if session_id:
            self.on_sessions_changed({session_id})

    def close(self) -> None:
        self._executor.shutdown(wait=True)
