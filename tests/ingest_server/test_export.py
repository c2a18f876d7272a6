"""The verifiable export (ingest_server.export, docs/export.md): a session's real evidence —
H.264 clips made with PyAV and uploaded through the ingest processor under manifests a device
key signed, JPEG photos posted by the lecturer through the API, the verdict keeper's rows —
exported through the API and the CLI, then checked by the archive's own ``verify.py`` run as
an auditor would: ``python -I verify.py case.zip`` in a folder outside the repository.

One changed byte in any file, a file added or removed, a wrong pinned server key, and a
server re-signing inconsistent contents with its own key each make verify fail, naming the
file. Only the roles that may read a session export it, and every export is in the audit log
with the archive's SHA-256."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from ingest_helpers import START, Harness, TestUpload, signed_upload
from sqlalchemy import select, text, true

from common.clock import VirtualClock
from common.schemas import AckState
from common.signing import generate_private_key, public_key_b64
from ingest_server import audit, cli, export_verify
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.db import make_engine, migrate
from ingest_server.export import (
    ArchiveWriter,
    ExportIntegrityError,
    export_sessions,
    load_export_key,
)
from ingest_server.models import AuditEntry, ClassSession, Clip, SessionWindow
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.verdicts import VerdictKeeper
from simulators.clip_files import write_mp4
from simulators.phone import make_photo

LECTURER_TOKEN = "lecturer-token-export-0123456789"
LAT, LON = 31.2304, 121.4737
SESSION_START = START - timedelta(minutes=10)
AFTER = START + timedelta(hours=2)  # every session over: windows no longer secret
# As conftest's pg_url, but for a whole module (``conftest`` is not importable by name here:
# several test folders have one).
PG_BASE = os.environ.get("CLASSCAM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _setup(device_key: str) -> dict[str, list[dict[str, Any]]]:
    room = {"lat": LAT, "lon": LON, "datum": "wgs84"}
    session = {"class_id": "cls", "lecturer_id": "lect", "duration_min": 30}
    return {
        "institutions": [
            {"id": "school", "name": "职业培训学校"},
            {"id": "other", "name": "另一所学校"},
        ],
        "classrooms": [
            {"id": "room", "institution_id": "school", "name": "101", **room},
            {"id": "room-2", "institution_id": "other", "name": "201", **room},
        ],
        "devices": [{"device_id": "dev-1", "classroom_id": "room", "public_key": device_key}],
        "lecturers": [
            {"id": "lect", "institution_id": "school", "name": "王老师", "token": LECTURER_TOKEN},
            {"id": "lect-2", "institution_id": "other", "name": "李老师", "token": "x" * 32},
        ],
        "classes": [
            {"id": "cls", "institution_id": "school", "name": "电工"},
            {"id": "cls-2", "institution_id": "other", "name": "焊工"},
        ],
        "sessions": [
            {"id": "sess-1", "classroom_id": "room", "start": SESSION_START.isoformat(), **session},
            {
                "id": "sess-2",
                "classroom_id": "room",
                "start": (SESSION_START + timedelta(hours=1)).isoformat(),
                **session,
            },
            {
                "id": "sess-other",
                "classroom_id": "room-2",
                "start": (SESSION_START - timedelta(hours=3)).isoformat(),
                **session,
                # One institution's session: the other school's class and lecturer.
                "class_id": "cls-2",
                "lecturer_id": "lect-2",
            },
        ],
    }


def _clip_upload(
    directory: Path, key: Ed25519PrivateKey, window: SessionWindow, seed: int
) -> TestUpload:
    """A real H.264 clip of ``window`` (2 s at 10 fps, small frames) and its signed manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    upload_id = f"clip-{window.session_id}-{window.idx}"
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(20)]
    path = write_mp4(directory / f"{upload_id}.mp4", frames, fps=10)
    return signed_upload(
        path,
        key,
        "dev-1",
        upload_id,
        16 * 1024,
        session_id=window.session_id,
        cmd_id=window.cmd_id,
        requested_start=window.start,
        requested_end=window.end,
        cut_start=window.start - timedelta(seconds=1),
        cut_end=window.end + timedelta(seconds=1),
        duration_s=2.0,
        frames=20,
        width=128,
        height=96,
        created_at=window.end + timedelta(seconds=30),
    )


