"""The audit log is wired, not only written (issue 8, Deliver 7): one flow through the production
code — the ingest processor, the clip checker, the verdict keeper, the HTTP API — leaves exactly
the expected actions, by the expected actors, in one chain that ``audit verify`` passes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from ingest_helpers import START, Harness, make_upload
from sqlalchemy import select

from common.clock import VirtualClock
from common.schemas import AckState
from common.signing import public_key_b64
from ingest_server import audit, cli
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.clip_checks import ClipChecker
from ingest_server.consumer import build_processor
from ingest_server.core import ServerCore
from ingest_server.db import migrate
from ingest_server.models import AuditEntry
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.verdicts import VerdictKeeper
from simulators.phone import make_photo

LECTURER_TOKEN = "lecturer-token-0123456789"
LAT, LON = 31.2304, 121.4737


def _setup(device_key: str) -> dict[str, list[dict[str, Any]]]:
    return {
        "institutions": [{"id": "school", "name": "职业培训学校"}],
        "classrooms": [
            {
                "id": "room",
                "institution_id": "school",
                "name": "101",
                "lat": LAT,
                "lon": LON,
                "datum": "wgs84",
            }
        ],
        "devices": [{"device_id": "dev-1", "classroom_id": "room", "public_key": device_key}],
        "lecturers": [
            {"id": "lect", "institution_id": "school", "name": "王老师", "token": LECTURER_TOKEN}
        ],
        "classes": [{"id": "cls", "institution_id": "school", "name": "电工"}],
        "sessions": [
            {
                "id": "sess-1",
                "class_id": "cls",
                "classroom_id": "room",
                "lecturer_id": "lect",
                "start": (START - timedelta(minutes=10)).isoformat(),
                "duration_min": 30,
            }
        ],
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, key: Ed25519PrivateKey
) -> Iterator[Harness]:
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
        migrate(url)
    clock = VirtualClock(START + timedelta(minutes=5))
    settings = Settings(data_dir=tmp_path, database_url=url)
    h = Harness(url, tmp_path / "evidence", settings, clock)
    setup = tmp_path / "setup.json"
    setup.write_text(json.dumps(_setup(public_key_b64(key))))
    with h.sessions.begin() as db:
        import_rows(db, read_rows(setup), settings)
    try:
        yield h
    finally:
        h.close()


def _entries(h: Harness) -> list[AuditEntry]:
    with h.sessions() as db:
        return list(db.scalars(select(AuditEntry).order_by(AuditEntry.seq)))


def test_a_flow_through_production_code_is_audited_end_to_end(
    world: Harness, tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    h = world
    # A clip arrives and is stored; another upload's fin contradicts its manifest.
    good = make_upload(tmp_path / "d", key, "dev-1", "up-good")
    assert h.upload(good)[-1].state is AckState.COMPLETE
    bad = make_upload(tmp_path / "d", key, "dev-1", "up-bad")
    h.send(bad.init_topic(), bad.init_payload)
    h.send_chunks(bad)
    fin = json.loads(bad.fin_payload())
    fin["size"] += 1
    assert h.send(bad.fin_topic(), json.dumps(fin).encode())[-1].state is AckState.REJECTED

    # The checker decodes the stored clip (random bytes: unreadable); the verdict follows.
    changed: set[str] = set()
    checker = ClipChecker(h.sessions, h.store, changed.update, h.clock)
    try:
        checker.wake().result(timeout=60)
    finally:
        checker.close()
    keeper = VerdictKeeper(h.sessions, h.settings, h.clock)
    keeper.recompute({"sess-1"})

    # The lecturer's photo through the API, then a supervisor reads the session and the list.
    context = ApiContext(h.settings, h.sessions, h.store, keeper.recompute, clock=h.clock)
    client = TestClient(create_app(context))
    photo = make_photo(taken_at=START - timedelta(minutes=10), lat=LAT, lon=LON, scene_seed=1)
    posted = client.post(
        "/api/v1/sessions/sess-1/photos/opening",
        files={"file": ("a.jpg", photo)},
        headers={"Authorization": f"Bearer {LECTURER_TOKEN}"},
    )
    assert posted.status_code == 201, posted.text
    with h.sessions.begin() as db:
        row, token = create_token(db, Role.SUPERVISOR, h.clock.now(), name="bureau")
        supervisor = f"supervisor:bureau#token{row.id}"
    reader = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/sessions/sess-1", headers=reader).status_code == 200
    assert client.get("/api/v1/sessions", headers=reader).status_code == 200
    # A refused read is no view.
    assert client.get("/api/v1/sessions/sess-1").status_code == 401
    # The feed through its route still pages in commit order.
    feed = client.get("/api/v1/feed", params={"after": 0}, headers=reader).json()
    assert [e["kind"] for e in feed["events"]].count("verdict_changed") >= 1

    # An export (issue 10's routes will call this).
    with h.sessions.begin() as db:
        digest = audit.record_export(db, "session", "sess-1", supervisor, b"%PDF-1.7 ...", "pdf")

    entries = _entries(h)
    by_action: dict[str, list[AuditEntry]] = {}
    for e in entries:
        by_action.setdefault(e.action, []).append(e)

    [stored] = by_action["clip_stored"]
    assert stored.actor == "device:dev-1" and stored.subject_type == "clip"
    assert json.loads(stored.details)["sha256"] == good.manifest.sha256
    [rejected] = by_action["upload_rejected"]
    assert (rejected.subject_id, json.loads(rejected.details)["reason"]) == (
        "dev-1/up-bad",
        "size_mismatch",
    )
    [checked] = by_action["clip_checked"]
    assert checked.subject_id == stored.subject_id and checked.actor == "system:clip-checker"
    assert json.loads(checked.details)["result"] == "unreadable"
    verdicts = by_action["verdict_changed"]
    assert verdicts and all(v.subject_id == "sess-1" for v in verdicts)
    assert json.loads(verdicts[0].details)["from"] == "pending"
    [photo_row] = by_action["photo_received"]
    assert photo_row.actor == "lecturer:lect"
    assert json.loads(photo_row.details)["sha256"] == posted.json()["sha256"]
    views = by_action["viewed"]
    assert [(v.subject_type, v.subject_id, v.actor) for v in views] == [
        ("session", "sess-1", supervisor),
        ("sessions", "GET /sessions", supervisor),
    ]
    assert json.loads(views[0].details) == {"route": "GET /sessions/{id}"}
    listed = json.loads(views[1].details)
    assert (listed["ids"], listed["shown"], listed["query"]) == (["sess-1"], 1, {"limit": 100})
    [exported] = by_action["exported"]
    assert json.loads(exported.details) == {"bytes": 12, "format": "pdf", "sha256": digest}
    # Each action in the order it happened.
    assert entries.index(stored) < entries.index(checked) < entries.index(photo_row)
    assert entries.index(photo_row) < entries.index(views[0]) < entries.index(exported)

    status = cli.main(
        ["--data-dir", str(tmp_path), "--database-url", h.settings.database_url, "audit", "verify"]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"intact: {len(entries)} rows" in out


def test_a_list_of_many_sessions_is_one_viewed_row(world: Harness, tmp_path: Path) -> None:
    """A read must not cost one audit write per row shown under the append lock."""
    h = world
    setup = _setup(json.loads((tmp_path / "setup.json").read_text())["devices"][0]["public_key"])
    first = setup["sessions"][0]
    setup["sessions"] += [
        {**first, "id": f"more-{n:03}", "start": (START + timedelta(hours=n + 1)).isoformat()}
        for n in range(120)
    ]
    (tmp_path / "more.json").write_text(json.dumps(setup))
    with h.sessions.begin() as db:
        import_rows(db, read_rows(tmp_path / "more.json"), h.settings)
        _, token = create_token(db, Role.SUPERVISOR, h.clock.now(), name="bureau")
    context = ApiContext(h.settings, h.sessions, h.store, lambda ids: None, clock=h.clock)
    client = TestClient(create_app(context))
    before = len(_entries(h))
    listed = client.get(
        "/api/v1/sessions", params={"limit": 500}, headers={"Authorization": f"Bearer {token}"}
    )
    shown = listed.json()["sessions"]
    assert listed.status_code == 200 and len(shown) == 121
    new = _entries(h)[before:]
    assert [(e.action, e.subject_type) for e in new] == [("viewed", "sessions")]
    details = json.loads(new[0].details)
    assert details["shown"] == 121 and len(details["ids"]) == audit.MAX_VIEWED_IDS
    assert details["ids"] == [s["id"] for s in shown][: audit.MAX_VIEWED_IDS]


def test_every_part_of_the_server_appends_with_the_settings_key(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ingest, clip checks, verdicts, scheduler, reaper and API share one factory keyed by the
    settings' key file (made on first start, owner-only); the CLI's writers and the
    stand-alone consumer use the same file, and ``audit verify`` passes what they wrote."""
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url)
    core = ServerCore(settings)
    try:
        key = audit.load_key(settings.audit_key_file, create=False)
        assert oct(settings.audit_key_file.stat().st_mode & 0o777) == "0o600"
        factories = [
            core.session_factory,
            core.processor.session_factory,
            core.checker.session_factory,
            core.verdicts.session_factory,
            core.scheduler.session_factory,
            core.reaper.session_factory,
            core.api_context().session_factory,
            build_processor(settings).session_factory,
        ]
        for factory in factories:
            with factory() as db:
                assert audit.session_key(db) == key
        for n, factory in enumerate(factories):
            with factory.begin() as db:
                audit.record(db, "viewed", "session", f"s{n}", "system:test")
    finally:
        core.close()
    argv = ["--data-dir", str(settings.data_dir), "--database-url", sqlite_url]
    assert cli.main([*argv, "token", "create", "--role", "admin", "--name", "ops"]) == 0
    assert cli.main([*argv, "audit", "verify"]) == 0
    assert f"intact: {len(factories)} rows" in capsys.readouterr().out
