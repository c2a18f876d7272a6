"""Scenario files: a valid one loads with the right UTC times; every kind of mistake is an error
naming its line and field, never a traceback; every shipped scenario loads."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from simulators.cli import main as classcam_sim
from simulators.plan import LinkShape
from simulators.scenario import (
    DoubleBooked,
    EndsEarly,
    ForgedClips,
    Honest,
    PhotoElsewhere,
    ScenarioError,
    UplinkDown,
)
from simulators.scenario_load import load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"

VALID = """\
name: 一个上午 / A morning in two classrooms
date: 2026-11-30
speed: 120
server:
  clip_grace_s: 86400
links:
  rural: {rate_kbit: 256, loss_pct: 2, latency_ms: 300}
institutions: [{id: school-1, name: 上海职业技能培训学校}]
classrooms:
  - {id: room-101, institution: school-1, name: 教室 101,
     location: {lat: 31.2304, lon: 121.4737, datum: wgs84}, radius_m: 100}
  - {id: room-102, institution: school-1, name: 教室 102,
     location: {lat: 31.2290, lon: 121.4810, datum: gcj02}}
devices:
  - {id: cam-101, classroom: room-101, camera: synthetic, link: 4g, modem: quectel_ec25}
  - {id: cam-102, classroom: room-102, camera: rtsp, link: rural, scene: 7}
lecturers: [{id: lect-wang, institution: school-1, name: 王老师}]
classes: [{id: welding-1, institution: school-1, name: 焊工初级}]
sessions:
  - id: s-101-am
    class: welding-1
    classroom: room-101
    lecturer: lect-wang
    start: 8:30
    duration_min: 90
    behaviours:
      - honest
    expect:
      verdict: verified
      reasons: []
  - id: s-102-am
    class: welding-1
    classroom: room-102
    lecturer: lect-wang
    start: "10:00"
    duration_min: 90
    behaviours:
      - uplink_down: {at_min: 10, until: "07:30"}
      - double_booked: {with_session: s-101-am}
      - ends_early: {after_min: 40}
    expect:
      verdict: rejected
      reasons: [short_duration, lecturer_double_booked, camera_offline]
  - id: s-101-next
    class: welding-1
    classroom: room-101
    lecturer: lect-wang
    start: 2026-12-01T13:00:00+08:00
    duration_min: 45
    behaviours:
      - photo_elsewhere: {photo: closing, metres: 400, datum: gcj02}
      - forged_clips: {source: another_classroom, classroom: room-102}
    expect:
      verdict: rejected
      reasons: [photo_out_of_range]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "morning.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, snippet: str) -> int:
    """The 1-based line where ``snippet`` starts in ``text``."""
    assert text.count(snippet) == 1, f"{snippet!r} is not unique in the scenario"
    return text[: text.index(snippet)].count("\n") + 1


def test_a_valid_scenario_loads_with_utc_times(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID))

    first, second, third = scenario.sessions
    # Asia/Shanghai is the default zone: 08:30 local is 00:30 UTC; ISO starts keep their offset.
    assert scenario.session_start(first) == datetime(2026, 11, 30, 0, 30, tzinfo=UTC)
    assert scenario.session_end(first) == datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    assert scenario.session_start(second) == datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    assert scenario.session_start(third) == datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    assert scenario.minutes_into(second, 10) == datetime(2026, 11, 30, 2, 10, tzinfo=UTC)
    # uplink_down until 07:30: the next morning, local time.
    (down,) = second.of_kind(UplinkDown)
    back = scenario.next_local_time(scenario.minutes_into(second, down.at_min), down.until or "")
    assert back == datetime(2026, 11, 30, 23, 30, tzinfo=UTC)

    assert first.all_behaviours() == (Honest(),)
    assert second.of_kind(EndsEarly) == [EndsEarly(after_min=40)]
    assert second.of_kind(DoubleBooked)[0].with_session == "s-101-am"
    assert third.of_kind(PhotoElsewhere)[0].datum == "gcj02"
    assert third.of_kind(ForgedClips)[0].classroom == "room-102"
    assert second.class_ == "welding-1"
    assert second.expect.reasons[1] == "lecturer_double_booked"

    assert scenario.device_of("room-102").id == "cam-102"
    assert scenario.link_shape(scenario.device("cam-101")) == LinkShape(2000, 0, 60)
    assert scenario.link_shape(scenario.device("cam-102")) == LinkShape(256, 2, 300)
    assert [scenario.scene_of(d) for d in scenario.devices] == [1, 7]
    assert scenario.unused_scene() == 8
    assert scenario.server_env() == {"CLASSCAM_CLIP_GRACE_S": "86400"}
    assert scenario.speed == 120 and scenario.timezone == "Asia/Shanghai"


