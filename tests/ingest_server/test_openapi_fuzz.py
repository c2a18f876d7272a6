"""schemathesis over the API's own OpenAPI document, in process (issue 8, item 9): every
operation, with data that fits its schema and data that does not, against a real SQLite
database holding an institution, a classroom camera with its heartbeat, a lecturer, a session
that has happened (events, a clip, a photo, a verdict) and one still to come. No answer is a
5xx, and every answer is one the document declares: its status code, content type, headers
and body schema. Run as an admin, as a lecturer (the photo route is theirs), and with no token
at all (401 from every route, before anything else is looked at)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fuzz_budget import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_helpers import one_room_school
from PIL import Image
from rows import stored_clip, stored_upload
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import get_client
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.clock import VirtualClock
from common.schemas import Event, EventType
from common.signing import generate_private_key, public_key_b64
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.db import make_engine, make_session_factory
from ingest_server.models import Clip, DeviceCommand, DeviceHealth, SessionWindow
from ingest_server.sessions import record_device_event
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from ingest_server.verdicts import VerdictKeeper
from simulators.clip_files import write_mp4
from simulators.phone import make_photo

T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=4)  # the first session is over: its windows may be shown
LECTURER_TOKEN = "lecturer-app-token-0123456789"
CLIP_PATH = "clips/cam-1/2026-11-25/up-1.mp4"
ROLL_CALL = "rollcall-seeded"  # a roll call of cam-1 whose still is stored


@schemathesis.check
def not_a_server_error_but_a_silent_camera(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, except the roll call's 504: the camera did not answer in time
    (nobody answers here), declared with its typed body, which the schema checks still read."""
    roll_call = case.operation.label == "POST /api/v1/devices/{device_id}/snapshot"
    if roll_call and response.status_code == 504:
        assert response.json()["detail"]["code"] == "snapshot_timeout"
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_but_a_silent_camera,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def setup_doc(device_key: str) -> dict[str, Any]:
    """One classroom with camera ``cam-1``: a session that is over and one two days away."""
    starts = {"s-past": T0 + timedelta(hours=1), "s-next": T0 + timedelta(days=2)}
    return one_room_school("cam-1", device_key, LECTURER_TOKEN, starts)


@dataclass
class Api:
    app: FastAPI
    admin_token: str
    lecturer_token: str
    recomputed: Counter[str]


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str) -> Iterator[Api]:
    """The API on a seeded database, its clock after the first session."""
    # A feed long-poll with nothing new is held feed_max_wait_s: briefly here, so the fuzz
    # goes through the wait without spending up to 30 s on each example that asks for one.
    settings = Settings(
        data_dir=tmp_path, database_url=sqlite_url, feed_max_wait_s=0.05, snapshot_wait_s=0.05
    )
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    doc = tmp_path / "setup.json"
    doc.write_text(json.dumps(setup_doc(public_key_b64(generate_private_key()))))
    clock = VirtualClock(start=NOW)
    start = T0 + timedelta(hours=1)
    with factory.begin() as db:
        import_rows(db, read_rows(doc), settings)
    with factory.begin() as db:
        for n, (kind, at) in enumerate(
            [
                (EventType.SESSION_STARTED, start),
                (EventType.SESSION_STOPPED, start + timedelta(minutes=90)),
            ]
        ):
            event = Event(
                event_id=f"e{n}",
                device_id="cam-1",
                type=kind,
                at=at,
                session_id="s-past",
                data={"recorded_s": 5400.0},
            )
            record_device_event(db, event, NOW)
        window = db.scalars(select(SessionWindow).where(SessionWindow.session_id == "s-past"))
        first = next(iter(window))
        # Clip 1, with a real file behind it: the video route answers its bytes and ranges.
        stored_clip(
            db,
            "cam-1",
            "up-1",
            first.start - timedelta(seconds=2),
            first.end + timedelta(seconds=2),
            NOW,
            cmd_id=first.cmd_id,
            decoded=True,
            path=CLIP_PATH,
        )
        frames = [np.full((48, 64, 3), 90, dtype=np.uint8)] * 4
        mp4 = write_mp4(tmp_path / "clip.mp4", frames, fps=2).read_bytes()
        EvidenceStore(settings.evidence_dir).put_bytes(CLIP_PATH, mp4)
        db.add(
            DeviceHealth(
                device_id="cam-1",
                status="online",
                status_at=NOW,
                last_heartbeat_at=NOW,
                heartbeat=json.dumps({"device_id": "cam-1", "uptime_s": 12.5}),
            )
        )
        _, admin_token = create_token(db, Role.ADMIN, NOW, name="fuzz-admin")
        seed_roll_call(db, EvidenceStore(settings.evidence_dir))
    keeper = VerdictKeeper(factory, settings, clock)
    recomputed: Counter[str] = Counter()

    def recompute(ids: set[str]) -> None:
        recomputed.update(ids)
        keeper.recompute(ids)

    context = ApiContext(
        settings,
        factory,
        EvidenceStore(settings.evidence_dir),
        recompute=recompute,
        send_command=lambda device, command: None,
        clock=clock,
    )
    app = create_app(context)
    photo = make_photo(size=(320, 240), scene_seed=7, taken_at=start, lat=31.2304, lon=121.4737)
    with TestClient(app) as client:
        answer = client.post(
            "/api/v1/sessions/s-past/photos/opening",
            headers={"Authorization": f"Bearer {LECTURER_TOKEN}"},
            files={"file": ("p.jpg", photo, "image/jpeg")},
        )
        assert answer.status_code == 201, answer.text
        seeded = client.get(
            "/api/v1/sessions/s-past", headers={"Authorization": f"Bearer {admin_token}"}
        ).json()
    # The seed is what the fuzz reads: a verdict, a shown window with its clip, a photo.
    assert seeded["windows"] and seeded["windows"][0]["clip"] is not None
    assert seeded["photos"] and seeded["verdict"]["reasons"]
    try:
        yield Api(app, admin_token, LECTURER_TOKEN, recomputed)
    finally:
        engine.dispose()


