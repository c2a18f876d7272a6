"""Photos worth trusting, through the API and the importer on a real SQLite database: the
configured zone, impossible dates as 422, reuse only of the later use, double booking."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from common.signing import generate_private_key, public_key_b64
from ingest_server.api import create_app
from ingest_server.api.app import ApiContext
from ingest_server.db import make_engine, make_session_factory
from ingest_server.models import ClassSession
from ingest_server.sessions import create_session
from ingest_server.settings import Settings
from ingest_server.setup_import import ImportFailed, import_rows, read_rows
from ingest_server.verdicts import VerdictKeeper
from simulators.phone import crop, make_photo
from tests.ingest_server.test_server_flow import T0, TOKEN, setup_doc, world  # noqa: F401

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOM = (31.2304, 121.4737)


def client_for(world: dict[str, Any]) -> TestClient:  # noqa: F811
    context = ApiContext(
        world["settings"],
        world["factory"],
        world["store"],
        recompute=lambda ids: None,
        clock=world["clock"],
    )
    return TestClient(create_app(context))


def post(client: TestClient, session: str, kind: str, data: bytes, **form: str) -> Any:
    return client.post(
        f"/api/v1/sessions/{session}/photos/{kind}",
        files={"file": ("p.jpg", data)},
        headers=AUTH,
        data=form,
    )


def test_exif_time_without_offset_is_read_in_the_configured_zone(world: dict[str, Any]) -> None:  # noqa: F811
    world["settings"].timezone = "Asia/Kolkata"  # +05:30, not Beijing
    taken = T0 + timedelta(hours=1)
    data = make_photo(
        taken_at=taken,
        lat=ROOM[0],
        lon=ROOM[1],
        scene_seed=1,
        offset="+05:30",
        offset_tag=None,
        gps_stamp=False,
    )
    body = post(client_for(world), "s1", "opening", data).json()
    assert body["taken_at"] == taken.isoformat() and body["time_source"] == "exif_tz"


@pytest.mark.parametrize(
    "taken_at", ["0001-01-01T00:00:00+08:00", "9999-12-31T23:00:00-05:00", "2199-01-01T00:00:00Z"]
)
def test_impossible_app_dates_are_422_not_500(world: dict[str, Any], taken_at: str) -> None:  # noqa: F811
    bare = make_photo(taken_at=None, lat=None, lon=None, scene_seed=2, with_exif=False)
    response = post(
        client_for(world),
        "s1",
        "opening",
        bare,
        taken_at=taken_at,
        lat="31.23",
        lon="121.47",
        datum="wgs84",
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["reason"] == "bad_time"


def test_impossible_exif_date_is_422_not_500(world: dict[str, Any]) -> None:  # noqa: F811
    data = make_photo(
        taken_at=T0, lat=ROOM[0], lon=ROOM[1], scene_seed=3, raw_datetime="0001:01:01 00:00:00"
    )
    response = post(client_for(world), "s1", "opening", data)
    assert response.status_code == 422 and response.json()["detail"]["reason"] == "bad_time"


def test_only_the_later_session_is_marked_reused(world: dict[str, Any]) -> None:  # noqa: F811
    factory, clock = world["factory"], world["clock"]
    with factory.begin() as db:
        create_session(
            db,
            world["settings"],
            session_id="s2",
            class_id="cls",
            classroom_id="room",
            lecturer_id="lect",
            start=T0 + timedelta(days=1),
            duration_s=3600,
        )
    client = client_for(world)
    honest = make_photo(taken_at=T0 + timedelta(hours=1), lat=ROOM[0], lon=ROOM[1], scene_seed=5)
    assert post(client, "s1", "opening", honest).status_code == 201
    clock.advance(3600)
    # The copy comes back cropped and re-encoded, EXIF gone, with typed-in fields.
    stolen = crop(honest, 0.05, quality=60)
    response = post(
        client,
        "s2",
        "opening",
        stolen,
        taken_at=(T0 + timedelta(days=1)).isoformat(),
        lat=str(ROOM[0]),
        lon=str(ROOM[1]),
        datum="wgs84",
    )
    assert response.status_code == 201, response.text
    keeper = VerdictKeeper(factory, world["settings"], clock)
    with factory() as db:
        first = keeper.facts.evidence(db, db.get(ClassSession, "s1"))
        later = keeper.facts.evidence(db, db.get(ClassSession, "s2"))
    assert [p.reused_from for p in first.photos] == [None]
    (reused,) = later.photos
    assert reused.reused_from == "s1" and reused.reuse is not None
    assert reused.reuse.distance.bits <= reused.reuse.distance.max_bits


def test_import_refuses_one_lecturer_in_two_classrooms_at_once(
    tmp_path: Path, sqlite_url: str
) -> None:
    doc = setup_doc(public_key_b64(generate_private_key()))
    doc["classrooms"].append(dict(doc["classrooms"][0], id="far", lat=31.41, lon=121.47))
    doc["sessions"].append(dict(doc["sessions"][0], id="s2", classroom_id="far"))
    doc["sessions"].append(
        dict(
            doc["sessions"][0],
            id="s3",
            classroom_id="far",
            start=(T0 + timedelta(hours=2, minutes=30)).isoformat(),
        )
    )  # right after s1: back to back is fine
    path = tmp_path / "setup.json"
    path.write_text(json.dumps(doc))
    factory = make_session_factory(make_engine(sqlite_url))
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url)
    with pytest.raises(ImportFailed) as info, factory.begin() as db:
        import_rows(db, read_rows(path), settings)
    messages = [str(e) for e in info.value.errors]
    assert len(messages) == 2, messages
    assert all("s1" in m and "s2" in m and "two classrooms at once" in m for m in messages)
    assert not any("s3" in m for m in messages)
    with factory() as db:
        assert db.query(ClassSession).count() == 0
