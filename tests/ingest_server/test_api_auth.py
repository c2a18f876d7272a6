"""People and roles on every route (issue 8, finding 3): no route answers without a token, a
token sees only its own scope, and a body is refused before it is read.

Two institutions, each with a classroom, a camera, a lecturer and a session, on a real SQLite
database; the body guard is measured against a real uvicorn server on a free port.
"""

from __future__ import annotations

import functools
import hashlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import False_

from common.clock import VirtualClock
from common.commands import Command
from common.signing import generate_private_key, public_key_b64
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext, device_scope, session_scope
from ingest_server.auth import Caller, Role, TokenRefused, create_token, hash_token, revoke_token
from ingest_server.db import make_engine, make_session_factory
from ingest_server.models import ApiToken, ClassSession, Device, DeviceHealth, FeedEvent
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from simulators.broker import free_port
from simulators.phone import make_photo

T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
APP_TOKEN = {"a": "app-token-of-lecturer-a-0123", "b": "app-token-of-lecturer-b-0123"}
ICCID = "89860012345678901234"
MIB = 1024 * 1024


def _school_doc() -> dict[str, Any]:
    doc: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("institutions", "classrooms", "devices", "lecturers", "classes", "sessions")
    }
    for i, x in enumerate("ab"):
        doc["institutions"].append({"id": f"school-{x}", "name": f"学校 {x}"})
        doc["classrooms"].append(
            {
                "id": f"room-{x}",
                "institution_id": f"school-{x}",
                "name": "101",
                "lat": 31.2304 + i,
                "lon": 121.4737,
                "datum": "wgs84",
            }
        )
        key = public_key_b64(generate_private_key())
        doc["devices"].append(
            {"device_id": f"cam-{x}", "classroom_id": f"room-{x}", "public_key": key}
        )
        doc["lecturers"].append(
            {"id": f"lect-{x}", "institution_id": f"school-{x}", "name": x, "token": APP_TOKEN[x]}
        )
        doc["classes"].append({"id": f"cls-{x}", "institution_id": f"school-{x}", "name": "电工"})
        # school-b's session is the newer: a page of one, filtered after fetching, would be empty
        # for school-a.
        doc["sessions"].append(
            {
                "id": f"s{x}",
                "class_id": f"cls-{x}",
                "classroom_id": f"room-{x}",
                "lecturer_id": f"lect-{x}",
                "start": (T0 + timedelta(hours=1 + 2 * i)).isoformat(),
                "duration_min": 90,
            }
        )
    return doc


@dataclass
class World:
    settings: Settings
    context: ApiContext
    sent: list[tuple[str, Command]]
    tokens: dict[str, str]

    def client(self, who: str | None = None, **kwargs: Any) -> TestClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return TestClient(create_app(self.context), headers=headers, **kwargs)


def _make_tokens(world_context: ApiContext, clock: VirtualClock) -> dict[str, str]:
    now = clock.now()
    tokens = {"app-a": APP_TOKEN["a"], "app-b": APP_TOKEN["b"]}
    with world_context.session_factory.begin() as db:
        for who, role, scope in (
            ("admin", Role.ADMIN, {}),
            ("supervisor", Role.SUPERVISOR, {}),
            ("inst-a", Role.INSTITUTION, {"institution_id": "school-a"}),
            ("inst-b", Role.INSTITUTION, {"institution_id": "school-b"}),
            ("lect-a", Role.LECTURER, {"lecturer_id": "lect-a"}),
        ):
            _, tokens[who] = create_token(db, role, now, name=who, **scope)
        revoked, tokens["revoked"] = create_token(db, Role.ADMIN, now, name="revoked")
        revoke_token(db, revoked.id, now)
        _, tokens["expired"] = create_token(
            db, Role.ADMIN, now, name="expired", expires_at=now + timedelta(minutes=1)
        )
    clock.advance(120)
    return tokens


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> Iterator[World]:
    # Nobody answers a roll call here: it times out (504) after this short wait.
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, snapshot_wait_s=0.05)
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(_school_doc()))
    with factory.begin() as db:
        import_rows(db, read_rows(path), settings)
        for x in "ab":
            db.add(
                DeviceHealth(
                    device_id=f"cam-{x}",
                    status="online",
                    status_at=T0,
                    heartbeat=json.dumps({"modem": {"iccid": f"{ICCID}{x}"}}),
                )
            )
        db.add(FeedEvent(at=T0, kind="verdict_changed", session_id="sa", payload="{}"))
    clock = VirtualClock(start=T0)
    sent: list[tuple[str, Command]] = []
    context = ApiContext(
        settings,
        factory,
        EvidenceStore(settings.evidence_dir),
        recompute=lambda ids: None,
        send_command=lambda device, cmd: sent.append((device, cmd)),
        clock=clock,
    )
    world = World(settings, context, sent, _make_tokens(context, clock))
    yield world
    engine.dispose()


