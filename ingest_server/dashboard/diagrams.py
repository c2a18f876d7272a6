"""The session page's two drawings, as geometry for inline SVG (no map tiles, no script).

``distance_map``: the classroom at the centre with its allowed radius, each photo placed by its
bearing and distance from it, to one linear scale with a scale bar. Both points are turned into
WGS-84 first (a phone may report GCJ-02 or BD-09, hundreds of metres apart in China), as the
verdict's own distance is; the distance label is the one the evidence states.

``session_timeline``: one time axis in the deployment's zone with a lane each for the session
as scheduled, as opened and closed, the checked windows, the recording gaps the camera
reported, the camera's offline periods, and the photos. A photo taken far outside the session
(a reused old picture, say) is pinned to the edge it lies beyond, with its own time, rather
than squashing the session into a sliver.

Pure functions over the JSON-ready dicts of ``ingest_server.evidence``: tested without a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from common.clock import to_utc
from common.geo import Coordinate, Datum, to_wgs84

# -- The distance map -------------------------------------------------------------------------

MAP_SIZE = 400.0
MAP_CENTRE = MAP_SIZE / 2
# The farthest point drawn sits this far from the centre (room for its label).
MAP_REACH = 150.0
NICE_STEPS = (1, 2, 5)
# A map label's line height, and how far apart two labels must start not to overlap.
LABEL_LINE = 15.0
LABEL_CLEAR = 110.0


@dataclass(frozen=True)
class MapPoint:
    """One photo on the map: SVG position, label and where its label goes."""

    photo_id: int
    kind: str
    x: float
    y: float
    distance_m: float
    bearing_deg: float
    within: bool | None
    label_x: float
    label_y: float
    anchor: str


@dataclass(frozen=True)
class DistanceMap:
    size: float
    centre: float
    radius_px: float
    radius_m: float
    metres_per_px: float
    scale_bar_m: float
    scale_bar_px: float
    points: list[MapPoint]
    unplaced: list[int] = field(default_factory=list)


def bearing_deg(origin: Coordinate, target: Coordinate) -> float:
    """The initial great-circle bearing from ``origin`` to ``target``, 0 = north, clockwise."""
    a, b = to_wgs84(origin), to_wgs84(target)
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlon = math.radians(b.lon - a.lon)
    x = math.sin(dlon) * math.cos(lat2)
    y = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    return (math.degrees(math.atan2(x, y)) + 360.0) % 360.0


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 × 10ⁿ not above ``target`` (a scale bar's length)."""
    if target <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(target))
    best = float(power)
    for step in NICE_STEPS:
        if step * power <= target:
            best = float(step * power)
    return best


def _coordinate(lat: Any, lon: Any, datum: Any) -> Coordinate | None:
    try:
        return Coordinate(float(lat), float(lon), Datum(datum or Datum.WGS84))
    except (TypeError, ValueError):
        return None


