"""Ids, marks and files at the API's and the dashboard's edges: an id no row can have (a NUL,
which PostgreSQL answers with an error) is refused before the database sees it; the reviewed
mark is one token's; a roll call's still that cannot be read is refused as the file routes
refuse one; HEAD of a file gives its headers, no body and no viewing in the audit log."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_evidence_api import (  # noqa: F401  (the evidence API's fixture)
    NOW,
    ROOM_A1_WGS,
    T0,
    UnreachableStore,
    World,
    _post_photo,
    school_doc,
    world,
)

from common.clock import VirtualClock
from common.schemas import ClipKind
from common.signing import generate_private_key
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.evidence import BadCursor, decode_cursor
from ingest_server.models import AuditEntry, Clip, DeviceCommand
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore

ORIGIN = "http://testserver"


def _cursor(start: str, session_id: str) -> str:
    raw = json.dumps([start, session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _viewed(context: ApiContext, subject_type: str) -> list[AuditEntry]:
    with context.session_factory() as db:
        rows = select(AuditEntry).where(
            AuditEntry.subject_type == subject_type, AuditEntry.action == "viewed"
        )
        return list(db.scalars(rows))


# -- Ids ----------------------------------------------------------------------------------------


def test_a_cursor_naming_no_possible_session_is_refused() -> None:
    start = "2026-11-01T00:00:00+00:00"
    assert decode_cursor(_cursor(start, "s-a1-0"))[1] == "s-a1-0"
    for forged in ("a\x00", "", "a b", "x" * 65, "s/../x"):
        with pytest.raises(BadCursor):
            decode_cursor(_cursor(start, forged))


def test_an_id_no_row_can_have_never_reaches_postgresql(pg_url: str, tmp_path: Path) -> None:
    migrate(pg_url)
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    engine = make_engine(pg_url)
    factory = make_session_factory(engine)
    try:
        keys = {room: generate_private_key() for room in ("a1", "a2", "b1")}
        (tmp_path / "setup.json").write_text(json.dumps(school_doc(keys)))
        with factory.begin() as db:
            import_rows(db, read_rows(tmp_path / "setup.json"), settings)
            _, token = create_token(db, Role.ADMIN, NOW, name="admin")
        context = ApiContext(
            settings,
            factory,
            EvidenceStore(settings.evidence_dir),
            recompute=lambda ids: None,
            clock=VirtualClock(start=NOW),
        )
        api = TestClient(
            create_app(context),
            raise_server_exceptions=False,
            headers={"Authorization": f"Bearer {token}"},
        )
        nul_cursor = _cursor("2026-11-01T00:00:00+00:00", "a\x00")
        for url in (
            "/api/v1/sessions?institution=a%00b",
            "/api/v1/sessions?classroom=a%00b",
            "/api/v1/sessions?lecturer=a%00b",
            f"/api/v1/sessions?after={nul_cursor}",
            "/api/v1/sessions/a%00b",
            "/api/v1/sessions/a%00b/export",
            "/api/v1/devices/a%00b/snapshots/x",
            "/api/v1/devices/cam-a1/snapshots/a%00b",
        ):
            assert api.get(url).status_code == 422, url
        assert api.put("/api/v1/sessions/a%00b/review").status_code == 422
        assert api.delete("/api/v1/sessions/a%00b/review").status_code == 422
        assert api.post("/api/v1/sessions/a%00b/open").status_code == 422
        assert api.post("/api/v1/exports", json={"session_ids": ["a\x00"]}).status_code == 422
        assert api.post("/api/v1/exports", json={"session_ids": ["a b"]}).status_code == 422
        # The ids the setup file gave pass the same type.
        assert api.get("/api/v1/sessions/s-a1-0").status_code == 200
        assert api.put("/api/v1/sessions/s-a1-0/review").json()["reviewed"] is True
        page = api.get("/api/v1/sessions", params={"classroom": "room-a1", "limit": 2}).json()
        assert len(page["sessions"]) == 2 and page["next"] is not None
        after = api.get("/api/v1/sessions", params={"classroom": "room-a1", "after": page["next"]})
        assert after.status_code == 200 and after.json()["sessions"]

        # The dashboard: a page of no such session, a filter that lists nothing; never a 500.
        browser = TestClient(
            create_app(context), raise_server_exceptions=False, follow_redirects=False
        )
        browser.cookies.set("classcam_token", token)
        for url in (
            "/ui/sessions/a%00b",
            "/ui/sessions/a%00b/evidence.json",
            "/ui/sessions/a%00b/export",
            "/ui/fleet/a%00b/rollcall/x",
            "/ui/fleet/cam-a1/rollcall/a%00b",
        ):
            page_answer = browser.get(url)
            assert page_answer.status_code == 404, url
            assert page_answer.headers["content-type"].startswith("text/html"), url
        for url in ("/ui/sessions/a%00b/review", "/ui/fleet/a%00b/rollcall"):
            refused = browser.post(url, data={"reviewed": "1"}, headers={"Origin": ORIGIN})
            assert refused.status_code == 404, url
        queue = browser.get("/ui/queue?classroom=a%00b")
        assert queue.status_code == 200 and 'data-testid="queue-row"' not in queue.text
        assert 'data-testid="queue-row"' in browser.get("/ui/queue?classroom=room-a1").text
        assert browser.get(f"/ui/queue?after={nul_cursor}").status_code == 400
    finally:
        engine.dispose()


# -- The reviewed mark --------------------------------------------------------------------------


def test_two_tokens_of_one_name_keep_their_own_marks(
    world: World,  # noqa: F811  (the fixture imported above)
) -> None:
    with world.context.session_factory.begin() as db:
        _, first = create_token(db, Role.SUPERVISOR, NOW, name="duty")
        _, second = create_token(db, Role.SUPERVISOR, NOW, name="duty")
        _, unnamed = create_token(db, Role.SUPERVISOR, NOW)
        _, unnamed_too = create_token(db, Role.SUPERVISOR, NOW)

    def api(token: str) -> TestClient:
        return TestClient(create_app(world.context), headers={"Authorization": f"Bearer {token}"})

    def listed(token: str) -> set[str]:
        page = api(token).get("/api/v1/sessions", params={"classroom": "room-a1"}).json()
        return {s["id"] for s in page["sessions"] if s["reviewed"]}

    marked = api(first).put("/api/v1/sessions/s-a1-0/review").json()
    assert marked["reviewed"] is True and marked["reviewer"].startswith("supervisor:duty#token")
    assert api(second).get("/api/v1/sessions/s-a1-0").json()["reviewed"] is False
    assert listed(first) == {"s-a1-0"} and listed(second) == set()
    # The other token's DELETE takes off its own (absent) mark, not the first one's.
    assert api(second).delete("/api/v1/sessions/s-a1-0/review").json()["reviewed"] is False
    assert listed(first) == {"s-a1-0"}
    api(unnamed).put("/api/v1/sessions/s-a1-1/review")
    assert listed(unnamed) == {"s-a1-1"} and listed(unnamed_too) == set()

    # The dashboard reads and sets the same mark: the queue's filter and the session page.
    def browser(token: str) -> TestClient:
        client = TestClient(create_app(world.context), follow_redirects=False)
        client.cookies.set("classcam_token", token)
        return client

    rows = 'data-testid="queue-row" data-session-id="s-a1-0"'
    assert rows in browser(first).get("/ui/queue?reviewed=yes&classroom=room-a1").text
    assert rows not in browser(second).get("/ui/queue?reviewed=yes&classroom=room-a1").text
    assert rows in browser(second).get("/ui/queue?reviewed=no&classroom=room-a1").text
    assert 'data-testid="reviewed-mark"' in browser(first).get("/ui/sessions/s-a1-0").text
    assert 'data-testid="reviewed-mark"' not in browser(second).get("/ui/sessions/s-a1-0").text
    set_mark = browser(second).post(
        "/ui/sessions/s-a1-2/review", data={"reviewed": "1"}, headers={"Origin": ORIGIN}
    )
    assert set_mark.status_code == 303
    assert listed(second) == {"s-a1-2"} and listed(first) == {"s-a1-0"}


# -- A roll call's still ------------------------------------------------------------------------


def test_a_roll_call_still_that_cannot_be_read_is_refused_as_a_file_is(
    world: World,  # noqa: F811  (the fixture imported above)
) -> None:
    clip_id = world.clips["s-a1-0"]
    with world.context.session_factory.begin() as db:
        db.add(
            DeviceCommand(
                cmd_id="rollcall-x",
                device_id="cam-a1",
                type="snapshot",
                payload="{}",
                created_at=NOW,
                expires_at=NOW + timedelta(hours=1),
                sends=1,
            )
        )
        clip = db.get(Clip, clip_id)
        assert clip is not None
        clip.kind, clip.cmd_id = ClipKind.SNAPSHOT.value, "rollcall-x"
        path = clip.path
    client = world.client("inst-a", raise_server_exceptions=False)
    url = "/api/v1/devices/cam-a1/snapshots/rollcall-x"
    assert client.get(url).status_code == 200
    seen = len(_viewed(world.context, "clip"))

    store = world.context.store
    world.context.store = UnreachableStore(world.context.settings.evidence_dir)
    busy = client.get(url, params={"lang": "en"})
    assert busy.status_code == 503 == client.get(f"/api/v1/clips/{clip_id}/video").status_code
    assert int(busy.headers["retry-after"]) > 0
    assert busy.json()["detail"]["code"] == "store_unavailable"
    assert "cannot serve" in busy.json()["detail"]["message"]
    world.context.store = store

    store.path_of(path).unlink()
    missing = client.get(url)
    assert missing.status_code == 404 == client.get(f"/api/v1/clips/{clip_id}/video").status_code
    assert missing.json()["detail"]["code"] == "still_missing"
    assert "不存在" in missing.json()["detail"]["message"]  # zh-CN unless asked
    assert len(_viewed(world.context, "clip")) == seen  # nothing was shown: nothing logged


# -- HEAD of a file -----------------------------------------------------------------------------


def test_head_of_a_file_gives_its_headers_and_logs_no_viewing(
    world: World,  # noqa: F811  (the fixture imported above)
) -> None:
    photo = _post_photo(world, "s-a1-0", "opening", T0, ROOM_A1_WGS)
    clip_id = world.clips["s-a1-0"]
    size = len(world.clip_bytes[clip_id])
    api = world.client("inst-a")
    browser = TestClient(create_app(world.context), follow_redirects=False)
    browser.cookies.set("classcam_token", world.tokens["inst-a"])
    for client, prefix in ((api, "/api/v1"), (browser, "/ui")):
        video = client.head(f"{prefix}/clips/{clip_id}/video")
        assert video.status_code == 200 and video.content == b""
        assert int(video.headers["content-length"]) == size
        assert video.headers["content-type"] == "video/mp4" and video.headers["etag"]
        image = client.head(f"{prefix}/photos/{photo['id']}/image")
        assert image.status_code == 200 and image.content == b""
        assert image.headers["content-type"] == "image/jpeg"
        assert int(image.headers["content-length"]) == len(photo["bytes"])
    # Scope holds for HEAD as for GET.
    other = world.client("inst-b").head(f"/api/v1/clips/{clip_id}/video")
    assert other.status_code == 403
    assert _viewed(world.context, "clip") == [] and _viewed(world.context, "photo") == []
    # A GET is still a viewing.
    assert api.get(f"/api/v1/clips/{clip_id}/video").content == world.clip_bytes[clip_id]
    assert len(_viewed(world.context, "clip")) == 1