@functools.cache
def _photo() -> bytes:
    return make_photo(taken_at=T0 + timedelta(hours=1), lat=31.2304, lon=121.4737, scene_seed=1)


# Every route family: (method, path, has a body).
ROUTES = [
    ("GET", "/api/v1/sessions", False),
    ("GET", "/api/v1/sessions/sa", False),
    ("POST", "/api/v1/sessions/sa/open", False),
    ("POST", "/api/v1/sessions/sa/close", False),
    ("POST", "/api/v1/sessions/sa/photos/opening", True),
    ("GET", "/api/v1/devices", False),
    ("GET", "/api/v1/feed", False),
    ("POST", "/api/v1/devices/cam-a/snapshot", False),
    ("GET", "/api/v1/devices/cam-a/snapshots/rollcall-x", False),
    ("GET", "/api/v1/statistics", False),
    ("PUT", "/api/v1/sessions/sa/review", False),
    ("DELETE", "/api/v1/sessions/sa/review", False),
    ("GET", "/api/v1/clips/1/video", False),
    ("GET", "/api/v1/clips/1/manifest", False),
    ("GET", "/api/v1/photos/1/image", False),
    ("GET", "/api/v1/sessions/sa/export", False),
    ("POST", "/api/v1/exports", False),
]


def _call(client: TestClient, method: str, path: str, body: bool) -> Any:
    if body:
        return client.post(path, files={"file": ("a.jpg", _photo(), "image/jpeg")})
    return client.request(method, path)


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_refuses_a_caller_without_a_token(
    world: World, method: str, path: str, body: bool
):
    response = _call(world.client(), method, path, body)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert ICCID not in response.text and "lect-a" not in response.text
    for header in ("Bearer nope-not-a-token", "Basic YWRtaW46YWRtaW4=", "Bearer " + "x" * 5000):
        response = world.client().request(
            method,
            path,
            headers={"Authorization": header},
            files={"file": ("a.jpg", _photo(), "image/jpeg")} if body else None,
        )
        assert response.status_code == 401, (header[:20], response.text)


@pytest.mark.parametrize("who", ["revoked", "expired"])
@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_a_revoked_or_expired_token_is_refused_on_every_route(
    world: World, who: str, method: str, path: str, body: bool
):
    assert _call(world.client(who), method, path, body).status_code == 401


