"""A school to import into the server for end-to-end runs: classrooms with their cameras,
lecturers with their phones, sessions, and the photos a lecturer's phone uploads."""

from __future__ import annotations

import contextlib
import inspect
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from common.clock import utc_now
from simulators.harness import Broker, Device, set_toml_values
from simulators.phone import make_photo

SHANGHAI = (31.2304, 121.4737)  # WGS-84


@dataclass(frozen=True, slots=True)
class Room:
    """One classroom, its camera and (optionally) a session held in it."""

    name: str
    device_id: str
    public_key: str
    index: int
    session_start: datetime | None = None
    session_s: float = 0.0

    @property
    def session_id(self) -> str:
        return f"sess-{self.name}"

    @property
    def lat(self) -> float:
        return SHANGHAI[0] + self.index * 0.01

    @property
    def token(self) -> str:
        return f"token-of-{self.name}-0123456789"


def school_setup(rooms: Iterable[Room]) -> dict[str, Any]:
    """The ``classcam-server import`` document for ``rooms``."""
    rooms = list(rooms)
    return {
        "institutions": [{"id": "school-1", "name": "上海职业技能培训学校"}],
        "classrooms": [
            {
                "id": f"room-{r.name}",
                "institution_id": "school-1",
                "name": f"教室 {r.index + 1}",
                "lat": r.lat,
                "lon": SHANGHAI[1],
                "datum": "wgs84",
            }
            for r in rooms
        ],
        "devices": [
            {"device_id": r.device_id, "classroom_id": f"room-{r.name}", "public_key": r.public_key}
            for r in rooms
        ],
        "lecturers": [
            {
                "id": f"lect-{r.name}",
                "institution_id": "school-1",
                "name": f"老师 {r.index + 1}",
                "token": r.token,
            }
            for r in rooms
        ],
        "classes": [{"id": "welding-1", "institution_id": "school-1", "name": "焊工初级"}],
        "sessions": [
            {
                "id": r.session_id,
                "class_id": "welding-1",
                "classroom_id": f"room-{r.name}",
                "lecturer_id": f"lect-{r.name}",
                "start": r.session_start.isoformat(),
                "duration_min": r.session_s / 60,
            }
            for r in rooms
            if r.session_start is not None
        ],
    }


def post_photo(client: httpx.Client, room: Room, kind: str, seed: int) -> int:
    """The lecturer's phone uploads an honest photo taken now in the classroom."""
    data = make_photo(taken_at=utc_now(), lat=room.lat, lon=SHANGHAI[1], scene_seed=seed)
    try:
        response = client.post(
            f"/sessions/{room.session_id}/photos/{kind}",
            files={"file": (f"{kind}.jpg", data, "image/jpeg")},
            headers={"Authorization": f"Bearer {room.token}"},
        )
    except httpx.HTTPError:
        return 0  # the server dropped the request: the test says which photo was lost
    return response.status_code


def agent_upload_id(upload_id_for: Callable[..., str], device_id: str, cmd_id: str) -> str:
    """The upload id a camera gives the clip it cuts for ``cmd_id``, whichever way the agent
    in this tree computes it (from the command alone, or from the device and the command)."""
    if len(inspect.signature(upload_id_for).parameters) >= 2:
        return upload_id_for(device_id, cmd_id)
    return upload_id_for(cmd_id)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def sleep_until(at: datetime) -> None:
    while (left := (at - utc_now()).total_seconds()) > 0:
        time.sleep(min(left, 0.2))


def verdict_history(feed: dict[str, Any], session_id: str) -> list[str]:
    """Every state the feed announced for ``session_id``, in order."""
    return [
        e["payload"]["state"]
        for e in feed["events"]
        if e["kind"] == "verdict_changed" and e["session_id"] == session_id
    ]


def read_feed(client: httpx.Client) -> dict[str, Any]:
    """The whole feed, page by page from the start."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page: dict[str, Any] = {"events": []}
        for attempt in range(5):
            try:
                page = client.get("/feed", params={"after": after, "limit": 1000}).json()
                break
            except httpx.HTTPError:
                time.sleep(0.5 * (attempt + 1))
        events += page["events"]
        if not page["events"]:
            return {"events": events, "next": after}
        after = page["next"]


def provision_quickly(
    root: Path,
    device_id: str,
    broker: Broker,
    settings: dict[str, dict[str, object]] | None = None,
) -> Device:
    """``classcam-agent provision`` run in this process (dozens of devices without paying an
    interpreter start each), then laid out exactly as ``harness.provision_device`` does."""
    from edge_agent.cli import main as agent_cli

    device_dir = root / device_id
    with contextlib.redirect_stdout(io.StringIO()):
        code = agent_cli(
            [
                "provision",
                "--device-id",
                device_id,
                "--out",
                str(device_dir),
                "--broker-host",
                broker.host,
            ]
        )
    if code != 0:
        raise RuntimeError(f"provisioning {device_id} failed ({code})")
    public_key = (device_dir / "device-key.pub").read_text().strip()
    broker.add_account(device_id, (device_dir / "broker-password").read_text().strip())
    overrides: dict[str, dict[str, object]] = {
        "": {"state_dir": str(device_dir / "state")},
        "broker": {"port": broker.port, "protocol": "5", "tls": False},
    }
    for section, values in (settings or {}).items():
        overrides.setdefault(section, {}).update(values)
    config = device_dir / "agent.toml"
    config.write_text(set_toml_values(config.read_text(), overrides))
    return Device(device_id, device_dir, public_key)


def session_view(client: httpx.Client, session_id: str, attempts: int = 5) -> dict[str, Any]:
    """``GET /sessions/{id}`` in English; a server too busy to answer is asked again."""
    for attempt in range(attempts):
        try:
            response = client.get(f"/sessions/{session_id}", params={"lang": "en"})
            if response.status_code == 200:
                return dict(response.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.5 * (attempt + 1))
    return {"verdict": {"state": "unanswered", "reasons": []}, "windows": []}