def distance_map(classroom: dict[str, Any], photos: list[dict[str, Any]]) -> DistanceMap | None:
    """The map of ``photos`` around ``classroom`` (``evidence.session_evidence``'s dicts);
    None when the classroom has no place to centre on."""
    centre = _coordinate(classroom.get("lat"), classroom.get("lon"), classroom.get("datum"))
    if centre is None:
        return None
    radius_m = float(classroom.get("radius_m") or 0.0)
    placed: list[tuple[dict[str, Any], float, float]] = []
    unplaced: list[int] = []
    for photo in photos:
        where = _coordinate(photo.get("lat"), photo.get("lon"), photo.get("datum"))
        distance = photo.get("distance_m")
        if where is None or distance is None:
            unplaced.append(int(photo["id"]))
            continue
        placed.append((photo, float(distance), bearing_deg(centre, where)))
    farthest = max([d for _, d, _ in placed], default=0.0)
    extent_m = max(radius_m * 1.25, farthest, 10.0)
    px_per_m = MAP_REACH / extent_m
    points: list[MapPoint] = []
    for photo, distance, bearing in placed:
        x = MAP_CENTRE + distance * px_per_m * math.sin(math.radians(bearing))
        y = MAP_CENTRE - distance * px_per_m * math.cos(math.radians(bearing))
        right = x <= MAP_CENTRE + MAP_REACH * 0.5
        label_x, label_y = x + (9 if right else -9), y + 4
        # Two photos taken at one spot (the usual case) would print their labels over each
        # other: each label moves down until it clears those already placed.
        while any(
            abs(p.label_y - label_y) < LABEL_LINE and abs(p.label_x - label_x) < LABEL_CLEAR
            for p in points
        ):
            label_y += LABEL_LINE
        points.append(
            MapPoint(
                photo_id=int(photo["id"]),
                kind=str(photo.get("kind")),
                x=round(x, 1),
                y=round(y, 1),
                distance_m=distance,
                bearing_deg=round(bearing, 1),
                within=photo.get("within_radius"),
                label_x=round(label_x, 1),
                label_y=round(label_y, 1),
                anchor="start" if right else "end",
            )
        )
    bar_m = nice_length(extent_m / 3)
    return DistanceMap(
        size=MAP_SIZE,
        centre=MAP_CENTRE,
        radius_px=round(radius_m * px_per_m, 1),
        radius_m=radius_m,
        metres_per_px=1 / px_per_m,
        scale_bar_m=bar_m,
        scale_bar_px=round(bar_m * px_per_m, 1),
        points=points,
        unplaced=unplaced,
    )


# -- The timeline -----------------------------------------------------------------------------

TIMELINE_WIDTH = 640.0
LABEL_WIDTH = 120.0
PLOT_LEFT = LABEL_WIDTH + 10
PLOT_RIGHT = TIMELINE_WIDTH - 20
LANE_HEIGHT = 26.0
AXIS_HEIGHT = 30.0
# Photos further than this outside the session are pinned to the axis's edge.
PHOTO_REACH = timedelta(hours=2)
TICK_MINUTES = (1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 360, 720, 1440)
MAX_TICKS = 8


@dataclass(frozen=True)
class Bar:
    kind: str
    x: float
    width: float
    start: str | None
    end: str | None
    index: int | None = None
    # The interval runs on past the axis's end (an ongoing offline period, say).
    open_ended: bool = False


@dataclass(frozen=True)
class Marker:
    kind: str
    photo_id: int
    x: float
    at: str
    # "before" / "after": taken outside the drawn span, pinned to that edge.
    pinned: str | None


@dataclass(frozen=True)
class Lane:
    key: str
    y: float
    bars: list[Bar]
    markers: list[Marker] = field(default_factory=list)


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    width: float
    height: float
    plot_left: float
    plot_right: float
    axis_y: float
    lanes: list[Lane]
    ticks: list[Tick]
    start: datetime
    end: datetime


def _t(value: Any) -> datetime | None:
    if not value:
        return None
    return to_utc(value if isinstance(value, datetime) else datetime.fromisoformat(str(value)))


def _tick_step(span: timedelta) -> timedelta:
    minutes = span.total_seconds() / 60
    for step in TICK_MINUTES:
        if minutes / step <= MAX_TICKS:
            return timedelta(minutes=step)
    return timedelta(minutes=TICK_MINUTES[-1])


def _ticks(start: datetime, end: datetime, tz: tzinfo, x_of: Any) -> list[Tick]:
    step = _tick_step(end - start)
    local = start.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # The first multiple of the step after local midnight that is not before the start (ticks
    # fall on round wall-clock times of the deployment's zone).
    elapsed = (local - midnight) // step
    tick = midnight + step * (elapsed + (1 if midnight + step * elapsed < local else 0))
    out = []
    day = None
    while tick <= end:
        text = tick.astimezone(tz).strftime("%H:%M")
        this_day = tick.astimezone(tz).strftime("%m-%d")
        if day is not None and this_day != day:
            text = f"{this_day} {text}"
        day = this_day
        out.append(Tick(round(x_of(to_utc(tick)), 1), text))
        tick = (tick.astimezone(tz) + step).astimezone(tz)
    return out