# (who, method, path, status): a valid token of the wrong role or out of its scope is 403.
SCOPES = [
    # Reading sessions: everyone within their scope.
    ("admin", "GET", "/api/v1/sessions/sb", 200),
    ("supervisor", "GET", "/api/v1/sessions/sb", 200),
    ("inst-a", "GET", "/api/v1/sessions/sa", 200),
    ("inst-a", "GET", "/api/v1/sessions/sb", 403),
    ("lect-a", "GET", "/api/v1/sessions/sa", 200),
    ("lect-a", "GET", "/api/v1/sessions/sb", 403),
    ("app-a", "GET", "/api/v1/sessions/sa", 200),
    ("app-a", "GET", "/api/v1/sessions/sb", 403),
    ("inst-a", "GET", "/api/v1/sessions/nowhere", 404),
    # Opening and closing: admin, the institution owning the classroom, the lecturer.
    ("admin", "POST", "/api/v1/sessions/sb/open", 202),
    ("supervisor", "POST", "/api/v1/sessions/sa/open", 403),
    ("inst-a", "POST", "/api/v1/sessions/sa/close", 202),
    ("inst-a", "POST", "/api/v1/sessions/sb/open", 403),
    ("inst-b", "POST", "/api/v1/sessions/sa/close", 403),
    ("lect-a", "POST", "/api/v1/sessions/sa/open", 202),
    ("app-a", "POST", "/api/v1/sessions/sa/close", 202),
    ("app-a", "POST", "/api/v1/sessions/sb/open", 403),
    ("app-b", "POST", "/api/v1/sessions/sa/open", 403),
    # Devices: admin, supervisor, institution (filtered); lecturers have no business there.
    ("admin", "GET", "/api/v1/devices", 200),
    ("supervisor", "GET", "/api/v1/devices", 200),
    ("inst-a", "GET", "/api/v1/devices", 200),
    ("lect-a", "GET", "/api/v1/devices", 403),
    ("app-a", "GET", "/api/v1/devices", 403),
    # The feed: the supervision backend's stream.
    ("admin", "GET", "/api/v1/feed", 200),
    ("supervisor", "GET", "/api/v1/feed", 200),
    ("inst-a", "GET", "/api/v1/feed", 403),
    ("lect-a", "GET", "/api/v1/feed", 403),
    ("app-a", "GET", "/api/v1/feed", 403),
    # The roll call: admin, supervisor, an institution its own cameras (nobody answers: 504).
    ("admin", "POST", "/api/v1/devices/cam-b/snapshot", 504),
    ("supervisor", "POST", "/api/v1/devices/cam-a/snapshot", 504),
    ("inst-a", "POST", "/api/v1/devices/cam-a/snapshot", 504),
    ("inst-a", "POST", "/api/v1/devices/cam-b/snapshot", 403),
    ("inst-b", "POST", "/api/v1/devices/cam-a/snapshot", 403),
    ("inst-a", "POST", "/api/v1/devices/cam-nowhere/snapshot", 404),
    ("lect-a", "POST", "/api/v1/devices/cam-a/snapshot", 403),
    ("app-a", "POST", "/api/v1/devices/cam-a/snapshot", 403),
    ("inst-a", "GET", "/api/v1/devices/cam-a/snapshots/rollcall-x", 404),
    ("inst-b", "GET", "/api/v1/devices/cam-a/snapshots/rollcall-x", 403),
    ("lect-a", "GET", "/api/v1/devices/cam-a/snapshots/rollcall-x", 403),
    # Statistics: the roles that read sessions in bulk; a lecturer has no business there.
    ("admin", "GET", "/api/v1/statistics", 200),
    ("supervisor", "GET", "/api/v1/statistics", 200),
    ("inst-a", "GET", "/api/v1/statistics", 200),
    ("lect-a", "GET", "/api/v1/statistics", 403),
    ("app-a", "GET", "/api/v1/statistics", 403),
    # The reviewed mark (the review queue's): not a lecturer's; an institution on its own.
    ("admin", "PUT", "/api/v1/sessions/sb/review", 200),
    ("supervisor", "DELETE", "/api/v1/sessions/sa/review", 200),
    ("inst-a", "PUT", "/api/v1/sessions/sa/review", 200),
    ("inst-a", "PUT", "/api/v1/sessions/sb/review", 403),
    ("inst-b", "DELETE", "/api/v1/sessions/sa/review", 403),
    ("inst-a", "PUT", "/api/v1/sessions/nowhere/review", 404),
    ("lect-a", "PUT", "/api/v1/sessions/sa/review", 403),
    ("app-a", "DELETE", "/api/v1/sessions/sa/review", 403),
    # Exports: admin, supervisor, an institution its own; never a lecturer. Past the scope,
    # these sessions are not over yet (their windows are still secret): 409.
    ("admin", "GET", "/api/v1/sessions/sb/export", 409),
    ("supervisor", "GET", "/api/v1/sessions/sa/export", 409),
    ("inst-a", "GET", "/api/v1/sessions/sa/export", 409),
    ("inst-a", "GET", "/api/v1/sessions/sb/export", 403),
    ("inst-b", "GET", "/api/v1/sessions/sa/export", 403),
    ("inst-a", "GET", "/api/v1/sessions/nowhere/export", 404),
    ("lect-a", "GET", "/api/v1/sessions/sa/export", 403),
    ("app-a", "GET", "/api/v1/sessions/sa/export", 403),
    ("lect-a", "POST", "/api/v1/exports", 403),
    # Files of evidence nobody stored: 404 for every role.
    ("admin", "GET", "/api/v1/clips/99/video", 404),
    ("inst-a", "GET", "/api/v1/photos/99/image", 404),
    ("lect-a", "GET", "/api/v1/clips/99/manifest", 404),
]


