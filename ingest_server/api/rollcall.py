"""The online roll call: an inspector asks a classroom's camera for a still now and gets the
JPEG in the answer, or a clear reason why not (``ingest_server.rollcall`` decides what a roll
call has come to; this module waits for it and answers over HTTP).

``POST /devices/{device_id}/snapshot`` answers at once when the device is known to be offline
(409 ``device_offline``); otherwise it sends the ``snapshot`` command and holds the request
(async: no database connection or worker thread is held while it waits) up to
``Settings.snapshot_wait_s`` for the device's still. Then ``200 image/jpeg``, or 502
``snapshot_failed`` with the device's reason, or 504 ``snapshot_timeout`` with the follow-up
``GET /devices/{device_id}/snapshots/{cmd_id}`` in ``Location``, which returns the JPEG once it
has arrived, 202 while it is still awaited, or the failure.
"""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import suppress
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingest_server import audit
from ingest_server.api import longpoll
from ingest_server.api.deps import (
    ApiContext,
    Caller,
    Role,
    device_scope,
    get_context,
    get_db,
    require,
)
from ingest_server.api.evidence_files import clip_visible
from ingest_server.api.files import store_errors
from ingest_server.api.params import AcceptLanguage, Id
from ingest_server.api.params import Lang as LangQuery
from ingest_server.db import reader_factory
from ingest_server.models import Clip, Device
from ingest_server.presence import Presence
from ingest_server.rollcall import (
    Outcome,
    RollCalls,
    RollCallState,
    device_presence,
    new_cmd_id,
    read_outcome,
    snapshot_command,
)
from ingest_server.rules.reasons import Lang, pick_language

router = APIRouter(tags=["roll call"])

# Waiters read the database again this often: a device's ``command_failed`` appends nothing
# to the feed, so only a re-read finds it (a stored still wakes them at once).
RECHECK_S = 0.5
# A pending follow-up is worth asking again after this long.
RETRY_AFTER_S = 2

Inspector = Annotated[Caller, Depends(require(Role.ADMIN, Role.SUPERVISOR, Role.INSTITUTION))]

Code = Literal[
    "unknown_device",
    "not_in_scope",
    "device_offline",
    "device_disabled",
    "no_command_link",
    "too_many_waiters",
    "not_queued",
    "snapshot_failed",
    "snapshot_timeout",
    "snapshot_expired",
    "snapshot_corrupt",
    "unknown_roll_call",
    "still_missing",
    "store_unavailable",
]
# The file routes' refusals of a stored file (``api.files.store_errors``), said as the roll
# call says its own.
STORE_REFUSALS: dict[int, Code] = {404: "still_missing", 503: "store_unavailable"}

