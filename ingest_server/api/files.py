"""Serving a stored evidence file (a clip, a photo) to a browser or a client: HTTP range
requests (a ``<video>`` element seeks with them), an ETag that is the file's SHA-256 (the hash
the evidence was stored and signed under, so a cached copy is checked by what it is), and 304
when the client already holds it. The API routes and the dashboard's media routes both answer
through ``evidence_file_response``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import FileResponse

from ingest_server.errors import StoreError

# A store that cannot serve a file now is worth asking again after this long.
STORE_RETRY_AFTER_S = 30

# What the file routes may answer besides 200, for the OpenAPI document.
BINARY = {"schema": {"type": "string", "format": "binary"}}


def file_responses(*media_types: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers of a route serving a stored file of ``media_types``."""
    content = {media_type: BINARY for media_type in media_types}
    etag = {"ETag": {"schema": {"type": "string"}, "description": "The file's SHA-256"}}
    return {
        200: {"content": content, "headers": etag, "description": "The whole file"},
        206: {
            "content": content | {"multipart/byteranges": BINARY},
            "headers": etag | {"Content-Range": {"schema": {"type": "string"}}},
            "description": "The bytes asked for with ``Range`` (several: multipart/byteranges)",
        },
        304: {"description": "Not modified: ``If-None-Match`` names this file's ETag"},
        400: {"content": {"text/plain": BINARY}, "description": "A malformed ``Range``"},
        503: {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
            "description": "The evidence store cannot serve the file now (ask again later)",
        },
        416: {
            "content": {"text/plain": BINARY},
            "headers": {"Content-Range": {"schema": {"type": "string"}}},
            "description": "The ``Range`` starts past the end of the file",
        },
    }


@contextmanager
def store_errors() -> Iterator[None]:
    """Reading a stored evidence file, as every route that serves one answers its failures: a
    file that is not there (or a path that would leave the store) is a 404; a store that
    cannot serve it now (a bucket out of reach, an object that no longer matches its hash) a
    503 with ``Retry-After``: the evidence is not served, and the client may ask again."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        raise HTTPException(404, "the stored file is missing") from exc
    except StoreError as exc:
        raise HTTPException(
            503,
            "the evidence store cannot serve this file now",
            headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
        ) from exc


def quoted_etag(sha256: str) -> str:
    """The strong ETag of a file whose SHA-256 is ``sha256``."""
    return f'"{sha256}"'


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [tag.strip() for tag in if_none_match.split(",")]
    # A weak comparison, as RFC 9110 asks of If-None-Match.
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def evidence_file_response(
    request: Request, path: os.PathLike[str] | str, media_type: str, etag: str
) -> Response:
    """The file at ``path`` as ``media_type``, with ``etag`` (the file's SHA-256, unquoted):
    whole (200), the ``Range`` asked for (206, ``Content-Range``; Starlette's ``FileResponse``
    parses it), 416 past the end, 304 for a matching ``If-None-Match``. ``FileNotFoundError``
    when there is no such file (the caller answers 404)."""
    # Before answering: a missing file is a 404, not a stream that fails half-way.
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise FileNotFoundError(f"{path} is not a file")
    quoted = quoted_etag(etag)
    headers = {
        "ETag": quoted,
        # Evidence is private: no shared cache keeps a copy; the browser may, and revalidates.
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _matches(if_none_match, quoted):
        return Response(status_code=304, headers=headers)
    return FileResponse(
        path,
        media_type=media_type,
        headers=headers,
        stat_result=info,
        content_disposition_type="inline",
    )


def starts_the_file(request: Request) -> bool:
    """Whether a request asks for the file from its first byte: no ``Range``, or one whose
    first range starts at byte 0 (how a player begins; its later requests seek)."""
    header = request.headers.get("range")
    if header is None:
        return True
    unit, _, ranges = header.partition("=")
    first = ranges.split(",")[0].strip()
    return unit.strip().lower() != "bytes" or first.split("-")[0].strip() == "0"
