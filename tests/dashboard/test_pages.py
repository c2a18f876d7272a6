"""The dashboard's pages on the server side, through FastAPI's TestClient: signing in, the
cookie and its guards, who sees what (an institution only its own sessions and their media, a
lecturer no queue), the queue's filters and pages, the per-person reviewed mark, the language
switch, times in the deployment's zone, and the session page's evidence. The browser itself
(video playing, phone layout) is test_browser's.

One small world on a real SQLite database, imported as an operator's setup file: two
institutions, three classrooms, three lecturers, five sessions with set verdicts; a real JPEG
posted by the lecturer through the photo API and a real H.264 clip in the evidence store.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from common.clock import VirtualClock
from common.signing import generate_private_key, public_key_b64
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token, revoke_token
from ingest_server.dashboard import diagrams
from ingest_server.dashboard.i18n import STRINGS
from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.models import AuditEntry, ClassSession, Clip, Photo, Upload
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from simulators.phone import make_photo

ORIGIN = "http://testserver"
NOW = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
ROOM_A = (31.2304, 121.4737)
APP_TOKENS = {"lect-a": "app-token-lect-a-0000", "lect-a2": "app-token-lect-a2-000"}
# id, classroom, lecturer, scheduled start (UTC), verdict
SESSIONS = [
    ("sa1", "room-a", "lect-a", datetime(2026, 11, 2, 1, 0, tzinfo=UTC), "verified"),
    ("sa2", "room-a2", "lect-a2", datetime(2026, 11, 20, 1, 0, tzinfo=UTC), "rejected"),
    ("sa3", "room-a", "lect-a", datetime(2026, 11, 25, 1, 0, tzinfo=UTC), "pending"),
    # 17:30 UTC on 30 November is 01:30 on 1 December in Shanghai: a day boundary to get wrong.
    ("sa4", "room-a", "lect-a", datetime(2026, 11, 30, 17, 30, tzinfo=UTC), "pending"),
    ("sb1", "room-b", "lect-b", datetime(2026, 11, 21, 1, 0, tzinfo=UTC), "verified"),
]
SHORT = {
    "code": "short_duration",
    "params": {"recorded_min": 41.5, "preset_min": 90.0, "tolerance_min": 5.0},
}


def _setup_document() -> dict[str, Any]:
    rooms = [
        ("room-a", "school-a", ROOM_A),
        ("room-a2", "school-a", (31.24, 121.48)),
        ("room-b", "school-b", (30.27, 120.15)),
    ]
    return {
        "institutions": [
            {"id": "school-a", "name": "浦东培训中心"},
            {"id": "school-b", "name": "西湖培训学校"},
        ],
        "classrooms": [
            {
                "id": rid,
                "institution_id": inst,
                "name": f"教室 {rid}",
                "lat": lat,
                "lon": lon,
                "datum": "wgs84",
                "radius_m": 100,
            }
            for rid, inst, (lat, lon) in rooms
        ],
        "devices": [
            {
                "device_id": f"cam-{rid}",
                "classroom_id": rid,
                "public_key": public_key_b64(generate_private_key()),
            }
            for rid, _, _ in rooms
        ],
        "lecturers": [
            {
                "id": "lect-a",
                "institution_id": "school-a",
                "name": "王老师",
                "token": APP_TOKENS["lect-a"],
            },
            {
                "id": "lect-a2",
                "institution_id": "school-a",
                "name": "李老师",
                "token": APP_TOKENS["lect-a2"],
            },
            {
                "id": "lect-b",
                "institution_id": "school-b",
                "name": "陈老师",
                "token": "app-token-lect-b-0000",
            },
        ],
        "classes": [
            {"id": "cls-a", "institution_id": "school-a", "name": "电工"},
            {"id": "cls-b", "institution_id": "school-b", "name": "烹饪"},
        ],
        "sessions": [
            {
                "id": sid,
                "class_id": "cls-b" if sid == "sb1" else "cls-a",
                "classroom_id": room,
                "lecturer_id": lect,
                "start": start.isoformat(),
                "duration_min": 90,
            }
            for sid, room, lect, start, _ in SESSIONS
        ],
    }


def _mp4() -> bytes:
    """A real H.264 MP4: two seconds of a brightening grey at 5 fps."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("h264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), "rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


