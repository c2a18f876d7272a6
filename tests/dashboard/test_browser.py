"""The dashboard in Debian's Chromium, over the seeded school (``school.py``): a person signs in
through the form and every page loads clean (no console error, no uncaught exception, no failed
request, no HTTP error) at desktop and phone sizes, with screenshots kept under
``test-artifacts/dashboard/``; clips play and seek, photos load; the verdict filter narrows the
queue; on a phone nothing scrolls sideways; an institution sees only its own sessions and
cameras, another institution's session by deep link is refused; a lecturer cannot read the
queue; pages start in Simplified Chinese and switch to English.

Must show (issue 10): no console errors, a clip's <video> reaches a playable state, filters
change the list, phone viewport has no horizontal scroll, screenshots saved; an institution's
token sees only its own sessions in the dashboard; a lecturer's token cannot read the queue.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from conftest import DESKTOP, PHONE, Dashboard, Watched
from playwright.sync_api import Page, ViewportSize, expect
from school import CLASSES, DURATION_MIN, LECTURERS, ROOM, SESSIONS
from sqlalchemy import func, select

from common.commands import CommandType
from ingest_server import audit
from ingest_server.models import AuditEntry, Clip, DeviceCommand, Photo

pytestmark = pytest.mark.browser

VERIFIED_SESSION = "a-1013"  # three clips, two photos inside 100 m
VIEWPORTS: dict[str, ViewportSize] = {"desktop": DESKTOP, "phone": PHONE}
PAGES = {
    "queue": "/ui/queue",
    "fleet": "/ui/fleet",
    "statistics": "/ui/statistics",
    "session": f"/ui/sessions/{VERIFIED_SESSION}",
    "session-rejected": "/ui/sessions/a-1117",
}
# Waits on the page's own state (a media element's readyState, an image's decode). The page
# preloads clips' metadata only (three clips on a phone's data plan); pressing play (muted, as
# a browser allows without a gesture) makes it fetch frames, as a person's tap would.
PLAY = "v => { v.muted = true; return v.play().then(() => v.pause()); }"
VIDEO_READY = "v => v.readyState >= 3"
SEEKED_TO = "([v, t]) => Math.abs(v.currentTime - t) < 0.5 && !v.seeking && v.readyState >= 2"


def roll_calls_sent(dashboard: Dashboard) -> int:
    """Roll call commands the server has kept for sending, to any camera."""
    with dashboard.school.factory() as db:
        query = select(func.count()).where(DeviceCommand.type == CommandType.SNAPSHOT.value)
        return int(db.scalar(query.select_from(DeviceCommand)) or 0)


def roll_call_entries(dashboard: Dashboard) -> list[AuditEntry]:
    """The audit log's roll calls of camera cam-a101, oldest first."""
    with dashboard.school.factory() as db:
        query = select(AuditEntry).where(
            AuditEntry.action == audit.AuditAction.ROLL_CALL.value,
            AuditEntry.subject_id == "cam-a101",
        )
        return list(db.scalars(query.order_by(AuditEntry.seq)))


def no_sideways_scroll(page: Page) -> tuple[int, int]:
    """The document's width and the window's: equal or less means no horizontal scroll."""
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return int(width), int(inner)


def wait_for_media(page: Page) -> None:
    """Every clip playable and every photo decoded, so a screenshot shows them."""
    for video in page.get_by_test_id("clip-video").all():
        video.scroll_into_view_if_needed()
        video.evaluate(PLAY)
        page.wait_for_function(VIDEO_READY, arg=video.element_handle())
    for image in page.get_by_test_id("photo-image").all():
        image.scroll_into_view_if_needed()
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=image.element_handle())


def queue_ids(page: Page) -> set[str]:
    rows = page.get_by_test_id("queue-row")
    return {rows.nth(i).get_attribute("data-session-id") or "" for i in range(rows.count())}