@pytest.mark.parametrize("who,method,path,status", SCOPES, ids=[" ".join(s[:3]) for s in SCOPES])
def test_each_role_reaches_only_its_scope(
    world: World, who: str, method: str, path: str, status: int
):
    response = world.client(who).request(method, path)
    assert response.status_code == status, response.text
    if status == 403:
        assert ICCID not in response.text and "scheduled_start" not in response.text


@pytest.mark.parametrize(
    "who,session,status",
    [
        ("app-a", "sa", 201),
        ("lect-a", "sa", 201),
        ("app-a", "sb", 403),
        ("app-b", "sa", 403),
        ("admin", "sa", 403),
        ("supervisor", "sa", 403),
        ("inst-a", "sa", 403),
    ],
)
def test_only_the_sessions_lecturer_uploads_its_photos(
    world: World, who: str, session: str, status: int
):
    response = world.client(who).post(
        f"/api/v1/sessions/{session}/photos/opening",
        files={"file": ("a.jpg", _photo(), "image/jpeg")},
    )
    assert response.status_code == status, response.text


def test_lists_are_filtered_in_the_query_not_after(world: World):
    def ids(who: str, **params: Any) -> list[str]:
        page = world.client(who).get("/api/v1/sessions", params=params).json()
        return [s["id"] for s in page["sessions"]]

    assert ids("admin") == ["sb", "sa"]
    # A page of one: school-b's newer session must not take school-a's place.
    for who in ("inst-a", "lect-a", "app-a"):
        assert ids(who, limit=1) == ["sa"], who
        # Filtering on the other school's rows finds nothing, not its rows.
        assert ids(who, institution="school-b") == [], who
        assert ids(who, classroom="room-b") == [], who
        assert ids(who, lecturer="lect-b") == [], who
    assert ids("app-b") == ["sb"]
    devices = world.client("inst-a").get("/api/v1/devices").json()
    assert [d["device_id"] for d in devices] == ["cam-a"]
    assert f"{ICCID}b" not in json.dumps(devices)
    everything = world.client("supervisor").get("/api/v1/devices").json()
    assert [d["device_id"] for d in everything] == ["cam-a", "cam-b"]


def test_writes_reach_the_camera_of_the_session_only(world: World):
    assert world.client("inst-a").post("/api/v1/sessions/sa/open").status_code == 202
    assert world.client("inst-a").post("/api/v1/sessions/sb/open").status_code == 403
    assert [(device, cmd.session_id) for device, cmd in world.sent] == [("cam-a", "sa")]