MESSAGES: dict[str, dict[Lang, str]] = {
    "unknown_device": {
        "zh-CN": "没有编号为 {device} 的设备",
        "en": "There is no device {device}",
    },
    "not_in_scope": {
        "zh-CN": "设备 {device} 不在本账号可管理的教室中",
        "en": "Device {device} is not in a classroom this token may reach",
    },
    "device_offline": {
        "zh-CN": "设备 {device} 当前离线（最后心跳：{last}），现在无法点名拍照",
        "en": "Device {device} is offline (last heartbeat: {last}); it cannot take a picture now",
    },
    "device_disabled": {
        "zh-CN": "设备 {device} 已停用：服务器不再接收它的文件，无法点名拍照",
        "en": "Device {device} is disabled: the server takes no files from it, so no picture",
    },
    "no_command_link": {
        "zh-CN": "服务器未连接消息代理，无法向设备 {device} 发送指令",
        "en": "This server has no broker link to send device {device} a command",
    },
    "too_many_waiters": {
        "zh-CN": "同时等待的点名请求过多，请稍后再试",
        "en": "Too many roll calls are waiting at once; try again shortly",
    },
    "not_queued": {
        "zh-CN": "点名指令未能保存，请稍后再试",
        "en": "The roll call command could not be kept for sending; try again shortly",
    },
    "snapshot_failed": {
        "zh-CN": "设备 {device} 未能拍照：{reason}",
        "en": "Device {device} could not take the picture: {reason}",
    },
    "snapshot_timeout": {
        "zh-CN": "设备 {device} 在 {wait} 秒内未传回照片；照片到达后可从 {url} 取得",
        "en": "Device {device} sent no picture within {wait} s; once it arrives it is at {url}",
    },
    "snapshot_expired": {
        "zh-CN": "点名 {cmd} 已过期：设备 {device} 在 {expires} 前未应答，请重新点名",
        "en": "Roll call {cmd} expired: device {device} did not answer by {expires}; ask again",
    },
    "snapshot_corrupt": {
        "zh-CN": "点名照片 {cmd} 的存储文件与其签名摘要不符，未予提供",
        "en": "The stored file of roll call {cmd} does not match its signed digest; not served",
    },
    "unknown_roll_call": {
        "zh-CN": "设备 {device} 没有编号为 {cmd} 的点名",
        "en": "Device {device} has no roll call {cmd}",
    },
    "still_missing": {
        "zh-CN": "点名照片 {cmd} 的存储文件已不存在",
        "en": "The stored file of roll call {cmd} is missing",
    },
    "store_unavailable": {
        "zh-CN": "证据存储暂时无法提供点名照片 {cmd}，请稍后再试",
        "en": "The evidence store cannot serve the still of roll call {cmd} now; ask again later",
    },
    "pending": {
        "zh-CN": "设备 {device} 的照片尚未到达，请稍后再取",
        "en": "The picture from device {device} has not arrived yet; ask again shortly",
    },
    "pending_offline": {
        "zh-CN": "设备 {device} 当前离线，照片尚未到达；设备重新上线后会收到点名指令",
        "en": "Device {device} is offline and its picture has not arrived; it gets the roll"
        " call once it is back online",
    },
    "never": {"zh-CN": "从未上线", "en": "never"},
}


class RollCallProblem(BaseModel):
    """Why a roll call gave no picture: ``code`` for programs, ``message`` for people (in the
    caller's language), and what is known of the device and the command."""

    code: Code
    message: str
    device_id: str
    cmd_id: str | None = None
    status: str | None = None
    status_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    reason: str | None = None  # the device's reason code when it could not take the picture
    device_detail: str | None = None  # and its words
    follow_up: str | None = None  # where the picture will be once it arrives


class RollCallRefusal(BaseModel):
    """A refusal: a ``RollCallProblem``, or a sentence (a missing token, a role that may not
    ask)."""

    detail: RollCallProblem | str


class RollCallPending(BaseModel):
    """A roll call whose picture has not arrived yet (the follow-up's 202)."""

    state: Literal["pending"]
    message: str
    device_id: str
    cmd_id: str
    asked_at: datetime | None
    sends: int
    device_online: bool
    last_heartbeat_at: datetime | None


STILL_HEADERS: dict[str, Any] = {
    "X-Classcam-Cmd-Id": {"description": "The roll call's command id", "required": True},
    "X-Classcam-Clip-Id": {"description": "The stored still's clip id", "required": True},
    "X-Classcam-Device-Id": {"description": "The camera that took it", "required": True},
    "X-Classcam-Taken-At": {
        "description": "When it was taken, by the device's clock (ISO 8601)",
        "required": True,
    },
    "X-Classcam-Stored-At": {"description": "When the server stored it (UTC)", "required": True},
    "X-Classcam-Sha256": {"description": "SHA-256 of the JPEG, as signed", "required": True},
}
STILL = {
    "description": "The camera's still (JPEG), as the device signed it",
    "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {
        name: {"description": spec["description"], "required": True, "schema": {"type": "string"}}
        for name, spec in STILL_HEADERS.items()
    },
}