def test_day_and_timezone_move_a_local_start(tmp_path: Path) -> None:
    text = (
        VALID.replace("speed: 120", "speed: 120\ntimezone: Asia/Urumqi")
        .replace("      - double_booked: {with_session: s-101-am}\n", "")
        .replace('    start: "10:00"\n', '    start: "10:00"\n    day: 2\n')
    )
    scenario = load_scenario(write(tmp_path, text))
    # Asia/Urumqi is UTC+6; day 2 is 2026-12-02.
    first, second, _ = scenario.sessions
    assert scenario.session_start(first) == datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
    assert scenario.session_start(second) == datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


# (what, text replaced, replacement, where the error must point, field, words of the message)
MISTAKES = [
    (
        "a misspelt verdict",
        "verdict: verified",
        "verdict: verifyed",
        "verdict: verifyed",
        "sessions[0].expect.verdict",
        "must be one of verified, rejected, pending (got 'verifyed')",
    ),
    (
        "bad YAML",
        "      - honest\n",
        "      - honest\n     - x: [\n",
        "     - x: [",
        "",
        "YAML:",
    ),
    (
        "an unknown field",
        "    duration_min: 90\n    behaviours:\n      - honest",
        "    duration_min: 90\n    behaviors:\n      - honest",
        "behaviors:",
        "sessions[0].behaviors",
        "did you mean 'behaviours'?",
    ),
    (
        "an unknown field in a behaviour",
        "photo: closing, metres: 400",
        "photo: closing, meters: 400",
        "- photo_elsewhere:",
        "sessions[2].behaviours[0].photo_elsewhere.meters",
        "did you mean 'metres'?",
    ),
    (
        "a wrong type",
        "duration_min: 45",
        "duration_min: three quarters",
        "duration_min: three quarters",
        "sessions[2].duration_min",
        "must be a number (got 'three quarters')",
    ),
    (
        "a wrong type in a behaviour",
        "metres: 400",
        "metres: far",
        "- photo_elsewhere:",
        "sessions[2].behaviours[0].photo_elsewhere.metres",
        "must be a number (got 'far')",
    ),
    (
        "an unknown behaviour",
        "      - honest\n",
        "      - honset\n",
        "- honset",
        "sessions[0].behaviours[0]",
        "unknown behaviour 'honset'; did you mean 'honest'?",
    ),
    (
        "a behaviour without its parameters",
        "      - honest\n",
        "      - ends_early\n",
        "- ends_early\n",
        "sessions[0].behaviours[0].ends_early.after_min",
        "required",
    ),
    (
        "behaviour parameters that are not a mapping",
        "      - honest\n",
        "      - ends_early: 40\n",
        "- ends_early: 40",
        "sessions[0].behaviours[0]",
        "the parameters of ends_early are a mapping like {at_min: 10} (got 40)",
    ),
    (
        "a bad reason code",
        "[short_duration, lecturer_double_booked",
        "[short_duraton, lecturer_double_booked",
        "reasons: [short_duraton",
        "sessions[1].expect.reasons[0]",
        "did you mean 'short_duration'?",
    ),
    (
        "a reason the verdict contradicts",
        "verdict: verified\n      reasons: []",
        "verdict: verified\n      reasons: [clip_missing]",
        "reasons: [clip_missing]",
        "sessions[0].expect.reasons",
        "verified allows only warnings",
    ),
    (
        "a may_also code the verdict contradicts",
        "verdict: verified\n      reasons: []",
        "verdict: verified\n      reasons: []\n      may_also: [camera_offline, clip_missing]",
        "may_also: [camera_offline",
        "sessions[0].expect.may_also[1]",
        "a hard reason cannot go with verdict verified",
    ),
    (
        "a may_also code already required",
        "reasons: [short_duration, lecturer_double_booked, camera_offline]",
        "reasons: [short_duration, lecturer_double_booked, camera_offline]\n"
        "      may_also: [clip_too_short, short_duration]",
        "may_also: [clip_too_short",
        "sessions[1].expect.may_also[1]",
        "'short_duration' is already in reasons",
    ),
    (
        "a dangling reference",
        "with_session: s-101-am}",
        "with_session: s-101-pm}",
        "- double_booked:",
        "sessions[1].behaviours[1].double_booked.with_session",
        "no session 's-101-pm'",
    ),
    (
        "a session in a classroom that does not exist",
        "classroom: room-102\n    lecturer",
        "classroom: room-103\n    lecturer",
        "classroom: room-103",
        "sessions[1].classroom",
        "no classroom 'room-103'",
    ),
    (
        "forged clips from a classroom that does not exist",
        "classroom: room-102}",
        "classroom: room-999}",
        "- forged_clips:",
        "sessions[2].behaviours[1].forged_clips.classroom",
        "no classroom 'room-999'",
    ),
    (
        "one device, two owners",
        "      - photo_elsewhere:",
        "      - forged_clips: {source: another_day}\n      - photo_elsewhere:",
        "- forged_clips: {source: another_classroom",
        "sessions[2].behaviours[2].forged_clips",
        "a device has one forged_clips for the whole replay",
    ),
    (
        "a photo reused before it exists",
        "      - ends_early: {after_min: 40}\n",
        "      - ends_early: {after_min: 40}\n"
        "      - photo_reused: {photo: opening, from_session: s-101-next}\n",
        "- photo_reused:",
        "sessions[1].behaviours[3].photo_reused.from_session",
        "starts later: its photo does not exist yet",
    ),
    (
        "an id that cannot be a topic",
        "{id: cam-102,",
        "{id: cam 102,",
        "{id: cam 102,",
        "devices[1].id",
        "must be 1 to 64 ASCII letters (a-z, A-Z), digits, - or _ (got 'cam 102')",
    ),
    (
        "an id in Chinese letters",
        "{id: cam-102,",
        "{id: 摄像头-102,",
        "{id: 摄像头-102,",
        "devices[1].id",
        "ASCII letters",
    ),
    (
        "a leading zero (octal in YAML 1.1)",
        "duration_min: 45",
        "duration_min: 045",
        "duration_min: 045",
        "sessions[2].duration_min",
        "must be a number (got '045'); write it without the leading 0",
    ),
    (
        "a boolean for a number",
        "speed: 120",
        "speed: yes",
        "speed: yes",
        "speed",
        "must be a number (got True)",
    ),
    (
        "true for a duration",
        "duration_min: 45",
        "duration_min: true",
        "duration_min: true",
        "sessions[2].duration_min",
        "must be a number (got True)",
    ),
    (
        "a quoted number",
        "speed: 120",
        "speed: '120'",
        "speed: '120'",
        "speed",
        "must be a number, not text (got '120')",
    ),
    (
        "a set for a list",
        "behaviours:\n      - honest\n",
        "behaviours: !!set {honest}\n",
        "behaviours: !!set",
        "sessions[0].behaviours",
        "must be a valid list",
    ),
    (
        "a speed so slow the replay never ends",
        "speed: 120",
        "speed: 1e-300",
        "speed: 1e-300",
        "speed",
        "greater than or equal to 0.1",
    ),
    (
        "a date in year 1",
        "date: 2026-11-30",
        "date: 0001-01-01",
        "date: 0001-01-01",
        "date",
        "greater than or equal to 2000-01-01",
    ),
    (
        "a date in year 9999",
        "date: 2026-11-30",
        "date: 9999-12-31",
        "date: 9999-12-31",
        "date",
        "less than or equal to 2100-12-31",
    ),
    (
        "an ISO start in year 9999",
        "start: 2026-12-01T13:00:00+08:00",
        'start: "9999-12-31T23:59:00+00:00"',
        'start: "9999',
        "sessions[2].start",
        "must be between 2000-01-01 and 2100-12-31",
    ),
    (
        "an ISO start years away from the date",
        "start: 2026-12-01T13:00:00+08:00",
        "start: 2030-12-01T13:00:00+08:00",
        "start: 2030-12-01",
        "sessions[2].start",
        "must be on 2026-11-30 or up to 366 days after it",
    ),
    (
        "an infinite server setting",
        "clip_grace_s: 86400",
        "clip_grace_s: .inf",
        "clip_grace_s: .inf",
        "server.clip_grace_s",
        "must be a finite number (got inf)",
    ),
    (
        "a null server setting",
        "clip_grace_s: 86400",
        "shared_group: null",
        "shared_group: null",
        "server.shared_group",
        "null cannot reach the server",
    ),
    (
        "a day with a full datetime",
        "    start: 2026-12-01T13:00:00+08:00\n",
        "    start: 2026-12-01T13:00:00+08:00\n    day: 1\n",
        "  - id: s-101-next",
        "sessions[2]",
        "day counts only for an HH:MM start",
    ),
    (
        "a duplicate id",
        "{id: cam-102,",
        "{id: cam-101,",
        "{id: cam-101, classroom: room-102",
        "devices[1].id",
        "duplicate id 'cam-101'",
    ),
    (
        "two devices in one classroom",
        "classroom: room-102, camera: rtsp",
        "classroom: room-101, camera: rtsp",
        "classroom: room-101, camera: rtsp",
        "devices[1].classroom",
        "already has device 'cam-101'",
    ),
    (
        "a duplicate key",
        "    start: 8:30\n",
        "    start: 8:30\n    start: 9:30\n",
        "start: 9:30",
        "sessions[0].start",
        "duplicate key (also at line",
    ),
    (
        "a server key that does not exist",
        "clip_grace_s: 86400",
        "clip_grace: 86400",
        "clip_grace: 86400",
        "server.clip_grace",
        "did you mean 'clip_grace_s'?",
    ),
    (
        "a server value out of range",
        "clip_grace_s: 86400",
        "clip_grace_s: -1",
        "clip_grace_s: -1",
        "server.clip_grace_s",
        "greater than or equal to 0",
    ),
    (
        "a behaviour timed after its session",
        "after_min: 40",
        "after_min: 400",
        "- ends_early:",
        "sessions[1].behaviours[2].ends_early.after_min",
        "must be inside the session",
    ),
    (
        "a link profile that does not exist",
        "link: rural",
        "link: rual",
        "link: rual",
        "devices[1].link",
        "no link profile 'rual'",
    ),
    (
        "an unknown time zone",
        "speed: 120",
        "speed: 120\ntimezone: Asia/Beijing",
        "timezone: Asia/Beijing",
        "timezone",
        "unknown time zone",
    ),
    (
        "a lecturer in two classrooms at once",
        'start: "10:00"',
        'start: "09:00"',
        'start: "09:00"',
        "sessions[1].start",
        "lecturer 'lect-wang' would be in two classrooms at once",
    ),
    (
        "a required field left out",
        "    duration_min: 45\n",
        "",
        "  - id: s-101-next",
        "sessions[2].duration_min",
        "required",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "marker", "field", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in MISTAKES],
)
def test_a_mistake_names_its_line_and_field(
    tmp_path: Path, old: str, new: str, marker: str, field: str, words: str
) -> None:
    assert VALID.count(old) == 1
    text = VALID.replace(old, new)
    path = write(tmp_path, text)

    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)

    line = line_of(text, marker)
    matching = [
        p
        for p in caught.value.problems
        if p.line == line and p.field == field and words in p.message
    ]
    assert matching, f"wanted line {line}, {field}: {words}; got:\n{caught.value}"
    where = f"{path}:{line}: {field}: " if field else f"{path}:{line}: "
    assert f"{where}{matching[0].message}" in str(caught.value).splitlines()


