"""The roll call from the fleet page: an inspector presses "roll call" beside a camera and sees
the still it takes now, or why there is none.

The page asks through the API's own handlers (``api.rollcall.roll_call`` and, for a picture
still on its way, ``roll_call_result``), called with the page's caller: the same rules (who may
ask which camera, offline answered at once, one pending roll call joined, the 10 s wait), the
same audit rows, the same words in the reader's language. Only the answer's form differs: the
JPEG is shown in the page (a ``data:`` URL, so nothing else needs serving) with the facts from
its headers, and a refusal is the API's message on a page.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from ingest_server.api import rollcall as api_rollcall
from ingest_server.api.deps import ApiContext, get_context, get_db
from ingest_server.auth import Caller
from ingest_server.dashboard import i18n, templating
from ingest_server.dashboard.auth import REVIEWERS, check_origin, page_require
from ingest_server.dashboard.forms import path_id
from ingest_server.rules.reasons import Lang

router = APIRouter()
Inspector = Annotated[Caller, Depends(page_require(*REVIEWERS))]

STRINGS: dict[str, dict[Lang, str]] = {
    "rollcall_button": {"zh-CN": "点名拍照", "en": "Roll call"},
    "rollcall_title": {"zh-CN": "点名拍照：{device}", "en": "Roll call: {device}"},
    "rollcall_help": {
        "zh-CN": "请摄像设备立即拍摄一张照片（最多等待约 10 秒）。",
        "en": "Asks the camera for a still now (waits about 10 s at most).",
    },
    "rollcall_taken": {"zh-CN": "拍摄时间（设备时钟）", "en": "Taken (device clock)"},
    "rollcall_stored": {"zh-CN": "服务器接收时间", "en": "Stored by the server"},
    "rollcall_command": {"zh-CN": "点名指令", "en": "Command"},
    "rollcall_again": {"zh-CN": "再次查看", "en": "Look again"},
    "rollcall_back": {"zh-CN": "返回设备状态", "en": "Back to the fleet"},
    "rollcall_alt": {"zh-CN": "设备 {device} 的点名照片", "en": "Roll call still of {device}"},
}
for _key in STRINGS:
    assert _key not in i18n.STRINGS or i18n.STRINGS[_key] == STRINGS[_key], _key
i18n.STRINGS.update(STRINGS)


def _still(answer: Response) -> dict[str, Any]:
    """The picture and the facts its headers carry."""
    body = bytes(answer.body)
    return {
        "data_url": "data:image/jpeg;base64," + base64.b64encode(body).decode(),
        "cmd_id": answer.headers.get("x-classcam-cmd-id"),
        "clip_id": answer.headers.get("x-classcam-clip-id"),
        "taken_at": answer.headers.get("x-classcam-taken-at"),
        "stored_at": answer.headers.get("x-classcam-stored-at"),
        "sha256": answer.headers.get("x-classcam-sha256"),
        "bytes": len(body),
    }


def _problem(exc: HTTPException) -> dict[str, Any]:
    """The API's refusal (a ``RollCallProblem``, or a plain sentence) for the page."""
    if isinstance(exc.detail, dict):
        return dict(exc.detail)
    return {"code": "refused", "message": str(exc.detail)}


def _page(
    request: Request,
    caller: Caller,
    device_id: str,
    *,
    still: dict[str, Any] | None = None,
    problem: dict[str, Any] | None = None,
    pending: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    return templating.render(
        request,
        "rollcall.html",
        {"device_id": device_id, "still": still, "problem": problem, "pending": pending},
        caller=caller,
        status_code=status_code,
    )


@router.post("/ui/fleet/{device_id}/rollcall")
async def roll_call_page(
    request: Request,
    device_id: str,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Inspector,
) -> Response:
    """Ask ``device_id`` for a still now and show it, or the reason there is none."""
    check_origin(request)
    device_id = path_id(device_id)
    try:
        answer = await api_rollcall.roll_call(
            request, device_id, db, context, caller, None, i18n.pick(request)
        )
    except HTTPException as exc:
        return _page(request, caller, device_id, problem=_problem(exc), status_code=exc.status_code)
    return _page(request, caller, device_id, still=_still(answer))


@router.get("/ui/fleet/{device_id}/rollcall/{cmd_id}")
def roll_call_result_page(
    request: Request,
    device_id: str,
    cmd_id: str,
    db: Annotated[Session, Depends(get_db)],
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Inspector,
) -> Response:
    """A roll call whose picture was late: shown once it is in, else where it stands."""
    device_id, cmd_id = path_id(device_id), path_id(cmd_id)
    try:
        answer = api_rollcall.roll_call_result(
            request, device_id, cmd_id, db, context, caller, None, i18n.pick(request)
        )
    except HTTPException as exc:
        return _page(request, caller, device_id, problem=_problem(exc), status_code=exc.status_code)
    if answer.media_type == "image/jpeg":
        return _page(request, caller, device_id, still=_still(answer))
    pending = api_rollcall.RollCallPending.model_validate_json(bytes(answer.body))
    return _page(request, caller, device_id, pending=pending.model_dump(mode="json"))
