"""Which session or classroom a stored clip is evidence of, whatever its manifest claims.

A clip's row keeps what its device signed (``session_id``, ``cmd_id``): that is evidence of
what the device tried, and is never rewritten. But a device can name any session, another
school's included, so a claim alone makes nothing anyone's:

* a clip belongs to a session only when its device is that session's camera — the one bound
  to it when it began (``ClassSession.device_id``), else, for a session that never began, the
  camera installed in its classroom, provided it was already installed there when it took the
  clip (``clip_belongs``);
* a clip that names no session (a roll-call still, a reference picture) is the classroom's its
  camera was installed in when it took the clip (``classroom_when_taken``).

A clip naming a session it does not belong to is nobody's but the readers' of everything
(admin, supervisor): the attempt stays on record for them.

"When it took the clip" is read from ``Device.classroom_since`` (migration 0013), the start of
the camera's present installation, rather than from a table of every installation: a clip from
before it is nobody's classroom's any more — only readers of everything see it — which never
shows one school another's footage, and costs a moved camera's old school only the
session-less pictures it took there (its sessions' clips stay its own, through the session).

The evidence pages (``evidence.session``), the clip routes (``api.evidence_files``, which the
dashboard and the roll call call) and the export all ask these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common.clock import to_utc
from ingest_server.facts import installed_camera
from ingest_server.models import ClassSession, Clip, Device, SessionWindow


def taken_at(clip: Clip) -> datetime:
    """When the clip was taken, at the latest: the start of its cut in server time (through
    the offset its manifest stated), or when it was stored if that is earlier — a device's
    clock cannot make a clip younger than its arrival."""
    stored = to_utc(clip.stored_at)
    try:
        cut = to_utc(clip.cut_start) - timedelta(seconds=clip.clock_offset_s or 0.0)
    except OverflowError:
        return stored
    return min(stored, cut)


def classroom_when_taken(db: Session, clip: Clip) -> str | None:
    """The classroom the clip's camera was installed in when it took the clip, if the server
    knows: its present classroom when the present installation began before the clip."""
    device = db.get(Device, clip.device_id)
    if device is None or device.classroom_id is None:
        return None
    since = device.classroom_since
    if since is not None and taken_at(clip) < to_utc(since):
        return None
    return device.classroom_id


def clip_belongs(db: Session, clip: Clip, session: ClassSession) -> bool:
    """Whether ``clip`` is evidence of ``session``: its device is the session's camera."""
    if session.device_id is not None:
        return clip.device_id == session.device_id
    # Never began: the classroom's camera, and it was there when it took the clip (a camera
    # moved in since cannot bring earlier footage along).
    return installed_camera(
        db, session.classroom_id
    ) == clip.device_id and session.classroom_id == classroom_when_taken(db, clip)


def named_sessions(db: Session, clip: Clip) -> list[ClassSession]:
    """The sessions the clip's manifest names: its ``session_id`` and the session of the
    window its ``cmd_id`` answers (none, one or two)."""
    named = []
    if clip.session_id is not None:
        named.append(ClassSession.id == clip.session_id)
    if clip.cmd_id is not None:
        window = select(SessionWindow.session_id).where(SessionWindow.cmd_id == clip.cmd_id)
        named.append(ClassSession.id.in_(window))
    if not named:
        return []
    return list(db.scalars(select(ClassSession).where(or_(*named)).order_by(ClassSession.id)))


@dataclass(frozen=True, slots=True)
class ClipHome:
    """Whose evidence a clip is: the sessions it belongs to, when it names any (then only
    theirs: none when its device is not their camera), else the classroom its camera was in
    when it took it (``None``: nobody's but the readers of everything)."""

    names_a_session: bool
    sessions: tuple[str, ...]
    classroom: str | None


def clip_home(db: Session, clip: Clip) -> ClipHome:
    """Whose evidence ``clip`` is (``ClipHome``): a clip that names a session is scoped by the
    sessions it belongs to alone, so that neither a claim nor a later move makes it another
    school's; a session-less one by where its camera was when it took it."""
    named = named_sessions(db, clip)
    if named:
        sessions = tuple(s.id for s in named if clip_belongs(db, clip, s))
        return ClipHome(True, sessions, None)
    return ClipHome(False, (), classroom_when_taken(db, clip))


def session_clips(db: Session, rows: Sequence[ClassSession]) -> list[Clip]:
    """The clips of ``rows``, by id: those naming one of the sessions (by session id or by a
    window's command) that belong to the session they name."""
    by_id = {row.id: row for row in rows}
    if not by_id:
        return []
    windows = select(SessionWindow.cmd_id, SessionWindow.session_id).where(
        SessionWindow.session_id.in_(list(by_id))
    )
    window_of = {cmd_id: session_id for cmd_id, session_id in db.execute(windows)}
    candidates = db.scalars(
        select(Clip)
        .where(or_(Clip.session_id.in_(list(by_id)), Clip.cmd_id.in_(list(window_of))))
        .order_by(Clip.id)
    ).all()
    out = []
    for clip in candidates:
        named = {clip.session_id, window_of.get(clip.cmd_id or "")} & by_id.keys()
        if any(clip_belongs(db, clip, by_id[sid]) for sid in named if sid is not None):
            out.append(clip)
    return out


def window_clip_belongs(db: Session, clip_id: int, session: ClassSession) -> bool:
    """``clip_belongs`` for a clip known by id (as the rules' ``ClipFacts`` carry it)."""
    clip = db.get(Clip, clip_id)
    return clip is not None and clip_belongs(db, clip, session)