def test_the_error_reads_file_line_field_message(tmp_path: Path) -> None:
    text = VALID.replace("verdict: verified", "verdict: verifyed")
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value) == (
        f"{path}:{line_of(text, 'verdict: verifyed')}: sessions[0].expect.verdict:"
        " must be one of verified, rejected, pending (got 'verifyed')"
    )


def test_every_problem_of_a_file_is_listed(tmp_path: Path) -> None:
    text = VALID.replace("verdict: verified", "verdict: verifyed").replace(
        "metres: 400", "metres: -4"
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, text))
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "sessions[0].expect.verdict",
        "sessions[2].behaviours[0].photo_elsewhere.metres",
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("", "the file is empty", id="empty"),
        pytest.param("- just\n- a list\n", "a scenario is a mapping", id="not-a-mapping"),
        pytest.param("name: a\n---\nname: b\n", "YAML:", id="two-documents"),
    ],
)
def test_files_that_are_not_scenarios(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, text))
    assert words in str(caught.value)


def test_a_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nowhere.yaml")


def test_anchors_and_merge_keys_keep_lines(tmp_path: Path) -> None:
    text = VALID.replace(
        "  - id: s-101-next\n    class: welding-1\n    classroom: room-101\n",
        "  - id: s-101-next\n    <<: &booking {class: welding-1, classroom: room-101}\n",
    )
    assert load_scenario(write(tmp_path, text)).sessions[2].classroom == "room-101"
    broken = text.replace("metres: 400", "metres: -1")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, broken))
    assert caught.value.problems[0].line == line_of(broken, "- photo_elsewhere:")