def session_timeline(
    timeline: dict[str, Any], photos: list[dict[str, Any]], tz: tzinfo, now: datetime
) -> Timeline:
    """The timeline of ``evidence.session_evidence``'s ``timeline`` and ``photos``."""
    scheduled_start = _t(timeline["scheduled_start"])
    scheduled_end = _t(timeline["scheduled_end"])
    assert scheduled_start is not None and scheduled_end is not None
    opened, closed = _t(timeline.get("opened_at")), _t(timeline.get("closed_at"))
    times = [scheduled_start, scheduled_end, *(t for t in (opened, closed) if t)]
    session_first, session_last = min(times), max(times)
    photo_times = [(p, _t(p.get("taken_at"))) for p in photos]
    near = [
        t
        for _, t in photo_times
        if t is not None and session_first - PHOTO_REACH <= t <= session_last + PHOTO_REACH
    ]
    first, last = min([session_first, *near]), max([session_last, *near])
    pad = max((last - first) * 0.03, timedelta(minutes=1))
    start, end = first - pad, last + pad
    span = (end - start).total_seconds()

    def x_of(moment: datetime) -> float:
        share = (min(max(moment, start), end) - start).total_seconds() / span
        return PLOT_LEFT + share * (PLOT_RIGHT - PLOT_LEFT)

    def bar(kind: str, a: datetime | None, b: datetime | None, index: int | None = None) -> Bar:
        a = a or start
        until = b or now
        x1, x2 = x_of(a), x_of(until)
        return Bar(
            kind=kind,
            x=round(x1, 1),
            width=round(max(x2 - x1, 2.0), 1),
            start=a.isoformat(),
            end=b.isoformat() if b else None,
            index=index,
            open_ended=b is None or b > end,
        )

    def intervals(kind: str, items: list[dict[str, Any]]) -> list[Bar]:
        out = []
        for item in items:
            a, b = _t(item.get("start")), _t(item.get("end"))
            if (a is None or a <= end) and (b is None or b >= start):
                out.append(bar(kind, a, b, item.get("index")))
        return out

    markers = []
    for photo, taken in photo_times:
        if taken is None:
            continue
        pinned = "before" if taken < start else "after" if taken > end else None
        markers.append(
            Marker(
                kind=str(photo.get("kind")),
                photo_id=int(photo["id"]),
                x=round(x_of(taken), 1),
                at=taken.isoformat(),
                pinned=pinned,
            )
        )
    rows: list[tuple[str, list[Bar], list[Marker]]] = [
        ("timeline_scheduled", [bar("scheduled", scheduled_start, scheduled_end)], []),
        ("timeline_open", [bar("open", opened, closed)] if opened else [], []),
        ("timeline_windows", intervals("window", timeline.get("windows") or []), []),
        ("timeline_gaps", intervals("gap", timeline.get("gaps") or []), []),
        ("timeline_offline", intervals("offline", timeline.get("offline") or []), []),
        ("timeline_photos", [], markers),
    ]
    lanes = [
        Lane(key, 8 + i * LANE_HEIGHT, bars, marks) for i, (key, bars, marks) in enumerate(rows)
    ]
    axis_y = 8 + len(rows) * LANE_HEIGHT + 4
    return Timeline(
        width=TIMELINE_WIDTH,
        height=axis_y + AXIS_HEIGHT,
        plot_left=PLOT_LEFT,
        plot_right=PLOT_RIGHT,
        axis_y=axis_y,
        lanes=lanes,
        ticks=_ticks(start, end, tz, x_of),
        start=start,
        end=end,
    )
