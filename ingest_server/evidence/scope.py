"""Which session or classroom a stored clip is evidence of, whatever its manifest claims.

A clip's row keeps what its device signed (``session_id``, ``cmd_id``): that is evidence of
what the device tried, and is never rewritten. But a device can name any session, another
school's included, so a claim alone makes nothing anyone's. The relation itself is in
``ingest_server.facts``, which the verdict reads through too:

* a clip belongs to a session only when its device is that session's camera — the one bound
  to it when it began (``ClassSession.device_id``), else, for a session that never began, the
  camera installed in its classroom, provided it was already installed there when it took the
  clip (``facts.clip_belongs``); only such a clip can prove a window;
* a clip naming a session counts for it (offered, shown, exported, and refused by the rules
  as ``clip_wrong_device`` if not its own) when it belongs, or when its camera was installed
  in another classroom of the same institution when it took it (``facts.clip_counts_for``);
  another school's camera never counts: a clip naming only sessions it does not count for is
  nobody's but the readers' of everything (admin, supervisor), who keep seeing the attempt;
* a clip that names no session (a roll-call still, a reference picture) is the classroom's
  its camera was installed in when it took the clip (``facts.classroom_when_taken``).

"When it took the clip" is read from ``Device.classroom_since`` (migration 0013), the start of
the camera's present installation, rather than from a table of every installation: it is one
column every move sets (the setup import, ``crud.register_device``), and a clip from before
it is in no classroom any more, which never shows one school another's footage and costs a
moved camera's old school only the session-less pictures it took there (its sessions' clips
stay its own, through the sessions).

The evidence pages (``evidence.session``), the clip routes (``api.evidence_files``, which the
dashboard and the roll call call) and the export all ask these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ingest_server.facts import classroom_when_taken, clip_counts_for
from ingest_server.models import ClassSession, Clip, SessionWindow


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
    """Whose evidence a clip is: when it names a session, the named sessions it counts for
    (none: another school's camera), else the classroom its camera was in when it took it
    (``None``: nobody's but the readers of everything)."""

    names_a_session: bool
    sessions: tuple[str, ...]
    classroom: str | None


def clip_home(db: Session, clip: Clip) -> ClipHome:
    """Whose evidence ``clip`` is (``ClipHome``): a clip that names a session is scoped by the
    sessions it counts for alone, so that neither a claim nor a later move makes it another
    school's; a session-less one by where its camera was when it took it."""
    named = named_sessions(db, clip)
    if named:
        sessions = tuple(s.id for s in named if clip_counts_for(db, clip, s))
        return ClipHome(True, sessions, None)
    return ClipHome(False, (), classroom_when_taken(db, clip))


def session_clips(db: Session, rows: Sequence[ClassSession]) -> list[Clip]:
    """The clips of ``rows``, by id: those naming one of the sessions (by session id or by a
    window's command) that count for the session they name."""
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
        if any(clip_counts_for(db, clip, by_id[sid]) for sid in named if sid is not None):
            out.append(clip)
    return out