@dataclass
class World:
    context: ApiContext
    tokens: dict[str, str]
    clip_id: int
    clip_bytes: bytes
    photos: dict[str, int]

    def client(self, who: str | None = None, **kwargs: Any) -> TestClient:
        """A browser signed in as ``who`` (its token in the dashboard's cookie)."""
        client = TestClient(create_app(self.context), follow_redirects=False, **kwargs)
        if who is not None:
            client.cookies.set("classcam_token", self.tokens[who])
        return client

    def audit_rows(self, route: str) -> list[AuditEntry]:
        with self.context.session_factory() as db:
            rows = db.scalars(select(AuditEntry).where(AuditEntry.action == "viewed")).all()
            return [r for r in rows if json.loads(r.details).get("route") == route]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root}/classcam.db"
    migrate(url)
    settings = Settings(data_dir=root, database_url=url)
    factory = make_session_factory(make_engine(url))
    clock = VirtualClock(datetime(2026, 11, 1, tzinfo=UTC))
    store = EvidenceStore(root / "evidence")
    context = ApiContext(settings, factory, store, recompute=lambda ids: None, clock=clock)
    document = root / "setup.json"
    document.write_text(json.dumps(_setup_document(), ensure_ascii=False))
    with factory.begin() as db:
        import_rows(db, read_rows(document), settings)
    # The lecturers post their opening photos through the app's API, during their classes.
    photos = {}
    app = TestClient(create_app(context))
    for sid, lecturer, seed in (("sa2", "lect-a2", 2), ("sa3", "lect-a", 1)):
        start = next(s[3] for s in SESSIONS if s[0] == sid)
        clock.advance((start + timedelta(minutes=3) - clock.now()).total_seconds())
        picture = make_photo(
            taken_at=start + timedelta(minutes=2),
            lat=ROOM_A[0] + 0.0009,
            lon=ROOM_A[1],
            scene_seed=seed,
        )
        answer = app.post(
            f"/api/v1/sessions/{sid}/photos/opening",
            files={"file": ("p.jpg", picture, "image/jpeg")},
            headers={"Authorization": f"Bearer {APP_TOKENS[lecturer]}"},
        )
        assert answer.status_code == 201, answer.text
    clock.advance((NOW - clock.now()).total_seconds())
    clip_bytes = _mp4()
    with factory.begin() as db:
        for sid, _, _, _, verdict in SESSIONS:
            reasons = [SHORT] if sid == "sa2" else []
            db.execute(
                update(ClassSession)
                .where(ClassSession.id == sid)
                .values(verdict=verdict, verdict_reasons=json.dumps(reasons), verdict_at=NOW)
            )
        photos = {p.session_id: p.id for p in db.scalars(select(Photo))}
        # school-b's clip, stored as the ingest would (write-once file named by its hash).
        store.put_bytes("clips/cam-room-b/u-1.mp4", clip_bytes)
        start = datetime(2026, 11, 21, 1, 10, tzinfo=UTC)
        db.add(
            Upload(
                upload_id="u-1",
                device_id="cam-room-b",
                manifest="{}",
                size=len(clip_bytes),
                sha256="a" * 64,
                chunk_size=len(clip_bytes),
                state="complete",
                created_at=NOW,
                updated_at=NOW,
            )
        )
        db.flush()
        clip = Clip(
            upload_id="u-1",
            device_id="cam-room-b",
            session_id="sb1",
            kind="clip",
            sha256="a" * 64,
            size=len(clip_bytes),
            path="clips/cam-room-b/u-1.mp4",
            cut_start=start,
            cut_end=start + timedelta(seconds=2),
            duration_s=2.0,
            frames=10,
            width=64,
            height=48,
            codec="h264",
            stored_at=NOW,
        )
        db.add(clip)
        db.flush()
        clip_id = clip.id
        tokens = dict(APP_TOKENS)
        for who, role, scope in (
            ("admin", Role.ADMIN, {}),
            ("sup-1", Role.SUPERVISOR, {}),
            ("sup-2", Role.SUPERVISOR, {}),
            ("inst-a", Role.INSTITUTION, {"institution_id": "school-a"}),
            ("inst-b", Role.INSTITUTION, {"institution_id": "school-b"}),
            ("lecturer", Role.LECTURER, {"lecturer_id": "lect-a"}),
        ):
            _, tokens[who] = create_token(db, role, NOW, name=who, **scope)
        revoked, tokens["revoked"] = create_token(db, Role.ADMIN, NOW, name="revoked")
        revoke_token(db, revoked.id, NOW)
    yield World(context, tokens, clip_id, clip_bytes, photos)


