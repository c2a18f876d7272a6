"""Writes ``scenarios/fleet-100.yaml``: 100 cameras in four training schools, one class each.

    .venv/bin/python scenarios/make_fleet.py > scenarios/fleet-100.yaml

The YAML is the shipped file (``classcam-sim replay scenarios/fleet-100.yaml``); this script
only saves typing 100 classrooms by hand and keeps the file regular. Classes start in five
waves of twenty, 7 minutes apart, so at most twenty cameras record at once; six classes are
frauds or faults, the rest honest.

Why 6-minute classes at speed 3 (measured on the 2-core machine with the replay's settings;
bench/fleet_replay.py prints the fleet's own figures, bench/camera_cost.py --idle-agents the
idle agent's, bench/heartbeat_ingest.py the server's):

* every agent process runs the whole replay, recording or not: ~100-150 MB RSS each, so 100 of
  them peak near 15 GB, which fits 23 GB;
* an idle agent costs ~0.16 % of a core plus ~0.01 % per unit of speed (it wakes on real time
  when idle and on the shared clock's changes, not by polling simulated time);
* a recording camera costs ~0.2-0.3 s CPU per simulated minute, i.e. 0.004 x speed cores;
* the server group-commits heartbeats (~0.6 ms CPU each) and answers upload init/fin within
  ~60 ms at p99 while clip checks run.

Three 60 s windows still fit a 6-minute class, and every fraud here lasts the whole class or
is a photo's. Measured 2026-11-29 (bench/fleet_replay.py, speed 3, device processes at nice 19):
100 / 100 sessions as expected in 872 s of wall time for 46.8 simulated minutes (wall / the
clock's own time 1.04), 1.08 cores on average, agents' peak RSS 15.0 GB.

Earlier runs show why it is at speed 3 and why the agents' idle cost matters: before the idle
agent stopped polling its simulated clock (0.5 % of a core plus 0.11 % per unit of speed, and
each fake modem polling its pty every 10 ms) and before heartbeats were group-committed (one
commit and fsync each), the server fell ten simulated minutes behind: init/fin went
unanswered (1869 no_answer), 22 sessions carried camera_offline, and twenty recorders starting
in the same second began 10-21 simulated seconds late (clip_too_short).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

WAVES = 5
PER_WAVE = 20
WAVE_SPACING_MIN = 7
DURATION_MIN = 6
SPEED = 3
ROOMS_PER_SCHOOL = 25


@dataclass(frozen=True)
class School:
    key: str
    name: str
    lat: float  # WGS-84 corner of its teaching building
    lon: float
    classes: tuple[str, ...]


SCHOOLS = (
    School("sh", "上海市浦东新区职业技能培训中心", 31.2217, 121.5440, ("焊工", "电工", "育婴员")),
    School("sz", "苏州工业园区职业技术培训学校", 31.3167, 120.7142, ("钳工", "数控车工", "电工")),
    School("hz", "杭州市萧山区职业技能培训学校", 30.1846, 120.2647, ("中式烹调师", "面点师")),
    School("nj", "南京市江宁区职业技能实训基地", 31.9537, 118.8399, ("养老护理员", "保育员")),
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐"
GIVEN = ("伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明")
CAMERAS = ("csi", "usb", "rtsp", "csi", "usb")

# Which classes are not honest (by position in the timetable, 0–99), and what the rules say.
FRAUDS: dict[int, tuple[str, str, str]] = {
    7: (
        "lens_covered",
        "rejected",
        "[video_black, video_frozen, camera_moved]",
    ),
    23: (
        "photo_elsewhere: {photo: opening, metres: 800, bearing_deg: 45, datum: gcj02}",
        "rejected",
        "[photo_out_of_range]",
    ),
    41: ("camera_moved", "verified", "[camera_moved]"),
    58: ("frozen_picture", "rejected", "[video_frozen]"),
    76: (
        "photo_elsewhere: {photo: closing, metres: 300, bearing_deg: 180, datum: bd09}",
        "rejected",
        "[photo_out_of_range]",
    ),
    93: ("lens_covered", "rejected", "[video_black, video_frozen, camera_moved]"),
}


def room(school: School, index: int) -> tuple[str, float, float]:
    """Room ``index`` of ``school``: id and WGS-84 position, a 5x5 grid ~17 m apart."""
    return (
        f"room-{school.key}-{index + 1:02d}",
        round(school.lat + (index // 5) * 0.00015, 6),
        round(school.lon + (index % 5) * 0.00018, 6),
    )


def lines() -> list[str]:
    out = [
        "# 100 cameras in four training schools (Shanghai, Suzhou, Hangzhou, Nanjing), one",
        f"# {DURATION_MIN}-minute class each, in five waves of twenty {WAVE_SPACING_MIN} minutes"
        " apart: at most twenty cameras",
        "# record at once. Six classes are frauds or faults, the rest honest. Written by",
        "# scenarios/make_fleet.py; edit that and run it again rather than this file.",
        "name: 四所学校的一百台摄像机 / A fleet of 100 cameras",
        "description: >",
        "  One class per camera in 100 classrooms of four schools, in five waves; checks that a",
        "  fleet's worth of cameras, uploads and verdicts go through one server.",
        "date: 2026-11-30",
        "timezone: Asia/Shanghai",
        "# 100 agent processes, 20 recording at once, on two cores: each costs CPU per",
        "# simulated second, so far slower than a four-classroom morning (make_fleet.py says why).",
        f"speed: {SPEED}",
        "",
        "institutions:",
    ]
    out += [f"  - {{id: {s.key}-school, name: {s.name}}}" for s in SCHOOLS]
    out += ["", "classrooms:"]
    for school in SCHOOLS:
        for index in range(ROOMS_PER_SCHOOL):
            rid, lat, lon = room(school, index)
            out.append(
                f"  - {{id: {rid}, institution: {school.key}-school, name: 实训教室 {index + 101},"
                f" location: {{lat: {lat}, lon: {lon}, datum: wgs84}}}}"
            )
    out += ["", "# Every seventh camera is on a thin 4G cell; modems alternate.", "devices:"]
    for number, school in enumerate(SCHOOLS):
        for index in range(ROOMS_PER_SCHOOL):
            rid, _, _ = room(school, index)
            serial = number * ROOMS_PER_SCHOOL + index
            link = "4g_thin" if serial % 7 == 3 else "4g"
            modem = "simcom_sim7600" if serial % 2 else "quectel_ec25"
            out.append(
                f"  - {{id: cam-{school.key}-{index + 1:02d}, classroom: {rid},"
                f" camera: {CAMERAS[serial % len(CAMERAS)]}, link: {link}, modem: {modem}}}"
            )
    out += ["", "lecturers:"]
    for number, school in enumerate(SCHOOLS):
        for index in range(ROOMS_PER_SCHOOL):
            serial = number * ROOMS_PER_SCHOOL + index
            name = SURNAMES[serial % len(SURNAMES)] + GIVEN[(serial * 7) % len(GIVEN)]
            out.append(
                f"  - {{id: lect-{school.key}-{index + 1:02d}, institution: {school.key}-school,"
                f" name: {name}老师}}"
            )
    out += ["", "classes:"]
    for school in SCHOOLS:
        for k, name in enumerate(school.classes):
            out.append(
                f"  - {{id: {school.key}-class-{k + 1}, institution: {school.key}-school,"
                f" name: {name}}}"
            )
    out += ["", "sessions:"]
    for position in range(WAVES * PER_WAVE):
        # Waves mix the schools: position p is school p % 4, its room p // 4.
        school, index = SCHOOLS[position % len(SCHOOLS)], position // len(SCHOOLS)
        wave = position // PER_WAVE
        minutes = 8 * 60 + wave * WAVE_SPACING_MIN
        behaviour, verdict, reasons = FRAUDS.get(position, ("honest", "verified", "[]"))
        if position % PER_WAVE == 0:
            out.append(f"  # --- wave {wave + 1}: {minutes // 60:02d}:{minutes % 60:02d}")
        out.append(
            f"  - {{id: {school.key}-{index + 1:02d}-w{wave + 1},"
            f" class: {school.key}-class-{index % len(school.classes) + 1},"
            f" classroom: room-{school.key}-{index + 1:02d},"
            f" lecturer: lect-{school.key}-{index + 1:02d},"
            f' start: "{minutes // 60:02d}:{minutes % 60:02d}", duration_min: {DURATION_MIN},'
        )
        out.append(
            f"     behaviours: [{behaviour}], expect: {{verdict: {verdict}, reasons: {reasons}}}}}"
        )
    return out


if __name__ == "__main__":
    sys.stdout.write("\n".join(lines()) + "\n")