def test_roll_calls_reach_the_callers_cameras_only(world: World):
    assert world.client("inst-a").post("/api/v1/devices/cam-b/snapshot").status_code == 403
    assert world.client("inst-b").post("/api/v1/devices/cam-a/snapshot").status_code == 403
    assert world.client("lect-a").post("/api/v1/devices/cam-a/snapshot").status_code == 403
    assert world.sent == []
    assert world.client("inst-a").post("/api/v1/devices/cam-a/snapshot").status_code == 504
    assert [(device, cmd.type) for device, cmd in world.sent] == [("cam-a", "snapshot")]


def test_tokens_are_stored_hashed_and_are_high_entropy(world: World):
    tokens = [world.tokens[w] for w in ("admin", "supervisor", "inst-a", "inst-b", "lect-a")]
    assert len(set(tokens)) == len(tokens)
    assert all(len(t) >= 40 for t in tokens)
    with world.context.session_factory() as db:
        stored = db.execute(text("SELECT * FROM api_tokens")).all()
    dump = repr(stored)
    assert not any(t in dump for t in tokens)
    assert {hash_token(t) for t in tokens} <= {r.token_sha256 for r in stored}
    assert hash_token("x") == hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    "role,scope",
    [
        (Role.INSTITUTION, {}),
        (Role.LECTURER, {}),
        (Role.INSTITUTION, {"lecturer_id": "lect-a"}),
        (Role.ADMIN, {"institution_id": "school-a"}),
        (Role.SUPERVISOR, {"lecturer_id": "lect-a"}),
    ],
)
def test_the_database_refuses_a_token_without_the_scope_its_role_needs(
    world: World, role: Role, scope: dict[str, str]
):
    """``create_token`` refuses these; a row written some other way is refused too (CHECK in
    migration 0007), so no scoped token can reach the routes with a NULL scope."""
    with pytest.raises(IntegrityError), world.context.session_factory.begin() as db:
        db.add(
            ApiToken(
                name="unscoped",
                role=role.value,
                token_sha256=hash_token(f"unscoped-{role}-{sorted(scope)}"),
                created_at=T0,
                **scope,
            )
        )
    with pytest.raises(TokenRefused), world.context.session_factory.begin() as db:
        create_token(db, role, T0, **scope)


@pytest.mark.parametrize("role", [Role.INSTITUTION, Role.LECTURER])
def test_a_scoped_caller_without_its_scope_sees_nothing(world: World, role: Role):
    """A scope id of None compiles to ``false``, never to ``IS NULL`` (which would match
    unscoped rows)."""
    caller = Caller(role=role, token_id=None, name="unscoped")
    assert isinstance(session_scope(caller), False_)
    assert isinstance(device_scope(caller), False_)
    with world.context.session_factory() as db:
        assert db.scalars(sa.select(ClassSession).where(session_scope(caller))).all() == []
        assert db.scalars(sa.select(Device).where(device_scope(caller))).all() == []


def test_openapi_declares_the_bearer_scheme_on_every_route(world: World):
    spec = world.client().get("/api/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    operations = [op for item in spec["paths"].values() for op in item.values()]
    labels = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}
    v1 = "/api/v1"
    assert {
        f"GET {v1}/sessions",
        f"GET {v1}/sessions/{{session_id}}",
        f"POST {v1}/sessions/{{session_id}}/{{action}}",
        f"POST {v1}/sessions/{{session_id}}/photos/{{kind}}",
        f"PUT {v1}/sessions/{{session_id}}/review",
        f"DELETE {v1}/sessions/{{session_id}}/review",
        f"GET {v1}/clips/{{clip_id}}/video",
        f"GET {v1}/clips/{{clip_id}}/manifest",
        f"GET {v1}/photos/{{photo_id}}/image",
        f"GET {v1}/devices",
        f"GET {v1}/statistics",
        f"GET {v1}/feed",
        f"POST {v1}/devices/{{device_id}}/snapshot",
        f"GET {v1}/devices/{{device_id}}/snapshots/{{cmd_id}}",
        f"GET {v1}/sessions/{{session_id}}/export",
        f"POST {v1}/exports",
        "GET /metrics",
    } <= labels
    # Every route, these and any other, needs the token.
    assert all(op.get("security") == [{"bearer": []}] for op in operations)


