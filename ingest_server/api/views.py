"""Read-only views for the supervision backend and people: sessions with their verdicts in the
reader's language, the fleet, and the append-only event feed read with a cursor."""

from __future__ import annotations

import asyncio
import hashlib
import json
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.clock import to_utc
from common.commands import Command, CommandType
from ingest_server import audit, feed
from ingest_server.api.deps import (
    ApiContext,
    Caller,
    CallerDep,
    Role,
    device_scope,
    get_context,
    get_db,
    require,
    session_scope,
    visible_session,
)
from ingest_server.facts import session_camera, stated_offsets, window_evidence
from ingest_server.models import (
    ID_LENGTH,
    ClassSession,
    Clip,
    Device,
    DeviceHealth,
    Photo,
    SessionWindow,
)
from ingest_server.rules.clip_proof import best_proof
from ingest_server.rules.reasons import Reason, pick_language, render

router = APIRouter()


def _reasons(raw: str, lang: str) -> list[dict[str, Any]]:
    out = []
    for item in json.loads(raw or "[]"):
        reason = Reason(code=item["code"], params=item.get("params", {}))
        out.append({"code": reason.code, "params": reason.params, "text": render(reason, lang)})
    return out


def session_view(db: Session, row: ClassSession, lang: str, now: datetime) -> dict[str, Any]:
    """A session as people and the backend see it. Windows appear only once they have ended:
    before that nobody may know which minutes will be checked."""
    windows = db.scalars(
        select(SessionWindow).where(SessionWindow.session_id == row.id).order_by(SessionWindow.idx)
    ).all()
    shown = []
    installed = session_camera(db, row)
    offsets = stated_offsets(db, row.id, installed) if installed else ()
    session_end = row.scheduled_start + timedelta(seconds=row.duration_s)
    for w in windows:
        # Shown once the session is over (not merely the window), as the requests are.
        if w.end > now or session_end > now:
            continue
        evidence = window_evidence(db, w)
        proof = best_proof(evidence.facts, evidence.clips, installed or "", None, offsets)
        clip = db.get(Clip, proof.clip.clip_id) if proof else None
        shown.append(
            {
                "index": w.idx,
                "start": w.start.isoformat(),
                "end": w.end.isoformat(),
                "requested_at": w.requested_at.isoformat() if w.requested_at else None,
                "clip": {
                    "upload_id": clip.upload_id,
                    "device_id": clip.device_id,
                    "path": clip.path,
                    "sha256": clip.sha256,
                    "duration_s": clip.duration_s,
                    "cut_start": clip.cut_start.isoformat(),
                    "cut_end": clip.cut_end.isoformat(),
                    "clock_offset_s": clip.clock_offset_s,
                    "proof": str(proof.outcome),
                }
                if clip and proof
                else None,
                "clips_offered": len(evidence.clips),
                "failed_reason": w.failed_reason,
            }
        )
    photos = db.scalars(
        select(Photo).where(Photo.session_id == row.id).order_by(Photo.received_at)
    ).all()
    return {
        "id": row.id,
        "class_id": row.class_id,
        "classroom_id": row.classroom_id,
        "lecturer_id": row.lecturer_id,
        "scheduled_start": row.scheduled_start.isoformat(),
        "duration_s": row.duration_s,
        "state": row.state,
        "reported_recorded_s": row.reported_recorded_s,
        "device_clock_offset_s": row.device_clock_offset_s,
        "opened_at": row.opened_at.isoformat() if row.opened_at else None,
        "closed_at": row.closed_at.isoformat() if row.closed_at else None,
        "recorded_s": row.recorded_s,
        "verdict": {
            "state": row.verdict,
            "reasons": _reasons(row.verdict_reasons, lang),
            "at": row.verdict_at.isoformat() if row.verdict_at else None,
        },
        "windows": shown,
        "windows_total": len(windows),
        "photos": [
            {
                "id": p.id,
                "kind": p.kind,
                "path": p.path,
                "sha256": p.sha256,
                "taken_at": p.taken_at.isoformat(),
                "time_source": p.time_source,
                "lat": p.lat,
                "lon": p.lon,
                "datum": p.datum,
                "place_source": p.place_source,
            }
            for p in photos
        ],
        "language": lang,
    }


SessionId = Annotated[str, Path(min_length=1, max_length=ID_LENGTH)]
Lang = Annotated[str | None, Query(max_length=64)]
AcceptLanguage = Annotated[str | None, Header(max_length=1024)]


