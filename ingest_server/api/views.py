"""Opening and closing a session by command, and the append-only event feed read with a cursor
(the evidence itself is read through ``ingest_server.api.evidence``)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.commands import Command, CommandType
from ingest_server import feed
from ingest_server.api import longpoll
from ingest_server.api.deps import (
    ApiContext,
    Caller,
    Role,
    get_context,
    get_db,
    require,
    visible_session,
)
from ingest_server.api.params import MAX_ROW_ID, SessionId
from ingest_server.facts import session_camera
from ingest_server.models import SessionWindow

router = APIRouter()


def _command_id(action: str, session_id: str, now: datetime) -> str:
    # Unique per request: the device runs a cmd_id once and only answers repeats of it.
    suffix = f"{now:%Y%m%d%H%M%S%f}"
    cmd_id = f"{action}-{session_id}-{suffix}"
    if len(cmd_id) > 64:
        cmd_id = f"{action}-{hashlib.sha256(session_id.encode()).hexdigest()[:24]}-{suffix}"
    return cmd_id


@router.post("/sessions/{session_id}/{action}", tags=["sessions"], status_code=202)
def open_or_close(
    session_id: SessionId,
    action: Annotated[str, Path(max_length=16)],
    context: Annotated[ApiContext, Depends(get_context)],
    db: Annotated[Session, Depends(get_db)],
    caller: Annotated[Caller, Depends(require(Role.ADMIN, Role.INSTITUTION, Role.LECTURER))],
) -> dict[str, str]:
    """The lecturer (or the institution owning the classroom, or an admin) opens or closes
    the session explicitly; the command reaches the camera through its persistent MQTT session
    even if it is offline right now."""
    if action not in ("open", "close"):
        raise HTTPException(404, "action is open or close")
    row = visible_session(db, caller, session_id)
    device_id = session_camera(db, row)
    if device_id is None or context.send_command is None:
        raise HTTPException(409, "no camera can be reached for this classroom")
    now = context.clock.now()
    command = Command(
        cmd_id=_command_id(action, session_id, now),
        type=CommandType.OPEN_SESSION if action == "open" else CommandType.CLOSE_SESSION,
        issued_at=now,
        session_id=session_id,
        # Opened early, the camera still records up to the scheduled end: the agent plans its
        # end as issued_at + duration_s.
        duration_s=max(
            row.duration_s,
            (row.scheduled_start + timedelta(seconds=row.duration_s) - now).total_seconds(),
        ),
        windows=len(
            db.scalars(select(SessionWindow.id).where(SessionWindow.session_id == session_id)).all()
        ),
    )
    context.send_command(device_id, command)
    return {"cmd_id": command.cmd_id, "device_id": device_id}


MAX_FEED_WAIT_S = 30
FEED_BUSY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Too many long-polls wait already: ask again after ``Retry-After``",
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"detail": {"type": "string"}}}
            }
        },
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    }
}


def _feed_page(db: Session, after: int, limit: int) -> dict[str, Any]:
    """One page, and the session's transaction and connection given back at once: a long-poll
    must not hold a snapshot (SQLite's WAL could not be checkpointed past it) or a pooled
    connection while it waits."""
    try:
        return feed.read_page(db, after, limit).to_dict()
    finally:
        db.close()


@router.get("/feed", tags=["feed"], responses=FEED_BUSY)
async def read_feed(
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(require(Role.ADMIN, Role.SUPERVISOR))],
    after: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_FEED_WAIT_S,
            description="Seconds to wait for an event when there is none after ``after``"
            " (long-poll): the answer comes as soon as one is committed, else an empty page"
            " with the same ``next`` once the wait is over. 0: answer at once.",
        ),
    ] = 0,
) -> dict[str, Any]:
    """Events after cursor ``after``, oldest first; pass back ``next`` to continue. The feed
    is append-only and its ``seq`` follows commit order (``ingest_server.feed``), so a reader
    that keeps its cursor never misses an event. With ``wait`` the request is held until an
    event is committed (seen within milliseconds when this server committed it, within
    ``feed_recheck_s`` when another process did) or the wait is over."""
    # The wait is the HTTP request's, in real seconds: not the server's (maybe simulated) clock.
    settings = context.settings
    wait_s = min(float(wait), settings.feed_max_wait_s)
    if wait_s <= 0:
        return await run_in_threadpool(_feed_page, db, after, limit)
    try:
        return await longpoll.read_until(
            request,
            lambda: _feed_page(db, after, limit),
            lambda page: bool(page["events"]),
            wait_s=wait_s,
            recheck_s=settings.feed_recheck_s,
            limit=settings.feed_max_waiters,
        )
    except longpoll.TooManyWaiters:
        await run_in_threadpool(db.close)
        raise HTTPException(503, "too many feed long-polls", {"Retry-After": "1"}) from None