def _problem(description: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": RollCallRefusal, "description": description}
    if headers:
        answer["headers"] = {h: {"schema": {"type": "string"}} for h in headers}
    return answer


PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: _problem("A lecturer, or a device outside the institution's classrooms"),
    404: _problem("No such device (or no such roll call of it, or its stored file is missing)"),
    502: _problem("snapshot_failed: the device answered that it could not take the picture"),
    500: _problem("snapshot_corrupt: the stored file does not match its signed digest"),
}
POST_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: STILL,
    **PROBLEMS,
    409: _problem("device_offline (answered at once), device_disabled or no_command_link"),
    503: _problem(
        "too_many_waiters or not_queued, or the evidence store cannot serve the still now: ask"
        " again after Retry-After",
        ("Retry-After",),
    ),
    504: _problem(
        "snapshot_timeout: nothing within snapshot_wait_s; the follow-up is in Location",
        ("Location",),
    ),
}
GET_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: STILL,
    202: {
        "model": RollCallPending,
        "description": "Not arrived yet: ask again after Retry-After",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    },
    **PROBLEMS,
    410: _problem("snapshot_expired: no answer within command_ttl_s; no longer sent"),
    503: _problem(
        "The evidence store cannot serve the still now: ask again after Retry-After",
        ("Retry-After",),
    ),
}


class _Speaker:
    """The caller's language and the deployment's zone, for sentences people read."""

    def __init__(self, lang: Lang, timezone: str) -> None:
        self.lang = lang
        self.zone = ZoneInfo(timezone)

    def time(self, at: datetime | None) -> str:
        if at is None:
            return MESSAGES["never"][self.lang]
        return at.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S %Z")

    def say(self, code: str, **values: object) -> str:
        return MESSAGES[code][self.lang].format(**values)


def _refuse(
    http_status: int,
    code: Code,
    speaker: _Speaker,
    device_id: str,
    *,
    headers: dict[str, str] | None = None,
    words: dict[str, object] | None = None,
    **fields: Any,
) -> HTTPException:
    message = speaker.say(code, device=device_id, cmd=fields.get("cmd_id"), **(words or {}))
    problem = RollCallProblem(code=code, message=message, device_id=device_id, **fields)
    body = problem.model_dump(mode="json", exclude_none=True)
    if code == "device_offline":
        # Said even when there never was one (null): it is what an offline answer is read for.
        body.setdefault("last_heartbeat_at", None)
    return HTTPException(http_status, body, headers)


def _presence_of_visible(
    db: Session,
    caller: Caller,
    device_id: str,
    now: datetime,
    timeout_s: float,
    sp: _Speaker,
    *,
    asking: bool,
) -> Presence:
    """The device's presence, if ``caller`` may ask it (404 unknown, 403 out of scope; when
    ``asking`` for a new picture, 409 for a disabled device, whose still the server would
    refuse); the session's connection is given back before the request waits."""
    try:
        enabled = db.scalar(
            select(Device.enabled).where(Device.device_id == device_id, device_scope(caller))
        )
        if enabled is None:
            if db.get(Device, device_id) is None:
                raise _refuse(404, "unknown_device", sp, device_id)
            raise _refuse(403, "not_in_scope", sp, device_id)
        if asking and not enabled:
            raise _refuse(409, "device_disabled", sp, device_id)
        return device_presence(db, device_id, now, timeout_s)
    finally:
        db.close()


def _read(context: ApiContext, device_id: str, cmd_id: str) -> Outcome:
    with reader_factory(context.session_factory)() as db:
        return read_outcome(db, device_id, cmd_id, context.clock.now())


def _record(context: ApiContext, caller: Caller, action: audit.AuditAction, **what: Any) -> None:
    actor = audit.api_actor(caller.role, caller.name, caller.token_id)
    subject_type, subject_id = what.pop("subject")
    with context.session_factory.begin() as db:
        audit.record(db, action, subject_type, subject_id, actor, what)


