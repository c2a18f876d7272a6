"""The setup import keeps a session inside one institution and dates a camera move by the
server's clock: both decide which school sees which evidence (``evidence.scope``)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_evidence_api import T0, school_doc

from common.clock import VirtualClock
from ingest_server.db import SessionFactory, make_engine, make_session_factory
from ingest_server.models import ClassSession, Device
from ingest_server.settings import Settings
from ingest_server.setup_import import ImportFailed, import_rows, read_rows

KEYS = {room: Ed25519PrivateKey.generate() for room in ("a1", "a2", "b1")}
LATER = T0 + timedelta(days=30)


def _import(
    factory: SessionFactory, tmp_path: Path, doc: dict[str, Any], settings: Settings
) -> dict[str, int]:
    path = tmp_path / f"setup-{len(list(tmp_path.glob('setup-*')))}.json"
    path.write_text(json.dumps(doc))
    with factory.begin() as db:
        return import_rows(db, read_rows(path), settings)


def _session(session_id: str, class_id: str, room: str, lecturer: str) -> dict[str, object]:
    return {
        "id": session_id,
        "class_id": class_id,
        "classroom_id": room,
        "lecturer_id": lecturer,
        "start": LATER.isoformat(),
        "duration_min": 60,
    }


@pytest.mark.parametrize(
    ("class_id", "lecturer", "field"),
    [
        ("cls-b", "la1", "class_id"),  # school-b's class in school-a's classroom
        ("cls-a", "lb1", "lecturer_id"),  # school-b's lecturer teaching there
        ("cls-b", "lb1", "class_id"),  # both: the classroom is the odd one out
    ],
)
def test_a_session_mixing_institutions_is_refused(
    tmp_path: Path, sqlite_url: str, class_id: str, lecturer: str, field: str
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    factory = make_session_factory(make_engine(sqlite_url))
    _import(factory, tmp_path, school_doc(KEYS), settings)
    good = _session("s-ok", "cls-a", "room-a2", "la2")
    mixed = _session("s-mix", class_id, "room-a1", lecturer)
    with pytest.raises(ImportFailed) as failed:
        _import(factory, tmp_path, {"sessions": [good, mixed]}, settings)
    (error,) = failed.value.errors
    assert (error.section, error.line, error.field) == ("sessions", 2, field)
    assert "different institutions" in error.message and "school-b" in error.message
    with factory() as db:
        assert db.get(ClassSession, "s-mix") is None and db.get(ClassSession, "s-ok") is None

    # The file's own rows count, not only stored ones: moving the class to school-a in the
    # same file makes the session one school's again (and a file can't sneak a move past it).
    doc = school_doc(KEYS)
    doc["classes"] = [{"id": "cls-x", "institution_id": "school-b", "name": "x"}]
    doc["sessions"] = [_session("s-x", "cls-x", "room-a1", "la1")]
    with pytest.raises(ImportFailed) as failed:
        _import(factory, tmp_path, doc, settings)
    assert [e.field for e in failed.value.errors] == ["class_id"]
    doc["classes"][0]["institution_id"] = "school-a"
    assert _import(factory, tmp_path, doc, settings)["sessions"] == 1


def test_a_camera_move_is_dated_by_the_servers_clock(tmp_path: Path, sqlite_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    clock = VirtualClock(start=T0 - timedelta(days=400))
    factory = make_session_factory(make_engine(sqlite_url), clock=clock)
    _import(factory, tmp_path, school_doc(KEYS), settings)
    with factory() as db:
        installed = db.get(Device, "cam-a1")
        assert installed is not None and installed.created_at == clock.now()
    clock.advance(3600)
    doc = school_doc(KEYS)
    del doc["sessions"]
    doc["classrooms"].append(
        {"id": "room-b2", "institution_id": "school-b", "name": "b2", "lat": 32.1, "lon": 120.0}
    )
    devices = {d["device_id"]: d for d in doc["devices"]}
    devices["cam-b1"]["classroom_id"] = "room-b2"
    devices["cam-a1"]["classroom_id"] = "room-b1"
    _import(factory, tmp_path, doc, settings)
    with factory() as db:
        moved, stayed = db.get(Device, "cam-a1"), db.get(Device, "cam-a2")
        assert moved is not None and stayed is not None
        assert moved.classroom_id == "room-b1"
        # A replay's clock, not the wall clock: a clip it took an hour ago stays school-a's.
        assert moved.classroom_since == clock.now()
        assert stayed.classroom_since is None
