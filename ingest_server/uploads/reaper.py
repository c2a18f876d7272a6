"""Reaping: uploads nobody finishes do not hold disk and rows for ever (issue 8, finding 9).

An upload still ``receiving`` with no chunk for ``upload_stale_after_s`` is marked ``expired``
and its staged bytes deleted (the staging file; the ``upload_chunks`` rows in the same
transaction); a device that sends the same ``init`` later starts it again from nothing and is
told every byte is missing.
Staging files older than that with no receiving upload (a crash between the database and the
disk, or a file being assembled at ``fin`` when its worker crashed) are deleted too.

Safe to run from any thread (the scheduler's tick runs it): each upload is expired by a
conditional update (still receiving, still stale), so a chunk committed meanwhile by the ingest
worker wins and keeps the upload; only the staging path is deleted, never a descriptor the
ingest worker holds (it closes its own when it stages that upload again).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from common.clock import Clock, SystemClock
from ingest_server.db import SessionFactory
from ingest_server.errors import StoreError
from ingest_server.models import Upload, UploadState
from ingest_server.settings import Settings
from ingest_server.store import Store, staging_key
from ingest_server.uploads import staging

log = logging.getLogger(__name__)

BATCH = 500  # stale uploads taken per pass; the next pass takes the rest


@dataclass(frozen=True, slots=True)
class ReapReport:
    expired: int
    orphan_files: int


class UploadReaper:
    """Expires stale uploads and deletes their staging files; ``maybe_run`` on every tick."""

    def __init__(
        self,
        session_factory: SessionFactory,
        store: Store,
        settings: Settings,
        clock: Clock | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.stats: Counter[str] = Counter()
        self._last_run: float | None = None

    def maybe_run(self) -> ReapReport | None:
        """Reap if ``upload_reap_interval_s`` has passed since the last pass (or never ran)."""
        now = self.clock.monotonic()
        if self._last_run is not None and now - self._last_run < (
            self.settings.upload_reap_interval_s
        ):
            return None
        self._last_run = now
        return self.run()

    def run(self) -> ReapReport:
        """One pass: expire stale uploads, delete their staging files and orphaned ones."""
        now = self.clock.now()
        cutoff = now - timedelta(seconds=self.settings.upload_stale_after_s)
        receiving = UploadState.RECEIVING.value
        with self.session_factory() as session:
            stale = session.execute(
                select(Upload.device_id, Upload.upload_id)
                .where(Upload.state == receiving, Upload.updated_at < cutoff)
                .limit(BATCH)
            ).all()
        expired = 0
        for device_id, upload_id in stale:
            with self.session_factory.begin() as session:
                result = session.execute(
                    update(Upload)
                    .where(
                        Upload.device_id == device_id,
                        Upload.upload_id == upload_id,
                        Upload.state == receiving,
                        Upload.updated_at < cutoff,
                    )
                    .values(state=UploadState.EXPIRED.value, received_ranges="[]", updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    staging.drop(session, (device_id, upload_id))
            if not result.rowcount:  # type: ignore[attr-defined]
                continue  # a chunk arrived meanwhile: not stale any more
            expired += 1
            self._drop(staging_key(device_id, upload_id))  # ``local`` staging's file
            log.info("upload %s of %s expired: no chunk since %s", upload_id, device_id, cutoff)
        orphans = self._drop_orphans(cutoff)
        self.stats["uploads_expired"] += expired
        self.stats["orphan_staging_files"] += orphans
        self.stats["passes"] += 1
        if expired or orphans:
            log.warning(
                "reaped %d stale upload(s) and %d orphaned staging file(s)", expired, orphans
            )
        return ReapReport(expired, orphans)

    def _drop_orphans(self, cutoff: datetime) -> int:
        old = self.store.staging_older_than(cutoff)
        if not old:
            return 0
        with self.session_factory() as session:
            live = {
                staging_key(device_id, upload_id)
                for device_id, upload_id in session.execute(
                    select(Upload.device_id, Upload.upload_id).where(
                        Upload.state == UploadState.RECEIVING.value
                    )
                )
            }
        return sum(1 for name in old if name not in live and self._drop(name))

    def _drop(self, key: str) -> bool:
        try:
            return self.store.drop_staging(key)
        except StoreError as exc:
            self.stats["drop_errors"] += 1
            log.error("could not delete a staging file: %s", exc)
            return False