def _serve_still(
    context: ApiContext, caller: Caller, outcome: Outcome, route: str, sp: _Speaker
) -> Response:
    """The JPEG of an arrived roll call, checked against its signed digest, and its viewing
    recorded. No caching anywhere: every view of evidence is to be recorded."""
    still = outcome.still
    assert still is not None
    with reader_factory(context.session_factory)() as db:
        # The camera may be in the caller's classrooms now yet have taken this still elsewhere
        # (moved since): a still is the caller's only as any clip is (evidence.scope).
        clip = db.get(Clip, still.clip_id)
        if clip is None or not clip_visible(db, caller, clip):
            raise _refuse(403, "not_in_scope", sp, outcome.device_id, cmd_id=outcome.cmd_id)
    # Read as the file routes read a clip: missing is 404, a store out of reach 503.
    try:
        with store_errors():
            data = context.store.path_of(still.path).read_bytes()
    except HTTPException as exc:
        code = STORE_REFUSALS[exc.status_code]
        raise _refuse(
            exc.status_code,
            code,
            sp,
            outcome.device_id,
            headers=dict(exc.headers or {}),
            cmd_id=outcome.cmd_id,
        ) from exc
    if hashlib.sha256(data).hexdigest() != still.sha256:
        raise _refuse(500, "snapshot_corrupt", sp, outcome.device_id, cmd_id=outcome.cmd_id)
    _record(
        context,
        caller,
        audit.AuditAction.VIEWED,
        subject=("clip", str(still.clip_id)),
        route=route,
        device_id=outcome.device_id,
        cmd_id=outcome.cmd_id,
        sha256=still.sha256,
        bytes=len(data),
    )
    return Response(
        data,
        media_type="image/jpeg",
        headers={
            "X-Classcam-Cmd-Id": outcome.cmd_id,
            "X-Classcam-Clip-Id": str(still.clip_id),
            "X-Classcam-Device-Id": outcome.device_id,
            "X-Classcam-Taken-At": still.taken_at.isoformat(),
            "X-Classcam-Stored-At": still.stored_at.isoformat(),
            "X-Classcam-Sha256": still.sha256,
            "Cache-Control": "no-store",
        },
    )


def _roll_calls(request: Request, context: ApiContext) -> RollCalls:
    """This app's pending roll calls, made on first use (checked and set on the event loop,
    with no await in between, so two first requests cannot make two)."""
    calls: RollCalls | None = getattr(request.app.state, "roll_calls", None)
    if calls is None:
        settings = context.settings
        # Joined while the scheduler would not have sent the command again yet.
        calls = RollCalls(settings.snapshot_max_waiters, settings.command_resend_s)
        request.app.state.roll_calls = calls
    return calls


def _follow_up(request: Request, device_id: str, cmd_id: str) -> str:
    return str(request.app.url_path_for("roll_call_result", device_id=device_id, cmd_id=cmd_id))


async def _await_outcome(
    request: Request, context: ApiContext, device_id: str, cmd_id: str, wait_s: float
) -> Outcome:
    """The roll call's outcome once final, or as it stands after ``wait_s`` (real seconds: the
    HTTP request's, not the server's maybe simulated clock). A stored still wakes the wait
    within milliseconds (``feed.commits``: its clip is a feed event); a device's failure is
    found by a re-read every ``RECHECK_S``."""
    settings = context.settings
    # Our own bound (RollCalls.waiting) admitted us already; the feed's listeners count long
    # polls and roll calls alike, so its limit here leaves room for both. A client gone leaves
    # the roll call pending for others.
    return await longpoll.read_until(
        request,
        lambda: _read(context, device_id, cmd_id),
        lambda outcome: outcome.final,
        wait_s=wait_s,
        recheck_s=RECHECK_S,
        limit=settings.feed_max_waiters + settings.snapshot_max_waiters,
        poll_when_full=True,
    )


async def _join_or_send(
    calls: RollCalls,
    context: ApiContext,
    device_id: str,
    now: datetime,
    deadline: float,
    sp: _Speaker,
) -> tuple[str, bool]:
    """The cmd_id of the device's pending roll call to wait for, and False; or of a new one,
    sent now, and True. A pending one already answered (its reader has not settled it yet) is
    not joined: its picture was asked for earlier, not now."""
    assert context.send_command is not None
    loop = asyncio.get_running_loop()
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    while True:
        call, started = calls.claim(device_id, new_cmd_id(now))
        if started:
            try:
                command = snapshot_command(call.cmd_id, now)
                await run_in_threadpool(context.send_command, device_id, command)
            except Exception as exc:
                call.queue_error = type(exc).__name__
                calls.settle(device_id, call.cmd_id)
                raise _refuse(503, "not_queued", sp, device_id, headers=retry) from exc
            finally:
                call.queued.set()
            return call.cmd_id, True
        with suppress(TimeoutError):
            await asyncio.wait_for(call.queued.wait(), max(0.0, deadline - loop.time()))
        if call.queue_error is not None or not call.queued.is_set():
            raise _refuse(503, "not_queued", sp, device_id, headers=retry)
        outcome = await run_in_threadpool(_read, context, device_id, call.cmd_id)
        if outcome.state is RollCallState.PENDING:
            return call.cmd_id, False
        # Settled here and claimed again with no await between: the next claim starts one.
        calls.settle(device_id, call.cmd_id)