def seed_roll_call(db: Session, store: EvidenceStore) -> None:
    """A roll call of cam-1 answered with its still, so the fuzz reaches the JPEG answer."""
    image = io.BytesIO()
    Image.new("RGB", (64, 48), "gray").save(image, "JPEG")
    jpeg = image.getvalue()
    relative = f"snapshots/{ROLL_CALL}.jpg"
    store.put_bytes(relative, jpeg)
    db.add(
        DeviceCommand(
            cmd_id=ROLL_CALL,
            device_id="cam-1",
            type="snapshot",
            payload="{}",
            created_at=NOW,
            expires_at=NOW + timedelta(minutes=15),
            sends=1,
        )
    )
    stored_upload(db, "cam-1", "up-snap", NOW)
    db.add(
        Clip(
            upload_id="up-snap",
            device_id="cam-1",
            cmd_id=ROLL_CALL,
            kind="snapshot",
            sha256=hashlib.sha256(jpeg).hexdigest(),
            size=len(jpeg),
            path=relative,
            cut_start=NOW,
            cut_end=NOW,
            duration_s=0.0,
            frames=1,
            width=64,
            height=48,
            codec="jpeg",
            stored_at=NOW,
        )
    )


def operations(app: FastAPI) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


# Path parameters that name what the database holds: without them nearly every case would ask
# for a session that does not exist, and the fuzz would not reach past the 404.
KNOWN_PATHS = {
    "session_id": ["s-past", "s-next"],
    "clip_id": [1, 1],
    "photo_id": [1, 1],
    "action": ["open", "close"],
    "kind": ["opening", "closing"],
    "device_id": ["cam-1", "cam-1"],
    "cmd_id": [ROLL_CALL, "rollcall-never-sent"],
}


def photo_cases(operation: Any) -> st.SearchStrategy[Any]:
    """The photo route with real photos and fuzzed form fields, so that it gets past
    decoding into the time, place and storage code."""
    return photo_forms().flatmap(
        lambda body: operation.as_strategy(
            generation_mode=GenerationMode.POSITIVE,
            path_parameters={"session_id": "s-past", "kind": "closing"},
            body=body,
        )
    )