def queue_ids(html: str) -> list[str]:
    return re.findall(r'data-testid="queue-row" data-session-id="([^"]+)"', html)


def reviewed_ids(html: str) -> set[str]:
    return set(
        re.findall(r'data-session-id="([^"]+)" data-verdict="[^"]*" data-reviewed="1"', html)
    )


# -- signing in -------------------------------------------------------------------------------


def test_a_page_without_a_token_leads_to_the_login_form_and_back(world: World) -> None:
    browser = world.client()
    answer = browser.get("/ui/queue?verdict=rejected")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fqueue%3Fverdict%3Drejected"
    assert browser.get("/", follow_redirects=True).url.path == "/ui/login"
    form = browser.get("/ui/login?next=/ui/queue%3Fverdict%3Drejected")
    assert 'name="next" value="/ui/queue?verdict=rejected"' in form.text

    signed = browser.post(
        "/ui/login",
        data={"token": world.tokens["sup-1"], "next": "/ui/queue?verdict=rejected"},
        headers={"Origin": ORIGIN},
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/queue?verdict=rejected"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"classcam_token={world.tokens['sup-1']};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test
    page = browser.get("/ui/queue?verdict=rejected")
    assert page.status_code == 200 and queue_ids(page.text) == ["sa2"]

    out = browser.post("/ui/logout", headers={"Origin": ORIGIN})
    assert out.status_code == 200 and 'data-testid="logged-out"' in out.text
    assert 'classcam_token=""' in out.headers["set-cookie"]
    assert browser.get("/ui/queue").status_code == 303


def test_the_cookie_is_secure_over_https_and_refused_tokens_are_not_kept(world: World) -> None:
    secure = world.client(base_url="https://dash.example")
    signed = secure.post(
        "/ui/login",
        data={"token": world.tokens["admin"]},
        headers={"Origin": "https://dash.example"},
    )
    assert signed.status_code == 303 and "Secure" in signed.headers["set-cookie"]

    browser = world.client()
    for token in ("cc_not-a-token", world.tokens["revoked"], ""):
        refused = browser.post("/ui/login", data={"token": token}, headers={"Origin": ORIGIN})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
        assert 'data-testid="login-refused"' in refused.text
    # A token revoked after signing in stops working at once.
    browser.cookies.set("classcam_token", world.tokens["revoked"])
    assert browser.get("/ui/queue").status_code == 303
    # A bearer header is taken as well (scripts, curl).
    bearer = world.client(headers={"Authorization": f"Bearer {world.tokens['inst-b']}"})
    assert queue_ids(bearer.get("/ui/queue").text) == ["sb1"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/ui/queue"},
        {"Origin": "http://testserver.evil.example"},
    ],
)
def test_forms_from_another_site_are_refused(world: World, headers: dict[str, str]) -> None:
    browser = world.client("sup-1")
    login = browser.post("/ui/login", data={"token": world.tokens["admin"]}, headers=headers)
    assert login.status_code == 403 and "set-cookie" not in login.headers
    mark = browser.post("/ui/sessions/sa1/review", data={"reviewed": "1"}, headers=headers)
    assert mark.status_code == 403 and 'data-testid="error"' in mark.text
    assert "sa1" not in reviewed_ids(browser.get("/ui/queue").text)


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "https://evil.example/ui/",
        "/\\evil.example",
        "/api/v1/feed",
        "/ui/../api",
        "/ui/%2e%2e/api/v1/feed",
    ],
)
def test_after_login_only_dashboard_paths_are_followed(world: World, target: str) -> None:
    signed = world.client().post(
        "/ui/login",
        data={"token": world.tokens["admin"], "next": target},
        headers={"Origin": ORIGIN},
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/queue"


# -- who sees what ----------------------------------------------------------------------------


def test_an_institution_sees_only_its_own_sessions_and_media(world: World) -> None:
    own = world.client("inst-a")
    assert sorted(queue_ids(own.get("/ui/queue").text)) == ["sa1", "sa2", "sa3", "sa4"]
    # Naming the other institution in a filter finds nothing; its names are not offered.
    other = own.get("/ui/queue?institution=school-b")
    assert queue_ids(other.text) == [] and "西湖培训学校" not in other.text
    assert own.get("/ui/sessions/sa3").status_code == 200

    refused = own.get("/ui/sessions/sb1")
    assert refused.status_code == 403 and 'data-status="403"' in refused.text
    assert "烹饪" not in refused.text
    assert own.get("/ui/sessions/nope").status_code == 404
    assert own.get("/ui/sessions/sb1/evidence.json").status_code == 403
    assert own.get(f"/ui/clips/{world.clip_id}/video").status_code == 403
    assert own.get(f"/ui/photos/{world.photos['sa3']}/image").status_code == 200
    assert world.client("inst-b").get(f"/ui/photos/{world.photos['sa3']}/image").status_code == 403
    for path in (
        "/ui/clips/999999/video",
        "/ui/clips/abc/video",
        "/ui/clips/-1/video",
        "/ui/clips/" + "9" * 5000 + "/video",
        "/ui/photos/0/image",
    ):
        assert own.get(path).status_code == 404, path
    # No cookie, no media.
    assert world.client().get(f"/ui/photos/{world.photos['sa3']}/image").status_code == 303


def test_media_answer_ranges_and_are_audited(world: World) -> None:
    admin = world.client("admin")
    whole = admin.get(f"/ui/clips/{world.clip_id}/video")
    assert whole.status_code == 200 and whole.content == world.clip_bytes
    assert whole.headers["content-type"] == "video/mp4"
    part = admin.get(f"/ui/clips/{world.clip_id}/video", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == world.clip_bytes[4:12] == b"ftypisom"
    assert part.headers["content-range"] == f"bytes 4-11/{len(world.clip_bytes)}"
    past = admin.get(f"/ui/clips/{world.clip_id}/video", headers={"Range": "bytes=99999999-"})
    assert past.status_code == 416
    photo = admin.get(f"/ui/photos/{world.photos['sa3']}/image")
    assert photo.status_code == 200 and photo.content[:2] == b"\xff\xd8"
    rows = world.audit_rows("GET /clips/{id}/video")
    assert any(
        r.subject_id == str(world.clip_id) and r.actor.startswith("admin:admin") for r in rows
    )


def test_a_lecturer_cannot_read_the_review_queue(world: World) -> None:
    for who in ("lecturer", "lect-a"):  # an API token of the role, and the app's token
        page = world.client(who).get("/ui/queue")
        assert page.status_code == 403
        assert (
            "讲师账号不能查看审核队列" in page.text and 'data-testid="queue-row"' not in page.text
        )
        assert 'data-testid="logout"' in page.text  # still signed in: the way out is there
    english = world.client("lecturer").get("/ui/queue?lang=en")
    assert "A lecturer&#39;s account cannot read the review queue." in english.text
    # Their own session they may read, as through the API; another's they may not.
    assert world.client("lecturer").get("/ui/sessions/sa1").status_code == 200
    assert world.client("lecturer").get("/ui/sessions/sa2").status_code == 403
    mark = world.client("lecturer").post(
        "/ui/sessions/sa1/review", data={"reviewed": "1"}, headers={"Origin": ORIGIN}
    )
    assert mark.status_code == 403


def test_the_queue_is_audited_like_the_api_list(world: World) -> None:
    before = len(world.audit_rows("GET /ui/queue"))
    world.client("sup-2").get("/ui/queue?verdict=verified")
    rows = world.audit_rows("GET /ui/queue")
    assert len(rows) == before + 1
    details = json.loads(rows[-1].details)
    assert details["query"]["verdict"] == "verified" and sorted(details["ids"]) == ["sa1", "sb1"]
    assert rows[-1].actor.startswith("supervisor:sup-2")


@pytest.mark.parametrize("page", ["/ui/fleet", "/ui/statistics"])
def test_the_fleet_and_statistics_pages_are_audited(world: World, page: str) -> None:
    before = len(world.audit_rows(f"GET {page}"))
    assert world.client("sup-2").get(page).status_code == 200
    rows = world.audit_rows(f"GET {page}")
    assert len(rows) == before + 1
    assert rows[-1].subject_type == "overview" and rows[-1].actor.startswith("supervisor:sup-2")


# -- the queue --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["sa4", "sa3", "sb1", "sa2", "sa1"]),
        ("verdict=rejected", ["sa2"]),
        ("verdict=verified", ["sb1", "sa1"]),
        ("verdict=pending&institution=school-a", ["sa4", "sa3"]),
        ("classroom=room-a2", ["sa2"]),
        ("lecturer=lect-a", ["sa4", "sa3", "sa1"]),
        ("institution=school-b", ["sb1"]),
        # Days are counted in Shanghai: sa4 (17:30 UTC on the 30th) is on 1 December there.
        ("from=2026-12-01", ["sa4"]),
        ("to=2026-11-30", ["sa3", "sb1", "sa2", "sa1"]),
        ("from=2026-11-20&to=2026-11-21", ["sb1", "sa2"]),
        ("verdict=bogus", ["sa4", "sa3", "sb1", "sa2", "sa1"]),
        ("classroom=" + "x" * 500, []),
    ],
)
def test_filters_change_the_list(world: World, query: str, expected: list[str]) -> None:
    page = world.client("admin").get(f"/ui/queue?{query}")
    assert page.status_code == 200
    assert queue_ids(page.text) == expected