def _failure(outcome: Outcome, sp: _Speaker) -> HTTPException:
    return _refuse(
        502,
        "snapshot_failed",
        sp,
        outcome.device_id,
        words={"reason": outcome.detail or outcome.reason},
        cmd_id=outcome.cmd_id,
        reason=outcome.reason,
        device_detail=outcome.detail,
    )


@router.post(
    "/devices/{device_id}/snapshot",
    response_class=Response,
    responses=POST_ANSWERS,
    summary="Roll call: ask a classroom's camera for a still now",
)
async def roll_call(
    request: Request,
    device_id: Id,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Inspector,
    accept_language: AcceptLanguage = None,
    lang: LangQuery = None,
) -> Response:
    """Ask the camera ``device_id`` for a still now and answer with the JPEG.

    Who: admin, supervisor, or an institution for the cameras of its own classrooms (403 for
    another's, 404 for an unknown device); a lecturer may not (403).

    - Device known to be offline (its status, or no heartbeat within ``heartbeat_timeout_s``,
      as ``GET /devices`` shows it): **409** ``device_offline`` at once, with
      ``last_heartbeat_at``; nothing is sent.
    - Otherwise the ``snapshot`` command is sent (kept in ``device_commands`` and sent again
      every ``command_resend_s`` until answered, for ``command_ttl_s``) and the request waits up
      to ``snapshot_wait_s`` (10 s by default):
      **200** ``image/jpeg``, the device's signed still, with ``X-Classcam-Cmd-Id``,
      ``X-Classcam-Clip-Id``, ``X-Classcam-Taken-At`` (the device's clock),
      ``X-Classcam-Stored-At`` and ``X-Classcam-Sha256``;
      **502** ``snapshot_failed`` when the device answers that it cannot take one (its
      ``reason`` and words in ``device_detail``);
      **504** ``snapshot_timeout`` when nothing came in time: ``Location`` (and ``follow_up``)
      name ``GET /devices/{device_id}/snapshots/{cmd_id}``, where the picture will be.
    - Asked again while a roll call of the device is pending (sent less than
      ``command_resend_s`` ago, unanswered), the request waits for that same picture: no second
      command is sent. More than ``snapshot_max_waiters`` requests waiting at once: **503**
      ``too_many_waiters`` with ``Retry-After``.

    Only the device's own still naming the command answers it. Every ask (who, which device,
    which command) and every picture served is recorded in the audit log. Messages are in
    zh-CN unless ``Accept-Language`` or ``?lang=en`` ask for English; times in them are in the
    deployment's zone.
    """
    settings = context.settings
    sp = _Speaker(pick_language(lang or accept_language), settings.timezone)
    now = context.clock.now()
    presence = await run_in_threadpool(
        _presence_of_visible,
        db,
        caller,
        device_id,
        now,
        settings.heartbeat_timeout_s,
        sp,
        asking=True,
    )
    if not presence.online:
        raise _refuse(
            409,
            "device_offline",
            sp,
            device_id,
            words={"last": sp.time(presence.last_heartbeat_at)},
            status=presence.status,
            status_at=presence.status_at,
            last_heartbeat_at=presence.last_heartbeat_at,
        )
    if context.send_command is None:
        raise _refuse(409, "no_command_link", sp, device_id)
    calls = _roll_calls(request, context)
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    with calls.waiting() as admitted:
        if not admitted:
            raise _refuse(503, "too_many_waiters", sp, device_id, headers=retry)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.snapshot_wait_s
        cmd_id, started = await _join_or_send(calls, context, device_id, now, deadline, sp)
        await run_in_threadpool(
            _record,
            context,
            caller,
            audit.AuditAction.ROLL_CALL,
            subject=("device", device_id),
            route="POST /devices/{device_id}/snapshot",
            cmd_id=cmd_id,
            joined=not started,
        )
        outcome = await _await_outcome(
            request, context, device_id, cmd_id, max(0.0, deadline - loop.time())
        )
    if outcome.state is RollCallState.ARRIVED:
        calls.settle(device_id, cmd_id)
        return await run_in_threadpool(
            _serve_still, context, caller, outcome, "POST /devices/{device_id}/snapshot", sp
        )
    if outcome.state is RollCallState.FAILED:
        calls.settle(device_id, cmd_id)
        raise _failure(outcome, sp)
    follow_up = _follow_up(request, device_id, cmd_id)
    raise _refuse(
        504,
        "snapshot_timeout",
        sp,
        device_id,
        headers={"Location": follow_up},
        words={"wait": f"{settings.snapshot_wait_s:g}", "url": follow_up},
        cmd_id=cmd_id,
        status=presence.status,
        last_heartbeat_at=presence.last_heartbeat_at,
        follow_up=follow_up,
    )