def cases(operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    """Cases for ``operation``: half free, half on the seeded rows."""
    names = [p.name for p in operation.path_parameters]
    known = [
        operation.as_strategy(
            generation_mode=mode,
            path_parameters={n: KNOWN_PATHS[n][i % 2] for n in names if n in KNOWN_PATHS},
        )
        for i in range(2)
    ]
    free = operation.as_strategy(generation_mode=mode)
    if "kind" in names and mode is GenerationMode.POSITIVE:
        # The photo route with real photos and fuzzed form fields, so that it gets past
        # decoding into the time, place and storage code.
        known.append(photo_cases(operation))
    return st.one_of(free, *known) if names else free


@functools.cache
def real_photos() -> list[bytes]:
    start = T0 + timedelta(hours=1)
    return [
        make_photo(
            size=(320, 240),
            scene_seed=seed,
            taken_at=start + timedelta(minutes=seed),
            lat=31.2304 if seed < 3 else None,
            lon=121.4737 if seed < 3 else None,
        )
        for seed in range(1, 4)
    ]


def photo_forms() -> st.SearchStrategy[dict[str, Any]]:
    coordinate = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
    return st.fixed_dictionaries(
        {"file": st.sampled_from(real_photos())},
        optional={
            "taken_at": st.datetimes(timezones=st.timezones()).map(datetime.isoformat)
            | st.text(max_size=30),
            "lat": coordinate,
            "lon": coordinate,
            "datum": st.sampled_from(["wgs84", "gcj02", "bd09"]) | st.text(max_size=20),
        },
    )


def fuzz(
    app: FastAPI,
    headers: dict[str, str],
    mode: GenerationMode,
    budget: int,
    expect: Callable[[Any, Any], None] | None = None,
) -> Counter[str]:
    """Every operation, ``budget`` examples each; every check on every answer. Returns how many
    answers of each ``METHOD path status`` were seen."""
    seen: Counter[str] = Counter()
    # One in-process client for the run (a client per call would start the app each time).
    with get_client(app) as client:
        for operation in operations(app):
            run_operation(operation, client, headers, mode, budget, expect, seen)
    return seen


def run_operation(
    operation: Any,
    client: Any,
    headers: dict[str, str],
    mode: GenerationMode,
    budget: int,
    expect: Callable[[Any, Any], None] | None,
    seen: Counter[str],
    strategy: st.SearchStrategy[Any] | None = None,
) -> None:
    """``budget`` cases of ``operation`` (from ``strategy``, else ``cases``), each checked;
    answers tallied in ``seen``."""

    @settings(
        max_examples=budget,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=strategy if strategy is not None else cases(operation, mode))
    def run(case: Any) -> None:
        response = case.call(session=client, headers=headers)
        seen[f"{case.operation.label} {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        if expect is not None:
            expect(case, response)

    run()


def test_no_5xx_and_every_answer_as_declared_for_an_admin(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.admin_token}"}
    seen = fuzz(api.app, headers, GenerationMode.POSITIVE, examples(25, 0.25))
    seen += fuzz(api.app, headers, GenerationMode.NEGATIVE, examples(15, 0.25))
    assert not [label for label in seen if label.endswith((" 500", " 502", " 503"))]
    # The fuzz reached past authentication into every read route.
    for label in (
        "GET /api/v1/sessions 200",
        "GET /api/v1/sessions/{session_id} 200",
        "GET /api/v1/devices 200",
        "GET /api/v1/feed 200",
        "GET /api/v1/statistics 200",
        "GET /api/v1/clips/{clip_id}/video 200",
        "GET /api/v1/clips/{clip_id}/manifest 200",
        "GET /api/v1/photos/{photo_id}/image 200",
        "PUT /api/v1/sessions/{session_id}/review 200",
    ):
        assert seen[label] > 0, seen
    # And into the roll call: a still served, and a roll call nobody answers timing out.
    for label in (
        "GET /api/v1/devices/{device_id}/snapshots/{cmd_id} 200",
        "POST /api/v1/devices/{device_id}/snapshot 504",
    ):
        assert seen[label] > 0, seen


def test_no_5xx_and_every_answer_as_declared_for_a_lecturer(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.lecturer_token}"}
    seen = fuzz(api.app, headers, GenerationMode.POSITIVE, examples(25, 0.25))
    seen += fuzz(api.app, headers, GenerationMode.NEGATIVE, examples(15, 0.25))
    # And real photos with fuzzed form fields: taken (two of three have EXIF GPS), not only
    # refused.
    photo = next(op for op in operations(api.app) if op.label.endswith("/photos/{kind}"))
    with get_client(api.app) as client:
        budget = examples(10, 0.25)
        forms = photo_cases(photo)
        run_operation(photo, client, headers, GenerationMode.POSITIVE, budget, None, seen, forms)
    assert seen["POST /api/v1/sessions/{session_id}/photos/{kind} 201"] > 0, seen


def test_without_a_token_every_route_answers_401(api: Api) -> None:
    def unauthorized(case: Any, response: Any) -> None:
        assert response.status_code == 401, (case.operation.label, response.status_code)

    before = Counter(api.recomputed)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        fuzz(api.app, {}, mode, examples(10, 0.25), unauthorized)
    assert api.recomputed == before, "no photo got in"


def test_a_refused_photo_is_answered_as_declared(api: Api) -> None:
    """Found by ``make fuzz``: a real photo refused for its content (no place: no EXIF GPS and
    none from the app) was a 422 whose body matched none of the declared schemas."""
    photo_route = next(op for op in operations(api.app) if op.label.endswith("/photos/{kind}"))
    case = photo_route.Case(
        path_parameters={"session_id": "s-past", "kind": "closing"},
        body={"file": real_photos()[-1]},  # no EXIF GPS
        media_type="multipart/form-data",
    )
    headers = {"Authorization": f"Bearer {api.lecturer_token}"}
    with get_client(api.app) as client:
        response = case.call(session=client, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"]["reason"] == "no_place"
    case.validate_response(response, checks=CHECKS, headers=headers)