def test_a_date_that_is_not_one_is_said_and_ignored(world: World) -> None:
    page = world.client("admin").get("/ui/queue?from=2026-13-45&verdict=rejected")
    assert queue_ids(page.text) == ["sa2"]
    assert 'data-testid="filter-error"' in page.text and "2026-13-45" in page.text


@pytest.mark.parametrize(
    "query", ["to=9999-12-31", "from=0001-01-01", "from=0001-01-01&to=9999-12-31"]
)
def test_days_at_the_calendars_ends_are_said_and_ignored(world: World, query: str) -> None:
    # The day after 9999-12-31 does not exist, and 0001-01-01 in Shanghai is before UTC's first
    # day: both once made the queue answer 500.
    page = world.client("admin").get(f"/ui/queue?{query}&verdict=rejected")
    assert page.status_code == 200
    assert queue_ids(page.text) == ["sa2"]
    assert 'data-testid="filter-error"' in page.text


def test_pages_follow_the_cursor_without_repeats(world: World) -> None:
    admin = world.client("admin")
    seen: list[str] = []
    url: str | None = "/ui/queue?limit=2"
    while url:
        page = admin.get(url)
        seen += queue_ids(page.text)
        found = re.search(r'href="([^"]+)" data-testid="next-page"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == ["sa4", "sa3", "sb1", "sa2", "sa1"]
    assert admin.get("/ui/queue?after=not-a-cursor").status_code == 400


def test_the_reviewed_mark_is_each_persons_own(world: World) -> None:
    one, two = world.client("sup-1"), world.client("sup-2")
    marked = one.post(
        "/ui/sessions/sa2/review",
        data={"reviewed": "1", "next": "/ui/queue"},
        headers={"Origin": ORIGIN},
    )
    assert marked.status_code == 303 and marked.headers["location"] == "/ui/queue"
    # Twice is once.
    one.post("/ui/sessions/sa2/review", data={"reviewed": "1"}, headers={"Origin": ORIGIN})
    assert reviewed_ids(one.get("/ui/queue").text) == {"sa2"}
    assert reviewed_ids(two.get("/ui/queue").text) == set()
    assert queue_ids(one.get("/ui/queue?reviewed=yes").text) == ["sa2"]
    assert queue_ids(one.get("/ui/queue?reviewed=no").text) == ["sa4", "sa3", "sb1", "sa1"]
    assert queue_ids(two.get("/ui/queue?reviewed=yes").text) == []
    assert 'data-testid="reviewed-mark"' in one.get("/ui/sessions/sa2").text
    assert 'data-testid="reviewed-mark"' not in two.get("/ui/sessions/sa2").text
    # An institution may not mark another's session; an unknown one is not found.
    other = world.client("inst-b")
    assert (
        other.post(
            "/ui/sessions/sa2/review", data={"reviewed": "1"}, headers={"Origin": ORIGIN}
        ).status_code
        == 403
    )
    assert (
        other.post(
            "/ui/sessions/zz/review", data={"reviewed": "1"}, headers={"Origin": ORIGIN}
        ).status_code
        == 404
    )
    one.post("/ui/sessions/sa2/review", data={"reviewed": "0"}, headers={"Origin": ORIGIN})
    assert reviewed_ids(one.get("/ui/queue").text) == set()


# -- language and time ------------------------------------------------------------------------


def test_chinese_first_and_english_on_request(world: World) -> None:
    browser = world.client("admin")
    default = browser.get(
        "/ui/queue?verdict=rejected", headers={"Accept-Language": "en-US,en;q=0.9"}
    )
    assert '<html lang="zh-CN">' in default.text and "审核队列" in default.text
    assert "实际上课时长 41.5 分钟，少于规定的 90 分钟" in default.text
    assert (
        '<span class="badge rejected" data-testid="verdict-badge" data-verdict="rejected">未通过'
        in default.text
    )
    english = browser.get("/ui/queue?verdict=rejected&lang=en")
    assert '<html lang="en">' in english.text and "Review queue" in english.text
    assert "Recorded 41.5 min of class, less than the required 90 min" in english.text
    assert ">Rejected<" in english.text
    assert "classcam_lang=en" in english.headers["set-cookie"]
    # The choice stays for the next pages (the cookie), until switched back.
    assert '<html lang="en">' in browser.get("/ui/sessions/sa2").text
    assert '<html lang="zh-CN">' in browser.get("/ui/queue?lang=zh-CN").text
    assert '<html lang="zh-CN">' in browser.get("/ui/queue").text
    # Anything else is not a language: the default stays.
    assert '<html lang="zh-CN">' in world.client("admin").get("/ui/queue?lang=fr").text


def test_every_word_exists_in_both_languages() -> None:
    for key, texts in STRINGS.items():
        assert set(texts) == {"zh-CN", "en"} and all(texts.values()), key


def test_times_are_shown_in_the_deployment_zone(world: World) -> None:
    page = world.client("admin").get("/ui/queue?classroom=room-a2")
    assert '<time datetime="2026-11-20T01:00:00+00:00">2026-11-20 09:00</time>' in page.text
    assert "Asia/Shanghai" in page.text
    session = world.client("admin").get("/ui/sessions/sa2")
    assert (
        '2026-11-20 09:00</time> – <time datetime="2026-11-20T02:30:00+00:00">10:30' in session.text
    )
    # Another deployment's zone moves every time shown, not the data.
    utc = ApiContext(
        Settings(
            data_dir=world.context.settings.data_dir,
            database_url=world.context.settings.database_url,
            timezone="UTC",
        ),
        world.context.session_factory,
        world.context.store,
        recompute=lambda ids: None,
        clock=world.context.clock,
    )
    client = TestClient(create_app(utc), follow_redirects=False)
    client.cookies.set("classcam_token", world.tokens["admin"])
    assert ">2026-11-20 01:00</time>" in client.get("/ui/queue?classroom=room-a2").text


# -- the session page -------------------------------------------------------------------------


def test_the_session_page_shows_the_evidence_and_is_audited(world: World) -> None:
    before = len(world.audit_rows("GET /ui/sessions/{id}"))
    page = world.client("inst-a").get("/ui/sessions/sa2")
    assert page.status_code == 200
    text = page.text
    photo_id = world.photos["sa2"]
    assert f'src="/ui/photos/{photo_id}/image"' in text
    assert (
        'data-testid="map"' in text
        and f'data-testid="map-photo" data-photo-id="{photo_id}"' in text
    )
    assert 'data-testid="timeline"' in text and 'data-testid="timeline-scheduled"' in text
    assert f'data-testid="timeline-photo" data-photo-id="{photo_id}"' in text
    assert 'data-code="short_duration"' in text and "recorded_min=41.5" in text
    rows = world.audit_rows("GET /ui/sessions/{id}")
    assert len(rows) == before + 1 and rows[-1].subject_id == "sa2"
    download = world.client("inst-a").get("/ui/sessions/sa2/evidence.json")
    assert download.status_code == 200
    assert 'filename="session-sa2.json"' in download.headers["content-disposition"]
    facts = download.json()
    assert facts["id"] == "sa2" and facts["photos"][0]["id"] == photo_id
    headers = page.headers
    assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"


def test_names_from_the_setup_file_are_never_markup(world: World) -> None:
    with world.context.session_factory.begin() as db:
        db.execute(
            update(ClassSession)
            .where(ClassSession.id == "sa1")
            .values(
                verdict_reasons=json.dumps([{"code": "<script>alert(1)</script>", "params": {}}])
            )
        )
    try:
        page = world.client("admin").get("/ui/sessions/sa1")
        assert "<script>alert(1)</script>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    finally:
        with world.context.session_factory.begin() as db:
            db.execute(
                update(ClassSession).where(ClassSession.id == "sa1").values(verdict_reasons="[]")
            )


def test_dashboard_routes_are_not_in_the_openapi_document(world: World) -> None:
    paths = world.client().get("/api/openapi.json").json()["paths"]
    assert paths and not any(path == "/" or path.startswith("/ui") for path in paths)


# -- the drawings -----------------------------------------------------------------------------


def test_the_map_places_photos_by_bearing_and_distance() -> None:
    room = {"lat": 31.0, "lon": 121.0, "datum": "wgs84", "radius_m": 100.0}
    metres_per_degree = 111_195.0
    photos = [
        {
            "id": 1,
            "kind": "opening",
            "lat": 31.0 + 50 / metres_per_degree,
            "lon": 121.0,
            "datum": "wgs84",
            "distance_m": 50.0,
            "within_radius": True,
        },
        {
            "id": 2,
            "kind": "closing",
            "lat": 31.0,
            "lon": 121.0 + 400 / (metres_per_degree * 0.857),
            "datum": "wgs84",
            "distance_m": 400.0,
            "within_radius": False,
        },
    ]
    drawing = diagrams.distance_map(room, photos)
    assert drawing is not None
    north, east = drawing.points
    assert north.bearing_deg == pytest.approx(0, abs=0.5) and north.y < drawing.centre
    assert north.x == pytest.approx(drawing.centre, abs=0.5)
    assert east.bearing_deg == pytest.approx(90, abs=0.5) and east.x > drawing.centre
    # One linear scale: 400 m is eight times 50 m and four times the radius from the centre.
    assert east.x - drawing.centre == pytest.approx(8 * (drawing.centre - north.y), rel=0.01)
    assert east.x - drawing.centre == pytest.approx(4 * drawing.radius_px, rel=0.01)
    assert drawing.scale_bar_m in (100.0, 50.0, 200.0)
    assert drawing.scale_bar_px == pytest.approx(drawing.scale_bar_m / drawing.metres_per_px)
    # A GCJ-02 point is moved back to WGS-84 first (about 500 m in Shanghai).
    shifted = dict(photos[0], datum="gcj02")
    moved = diagrams.distance_map(room, [shifted])
    assert moved is not None and moved.points[0].bearing_deg != pytest.approx(0, abs=5)
    assert diagrams.nice_length(730) == 500 and diagrams.nice_length(0.3) == 0.2


def test_two_photos_at_one_spot_keep_their_labels_apart() -> None:
    room = {"lat": 31.0, "lon": 121.0, "datum": "wgs84", "radius_m": 100.0}
    same = {
        "lat": 31.0002,
        "lon": 121.0,
        "datum": "wgs84",
        "distance_m": 22.0,
        "within_radius": True,
    }
    drawing = diagrams.distance_map(
        room, [same | {"id": 1, "kind": "opening"}, same | {"id": 2, "kind": "closing"}]
    )
    assert drawing is not None
    first, second = drawing.points
    assert (first.x, first.y) == (second.x, second.y)
    assert abs(first.label_y - second.label_y) >= diagrams.LABEL_LINE


def test_the_timeline_pins_a_photo_taken_days_away() -> None:
    start = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    timeline = {
        "scheduled_start": start.isoformat(),
        "scheduled_end": (start + timedelta(minutes=90)).isoformat(),
        "opened_at": (start + timedelta(minutes=1)).isoformat(),
        "closed_at": None,
        "windows": [
            {
                "index": 0,
                "start": (start + timedelta(minutes=30)).isoformat(),
                "end": (start + timedelta(minutes=31)).isoformat(),
            }
        ],
        "gaps": [],
        "offline": [{"start": (start - timedelta(days=1)).isoformat(), "end": None}],
    }
    photos = [
        {"id": 7, "kind": "opening", "taken_at": (start - timedelta(days=3)).isoformat()},
        {"id": 8, "kind": "closing", "taken_at": (start + timedelta(minutes=91)).isoformat()},
    ]
    now = start + timedelta(hours=5)
    drawing = diagrams.session_timeline(timeline, photos, ZoneInfo("Asia/Shanghai"), now)
    lanes = {lane.key: lane for lane in drawing.lanes}
    old, closing = lanes["timeline_photos"].markers
    assert old.pinned == "before" and old.x == drawing.plot_left
    assert closing.pinned is None and drawing.plot_left < closing.x < drawing.plot_right
    # The axis spans the session (and the near photo), not three days.
    assert drawing.end - drawing.start < timedelta(hours=2)
    offline = lanes["timeline_offline"].bars[0]
    assert offline.x == drawing.plot_left and offline.open_ended
    assert [t.label for t in drawing.ticks][:2] == ["09:00", "09:15"]


def test_the_export_link_gives_the_apis_archive_to_those_who_may_export(world: World) -> None:
    page = world.client("inst-a").get("/ui/sessions/sa2")
    assert 'href="/ui/sessions/sa2/export"' in page.text
    archive = world.client("inst-a").get("/ui/sessions/sa2/export")
    assert archive.status_code == 200 and archive.content[:2] == b"PK"
    assert world.client("inst-b").get("/ui/sessions/sa2/export").status_code == 403
    lecturer = world.client("lecturer")
    assert 'href="/ui/sessions/sa1/export"' not in lecturer.get("/ui/sessions/sa1").text
    assert lecturer.get("/ui/sessions/sa1/export").status_code == 403


def test_the_body_guard_lets_only_small_dashboard_forms_in_without_a_bearer(world: World) -> None:
    browser = world.client()
    big = browser.post("/ui/login", data={"token": "x" * 5000}, headers={"Origin": ORIGIN})
    assert big.status_code == 413
    # The API's routes still want a bearer token before any body is read.
    api = browser.post("/api/v1/sessions/sa1/open", content=b"{}", headers={"Origin": ORIGIN})
    assert api.status_code == 401