@pytest.mark.parametrize(
    "query",
    [
        "/api/v1/sessions?start=0001-01-01T00:00:00%2B05:00",
        "/api/v1/sessions?end=0001-01-01T00:00:00%2B05:00",
        "/api/v1/sessions?start=9999-12-31T23:59:59-05:00",
        "/api/v1/sessions?start=not-a-date",
        "/api/v1/sessions?verdict=" + "x" * 5000,
        "/api/v1/sessions?lang=" + "x" * 5000,
        "/api/v1/sessions/" + "s" * 65,
        "/api/v1/feed?limit=" + "9" * 40,
    ],
)
def test_query_parameters_out_of_range_are_422_never_500(world: World, query: str):
    client = world.client("admin", raise_server_exceptions=False)
    assert client.get(query).status_code == 422


def test_cli_makes_lists_and_revokes_tokens(world: World, capsys: pytest.CaptureFixture[str]):
    from ingest_server.cli import main

    url = [
        "--database-url",
        world.settings.database_url,
        "--data-dir",
        str(world.settings.data_dir),
    ]
    assert (
        main(
            [
                *url,
                "token",
                "create",
                "--role",
                "institution",
                "--institution",
                "school-a",
                "--name",
                "ops-a",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("cc_") and "shown once" in err
    world.context.clock = VirtualClock()  # the CLI stamps real time
    client = TestClient(create_app(world.context), headers={"Authorization": f"Bearer {token}"})
    assert [s["id"] for s in client.get("/api/v1/sessions").json()["sessions"]] == ["sa"]
    assert main([*url, "token", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ops-a" in listing and "school-a" in listing and token not in listing
    token_id = next(line.split("│")[1].strip() for line in listing.splitlines() if "ops-a" in line)
    assert main([*url, "token", "revoke", token_id]) == 0
    assert client.get("/api/v1/sessions").status_code == 401
    assert main([*url, "token", "create", "--role", "institution"]) == 1
    assert main([*url, "token", "create", "--role", "lecturer", "--lecturer", "nobody"]) == 1
    assert main([*url, "token", "create", "--role", "admin", "--institution", "school-a"]) == 1


# -- The body guard, against a real server ---------------------------------------------------


@pytest.fixture
def live_server(world: World) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(world.context), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(10)


def _send_until_answered(
    port: int, head: bytes, body_size: int, chunked: bool = False
) -> tuple[int, int]:
    """Send ``head`` and then up to ``body_size`` bytes of body as fast as the server takes
    them; return the status of the answer and how many body bytes were sent before it came."""
    prefix = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    block = b"\0" * (64 * 1024)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.sendall(head)
    sent, pending = 0, (b"%x\r\n%s\r\n" % (len(prefix), prefix)) if chunked else prefix
    answer = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < body_size else [], [], 1)
            if readable:
                data = sock.recv(65536)
                answer += data
                if not data or b"\r\n" in answer:
                    break
                continue
            if writable:
                if not pending:
                    piece = block[: body_size - sent]
                    pending = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    readable = [sock]
                    continue
                sent += n
                pending = pending[n:]
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1]), sent


def _head(token: str | None, length: int | None) -> bytes:
    lines = [
        "POST /api/v1/sessions/sa/photos/opening HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: multipart/form-data; boundary=b",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


BIG = 200 * MIB


def test_a_200_mib_upload_without_a_token_is_refused_before_it_is_read(
    world: World, live_server: int
):
    status, sent = _send_until_answered(live_server, _head(None, BIG), BIG)
    print(f"401 after {sent / MIB:.2f} MiB of a {BIG // MIB} MiB body")
    assert status == 401
    assert sent < 16 * MIB


def test_a_declared_body_over_the_cap_is_refused_before_it_is_read(world: World, live_server: int):
    status, sent = _send_until_answered(live_server, _head(world.tokens["app-a"], BIG), BIG)
    print(f"413 after {sent / MIB:.2f} MiB of a {BIG // MIB} MiB body")
    assert status == 413
    assert sent < 16 * MIB


def test_a_chunked_body_is_cut_at_the_cap(world: World, live_server: int):
    cap = world.settings.max_photo_bytes + MIB
    status, sent = _send_until_answered(
        live_server, _head(world.tokens["app-a"], None), BIG, chunked=True
    )
    print(
        f"413 after {sent / MIB:.2f} MiB of a chunked {BIG // MIB} MiB body (cap {cap / MIB} MiB)"
    )
    assert status == 413
    assert cap <= sent < cap + 16 * MIB


@pytest.mark.parametrize("who", ["admin", "supervisor", "inst-a"])
def test_a_photo_from_a_role_that_never_uploads_photos_is_refused_before_it_is_read(
    world: World, live_server: int, who: str
):
    """Only the lecturer role uploads photos: any other valid token is answered 403 on the
    headers, not after the server has read (and FastAPI parsed) a 16 MiB form."""
    size = world.settings.max_photo_bytes
    status, sent = _send_until_answered(live_server, _head(world.tokens[who], size), size)
    print(f"403 for {who} after {sent / MIB:.2f} MiB of a {size / MIB:.0f} MiB body")
    assert status == 403
    assert sent < size // 4


def test_the_guard_refuses_photos_by_role_only_on_the_photo_route(world: World):
    """A supervisor's body elsewhere (open/close take none, but a body is not refused for its
    role there) reaches the route, whose own dependency answers."""
    client = world.client("supervisor", raise_server_exceptions=False)
    response = client.post("/api/v1/sessions/sa/open", content=b"{}")
    assert response.status_code == 403
    assert "supervisor" in response.json()["detail"]
    photo = client.post(
        "/api/v1/sessions/sa/photos/opening", files={"file": ("a.jpg", _photo(), "image/jpeg")}
    )
    assert photo.status_code == 403
    assert photo.headers["connection"] == "close"  # the guard's answer, body unread


@pytest.mark.parametrize(
    "form",
    [
        {"taken_at": "0001-01-01T00:00:00+05:00"},
        {"taken_at": "9999-12-31T23:59:59-05:00"},
        {"lat": "nan", "lon": "121.4"},
        {"lat": "31.2", "lon": "inf"},
        {"lat": "1e308", "lon": "1e308"},
        {"datum": "x" * 5000},
        {"taken_at": "2026-11-25T02:00:00+08:00", "lat": "91", "lon": "121.4"},
    ],
)
def test_photo_form_fields_out_of_range_are_4xx_never_500(world: World, form: dict[str, str]):
    client = world.client("app-a", raise_server_exceptions=False)
    response = client.post(
        "/api/v1/sessions/sa/photos/opening",
        files={"file": ("a.jpg", _photo(), "image/jpeg")},
        data=form,
    )
    assert response.status_code < 500, response.text


def test_an_honest_upload_passes_the_guard_on_a_real_server(world: World, live_server: int):
    import httpx

    url = f"http://127.0.0.1:{live_server}/api/v1/sessions/sa/photos/opening"
    files = {"file": ("a.jpg", _photo(), "image/jpeg")}
    auth = {"Authorization": f"Bearer {world.tokens['app-a']}"}
    assert httpx.post(url, files=files, headers=auth, timeout=30).status_code == 201
    # Streamed without a length (chunked) it is counted, not refused.
    chunked = httpx.post(
        url, content=iter([_multipart()]), headers={**auth, **MULTIPART}, timeout=30
    )
    assert chunked.status_code in (200, 201), chunked.text


MULTIPART = {"Content-Type": "multipart/form-data; boundary=b"}


def _multipart() -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + _photo() + b"\r\n--b--\r\n"
    )
