"""How the fleet page reads a camera's health (``dashboard.fleet``): signal bands on both sides
of each threshold, ages in readable units, a disk low by share or by the camera's own word, a
skew flagged past the verdicts' limit, and a heartbeat missing every figure."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_server.dashboard.fleet import (
    RSRP_FAIR,
    RSRP_GOOD,
    RSSI_FAIR,
    RSSI_GOOD,
    SKEW_WARNING_S,
    camera_row,
    heard_ago,
    signal_level,
)


@pytest.mark.parametrize(
    ("rsrp", "rssi", "level", "kind"),
    [
        (RSRP_GOOD, None, "good", "RSRP"),
        (RSRP_GOOD - 1, None, "fair", "RSRP"),
        (RSRP_FAIR, None, "fair", "RSRP"),
        (RSRP_FAIR - 1, -50, "weak", "RSRP"),  # RSRP wins over a flattering RSSI
        (None, RSSI_GOOD, "good", "RSSI"),
        (None, RSSI_FAIR, "fair", "RSSI"),
        (None, RSSI_FAIR - 1, "weak", "RSSI"),
        (None, None, "unknown", None),
    ],
)
def test_signal_bands(rsrp: float | None, rssi: float | None, level: str, kind: str | None) -> None:
    assert signal_level(rsrp, rssi)[0] == level
    assert signal_level(rsrp, rssi)[2] == kind


@pytest.mark.parametrize(
    ("age_s", "shown"),
    [
        (None, None),
        (-3.0, ("fleet_ago_s", 0)),  # a clock a hair behind: never "in the future"
        (119.9, ("fleet_ago_s", 119)),
        (120.0, ("fleet_ago_min", 2)),
        (2 * 3600 - 1, ("fleet_ago_min", 119)),
        (2 * 3600, ("fleet_ago_h", 2)),
        (48 * 3600, ("fleet_ago_d", 2)),
    ],
)
def test_ages_in_readable_units(age_s: float | None, shown: tuple[str, int] | None) -> None:
    assert heard_ago(age_s) == shown


def _device(**changes: Any) -> dict[str, Any]:
    device: dict[str, Any] = {
        "device_id": "cam-1",
        "enabled": True,
        "classroom": {"id": "room", "name": "101"},
        "online": True,
        "status_at": "2026-11-27T05:00:00+00:00",
        "last_heartbeat_at": "2026-11-27T05:59:40+00:00",
        "heartbeat_age_s": 20.0,
        "signal": {"rsrp_dbm": -92, "rssi_dbm": -67, "operator": "CHINA MOBILE"},
        "disk": {"free_bytes": 10e9, "total_bytes": 29e9, "storage_low": False},
        "clock_skew_s": 1.5,
        "clock_source": "modem",
        "recording": False,
        "session_id": None,
        "firmware": "0.1.0",
    }
    return device | changes


def test_a_healthy_camera_reads_as_such() -> None:
    row = camera_row(_device())
    assert (row.online, row.signal_level, row.disk_low, row.skew_large) == (
        True,
        "good",
        False,
        False,
    )
    assert row.disk_free_gb == pytest.approx(10.0) and row.heard_ago == ("fleet_ago_s", 20)


@pytest.mark.parametrize(
    ("disk", "low"),
    [
        ({"free_bytes": 2.8e9, "total_bytes": 29e9, "storage_low": False}, True),
        ({"free_bytes": 2.9e9, "total_bytes": 29e9, "storage_low": False}, False),
        ({"free_bytes": 20e9, "total_bytes": 29e9, "storage_low": True}, True),  # its word
        ({"free_bytes": None, "total_bytes": None, "storage_low": None}, False),
        ({"free_bytes": 5, "total_bytes": 0, "storage_low": None}, False),  # no division by 0
    ],
)
def test_a_disk_is_low_by_share_or_by_the_cameras_word(disk: dict[str, Any], low: bool) -> None:
    assert camera_row(_device(disk=disk)).disk_low is low


@pytest.mark.parametrize(
    ("skew", "large"),
    [(SKEW_WARNING_S, False), (SKEW_WARNING_S + 0.1, True), (-SKEW_WARNING_S - 0.1, True)],
)
def test_a_skew_is_flagged_past_the_verdicts_limit(skew: float, large: bool) -> None:
    assert camera_row(_device(clock_skew_s=skew)).skew_large is large


def test_a_camera_never_heard_has_no_figures() -> None:
    row = camera_row(
        _device(
            online=False,
            status_at=None,
            last_heartbeat_at=None,
            heartbeat_age_s=None,
            signal={},
            disk={},
            clock_skew_s=None,
            recording=None,
            classroom=None,
        )
    )
    assert row.heard_ago is None and row.signal_level == "unknown" and row.classroom is None
    assert row.disk_free_gb is None and not row.disk_low and not row.skew_large