@pytest.mark.parametrize("size", VIEWPORTS)
def test_every_page_loads_clean_and_fits_the_screen(
    open_tab: Callable[..., Watched], dashboard: Dashboard, size: str
) -> None:
    tab = open_tab(VIEWPORTS[size])
    tab.goto("/ui/login")
    expect(tab.page.get_by_test_id("login-form")).to_be_visible()
    tab.screenshot(f"login-{size}")
    assert tab.problems() == []
    assert no_sideways_scroll(tab.page)[0] <= no_sideways_scroll(tab.page)[1]

    tab.login(dashboard.token("admin"))
    assert tab.page.url.endswith("/ui/queue")
    for name, path in PAGES.items():
        tab.clear()
        answer = tab.goto(path)
        assert answer is not None and answer.status == 200, (name, answer and answer.status)
        wait_for_media(tab.page)
        tab.screenshot(f"{name}-{size}")
        assert tab.problems() == [], name
        width, inner = no_sideways_scroll(tab.page)
        assert width <= inner, f"{name} scrolls sideways at {size}: {width} > {inner}"


def test_a_sessions_clips_play_and_seek_and_its_photos_load(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    tab = open_tab()
    tab.login(dashboard.token("supervisor"), f"/ui/sessions/{VERIFIED_SESSION}")
    assert tab.page.url.endswith(f"/ui/sessions/{VERIFIED_SESSION}")
    videos = tab.page.get_by_test_id("clip-video")
    expect(videos).to_have_count(3)
    for video in videos.all():
        handle = video.element_handle()
        video.scroll_into_view_if_needed()
        video.evaluate(PLAY)
        tab.page.wait_for_function(VIDEO_READY, arg=handle)
        duration = handle.evaluate("v => v.duration")
        assert duration == pytest.approx(22.0, abs=0.5)  # the 20 s window and a second each side
        handle.evaluate("v => { v.currentTime = 12.5; }")
        tab.page.wait_for_function(SEEKED_TO, arg=[handle, 12.5])
    photos = tab.page.get_by_test_id("photo-image")
    expect(photos).to_have_count(2)
    for photo in photos.all():
        photo.scroll_into_view_if_needed()
        tab.page.wait_for_function(
            "i => i.complete && i.naturalWidth > 0", arg=photo.element_handle()
        )
        assert photo.evaluate("i => i.naturalWidth") == 800
    assert tab.problems() == []


def test_the_verdict_filter_narrows_the_queue_to_rejected_sessions(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    tab = open_tab()
    tab.login(dashboard.token("admin"))
    assert queue_ids(tab.page) == {plan.id for plan in SESSIONS}
    tab.page.get_by_test_id("filter-verdict").select_option("rejected")
    with tab.page.expect_navigation():
        tab.page.get_by_test_id("filter-apply").click()
    assert "verdict=rejected" in tab.page.url
    rejected = dashboard.school.session_ids(verdict="rejected")
    assert rejected == {"a-1020", "a-1117"}
    assert queue_ids(tab.page) == rejected
    badges = tab.page.get_by_test_id("queue-row").get_by_test_id("verdict-badge")
    assert set(badges.evaluate_all("bs => bs.map(b => b.dataset.verdict)")) == {"rejected"}
    assert tab.problems() == []


@pytest.mark.parametrize("institution", ["sch-a", "sch-b"])
def test_an_institution_sees_only_its_own_sessions_and_cameras(
    open_tab: Callable[..., Watched], dashboard: Dashboard, institution: str
) -> None:
    tab = open_tab()
    tab.login(dashboard.token(f"institution:{institution}"))
    own = dashboard.school.session_ids(institution=institution)
    assert own and queue_ids(tab.page) == own
    other = next(p.id for p in SESSIONS if ROOM[p.room_id].institution_id != institution)
    answer = tab.goto(f"/ui/sessions/{other}")
    assert answer is not None and answer.status in (403, 404)
    # The refusal page shows nothing of the session: no title, clip, photo or lecturer.
    assert tab.page.get_by_test_id("session-title").count() == 0
    assert tab.page.get_by_test_id("clip-video").count() == 0
    assert tab.page.get_by_test_id("photo-image").count() == 0
    other_lecturer = LECTURERS[next(p.lecturer_id for p in SESSIONS if p.id == other)][1]
    assert other_lecturer not in tab.page.locator("main").inner_text()

    # Nor its clips or photos, by guessing their ids, nor its evidence as JSON.
    mine = next(iter(own & dashboard.school.session_ids(verdict="verified")))
    with dashboard.school.factory() as db:
        clips = {
            sid: db.scalar(select(Clip.id).where(Clip.session_id == sid).limit(1))
            for sid in (mine, other)
        }
        photos = {
            sid: db.scalar(select(Photo.id).where(Photo.session_id == sid).limit(1))
            for sid in (mine, other)
        }

    def statuses(session_id: str) -> list[int]:
        urls = [
            f"/ui/clips/{clips[session_id]}/video",
            f"/ui/photos/{photos[session_id]}/image",
            f"/ui/sessions/{session_id}/evidence.json",
        ]
        return list(
            tab.page.evaluate(
                "async urls => Promise.all(urls.map(async u => (await fetch(u)).status))", urls
            )
        )

    assert statuses(mine) == [200, 200, 200]
    assert all(status in (403, 404) for status in statuses(other)), statuses(other)

    tab.goto("/ui/fleet")
    rows = tab.page.get_by_test_id("fleet-row")
    devices = set(rows.evaluate_all("rs => rs.map(r => r.dataset.deviceId)"))
    assert devices == {r.device_id for r in ROOM.values() if r.institution_id == institution}

    tab.goto("/ui/statistics")
    institutions = tab.page.get_by_test_id("stats-by-institution").locator("tbody tr")
    assert institutions.evaluate_all("rs => rs.map(r => r.dataset.id)") == [institution]


def test_a_lecturer_cannot_read_the_queue_fleet_or_statistics(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    tab = open_tab()
    tab.login(dashboard.token("lecturer:lect-wang"), "/ui/queue")
    for path in ("/ui/queue", "/ui/fleet", "/ui/statistics"):
        answer = tab.goto(path)
        assert answer is not None and answer.status == 403, path
        assert tab.page.get_by_test_id("queue-row").count() == 0
        assert tab.page.get_by_test_id("fleet-row").count() == 0
        assert tab.page.get_by_test_id("stats-total").count() == 0


def test_pages_start_in_chinese_and_switch_to_english(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    # Even a browser that asks for English: a bureau's desk shows what its colleagues see.
    tab = open_tab(locale="en-US")
    tab.login(dashboard.token("admin"), "/ui/fleet")
    assert tab.page.locator("html").get_attribute("lang") == "zh-CN"
    expect(tab.page.locator("h1")).to_have_text("设备状态")
    expect(tab.page.get_by_test_id("fleet-summary")).to_contain_text("台在线")
    with tab.page.expect_navigation():
        tab.page.get_by_test_id("nav-language").click()
    assert tab.page.locator("html").get_attribute("lang") == "en"
    expect(tab.page.locator("h1")).to_have_text("Fleet")
    expect(tab.page.get_by_test_id("fleet-summary")).to_have_text("3 cameras, 2 online.")
    # The choice is kept for the next pages.
    tab.goto("/ui/statistics")
    expect(tab.page.locator("h1")).to_have_text("Statistics")
    tab.goto("/ui/queue")
    expect(tab.page.locator("h1")).to_have_text("Review queue")
    assert tab.problems() == []


def test_the_fleet_page_shows_each_cameras_health(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    tab = open_tab()
    tab.login(dashboard.token("supervisor"), "/ui/fleet?lang=en")
    rows = tab.page.get_by_test_id("fleet-row")
    # The offline camera first: it is the one that needs someone.
    assert rows.evaluate_all("rs => rs.map(r => [r.dataset.deviceId, r.dataset.online])") == [
        ["cam-a202", "0"],
        ["cam-a101", "1"],
        ["cam-b301", "1"],
    ]
    welding = rows.nth(0)
    expect(welding.get_by_test_id("presence")).to_have_text("Offline")
    assert welding.get_by_test_id("signal").get_attribute("data-level") == "weak"
    assert welding.get_by_test_id("disk").get_attribute("data-low") == "1"
    expect(welding.get_by_test_id("disk")).to_contain_text("1.9 GB free of 29.0 GB")
    # Last heard three hours before the page's now (14:00 in Shanghai), in that zone.
    expect(welding.get_by_test_id("heartbeat")).to_contain_text("2026-11-27 10:59:30")
    expect(welding.get_by_test_id("heartbeat")).to_contain_text("3 h ago")
    kitchen = rows.nth(2)
    expect(kitchen.get_by_test_id("skew")).to_contain_text("+12.5 s")
    expect(kitchen.get_by_test_id("recording")).to_contain_text("b-1127")
    electric = rows.nth(1)
    assert electric.get_by_test_id("signal").get_attribute("data-level") == "good"
    expect(electric.get_by_test_id("heartbeat")).to_contain_text("2026-11-27 13:59:50")
    assert tab.problems() == []


def test_the_statistics_page_charts_sessions_and_trainee_hours(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    tab = open_tab()
    tab.login(dashboard.token("admin"), "/ui/statistics")
    bars = tab.page.get_by_test_id("sessions-chart-bar")
    assert bars.evaluate_all("bs => bs.map(b => [b.dataset.label, b.dataset.total])") == [
        ["2026-10", "3"],
        ["2026-11", "6"],
    ]
    november = tab.page.locator('[data-testid="sessions-chart-bar"][data-label="2026-11"] rect')
    assert november.evaluate_all("rs => rs.map(r => [r.dataset.series, r.dataset.value])") == [
        ["verified", "2"],
        ["rejected", "1"],
        ["pending", "3"],
    ]
    # Verified trainee-hours: the class's trainees times the 1.5 h of each verified session.
    hours = {
        month: sum(
            CLASSES[p.class_id][2] * DURATION_MIN / 60
            for p in SESSIONS
            if p.expect == "verified" and p.start.strftime("%Y-%m") == month
        )
        for month in ("2026-10", "2026-11")
    }
    hour_bars = tab.page.get_by_test_id("hours-chart-bar")
    assert hour_bars.evaluate_all("bs => bs.map(b => [b.dataset.label, b.dataset.total])") == [
        [month, f"{value:.1f}"] for month, value in hours.items()
    ]
    by_room = tab.page.get_by_test_id("stats-by-classroom").locator("tbody tr")
    assert by_room.evaluate_all("rs => rs.map(r => r.dataset.id)") == ["a-101", "a-202", "b-301"]
    assert tab.problems() == []


def test_a_roll_call_of_an_offline_camera_says_so_at_once(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    tab = open_tab()
    tab.login(dashboard.token("institution:sch-a"), "/ui/fleet")
    row = tab.page.locator('[data-testid="fleet-row"][data-device-id="cam-a202"]')
    with tab.page.expect_navigation() as navigation:
        row.get_by_test_id("rollcall-button").click()
    answer = navigation.value
    assert answer is not None and answer.status == 409
    problem = tab.page.get_by_test_id("rollcall-problem")
    assert problem.get_attribute("data-code") == "device_offline"
    # The API's own words, in the page's language, with the last heartbeat in local time.
    expect(problem).to_contain_text("设备 cam-a202 当前离线")
    expect(problem).to_contain_text("2026-11-27 10:59:30")
    assert tab.page.get_by_test_id("rollcall-still").count() == 0
    tab.screenshot("rollcall-offline-desktop")


def test_another_institutions_camera_cannot_be_rolled_called(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    sent = roll_calls_sent(dashboard)
    tab = open_tab()
    tab.login(dashboard.token("institution:sch-b"), "/ui/fleet")
    # A form forged in the page (same origin), naming a camera of the other school.
    answer = tab.page.evaluate(
        """async () => {
            const r = await fetch('/ui/fleet/cam-a101/rollcall', {method: 'POST'});
            return [r.status, await r.text()];
        }"""
    )
    assert answer[0] == 403
    assert 'data-code="not_in_scope"' in answer[1]
    assert roll_calls_sent(dashboard) == sent  # nothing was asked of the camera


def test_a_roll_call_form_from_another_site_is_refused_and_sends_nothing(
    dashboard: Dashboard,
) -> None:
    sent = roll_calls_sent(dashboard)
    cookies = {"classcam_token": dashboard.token("admin")}
    with httpx.Client(base_url=dashboard.url, cookies=cookies, timeout=20) as client:
        forged = client.post(
            "/ui/fleet/cam-a101/rollcall", headers={"Origin": "https://evil.example"}
        )
        bare = client.post("/ui/fleet/cam-a101/rollcall")  # no Origin, no Referer
        traversal = client.post(
            "/ui/fleet/..%2F..%2Fetc%2Fpasswd/rollcall", headers={"Origin": dashboard.url}
        )
    assert forged.status_code == 403 and bare.status_code == 403
    assert traversal.status_code in (404, 422)
    assert roll_calls_sent(dashboard) == sent


def test_a_roll_call_shows_the_cameras_still_taken_now(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    before = len(roll_call_entries(dashboard))
    tab = open_tab()
    tab.login(dashboard.token("supervisor"), "/ui/fleet?lang=en")
    row = tab.page.locator('[data-testid="fleet-row"][data-device-id="cam-a101"]')
    with tab.page.expect_navigation() as navigation:
        row.get_by_test_id("rollcall-button").click()
    answer = navigation.value
    assert answer is not None and answer.status == 200
    still = tab.page.get_by_test_id("rollcall-still")
    tab.page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=still.element_handle())
    assert still.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [320, 240]
    # Taken by the camera's clock (2.4 s ahead) at the server's now, shown in Shanghai time.
    expect(tab.page.get_by_test_id("rollcall")).to_contain_text("2026-11-27 14:00:02")
    assert tab.problems() == []
    tab.screenshot("rollcall-desktop")
    tab.page.set_viewport_size(PHONE)
    width, inner = no_sideways_scroll(tab.page)
    assert width <= inner, f"the roll call page scrolls sideways on a phone: {width} > {inner}"
    tab.screenshot("rollcall-phone")
    # Asked through the page, recorded as the API records it: who asked, which camera.
    assert [e.actor.split("#")[0] for e in roll_call_entries(dashboard)[before:]] == [
        "supervisor:supervisor"
    ]


def test_a_statistics_row_leads_to_the_queue_of_its_sessions(
    open_tab: Callable[..., Watched], dashboard: Dashboard
) -> None:
    tab = open_tab()
    tab.login(dashboard.token("supervisor"), "/ui/statistics?from=2026-11-01&to=2026-11-30")
    room = tab.page.locator('[data-testid="stats-by-classroom"] tr[data-id="a-202"]')
    with tab.page.expect_navigation():
        room.get_by_test_id("stats-queue-link").click()
    assert "/ui/queue?" in tab.page.url
    november_welding = {
        p.id for p in SESSIONS if p.room_id == "a-202" and p.start.strftime("%Y-%m") == "2026-11"
    }
    assert november_welding == {"a-1117", "a-1130"}
    assert queue_ids(tab.page) == november_welding
    tab.goto("/ui/statistics")
    october = tab.page.locator('[data-testid="stats-by-month"] tr[data-month="2026-10"]')
    with tab.page.expect_navigation():
        october.get_by_test_id("stats-queue-link").click()
    assert queue_ids(tab.page) == {p.id for p in SESSIONS if p.start.month == 10}
    assert tab.problems() == []
