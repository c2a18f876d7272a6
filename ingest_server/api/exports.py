"""Verifiable exports of sessions (``ingest_server.export``; docs/export.md): one session, or a
case of several, as a zip an auditor checks offline with the ``verify.py`` inside.

Admins and supervisors export any session, an institution only its own classrooms' (403 if any
asked for is not), a lecturer none. The archive is written to a temporary file, recorded in
the audit log with its SHA-256 (also sent as ``X-Archive-SHA256``) and committed before a byte
is sent; the file is deleted once sent.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from ingest_server import audit
from ingest_server.api.deps import (
    ApiContext,
    Caller,
    Role,
    get_context,
    get_db,
    require,
    session_scope,
    visible_session,
)
from ingest_server.api.params import AcceptLanguage, Id, Lang, SessionId
from ingest_server.export import (
    MAX_SESSIONS,
    ExportIntegrityError,
    ExportRefused,
    export_sessions,
    load_export_key,
)
from ingest_server.models import ClassSession
from ingest_server.rules.reasons import pick_language

router = APIRouter(tags=["exports"])

ZIP_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The archive (verify it with the verify.py inside)",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "Content-Disposition": {"schema": {"type": "string"}},
            "X-Archive-SHA256": {
                "description": "The archive's SHA-256, as recorded in the audit log",
                "schema": {"type": "string"},
            },
        },
    }
}
# A body that is not JSON at all is refused by FastAPI before validation.
NOT_JSON: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "The body is not JSON",
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"detail": {"type": "string"}}}
            }
        },
    }
}
Exporter = Annotated[Caller, Depends(require(Role.ADMIN, Role.SUPERVISOR, Role.INSTITUTION))]


class ExportRequest(BaseModel):
    """The sessions of a case, each one the caller may read."""

    session_ids: list[Id] = Field(min_length=1, max_length=MAX_SESSIONS)


def _send(
    db: Session,
    context: ApiContext,
    caller: Caller,
    session_ids: list[str],
    lang: str | None,
) -> FileResponse:
    # Scope first, for every session asked for: 404 for an unknown one, 403 for another's.
    rows: list[ClassSession] = []
    for session_id in dict.fromkeys(session_ids):
        rows.append(visible_session(db, caller, session_id))
    db.close()  # the export reads its own snapshot; give this connection back
    settings = context.settings
    with context.session_factory() as probe:
        audit_key = audit.session_key(probe)
    try:
        result = export_sessions(
            context.session_factory,
            context.store,
            rows,
            directory=settings.data_dir / "exports",
            audit_key=audit_key,
            signing_key=load_export_key(settings.export_key_file),
            now=context.clock.now(),
            actor=audit.api_actor(caller.role, caller.name, caller.token_id),
            reader_scope=session_scope(caller),
            lang=pick_language(lang),
            tz=ZoneInfo(settings.timezone),
        )
    except ExportIntegrityError as exc:
        raise HTTPException(409, f"export refused: {exc}") from exc
    except ExportRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    return FileResponse(
        result.path,
        media_type="application/zip",
        filename=result.filename,
        headers={"X-Archive-SHA256": result.sha256},
        background=BackgroundTask(_delete, result.path),
    )


def _delete(path: FilePath) -> None:
    path.unlink(missing_ok=True)


@router.post("/exports", response_class=FileResponse, responses=ZIP_RESPONSE | NOT_JSON)
def export_case(
    request: ExportRequest,
    context: Annotated[ApiContext, Depends(get_context)],
    db: Annotated[Session, Depends(get_db)],
    caller: Exporter,
    accept_language: AcceptLanguage = None,
    lang: Lang = None,
) -> FileResponse:
    """The verifiable archive of a case (the sessions' reasons in zh-CN unless ``lang`` or
    ``Accept-Language`` ask for English): up to 50 sessions, each over (a session whose
    windows are still secret is refused with 409)."""
    return _send(db, context, caller, request.session_ids, lang or accept_language)


@router.get("/sessions/{session_id}/export", response_class=FileResponse, responses=ZIP_RESPONSE)
def export_session(
    session_id: SessionId,
    context: Annotated[ApiContext, Depends(get_context)],
    db: Annotated[Session, Depends(get_db)],
    caller: Exporter,
    accept_language: AcceptLanguage = None,
    lang: Lang = None,
) -> FileResponse:
    """The verifiable archive of one session (over: its windows are no longer secret)."""
    return _send(db, context, caller, [session_id], lang or accept_language)
