"""simulators.behaviours: a scenario's behaviours become the replay's plan (pure, repeatable)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import imagehash
import pytest
from PIL import ExifTags, Image

from common.geo import Coordinate, Datum, distance_m
from ingest_server.photos import read_photo
from ingest_server.rules.photo_match import picture_distance
from simulators.behaviours import plan_replay, session_times
from simulators.plan import Expected, ReplayPlan
from simulators.scenario import (
    BEHAVIOUR_MODELS,
    ForgedClips,
    Scenario,
)
from simulators.scenario_load import load_scenario, parse_scenario

ROOM_A = (31.2304, 121.4737)  # WGS-84
ROOM_B_GCJ = (31.2243, 121.4800)  # as picked on AMap: GCJ-02
DAY = "2026-11-30"
SMALL = (320, 240)  # photos whose pixels a test does not look at


def session(sid: str, start: str, *behaviours: Any, **fields: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "class": "welding-1",
        "classroom": fields.pop("classroom", "room-a"),
        "lecturer": fields.pop("lecturer", "lect-wang"),
        "start": start,
        "duration_min": fields.pop("duration_min", 30),
        "behaviours": list(behaviours),
        "expect": fields.pop("expect", {"verdict": "verified", "reasons": []}),
        **fields,
    }


def scenario(*sessions: dict[str, Any], **top: Any) -> Scenario:
    return parse_scenario(
        {
            "name": "测试 / test",
            "date": DAY,
            **top,
            "speed": 60,
            "institutions": [{"id": "school-1", "name": "上海职业技能培训学校"}],
            "classrooms": [
                {
                    "id": "room-a",
                    "institution": "school-1",
                    "name": "教室 101",
                    "location": {"lat": ROOM_A[0], "lon": ROOM_A[1], "datum": "wgs84"},
                },
                {
                    "id": "room-b",
                    "institution": "school-1",
                    "name": "教室 102",
                    "location": {"lat": ROOM_B_GCJ[0], "lon": ROOM_B_GCJ[1], "datum": "gcj02"},
                },
            ],
            "devices": [
                {"id": "cam-a", "classroom": "room-a", "link": "4g"},
                {"id": "cam-b", "classroom": "room-b"},
            ],
            "lecturers": [
                {"id": "lect-wang", "institution": "school-1", "name": "王老师"},
                {"id": "lect-li", "institution": "school-1", "name": "李老师"},
            ],
            "classes": [{"id": "welding-1", "institution": "school-1", "name": "焊工初级"}],
            "sessions": list(sessions),
        }
    )


def small_plan(made: Scenario) -> ReplayPlan:
    return plan_replay(made, photo_size=SMALL)


def local(hhmm: str, day: int = 0) -> datetime:
    """``hhmm`` Beijing time on DAY (+ ``day``), in UTC."""
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2026, 11, 30, hour, minute, tzinfo=UTC) + timedelta(days=day, hours=-8)


def photo(plan: ReplayPlan, session_id: str, kind: str) -> Any:
    (found,) = [p for p in plan.photos if p.session_id == session_id and p.kind == kind]
    return found


def exif_gps(jpeg: bytes) -> dict[int, Any]:
    with Image.open(io.BytesIO(jpeg)) as image:
        return dict(image.getexif().get_ifd(ExifTags.IFD.GPSInfo))


def server_reads(upload: Any) -> Any:
    """What the server's photo reader makes of an upload (EXIF first, then the app's fields)."""
    fields = upload.fields
    return read_photo(
        upload.jpeg,
        app_taken_at=datetime.fromisoformat(fields["taken_at"]) if "taken_at" in fields else None,
        app_lat=float(fields["lat"]) if "lat" in fields else None,
        app_lon=float(fields["lon"]) if "lon" in fields else None,
        app_datum=fields.get("datum"),
    )


def test_an_honest_session_imports_opens_photographs_and_closes_on_time() -> None:
    plan = plan_replay(scenario(session("s-1", "09:00")))
    setup = plan.setup
    assert "public_key" not in setup["devices"][0]
    assert setup["sessions"][0]["start"] == local("09:00").isoformat()
    assert setup["classrooms"][1]["datum"] == "gcj02"
    token = plan.lecturer_tokens["lect-wang"]
    assert len(token) >= 16 and {"id": "lect-wang"}.items() <= setup["lecturers"][0].items()
    assert setup["lecturers"][0]["token"] == token
    assert plan.clock_start < local("09:00") and plan.actions == ()
    start, end = local("09:00"), local("09:30")
    opening, closing = photo(plan, "s-1", "opening"), photo(plan, "s-1", "closing")
    for upload, lo, hi in (
        (opening, start, start + timedelta(minutes=3)),
        (closing, end - timedelta(minutes=3), end + timedelta(minutes=1)),
    ):
        facts = server_reads(upload)
        assert lo < facts.taken_at < hi and facts.taken_at < upload.at
        assert (facts.time_source, facts.place_source) == ("exif", "exif")
        assert distance_m(Coordinate(*ROOM_A), Coordinate(facts.lat, facts.lon)) <= 20
    # Two pictures, not one: an honest pair is never "the same picture".
    assert not picture_distance(server_reads(opening).phash, server_reads(closing).phash).same
    (device_a, _) = plan.devices
    assert device_a.link.rate_kbit == 2000 and device_a.camera.periods == ()
    assert plan.sessions[0].expected.verdict == "verified"


def test_exif_time_is_local_beijing_time_with_its_offset() -> None:
    plan = small_plan(scenario(session("s-1", "09:00")))
    with Image.open(io.BytesIO(photo(plan, "s-1", "opening").jpeg)) as image:
        exif = image.getexif().get_ifd(ExifTags.IFD.Exif)
    assert exif[0x9003].startswith("2026:11:30 09:0")
    assert exif[0x9011] == "+08:00"


def test_the_same_scenario_gives_the_same_plan() -> None:
    made = scenario(
        session("s-1", "09:00", {"photo_elsewhere": {"photo": "closing", "metres": 300}})
    )
    assert small_plan(made) == small_plan(made)


@pytest.mark.parametrize("datum", ["gcj02", "bd09"])
def test_a_photo_elsewhere_in_a_chinese_datum_is_sent_as_app_fields_without_exif_gps(
    datum: str,
) -> None:
    elsewhere = {"photo_elsewhere": {"photo": "opening", "metres": 500, "datum": datum}}
    plan = small_plan(scenario(session("s-1", "09:00", elsewhere)))
    upload = photo(plan, "s-1", "opening")
    assert exif_gps(upload.jpeg) == {}
    assert upload.fields["datum"] == datum
    reported = Coordinate(float(upload.fields["lat"]), float(upload.fields["lon"]), Datum(datum))
    # Read as if it were WGS-84 the point would be hundreds of metres off; converted, 500 m.
    assert distance_m(Coordinate(*ROOM_A), reported) == pytest.approx(500, abs=5)
    facts = server_reads(upload)
    assert (facts.place_source, facts.datum, facts.time_source) == ("app", datum, "exif")
    # The closing photo stays honest, in EXIF.
    assert exif_gps(photo(plan, "s-1", "closing").jpeg) != {}


def test_a_photo_elsewhere_in_wgs84_is_in_exif_gps() -> None:
    elsewhere = {"photo_elsewhere": {"photo": "closing", "metres": 600, "bearing_deg": 0}}
    plan = small_plan(scenario(session("s-1", "09:00", elsewhere)))
    upload = photo(plan, "s-1", "closing")
    facts = server_reads(upload)
    assert upload.fields == {} and facts.place_source == "exif"
    there = Coordinate(facts.lat, facts.lon)
    assert distance_m(Coordinate(*ROOM_A), there) == pytest.approx(600, abs=1)
    assert there.lat > ROOM_A[0]  # bearing 0: north


def test_a_reused_photo_is_smaller_and_re_encoded_yet_the_same_picture() -> None:
    reused = {"photo_reused": {"photo": "opening", "from_session": "s-1", "scale": 0.5}}
    plan = plan_replay(
        scenario(
            session("s-1", "09:00"),
            session("s-2", "10:00", reused, classroom="room-b", lecturer="lect-li"),
        )
    )
    original, copy = photo(plan, "s-1", "opening"), photo(plan, "s-2", "opening")
    assert original.at < copy.at and copy.lecturer_id == "lect-li"
    assert len(copy.jpeg) < len(original.jpeg)
    with Image.open(io.BytesIO(original.jpeg)) as a, Image.open(io.BytesIO(copy.jpeg)) as b:
        assert b.width == a.width // 2 and b.height == a.height // 2
        assert imagehash.phash(a) - imagehash.phash(b) <= 4
    facts, first = server_reads(copy), server_reads(original)
    assert facts.sha256 != first.sha256
    assert picture_distance(facts.phash, first.phash).same  # what the server will find
    # EXIF edited to fit s-2: its time and its classroom (given in GCJ-02, GPS in WGS-84).
    assert local("10:00") < facts.taken_at < local("10:03") and facts.place_source == "exif"
    room_b = Coordinate(*ROOM_B_GCJ, Datum.GCJ02)
    assert distance_m(room_b, Coordinate(facts.lat, facts.lon)) <= 20


def test_uplink_down_until_a_morning_hour_comes_back_the_next_morning() -> None:
    down = {"uplink_down": {"at_min": 10, "until": "08:00"}}
    plan = small_plan(scenario(session("s-1", "14:00", down)))
    assert [(a.kind, a.at, a.device_id) for a in plan.actions] == [
        ("link_down", local("14:10"), "cam-a"),
        ("link_up", local("08:00", day=1), "cam-a"),
    ]


def test_uplink_down_for_minutes_or_to_the_end() -> None:
    plan = small_plan(
        scenario(
            session("s-1", "09:00", {"uplink_down": {"at_min": 5, "for_min": 12}}),
            session("s-2", "10:00", {"uplink_down": {"at_min": 5}}),
        )
    )
    assert [(a.kind, a.at) for a in plan.actions] == [
        ("link_down", local("09:05")),
        ("link_up", local("09:17")),
        ("link_down", local("10:05")),
        ("link_up", local("10:30")),
    ]


def test_ends_early_closes_through_the_app_and_the_closing_photo_comes_then() -> None:
    plan = small_plan(scenario(session("s-1", "09:00", {"ends_early": {"after_min": 12}})))
    assert [(a.kind, a.at, a.session_id) for a in plan.actions] == [
        ("close_session", local("09:12"), "s-1")
    ]
    closing = server_reads(photo(plan, "s-1", "closing"))
    assert local("09:12") - timedelta(minutes=3) < closing.taken_at < local("09:12")


def test_double_booked_opens_early_while_the_other_session_runs() -> None:
    plan = small_plan(
        scenario(
            session("s-1", "09:00", duration_min=45),
            session("s-2", "09:45", {"double_booked": {"with_session": "s-1"}}, classroom="room-b"),
        )
    )
    (opened,) = plan.actions
    assert (opened.kind, opened.session_id) == ("open_session", "s-2")
    # Overlapping s-1 by more than the 15 min a changeover may take.
    assert local("09:45") - opened.at > timedelta(minutes=15)
    assert server_reads(photo(plan, "s-2", "opening")).taken_at < local("09:45")


def test_camera_troubles_become_periods_of_its_picture() -> None:
    plan = small_plan(
        scenario(
            session("s-1", "09:00", {"lens_covered": {}}),
            session("s-2", "10:00", {"camera_unplugged": {"at_min": 5, "for_min": 3}}),
            session("s-3", "11:00", {"camera_moved": {"at_min": 10}}, classroom="room-b"),
        )
    )
    cam_a, cam_b = plan.devices
    assert [(p.trouble, p.start, p.end) for p in cam_a.camera.periods] == [
        ("covered", local("09:00"), local("09:30")),
        ("unplugged", local("10:05"), local("10:08")),
    ]
    (moved,) = cam_b.camera.periods
    assert moved.scene_seed not in (cam_a.camera.scene_seed, cam_b.camera.scene_seed)


def test_closing_before_opening_and_closing_photo_missing() -> None:
    plan = small_plan(
        scenario(
            session("s-1", "09:00", {"closing_before_opening": {"minutes": 10}}),
            session("s-2", "10:00", "closing_photo_missing"),
        )
    )
    opening, closing = server_reads(photo(plan, "s-1", "opening")), photo(plan, "s-1", "closing")
    assert server_reads(closing).taken_at == opening.taken_at - timedelta(minutes=10)
    assert closing.at > local("09:25")  # uploaded at the end of class all the same
    assert [p.kind for p in plan.photos if p.session_id == "s-2"] == ["opening"]


def test_device_behaviours() -> None:
    plan = small_plan(
        scenario(
            session(
                "s-1",
                "09:00",
                {"power_cut": {"at_min": 7, "for_s": 90}},
                {"thin_uplink": {"rate_kbit": 64, "loss_pct": 2, "latency_ms": 400}},
                {"clock_skew": {"seconds": 300}},
            ),
            session(
                "s-2",
                "09:00",
                {"forged_clips": {"source": "another_classroom", "classroom": "room-a"}},
                classroom="room-b",
                lecturer="lect-li",
            ),
        )
    )
    cam_a, cam_b = plan.devices
    assert cam_a.clock_skew_s == 300 and cam_a.forger is None
    assert cam_b.forger is not None and cam_b.forger.other_device == "cam-a"
    kinds = [(a.kind, a.at) for a in plan.actions]
    assert kinds == [
        ("link_shape", local("09:00")),
        ("power_off", local("09:07")),
        ("power_on", local("09:07") + timedelta(seconds=90)),
    ]
    assert plan.actions[0].shape is not None and plan.actions[0].shape.rate_kbit == 64


EXAMPLES: dict[str, Any] = {
    "ends_early": {"ends_early": {"after_min": 10}},
    "camera_unplugged": {"camera_unplugged": {"at_min": 5, "for_min": 2}},
    "uplink_down": {"uplink_down": {"at_min": 5}},
    "lens_covered": "lens_covered",
    "frozen_picture": "frozen_picture",
    "camera_moved": "camera_moved",
    "photo_elsewhere": {"photo_elsewhere": {"photo": "opening", "metres": 300}},
    "photo_reused": {"photo_reused": {"photo": "closing", "from_session": "s-0"}},
    "closing_photo_missing": "closing_photo_missing",
    "closing_before_opening": "closing_before_opening",
    "double_booked": {"double_booked": {"with_session": "s-0"}},
    "power_cut": {"power_cut": {"at_min": 5, "for_s": 60}},
    "thin_uplink": {"thin_uplink": {"rate_kbit": 128}},
    "clock_skew": {"clock_skew": {"seconds": -200}},
    "forged_clips": {"forged_clips": {"source": "another_day"}},
}


def _effects(plan: ReplayPlan) -> tuple[Any, ...]:
    """What a replay does to the session under test (s-1) and its device, photos as bytes."""
    photos = [
        (p.kind, p.at, p.jpeg, tuple(p.fields.items()))
        for p in plan.photos
        if p.session_id == "s-1"
    ]
    return plan.devices[1], plan.actions, photos


@pytest.mark.parametrize("name", sorted(set(BEHAVIOUR_MODELS) - {"honest"}))
def test_every_behaviour_changes_what_the_replay_does(name: str) -> None:
    before = session("s-0", "08:00", duration_min=45)
    honest = plan_replay(
        scenario(before, session("s-1", "08:45", classroom="room-b")), photo_size=SMALL
    )
    behaving = plan_replay(
        scenario(before, session("s-1", "08:45", EXAMPLES[name], classroom="room-b")),
        photo_size=SMALL,
    )
    assert set(EXAMPLES) == set(BEHAVIOUR_MODELS) - {"honest"}
    assert _effects(behaving) != _effects(honest)
    assert behaving.sessions[1].behaviours == (name,)


def test_server_settings_are_the_scenarios_and_its_time_zone() -> None:
    assert small_plan(scenario(session("s-1", "09:00"))).server_settings == {}
    plan = small_plan(
        scenario(
            session("s-1", "09:00"),
            timezone="Asia/Urumqi",
            server={"window_length_s": 420, "photo_grace_s": 1800},
        )
    )
    assert plan.server_settings == {
        "CLASSCAM_TIMEZONE": "Asia/Urumqi",
        "CLASSCAM_WINDOW_LENGTH_S": "420",
        "CLASSCAM_PHOTO_GRACE_S": "1800",
    }
    # Urumqi runs on UTC+6: the phone's EXIF says so.
    with Image.open(io.BytesIO(photo(plan, "s-1", "opening").jpeg)) as image:
        assert image.getexif().get_ifd(ExifTags.IFD.Exif)[0x9011] == "+06:00"


SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.mark.parametrize(
    ("name", "most"), [("demo-day", 4), ("fraud-catalogue", 5), ("fleet-100", 20)]
)
def test_shipped_scenarios_keep_few_cameras_recording_at_once(name: str, most: int) -> None:
    """Two cores: a shipped scenario must not record on more cameras at once than it says."""
    made = load_scenario(SCENARIOS / f"{name}.yaml")
    spans = [
        (times.opens, times.closes)
        for s in made.sessions
        if not s.of_kind(ForgedClips)  # a forger records nothing
        for times in [session_times(made, s)]
    ]
    at_once = max(sum(1 for lo, hi in spans if lo <= start < hi) for start, _ in spans)
    assert at_once <= most


@pytest.mark.parametrize("name", ["demo-day", "fraud-catalogue"])
def test_shipped_scenarios_plan(name: str) -> None:
    made = load_scenario(SCENARIOS / f"{name}.yaml")
    plan = small_plan(made)
    assert {s.session_id: s.expected.verdict for s in plan.sessions} == {
        s.id: s.expect.verdict for s in made.sessions
    }
    assert plan.clock_start < min(p.at for p in plan.photos)


def test_a_session_matches_its_required_reasons_plus_any_the_draw_may_add() -> None:
    expected = Expected(
        "rejected",
        frozenset({"short_duration"}),
        may_also=frozenset({"clip_too_short", "clip_not_recorded"}),
    )
    assert expected.matches("rejected", {"short_duration"})
    assert expected.matches("rejected", {"short_duration", "clip_too_short"})
    assert not expected.matches("rejected", {"clip_too_short"})  # the required one is missing
    assert not expected.matches("rejected", {"short_duration", "video_black"})  # not allowed
    assert not expected.matches("verified", {"short_duration"})
    assert Expected("verified", frozenset()).matches("verified", set())
    assert not Expected("verified", frozenset()).matches("verified", {"camera_moved"})