def laughs(levels: int) -> str:
    """A "billion laughs": each level aliases the one before nine times (9**levels values)."""
    text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for level in range(1, levels):
        text += f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]\n"
    return text


# Files that could hang the reader or crash it: (text added after VALID, what the error says).
HOSTILE = [
    pytest.param(laughs(9), ":11: x.a5: its aliases expand to more than", id="billion-laughs"),
    pytest.param("loop: &loop [*loop]\n", "x.loop[0]: an alias refers to", id="alias-in-list"),
    pytest.param("loop: &m {a: *m}\n", "x.loop.a: an alias refers to", id="alias-in-map"),
    pytest.param(
        "deep: " + "{a: " * 80 + "1" + "}" * 80,
        ":6: x.deep.a.a: nested deeper than 64 levels",
        id="deep-map",
    ),
    pytest.param("big: " + "9" * 5000, "x.big: a number of 5000 digits", id="huge-int"),
    pytest.param("1: 2\n", ":6: x: a key must be a name; '1' reads as a number", id="int-key"),
    pytest.param("? [a]\n: 2\n", "a key must be a name, not a list", id="list-key"),
    pytest.param("nul: a\0\n", ":6: YAML: the character '\\x00' is not allowed", id="nul"),
]


@pytest.mark.parametrize(("extra", "words"), HOSTILE)
def test_a_hostile_file_is_refused_quickly(tmp_path: Path, extra: str, words: str) -> None:
    header = "name: x\ndate: 2026-11-30\nx:\n  pad: 1\n  more: 2\n"
    indented = "".join(f"  {line}\n" for line in extra.splitlines())
    started = time.process_time()  # CPU time: the machine may be busy with other work
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, header + indented))
    assert time.process_time() - started < 0.5
    assert words in str(caught.value)