@router.get(
    "/devices/{device_id}/snapshots/{cmd_id}",
    name="roll_call_result",
    response_class=Response,
    responses=GET_ANSWERS,
    summary="A roll call's picture, once it has arrived",
)
def roll_call_result(
    request: Request,
    device_id: Id,
    cmd_id: Id,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Inspector,
    accept_language: AcceptLanguage = None,
    lang: LangQuery = None,
) -> Response:
    """The picture of roll call ``cmd_id`` of camera ``device_id`` (the ``Location`` of a
    504 ``snapshot_timeout``), answered at once:

    **200** ``image/jpeg`` with the same headers as the roll call's own answer, once the
    device's still is stored; **202** (JSON, with ``Retry-After``) while it is awaited — the
    command is sent again every ``command_resend_s`` and a device that was away gets it when
    it is back; **502** ``snapshot_failed`` when the device said it could not take it;
    **410** ``snapshot_expired`` when ``command_ttl_s`` passed with no answer (ask again);
    **404** for a roll call never sent to this device (a still another device sent naming the
    command is not served). Same callers as the roll call; every picture served is recorded
    in the audit log.
    """
    settings = context.settings
    sp = _Speaker(pick_language(lang or accept_language), settings.timezone)
    now = context.clock.now()
    presence = _presence_of_visible(
        db, caller, device_id, now, settings.heartbeat_timeout_s, sp, asking=False
    )
    outcome = _read(context, device_id, cmd_id)
    calls: RollCalls | None = getattr(request.app.state, "roll_calls", None)
    if outcome.final and calls is not None:
        # Answered: the next ask is a new roll call (the registry's lock makes this safe from
        # a worker thread beside the event loop).
        calls.settle(device_id, cmd_id)
    if outcome.state is RollCallState.ARRIVED:
        return _serve_still(
            context, caller, outcome, "GET /devices/{device_id}/snapshots/{cmd_id}", sp
        )
    if outcome.state is RollCallState.FAILED:
        raise _failure(outcome, sp)
    if outcome.state is RollCallState.UNKNOWN:
        raise _refuse(404, "unknown_roll_call", sp, device_id, cmd_id=cmd_id)
    if outcome.state is RollCallState.EXPIRED:
        raise _refuse(
            410,
            "snapshot_expired",
            sp,
            device_id,
            words={"expires": sp.time(outcome.expires_at)},
            cmd_id=cmd_id,
            last_heartbeat_at=presence.last_heartbeat_at,
        )
    pending = RollCallPending(
        state="pending",
        message=sp.say("pending" if presence.online else "pending_offline", device=device_id),
        device_id=device_id,
        cmd_id=cmd_id,
        asked_at=outcome.asked_at,
        sends=outcome.sends,
        device_online=presence.online,
        last_heartbeat_at=presence.last_heartbeat_at,
    )
    return JSONResponse(
        pending.model_dump(mode="json"),
        status_code=202,
        headers={"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"},
    )