@dataclass
class World:
    harness: Harness
    client: TestClient
    settings: Settings
    tokens: dict[str, str]
    clip_sha256: dict[str, str]
    root: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest,
    sqlite_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A migrated database for the module: a copy of the SQLite template, or a PostgreSQL
    schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("export-db") / "classcam.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_BASE)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
        migrate(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module")
def world(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("export-world")
    url = database
    clock = VirtualClock(START + timedelta(minutes=5))
    settings = Settings(data_dir=root, database_url=url)
    h = Harness(url, root / "evidence", settings, clock)
    key = generate_private_key()
    (root / "setup.json").write_text(json.dumps(_setup(public_key_b64(key))))
    with h.sessions.begin() as db:
        import_rows(db, read_rows(root / "setup.json"), settings)
    with h.sessions() as db:
        windows = db.scalars(
            select(SessionWindow)
            .where(SessionWindow.session_id == "sess-1")
            .order_by(SessionWindow.idx)
        ).all()
    assert len(windows) == 3
    clip_sha256 = {}
    for window in windows:
        upload = _clip_upload(root / "camera", key, window, seed=window.idx)
        assert h.upload(upload)[-1].state is AckState.COMPLETE
        clip_sha256[upload.upload_id] = upload.manifest.sha256
    keeper = VerdictKeeper(h.sessions, h.settings, h.clock)
    context = ApiContext(h.settings, h.sessions, h.store, keeper.recompute, clock=h.clock)
    client = TestClient(create_app(context))
    for kind, minutes, seed in (("opening", 0, 1), ("closing", 29, 2)):
        photo = make_photo(
            taken_at=SESSION_START + timedelta(minutes=minutes),
            lat=LAT,
            lon=LON,
            scene_seed=seed,
            size=(320, 240),
        )
        posted = client.post(
            f"/api/v1/sessions/sess-1/photos/{kind}",
            files={"file": (f"{kind}.jpg", photo)},
            headers={"Authorization": f"Bearer {LECTURER_TOKEN}"},
        )
        assert posted.status_code == 201, posted.text
    clock.advance((AFTER - clock.now()).total_seconds())
    keeper.recompute({"sess-1"})
    tokens = {}
    with h.sessions.begin() as db:
        for role, scope in (
            (Role.SUPERVISOR, {}),
            (Role.ADMIN, {}),
            (Role.INSTITUTION, {"institution_id": "school"}),
            (Role.INSTITUTION, {"institution_id": "other"}),
        ):
            name = scope.get("institution_id", role.value)
            tokens[name] = create_token(db, role, clock.now(), name=name, **scope)[1]
    tokens["lecturer"] = LECTURER_TOKEN
    try:
        yield World(h, client, settings, tokens, clip_sha256, root)
    finally:
        h.close()


def _auth(world: World, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.tokens[who]}"}


def _exported_rows(world: World) -> list[AuditEntry]:
    with world.harness.sessions() as db:
        query = select(AuditEntry).where(AuditEntry.action == "exported").order_by(AuditEntry.seq)
        return list(db.scalars(query))


@pytest.fixture(scope="module")
def case_zip(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh export of sess-1 by the supervisor, saved where an auditor would keep it."""
    answer = world.client.get("/api/v1/sessions/sess-1/export", headers=_auth(world, "supervisor"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert "classcam-export-sess-1-" in answer.headers["content-disposition"]
    assert answer.headers["x-archive-sha256"] == hashlib.sha256(answer.content).hexdigest()
    path = tmp_path_factory.mktemp("auditor") / "case.zip"
    path.write_bytes(answer.content)
    return path


def run_verify(archive: Path, *args: str, script: Path | None = None) -> tuple[int, str]:
    """``python -I verify.py ARCHIVE ...`` in the archive's folder (outside the repository),
    with the verify.py the archive carries unless ``script`` is given."""
    folder = archive.parent
    if script is None:
        script = folder / "verify.py"
        if not script.exists():
            with zipfile.ZipFile(archive) as zf:
                script.write_bytes(zf.read("verify.py"))
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(archive), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def _rewrite(
    source: Path, target: Path, change: Callable[[dict[str, bytes]], None]
) -> dict[str, bytes]:
    """A copy of the zip ``source`` at ``target`` with ``change`` applied to its members."""
    with zipfile.ZipFile(source) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return members


def _flip(data: bytes, at: int | None = None) -> bytes:
    index = len(data) // 2 if at is None else at
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _names(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        return zf.namelist()


def _member(archive: Path, prefix: str, suffix: str = "") -> str:
    return next(n for n in sorted(_names(archive)) if n.startswith(prefix) and n.endswith(suffix))


def test_a_fresh_export_verifies_offline_outside_the_repository(
    world: World, case_zip: Path
) -> None:
    names = set(_names(case_zip))
    clips = sorted(n for n in names if n.startswith("clips/"))
    assert len(clips) == 3 and all(n.endswith(".mp4") for n in clips)
    assert len([n for n in names if n.startswith("photos/") and n.endswith(".jpg")]) == 2
    assert {f"manifests/dev-1/{u}.json" for u in world.clip_sha256} <= names
    assert {"keys/devices/dev-1.pub", "keys/server-export.pub", "sessions/sess-1.json"} <= names
    assert {"audit/chain.json", "MANIFEST.json", "MANIFEST.sig", "verify.py", "README.txt"} <= names
    with zipfile.ZipFile(case_zip) as zf:
        # verify.py is the repository's source, byte for byte; the manifests are as received.
        assert zf.read("verify.py") == Path(export_verify.__file__).read_bytes()
        manifest = json.loads(zf.read("MANIFEST.json"))
        for upload_id, sha in world.clip_sha256.items():
            signed = json.loads(zf.read(f"manifests/dev-1/{upload_id}.json"))
            assert signed["sha256"] == sha and "signature" in signed
        for clip in manifest["clips"]:
            assert hashlib.sha256(zf.read(clip["file"])).hexdigest() == clip["sha256"]
        actions = {
            json.loads(zf.read(f"audit/{seq}.json"))["action"] for seq in manifest["audit_entries"]
        }
        evidence = json.loads(zf.read("sessions/sess-1.json"))
        readme = zf.read("README.txt").decode()
    assert {"clip_stored", "photo_received", "verdict_changed"} <= actions
    assert [w["clip"]["sha256"] for w in evidence["windows"]] == list(world.clip_sha256.values())
    assert "核验" in readme and "verify.py" in readme and "To check it" in readme
    assert manifest["exported_by"].startswith("supervisor:supervisor#token")

    status, out = run_verify(case_zip)
    assert status == 0, out
    assert "核验通过" in out and "会话 1 个，片段 3 个，照片 2 张" in out
    assert f"链头 {manifest['audit_head']['hash']}" in out
    status, out = run_verify(case_zip, "--lang", "en")
    assert status == 0, out
    assert "VERIFIED" in out and "1 session(s), 3 clip(s), 2 photo(s)" in out
    assert "not pinned" in out

    # The extracted folder verifies too.
    folder = case_zip.parent / "extracted"
    with zipfile.ZipFile(case_zip) as zf:
        zf.extractall(folder)
    status, out = run_verify(folder, "--lang", "en", script=folder / "verify.py")
    assert status == 0, out


def test_verify_py_imports_only_the_standard_library_and_cryptography() -> None:
    tree = ast.parse(Path(export_verify.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names - {"__future__"} == {"cryptography"}


@pytest.mark.parametrize(
    "target",
    [
        "clips/",
        "photos/",
        "manifests/",
        "audit/1",
        "audit/chain.json",
        "MANIFEST.json",
        "sessions/",
        "keys/devices/",
    ],
)
def test_one_changed_byte_fails_naming_the_file(
    case_zip: Path, tmp_path: Path, target: str
) -> None:
    name = _member(case_zip, target)
    tampered = tmp_path / "case.zip"

    def change(members: dict[str, bytes]) -> None:
        # A byte inside a JSON string value where there is one, so the file still parses.
        data = members[name]
        at = data.find(b'"hash": "') + 12 if name.startswith("audit/") else None
        members[name] = _flip(data, at)

    _rewrite(case_zip, tampered, change)
    status, out = run_verify(tampered, "--lang", "en")
    assert status == 1, out
    failures = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert failures and failures[0].startswith(f"FAIL {name}: "), out
    assert "VERIFICATION FAILED" in out


def test_a_file_added_or_removed_fails_naming_it(case_zip: Path, tmp_path: Path) -> None:
    photo = _member(case_zip, "photos/")
    added, removed = tmp_path / "added.zip", tmp_path / "removed.zip"
    _rewrite(case_zip, added, lambda m: m.update({"clips/999.mp4": m[photo]}))
    _rewrite(case_zip, removed, lambda m: m.pop(photo))
    status, out = run_verify(added, "--lang", "en")
    assert status == 1 and "FAIL clips/999.mp4: not listed in MANIFEST.json" in out, out
    status, out = run_verify(removed, "--lang", "en")
    assert status == 1 and f"FAIL {photo}: listed in MANIFEST.json but missing" in out, out


def test_a_pinned_server_key_passes_and_another_key_fails(
    world: World, case_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(
            [
                "--data-dir",
                str(world.root),
                "--database-url",
                world.settings.database_url,
                "export-key",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    pinned = tmp_path / "bureau.pem"
    pinned.write_text(printed.out)
    fingerprint = printed.err.split("fingerprint ")[1].strip()
    status, out = run_verify(case_zip, "--server-key", str(pinned), "--lang", "en")
    assert status == 0, out
    assert f"server export key fingerprint: {fingerprint}" in out and "(the key you pinned)" in out

    stranger = tmp_path / "stranger.pub"
    stranger.write_text(public_key_b64(generate_private_key()))
    status, out = run_verify(case_zip, "--server-key", str(stranger), "--lang", "en")
    assert status == 1, out
    assert "FAIL keys/server-export.pub: the server key in the archive" in out
    assert "FAIL MANIFEST.json: its signature MANIFEST.sig does not verify" in out


def _resign(
    source: Path, target: Path, key: Ed25519PrivateKey, change: Callable[[dict[str, bytes]], None]
) -> None:
    """``source`` with ``change`` applied, its file list recomputed and MANIFEST.json signed
    again with ``key``: what a forger holding a signing key (or a dishonest server) makes."""

    def forge(members: dict[str, bytes]) -> None:
        change(members)
        manifest = json.loads(members["MANIFEST.json"])
        manifest["files"] = [
            {"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in sorted(members.items())
            if n not in ("MANIFEST.json", "MANIFEST.sig")
        ]
        members["MANIFEST.json"] = json.dumps(manifest).encode()
        members["MANIFEST.sig"] = base64.b64encode(key.sign(members["MANIFEST.json"]))

    _rewrite(source, target, forge)


def test_a_forger_with_another_signing_key_passes_only_unpinned(
    world: World, case_zip: Path, tmp_path: Path
) -> None:
    forger = generate_private_key()
    clip = _member(case_zip, "clips/")
    forged = tmp_path / "forged.zip"

    def swap(members: dict[str, bytes]) -> None:
        members[clip] = _flip(members[clip])
        members["keys/server-export.pub"] = public_key_b64(forger).encode()

    _resign(case_zip, forged, forger, swap)
    status, out = run_verify(forged, "--lang", "en")
    assert status == 1, out  # the clip no longer matches its device-signed manifest
    assert f"FAIL {clip}: the clip's SHA-256 is" in out and "its signed manifest" in out
    real = load_export_key(world.settings.export_key_file, create=False).public_key()
    assert export_verify.fingerprint(real) not in out  # the fingerprint gives the forger away
    pinned = tmp_path / "bureau.pub"
    pinned.write_text(base64.b64encode(export_verify.raw_public_key(real)).decode())
    status, out = run_verify(forged, "--server-key", str(pinned), "--lang", "en")
    assert status == 1 and "FAIL MANIFEST.json: its signature" in out, out


def _edit_json(members: dict[str, bytes], name: str, edit: Callable[[Any], None]) -> None:
    value = json.loads(members[name])
    edit(value)
    members[name] = json.dumps(value).encode()


def test_contents_the_server_key_signed_are_still_checked_against_each_other(
    world: World, case_zip: Path, tmp_path: Path
) -> None:
    """Even signed with the real server key, contents that contradict the device signatures,
    the audit entries or the chain fail, each naming its file."""
    key = load_export_key(world.settings.export_key_file, create=False)
    manifest = json.loads(zipfile.ZipFile(case_zip).read("MANIFEST.json"))
    clip, photo = manifest["clips"][0], manifest["photos"][0]
    entry = f"audit/{manifest['audit_entries'][0]}.json"
    head_seq = manifest["audit_head"]["seq"]
    cases: list[tuple[Callable[[dict[str, bytes]], None], str]] = [
        # Another clip under a manifest edited to match: the device's signature breaks.
        (
            lambda m: _edit_json(m, clip["manifest"], lambda v: v.update(sha256="0" * 64)),
            f"FAIL {clip['manifest']}: the device signature does not verify",
        ),
        (
            lambda m: m.update({photo["file"]: _flip(m[photo["file"]])}),
            f"FAIL {photo['file']}: the photo's SHA-256 is",
        ),
        (
            lambda m: _edit_json(m, entry, lambda v: v.update(hash="f" * 64)),
            f"FAIL {entry}: its hash is not that of row",
        ),
        (
            lambda m: _edit_json(m, "audit/chain.json", lambda v: v["rows"].pop(1)),
            "FAIL audit/chain.json: the chain jumps from seq",
        ),
        (
            lambda m: _edit_json(
                m, "audit/chain.json", lambda v: v["rows"][1].__setitem__(1, "e" * 64)
            ),
            "FAIL audit/chain.json: row",
        ),
        (
            lambda m: _edit_json(m, "audit/chain.json", lambda v: v["rows"].pop()),
            f"but the signed head is seq {head_seq}",
        ),
        # Signed but not shaped as verify.py reads it: named, not a traceback.
        (
            lambda m: _edit_json(m, "MANIFEST.json", lambda v: v["clips"][0].pop("file")),
            "FAIL MANIFEST.json: malformed: KeyError",
        ),
    ]
    for index, (change, expected) in enumerate(cases):
        forged = tmp_path / f"forged-{index}.zip"
        _resign(case_zip, forged, key, change)
        status, out = run_verify(forged, "--lang", "en")
        assert status == 1 and expected in out, (index, out)


def test_a_checkpoint_written_down_earlier_is_compared(case_zip: Path) -> None:
    manifest = json.loads(zipfile.ZipFile(case_zip).read("MANIFEST.json"))
    chain = json.loads(zipfile.ZipFile(case_zip).read("audit/chain.json"))
    seq, _, digest = chain["rows"][-2]
    status, out = run_verify(case_zip, "--checkpoint", f"{seq}:{digest}", "--lang", "en")
    assert status == 0 and f"checkpoint seq {seq} matches the chain" in out, out
    status, out = run_verify(case_zip, "--checkpoint", f"{seq}:{'a' * 64}", "--lang", "en")
    assert status == 1 and f"checkpoint seq {seq}: the chain has {digest}" in out, out
    assert manifest["audit_head"]["seq"] == chain["rows"][-1][0]


def test_who_may_export_what(world: World) -> None:
    client = world.client
    own = client.get("/api/v1/sessions/sess-1/export", headers=_auth(world, "school"))
    assert own.status_code == 200 and own.content.startswith(b"PK")
    before = len(_exported_rows(world))
    for who, path, status in (
        ("other", "/api/v1/sessions/sess-1/export", 403),
        ("lecturer", "/api/v1/sessions/sess-1/export", 403),
        ("supervisor", "/api/v1/sessions/no-such/export", 404),
        ("school", "/api/v1/sessions/sess-other/export", 403),
    ):
        assert client.get(path, headers=_auth(world, who)).status_code == status, (who, path)
    assert client.get("/api/v1/sessions/sess-1/export").status_code == 401
    # A case with one session not the institution's is refused whole.
    mixed = {"session_ids": ["sess-1", "sess-other"]}
    assert (
        client.post("/api/v1/exports", json=mixed, headers=_auth(world, "school")).status_code
        == 403
    )
    assert (
        client.post("/api/v1/exports", json=mixed, headers=_auth(world, "lecturer")).status_code
        == 403
    )
    many = {"session_ids": [f"s-{n}" for n in range(51)]}
    assert (
        client.post("/api/v1/exports", json=many, headers=_auth(world, "admin")).status_code == 422
    )
    bad = {"session_ids": ["../../etc/passwd" + "x" * 64]}
    assert (
        client.post("/api/v1/exports", json=bad, headers=_auth(world, "admin")).status_code == 422
    )
    assert len(_exported_rows(world)) == before  # refusals export nothing


def test_a_session_not_over_is_refused(world: World) -> None:
    answer = world.client.get("/api/v1/sessions/sess-2/export", headers=_auth(world, "admin"))
    # sess-2 ended at AFTER - 20 min; a session still running keeps its windows secret.
    assert answer.status_code == 200
    with world.harness.sessions.begin() as db:
        row = db.get(ClassSession, "sess-2")
        assert row is not None
        row.duration_s = 24 * 3600.0
    try:
        refused = world.client.get("/api/v1/sessions/sess-2/export", headers=_auth(world, "admin"))
        assert refused.status_code == 409 and "not over" in refused.json()["detail"]
    finally:
        with world.harness.sessions.begin() as db:
            row = db.get(ClassSession, "sess-2")
            assert row is not None
            row.duration_s = 30 * 60.0


def test_every_export_is_in_the_audit_log_with_the_archives_sha256(
    world: World, tmp_path: Path
) -> None:
    case = {"session_ids": ["sess-1", "sess-2", "sess-1"]}
    answer = world.client.post("/api/v1/exports", json=case, headers=_auth(world, "admin"))
    assert answer.status_code == 200, answer.text
    digest = hashlib.sha256(answer.content).hexdigest()
    rows = [r for r in _exported_rows(world) if json.loads(r.details)["sha256"] == digest]
    assert sorted(r.subject_id for r in rows) == ["sess-1", "sess-2"]
    details = json.loads(rows[0].details)
    assert details["format"] == "zip" and details["bytes"] == len(answer.content)
    # Each row names its own session only; the archive's SHA-256 links the case's rows.
    assert details["case_sessions"] == 2
    assert all(
        other not in r.details
        for r in rows
        for other in ("sess-1", "sess-2")
        if other != r.subject_id
    )
    assert all(r.actor.startswith("admin:admin#token") for r in rows)
    archive = tmp_path / "case.zip"
    archive.write_bytes(answer.content)
    status, out = run_verify(archive, "--lang", "en")
    assert status == 0 and "2 session(s), 3 clip(s), 2 photo(s)" in out, out

    # The CLI records its exports too, as cli:<user>, and its file verifies.
    out_file = tmp_path / "cli" / "case.zip"
    out_file.parent.mkdir()
    argv = ["--data-dir", str(world.root), "--database-url", world.settings.database_url]
    assert cli.main([*argv, "export", "--session", "sess-1", "--out", str(out_file)]) == 0
    digest = hashlib.sha256(out_file.read_bytes()).hexdigest()
    [row] = [r for r in _exported_rows(world) if json.loads(r.details)["sha256"] == digest]
    assert row.actor.startswith("cli:") and row.subject_id == "sess-1"
    assert list(out_file.parent.iterdir()) == [out_file]  # no temporary file left
    status, out = run_verify(out_file, "--lang", "en")
    assert status == 0, out
    # The chain is still whole with the export rows appended.
    with world.harness.sessions() as db:
        assert audit.verify(db).ok


def test_a_chain_that_does_not_verify_is_not_exported(world: World, tmp_path: Path) -> None:
    with world.harness.sessions() as db:
        row = db.get(ClassSession, "sess-1")
    assert row is not None
    before = len(_exported_rows(world))
    with pytest.raises(ExportIntegrityError, match="does not verify with the audit key"):
        export_sessions(
            world.harness.sessions,
            world.harness.store,
            [row],
            directory=tmp_path,
            audit_key=audit.AuditKey(b"\x01" * 32),
            signing_key=load_export_key(world.settings.export_key_file),
            now=world.harness.clock.now(),
            actor="test",
            reader_scope=true(),
            lang="zh-CN",
            tz=ZoneInfo("Asia/Shanghai"),
        )
    assert list(tmp_path.iterdir()) == [] and len(_exported_rows(world)) == before


def test_an_archive_with_a_name_twice_or_outside_is_unreadable(
    case_zip: Path, tmp_path: Path
) -> None:
    twice = tmp_path / "twice.zip"
    shutil.copyfile(case_zip, twice)
    with zipfile.ZipFile(twice, "a") as zf, pytest.warns(UserWarning):
        zf.writestr("README.txt", b"another README")
    status, out = run_verify(twice, "--lang", "en")
    assert status == 2 and "twice: README.txt" in out, out
    outside = tmp_path / "outside.zip"
    buffer = io.BytesIO(case_zip.read_bytes())
    with zipfile.ZipFile(buffer, "a") as zf:
        zf.writestr("../evil.py", b"")
    outside.write_bytes(buffer.getvalue())
    status, out = run_verify(outside, "--lang", "en")
    assert status == 2 and "unsafe name" in out, out


def test_a_damaged_evidence_store_is_not_exported(world: World) -> None:
    """A stored clip that no longer has the SHA-256 it arrived with is the operator's to find:
    the server refuses rather than hand out an archive that fails (or a story that passes)."""
    with world.harness.sessions() as db:
        clip = db.scalars(select(Clip).where(Clip.session_id == "sess-1")).first()
    assert clip is not None
    path = world.harness.store.path_of(clip.path)
    original, mode = path.read_bytes(), path.stat().st_mode
    before = len(_exported_rows(world))
    path.chmod(0o600)
    path.write_bytes(_flip(original))
    try:
        refused = world.client.get("/api/v1/sessions/sess-1/export", headers=_auth(world, "admin"))
    finally:
        path.write_bytes(original)
        path.chmod(mode)
    assert refused.status_code == 409, refused.text
    assert f"clip {clip.id}" in refused.json()["detail"] and "damaged" in refused.json()["detail"]
    assert len(_exported_rows(world)) == before
    # Nothing left behind: neither this refused archive nor the ones sent before.
    assert list((world.root / "exports").iterdir()) == []


def test_a_large_clip_is_streamed_into_the_archive_and_through_verify(tmp_path: Path) -> None:
    """Clips may be hundreds of MB: the archive copies them in blocks and verify.py hashes
    them in blocks, so neither holds a clip (let alone the archive) in memory."""
    big = tmp_path / "big.mp4"
    with big.open("wb") as fh:
        for _ in range(48):
            fh.write(os.urandom(1024 * 1024))
    tracemalloc.start()
    try:
        with zipfile.ZipFile(tmp_path / "big.zip", "w", allowZip64=True) as zf:
            archive = ArchiveWriter(zf, AFTER)
            digest = archive.add_file("clips/1.mp4", big)
        export = export_verify.Export(tmp_path / "big.zip")
        assert export.digest("clips/1.mp4") == (digest, big.stat().st_size)
        export.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == hashlib.sha256(big.read_bytes()).hexdigest()
    assert peak < 8 * 1024 * 1024, peak


def test_a_case_row_does_not_name_another_institutions_session(world: World) -> None:
    """A case may join two institutions' sessions; each institution later exports its own
    session, whose archive carries the case's row about it: that row must not name the other
    institution's session."""
    case = {"session_ids": ["sess-1", "sess-other"]}
    answer = world.client.post("/api/v1/exports", json=case, headers=_auth(world, "admin"))
    assert answer.status_code == 200, answer.text
    digest = hashlib.sha256(answer.content).hexdigest()
    own = world.client.get("/api/v1/sessions/sess-other/export", headers=_auth(world, "other"))
    assert own.status_code == 200, own.text
    with zipfile.ZipFile(io.BytesIO(own.content)) as zf:
        entries = [json.loads(zf.read(n)) for n in zf.namelist() if n.startswith("audit/")]
    exported = [e for e in entries if e.get("action") == "exported"]
    assert [json.loads(e["details"])["sha256"] for e in exported] == [digest]
    assert exported[0]["subject_id"] == "sess-other"
    assert not [e["seq"] for e in entries if "sess-1" in json.dumps(e)]


def _shift(value: str, minutes: int) -> str:
    from datetime import datetime

    return (datetime.fromisoformat(value) + timedelta(minutes=minutes)).isoformat()


def test_a_clip_claimed_for_another_session_or_window_fails(
    world: World, case_zip: Path, tmp_path: Path
) -> None:
    """Re-signed with the real server key, an archive that passes one session's clips off as
    another's, or moves a window away from what the camera was asked to cut, fails: the
    device-signed manifest names the session, the command and the requested window."""
    key = load_export_key(world.settings.export_key_file, create=False)
    manifest = json.loads(zipfile.ZipFile(case_zip).read("MANIFEST.json"))
    clip = manifest["clips"][0]
    with world.harness.sessions() as db:
        other_cmd = db.scalars(
            select(SessionWindow.cmd_id).where(SessionWindow.session_id == "sess-2")
        ).first()

    def as_sess_2(members: dict[str, bytes], *, index_too: bool, bare: bool = False) -> None:
        # sess-1's evidence and clips presented as sess-2's (a session with no clip of its
        # own), its windows moved to sess-2's times, the clips' index edited to match; or
        # (``bare``) the clips only carried along, no window showing them.
        evidence = json.loads(members.pop("sessions/sess-1.json"))
        evidence["id"] = evidence["session"]["id"] = "sess-2"
        for window in evidence["windows"]:
            window["start"], window["end"] = (_shift(window[k], 60) for k in ("start", "end"))
            if bare:
                window["cmd_id"] = window["clip"] = None
        members["sessions/sess-2.json"] = json.dumps(evidence).encode()

        def claim(m: dict[str, Any]) -> None:
            m["sessions"] = ["sess-2"]
            if index_too:
                for c in m["clips"]:
                    c["session_id"] = "sess-2"

        _edit_json(members, "MANIFEST.json", claim)

    def moved_window(members: dict[str, bytes]) -> None:
        def move(evidence: dict[str, Any]) -> None:
            window = evidence["windows"][0]
            window["start"], window["end"] = (_shift(window[k], 5) for k in ("start", "end"))

        _edit_json(members, "sessions/sess-1.json", move)

    def other_command(members: dict[str, bytes]) -> None:
        _edit_json(
            members,
            "sessions/sess-1.json",
            lambda v: v["windows"][0].__setitem__("cmd_id", other_cmd),
        )

    cases: list[tuple[Callable[[dict[str, bytes]], None], list[str]]] = [
        (
            lambda m: as_sess_2(m, index_too=False),
            [
                "FAIL sessions/sess-2.json: window 1 (session sess-2, command cut-sess-1-0)"
                f" shows clip {clip['id']}, whose device-signed manifest is for session sess-1",
            ],
        ),
        (
            lambda m: as_sess_2(m, index_too=False, bare=True),
            [
                f"FAIL {clip['file']}: clip {clip['id']}'s device-signed manifest is for"
                " session sess-1 (command cut-sess-1-0): not a session this archive exports",
            ],
        ),
        (
            lambda m: as_sess_2(m, index_too=True),
            [
                f"FAIL {clip['file']}: MANIFEST.json gives the clip's session_id as sess-2,"
                f" its device-signed manifest {clip['manifest']} says sess-1",
            ],
        ),
        (moved_window, ["FAIL sessions/sess-1.json: window 1 (", "is not within what clip"]),
        (
            other_command,
            [f"FAIL sessions/sess-1.json: window 1 (session sess-1, command {other_cmd})"],
        ),
    ]
    for index, (change, expected) in enumerate(cases):
        forged = tmp_path / f"forged-{index}.zip"
        _resign(case_zip, forged, key, change)
        status, out = run_verify(forged, "--lang", "en", script=Path(export_verify.__file__))
        assert status == 1, (index, out)
        assert all(e in out for e in expected), (index, out)


def test_windows_repeated_dropped_or_reordered_fail(
    world: World, case_zip: Path, tmp_path: Path
) -> None:
    """Re-signed with the real server key, a session whose windows all show window 1's clip
    (each copy keeping its own number), name one command twice, or come out of order fails,
    naming the session file: each window's clip is only tied to that window's own command,
    so one recording must not stand for several windows."""
    key = load_export_key(world.settings.export_key_file, create=False)
    evidence = json.loads(zipfile.ZipFile(case_zip).read("sessions/sess-1.json"))
    windows = evidence["windows"]
    assert len(windows) >= 2 and windows[0]["clip"] is not None
    assert [(w["index"], w["number"]) for w in windows] == [(i, i + 1) for i in range(len(windows))]
    name = "FAIL sessions/sess-1.json:"

    def every_window_is_window_1(v: dict[str, Any]) -> None:
        for window in v["windows"][1:]:
            number = window["number"]
            window.clear()
            window.update(json.loads(json.dumps(v["windows"][0])), number=number)

    def same_clip_only(v: dict[str, Any]) -> None:
        v["windows"][1]["clip"] = v["windows"][0]["clip"]
        v["windows"][1]["cmd_id"] = v["windows"][0]["cmd_id"]

    cases: list[tuple[Callable[[Any], None], list[str]]] = [
        (
            every_window_is_window_1,
            [
                f"{name} the windows' entry 2 has index 0 (number 2), not index 1",
                f"{name} window 2 shows the same clip as window 1 ({windows[0]['clip']['id']})",
                f"{name} window 2 has the same command as window 1 ({windows[0]['cmd_id']})",
            ],
        ),
        (
            same_clip_only,
            [f"{name} window 2 shows the same clip as window 1", "same command as window 1"],
        ),
        (
            lambda v: v["windows"].reverse(),
            [f"{name} the windows' entry 1 has index {len(windows) - 1}"],
        ),
        (lambda v: v["windows"].pop(0), [f"{name} the windows' entry 1 has index 1"]),
    ]
    for index, (edit, expected) in enumerate(cases):
        forged = tmp_path / f"forged-{index}.zip"

        def change(members: dict[str, bytes], edit: Callable[[Any], None] = edit) -> None:
            _edit_json(members, "sessions/sess-1.json", edit)

        _resign(case_zip, forged, key, change)
        status, out = run_verify(forged, "--lang", "en", script=Path(export_verify.__file__))
        assert status == 1, (index, out)
        assert all(e in out for e in expected), (index, out)
    status, out = run_verify(case_zip, "--lang", "en", script=Path(export_verify.__file__))
    assert status == 0, out


def test_bytes_the_zip_directory_does_not_account_for_are_refused(
    case_zip: Path, tmp_path: Path
) -> None:
    """A local entry (another "clip") slipped in before the real archive: zip readers that
    believe the central directory skip it, a streaming unzip shows it. verify refuses the
    archive, saying where; so it does for bytes after the end record."""
    real = case_zip.read_bytes()
    clip = _member(case_zip, "clips/")
    fake = io.BytesIO()
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(clip, b"NOT THE CLIP " * 100)
    local_only = fake.getvalue()[: fake.getvalue().find(b"PK\x01\x02")]
    first = min(zipfile.ZipFile(case_zip).infolist(), key=lambda i: i.header_offset).filename
    prefixed, trailed = tmp_path / "prefixed.zip", tmp_path / "trailed.zip"
    prefixed.write_bytes(local_only + real)
    trailed.write_bytes(real + b"\0" * 7)
    script = Path(export_verify.__file__)
    status, out = run_verify(prefixed, "--lang", "en", script=script)
    assert status == 2, out
    assert f"bytes 0-{len(local_only) - 1} before {first!r} belong to no entry" in out, out
    status, out = run_verify(trailed, "--lang", "en", script=script)
    assert status == 2 and "7 bytes follow the end record" in out, out


def test_a_chain_that_is_not_whole_json_is_named(
    world: World, case_zip: Path, tmp_path: Path
) -> None:
    """verify.py reads audit/chain.json a block at a time (it may be millions of rows): a file
    cut short, with data after its end or a row of another shape still fails, naming it."""
    key = load_export_key(world.settings.export_key_file, create=False)
    chain = zipfile.ZipFile(case_zip).read("audit/chain.json")
    cases = {
        "cut": chain[: len(chain) // 2],
        "trailing": chain + b"[1, 2, 3]",
        "shape": chain.replace(b'"rows": [\n  [', b'"rows": [\n  ["x", 0], ['),
    }
    for label, data in cases.items():
        forged = tmp_path / f"{label}.zip"
        _resign(case_zip, forged, key, lambda m, data=data: m.update({"audit/chain.json": data}))
        status, out = run_verify(forged, "--lang", "en", script=Path(export_verify.__file__))
        assert status == 1 and "FAIL audit/chain.json: malformed" in out, (label, out)