def test_nesting_deeper_than_the_yaml_reader_can_go(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r":1: YAML: nested deeper than"):
        load_scenario(write(tmp_path, "x: " + "[" * 1000 + "]" * 1000 + "\n"))


def test_a_top_level_key_that_is_not_a_name_names_its_line(tmp_path: Path) -> None:
    text = VALID + "1: 2\n"
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, text))
    (problem,) = caught.value.problems
    assert problem.line == len(text.splitlines())
    assert "a key must be a name" in problem.message


def test_parse_scenario_checks_data_without_lines() -> None:
    import yaml

    data = yaml.safe_load(VALID.replace("start: 8:30", 'start: "08:30"'))
    assert parse_scenario(data).sessions[0].start == "08:30"
    data["sessions"][0]["classroom"] = "room-9"
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "inline")
    assert str(caught.value).startswith("inline: sessions[0].classroom: no classroom 'room-9'")


def test_check_command_summarises_or_lists_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, VALID)
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("link: rural", "link: rual"), encoding="utf-8")

    assert classcam_sim(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "3 sessions" in out and "ends_early ×1" in out and "honest ×1" in out

    assert classcam_sim(["check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:{line_of(VALID, 'link: rural')}: devices[1].link: no link profile 'rual'" in out


@pytest.mark.parametrize(
    "path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name if isinstance(p, Path) else p
)
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.sessions


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = (REPO / "docs" / "scenarios.md").read_text(encoding="utf-8")
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    scenario = load_scenario(write(tmp_path, example))
    assert [s.expect.verdict for s in scenario.sessions] == ["verified", "rejected"]