def _representable_utc(value: datetime | None) -> datetime | None:
    # 0001-01-01T00:00+05:00 is a valid ISO time that is not one in UTC: 422, not a 500.
    try:
        return to_utc(value) if value is not None else None
    except OverflowError as exc:
        raise ValueError("outside the range of UTC datetimes") from exc


UtcBound = Annotated[datetime | None, AfterValidator(_representable_utc)]


@router.get("/sessions/{session_id}", tags=["sessions"])
def get_session(
    session_id: SessionId,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: CallerDep,
    accept_language: AcceptLanguage = None,
    lang: Lang = None,
) -> dict[str, Any]:
    """One session with its verdict and reasons (zh-CN by default; ``Accept-Language`` or
    ``?lang=en`` switch). Only a session the caller may read (``api.deps``)."""
    row = visible_session(db, caller, session_id)
    view = session_view(db, row, pick_language(lang or accept_language), context.clock.now())
    actor = audit.api_actor(caller.role, caller.name, caller.token_id)
    audit.record_view(context.session_factory, actor, "GET /sessions/{id}", row.id)
    return view


@router.get("/sessions", tags=["sessions"])
def list_sessions(
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: CallerDep,
    start: UtcBound = None,
    end: UtcBound = None,
    verdict: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    accept_language: AcceptLanguage = None,
    lang: Lang = None,
) -> list[dict[str, Any]]:
    """Sessions by scheduled start, newest first: those the caller may read."""
    query = (
        select(ClassSession)
        .where(session_scope(caller))
        .order_by(ClassSession.scheduled_start.desc())
        .limit(limit)
    )
    if start:
        query = query.where(ClassSession.scheduled_start >= start)
    if end:
        query = query.where(ClassSession.scheduled_start < end)
    if verdict:
        query = query.where(ClassSession.verdict == verdict)
    language, now = pick_language(lang or accept_language), context.clock.now()
    views = [session_view(db, row, language, now) for row in db.scalars(query)]
    actor = audit.api_actor(caller.role, caller.name, caller.token_id)
    # One row per request, not per session shown (a list is up to 500 of them).
    audit.record_list_view(
        context.session_factory,
        actor,
        "GET /sessions",
        {"start": start, "end": end, "verdict": verdict, "limit": limit},
        [v["id"] for v in views],
    )
    return views


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


@router.get("/devices", tags=["fleet"])
def list_devices(
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(require(Role.ADMIN, Role.SUPERVISOR, Role.INSTITUTION))],
) -> list[dict[str, Any]]:
    """Every device the caller may see (an institution: those in its classrooms): online or
    not (retained status and heartbeat timeout), latest health."""
    out = []
    timeout = context.settings.heartbeat_timeout_s
    now = context.clock.now()
    devices = select(Device).where(device_scope(caller)).order_by(Device.device_id)
    for device in db.scalars(devices):
        health = db.get(DeviceHealth, device.device_id)
        beat = json.loads(health.heartbeat) if health and health.heartbeat else None
        last = health.last_heartbeat_at if health else None
        online = bool(
            health
            and health.status == "online"
            and (last is None or (now - last).total_seconds() <= timeout)
        )
        out.append(
            {
                "device_id": device.device_id,
                "classroom_id": device.classroom_id,
                "online": online,
                "status_at": health.status_at.isoformat() if health and health.status_at else None,
                "last_heartbeat_at": last.isoformat() if last else None,
                "heartbeat": beat,
            }
        )
    return out


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
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    woken = asyncio.Event()

    def wake() -> None:  # in the committing thread
        with suppress(RuntimeError):  # the loop has closed: nobody waits there any more
            loop.call_soon_threadsafe(woken.set)

    with feed.commits.listening(wake, settings.feed_max_waiters) as admitted:
        if not admitted:
            await run_in_threadpool(db.close)
            raise HTTPException(503, "too many feed long-polls", {"Retry-After": "1"})
        while True:
            # Listening before reading: a commit after this read sets ``woken`` again.
            woken.clear()
            page = await run_in_threadpool(_feed_page, db, after, limit)
            remaining = deadline - loop.time()
            if page["events"] or remaining <= 0:
                return page
            with suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(settings.feed_recheck_s, remaining))
            if await request.is_disconnected():
                return page  # nobody to answer: give the waiter's place back
