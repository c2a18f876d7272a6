"""What to delete when, as a pure decision over the spool's recordings (DESIGN.md §1 step 3).

Session recordings are evidence: pinned until every window the server will ask for has been
cut and acknowledged, or until retention expires. Recordings outside sessions go first when
space runs low; pinned evidence is never deleted, however full the disk: the agent stops
recording outside sessions and reports ``storage_low`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RecordingUse:
    recording_id: int
    session_id: str | None
    ended: datetime | None  # None while recording
    size: int
    pinned: bool  # a session recording whose windows are not all acknowledged yet


@dataclass(frozen=True, slots=True)
class StoragePolicy:
    retention: timedelta = timedelta(days=7)
    low_water_bytes: int = 512 * 1024 * 1024  # below this: delete unpinned, report low
    critical_bytes: int = 128 * 1024 * 1024  # below this: no recording outside sessions


@dataclass
class CleanupPlan:
    delete: list[int] = field(default_factory=list)
    storage_low: bool = False
    allow_unpinned_recording: bool = True
    freed_bytes: int = 0


def plan_cleanup(
    recordings: list[RecordingUse], free_bytes: int, now: datetime, policy: StoragePolicy
) -> CleanupPlan:
    """Decide which finished recordings to delete and whether space is low."""
    plan = CleanupPlan()
    finished = [r for r in recordings if r.ended is not None]
    for rec in finished:
        assert rec.ended is not None
        expired = now - rec.ended >= policy.retention
        released = rec.session_id is not None and not rec.pinned
        if expired or released:
            plan.delete.append(rec.recording_id)
            plan.freed_bytes += rec.size
    free = free_bytes + plan.freed_bytes
    if free < policy.low_water_bytes:
        unpinned = sorted(
            (r for r in finished if not r.pinned and r.recording_id not in plan.delete),
            key=lambda r: r.ended or now,
        )
        for rec in unpinned:
            if free >= policy.low_water_bytes:
                break
            plan.delete.append(rec.recording_id)
            plan.freed_bytes += rec.size
            free += rec.size
    plan.storage_low = free < policy.low_water_bytes
    plan.allow_unpinned_recording = free >= policy.critical_bytes
    return plan
